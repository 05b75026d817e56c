"""Training inputs rebuilt from participant-level derivatives, with the prediction code path.

The participant workflow resamples the N4-corrected brain onto the 2 mm MNI grid and hands
it to :func:`bids_brainage.models.predict.model_inputs`. Here the same brain is rebuilt from
the derivatives (N4 T1w × brain mask, the saved transform) with the same function
(:func:`bids_brainage.preproc.register.apply_to_template`), so training and use agree.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_brainage.bids.derivatives import output_names


@dataclass
class Subject:
    participant_id: str
    age: float
    prefix: str
    anat_dir: Path
    sex: str = "n/a"
    site: str = "n/a"


def find_subjects(derivatives_dir: Path, participants: dict[str, dict]) -> list[Subject]:
    """Participants with an age whose participant-level outputs are complete (status ok
    in the ``_brainage.json`` sidecar; the TSV has no rows when no model ran)."""
    from bids_brainage.bids.participants import participant_age

    subjects = []
    for sidecar in sorted(Path(derivatives_dir).glob("sub-*/**/anat/*_brainage.json")):
        if json.loads(sidecar.read_text()).get("status") != "ok":
            continue
        prefix = sidecar.name[: -len("_brainage.json")]
        pid = prefix.split("_")[0]
        age = participant_age(participants.get(pid))
        if age is None:
            continue
        row = participants.get(pid, {})
        subjects.append(Subject(pid, age, prefix, sidecar.parent,
                                row.get("sex", "n/a"), row.get("site", "n/a")))
    return subjects


def load_mni(subject: Subject) -> tuple[np.ndarray, np.ndarray]:
    """The un-normalised brain and its mask on the 2 mm MNI grid, as prediction sees them
    (affinely registered, even where the run also made a SyN warp)."""
    import nibabel as nib

    from bids_brainage.preproc.register import apply_to_template

    names = output_names(subject.prefix)
    t1w = nib.load(str(subject.anat_dir / names["t1w"]))
    mask = np.asanyarray(nib.load(str(subject.anat_dir / names["mask"])).dataobj) > 0
    brain = nib.Nifti1Image(np.where(mask, t1w.get_fdata(dtype=np.float32), 0).astype(np.float32),
                            t1w.affine)
    # the affine alone, whatever --registration made: every model reads the affine image
    out = apply_to_template(brain, mask, [str(subject.anat_dir / names["affine"])])
    return out["mni"].get_fdata(dtype=np.float32), out["mni_mask"]


def subject_inputs(subject: Subject, spec: dict) -> np.ndarray:
    """:func:`model_inputs` of one subject's derivatives; with an ``augment`` entry in the
    spec, of the randomised copy it names (``training.augment``)."""
    from bids_brainage.models.predict import model_inputs

    mni, mask = load_mni(subject)
    if "augment" in spec:
        from bids_brainage.training.augment import copy_of

        mni, mask, _ = copy_of(subject.prefix, mni, mask, spec["augment"])
        spec = {k: v for k, v in spec.items() if k != "augment"}
    return model_inputs(mni, mask, spec)


def build_inputs(subjects: list[Subject], spec: dict, progress: bool = True,
                 nprocs: int = 1, cache_dir: Path | None = None) -> np.ndarray:
    """Stack :func:`subject_inputs` for every subject, in order, on ``nprocs`` processes
    (forkserver workers: forked ones hang once torch has run), with a progress bar.

    With ``cache_dir``, each subject's input is kept there under a key of the spec, the code
    version and the derivatives' sizes and times, and reused while they are unchanged.
    """
    import functools
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from tqdm import tqdm

    work = functools.partial(cached_inputs if cache_dir else subject_inputs, spec=spec,
                             **({"cache_dir": Path(cache_dir)} if cache_dir else {}))
    bar = dict(total=len(subjects), desc=f"inputs {spec.get('feature')}", disable=not progress)
    if nprocs <= 1 or len(subjects) < 2:
        return np.stack([work(s) for s in tqdm(subjects, **bar)])
    with ProcessPoolExecutor(nprocs, mp_context=get_context("forkserver")) as pool:
        return np.stack(list(tqdm(pool.map(work, subjects), **bar)))


def cache_key(subject: Subject, spec: dict) -> str:
    import hashlib

    from bids_brainage import __version__

    names = output_names(subject.prefix)
    stamps = []
    for key in ("t1w", "mask", "affine"):
        path = subject.anat_dir / names[key]
        stat = path.stat()
        stamps.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    text = json.dumps([spec, __version__, stamps], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_inputs(subject: Subject, spec: dict, cache_dir: Path) -> np.ndarray:
    """:func:`subject_inputs`, kept in ``cache_dir`` (written atomically)."""
    from bids_brainage.io import atomic_path

    path = Path(cache_dir) / f"{subject.prefix}-{cache_key(subject, spec)}.npy"
    if path.exists():
        return np.load(path)
    x = subject_inputs(subject, spec)
    with atomic_path(path) as tmp:
        np.save(tmp, x)
    return x
