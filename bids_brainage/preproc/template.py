"""The bundled MNI ICBM152 2009a symmetric template and the fixed 2 mm grid the models use.

The 1 mm files come from nilearn's bundled copy (no download at run time). The 2 mm grid is
the 1 mm grid subsampled by two, so the two share their origin.
"""
from __future__ import annotations

import functools
from pathlib import Path

import nibabel as nib
import numpy as np

SPACE = "MNI152NLin2009aSym"
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "data" / f"tpl-{SPACE}"
T1_BRAIN = TEMPLATE_DIR / f"tpl-{SPACE}_res-1_desc-brain_T1w.nii.gz"
GM_PROB = TEMPLATE_DIR / f"tpl-{SPACE}_res-1_label-GM_probseg.nii.gz"
WM_PROB = TEMPLATE_DIR / f"tpl-{SPACE}_res-1_label-WM_probseg.nii.gz"
# nilearn's brain mask of this template: T1 > 0.2 of its range; the file is 0..255.
MASK_THRESHOLD = 0.2 * 255
GRID_MM = 2.0


@functools.lru_cache(maxsize=None)
def template_1mm() -> nib.Nifti1Image:
    return nib.load(str(T1_BRAIN))


def grid_2mm() -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the fixed 2 mm MNI grid (99 x 117 x 95).

    >>> shape, affine = grid_2mm()
    >>> shape, affine[0, 0], affine[:3, 3].tolist()
    ((99, 117, 95), np.float64(2.0), [-98.0, -134.0, -72.0])
    """
    img = template_1mm()
    shape = tuple(int(np.ceil(s / 2)) for s in img.shape[:3])
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] * 2
    return shape, affine


@functools.lru_cache(maxsize=None)
def template_2mm() -> nib.Nifti1Image:
    """The template resampled (block-averaged) onto the 2 mm grid."""
    data = np.asarray(template_1mm().dataobj, dtype=np.float32)
    shape, affine = grid_2mm()
    padded = np.zeros([s * 2 for s in shape], np.float32)
    padded[: data.shape[0], : data.shape[1], : data.shape[2]] = data
    down = padded.reshape(shape[0], 2, shape[1], 2, shape[2], 2).mean(axis=(1, 3, 5))
    return nib.Nifti1Image(down.astype(np.float32), affine)


def template_mask(img: nib.Nifti1Image | None = None) -> np.ndarray:
    """The template brain mask (T1 > 0.2 of its range, as nilearn defines it)."""
    img = template_1mm() if img is None else img
    return np.asarray(img.dataobj) > MASK_THRESHOLD


def save_template_mask(path: Path) -> Path:
    from bids_brainage.io import save_nifti

    img = template_1mm()
    return save_nifti(nib.Nifti1Image(template_mask(img).astype(np.uint8), img.affine), path)
