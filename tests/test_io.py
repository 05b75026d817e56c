"""The derivatives' compressed copies: begun in the run's helper, or made by the copy."""
from __future__ import annotations

import gzip
import os

import pytest


@pytest.fixture
def plain(tmp_path):
    src = tmp_path / "work" / "n4.nii"
    src.parent.mkdir()
    src.write_bytes(os.urandom(1 << 16) * 8)
    return src


def test_copy_compresses_a_plain_file_itself(plain, tmp_path):
    from bids_brainage.io import compress_ahead, copy_compressed

    compress_ahead(plain, threads=1)  # one thread: nothing begun
    assert not plain.with_name("n4.nii.gz").exists()
    out = copy_compressed(plain, tmp_path / "out" / "sub-1_T1w.nii.gz")
    assert gzip.decompress(out.read_bytes()) == plain.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["sub-1_T1w.nii.gz"]


def test_copy_takes_what_the_helper_compressed(plain, tmp_path):
    from bids_brainage import helper
    from bids_brainage.io import _compressing, compress_ahead, copy_compressed

    try:
        compress_ahead(plain, threads=2)
        assert str(plain) in _compressing
        out = copy_compressed(plain, tmp_path / "out" / "a.nii.gz")
        ready = plain.with_name("n4.nii.gz")
        assert ready.exists() and out.read_bytes() == ready.read_bytes()
        assert gzip.decompress(out.read_bytes()) == plain.read_bytes()
        assert str(plain) not in _compressing
        # the same bytes as compressing here: a resumed run's outputs equal an uninterrupted one's
        ready.unlink()
        here = copy_compressed(plain, tmp_path / "elsewhere" / "b.nii.gz")
        assert here.read_bytes() == out.read_bytes()
    finally:
        helper.stop_helpers()


def test_a_stale_compressed_copy_is_not_used(plain, tmp_path):
    """A .gz older than its source (the step ran again since) is made again, not copied."""
    from bids_brainage.io import copy_compressed

    stale = plain.with_name("n4.nii.gz")
    stale.write_bytes(gzip.compress(b"an earlier run's head"))
    os.utime(stale, ns=(plain.stat().st_mtime_ns - 10**9,) * 2)
    out = copy_compressed(plain, tmp_path / "out" / "a.nii.gz")
    assert gzip.decompress(out.read_bytes()) == plain.read_bytes()


def test_a_compressed_source_is_copied_as_is(tmp_path):
    from bids_brainage.io import copy_compressed

    src = tmp_path / "mask.nii.gz"
    src.write_bytes(gzip.compress(b"mask"))
    assert copy_compressed(src, tmp_path / "d" / "m.nii.gz").read_bytes() == src.read_bytes()


def test_nipype_hashes_each_file_content_once(tmp_path):
    """The run's content hashes are nipype's own (md5 of the bytes: work dirs stay valid),
    computed once per file and again when the file changes."""
    from nipype.interfaces.base import specs
    from nipype.utils import filemanip

    from bids_brainage.levels import participant

    participant.apply_nipype_settings(participant.nipype_settings(
        type("S", (), {"verbose": False})(), tmp_path / "crash"))
    assert specs.hash_infile is participant.cached_hash_infile
    path = tmp_path / "a.nii"
    path.write_bytes(os.urandom(5 << 20))
    expected = filemanip.md5(path.read_bytes()).hexdigest()
    assert participant.cached_hash_infile(str(path)) == expected
    calls = []
    real_md5 = filemanip.hashlib.md5

    def counting_md5(*args):
        calls.append(1)
        return real_md5(*args)

    assert participant.cached_hash_infile(str(path), crypto=counting_md5) == expected
    assert participant.cached_hash_infile(str(path), crypto=counting_md5) == expected
    assert len(calls) == 1
    path.write_bytes(b"changed")  # other content, size and time: hashed again
    assert participant.cached_hash_infile(str(path)) == filemanip.md5(b"changed").hexdigest()
    assert participant.cached_hash_infile(str(tmp_path / "absent")) is None


def test_remembered_hashes_are_bounded(tmp_path, monkeypatch):
    """A process that lives for many runs (a web worker) remembers at most _HASHES_MAX file
    hashes, the oldest forgotten first; a forgotten file is hashed again, the same."""
    import hashlib

    from bids_brainage.levels import participant

    monkeypatch.setattr(participant, "_HASHES", {})
    monkeypatch.setattr(participant, "_HASHES_MAX", 3)
    paths = []
    for number in range(5):
        paths.append(tmp_path / f"{number}.nii")
        paths[-1].write_bytes(bytes([number]) * 100)
        assert participant.cached_hash_infile(str(paths[-1])) == \
            hashlib.md5(paths[-1].read_bytes()).hexdigest()
        assert len(participant._HASHES) <= 3
    remembered = {key[0] for key in participant._HASHES}
    assert remembered == {str(p) for p in paths[2:]}
    assert participant.cached_hash_infile(str(paths[0])) == \
        hashlib.md5(paths[0].read_bytes()).hexdigest()


def test_a_compressed_image_is_read_as_nibabel_reads_it(tmp_path):
    """load_t1w unpacks a .nii.gz in one piece: the same array as nibabel's (scaled
    integers; a header whose vox_offset is 0; a file of two gzip members), and a truncated
    file is still refused with its name."""
    import nibabel as nib
    import numpy as np

    from bids_brainage.io import InputError, _image_data, load_t1w

    rng = np.random.default_rng(0)
    data = rng.integers(0, 3000, (20, 22, 18)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([1.0, 1.2, 1.0, 1.0]))
    img.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "scaled.nii.gz"
    img.to_filename(str(path))
    loaded = nib.load(str(path))
    assert np.array_equal(_image_data(path, loaded), np.asanyarray(loaded.dataobj))
    raw = gzip.decompress(path.read_bytes())
    zero = bytearray(raw)
    zero[108:112] = np.float32(0).tobytes()  # vox_offset 0: nibabel reads from 352
    for name, content in (("zero.nii.gz", gzip.compress(bytes(zero))),
                          ("members.nii.gz", gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))):
        (tmp_path / name).write_bytes(content)
        loaded = nib.load(str(tmp_path / name))
        assert np.array_equal(_image_data(tmp_path / name, loaded),
                              np.asanyarray(nib.load(str(tmp_path / name)).dataobj))
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(raw[:-500]))
    with pytest.raises(InputError, match="short.nii.gz"):
        load_t1w(tmp_path / "short.nii.gz")
