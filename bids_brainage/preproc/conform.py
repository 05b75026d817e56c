"""Conform: reorient to RAS+ and cast to float32, keeping the native resolution."""
from __future__ import annotations

import nibabel as nib
import numpy as np


def conform(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Return ``img`` reoriented to the closest RAS+ orientation, as float32.

    >>> img = nib.Nifti1Image(np.arange(8, dtype=np.uint8).reshape(2, 2, 2), np.diag([-1, 1, 1, 1]))
    >>> out = conform(img)
    >>> nib.aff2axcodes(out.affine), out.get_data_dtype()
    (('R', 'A', 'S'), dtype('float32'))
    """
    canonical = nib.as_closest_canonical(img)
    data = np.asarray(canonical.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    header = canonical.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(None, None)
    out = nib.Nifti1Image(data, canonical.affine, header)
    out.set_qform(canonical.affine, code=1)
    out.set_sform(canonical.affine, code=1)
    return out


def voxel_sizes(img: nib.Nifti1Image) -> tuple[float, float, float]:
    """Voxel sizes in mm from the affine (robust to headers that disagree with it)."""
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    return tuple(float(z) for z in zooms)
