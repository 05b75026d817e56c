"""Every bad input, family by family: a clear message naming the file once, the right exit code
(DESIGN.md), no traceback without -v, the input byte-identical afterwards, nothing written
outside output_dir and the work dir, memory bounded whatever a header claims.

Families: the dataset (missing pieces, invalid, output in the wrong place, wrong arguments);
the image (shape, dimensions, affine, voxel size, data type, scaling, broken or huge bytes);
the tables (participants.tsv absent, odd values, encodings); labels and paths (traversal,
unknown labels, git-annex links, non-ASCII, read-only trees). Scans unlike the training data
are in ``test_unlike_training.py``.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _harden import (
    BAD_IMAGES,
    EXAMPLE,
    HAS_UNSHARE,
    IS_ROOT,
    bad_image_dataset,
    manifest,
    run_app,
    times_named,
    write_bad_image,
)
from bids_brainage.io import MAX_VOXELS, InputError, load_t1w
from conftest import copy_dataset

READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
needs_mounts = pytest.mark.skipif(not (IS_ROOT and HAS_UNSHARE),
                                  reason="read-only bind mounts need root and unshare")


def read_only(folder: Path) -> list[str]:
    """A command prefix that runs the app with ``folder`` mounted read-only (root's chmod
    is no barrier: only a read-only mount really refuses root)."""
    return ["unshare", "-m", "sh", "-c", READ_ONLY_MOUNT, str(folder)]


def read_tsv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def assert_clean(result, *, named: Path | None, fragment: str) -> None:
    """The error says ``fragment``, names ``named`` exactly once, and shows no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert not result.elsewhere, f"written outside output_dir and the work dir: {result.elsewhere}"
    lines = [line for line in result.stderr.splitlines() if fragment in line]
    assert lines, f"{fragment!r} not in:\n{result.stderr}"
    if named is not None:
        assert times_named(lines[0], named) == 1, lines[0]


# ---------------------------------------------------------------------------- the dataset
def _example_copy(tmp_path: Path) -> Path:
    return copy_dataset(EXAMPLE, tmp_path / "data", ["sub-IXI095"])


def _dataset_case(case: str, tmp_path: Path):
    """(arguments, the path the message must name, expected exit code, message fragment)."""
    data = _example_copy(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    base = [data, out, "participant", "-w", work]
    if case == "missing_input":
        return [tmp_path / "absent", out, "participant"], tmp_path / "absent", 66, "does not exist"
    if case == "input_is_a_file":
        (tmp_path / "file").write_text("x")
        return [tmp_path / "file", out, "participant"], tmp_path / "file", 66, "is a file"
    if case == "no_dataset_description":
        (data / "dataset_description.json").unlink()
        return base, data, 16, "has no dataset_description.json"
    if case == "description_not_json":
        (data / "dataset_description.json").write_text("{not json")
        return base, None, 16, "not a valid BIDS dataset"
    if case == "misnamed_t1w":
        anat = data / "sub-IXI095" / "anat"
        (anat / "sub-IXI095_T1w.nii.gz").rename(anat / "IXI095_T1.nii.gz")
        return base, None, 16, "not a valid BIDS dataset"
    if case == "hed_schema_not_bundled":
        description = json.loads((data / "dataset_description.json").read_text())
        description["HEDVersion"] = "9.9.9"
        (data / "dataset_description.json").write_text(json.dumps(description))
        sidecar = json.loads((data / "participants.json").read_text())
        sidecar["sex"]["HED"] = {"M": "Male", "F": "Female"}
        (data / "participants.json").write_text(json.dumps(sidecar))
        return base, None, 16, "bids_brainage never downloads"
    if case == "participants_latin1":  # the validator refuses it; --skip-bids-validation reads it
        (data / "participants.tsv").write_bytes(
            "participant_id\tage\tsex\tsite\nsub-IXI095\t24.9\tF\tMünchen\n".encode("latin-1"))
        return base, None, 16, "INVALID_FILE_ENCODING /participants.tsv"
    if case == "output_is_input":
        return [data, data, "participant"], data, 64, "never writes into bids_dir"
    if case == "output_inside_input":
        return ([data, data / "derivatives" / "x", "participant"], data / "derivatives" / "x",
                64, "never writes into bids_dir")
    if case == "work_inside_input":
        return [data, out, "participant", "-w", data / "work"], data / "work", 64, "never writes"
    if case == "output_link_into_input":
        (tmp_path / "link").symlink_to(data)
        return ([data, tmp_path / "link" / "out", "participant"], data / "out", 64,
                "never writes into bids_dir")
    if case == "output_is_a_file":
        (tmp_path / "file").write_text("x")
        return [data, tmp_path / "file", "participant", "-w", work], tmp_path / "file", 73, \
            "is not writable"
    if case == "unknown_level":
        return [data, out, "session"], None, 17, "unknown analysis level 'session'"
    if case == "bad_option_value":
        return base + ["--normalization", "nope"], None, 64, "invalid choice: 'nope'"
    if case == "missing_positional":
        return [data, out], None, 64, "the following arguments are required"
    if case == "zero_processes":
        return base + ["--nprocs", "0"], None, 64, "0 is not a positive integer"
    if case == "unknown_model":
        return base + ["--models", "nope"], None, 64, "unknown model(s) nope"
    if case == "malformed_model_card":
        models = tmp_path / "models"
        models.mkdir()
        (models / "models.json").write_text('{"models": [{"file": "x.joblib"}]}')
        return base + ["--model-dir", models], models / "models.json", 64, "malformed"
    if case == "no_participants":
        shutil.rmtree(data / "sub-IXI095")
        return base + ["--skip-bids-validation"], data, 18, "no T1w image matched"
    if case == "group_without_outputs":
        return [data, out, "group"], out, 66, "run the participant level first"
    raise ValueError(case)


DATASET_CASES = ["missing_input", "input_is_a_file", "no_dataset_description",
                 "description_not_json", "misnamed_t1w", "hed_schema_not_bundled",
                 "participants_latin1",
                 "output_is_input", "output_inside_input", "work_inside_input",
                 "output_link_into_input", "output_is_a_file", "unknown_level",
                 "bad_option_value", "missing_positional", "zero_processes", "unknown_model",
                 "malformed_model_card", "no_participants", "group_without_outputs"]


@pytest.mark.parametrize("case", DATASET_CASES)
def test_dataset_family(case, tmp_path):
    args, named, code, fragment = _dataset_case(case, tmp_path)
    data = tmp_path / "data"
    before = manifest(data)
    result = run_app(args, tmp_path / "sandbox")
    assert result.code == code, (result.code, result.stderr)
    assert_clean(result, named=named, fragment=fragment)
    assert manifest(data) == before


@needs_mounts
@pytest.mark.parametrize("level", ["participant", "group"])
def test_unwritable_output_is_73(level, tmp_path):
    data = _example_copy(tmp_path)
    locked = tmp_path / "locked"
    (locked / "out").mkdir(parents=True)
    result = run_app([data, locked / "out", level, "-w", tmp_path / "work"],
                     tmp_path / "sandbox", wrap=read_only(locked))
    assert result.code == 73, result.stderr
    assert_clean(result, named=locked / "out", fragment="is not writable")


# ------------------------------------------------------------------------------ the image
@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_image_is_refused_naming_the_file_once(case, tmp_path):
    ext, fragment = BAD_IMAGES[case]
    (tmp_path / "sub-X" / "anat").mkdir(parents=True)
    path = tmp_path / "sub-X" / "anat" / f"sub-X_T1w{ext}"
    write_bad_image(case, path)
    with pytest.raises(InputError) as err:
        load_t1w(path)
    assert fragment in str(err.value)
    assert times_named(str(err.value), path) == 1, str(err.value)


@pytest.mark.parametrize("shape", [(32767, 32767, 32767), (1400, 1400, 1400)])
def test_a_lying_header_costs_no_memory(tmp_path, shape):
    """With 1 GB of address space a header claiming terabytes (or 5 GB) is refused by its
    claim, not by a MemoryError from trying."""
    from _harden import _huge_header

    path = tmp_path / "huge.nii.gz"
    _huge_header(path, shape)
    code = (
        "import resource, sys\n"
        "from bids_brainage.io import load_t1w, InputError\n"
        "import numpy, nibabel\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        f"try:\n    load_t1w({str(path)!r})\n"
        "except InputError as exc:\n    print('refused:', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "corrupt header?" in proc.stdout
    assert f"{MAX_VOXELS:,}" in proc.stdout


@pytest.fixture(scope="module")
def bad_image_run(tmp_path_factory):
    """Participant level on a dataset of broken images only, in a non-ASCII folder, with
    an earlier participant's output already in output_dir."""
    base = tmp_path_factory.mktemp("bad_images") / "dätä ü"
    paths = bad_image_dataset(base / "data")
    out, work = base / "out", base / "work"
    keep = out / "sub-KEEP" / "anat" / "sub-KEEP_brainage.tsv"
    keep.parent.mkdir(parents=True)
    keep.write_text("participant_id\tmodel\tpredicted_age\tstatus\nsub-KEEP\trf\t50\tok\n")
    before = manifest(base / "data")
    result = run_app([base / "data", out, "participant", "-w", work, "--nprocs", "2",
                      "--skip-bids-validation"], base / "sandbox")
    return paths, out, before, manifest(base / "data"), result, keep


def test_bad_images_fail_with_exit_1_and_leave_the_input_alone(bad_image_run):
    paths, out, before, after, result, keep = bad_image_run
    assert result.code == 1, result.stderr
    assert after == before
    assert not result.elsewhere, result.elsewhere
    assert "Traceback" not in result.stderr and "nipype" not in result.stderr, result.stderr
    assert keep.read_text().endswith("sub-KEEP\trf\t50\tok\n"), "an earlier output was lost"
    assert len(result.errors) == len(paths)  # one error line per image, nothing else
    assert not list(out.rglob(".*.tmp*")), "temporary files left behind"


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_gets_a_failed_row_naming_it_once(bad_image_run, case):
    paths, out, _, _, result, _ = bad_image_run
    fragment = BAD_IMAGES[case][1]
    rows = read_tsv(out / f"sub-{case}" / "anat" / f"sub-{case}_brainage.tsv")
    assert [r["status"] for r in rows] == ["failed"]
    assert fragment in rows[0]["message"], rows[0]["message"]
    assert times_named(rows[0]["message"], paths[case]) == 1, rows[0]["message"]
    assert rows[0]["predicted_age"] == "n/a" and rows[0]["age"] == "40.0"
    line = [e for e in result.errors if f"sub-{case}_T1w" in e]
    assert len(line) == 1 and times_named(line[0], paths[case]) == 1, line
    sidecar = json.loads((out / f"sub-{case}" / "anat" / f"sub-{case}_brainage.json").read_text())
    assert sidecar["status"] == "failed" and fragment in sidecar["message"]
    assert (out / f"sub-{case}.html").is_file()  # the report says it failed, and why


def test_group_level_lists_the_failures(bad_image_run, tmp_path):
    paths, out, *_ = bad_image_run
    result = run_app([out.parent / "data", out, "group"], tmp_path / "sandbox")
    assert result.code == 0, result.stderr
    rows = read_tsv(out / "group_brainage.tsv")
    failed = {r["participant_id"] for r in rows if r["status"] == "failed"}
    assert failed == {f"sub-{label}" for label in paths}


# ------------------------------------------------------------------------------ the tables
PARTICIPANTS = {
    # case: (bytes of participants.tsv, expected {participant: age or None}, warning fragment)
    "absent": (None, {}, None),
    "empty_file": (b"", {}, None),
    "header_only": (b"participant_id\tage\n", {}, None),
    "bom": (b"\xef\xbb\xbfparticipant_id\tage\nsub-01\t30.5\n", {"sub-01": 30.5}, None),
    "crlf": (b"participant_id\tage\r\nsub-01\t30.5\r\nsub-02\t41\r\n",
             {"sub-01": 30.5, "sub-02": 41.0}, None),
    "latin1": ("participant_id\tage\tsite\nsub-01\t30.5\tMünchen\n".encode("latin-1"),
               {"sub-01": 30.5}, "is not UTF-8"),
    "odd_ages": (b"participant_id\tage\nsub-01\t89+\nsub-02\tn/a\nsub-03\t\nsub-04\tabc\n"
                 b"sub-05\t1e400\nsub-06\t 33 \n",
                 {"sub-01": None, "sub-02": None, "sub-03": None, "sub-04": None,
                  "sub-05": None, "sub-06": 33.0}, None),
    "duplicate_ids": (b"participant_id\tage\nsub-01\t30\nsub-01\t31\n", {"sub-01": 30.0},
                      "lists sub-01 twice"),
    "no_id_column": (b"subject\tage\n01\t30\n", {}, "has no participant_id column"),
    "binary": (bytes(range(256)) * 4, {}, None),
    "ragged_rows": (b"participant_id\tage\tsex\nsub-01\t30\nsub-02\t40\tF\textra\n",
                    {"sub-01": 30.0, "sub-02": 40.0}, None),
}


@pytest.mark.parametrize("case", sorted(PARTICIPANTS))
def test_participants_tsv_is_read_or_refused_without_crashing(case, tmp_path, caplog,
                                                              monkeypatch):
    import logging

    from bids_brainage.bids.participants import (
        participant_age,
        participants_table,
        read_participants,
    )

    # an in-process run of main() earlier in the session stops our loggers' propagation
    monkeypatch.setattr(logging.getLogger("bids_brainage"), "propagate", True)

    raw, expected, warning = PARTICIPANTS[case]
    if raw is not None:
        (tmp_path / "participants.tsv").write_bytes(raw)
    rows = read_participants(tmp_path)
    assert {pid: participant_age(row) for pid, row in rows.items()} == expected
    table = participants_table(tmp_path)  # the group level's reading: the same ages
    ages = table["age"].to_dict() if "age" in table.columns else {}
    assert {k: (None if v != v else v) for k, v in ages.items()} == expected
    if warning:
        assert warning in caplog.text
    assert "site" not in table.columns or table["site"].tolist() == ["München"]


def test_participants_tsv_encodings_reach_the_group_table(tmp_path):
    """latin-1 + CRLF + a byte-order mark, as a spreadsheet exports it: the ages and the
    site column reach group_brainage.tsv."""
    from _report_data import prediction_rows, write_tsv

    bids = tmp_path / "bids"
    bids.mkdir()
    shutil.copy(EXAMPLE / "dataset_description.json", bids)
    (bids / "participants.tsv").write_bytes(
        b"\xef\xbb\xbf" + "participant_id\tage\tsite\r\nsub-01\t30.5\tMünchen\r\n"
        .encode("latin-1"))
    out = tmp_path / "out"
    write_tsv(out, prediction_rows("sub-01", None))
    result = run_app([bids, out, "group"], tmp_path / "sandbox")
    assert result.code == 0, result.stderr
    assert "is not UTF-8" in result.stderr and "Traceback" not in result.stderr
    rows = read_tsv(out / "group_brainage.tsv")
    assert {r["age"] for r in rows} == {"30.500"} and {r["site"] for r in rows} == {"München"}


# ---------------------------------------------------------------------- labels and paths
@pytest.mark.parametrize("label,code,fragment", [
    ("../sub-IXI095", 64, "invalid label '../sub-IXI095'"),
    ("IXI/095", 64, "invalid label 'IXI/095'"),
    ("Müller", 64, "invalid label 'Müller'"),
    ("", 64, "invalid label ''"),
    ("IXI999", 18, "participant label(s) not found"),
])
def test_participant_labels(label, code, fragment, tmp_path):
    data = _example_copy(tmp_path)
    before = manifest(data)
    result = run_app([data, tmp_path / "out", "participant", "-w", tmp_path / "work",
                      "--skip-bids-validation", "--participant-label", label],
                     tmp_path / "sandbox")
    assert result.code == code, result.stderr
    assert_clean(result, named=None, fragment=fragment)
    if code == 18:
        assert "Available: IXI095" in result.stderr
    assert manifest(data) == before


def test_unknown_session_label_is_18(tmp_path):
    data = _example_copy(tmp_path)
    result = run_app([data, tmp_path / "out", "participant", "-w", tmp_path / "work",
                      "--skip-bids-validation", "--session-label", "nope"], tmp_path / "sandbox")
    assert result.code == 18, result.stderr
    assert_clean(result, named=None, fragment="session label(s) not found: nope")


def test_annex_link_without_content_fails_alone_naming_the_way_out(tmp_path):
    """As datalad installs a dataset before ``datalad get``: valid BIDS (the validator reads
    annex keys), and the image fails alone (1), named once, with the command that fetches it."""
    data = _example_copy(tmp_path)
    image = data / "sub-IXI095" / "anat" / "sub-IXI095_T1w.nii.gz"
    image.unlink()
    write_bad_image("BROKENLINK", image)
    before = manifest(data)
    result = run_app([data, tmp_path / "out", "participant", "-w", tmp_path / "work"],
                     tmp_path / "sandbox")
    assert result.code == 1, result.stderr
    assert_clean(result, named=image, fragment="`datalad get` it")
    assert manifest(data) == before


def test_other_broken_link_is_invalid_bids(tmp_path):
    data = _example_copy(tmp_path)
    image = data / "sub-IXI095" / "anat" / "sub-IXI095_T1w.nii.gz"
    image.unlink()
    image.symlink_to(tmp_path / "moved" / "away.nii.gz")
    result = run_app([data, tmp_path / "out", "participant", "-w", tmp_path / "work"],
                     tmp_path / "sandbox")
    assert result.code == 16, result.stderr
    assert_clean(result, named=None, fragment="SYMLINK_BROKEN /sub-IXI095/anat/")


@needs_mounts
def test_read_only_input_tree(bad_image_run, tmp_path):
    """A read-only input (a mount root cannot write either): the run reads it and writes
    only to output_dir and the work dir."""
    paths, *_ = bad_image_run
    data = next(iter(paths.values())).parents[2]
    some = {k: paths[k] for k in ("EMPTYFILE", "TRUNCNII", "ZEROS")}
    labels = [f"{label}" for label in some]
    result = run_app([data, tmp_path / "out", "participant", "-w", tmp_path / "work",
                      "--skip-bids-validation", "--nprocs", "1",
                      "--participant-label", *labels], tmp_path / "sandbox",
                     wrap=read_only(data))
    assert result.code == 1, result.stderr
    assert len(result.errors) == 3 and "Traceback" not in result.stderr
    assert not result.elsewhere


# ------------------------------------------------------------------------ -v and the rest
def test_an_unforeseen_error_is_one_message_without_v_and_a_traceback_with_it(
        tmp_path, monkeypatch, capsys):
    """The last guard of ``main``: whatever escapes is a message, with -v its traceback."""
    from bids_brainage.cli import run
    from bids_brainage.levels import group

    def broken(settings):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(group, "run_group", broken)
    (tmp_path / "out").mkdir()
    for flags, traceback in (([], False), (["-v"], True)):
        assert run.main([str(EXAMPLE), str(tmp_path / "out"), "group", *flags]) == 1
        err = capsys.readouterr().err
        assert "RuntimeError: something nobody foresaw" in err
        assert ("Traceback" in err) == traceback, err
