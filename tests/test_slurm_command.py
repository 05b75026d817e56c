"""bids_brainage-slurm without a scheduler: whom it submits, the scripts it writes (--dry-run),
and what it refuses. The real submission is tests/test_slurm.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bids_brainage.bids.derivatives import tsv_text
from bids_brainage.cli.slurm import main
from bids_brainage.slurm import status
from conftest import EXAMPLE, copy_dataset

LABELS = ["IXI095", "IXI161", "IXI354"]


def write_table(out: Path, label: str, statuses: list[str]) -> None:
    rows = [{"participant_id": f"sub-{label}", "model": "rf", "status": s} for s in statuses]
    folder = out / f"sub-{label}" / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"sub-{label}_brainage.tsv").write_text(tsv_text(rows))


def submissions(out: Path) -> list[Path]:
    return sorted((out / "logs" / "slurm").glob("*/submission.json"))


def dry_run(out: Path, *args: str, bids: Path = EXAMPLE) -> tuple[int, dict, Path | None]:
    before = submissions(out)
    code = main([str(bids), str(out), "--dry-run", "--skip-bids-validation", *args])
    new = [p for p in submissions(out) if p not in before]
    return code, (json.loads(new[0].read_text()) if new else {}), (new[0].parent if new else None)


def test_help_and_version_import_nothing_heavy():
    code = ("import sys; from bids_brainage.cli.slurm import main; rc = main(['--help']);"
            "heavy = [m for m in ('torch', 'nipype', 'ants', 'bids', 'pandas') "
            "if m in sys.modules]; print(rc, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "--rerun-failed" in out and "--cpus-per-task" in out
    assert out.strip().splitlines()[-1] == "0 []"


def test_states_from_the_participant_tables(tmp_path):
    out = tmp_path / "out"
    write_table(out, "IXI095", ["ok", "ok"])
    write_table(out, "IXI161", ["failed"])
    states = status.participant_states(EXAMPLE, out)
    assert states == {"IXI095": "ok", "IXI161": "failed", "IXI354": "missing"}
    write_table(out, "IXI354", [])  # header only: preprocessing without models, complete
    (out / "sub-IXI095/anat/sub-IXI095_brainage.tsv").write_bytes(b"\xff\xfe broken")
    assert status.participant_states(EXAMPLE, out) == {
        "IXI095": "failed", "IXI161": "failed", "IXI354": "ok"}


@pytest.mark.parametrize("mode, expected", [
    ([], ["IXI354"]),
    (["--rerun-failed"], ["IXI161", "IXI354"]),
    (["--rerun-all"], LABELS),
])
def test_who_is_submitted(tmp_path, mode, expected):
    out = tmp_path / "out"
    write_table(out, "IXI095", ["ok"])
    write_table(out, "IXI161", ["failed"])
    code, record, folder = dry_run(out, *mode)
    assert code == 0
    assert record["participants"] == expected
    assert (folder / "participants.txt").read_text().split() == expected
    assert record["states_before"] == {"IXI095": "ok", "IXI161": "failed", "IXI354": "missing"}


def test_nothing_to_submit_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    for label in LABELS:
        write_table(out, label, ["ok"])
    code, record, folder = dry_run(out, "--rerun-failed")
    assert (code, record, folder) == (0, {}, None)
    assert "nothing to submit" in capsys.readouterr().out


def test_dry_run_writes_the_scripts_it_would_submit(tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "scratch"
    code, record, folder = dry_run(out, "-w", str(work), "--participant-label", "sub-IXI161",
                                   "IXI095", "--partition", "short", "--throttle", "7",
                                   "--sbatch-option=--qos=low", "--", "--models", "rf,morph")
    assert code == 0 and record["submitted"] is False and record["group_job"] is None
    printed = capsys.readouterr().out
    names = ("participant.sbatch", "group.sbatch", "submit.sh")
    for name in names:
        assert (folder / name).read_text() in printed
        subprocess.run(["bash", "-n", str(folder / name)], check=True)  # valid shell
    task = (folder / "participant.sbatch").read_text()
    app = Path(sys.executable).absolute().parent / "bids_brainage"
    assert f"exec {app} {EXAMPLE} {out} participant -w \"$work\"" in task
    assert f"work={work}/sub-$label" in task
    assert ('--participant-label "$label" --nprocs "${SLURM_CPUS_PER_TASK:-1}" '
            "--skip-bids-validation --models rf,morph") in task
    for line in ("--cpus-per-task=2", "--mem=3G", "--time=00:20:00", "--partition=short",
                 "--qos=low", f"--output={folder}/participant-%A_%a.log"):
        assert f"#SBATCH {line}\n" in task
    group = (folder / "group.sbatch").read_text()
    assert f"exec {app} {EXAMPLE} {out} group -w \"$work\" --nprocs 1 --models rf,morph" in group
    assert "#SBATCH --cpus-per-task=1\n" in group and "#SBATCH --mem=2G\n" in group
    submit = (folder / "submit.sh").read_text()
    assert "array1=$(sbatch --parsable --array=1-2%7 participant.sbatch participants.txt)" in submit
    assert "--dependency=afterany:${array1%%;*} group.sbatch" in submit
    assert (folder / "participants.txt").read_text() == "IXI095\nIXI161\n"


def test_large_cohorts_are_split_into_arrays_the_group_waits_for(tmp_path):
    code, record, folder = dry_run(tmp_path / "out", "--max-array-size", "2", "--throttle", "0")
    assert code == 0
    assert [(a["labels_file"], a["tasks"]) for a in record["array_jobs"]] == [
        ("participants-1.txt", 2), ("participants-2.txt", 1)]
    submit = (folder / "submit.sh").read_text()
    assert "--array=1-2 participant.sbatch participants-1.txt" in submit
    assert "--array=1-1 participant.sbatch participants-2.txt" in submit
    assert "--dependency=afterany:${array1%%;*}:${array2%%;*} group.sbatch" in submit


def test_image_runs_the_app_in_a_container(tmp_path):
    image = tmp_path / "bids_brainage-0.1.0.sif"
    image.write_bytes(b"SIF")
    out = tmp_path / "out"
    code, _, folder = dry_run(out, "--image", str(image), "--runtime", "apptainer",
                              "-w", str(tmp_path / "w"))
    assert code == 0
    task = (folder / "participant.sbatch").read_text()
    assert (f"exec apptainer run --cleanenv -B {EXAMPLE}:/data:ro -B {out}:/out "
            f'-B "$work":/work \\\n    {image} /data /out participant -w /work') in task
    assert dry_run(out, "--image", str(tmp_path / "none.sif"))[0] == 66


@pytest.mark.parametrize("args", [
    ["--", "--participant-label", "IXI095"],
    ["--", "-w", "/tmp/x"],
    ["--", "--nprocs", "4"],
    ["--", "--no-such-option"],
    ["--", "group"],
    ["--mem", "3 GB"],
    ["--time", "an hour"],
    ["--rerun-failed", "--rerun-all"],
    ["--max-array-size", "0"],
    ["--cpus-per-task", "0"],
])
def test_usage_errors_are_64(tmp_path, args):
    assert dry_run(tmp_path / "out", *args)[0] == 64
    assert submissions(tmp_path / "out") == []


def test_dataset_problems_are_found_before_submitting(tmp_path):
    out = tmp_path / "out"
    assert dry_run(out, "--participant-label", "NOPE")[0] == 18
    assert dry_run(out, bids=tmp_path / "missing")[0] == 66
    bad = copy_dataset(EXAMPLE, tmp_path / "bad")
    (bad / "dataset_description.json").unlink()
    assert dry_run(out, bids=bad)[0] == 16
    assert dry_run(out, "--", "--models", "nosuchmodel")[0] == 64
    assert submissions(out) == []


def test_invalid_dataset_is_refused_by_the_validator_once(tmp_path, capsys):
    bad = copy_dataset(EXAMPLE, tmp_path / "bad")
    (bad / "participants.tsv").write_text("no_participant_id\tage\nx\t1\n")
    code = main([str(bad), str(tmp_path / "out"), "--dry-run"])
    assert code == 16
    assert "participants.tsv" in capsys.readouterr().err


def test_without_sbatch_nothing_is_half_submitted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    out = tmp_path / "out"
    code = main([str(EXAMPLE), str(out), "--skip-bids-validation"])
    assert code == 69
    assert "sbatch not found" in capsys.readouterr().err
    record = json.loads(submissions(out)[0].read_text())
    assert record["submitted"] is True and record["array_jobs"][0]["job_id"] is None
