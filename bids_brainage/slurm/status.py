"""Where each participant stands in an output folder, and whom a submission should run.

A participant is ``ok`` when every one of its T1w images has a ``_brainage.tsv`` whose rows
all say ``ok`` (the participant level writes that table last, atomically, so its presence
means the image's outputs are complete); ``failed`` when any image's table records a failure
or cannot be read; ``missing`` otherwise (never run, still running, or killed before the end,
e.g. by the time limit).
"""
from __future__ import annotations

import csv
from pathlib import Path

from bids_brainage.bids.derivatives import output_names
from bids_brainage.bids.layout import T1wImage, find_t1w

OK, FAILED, MISSING = "ok", "failed", "missing"
# what each mode submits: the default runs what has no outputs yet
MODES = {"default": (MISSING,), "rerun-failed": (FAILED, MISSING),
         "rerun-all": (OK, FAILED, MISSING)}


def image_state(output_dir: Path, image: T1wImage) -> str:
    """``ok``, ``failed`` or ``missing`` for one image's outputs."""
    tsv = Path(output_dir) / image.anat_dir / output_names(image.prefix)["tsv"]
    try:
        with open(tsv, newline="", encoding="utf-8") as handle:
            statuses = [row.get("status") for row in csv.DictReader(handle, delimiter="\t")]
    except FileNotFoundError:
        return MISSING
    except (OSError, UnicodeDecodeError, csv.Error):
        return FAILED
    # a header alone is a complete run without models (preprocessing only)
    return OK if all(status == OK for status in statuses) else FAILED


def participant_states(bids_dir: Path, output_dir: Path, participant_label=(),
                       session_label=()) -> dict[str, str]:
    """``{label: state}`` for the selected participants that have a T1w image, sorted.

    Raises ``NoMatchError`` (exit code 18) like the app when a label is unknown or no image
    matches.
    """
    by_label: dict[str, list[str]] = {}
    for image in find_t1w(bids_dir, participant_label, session_label):
        by_label.setdefault(image.subject, []).append(image_state(output_dir, image))
    states = {}
    for label, images in sorted(by_label.items()):
        states[label] = FAILED if FAILED in images else MISSING if MISSING in images else OK
    return states


def to_submit(states: dict[str, str], mode: str = "default") -> list[str]:
    """The labels a submission in ``mode`` (a key of ``MODES``) runs.

    >>> to_submit({"01": "ok", "02": "failed", "03": "missing"})
    ['03']
    >>> to_submit({"01": "ok", "02": "failed", "03": "missing"}, "rerun-failed")
    ['02', '03']
    """
    wanted = MODES[mode]
    return [label for label, state in states.items() if state in wanted]


def count(states: dict[str, str]) -> dict[str, int]:
    """How many participants are in each state."""
    return {state: sum(1 for s in states.values() if s == state) for state in (OK, FAILED, MISSING)}
