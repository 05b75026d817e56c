"""The example cohort through bids_brainage-slurm on a real SLURM (munge + slurmctld + slurmd
on loopback, started by ../shared/tools/slurm-up; needs root and Debian's slurm-wlm, which
slurm-up installs).

Submits the example's three participants with the installed app, waits for the array and the
group job, and compares the predictions with a local run's. Then breaks one participant in a
copy of the dataset: the group job still runs and lists it as failed; once fixed,
``--rerun-failed`` submits that participant alone. Prints every job's id, state, exit code
and times (``pytest -s``): from ``sacct`` when the cluster keeps accounting, else from
``scontrol`` (slurm-up runs no accounting database; finished jobs stay 300 s in slurmctld).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLE, ROOT, copy_dataset

SLURM_UP = ROOT.parent / "shared" / "tools" / "slurm-up"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: slurm-up starts munge, "
                       "slurmctld and slurmd (run make test as root)"),
    pytest.mark.skipif(not SLURM_UP.exists(), reason=f"no {SLURM_UP}"),
]
COMMAND = Path(sys.executable).absolute().parent / "bids_brainage-slurm"
BROKEN = "IXI161"
# seconds for one submission to end: a participant takes 20-60 s on 2 cores, but up to 7 min
# on this shared machine when others are busy; the jobs get an hour each for the same reason
TIMEOUT = 2700
JOB_TIME = "01:00:00"
TOLERANCE = 1e-3  # years: the tasks run 2 threads per image, the local run 1


SUBMITTED: list[str] = []  # job ids of this module, cancelled before the cluster stops


@pytest.fixture(scope="module")
def cluster():
    up = subprocess.run([str(SLURM_UP)], capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, f"slurm-up failed:\n{up.stdout}\n{up.stderr}"
    print(f"\nslurm-up:\n{up.stdout.strip()}")
    try:
        yield
    finally:
        # stopping slurmd leaves running jobs behind (slurmstepd carries on): end ours first
        if SUBMITTED:
            subprocess.run(["scancel", *SUBMITTED], timeout=60)
            wait_for(SUBMITTED, timeout=60, fail=False)
        subprocess.run([str(SLURM_UP), "stop"], timeout=60)


def submit(bids: Path, out: Path, *args: str) -> tuple[dict, Path, str]:
    """Run the command; returns submission.json, its folder and what the command printed."""
    before = set((out / "logs" / "slurm").glob("*/submission.json"))
    proc = subprocess.run([str(COMMAND), str(bids), str(out), "-w", str(out.parent / "work"),
                           "--time", JOB_TIME, *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"$ bids_brainage-slurm {bids.name} {out.name} {' '.join(args)}\n{proc.stdout}")
    new = set((out / "logs" / "slurm").glob("*/submission.json")) - before
    if not new:
        return {}, None, proc.stdout
    (path,) = new
    record = json.loads(path.read_text())
    SUBMITTED.extend([a["job_id"] for a in record["array_jobs"]] + [record["group_job"]])
    return record, path.parent, proc.stdout


def wait_for(job_ids: list[str], timeout: float = TIMEOUT, fail: bool = True) -> float:
    """Wait until no job of ``job_ids`` is pending or running (squeue); returns seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        queued = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"],
                                capture_output=True, text=True)
        if queued.returncode == 0 and not queued.stdout.strip():
            return time.monotonic() - start
        time.sleep(3)
    if fail:
        pytest.fail(f"jobs {job_ids} still queued after {timeout} s:\n{queued.stdout}")
    return timeout


def job_states(job_ids: list[str]) -> tuple[str, list[dict]]:
    """``(source, [{job, name, state, exit, start, end, elapsed}])`` of the jobs and tasks."""
    fields = ["job", "name", "state", "exit", "start", "end", "elapsed"]
    acct = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "--format",
                           "JobID,JobName,State,ExitCode,Start,End,Elapsed"],
                          capture_output=True, text=True)
    if acct.returncode == 0 and acct.stdout.strip():
        return "sacct", [dict(zip(fields, line.split("|"))) for line in
                         acct.stdout.strip().splitlines()]
    rows = []
    for job_id in job_ids:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job_id],
                               capture_output=True, text=True, check=True)
        for line in shown.stdout.strip().splitlines():
            kv = dict(item.split("=", 1) for item in line.split() if "=" in item)
            job = (f"{kv['ArrayJobId']}_{kv['ArrayTaskId']}" if "ArrayTaskId" in kv
                   else kv["JobId"])
            rows.append(dict(zip(fields, [job, kv["JobName"], kv["JobState"], kv["ExitCode"],
                                          kv["StartTime"], kv["EndTime"], kv["RunTime"]])))
    reason = (acct.stderr.strip() or "no rows").splitlines()[0]
    return f"scontrol (sacct: {reason})", rows


def run_and_wait(record: dict) -> dict[str, dict]:
    """Wait for a submission's jobs; print and return their states by job id."""
    arrays = [a["job_id"] for a in record["array_jobs"]]
    ids = arrays + [record["group_job"]]
    seconds = wait_for(ids)
    source, rows = job_states(ids)
    print(f"jobs {', '.join(ids)} done after {seconds:.0f} s; states from {source}:")
    for row in sorted(rows, key=lambda r: [int(n) for n in r["job"].split("_")]):
        print("  {job:<8} {name:<20} {state:<10} exit {exit:<5} {start} -> {end} "
              "({elapsed})".format(**row))
    return {row["job"]: row for row in rows}


def read_tsv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def predictions(out: Path) -> dict[tuple[str, str], float]:
    return {(r["participant_id"], r["model"]): float(r["predicted_age"])
            for tsv in sorted(out.glob("sub-*/anat/*_brainage.tsv"))
            for r in read_tsv(tsv) if r["status"] == "ok"}


def group_statuses(out: Path) -> dict[str, set[str]]:
    statuses: dict[str, set[str]] = {}
    for row in read_tsv(out / "group_brainage.tsv"):
        statuses.setdefault(row["participant_id"], set()).add(row["status"])
    return statuses


def assert_group_after_arrays(states: dict[str, dict], record: dict) -> None:
    group = states[record["group_job"]]
    tasks = [row for job, row in states.items() if job != record["group_job"]]
    assert group["state"] == "COMPLETED" and group["exit"] == "0:0", group
    assert group["start"] >= max(task["end"] for task in tasks), "group started too early"


@pytest.fixture(scope="module")
def cohort(cluster, tmp_path_factory):
    """The example submitted to the cluster: (record, states, output folder)."""
    out = tmp_path_factory.mktemp("slurm") / "out"
    record, folder, _ = submit(EXAMPLE, out)
    assert (folder / "participants.txt").read_text().split() == ["IXI095", "IXI161", "IXI354"]
    return record, run_and_wait(record), out


def test_example_cohort_runs_on_a_real_scheduler(cohort, example_run):
    record, states, out = cohort
    array = record["array_jobs"][0]["job_id"]
    for task in (1, 2, 3):
        row = states[f"{array}_{task}"]
        assert (row["state"], row["exit"]) == ("COMPLETED", "0:0"), row
    assert_group_after_arrays(states, record)
    for name in ("group_brainage.tsv", "group_brainage.csv", "group_brainage.json",
                 "group_report.html"):
        assert (out / name).is_file(), name
    assert group_statuses(out) == {f"sub-{label}": {"ok"} for label in
                                   ("IXI095", "IXI161", "IXI354")}
    code, local_out, _ = example_run
    assert code == 0
    local, remote = predictions(local_out), predictions(out)
    assert set(remote) == set(local) and len(local) >= 9
    worst = max(abs(remote[k] - local[k]) for k in local)
    print(f"largest difference from the local run: {worst:.2e} years over {len(local)} "
          "predictions")
    assert worst <= TOLERANCE
    # every task had its own work folder
    assert sorted(p.name for p in (out.parent / "work").iterdir()) == [
        "group", "sub-IXI095", "sub-IXI161", "sub-IXI354"]


def test_a_broken_participant_is_listed_then_resubmitted_alone(cohort, tmp_path):
    _, _, done = cohort
    data = copy_dataset(EXAMPLE, tmp_path / "data")
    image = data / f"sub-{BROKEN}" / "anat" / f"sub-{BROKEN}_T1w.nii.gz"
    image.write_bytes(b"\x1f\x8b not a complete gzip stream")
    out = tmp_path / "out"
    # the two healthy participants are already done: copied from the first submission
    for label in ("IXI095", "IXI354"):
        shutil.copytree(done / f"sub-{label}", out / f"sub-{label}")

    record, folder, _ = submit(data, out, "--skip-bids-validation")
    assert record["participants"] == [BROKEN]
    assert record["states_before"] == {"IXI095": "ok", BROKEN: "missing", "IXI354": "ok"}
    states = run_and_wait(record)
    task = states[f"{record['array_jobs'][0]['job_id']}_1"]
    assert (task["state"], task["exit"]) == ("FAILED", "1:0"), task
    assert_group_after_arrays(states, record)
    assert group_statuses(out) == {"sub-IXI095": {"ok"}, f"sub-{BROKEN}": {"failed"},
                                   "sub-IXI354": {"ok"}}
    (failed,) = [r for r in read_tsv(out / "group_brainage.tsv") if r["status"] == "failed"]
    assert "cannot read the image" in failed["message"]
    summary = json.loads((out / "group_brainage.json").read_text())
    assert [entry["status"] for entry in summary["failed"]] == ["failed"]

    # without --rerun-failed a failed participant stays as it is
    nothing, _, printed = submit(data, out, "--skip-bids-validation")
    assert nothing == {} and "nothing to submit" in printed

    shutil.copy(EXAMPLE / f"sub-{BROKEN}" / "anat" / image.name, image)
    record, folder, _ = submit(data, out, "--rerun-failed")
    assert record["participants"] == [BROKEN]
    assert (folder / "participants.txt").read_text() == f"{BROKEN}\n"
    assert record["array_jobs"][0]["tasks"] == 1
    states = run_and_wait(record)
    task = states[f"{record['array_jobs'][0]['job_id']}_1"]
    assert (task["state"], task["exit"]) == ("COMPLETED", "0:0"), task
    assert_group_after_arrays(states, record)
    assert group_statuses(out) == {f"sub-{label}": {"ok"} for label in
                                   ("IXI095", BROKEN, "IXI354")}
    assert predictions(out) == pytest.approx(predictions(done), abs=TOLERANCE)
