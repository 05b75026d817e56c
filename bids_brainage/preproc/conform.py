"""Conform: reorient to RAS+ and cast to float32, keeping the native resolution."""
from __future__ import annotations

import nibabel as nib
import numpy as np


def conform(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Return ``img`` reoriented to the closest RAS+ orientation, as float32.

    >>> img = nib.Nifti1Image(np.arange(8, dtype=np.uint8).reshape(2, 2, 2), np.diag([-1, 1, 1, 1]))
    >>> out = conform(img)
    >>> nib.aff2axcodes(out.affine), out.get_data_dtype() == np.float32
    (('R', 'A', 'S'), True)
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


def as_int16_if_lossless(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img`` stored as int16 when that keeps every value (a scanner's integers), else as is:
    half the bytes of float32 for the steps that write, hash and read it. Its readers take
    the values as float32 (the same numbers either way).

    >>> ints = nib.Nifti1Image(np.array([[[0, 7], [-3, 900]]], np.float32), np.eye(4))
    >>> out = as_int16_if_lossless(ints)
    >>> out.get_data_dtype() == np.int16, out.get_fdata().ravel().tolist()
    (True, [0.0, 7.0, -3.0, 900.0])
    >>> halves = nib.Nifti1Image(np.array([[[0.5]]], np.float32), np.eye(4))
    >>> as_int16_if_lossless(halves).get_data_dtype() == np.float32
    True
    """
    data = np.asanyarray(img.dataobj)
    if data.size == 0 or data.min() < -32768 or data.max() > 32767 \
            or not np.array_equal(data, np.rint(data)):
        return img
    header = img.header.copy()
    header.set_data_dtype(np.int16)
    out = nib.Nifti1Image(data.astype(np.int16), img.affine, header)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    return out


def voxel_sizes(img: nib.Nifti1Image) -> tuple[float, float, float]:
    """Voxel sizes in mm from the affine (robust to headers that disagree with it)."""
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    return tuple(float(z) for z in zooms)
