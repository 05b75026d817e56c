"""Participant level: discover the T1w images, run the nipype workflow, record failures.

Also how nipype runs here: its settings (applied in the worker processes too, which start
with nipype's defaults), one progress line per image and step, and the work-dir lock.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from pathlib import Path

from bids_brainage.bids.layout import find_t1w
from bids_brainage.io import InputError, check_input_file, remove_stale_temporaries, work_dir_lock
from bids_brainage.timeline import mark

LOG = logging.getLogger("bids_brainage.participant")
WORKFLOW_NAME = "bids_brainage_wf"  # the workflow's folder in the work dir
_NODE_LINE = re.compile(r"^Node: (\S+)", re.M)
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")
# the steps a progress line is printed for, and the words it uses
STEP_NAMES = {"conform": "conform", "skull_strip": "skull strip",
              "largest_component": "largest component", "n4": "N4", "register": "registration",
              "normalize": "normalisation", "predict": "prediction",
              "ds_brainage": "outputs written"}


def nipype_settings(settings, crash_dir: Path) -> dict:
    """nipype settings that matter here: fast polling, content hashes, text crash files,
    and quiet logs unless ``-v``."""
    return {
        "execution": {
            "poll_sleep_duration": 0.1,  # 2 s by default: 26 s of idling for 12 nodes
            "hash_method": "content",
            "crashdump_dir": str(crash_dir),
            "crashfile_format": "txt",
            "stop_on_first_crash": False,
            "remove_unnecessary_outputs": False,
            "create_report": False,
            "check_version": False,
        },
        "monitoring": {"enabled": False},
        # without -v our own lines say what happened (nipype would add a crash report each)
        "logging": {"workflow_level": "INFO" if settings.verbose else "CRITICAL",
                    "interface_level": "WARNING", "utils_level": "WARNING",
                    "filemanip_level": "WARNING"},
    }


def apply_nipype_settings(values: dict) -> None:
    """Apply :func:`nipype_settings` in this process (the main one or a worker)."""
    os.environ["NIPYPE_NO_ET"] = "1"  # no etelemetry version check over the network
    from nipype import config, logging as nlogging

    config.update_config(values)
    nlogging.update_logging(config)
    _hash_each_file_once()


# a file's content hash, by (path, inode, size, mtime): nipype hashes every input file of a
# step twice (the cache check, then the run), 8 KiB at a time. At most _HASHES_MAX entries
# (~100 bytes each, about 15 per image), the oldest forgotten first: a web worker that lives
# for thousands of jobs stays within a megabyte
_HASHES: dict[tuple, str] = {}
_HASHES_MAX = 10_000
_HASHES_LOCK = threading.Lock()


def cached_hash_infile(afile, chunk_len=8192, crypto=None, raise_notfound=False):
    """nipype's ``hash_infile`` (the md5 of the file's bytes: the same cache keys), read in
    4 MiB chunks and remembered for a file whose inode, size and modification time have not
    changed. Measured on a 1 mm head (one image, 2 cores): nipype hashed 13 files 42 times
    in 1.46 s, 0.89 s of it the 32 MB input, read 8 KiB at a time while the warm-up thread
    held the GIL between chunks."""
    import hashlib
    import stat

    try:
        st = os.stat(afile)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        if raise_notfound:
            raise RuntimeError(f'File "{afile}" not found.')
        return None
    crypto = crypto or hashlib.md5
    key = (os.path.abspath(afile), st.st_ino, st.st_size, st.st_mtime_ns, crypto)
    known = _HASHES.get(key)
    if known is not None:
        return known
    digest = crypto()
    with open(afile, "rb") as fp:
        while chunk := fp.read(4 << 20):
            digest.update(chunk)
    value = digest.hexdigest()
    with _HASHES_LOCK:
        while len(_HASHES) >= _HASHES_MAX:
            _HASHES.pop(next(iter(_HASHES)))
        _HASHES[key] = value
    return value


def _hash_each_file_once() -> None:
    """Make nipype's content hashes use :func:`cached_hash_infile` (in this process)."""
    from nipype.interfaces.base import specs
    from nipype.utils import filemanip

    filemanip.hash_infile = specs.hash_infile = cached_hash_infile


def configure_nipype(settings, crash_dir: Path) -> dict:
    values = nipype_settings(settings, crash_dir)
    apply_nipype_settings(values)
    return values


def _init_worker(cwd: str, values: dict) -> None:
    """Pool initialiser: nipype's own, then our settings (a forkserver worker starts from
    nipype's defaults: INFO logs, timestamp hashes); the worker keeps the models it loads."""
    mark("worker_start")
    from nipype.pipeline.plugins.multiproc import process_initializer

    from bids_brainage.levels.warmup import keep_models_loaded

    process_initializer(cwd)
    apply_nipype_settings(values)
    keep_models_loaded(1, load_defaults=False)
    mark("worker_ready")


def start_forkserver(settings) -> None:
    """Start the process nipype's workers are forked from, now, with what every worker
    imports already imported (:data:`~bids_brainage.levels.warmup.FORKSERVER_PRELOAD`): it
    loads while this process validates and prepares, and each worker starts loaded.
    Only imports: a process that has run torch or OpenMP threads must not fork."""
    import multiprocessing

    from bids_brainage.levels.warmup import FORKSERVER_PRELOAD, needs_deepbet

    modules = list(FORKSERVER_PRELOAD)
    if needs_deepbet(settings):
        modules[:0] = ["torch", "deepbet.bet"]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(modules)
    from multiprocessing import forkserver

    forkserver.ensure_running()


def multiproc_plugin(plugin_args: dict, values: dict):
    """nipype's MultiProc plugin whose worker processes get our nipype settings."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from nipype.pipeline.plugins.multiproc import MultiProcPlugin

    plugin = MultiProcPlugin(plugin_args=plugin_args)
    plugin.pool.shutdown(wait=False)  # no worker has started yet: replace the pool
    plugin.pool = ProcessPoolExecutor(
        max_workers=plugin.processors, initializer=_init_worker,
        initargs=(plugin._cwd, values),
        mp_context=multiprocessing.get_context(plugin_args.get("mp_context")),
    )
    return plugin


class Progress:
    """nipype's status callback (main process): one line per image and step.

    MultiProc announces the start of the steps it submits and the end of every step, a
    cached one included; Linear announces both for every step, and an end for the steps it
    skips after a failure. A step is reused when its result file predates it.
    """

    def __init__(self, images):
        self.prefixes = {f"{image.node_name}_wf": image.prefix for image in images}
        self.started: dict[str, tuple[float, int | None]] = {}
        self.failed: set[str] = set()

    @staticmethod
    def _result_mtime(node) -> int | None:
        try:
            return (Path(node.output_dir()) / f"result_{node.name}.pklz").stat().st_mtime_ns
        except OSError:
            return None

    def __call__(self, node, status: str) -> None:
        mark(f"node_{status}", node=node.fullname)
        step = STEP_NAMES.get(node.name)
        if step is None:
            return
        parts = node.fullname.split(".")
        prefix = next((self.prefixes[p] for p in parts if p in self.prefixes), parts[0])
        if status == "start":
            self.started[node.fullname] = (time.monotonic(), self._result_mtime(node))
            return
        start, before = self.started.pop(node.fullname, (None, None))
        if status == "exception":
            self.failed.add(prefix)
            LOG.info("%s: %s failed", prefix, step)
        elif start is not None:
            if before is not None and before == self._result_mtime(node):
                LOG.info("%s: %s reused from the work dir", prefix, step)
            else:
                LOG.info("%s: %s done (%.1f s)", prefix, step, time.monotonic() - start)
        elif prefix in self.failed:  # skipped after its image failed
            return
        elif node.run_without_submitting:  # MultiProc ran it in this process, unannounced
            LOG.info("%s: %s", prefix, step)
        else:
            LOG.info("%s: %s reused from the work dir", prefix, step)


def _crash_reason(text: str) -> str | None:
    """The exception message at the end of a nipype crash file's traceback."""
    for line in reversed(text.splitlines()):
        match = _ERROR_LINE.match(line.strip())
        if match:
            kind, message = match.groups()
            return message if kind in ("InputError", "ValueError") else f"{kind}: {message}"
    return None


def crash_messages(crash_dir: Path) -> dict[str, str]:
    """``{image workflow name: reason}`` from the nipype crash files of this run."""
    messages = {}
    for path in sorted(crash_dir.glob("crash-*.txt")) if crash_dir.exists() else []:
        text = path.read_text(errors="replace")
        node = _NODE_LINE.search(text)
        parts = node.group(1).split(".") if node else [path.stem]
        key = parts[1] if len(parts) > 2 else parts[0]
        reason = _crash_reason(text) or f"failed, see {path}"
        # the first crash of an image is the cause; later ones are its consequences
        messages.setdefault(key, f"{reason} (step {parts[-1]})")
    return messages


def choose_threads(settings, n_images: int):
    """Threads per process when the user gave none: share the cores among the images."""
    if settings.omp_nthreads_given:
        return settings
    omp = max(1, min(8, settings.nprocs // max(1, min(n_images, settings.nprocs))))
    return dataclasses.replace(settings, omp_nthreads=omp)


def naming_once(path: Path, reason: str) -> str:
    """``path: reason``, unless the reason already names the file (an InputError does)."""
    return reason if str(path) in reason else f"{path}: {reason}"


def runs_in_this_process(settings, images) -> bool:
    """Whether the steps run in this process (nipype's Linear plugin) rather than in worker
    processes: one process asked for, or one image, whose steps run one after the other
    anyway. Handing each step to a worker costs ~0.2 s (pickles, content hashes twice,
    polling) and a worker's start ~1 s."""
    return settings.nprocs == 1 or len(images) == 1


def steps_pending(settings, images) -> bool:
    """Whether any image's last step has no result in the work dir yet (so loading ahead
    pays; a rerun whose steps are all reused should not load torch for nothing)."""
    root = settings.work_dir / WORKFLOW_NAME
    return any(not (root / f"{image.node_name}_wf" / "predict" / "result_predict.pklz").exists()
               for image in images)


def run_participant(settings, *, predict: bool = True, images=None, warm=None) -> int:
    """Run participant level; returns 0, or 1 when any image failed (others are written).

    ``images``: the T1w images (default: found here); ``warm``: a
    :class:`~bids_brainage.levels.warmup.WarmUp` loading ahead for this process.
    Holds the work dir for the whole run: a second run given the same one waits.
    """
    with work_dir_lock(settings.work_dir, LOG):
        return _run_participant(settings, predict=predict, images=images, warm=warm)


def _run_participant(settings, *, predict: bool, images, warm) -> int:
    # pandas and nibabel (0.4 s) are imported here, not with this module: the command line
    # imports it to decide what to load ahead, and that should start at once
    from bids_brainage.bids.derivatives import (
        output_names,
        write_dataset_description,
        write_failure,
    )
    from bids_brainage.bids.participants import participant_age, read_participants

    participants = read_participants(settings.bids_dir)
    if images is None:
        images = find_t1w(settings.bids_dir, settings.participant_label, settings.session_label)
    settings = choose_threads(settings, len(images))
    LOG.info("%d T1w image(s) of %d participant(s)", len(images),
             len({im.subject for im in images}))
    for folder in {settings.output_dir, settings.output_dir / "logs",
                   *(settings.output_dir / im.anat_dir for im in images)}:
        remove_stale_temporaries(folder)  # left by a run killed while writing
    write_dataset_description(settings.output_dir, settings.bids_dir)
    settings.write_toml(settings.output_dir / "logs")
    ages = {pid: participant_age(row) for pid, row in participants.items()}

    failures = {}
    for image in images:  # links to absent annex content, unreadable or empty files
        try:
            check_input_file(image.path)
        except InputError as exc:
            failures[image] = str(exc)
    runnable = [im for im in images if im not in failures]
    mark("indexed", images=len(images))
    crash_dir = settings.work_dir / "crash" / settings.run_uuid
    values = configure_nipype(settings, crash_dir)
    if runnable:
        _run_workflow(settings, runnable, ages, predict, values, warm)
    if warm is not None:
        warm.stop()  # long done by now; never left importing while the interpreter exits
    crashes = crash_messages(crash_dir)
    for image in runnable:
        reason = crashes.get(f"{image.node_name}_wf")
        tsv = settings.output_dir / image.anat_dir / output_names(image.prefix)["tsv"]
        if reason is None and tsv.exists():
            continue
        failures[image] = naming_once(image.path, reason or "no output was written")
    for image in images:
        if image not in failures:
            continue
        LOG.error("%s", failures[image])
        write_failure(
            output_dir=settings.output_dir, anat_dir=str(image.anat_dir), prefix=image.prefix,
            entities={"participant_id": f"sub-{image.subject}",
                      "session_id": f"ses-{image.session}" if image.session else "n/a",
                      "run": image.run or "n/a"},
            age=ages.get(f"sub-{image.subject}"),
            source=str(image.path.relative_to(settings.bids_dir)), message=failures[image],
            settings=settings.to_dict(),
        )
    if settings.reports:
        from bids_brainage.reports.participant import write_reports

        write_reports(settings, images)
        mark("reports_end")
    LOG.info("participant level: %d image(s) done, %d failed", len(images) - len(failures),
             len(failures))
    return 1 if failures else 0


def _run_workflow(settings, images, ages, predict: bool, values: dict, warm=None) -> None:
    from bids_brainage.workflows.participant import init_participant_wf

    workflow = init_participant_wf(images=images, settings=settings, ages=ages, predict=predict,
                                   name=WORKFLOW_NAME)
    # forkserver: a forked worker of a process that already ran torch/OpenMP threads (a test
    # session, the training command) can hang on its first parallel operation
    plugin_args = {"n_procs": settings.nprocs, "raise_insufficient": False,
                   "maxtasksperchild": 1000, "mp_context": "forkserver",
                   "status_callback": Progress(images)}
    if runs_in_this_process(settings, images):
        plugin = "Linear"  # conform runs while deepbet loads: skull stripping waits for it
    else:
        plugin = multiproc_plugin(plugin_args, values)
    mark("workflow_start")
    try:
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError as exc:  # nipype raises once at the end when any node crashed
        LOG.debug("nipype: %s", exc)
    mark("workflow_end")
