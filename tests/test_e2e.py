"""End to end on the real example images: predictions, outputs, validity, resume, failures."""
from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_brainage.bids.participants import read_participants
from bids_brainage.cli.run import main
from bids_brainage.models.registry import default_models, load_cards
from bids_brainage.training.robustness import upsample_to_1mm
from conftest import EXAMPLE, copy_dataset

pytestmark = pytest.mark.slow
EXPECTED = Path(__file__).parent / "data" / "expected_outputs.txt"


def read_tsv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def predictions(out: Path) -> dict[tuple[str, str], float]:
    rows = {}
    for tsv in sorted(out.glob("sub-*/**/*_brainage.tsv")):
        for row in read_tsv(tsv):
            if row["status"] == "ok":
                rows[(row["participant_id"], row["model"])] = float(row["predicted_age"])
    return rows


def test_example_predictions_are_within_15_years(example_run):
    code, out, _ = example_run
    assert code == 0
    ages = {pid: float(r["age"]) for pid, r in read_participants(EXAMPLE).items()}
    models = default_models(load_cards())
    for pid, age in ages.items():
        label = pid.removeprefix("sub-")
        rows = read_tsv(out / pid / "anat" / f"{pid}_brainage.tsv")
        assert [r["model"] for r in rows] == models
        for row in rows:
            assert row["status"] == "ok" and row["message"] == "n/a"
            predicted = float(row["predicted_age"])
            # measured (models fitted on all 138 pool images): the largest errors are on
            # IXI095 (24.9 y): tissue 41.0, ensemble 38.2, rf 32.9; the nested-CV MAEs are
            # 5.7-6.3 y with 90 % intervals of about ±12-14 y. Exact values:
            # tests/test_pinned_predictions.py
            limit = 15 if row["model"] == "ensemble" else 20
            assert abs(predicted - age) <= limit, (label, row)
            assert float(row["age"]) == age  # joined from participants.tsv


def test_outputs_are_the_expected_files(example_run):
    _, out, _ = example_run
    found = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                   if p.is_file() and p.parent.name != "logs")
    expected = EXPECTED.read_text().split()
    assert found == expected
    assert len(list((out / "logs").glob("config-*.toml"))) >= 1
    assert not list(out.rglob(".*.tmp*")), "temporary files left behind"


def test_sidecar_records_models_settings_timings(example_run):
    _, out, _ = example_run
    sidecar = json.loads((out / "sub-IXI095/anat/sub-IXI095_brainage.json").read_text())
    cards = load_cards()
    for name, meta in sidecar["models"].items():
        if cards[name].get("file"):
            assert meta["sha256"] == cards[name]["sha256"]
    assert sidecar["settings"]["normalization"] == "gmm"
    assert set(sidecar["timings"]) >= {"skull_strip", "n4", "register", "predict"}
    assert all(v >= 0 for v in sidecar["timings"].values())
    assert sidecar["registration_dice"] > 0.9
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_brainage"


def test_outputs_pass_the_bids_validator_as_a_derivative_dataset(example_run):
    _, out, _ = example_run
    from bids_brainage.bids.validate import _validator_command

    proc = subprocess.run(_validator_command() + ["--format", "json", str(out)],
                          capture_output=True, text=True)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [i for i in issues if i["severity"] == "error"]
    assert not errors, errors


def test_rerun_with_the_same_work_dir_reuses_results(example_run):
    code, out, work = example_run
    before = {p: p.stat().st_mtime for p in work.rglob("result_skull_strip.pklz")}
    assert len(before) == 3
    first = predictions(out)
    assert main([str(EXAMPLE), str(out), "participant", "-w", str(work), "--nprocs", "2",
                 "--participant-label", "IXI095", "--no-report"]) == 0
    after = {p: p.stat().st_mtime for p in work.rglob("result_skull_strip.pklz")}
    assert after == before, "a cached step ran again"
    assert predictions(out) == first


def test_participant_label_with_prefix_selects_the_same_images(tmp_path):
    from bids_brainage.bids.layout import find_t1w

    a = find_t1w(EXAMPLE, ("IXI095",))
    from bids_brainage.cli.parser import get_parser

    args = get_parser().parse_args([str(EXAMPLE), "o", "participant",
                                    "--participant-label", "sub-IXI095"])
    assert find_t1w(EXAMPLE, tuple(args.participant_label)) == a and len(a) == 1


def _write_bad_inputs(data: Path) -> dict[str, str]:
    """Four broken images beside a good one; returns {participant: expected reason}."""
    good = nib.load(data / "sub-IXI095/anat/sub-IXI095_T1w.nii.gz")
    arr = np.asarray(good.dataobj)
    cases = {"BADREAD": "cannot read the image", "BAD4D": "expected a 3-D T1w image",
             "BADZERO": "all zeros", "BADAFFINE": "affine is singular"}
    for label in cases:
        folder = data / f"sub-{label}" / "anat"
        folder.mkdir(parents=True)
        path = folder / f"sub-{label}_T1w.nii.gz"
        if label == "BADREAD":
            path.write_bytes(b"\x1f\x8b truncated gzip")
        elif label == "BAD4D":
            nib.save(nib.Nifti1Image(np.stack([arr, arr], -1), good.affine), path)
        elif label == "BADZERO":
            nib.save(nib.Nifti1Image(np.zeros_like(arr), good.affine), path)
        else:
            img = nib.Nifti1Image(arr, None)
            img.header["qform_code"], img.header["sform_code"] = 0, 1
            img.header["srow_x"], img.header["srow_y"] = [2, 0, 0, 0], [0, 2, 0, 0]
            img.header["srow_z"] = [0, 0, 0, 0]
            nib.save(img, path)
    with (data / "participants.tsv").open("a") as fh:
        for label in cases:
            fh.write(f"sub-{label}\tn/a\tn/a\tHH\n")
    return cases


def test_bad_inputs_fail_alone_with_clear_messages(tmp_path):
    data = copy_dataset(EXAMPLE, tmp_path / "data", ["sub-IXI095"])
    cases = _write_bad_inputs(data)
    out = tmp_path / "out"
    code = main([str(data), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--nprocs", "2", "--skip-bids-validation"])
    assert code == 1
    good = read_tsv(out / "sub-IXI095/anat/sub-IXI095_brainage.tsv")
    assert good and all(r["status"] == "ok" for r in good)
    for label, reason in cases.items():
        rows = read_tsv(out / f"sub-{label}" / "anat" / f"sub-{label}_brainage.tsv")
        assert len(rows) == 1 and rows[0]["status"] == "failed"
        assert f"sub-{label}_T1w.nii.gz" in rows[0]["message"]
        assert reason in rows[0]["message"], rows[0]["message"]
        assert rows[0]["predicted_age"] == "n/a"


def test_one_mm_version_predicts_like_the_two_mm_original(tmp_path, example_run):
    """DESIGN.md "Resolution": the same head at 1 mm and at 2 mm gives the same ages."""
    _, out2, _ = example_run
    data = copy_dataset(EXAMPLE, tmp_path / "data", ["sub-IXI095"])
    path = data / "sub-IXI095/anat/sub-IXI095_T1w.nii.gz"
    # the same field of view on a grid of half the voxel size (cubic interpolation)
    upsample_to_1mm(nib.load(path)).to_filename(str(path))
    out1 = tmp_path / "out"
    assert main([str(data), str(out1), "participant", "-w", str(tmp_path / "work"),
                 "--nprocs", "2", "--no-report"]) == 0
    one = predictions(out1)
    two = {k: v for k, v in predictions(out2).items() if k[0] == "sub-IXI095"}
    assert one.keys() == two.keys() and one
    for key in one:
        # measured on IXI095 with the models fitted on all 138: rf -2.5, tissue +2.7,
        # rf_sites +1.7, ensemble +2.3 years (0.65 tissue + 0.35 rf_sites: the previous
        # ensemble's rf weight cancelled tissue's move, +0.85); the cards' "res1" figures over
        # 5 pool images the gate's models never saw: rf 0.87 (worst 1.5), tissue 1.47 (2.2),
        # rf_sites 2.03 (3.3), ensemble 1.24 (2.6)
        limit = 3.0 if key[1] == "ensemble" else 3.5
        assert abs(one[key] - two[key]) <= limit, (key, one[key], two[key])
