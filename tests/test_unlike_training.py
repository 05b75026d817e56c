"""Scans unlike the training data: predictions are kept, and flagged, never hidden."""
from __future__ import annotations

import pytest

from bids_brainage.bids.derivatives import training_range_notes
from bids_brainage.models.registry import load_cards


@pytest.mark.parametrize("age,predicted,flagged", [
    (8.0, 31.0, ["age 8 y outside"]),                  # a child: the input is unlike training
    (0.5, 19.0, ["age 0.5 y outside", "predicted age 19 y outside"]),  # an infant
    (45.0, 95.0, ["predicted age 95 y outside"]),       # an adult the model places beyond 80
    (None, 12.0, ["predicted age 12 y outside"]),       # no age known
    (45.0, 50.0, []),
    (None, None, []),
])
def test_rows_outside_the_training_ages_are_flagged(age, predicted, flagged):
    card = load_cards()["rf"]
    low, high = card["training"]["age_min"], card["training"]["age_max"]
    notes = training_range_notes("rf", card, predicted, age)
    assert len(notes) == len(flagged)
    for note, start in zip(notes, flagged):
        assert note.startswith(start) and f"({low:g}-{high:g} y)" in note
    if notes:
        assert notes[-1].endswith("an indication, not a measurement")


def test_a_card_without_training_ages_flags_nothing():
    assert training_range_notes("x", {"name": "x"}, 3.0, 1.0) == []


@pytest.mark.slow
def test_a_child_and_a_stripped_scan_are_predicted_flagged_and_quiet(tmp_path, example_run):
    """A child's age (8 y) on an adult head stored as git-annex stores files, and a scan
    stripped beforehand, in a dataset whose participants.tsv a spreadsheet saved (UTF-8 with a
    byte-order mark, CRLF): both predicted; the child's rows flagged; the stripped scan taken
    as stripped; one progress line per image and step, nothing from nipype."""
    import csv
    import json
    import shutil

    from _harden import EXAMPLE, manifest, progress_lines, run_app, strip_from_run
    from bids_brainage.levels.participant import STEP_NAMES

    _, ref_out, _ = example_run
    data = tmp_path / "data"
    data.mkdir()
    for name in ("dataset_description.json", "participants.json"):
        shutil.copy(EXAMPLE / name, data)
    key = "MD5E-s1071394--2b1c0e.nii.gz"  # git-annex: the file is a link to its content
    obj = data / ".git" / "annex" / "objects" / "Qx" / "7M" / key / key
    obj.parent.mkdir(parents=True)
    shutil.copy(EXAMPLE / "sub-IXI095" / "anat" / "sub-IXI095_T1w.nii.gz", obj)
    (data / "sub-CHILD" / "anat").mkdir(parents=True)
    (data / "sub-CHILD" / "anat" / "sub-CHILD_T1w.nii.gz").symlink_to(
        f"../../.git/annex/objects/Qx/7M/{key}/{key}")
    strip_from_run(ref_out, "sub-IXI161",
                   data / "sub-STRIPPED" / "anat" / "sub-STRIPPED_T1w.nii.gz")
    (data / "participants.tsv").write_bytes(
        b"\xef\xbb\xbfparticipant_id\tage\tsex\tsite\r\n"
        b"sub-CHILD\t8\tF\tHH\r\nsub-STRIPPED\t65.11\tF\tHH\r\n")
    before = manifest(data)
    out = tmp_path / "out"
    result = run_app([data, out, "participant", "-w", tmp_path / "work", "--nprocs", "2"],
                     tmp_path / "sandbox")
    assert result.code == 0, result.stderr
    assert manifest(data) == before and not result.elsewhere

    child = out / "sub-CHILD" / "anat"
    with open(child / "sub-CHILD_brainage.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert rows and {r["age"] for r in rows} == {"8.0"}
    assert all(r["status"] == "ok" and "age 8 y outside the training ages" in r["message"]
               for r in rows), rows
    sidecar = json.loads((child / "sub-CHILD_brainage.json").read_text())
    assert sidecar["flags"]["outside_training_range"] == [r["model"] for r in rows]

    stripped = json.loads((out / "sub-STRIPPED/anat/sub-STRIPPED_brainage.json").read_text())
    # a stripped input is stripped again by deepbet inside its non-zero voxels
    assert stripped["skull_strip"] == "restrip"
    assert any("deepbet stripped it again" in w for w in stripped["warnings"])

    # quiet: one progress line per image and step, and the few lines around them
    assert "nipype" not in result.stderr and "Traceback" not in result.stderr
    lines = progress_lines(result.stderr)
    for prefix in ("sub-CHILD", "sub-STRIPPED"):
        steps = [line.split(f"{prefix}: ", 1)[1] for line in lines if f" {prefix}: " in line]
        assert len(steps) == len(STEP_NAMES), steps
    assert len(result.stderr.splitlines()) <= len(lines) + 3, result.stderr
