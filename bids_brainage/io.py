"""Files in and out, shared by every stage: atomic writes, checked inputs, the work-dir lock.

An interrupted run must leave no half-written file: everything goes to a temporary name in
the destination folder (``.<name>.tmp-<host>-<pid>-XXXX<suffix>``, hidden and ignored by the
group level) and is renamed into place (``os.replace`` is atomic on POSIX). A run killed
between the two leaves its temporary file behind; the next run on that host removes it
(:func:`remove_stale_temporaries`).

Inputs are checked before anything large is allocated: :func:`check_input_file` (links,
permissions, empty files) and :func:`load_t1w` (the header's claims, then the data).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from bids_brainage.pause import pause_point

# a 0.5 mm whole head is ~80 M voxels; a header claiming more is refused before reading
MAX_VOXELS = 512**3
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-")


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_HOST}-{os.getpid()}-",
                               suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        pause_point(f"write:{path.name}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Remove the temporary files that killed runs of this host left in ``folder``.

    Only files whose writer (host and pid in the name) is known to be gone: a run still
    writing, here or on another node sharing the folder, keeps its file.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or not entry.is_file(follow_symlinks=False):
            continue
        if match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


GZIP_LEVEL = 1  # nibabel's own default for .nii.gz

# the run's helper compressing a step's output for the derivatives: source path -> result
_compressing: dict[str, object] = {}


def gzip_file(src: Path | str, dst: Path | str) -> str:
    """Compress the file ``src`` into ``dst`` (atomically): a ``.nii`` becomes the
    ``.nii.gz`` nibabel would write.

    >>> import gzip, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.nii").write_bytes(b"x" * 1000)
    >>> out = gzip_file(d / "a.nii", d / "b.nii.gz")
    >>> gzip.decompress((d / "b.nii.gz").read_bytes()) == b"x" * 1000
    True
    >>> again = gzip_file(d / "a.nii", d / "c.nii.gz")
    >>> (d / "b.nii.gz").read_bytes() == (d / "c.nii.gz").read_bytes()
    True
    """
    import gzip

    # deterministic, as nibabel writes: no file name and a zero time in the gzip header, so
    # the same image gives the same bytes whoever compressed it and whenever
    with atomic_path(dst) as tmp, open(src, "rb") as fin, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=raw,
                          mtime=0) as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)
    return str(dst)


def compress_ahead(src: Path | str, threads: int) -> None:
    """Begin compressing a step's uncompressed output ``src`` into ``src.gz`` in the run's
    helper process (``threads`` > 1), for :func:`copy_compressed` to copy into the
    derivatives later. The helper is idle while this process registers the image (ANTs holds
    the interpreter's lock, so a thread here would wait for it): a 1 mm float32 head takes
    1.2 s to compress. With one thread nothing is begun and the copy compresses."""
    if threads <= 1:
        return
    from bids_brainage import helper

    _compressing[str(src)] = helper.run_there(
        threads, lambda: None, __name__, "gzip_file", str(src), f"{src}.gz")


def copy_compressed(src: Path | str, dst: Path | str) -> Path:
    """Copy a NIfTI into ``dst`` (``.nii.gz``): as is when ``src`` is compressed, else the
    compressed copy :func:`compress_ahead` made (waiting for it) when there is one at least
    as new as ``src``, else compressed here."""
    src = Path(src)
    if src.name.endswith(".gz"):
        return atomic_copy(src, dst)
    pending = _compressing.pop(str(src), None)
    if pending is not None:
        with contextlib.suppress(RuntimeError):  # it failed there: compress here
            pending()
    ready = Path(f"{src}.gz")
    if ready.exists() and ready.stat().st_mtime_ns >= src.stat().st_mtime_ns:
        return atomic_copy(ready, dst)
    return Path(gzip_file(src, dst))


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


def _without_path(message: str, path: Path) -> str:
    """A library's error message with the file's path taken out: ours names it once."""
    for form in (f'File "{path}"', f"File '{path}'", f"File {path}", f'"{path}"', f"'{path}'",
                 str(path)):
        message = message.replace(form, "the file")
    return message


def check_input_file(path: Path | str) -> None:
    """Refuse an input that is not a readable, non-empty file, before anything opens it.

    A datalad / git-annex dataset whose content was not fetched has its images as links to
    absent annex objects: that is said, with the command that fetches them.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        target = os.readlink(path)
        hint = (" (a datalad/git-annex file whose content is not here: `datalad get` it)"
                if ".git/annex/objects" in target or "annex" in target else "")
        raise InputError(f"{path}: broken link to {target}{hint}")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: a folder, not an image file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")


def check_header(path: Path, img) -> None:
    """Refuse what a header claims before any data is read: dimensions, size, type, scaling.

    Keeps memory bounded whatever the header says: more than :data:`MAX_VOXELS` voxels, or
    more data than an uncompressed file holds, is refused without reading a byte of data.
    """
    import numpy as np

    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3:
        raise InputError(f"{path}: expected a 3-D T1w image, got {len(shape)}-D data "
                         f"of shape {shape}")
    if len(shape) > 3 and int(np.prod(shape[3:])) != 1:
        raise InputError(f"{path}: expected a 3-D T1w image, got {len(shape)}-D data "
                         f"of shape {shape}")
    voxels = int(np.prod(shape[:3], dtype=object))
    if voxels == 0:
        raise InputError(f"{path}: the header gives an empty image (shape {shape})")
    if voxels > MAX_VOXELS:
        raise InputError(f"{path}: the header claims {shape[:3]} = {voxels:,} voxels, more "
                         f"than the {MAX_VOXELS:,} a T1w image can need; corrupt header?")
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind not in "biuf":
        name = "RGB" if dtype.fields else dtype.name
        raise InputError(f"{path}: data type {name} is not a T1w intensity image")
    raw = _raw_header(path, img)
    if raw is not None and "pixdim" in raw and int(raw.get("sform_code", 0)) == 0:
        # the affine is built from pixdim, which nibabel would silently set to 1 mm
        pixdim = np.asarray(raw["pixdim"][1:4], dtype=float)
        if not np.all(np.isfinite(pixdim) & (pixdim > 0)):
            raise InputError(f"{path}: the header's voxel sizes (pixdim) {pixdim.tolist()} "
                             "are not positive numbers")
    slope, inter = (getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0))
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise InputError(f"{path}: the header's intensity scaling is not finite "
                         f"(slope {slope}, intercept {inter})")
    if str(path).endswith(".nii") and hasattr(img.dataobj, "offset"):
        needed = int(img.dataobj.offset) + voxels * dtype.itemsize
        size = path.stat().st_size
        if size < needed:
            raise InputError(f"{path}: truncated: the header promises {needed:,} bytes, the "
                             f"file holds {size:,}")


def _raw_header(path: Path, img):
    """The header as stored, before nibabel's repairs (None if it cannot be read again)."""
    import nibabel as nib

    try:
        with nib.openers.ImageOpener(str(path)) as handle:
            return type(img.header).from_fileobj(handle, check=False)
    except Exception:  # noqa: BLE001 - a second look only; the load itself succeeded
        return None


def _image_data(path: Path, img):
    """``np.asanyarray(img.dataobj)``, the same array; a compressed file is read and unpacked
    in one piece, no further than the header says the data go. nibabel unpacks 8 KiB at a
    time, each piece waiting for the interpreter's lock: a 1 mm head's 32 MB took 0.9 s
    while the run's warm-up thread imported, 0.14 s alone."""
    import zlib

    import nibabel as nib
    import numpy as np

    if not path.name.endswith(".gz") or not isinstance(img, nib.Nifti1Image):
        return np.asanyarray(img.dataobj)
    header = img.header  # the offset nibabel reads from (a header's 0 means 352)
    end = int(img.dataobj.offset) + int(np.prod(header.get_data_shape())) * \
        header.get_data_dtype().itemsize
    raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(path.read_bytes(), end)
    if len(raw) < end:  # several gzip members, or a short file: nibabel reads it (or says why)
        return np.asanyarray(img.dataobj)
    return np.asanyarray(type(img).from_bytes(raw).dataobj)


def load_t1w(path: Path | str):
    """Load a T1w image and refuse what the pipeline cannot use, naming file and reason.

    Returns the nibabel image with its data checked: 3-D (a 4-D image with one volume is
    squeezed), finite, not constant, and with an invertible affine of sane voxel sizes. The
    header is checked first (:func:`check_header`), so a lying header costs no memory.
    """
    import nibabel as nib
    import numpy as np

    path = Path(path)
    check_input_file(path)
    try:  # nibabel logs its header repairs; the checks below say what matters, once
        with _quiet("nibabel"):
            img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"{path}: cannot read the image "
                         f"({type(exc).__name__}: {_without_path(str(exc), path)})") from exc
    check_header(path, img)
    try:
        data = _image_data(path, img)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the image data "
                         f"({type(exc).__name__}: {_without_path(str(exc), path)})") from exc
    if data.ndim > 3:
        data = data.reshape(data.shape[:3])
    if min(data.shape) < 16:
        raise InputError(f"{path}: image too small to be a head scan (shape {data.shape})")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the affine has non-finite values")
    det = np.linalg.det(affine[:3, :3])
    if abs(det) < 1e-12:
        raise InputError(f"{path}: the affine is singular (determinant {det:.3g})")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms < 0.1) or np.any(zooms > 10):
        raise InputError(
            f"{path}: voxel sizes {np.round(zooms, 3).tolist()} mm from the affine are implausible"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # reported just below
        data = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: the image contains NaN or infinite values")
    if not np.any(data):
        raise InputError(f"{path}: the image is all zeros")
    if float(data.max()) == float(data.min()):
        raise InputError(f"{path}: the image is constant ({float(data.max())})")
    levels = np.unique(data[::3, ::3, ::3])
    if levels.size < 8:
        raise InputError(f"{path}: only {levels.size} distinct intensities: a mask or label "
                         "image, not a T1w")
    return nib.Nifti1Image(data, affine, img.header)


@contextlib.contextmanager
def _quiet(logger_name: str):
    import logging

    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def work_dir_lock(work_dir: Path | str, log):
    """Hold the work dir for this run: a second run given the same folder waits for the first.

    nipype's cache, pybids' index and the crash files live there; two runs writing them at
    once could corrupt them. The lock (``fcntl.flock`` on ``.bids_brainage.lock``) goes with
    the process, also when it is killed. On a file system without locks (some Lustre mounts)
    the run goes on with a warning.
    """
    import fcntl

    path = Path(work_dir) / ".bids_brainage.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            log.warning("work dir %s is in use by another bids_brainage run (%s); waiting "
                        "for it to finish (give each job its own -w to run them side by side)",
                        work_dir, holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.warning("work dir %s is free; going on (finished steps are reused)", work_dir)
        except OSError as exc:
            log.warning("cannot lock the work dir %s (%s); make sure no other run uses it",
                        work_dir, exc)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield path


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
