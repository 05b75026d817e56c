"""One web job, run by the worker: the BIDS App's participant level on a one-scan dataset.

:func:`run_job` lays the checked upload out as a one-participant BIDS dataset in the job
folder, runs :func:`bids_brainage.levels.participant.run_participant` on it in this process
(nipype's Linear plugin: the models this worker process holds stay loaded between jobs),
reports the running stage and a heartbeat into ``job.json`` from a watcher thread, then zips
the derivatives and removes the intermediate files.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import threading
import time
import uuid
import zipfile
from pathlib import Path

from bids_brainage.io import atomic_path, atomic_write_json, atomic_write_text
from bids_brainage.web.jobs import DONE, FAILED, STAGE_LABELS

LOG = logging.getLogger("bids_brainage.web")
WORKFLOW = "bids_brainage_wf"
HEARTBEAT_SECONDS = 5.0


def layout_bids(folder: Path, job: dict) -> Path:
    """``folder/bids``: dataset_description.json, participants.tsv (age, sex) and the T1w."""
    bids = folder / "bids"
    shutil.rmtree(bids, ignore_errors=True)  # a retry lays it out afresh
    label = job["label"]
    source = folder / job["input"]["nifti"]
    suffix = ".nii.gz" if source.name.endswith(".nii.gz") else ".nii"
    anat = bids / f"sub-{label}" / "anat"
    anat.mkdir(parents=True)
    target = anat / f"sub-{label}_T1w{suffix}"
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    atomic_write_json(bids / "dataset_description.json", {
        "Name": "bids_brainage web upload", "BIDSVersion": "1.9.0", "DatasetType": "raw"})
    age = "n/a" if job.get("age") is None else f"{job['age']:g}"
    atomic_write_text(bids / "participants.tsv",
                      f"participant_id\tage\tsex\nsub-{label}\t{age}\t{job.get('sex') or 'n/a'}\n")
    return bids


def job_settings(folder: Path, job: dict, bids: Path, threads: int):
    """The BIDS App's settings for this job: one scan, in this process, ``threads`` threads."""
    import datetime as dt

    from bids_brainage.config import Settings

    options = job.get("options", {})
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Settings(
        bids_dir=bids, output_dir=folder / "derivatives", analysis_level="participant",
        work_dir=folder / "work", participant_label=(job["label"],),
        skip_bids_validation=True,  # the dataset is ours, laid out just above
        nprocs=1, omp_nthreads=threads, omp_nthreads_given=True,
        skull_strip="none" if options.get("skull_stripped") else "auto",
        models=tuple(options.get("models") or ()), reports=True,
        run_uuid=f"{stamp}_{uuid.uuid4().hex[:8]}",
    )


def current_stage(work_dir: Path) -> str | None:
    """The workflow node running now (its folder exists, its result file does not); after the
    last node, the report."""
    base = work_dir / WORKFLOW
    running, finished = None, set()
    for node in list(base.glob("*_wf/preproc_wf/*")) + list(base.glob("*_wf/*")):
        if node.name not in STAGE_LABELS or not node.is_dir():
            continue
        if (node / f"result_{node.name}.pklz").exists():
            finished.add(node.name)
        else:
            running = node.name
    if running:
        return running
    return "report" if "ds_brainage" in finished else None


class StageWatcher(threading.Thread):
    """Writes the running stage and a heartbeat into the job's state while the workflow runs."""

    def __init__(self, work_dir: Path, report):
        super().__init__(daemon=True, name="stage-watcher")
        self.work_dir, self.report = work_dir, report
        self.stopped = threading.Event()

    def run(self):
        last, beat = None, 0.0
        while not self.stopped.wait(0.5):
            stage = current_stage(self.work_dir) or last
            if stage != last or time.monotonic() - beat > HEARTBEAT_SECONDS:
                with contextlib.suppress(Exception):  # a missed beat is not worth a crash
                    self.report(stage)
                last, beat = stage, time.monotonic()

    def stop(self):
        self.stopped.set()
        self.join(timeout=5)


def read_rows(tsv: Path) -> list[dict]:
    if not tsv.exists():
        return []
    with tsv.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def outputs(folder: Path, label: str) -> dict:
    """Where a job's results are, relative to its folder."""
    anat = f"derivatives/sub-{label}/anat"
    return {"tsv": f"{anat}/sub-{label}_brainage.tsv",
            "json": f"{anat}/sub-{label}_brainage.json",
            "report": f"derivatives/sub-{label}.html",
            "zip": "results/derivatives.zip"}


def zip_folder(source: Path, target: Path, root_name: str) -> Path:
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                zf.write(path, f"{root_name}/{path.relative_to(source)}")
    return target


@contextlib.contextmanager
def job_log(path: Path):
    """The app's and nipype's log lines of this job, also into ``path``."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in ("bids_brainage", "nipype.workflow")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


def run_job(store, job: dict, threads: int, time_limit: int | None = None) -> dict:
    """Run the participant workflow for ``job`` (already marked running); returns its final
    state, written to ``job.json``: ``done`` with the outputs, or ``failed`` with the reason."""
    from bids_brainage.levels.participant import run_participant

    folder = store.folder(job["id"])
    lock = threading.Lock()

    def report(stage):
        with lock:
            store.update(job["id"], stage=stage, heartbeat=time.time())

    watcher = StageWatcher(folder / "work", report)
    code, error = None, None
    with job_log(folder / "job.log"):
        try:
            bids = layout_bids(folder, job)
            settings = job_settings(folder, job, bids, threads)
            watcher.start()
            code = run_participant(settings)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the job says so
            LOG.exception("job %s", job["id"])
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if watcher.is_alive():
                watcher.stop()
    paths = outputs(folder, job["label"])
    rows = read_rows(folder / paths["tsv"])
    if error is None:
        failed = [r for r in rows if r.get("status") != "ok"]
        if not rows:
            error = f"the workflow wrote no prediction (exit code {code}); see job.log"
        elif failed:
            error = failed[0].get("message") or "the workflow failed; see job.log"
    if error and "SoftTimeLimitExceeded" in error:
        error = f"stopped after the time limit of {time_limit} s ({error})"
    with lock:
        state = store.read(job["id"])
        state.update(stage="packaging", heartbeat=time.time())
        store.write(state)
        if error is None:
            zip_folder(folder / "derivatives", folder / paths["zip"],
                       f"bids_brainage_sub-{job['label']}")
            state.update(status=DONE, outputs=paths)
        else:
            state.update(status=FAILED, error=error)
        shutil.rmtree(folder / "work", ignore_errors=True)
        shutil.rmtree(folder / "bids", ignore_errors=True)
        state.update(stage=None, finished=time.time())
        LOG.info("job %s %s%s", job["id"], state["status"], f": {error}" if error else "")
        return store.write(state)


NUMERIC = ("predicted_age", "interval_low", "interval_high", "age", "brain_age_gap")


def predictions(folder: Path, state: dict) -> list[dict]:
    """The rows of the job's ``_brainage.tsv``: ages as floats, ``n/a`` as None.

    >>> typed_row({"model": "rf", "predicted_age": "33.5", "age": "n/a", "run": "1"})
    {'model': 'rf', 'predicted_age': 33.5, 'age': None, 'run': '1'}
    """
    if not state.get("outputs"):
        return []
    return [typed_row(row) for row in read_rows(folder / state["outputs"]["tsv"])]


def typed_row(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if value in ("n/a", "", None):
            out[key] = None
        elif key in NUMERIC:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = None
        else:
            out[key] = value
    return out
