"""T1w discovery: which images to process, and the entities that name their outputs.

A participant's images are found by walking only that participant's folder, applying pybids'
own entity patterns (``bids/layout/config/bids.json``) to each file's path relative to the
dataset, with pybids' indexing rules (dot entries skipped, folder symlinks followed). The
results equal pybids' (``find_t1w_pybids``, kept as the reference the tests compare against),
but a one-participant job of a 1,000-participant dataset no longer indexes the other 999.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from bids_brainage.io import scan_dir

# pybids 0.22 bids.json patterns; searched in "/" + the path relative to the dataset root
# (pybids searches the absolute path, which misreads a dataset stored under e.g. /data/sub-x/)
_SUBJECT = re.compile(r"[/\\]+sub-([a-zA-Z0-9+]+)")
_SESSION = re.compile(r"[_/\\]+ses-([a-zA-Z0-9+]+)")
_ACQUISITION = re.compile(r"[_/\\]+acq-([a-zA-Z0-9+]+)")
_RUN = re.compile(r"[_/\\]+run-(\d+)")
_SUFFIX = re.compile(r"(?:^|[_/\\])([a-zA-Z0-9+]+)\.[^/\\]+$")
_DATATYPE = re.compile(
    r"[/\\]+(anat|beh|dwi|eeg|fmap|func|ieeg|meg|micr|motion|mrs|nirs|perf|pet)[/\\]+")
_EXTENSION = re.compile(r"[^./\\](\.[^/\\]+)$")
_LABEL = re.compile(r"^[a-zA-Z0-9+]+$")
T1W_EXTENSIONS = (".nii", ".nii.gz")


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


def list_subjects(bids_dir: Path) -> list[str]:
    """Labels of the dataset's ``sub-<label>`` folders, sorted."""
    labels = (p.name[4:] for p in scan_dir(Path(bids_dir), dirs=True, prefix="sub-"))
    return sorted(label for label in labels if _LABEL.match(label))


def _walk(folder: Path, rel: str):
    """``(path, "/rel/path")`` of every file under ``folder``, as pybids indexes them."""
    stack = [(folder, rel)]
    while stack:
        here, rel_here = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):  # pybids never indexes dot entries
                continue
            rel_entry = f"{rel_here}/{entry.name}"
            if entry.is_dir() and not entry.name.endswith(".zarr"):
                stack.append((Path(entry.path), rel_entry))
            else:
                yield Path(entry.path), rel_entry


def _entity(pattern: re.Pattern, rel: str) -> str | None:
    match = pattern.search(rel)
    return match.group(1) if match else None


def _t1w_images(bids_dir: Path, subject: str) -> tuple[list[T1wImage], set[str]]:
    """The T1w images under ``sub-<subject>/`` and every session label seen there."""
    images, sessions = [], set()
    for path, rel in _walk(Path(bids_dir) / f"sub-{subject}", f"/sub-{subject}"):
        session = _entity(_SESSION, rel)
        if session:
            sessions.add(session)
        if (_entity(_SUFFIX, rel) == "T1w" and _entity(_DATATYPE, rel) == "anat"
                and _entity(_EXTENSION, rel) in T1W_EXTENSIONS):
            images.append(T1wImage(path=path, subject=_entity(_SUBJECT, rel), session=session,
                                   run=_entity(_RUN, rel),
                                   acquisition=_entity(_ACQUISITION, rel)))
    return images, sessions


def find_t1w(bids_dir: Path, participant_label=(), session_label=()) -> list[T1wImage]:
    """Every T1w image of the selected participants and sessions, sorted by output prefix.

    Only the selected participants' folders are read. Raises :class:`NoMatchError` naming the
    available labels when a requested label does not exist or nothing matches.
    """
    bids_dir = Path(bids_dir)
    subjects = list_subjects(bids_dir)
    _require_known("participant", participant_label, subjects, f" in {bids_dir}")
    images, sessions = [], set()
    for subject in sorted(set(participant_label)) if participant_label else subjects:
        found, seen = _t1w_images(bids_dir, subject)
        images += found
        sessions |= seen
    if session_label:
        _require_known("session", session_label, sorted(sessions))
        images = [im for im in images if im.session in session_label]
    if not images:
        raise NoMatchError(f"no T1w image matched in {bids_dir} "
                           f"(participants: {', '.join(subjects) or 'none'})")
    return sorted(images, key=lambda im: (im.prefix, str(im.path)))


def find_t1w_pybids(bids_dir: Path, participant_label=(), session_label=(),
                    database_path: Path | None = None) -> list[T1wImage]:
    """The same query through a pybids ``BIDSLayout`` of the whole dataset: the reference
    that :func:`find_t1w` is tested against (and the start-up benchmark's "before")."""
    from bids import BIDSLayout

    kwargs = {"validate": False}
    if database_path is not None:
        kwargs.update(database_path=str(database_path), reset_database=True)
    layout = BIDSLayout(str(bids_dir), **kwargs)
    subjects = sorted(layout.get_subjects())
    _require_known("participant", participant_label, subjects, f" in {bids_dir}")
    query = {"suffix": "T1w", "datatype": "anat", "extension": list(T1W_EXTENSIONS)}
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
    return sorted(images, key=lambda im: (im.prefix, str(im.path)))
