"""Uploads: the multipart body streamed into the job folder, then the scan checked.

:func:`receive_upload` parses the request body chunk by chunk (python-multipart's streaming
parser) and writes the file part straight into ``<job>/upload/``: no spooled temporary file,
nothing in memory beyond one chunk, nothing outside the job folder, the size limit enforced
while the bytes arrive. :func:`check_scan` then accepts what the pipeline can use: a NIfTI
image that passes the app's own :func:`bids_brainage.io.load_t1w`, or a zip of one DICOM
series that dcm2niix converts to one. Every refusal is an :class:`UploadError` carrying the
HTTP status and a message for the person who uploaded.
"""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import zipfile
from pathlib import Path

SUFFIXES = (".nii.gz", ".nii", ".zip")
INCOMING = "incoming.part"
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 32
# a 1 mm head is 17 M voxels; 64 M (400³) keeps the checks and the worker inside their memory
MAX_VOXELS = 64_000_000
MAX_ZIP_MEMBERS = 20_000
DCM2NIIX_TIMEOUT = 300


class UploadError(Exception):
    """An upload refused: ``status`` is the HTTP status, ``message`` says why to a person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass
class Upload:
    filename: str | None = None  # as the browser sent it
    path: Path | None = None  # where its bytes are, inside the job folder
    size: int = 0
    fields: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def scan_suffix(filename: str) -> str:
    """The accepted suffix of an upload's file name, or an :class:`UploadError` saying why not.

    >>> scan_suffix("sub-01_T1w.NII.GZ")
    '.nii.gz'
    >>> scan_suffix("../../etc/passwd.nii")
    Traceback (most recent call last):
    ...
    bids_brainage.web.uploads.UploadError: the file name '../../etc/passwd.nii' is a path ...
    """
    if not filename:
        raise UploadError(400, "no file was chosen: pick a .nii, .nii.gz or .zip file")
    if not filename.isascii() or not filename.isprintable():
        raise UploadError(400, f"the file name {filename!r} has characters other than plain "
                               "ASCII letters, digits and punctuation: rename the file "
                               "(e.g. scan.nii.gz) and upload it again")
    if "/" in filename or "\\" in filename or filename.startswith(".") or ".." in filename:
        raise UploadError(400, f"the file name {filename!r} is a path (it has '/', '\\' or "
                               "'..' in it): upload the file itself, with a plain name")
    lower = filename.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return suffix
    raise UploadError(415, f"{filename}: not a .nii, .nii.gz or .zip file; upload one T1w "
                           "image as NIfTI, or a zip of one DICOM series")


class _Receiver:
    """python-multipart callbacks: the file part goes to disk, small fields to a dict."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.upload = Upload()
        self.error: UploadError | None = None
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name: str | None = None
        self._value = bytearray()
        self._file = None
        self._in_file = False  # the current part is the file
        self._pending: list[bytes] = []

    def fail(self, error: UploadError) -> None:
        if self.error is None:
            self.error = error
        self._pending.clear()

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished}

    def part_begin(self):
        self._disposition, self._name, self._value = b"", None, bytearray()
        self._in_file = False

    def header_field(self, data, start, end):
        self._header_name += data[start:end]

    def header_value(self, data, start, end):
        self._header_value += data[start:end]

    def header_end(self):
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def headers_finished(self):
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        self._name = _decode(options.get(b"name", b""))
        if self.error is not None:
            return
        if b"filename" not in options:
            if sum(len(v) for v in self.upload.fields.values()) >= MAX_FIELDS:
                self.fail(UploadError(400, f"more than {MAX_FIELDS} form fields"))
            return
        if self._name != "file" or self.upload.filename is not None:
            self.fail(UploadError(400, "send exactly one file, in the field 'file'"))
            return
        self.upload.filename = _decode(options[b"filename"])
        try:
            scan_suffix(self.upload.filename)
        except UploadError as exc:
            self.fail(exc)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.upload.path = self.folder / INCOMING
        self._file = open(self.upload.path, "xb")  # noqa: SIM115 - closed in finish()
        self._in_file = True

    def part_data(self, data, start, end):
        if self.error is not None:
            return
        if not self._in_file:
            if len(self._value) + end - start > MAX_FIELD_BYTES:
                self.fail(UploadError(400, f"the form field {self._name!r} is too long"))
                return
            self._value += data[start:end]
            return
        self.upload.size += end - start
        if self.upload.size > self.max_bytes:
            self.fail(UploadError(413, f"{self.upload.filename}: larger than the upload limit "
                                       f"of {self.max_bytes / 2**20:.0f} MB"))
            return
        self._pending.append(bytes(data[start:end]))

    def part_end(self):
        if self.error is None and not self._in_file and self._name:
            self.upload.fields.setdefault(self._name, []).append(_decode(bytes(self._value)))

    def flush(self):
        """Write what the last chunk brought (called between chunks, off the event loop)."""
        if self._file is not None:
            for block in self._pending:
                self._file.write(block)
        self._pending.clear()

    def finish(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.error is not None and self.upload.path is not None:
            self.upload.path.unlink(missing_ok=True)


async def receive_upload(request, folder: Path, max_bytes: int) -> Upload:
    """Stream a ``multipart/form-data`` body: the file into ``folder``, the fields into a dict.

    On a refusal the rest of the body is still read (and dropped) up to the size limit, so
    that the browser gets to read the answer rather than a reset connection.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.concurrency import run_in_threadpool

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError(415, "send the scan as multipart/form-data with the image in the "
                               "field 'file'")
    declared = request.headers.get("content-length")
    slack = 1 << 20  # the multipart framing and the other fields
    if declared and declared.isdigit() and int(declared) > max_bytes + slack:
        raise UploadError(413, f"the upload ({int(declared) / 2**20:.0f} MB) is larger than "
                               f"the limit of {max_bytes / 2**20:.0f} MB")
    receiver = _Receiver(folder, max_bytes)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if receiver.error is None:
                try:
                    parser.write(chunk)
                except FormParserError as exc:
                    receiver.fail(UploadError(400, f"the upload is not valid multipart "
                                                   f"form data ({exc})"))
                if receiver._pending:
                    await run_in_threadpool(receiver.flush)
            elif seen > max_bytes + slack:
                break
        if receiver.error is None:
            try:
                parser.finalize()
            except FormParserError as exc:
                receiver.fail(UploadError(400, f"the upload ended early ({exc})"))
    finally:
        receiver.finish()
    if receiver.error is not None:
        raise receiver.error
    if receiver.upload.path is None:
        raise UploadError(400, "no file was uploaded: send the image in the field 'file'")
    if receiver.upload.size == 0:
        raise UploadError(400, f"{receiver.upload.filename}: the file is empty")
    return receiver.upload


def check_scan(upload: Upload, folder: Path) -> dict:
    """Turn the received file into one checked T1w NIfTI in ``folder``; describe it.

    Returns ``{"nifti": path, "kind": "nifti" | "dicom", "shape": [...], "voxel_mm": [...]}``.
    Runs the app's own checked loader, so the web page refuses exactly what the BIDS App
    would refuse, with the same reasons.
    """
    name = upload.filename
    suffix = scan_suffix(name)
    kind = "nifti"
    if suffix == ".zip":
        archive = folder / "upload.zip"
        upload.path.replace(archive)
        nifti = dicom_zip_to_nifti(archive, folder, name)
        kind = "dicom"
    else:
        nifti = folder / f"T1w{suffix}"
        upload.path.replace(nifti)
    img = checked_t1w(nifti, name)
    import numpy as np

    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    return {"nifti": nifti, "kind": kind, "shape": [int(s) for s in img.shape],
            "voxel_mm": [round(float(z), 3) for z in zooms]}


def checked_t1w(path: Path, name: str):
    """:func:`bids_brainage.io.load_t1w`, its messages naming the uploaded file; images too
    large to check safely are refused from their header first."""
    import nibabel as nib
    import numpy as np

    from bids_brainage.io import InputError, load_t1w

    try:
        shape = nib.load(str(path)).shape
    except Exception:  # noqa: BLE001 - load_t1w below says what is wrong with the file
        shape = ()
    if shape and int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise UploadError(422, f"{name}: {'×'.join(map(str, shape))} voxels is more than a "
                               "T1w image of one head; upload one 3-D T1w volume")
    try:
        return load_t1w(path)
    except InputError as exc:
        message = str(exc).replace(str(path), name)  # no server paths in the answer
        raise UploadError(422, message) from exc


def dicom_zip_to_nifti(archive: Path, folder: Path, name: str) -> Path:
    """Unpack a zip of DICOM files (under names of our own) and convert it with dcm2niix.

    Exactly one image must come out: none means the zip holds no DICOM image, more than one
    means several series (or echoes); both are refused with what dcm2niix found.
    """
    dicom, converted = folder / "dicom", folder / "converted"
    dicom.mkdir()
    converted.mkdir()
    try:
        _unpack(archive, dicom, name, limit=8 * archive.stat().st_size + (64 << 20))
        dcm2niix = shutil.which("dcm2niix")
        if dcm2niix is None:
            raise UploadError(501, "DICOM zips need dcm2niix on the server (Debian package "
                                   "dcm2niix); upload a NIfTI file instead")
        try:
            proc = subprocess.run(
                [dcm2niix, "-z", "y", "-b", "n", "-f", "%s_%d", "-o", str(converted),
                 str(dicom)], capture_output=True, text=True, timeout=DCM2NIIX_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise UploadError(422, f"{name}: dcm2niix did not finish within "
                                   f"{DCM2NIIX_TIMEOUT} s") from exc
        images = sorted(converted.glob("*.nii*"))
        if not images:
            said = [ln.replace(str(dicom), "the zip") for ln in
                    (proc.stdout + proc.stderr).splitlines()
                    if ("error" in ln.lower() or "no valid" in ln.lower())
                    and "unable to find any dicom" not in ln.lower()]
            raise UploadError(422, f"{name}: the zip holds no DICOM image that dcm2niix can "
                                   "convert" + (f" ({said[-1].strip()})" if said else ""))
        if len(images) > 1:
            names = ", ".join(p.name.split(".nii")[0] for p in images[:6])
            raise UploadError(422, f"{name}: the zip holds {len(images)} DICOM series or "
                                   f"images ({names}); upload a zip of one T1w series")
        return images[0]
    finally:
        shutil.rmtree(dicom, ignore_errors=True)


def _unpack(archive: Path, dest: Path, name: str, limit: int) -> None:
    """Extract regular files to ``dest/000000``, ``000001``, ...: member names are never used
    as paths, so ``../`` or absolute names cannot write elsewhere; a zip bomb stops at
    ``limit`` bytes."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(422, f"{name}: not a readable zip file ({exc})") from exc
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()
                   and (m.external_attr >> 16) & 0o170000 != 0o120000]  # no symlinks
        if len(members) > MAX_ZIP_MEMBERS:
            raise UploadError(422, f"{name}: more than {MAX_ZIP_MEMBERS} files in the zip")
        written = 0
        for index, member in enumerate(members):
            try:
                with zf.open(member) as src, open(dest / f"{index:06d}", "xb") as dst:
                    while block := src.read(1 << 20):
                        written += len(block)
                        if written > limit:
                            raise UploadError(422, f"{name}: the zip unpacks to more than "
                                                   f"{limit / 2**20:.0f} MB")
                        dst.write(block)
            except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as exc:
                raise UploadError(422, f"{name}: the zip is damaged or encrypted "
                                       f"({member.filename}: {exc})") from exc


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
