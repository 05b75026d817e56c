"""The bundled region atlas: DLMUSE labels of the training pool, brought to the 2 mm MNI grid.

The contribution maps of the participant report are summed per region of this atlas. It is
made from the pool itself: each participant's DLMUSE label map (``derivatives/dlmuse``, an
independent segmentation by the NiChart project) goes through that participant's affine
registration to the template, and each voxel of the 2 mm grid takes the label most
participants give it (background where most give none). Region names are MUSE's (NiChart
DLMUSE ROI list).

    python -m bids_brainage.training.atlas POOL_BIDS_DIR POOL_DERIVATIVES OUT_FILE
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def participant_labels(dseg: Path, affine_file: Path) -> np.ndarray:
    """One participant's label map on the 2 mm MNI grid (nearest neighbour)."""
    import ants
    import nibabel as nib

    from bids_brainage.preproc.template import template_2mm

    img = nib.as_closest_canonical(nib.load(str(dseg)))
    moving = ants.from_nibabel_nifti(nib.Nifti1Image(np.asarray(img.dataobj, np.float32),
                                                     img.affine))
    tpl = template_2mm()
    fixed = ants.from_nibabel_nifti(nib.Nifti1Image(tpl.get_fdata(dtype=np.float32),
                                                    tpl.affine))
    out = ants.apply_transforms(fixed, moving, [str(affine_file)],
                                interpolator="nearestNeighbor")
    return np.rint(out.numpy()).astype(np.int16)


def majority(labels: list[np.ndarray]) -> np.ndarray:
    """The most frequent label per voxel (ties to the smaller label).

    >>> a, b, c = np.array([1, 0, 2]), np.array([1, 2, 2]), np.array([3, 0, 0])
    >>> majority([a, b, c]).tolist()
    [1, 0, 2]
    """
    stack = np.stack(labels)
    values = np.unique(stack)
    counts = np.stack([(stack == v).sum(axis=0) for v in values])
    return values[np.argmax(counts, axis=0)].astype(np.int16)


def build(pool: Path, derivatives: Path) -> np.ndarray:
    from bids_brainage.bids.derivatives import output_names

    labels = []
    for dseg in sorted((Path(pool) / "derivatives" / "dlmuse").glob("sub-*/anat/*_dseg.nii*")):
        prefix = dseg.name.split("_dseg")[0]
        affine = Path(derivatives) / prefix.split("_")[0] / "anat" / output_names(prefix)["affine"]
        if affine.exists():
            labels.append(participant_labels(dseg, affine))
    if not labels:
        raise SystemExit(f"no DLMUSE label map with a registration under {pool}")
    return majority(labels)


if __name__ == "__main__":  # pragma: no cover - run once to make the bundled file
    import nibabel as nib

    from bids_brainage.preproc.template import template_2mm

    atlas = build(Path(sys.argv[1]), Path(sys.argv[2]))
    img = nib.Nifti1Image(atlas, template_2mm().affine)
    img.header.set_data_dtype(np.int16)
    img.to_filename(sys.argv[3])
    print(f"{sys.argv[3]}: {len(np.unique(atlas)) - 1} regions")
