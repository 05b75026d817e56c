"""Participant level: discover the T1w images, run the nipype workflow, record failures."""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

from bids_brainage.bids.layout import find_t1w
from bids_brainage.bids.participants import participant_age, read_participants
from bids_brainage.bids.derivatives import output_names, write_dataset_description, write_failure

LOG = logging.getLogger("bids_brainage.participant")
_NODE_LINE = re.compile(r"^Node: (\S+)", re.M)
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")


def configure_nipype(settings, crash_dir: Path) -> None:
    """nipype settings that matter here: fast polling, content hashes, text crash files."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    from nipype import config, logging as nlogging

    config.update_config({
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
        "logging": {"workflow_level": "INFO" if settings.verbose else "WARNING",
                    "interface_level": "WARNING"},
    })
    nlogging.update_logging(config)


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


def run_participant(settings, *, predict: bool = True) -> int:
    """Run participant level; returns 0, or 1 when any image failed (others are written)."""
    participants = read_participants(settings.bids_dir)
    images = find_t1w(settings.bids_dir, settings.participant_label, settings.session_label)
    settings = choose_threads(settings, len(images))
    LOG.info("%d T1w image(s) of %d participant(s)", len(images),
             len({im.subject for im in images}))
    write_dataset_description(settings.output_dir, settings.bids_dir)
    settings.write_toml(settings.output_dir / "logs")
    ages = {pid: participant_age(row) for pid, row in participants.items()}

    crash_dir = settings.work_dir / "crash" / settings.run_uuid
    configure_nipype(settings, crash_dir)
    from bids_brainage.workflows.participant import init_participant_wf

    workflow = init_participant_wf(images=images, settings=settings, ages=ages, predict=predict)
    # forkserver: a forked worker of a process that already ran torch/OpenMP threads (a test
    # session, the training command) can hang on its first parallel operation
    plugin_args = {"n_procs": settings.nprocs, "raise_insufficient": False,
                   "maxtasksperchild": 1000, "mp_context": "forkserver"}
    try:
        workflow.run(plugin="MultiProc" if settings.nprocs > 1 else "Linear",
                     plugin_args=plugin_args)
    except RuntimeError as exc:  # nipype raises once at the end when any node crashed
        LOG.debug("nipype: %s", exc)

    failures = crash_messages(crash_dir)
    failed = []
    for image in images:
        reason = failures.get(f"{image.node_name}_wf")
        tsv = settings.output_dir / image.anat_dir / output_names(image.prefix)["tsv"]
        if reason is None and tsv.exists():
            continue
        reason = reason or "no output was written"
        failed.append(image)
        LOG.error("%s: %s", image.path, reason)
        write_failure(
            output_dir=settings.output_dir, anat_dir=str(image.anat_dir), prefix=image.prefix,
            entities={"participant_id": f"sub-{image.subject}",
                      "session_id": f"ses-{image.session}" if image.session else "n/a",
                      "run": image.run or "n/a"},
            age=ages.get(f"sub-{image.subject}"),
            source=str(image.path.relative_to(settings.bids_dir)), message=reason,
            settings=settings.to_dict(),
        )
    if settings.reports:
        from bids_brainage.reports.participant import write_reports

        write_reports(settings, images)
    ok = len(images) - len(failed)
    LOG.info("participant level: %d image(s) done, %d failed", ok, len(failed))
    return 1 if failed else 0
