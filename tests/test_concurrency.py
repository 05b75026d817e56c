"""Concurrent jobs into one output folder, as a SLURM array runs them, and two jobs that were
given the same work folder by mistake.

Eight participant-level processes (one participant each, own work folders, one output
folder) start at once; all complete, every file is whole, ``dataset_description.json`` and
``logs/`` are consistent, and the group level then sees all eight. To keep eight jobs on two
cores affordable the eight images are the example's three brains skull-stripped beforehand
(from the session's example run) taken as they are (``--skull-strip none``), so no job runs
deepbet, and only the forest predicts;
every other step runs for real.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import nibabel as nib
import pytest

from _harden import EXAMPLE, strip_from_run

pytestmark = pytest.mark.slow
N_JOBS = 8


@pytest.fixture(scope="module")
def stripped_dataset(tmp_path_factory, example_run):
    """Eight participants, sub-01..sub-08, each a copy of one of the example's brains."""
    _, ref_out, _ = example_run
    data = tmp_path_factory.mktemp("eight") / "data"
    data.mkdir()
    shutil.copy(EXAMPLE / "dataset_description.json", data)
    sources = ["sub-IXI095", "sub-IXI161", "sub-IXI354"]
    ages = {"sub-IXI095": 24.9, "sub-IXI161": 65.11, "sub-IXI354": 45.62}
    lines = ["participant_id\tage"]
    for number in range(1, N_JOBS + 1):
        source = sources[(number - 1) % 3]
        label = f"sub-{number:02d}"
        strip_from_run(ref_out, source, data / label / "anat" / f"{label}_T1w.nii.gz")
        lines.append(f"{label}\t{ages[source]}")
    (data / "participants.tsv").write_text("\n".join(lines) + "\n")
    return data


def participant(data: Path, out: Path, work: Path, label: str) -> list[str]:
    # rf alone: the morph model's SyN and the ResNet would triple the cost of each job,
    # and they write the same files
    return [sys.executable, "-m", "bids_brainage", str(data), str(out), "participant",
            "--participant-label", label, "-w", str(work), "--nprocs", "1",
            "--skip-bids-validation", "--no-report", "--models", "rf", "--skull-strip", "none"]


def start_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    results = []
    for proc, cmd in zip(procs, commands):
        stdout, stderr = proc.communicate(timeout=1800)
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    return results


def test_eight_jobs_into_one_output_folder(stripped_dataset, tmp_path):
    out = tmp_path / "out"
    labels = [f"{n:02d}" for n in range(1, N_JOBS + 1)]
    start = time.monotonic()
    results = start_all([participant(stripped_dataset, out, tmp_path / f"work-{label}", label)
                         for label in labels])
    seconds = time.monotonic() - start
    print(f"\n{N_JOBS} participant jobs at once on {os.cpu_count()} cores: {seconds:.1f} s")
    for result in results:
        assert result.returncode == 0, result.stderr

    # every file whole
    for path in out.rglob("*"):
        if path.is_file():
            assert ".tmp-" not in path.name, f"temporary file left: {path}"
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.name.endswith(".nii.gz"):
                nib.load(path).get_fdata()
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_brainage"
    configs = [tomllib.loads(p.read_text())["bids_brainage"]
               for p in sorted((out / "logs").glob("config-*.toml"))]
    assert sorted(c["participant_label"][0] for c in configs) == labels
    assert len({c["run_uuid"] for c in configs}) == N_JOBS
    for label in labels:
        with open(out / f"sub-{label}" / "anat" / f"sub-{label}_brainage.tsv", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        assert rows and all(r["status"] == "ok" for r in rows)
    # copies of one brain got one prediction, whichever job made it
    tables = {label: (out / f"sub-{label}/anat/sub-{label}_brainage.tsv").read_text()
              .replace(f"sub-{label}", "sub-X") for label in labels}
    assert tables["01"] == tables["04"] == tables["07"]

    group = subprocess.run([sys.executable, "-m", "bids_brainage", str(stripped_dataset),
                            str(out), "group", "--no-report"], capture_output=True, text=True)
    assert group.returncode == 0, group.stderr
    with open(out / "group_brainage.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert sorted({r["participant_id"] for r in rows}) == [f"sub-{label}" for label in labels]
    assert all(r["status"] == "ok" for r in rows)


def test_two_jobs_with_the_same_work_dir_take_turns(stripped_dataset, tmp_path):
    """The second waits for the first (a lock in the work dir), says so, then reuses its
    results; neither corrupts the other."""
    out, work = tmp_path / "out", tmp_path / "work"
    first, second = start_all([participant(stripped_dataset, out, work, "01")] * 2)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    waited = [r for r in (first, second) if "is in use by another bids_brainage run" in r.stderr]
    assert len(waited) == 1, (first.stderr, second.stderr)
    assert "reused from the work dir" in waited[0].stderr
    assert "done (" not in "\n".join(line for line in waited[0].stderr.splitlines()
                                     if "registration" in line)
    with open(out / "sub-01" / "anat" / "sub-01_brainage.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert rows and all(r["status"] == "ok" for r in rows)
