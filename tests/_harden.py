"""Helpers of the hardening tests: the app as a user runs it, and what it must leave alone.

``run_app`` starts ``python -m bids_brainage`` in a fresh process whose home folder, temporary
folder and working directory are empty folders of their own: after the run they must still
be empty (nothing written outside output_dir and the work dir). ``manifest`` fingerprints a
folder tree (names, kinds, modes, sizes, sha256, link targets) to prove an input unchanged.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "ds-ixi3"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_UNSHARE = shutil.which("unshare") is not None


def manifest(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, permission bits, and size + sha256 or link target."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[rel] = ("dir", st.st_mode & 0o7777)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[rel] = ("file", st.st_mode & 0o7777, st.st_size, digest)
    return entries


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    elsewhere: list[str]  # anything written into the home, temporary or current folder

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if " ERROR " in line]


def run_app(args: list[str], sandbox: Path, *, env: dict | None = None,
            wrap: list[str] | None = None, timeout: float = 900) -> Result:
    """``python -m bids_brainage *args`` with empty home, TMPDIR and cwd under ``sandbox``."""
    folders = {name: sandbox / name for name in ("home", "tmp", "cwd")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    run_env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MPLCONFIGDIR", "XDG_", "DENO_", "NIPYPE_", "TORCH"))}
    run_env.update(HOME=str(folders["home"]), TMPDIR=str(folders["tmp"]),
                   PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    command = (wrap or []) + [sys.executable, "-m", "bids_brainage", *map(str, args)]
    proc = subprocess.run(command, cwd=folders["cwd"], env=run_env, capture_output=True,
                          text=True, timeout=timeout)
    elsewhere = sorted(str(p) for folder in folders.values() for p in folder.rglob("*"))
    return Result(proc.returncode, proc.stdout, proc.stderr, elsewhere)


def times_named(line: str, path: Path | str) -> int:
    """How often a line names a file: by its full path, or by its bare name when that is a
    file name (``sub-01_T1w.nii.gz``; not words such as ``work`` or ``file``)."""
    path = str(path)
    name = Path(path).name
    count = line.count(path)
    if "." in name or "_" in name:
        rest = line.replace(path, "")
        count += len(re.findall(rf"(?<![\w/.-]){re.escape(name)}(?![\w.-])", rest))
    return count


# ------------------------------------------------------------------------ broken images
def _example_image():
    img = nib.load(EXAMPLE / "sub-IXI095" / "anat" / "sub-IXI095_T1w.nii.gz")
    return np.asarray(img.dataobj), img.affine


def _with_rows(path: Path, *, affine_rows=None, qform_code=0, pixdim=None):
    data = np.random.default_rng(0).random((32, 32, 32)).astype(np.float32) + 1
    img = nib.Nifti1Image(data, None)
    img.header["qform_code"], img.header["sform_code"] = qform_code, 1 if affine_rows else 0
    if affine_rows:
        img.header["srow_x"], img.header["srow_y"], img.header["srow_z"] = affine_rows
    if pixdim is not None:
        img.header["pixdim"][1:4] = pixdim
    nib.save(img, path)


def _huge_header(path: Path, shape) -> None:
    """A header that claims ``shape`` int16 voxels, followed by only a few bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    header.set_sform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\1\0" * 1000
    if path.name.endswith(".gz"):
        import gzip

        raw = gzip.compress(raw)
    path.write_bytes(raw)


def write_bad_image(case: str, path: Path) -> None:
    """One image broken in the way ``case`` names (see ``BAD_IMAGES``)."""
    arr, affine = _example_image()
    rng = np.random.default_rng(1)
    noise = rng.random((40, 40, 40)).astype(np.float32) + 1
    if case == "TWOD":
        nib.save(nib.Nifti1Image(arr[:, :, 40], affine), path)
    elif case == "MULTIVOL":
        nib.save(nib.Nifti1Image(np.stack([arr, arr, arr], -1), affine), path)
    elif case == "FIVED":
        nib.save(nib.Nifti1Image(noise[..., None, None].repeat(2, 4), np.eye(4)), path)
    elif case == "TINY":
        nib.save(nib.Nifti1Image(noise[:8, :8, :8], np.eye(4)), path)
    elif case == "HUGE":
        _huge_header(path, (32767, 32767, 32767))  # dim is int16: 2**15 - 1
    elif case == "HUGEGZ":
        _huge_header(path, (4096, 4096, 4096))
    elif case == "TINYVOXELS":
        nib.save(nib.Nifti1Image(noise, np.diag([0.01, 0.01, 0.01, 1])), path)
    elif case == "HUGEVOXELS":
        nib.save(nib.Nifti1Image(noise, np.diag([50.0, 50.0, 50.0, 1])), path)
    elif case == "NANAFFINE":
        _with_rows(path, affine_rows=([1, 0, 0, np.nan], [0, 1, 0, 0], [0, 0, 1, 0]))
    elif case == "SINGULAR":
        _with_rows(path, affine_rows=([2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]))
    elif case == "ZEROPIXDIM":
        _with_rows(path, pixdim=[0, 0, 0])  # no qform, no sform: the affine is from pixdim
    elif case == "COMPLEX":
        nib.save(nib.Nifti1Image(noise.astype(np.complex64), np.eye(4)), path)
    elif case == "RGB":
        rgb = np.zeros(noise.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    elif case == "OVERFLOW":
        img = nib.Nifti1Image(arr.astype(np.int16), affine)
        img.header.set_slope_inter(1e38, 0)  # int16 x 1e38 overflows float32 to inf
        nib.save(img, path)
    elif case == "NANDATA":
        data = arr.astype(np.float32)
        data[10:12, 10:12, 10:12] = np.nan
        nib.save(nib.Nifti1Image(data, affine), path)
    elif case == "ZEROS":
        nib.save(nib.Nifti1Image(np.zeros_like(arr), affine), path)
    elif case == "CONSTANT":
        nib.save(nib.Nifti1Image(np.full(arr.shape, 7, np.int16), affine), path)
    elif case == "MASK":
        nib.save(nib.Nifti1Image((arr > arr.mean()).astype(np.uint8), affine), path)
    elif case == "TRUNCGZ":
        whole = (EXAMPLE / "sub-IXI095" / "anat" / "sub-IXI095_T1w.nii.gz").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif case == "TRUNCNII":
        plain = path.with_name("full.nii")
        nib.save(nib.Nifti1Image(arr, affine), plain)
        path.write_bytes(plain.read_bytes()[:100_000])
        plain.unlink()
    elif case == "HEADERONLY":
        plain = path.with_name("full.nii")
        nib.save(nib.Nifti1Image(arr, affine), plain)
        path.write_bytes(plain.read_bytes()[:348])
        plain.unlink()
    elif case == "RANDOM":
        path.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif case == "EMPTYFILE":
        path.write_bytes(b"")
    elif case == "NOTGZ":  # an uncompressed NIfTI named .nii.gz
        plain = path.with_name("full.nii")
        nib.save(nib.Nifti1Image(arr, affine), plain)
        plain.rename(path)
    elif case == "BROKENLINK":  # as a datalad dataset whose content was not fetched
        path.symlink_to("../../.git/annex/objects/pX/9Q/MD5E-s1--00.nii.gz/MD5E-s1--00.nii.gz")
    else:
        raise ValueError(case)


# case -> (extension, fragment of the expected message)
BAD_IMAGES = {
    "TWOD": (".nii.gz", "expected a 3-D T1w image, got 2-D"),
    "MULTIVOL": (".nii.gz", "expected a 3-D T1w image, got 4-D"),
    "FIVED": (".nii.gz", "expected a 3-D T1w image, got 5-D"),
    "TINY": (".nii.gz", "image too small"),
    "HUGE": (".nii", "a T1w image can need; corrupt header?"),
    "HUGEGZ": (".nii.gz", "a T1w image can need; corrupt header?"),
    "TINYVOXELS": (".nii.gz", "are implausible"),
    "HUGEVOXELS": (".nii.gz", "are implausible"),
    "NANAFFINE": (".nii.gz", "the affine has non-finite values"),
    "SINGULAR": (".nii.gz", "the affine is singular"),
    "ZEROPIXDIM": (".nii.gz", "voxel sizes (pixdim) [0.0, 0.0, 0.0] are not positive"),
    "COMPLEX": (".nii.gz", "data type complex64"),
    "RGB": (".nii.gz", "data type RGB is not a T1w intensity image"),
    "OVERFLOW": (".nii.gz", "NaN or infinite values"),
    "NANDATA": (".nii.gz", "NaN or infinite values"),
    "ZEROS": (".nii.gz", "all zeros"),
    "CONSTANT": (".nii.gz", "the image is constant"),
    "MASK": (".nii.gz", "a mask or label image"),
    "TRUNCGZ": (".nii.gz", "cannot read the image data"),
    "TRUNCNII": (".nii", "truncated: the header promises"),
    "HEADERONLY": (".nii", "truncated: the header promises"),
    "RANDOM": (".nii.gz", "cannot read the image"),
    "EMPTYFILE": (".nii.gz", "empty file (0 bytes)"),
    "NOTGZ": (".nii.gz", "cannot read the image"),
    "BROKENLINK": (".nii.gz", "broken link to ../../.git/annex/objects"),
}


def bad_image_dataset(root: Path, cases=BAD_IMAGES) -> dict[str, Path]:
    """A BIDS dataset with one participant per broken image: ``{label: image path}``."""
    root.mkdir(parents=True)
    shutil.copy(EXAMPLE / "dataset_description.json", root)
    paths = {}
    lines = ["participant_id\tage"]
    for label, (ext, _) in cases.items():
        folder = root / f"sub-{label}" / "anat"
        folder.mkdir(parents=True)
        path = folder / f"sub-{label}_T1w{ext}"
        write_bad_image(label, path)
        paths[label] = path
        lines.append(f"sub-{label}\t40")
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    return paths


# ------------------------------------------------------------------ datasets from a real run
def strip_from_run(run_out: Path, participant: str, dest: Path) -> Path:
    """An already skull-stripped T1w: the example run's N4-corrected head of ``participant``
    times its brain mask (what a user's own stripping pipeline hands over)."""
    anat = run_out / participant / "anat"
    head = nib.load(anat / f"{participant}_desc-preproc_T1w.nii.gz")
    mask = np.asanyarray(nib.load(anat / f"{participant}_desc-brain_mask.nii.gz").dataobj) > 0
    brain = np.where(mask, np.asarray(head.dataobj, np.float32), 0).astype(np.float32)
    dest.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(brain, head.affine), dest)
    return dest


def progress_lines(stderr: str) -> list[str]:
    """The participant level's progress lines (one per image and step)."""
    return [line for line in stderr.splitlines()
            if "bids_brainage.participant: sub-" in line and " ERROR " not in line]
