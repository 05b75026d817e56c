"""T1w discovery with pybids: which images to process, and the entities that name outputs."""
from __future__ import annotations

import dataclasses
from pathlib import Path


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
