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

from bids_brainage.outputs import output_names


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
    from bids_brainage.bids import participant_age

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
    """The un-normalised brain and its mask on the 2 mm MNI grid, as prediction sees them."""
    import nibabel as nib

    from bids_brainage.preproc.register import apply_to_template

    names = output_names(subject.prefix)
    t1w = nib.load(str(subject.anat_dir / names["t1w"]))
    mask = np.asanyarray(nib.load(str(subject.anat_dir / names["mask"])).dataobj) > 0
    brain = nib.Nifti1Image(np.where(mask, t1w.get_fdata(dtype=np.float32), 0).astype(np.float32),
                            t1w.affine)
    transforms = [str(subject.anat_dir / names["affine"])]
    warp = subject.anat_dir / names["warp"]
    if warp.exists():
        transforms.insert(0, str(warp))
    out = apply_to_template(brain, mask, transforms)
    return out["mni"].get_fdata(dtype=np.float32), out["mni_mask"]


def build_inputs(subjects: list[Subject], spec: dict, progress: bool = True) -> np.ndarray:
    """Stack :func:`model_inputs` for every subject (a progress bar on the way)."""
    from tqdm import tqdm

    from bids_brainage.models.predict import model_inputs

    rows = []
    for subject in tqdm(subjects, desc=f"inputs {spec.get('feature')}", disable=not progress):
        mni, mask = load_mni(subject)
        rows.append(model_inputs(mni, mask, spec))
    return np.stack(rows)
