"""Finding the input: BIDS validation, T1w discovery with pybids, participants.tsv."""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
import subprocess
from pathlib import Path

LOG = logging.getLogger("bids_brainage.bids")


class BIDSError(RuntimeError):
    """The input is not a valid BIDS dataset (exit code 16)."""


class NoMatchError(RuntimeError):
    """No T1w image matched the requested labels (exit code 18)."""


@dataclasses.dataclass(frozen=True)
class T1wImage:
    """One T1w image and the entities that name its outputs."""

    path: Path
    subject: str
    session: str | None = None
    run: str | None = None
    acquisition: str | None = None

    @property
    def prefix(self) -> str:
        """``sub-X[_ses-Y][_acq-Z][_run-N]``, the stem shared by all outputs of this image."""
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        if self.acquisition:
            parts.append(f"acq-{self.acquisition}")
        if self.run:
            parts.append(f"run-{self.run}")
        return "_".join(parts)

    @property
    def anat_dir(self) -> Path:
        """Folder of this image's outputs, relative to the output root."""
        sub = Path(f"sub-{self.subject}")
        return (sub / f"ses-{self.session}" / "anat") if self.session else (sub / "anat")

    @property
    def node_name(self) -> str:
        """A name nipype accepts for this image's workflow."""
        return self.prefix.replace("-", "").replace("_", "x")


def _validator_command() -> list[str] | None:
    """The validator beside this interpreter (a venv run without activating it), else on PATH."""
    import sys

    here = Path(sys.executable).parent / "bids-validator-deno"
    if here.exists():
        return [str(here)]
    exe = shutil.which("bids-validator-deno")
    return [exe] if exe else None


def validate_bids(bids_dir: Path, dataset_type: str | None = None) -> list[str]:
    """Run the BIDS validator (schema-based, offline) and return its warnings.

    Raises :class:`BIDSError` with the validator's error messages when the dataset is invalid.
    """
    cmd = _validator_command()
    if cmd is None:
        raise BIDSError("the BIDS validator (bids-validator-deno) is not installed; "
                        "install it or pass --skip-bids-validation")
    args = cmd + ["--format", "json", "--ignoreNiftiHeaders", str(bids_dir)]
    if dataset_type:
        args[-1:-1] = ["--datasetTypes", dataset_type]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise BIDSError(f"the BIDS validator failed on {bids_dir}: {proc.stderr.strip()[:2000]}") from exc
    errors, warnings = [], []
    for issue in report.get("issues", {}).get("issues", []):
        code = issue.get("code", "?") + (f"/{issue['subCode']}" if issue.get("subCode") else "")
        text = f"{code} {issue.get('location') or ''}".strip()
        if issue.get("severity") == "error":
            detail = (issue.get("issueMessage") or "").strip().splitlines()
            errors.append(f"{text}: {detail[0]}" if detail else text)
        else:
            warnings.append(text)
    if errors:
        raise BIDSError(f"{bids_dir} is not a valid BIDS dataset:\n  " + "\n  ".join(errors[:50]))
    return warnings


def read_participants(bids_dir: Path) -> dict[str, dict[str, str]]:
    """``participants.tsv`` as ``{participant_id: {column: value}}`` (empty when absent)."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {row["participant_id"]: row for row in rows if row.get("participant_id")}


def participant_age(row: dict[str, str] | None) -> float | None:
    """The age of a participants.tsv row in years, or None when absent or not a number."""
    if not row:
        return None
    value = row.get("age", "n/a")
    try:
        age = float(value)
    except (TypeError, ValueError):
        return None
    return age if age == age else None


def _require_known(kind: str, requested, available, where: str = "") -> None:
    """Raise :class:`NoMatchError` listing the available labels if any requested is unknown."""
    missing = sorted(set(requested) - set(available))
    if missing:
        raise NoMatchError(f"{kind} label(s) not found{where}: {', '.join(missing)}. "
                           f"Available: {', '.join(available) or 'none'}")


def find_t1w(bids_dir: Path, participant_label=(), session_label=(),
             database_path: Path | None = None) -> list[T1wImage]:
    """Every T1w image of the selected participants and sessions, found with pybids.

    Raises :class:`NoMatchError` naming the available labels when a requested label does not
    exist or nothing matches.
    """
    from bids import BIDSLayout

    kwargs = {"validate": False}
    if database_path is not None:
        kwargs.update(database_path=str(database_path), reset_database=True)
    layout = BIDSLayout(str(bids_dir), **kwargs)
    subjects = sorted(layout.get_subjects())
    _require_known("participant", participant_label, subjects, f" in {bids_dir}")
    query = {"suffix": "T1w", "datatype": "anat", "extension": [".nii", ".nii.gz"]}
    if participant_label:
        query["subject"] = list(participant_label)
    if session_label:
        _require_known("session", session_label, sorted(layout.get_sessions()))
        query["session"] = list(session_label)
    images = []
    for f in layout.get(**query):
        ent = f.get_entities()
        images.append(T1wImage(
            path=Path(f.path), subject=ent["subject"], session=ent.get("session"),
            run=str(ent["run"]) if ent.get("run") is not None else None,
            acquisition=ent.get("acquisition"),
        ))
    if not images:
        raise NoMatchError(f"no T1w image matched in {bids_dir} "
                           f"(participants: {', '.join(subjects) or 'none'})")
    return sorted(images, key=lambda im: im.prefix)
