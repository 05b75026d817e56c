"""T1w discovery: the per-participant scan finds exactly what a pybids index of the whole
dataset finds (sessions, runs, acquisitions, odd files), and reads only the requested folders."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bids_brainage.bids.layout import NoMatchError, find_t1w, find_t1w_pybids, list_subjects
from conftest import EXAMPLE

# files of a skeleton dataset (empty files): T1w images BIDS allows and files that only look
# like them; "->" makes a symbolic link
TREE = """
dataset_description.json
participants.tsv
README
sub-01/anat/sub-01_T1w.nii.gz
sub-01/anat/sub-01_T1w.json
sub-01/anat/sub-01_T2w.nii.gz
sub-01/anat/sub-01_acq-mprage_run-02_T1w.nii.gz
sub-01/anat/sub-01_run-1_T1w.nii
sub-01/anat/.sub-01_T1w.nii.gz.tmp.nii.gz
sub-01/anat/sub-01_T1w.nii.gz.bak
sub-01/anat/sub-01_T1w_defaced.nii.gz
sub-01/func/sub-01_task-rest_bold.nii.gz
sub-01/func/sub-01_T1w.nii.gz
sub-01/sub-01_T1w.nii.gz
sub-02/sub-02_sessions.tsv
sub-02/ses-pre/anat/sub-02_ses-pre_T1w.nii.gz
sub-02/ses-post/anat/sub-02_ses-post_run-01_T1w.nii.gz
sub-02/ses-post/anat/sub-02_ses-post_run-02_T1w.nii.gz
sub-02/ses-post/anat/sub-02_ses-post_acq-fast_ce-gd_T1w.nii.gz
sub-02/ses-post/func/sub-02_ses-post_task-rest_bold.nii.gz
sub-03/anat/sub-03_T2w.nii.gz
sub-04 -> ../elsewhere/sub-04
elsewhere/sub-04/anat/sub-04_T1w.nii.gz
sub-05/anat/sub-05_T1w.nii.gz -> ../../missing-annex-object
sub-06/anat/extra/sub-06_T1w.nii.gz
sub-07/anat/sub-07_acq-fast_T1w.nii.gz
sub-07/anat/sub-07_T1w.nii.gz
sub-08/.hidden/anat/sub-08_T1w.nii.gz
sub-08/ses-1/anat/sub-08_ses-1_T1w.nii.gz
sub-09/ses-1/anat/sub-09_ses-1_T1w.nii.gz
sub-09/ses-2/anat/sub-09_ses-2_T1w.nii
derivatives/sub-01/anat/sub-01_desc-preproc_T1w.nii.gz
sourcedata/sub-01/anat/sub-01_T1w.nii.gz
code/sub-01/anat/sub-01_T1w.nii.gz
.git/sub-01/anat/sub-01_T1w.nii.gz
"""


def make_tree(root: Path, spec: str = TREE) -> Path:
    bids = root / "bids"
    for line in filter(None, (ln.strip() for ln in spec.splitlines())):
        name, _, target = (part.strip() for part in line.partition("->"))
        path = (bids if not name.startswith("elsewhere") else root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if target:
            path.symlink_to(target)
        elif name.endswith(".json"):
            path.write_text('{"Name": "skeleton", "BIDSVersion": "1.10.0"}')
        else:
            path.touch()
    return bids


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("layout"))


def entities(images) -> list[tuple]:
    return [(str(im.path), im.subject, im.session, im.run, im.acquisition, im.prefix)
            for im in images]


def test_finds_the_bids_t1w_images_and_nothing_else(tree):
    found = [(im.prefix, im.path.relative_to(tree).as_posix()) for im in find_t1w(tree)]
    assert found == [
        ("sub-01", "sub-01/anat/sub-01_T1w.nii.gz"),
        ("sub-01_acq-mprage_run-02", "sub-01/anat/sub-01_acq-mprage_run-02_T1w.nii.gz"),
        ("sub-01_run-1", "sub-01/anat/sub-01_run-1_T1w.nii"),
        ("sub-02_ses-post_acq-fast", "sub-02/ses-post/anat/sub-02_ses-post_acq-fast_ce-gd_T1w.nii.gz"),
        ("sub-02_ses-post_run-01", "sub-02/ses-post/anat/sub-02_ses-post_run-01_T1w.nii.gz"),
        ("sub-02_ses-post_run-02", "sub-02/ses-post/anat/sub-02_ses-post_run-02_T1w.nii.gz"),
        ("sub-02_ses-pre", "sub-02/ses-pre/anat/sub-02_ses-pre_T1w.nii.gz"),
        ("sub-04", "sub-04/anat/sub-04_T1w.nii.gz"),
        # a datalad file whose content is not there: found, and then refused by name
        ("sub-05", "sub-05/anat/sub-05_T1w.nii.gz"),
        ("sub-06", "sub-06/anat/extra/sub-06_T1w.nii.gz"),
        ("sub-07", "sub-07/anat/sub-07_T1w.nii.gz"),
        ("sub-07_acq-fast", "sub-07/anat/sub-07_acq-fast_T1w.nii.gz"),
        ("sub-08_ses-1", "sub-08/ses-1/anat/sub-08_ses-1_T1w.nii.gz"),
        ("sub-09_ses-1", "sub-09/ses-1/anat/sub-09_ses-1_T1w.nii.gz"),
        ("sub-09_ses-2", "sub-09/ses-2/anat/sub-09_ses-2_T1w.nii"),
    ]
    assert list_subjects(tree) == [f"{i:02d}" for i in range(1, 10)]


@pytest.mark.parametrize("participants, sessions", [
    ((), ()),
    (("01",), ()),
    (("02",), ()),
    (("04", "05", "06"), ()),
    (("07", "01"), ()),
    ((), ("post",)),
    ((), ("1", "pre")),
    (("09",), ("2",)),
    (("02", "09"), ("post", "1")),
])
def test_equals_a_pybids_index_of_the_whole_dataset(tree, tmp_path, participants, sessions):
    expected = find_t1w_pybids(tree, participants, sessions, database_path=tmp_path / "db")
    assert entities(find_t1w(tree, participants, sessions)) == entities(expected)


@pytest.mark.parametrize("participants, sessions", [
    (("10",), ()),        # no such participant
    (("03",), ()),        # no T1w
    ((), ("nope",)),      # no such session
])
def test_no_match_is_refused_like_pybids(tree, participants, sessions):
    with pytest.raises(NoMatchError):
        find_t1w_pybids(tree, participants, sessions)
    with pytest.raises(NoMatchError) as err:
        find_t1w(tree, participants, sessions)
    if participants == ("10",):
        assert "Available: 01, 02, 03" in str(err.value)


def test_example_is_found_as_before(tmp_path):
    assert entities(find_t1w(EXAMPLE)) == entities(find_t1w_pybids(EXAMPLE))
    assert [im.prefix for im in find_t1w(EXAMPLE, ("IXI161",))] == ["sub-IXI161"]


def test_reads_only_the_requested_participants_folders(tree, monkeypatch):
    import bids_brainage.bids.layout as layout

    opened = []
    real_scandir = os.scandir

    def recording_scandir(path):
        opened.append(Path(path))
        return real_scandir(path)

    monkeypatch.setattr(layout.os, "scandir", recording_scandir)
    assert [im.prefix for im in find_t1w(tree, ("02",), ("pre",))] == ["sub-02_ses-pre"]
    inside = {p.relative_to(tree).parts[0] for p in opened if p != tree}
    assert inside == {"sub-02"}, opened


def test_a_new_work_dir_starts_with_the_validator_compiled(tmp_path, monkeypatch):
    """compile_validator fills a deno cache; validate_bids_cached copies it into a new work
    dir's cache before deno runs (never over an existing one), and the run passes."""
    from bids_brainage.bids import validate

    compiled = tmp_path / "share" / "deno"
    if not validate.compile_validator(compiled):
        pytest.skip("deno or the validator's bundle is not installed")
    assert any(compiled.iterdir())
    monkeypatch.setattr(validate, "COMPILED_CACHE", compiled)
    work = tmp_path / "work"
    assert validate.validate_bids_cached(EXAMPLE, work) is not None
    copied = sorted(p.name for p in (work / ".cache" / "deno").iterdir())
    assert set(p.name for p in compiled.iterdir()) <= set(copied)
    (tmp_path / "other").mkdir()
    existing = tmp_path / "other" / ".cache" / "deno"
    existing.mkdir(parents=True)
    validate._seed_cache(existing)
    assert not any(existing.iterdir())
