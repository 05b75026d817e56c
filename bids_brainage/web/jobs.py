"""The job store: one folder per job under ``<data_dir>/jobs/<id>/``, its state in ``job.json``.

Nothing about a job lives in a process's memory: the web app writes ``job.json`` when an
upload is accepted, the worker running the job rewrites it (atomically) as it goes, and any
process can read it. A running job holds an exclusive ``flock`` on its ``.lock`` file; the
kernel releases it when that process dies, even by SIGKILL, which is how a restarted worker
tells a job that is still running from one whose worker was killed.

A job folder::

    job.json        state: status, stage, times, input, options, error
    .lock           held by the process running the job
    upload/         the uploaded file (and, for a DICOM zip, its series converted by dcm2niix)
    bids/           the one-participant BIDS dataset the worker lays out
    derivatives/    the BIDS App's outputs (tables, report, images)
    results/        derivatives.zip
    work/           nipype's intermediate files (deleted when the job ends)
    job.log         the worker's log of this job
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from bids_brainage.io import atomic_write_json

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
FINISHED = (DONE, FAILED)
# folders of uploads that never became jobs (a crash mid-upload) are removed after this long
ABANDONED_SECONDS = 86400.0
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")

STAGE_LABELS = {
    "starting": "starting (laying out the BIDS dataset)",
    "conform": "checking and conforming the image",
    "skull_strip": "skull stripping (deepbet)",
    "largest_component": "cleaning the brain mask",
    "n4": "bias-field correction (N4)",
    "register": "registering to the MNI template",
    "normalize": "normalising intensities",
    "predict": "predicting the brain age",
    "ds_brainage": "writing the derivatives",
    "report": "writing the report",
    "packaging": "packaging the results",
}


def new_job_id() -> str:
    """128 random bits as 32 hex characters: the job's only key, so it must not be guessable.

    >>> len(new_job_id()), is_job_id(new_job_id()), is_job_id("../etc")
    (32, True, False)
    """
    return secrets.token_hex(16)


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.match(value or ""))


class JobStore:
    """Job folders and their ``job.json`` under ``<data_dir>/jobs``."""

    def __init__(self, data_dir: Path | str):
        self.root = Path(data_dir) / "jobs"

    def folder(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def create(self) -> tuple[str, Path]:
        """A new, empty job folder (no ``job.json`` yet: not a job until the upload is good)."""
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            job_id = new_job_id()
            try:
                (self.root / job_id).mkdir()
                return job_id, self.root / job_id
            except FileExistsError:  # pragma: no cover - 2**-128
                continue

    def read(self, job_id: str) -> dict | None:
        try:
            path = self.folder(job_id) / "job.json"
            return json.loads(path.read_text(encoding="utf-8"))
        except (KeyError, FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None

    def write(self, state: dict) -> dict:
        atomic_write_json(self.folder(state["id"]) / "job.json", state)
        return state

    def update(self, job_id: str, **changes) -> dict:
        """Read, change and write back; only the job's current owner calls this."""
        state = self.read(job_id)
        if state is None:
            raise KeyError(job_id)
        state.update(changes)
        return self.write(state)

    def all(self) -> list[dict]:
        """Every job's state, oldest first (folders without ``job.json`` are skipped)."""
        jobs = []
        for entry in _subfolders(self.root):
            if is_job_id(entry.name):
                state = self.read(entry.name)
                if state is not None:
                    jobs.append(state)
        return sorted(jobs, key=lambda j: j.get("submitted", 0.0))

    def recent(self, days: float, now: float | None = None) -> list[dict]:
        """Jobs submitted in the last ``days`` days, newest first."""
        since = (now or time.time()) - days * 86400.0
        return [j for j in reversed(self.all()) if j.get("submitted", 0.0) >= since]

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def purge(self, retention_seconds: float, now: float | None = None) -> list[str]:
        """Delete finished jobs older than the retention time, and abandoned upload folders.

        Queued and running jobs are never deleted, whatever their age.
        """
        now = now or time.time()
        removed = []
        for entry in _subfolders(self.root):
            if not is_job_id(entry.name):
                continue
            state = self.read(entry.name)
            if state is None:
                expired = now - _mtime(entry) > ABANDONED_SECONDS
            else:
                ended = state.get("finished")
                expired = state.get("status") in FINISHED and ended is not None and (
                    now - ended > retention_seconds)
            if expired:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed


def queued_by_time(jobs: list[dict]) -> list[str]:
    """Ids of the queued jobs in the order they were (re)queued: the broker's order, as far
    as the job states know it.

    >>> queued_by_time([{"id": "a", "status": "queued", "queued_at": 2.0},
    ...                 {"id": "b", "status": "running", "queued_at": 1.0},
    ...                 {"id": "c", "status": "queued", "queued_at": 1.5}])
    ['c', 'a']
    """
    queued = [j for j in jobs if j.get("status") == QUEUED]
    return [j["id"] for j in sorted(queued, key=lambda j: (j.get("queued_at", 0.0), j["id"]))]


def is_orphaned(job: dict, folder: Path) -> bool:
    """A ``running`` job that no live process holds: its worker died (killed, out of
    memory). It is retried when a worker picks up its message again or starts."""
    if job.get("status") != RUNNING:
        return False
    try:
        fd = os.open(folder / ".lock", os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        # a shared lock for an instant: a worker taking the job retries its exclusive lock
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def job_lock(folder: Path, wait: float = 5.0):
    """Hold the job's exclusive lock; yields False when another live process holds it.

    The lock is an ``flock`` on ``folder/.lock``: released by the kernel when its holder
    exits in any way, so a killed worker never leaves a job locked.
    """
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.1)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _subfolders(root: Path) -> list[Path]:
    try:
        with os.scandir(root) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
