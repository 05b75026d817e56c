"""The command line: fast --help/--version, labels, refusals and exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bids_brainage.cli.parser import get_parser
from bids_brainage.cli.run import main
from conftest import copy_dataset


def test_version_and_help_are_fast_and_import_nothing_heavy():
    code = (
        "import sys, time; t = time.perf_counter();"
        "from bids_brainage.cli.run import main;"
        "rc = main(['--version']);"
        "heavy = [m for m in ('torch', 'nipype', 'ants', 'SimpleITK', 'bids') if m in sys.modules];"
        "print(rc, heavy, time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    version, result = out.stdout.strip().splitlines()
    assert version.startswith("bids_brainage 0.")
    rc, heavy, seconds = result.split(" ")
    assert (rc, heavy) == ("0", "[]"), result
    assert float(seconds) < 2.0  # ~0.2 s here
    start = time.perf_counter()
    help_run = subprocess.run([sys.executable, "-m", "bids_brainage", "--help"],
                              capture_output=True, text=True)
    assert help_run.returncode == 0
    assert "--participant-label" in help_run.stdout and "--normalization" in help_run.stdout
    assert time.perf_counter() - start < 5  # generous for a loaded CI machine; ~0.2 s here


@pytest.mark.parametrize("label", ["sub-IXI095", "IXI095"])
def test_participant_label_with_or_without_prefix(label):
    args = get_parser().parse_args(["in", "out", "participant", "--participant-label", label])
    assert args.participant_label == ["IXI095"]


def test_fmriprep_style_aliases():
    args = get_parser().parse_args(["in", "out", "participant", "--participant_label", "01",
                                    "--n_cpus", "3", "--omp-nthreads", "1", "-w", "/tmp/w"])
    assert (args.participant_label, args.nprocs, args.omp_nthreads) == (["01"], 3, 1)


def test_unknown_analysis_level_is_17(example_dir, tmp_path):
    assert main([str(example_dir), str(tmp_path / "out"), "session"]) == 17


def test_usage_error_is_64(example_dir, tmp_path):
    assert main([str(example_dir), str(tmp_path / "out"), "participant",
                 "--normalization", "nope"]) == 64


def test_missing_input_is_66(tmp_path):
    assert main([str(tmp_path / "absent"), str(tmp_path / "out"), "participant"]) == 66


def test_output_inside_input_is_refused(tmp_path, example_dir):
    data = copy_dataset(example_dir, tmp_path / "data", ["sub-IXI095"])
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert main([str(data), str(data), "participant"]) == 64
    assert main([str(data), str(data / "derivatives" / "x"), "participant"]) == 64
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_unwritable_output_is_73(tmp_path, example_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main([str(example_dir), str(blocker / "out"), "participant"]) == 73


def test_unknown_label_is_18_and_lists_labels(tmp_path, example_dir, capsys):
    code = main([str(example_dir), str(tmp_path / "out"), "participant", "-w",
                 str(tmp_path / "w"), "--participant-label", "nobody",
                 "--skip-bids-validation"])
    assert code == 18
    err = capsys.readouterr().err
    assert "IXI095" in err and "nobody" in err


def test_invalid_bids_is_16_with_validator_message(tmp_path, example_dir, capsys):
    data = copy_dataset(example_dir, tmp_path / "data", ["sub-IXI095"])
    # a T1w whose name breaks BIDS, and a participants.tsv without its required column
    (data / "sub-IXI095" / "anat" / "sub-IXI095_T1w.nii.gz").rename(
        data / "sub-IXI095" / "anat" / "IXI095_T1.nii.gz")
    code = main([str(data), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")])
    assert code == 16
    assert "not a valid BIDS dataset" in capsys.readouterr().err
    # --skip-bids-validation skips it; then pybids finds no T1w: 18
    code = main([str(data), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--skip-bids-validation"])
    assert code == 18


def test_not_a_bids_dataset_is_16(tmp_path):
    (tmp_path / "data").mkdir()
    assert main([str(tmp_path / "data"), str(tmp_path / "out"), "participant"]) == 16


def test_altered_model_dir_is_refused(tmp_path, example_dir, capsys):
    import shutil

    from bids_brainage.models.registry import BUNDLED_DIR

    models = tmp_path / "models"
    shutil.copytree(BUNDLED_DIR, models)
    card = json.loads((models / "models.json").read_text())["models"][0]
    with open(models / card["file"], "ab") as fh:
        fh.write(b"tampered")
    code = main([str(example_dir), str(tmp_path / "out"), "participant", "-w",
                 str(tmp_path / "w"), "--model-dir", str(models)])
    assert code == 64
    err = capsys.readouterr().err
    assert "sha256" in err and card["file"] in err
    (models / card["file"]).unlink()
    assert main([str(example_dir), str(tmp_path / "out"), "participant", "-w",
                 str(tmp_path / "w"), "--model-dir", str(models)]) == 64
    assert "missing" in capsys.readouterr().err
