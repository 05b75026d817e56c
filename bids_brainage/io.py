"""Files in and out, shared by every stage: atomic writes, checked image loading, folder scans.

An interrupted run must leave no half-written file: everything goes to a temporary name in
the destination folder and is renamed into place (``os.replace`` is atomic on POSIX).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


class InputError(ValueError):
    """An input image that cannot be processed; the message names the file and the reason."""


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str | None = None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("hi")
    >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('hi', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        # keep compound suffixes such as .nii.gz so writers pick the right format
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: Path | str, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_copy(src: Path | str, dst: Path | str) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def save_nifti(img, path: Path | str) -> Path:
    """Save a nibabel image atomically."""
    with atomic_path(path) as tmp:
        img.to_filename(str(tmp))
    return Path(path)


def load_t1w(path: Path | str):
    """Load a T1w image and refuse what the pipeline cannot use, naming file and reason.

    Returns the nibabel image with its data checked: 3-D (a 4-D image with one volume is
    squeezed), finite, not constant, and with an invertible affine of sane voxel sizes.
    """
    import nibabel as nib
    import numpy as np

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(
            f"{path}: expected a 3-D T1w image, got {data.ndim}-D data of shape {data.shape}"
        )
    if min(data.shape) < 16:
        raise InputError(f"{path}: image too small to be a head scan (shape {data.shape})")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the affine has non-finite values")
    det = np.linalg.det(affine[:3, :3])
    if abs(det) < 1e-6:
        raise InputError(f"{path}: the affine is singular (determinant {det:.3g})")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms < 0.1) or np.any(zooms > 10):
        raise InputError(
            f"{path}: voxel sizes {np.round(zooms, 3).tolist()} mm from the affine are implausible"
        )
    data = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: the image contains NaN or infinite values")
    if not np.any(data):
        raise InputError(f"{path}: the image is all zeros")
    if float(data.max()) == float(data.min()):
        raise InputError(f"{path}: the image is constant ({float(data.max())})")
    return nib.Nifti1Image(data, affine, img.header)


def scan_dir(folder: Path, *, dirs: bool, prefix: str) -> list[Path]:
    """Entries of ``folder`` whose names start with ``prefix`` (folders or files); none when
    ``folder`` is missing. ``os.scandir``: cohorts have thousands of folders."""
    try:
        with os.scandir(folder) as entries:
            return [
                Path(e.path) for e in entries
                if e.name.startswith(prefix) and e.is_dir() == dirs
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
