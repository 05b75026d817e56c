"""Killed and resumed: SIGKILL at six points, then the same command completes, reuses what was
finished, and leaves the outputs of an uninterrupted run; nothing half-written is ever visible.

The kills are not timed: ``BIDS_BRAINAGE_TEST_PAUSE_AT`` (``bids_brainage.pause``) makes the
run stop at a named point and say so in a marker file; the test then kills the whole process
group (main process, forkserver and workers), as SLURM does when a job is cancelled. One
participant (the example's IXI095, a real head), ``--nprocs 2``:

1. writing ``dataset_description.json`` (temporary file written, not yet renamed)
2. skull strip done in its node folder, result not yet recorded by nipype
3. registration likewise, 4. prediction likewise
5. the derivatives sink: images and sidecars placed, the TSV not yet renamed into place
6. the participant report's temporary file written, not yet renamed

Each rerun starts where the last one was killed; the last one runs to the end.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest

from _harden import EXAMPLE

pytestmark = pytest.mark.slow

POINTS = ("write:dataset_description.json", "SkullStrip", "Register", "Predict",
          "write:sub-IXI095_brainage.tsv", "write:sub-IXI095.html")
# node result files that must survive (not be recomputed) once written
RESULTS = {"SkullStrip": "skull_strip", "Register": "register", "Predict": "predict"}


def command(out: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "bids_brainage", str(EXAMPLE), str(out), "participant",
            "-w", str(work), "--participant-label", "IXI095", "--nprocs", "2"]


def run_until(point: str, out: Path, work: Path, marker: Path, timeout: float = 900) -> float:
    """Start the command, wait until it pauses at ``point``, check the outputs, SIGKILL the
    process group. Returns the seconds it ran."""
    marker.unlink(missing_ok=True)
    env = dict(os.environ, BIDS_BRAINAGE_TEST_PAUSE_AT=point,
               BIDS_BRAINAGE_TEST_PAUSE_MARKER=str(marker))
    start = time.monotonic()
    proc = subprocess.Popen(command(out, work), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"exited {proc.returncode} before {point}:\n{proc.stderr.read()}")
            if time.monotonic() - start > timeout:
                pytest.fail(f"never reached {point}")
            time.sleep(0.2)
        assert marker.read_text().split()[0] == point
        assert_nothing_half_written(out)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    return time.monotonic() - start


def assert_nothing_half_written(out: Path) -> None:
    """Every visible file is whole; temporaries are hidden (a leading dot, which the group
    level and BIDS tools skip)."""
    for path in out.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.name.endswith(".json"):
            json.loads(path.read_text())
        elif path.name.endswith(".tsv"):
            with path.open(newline="") as handle:
                rows = list(csv.reader(handle, delimiter="\t"))
            assert rows and all(len(r) == len(rows[0]) for r in rows), path
        elif path.name.endswith(".nii.gz"):
            with gzip.open(path) as handle:
                handle.read()  # a truncated gzip stream raises here
            nib.load(path).get_fdata()
        elif path.name.endswith(".html"):
            assert path.read_text().rstrip().endswith("</html>"), path
        elif path.name.endswith(".toml"):
            import tomllib

            tomllib.loads(path.read_text())


def comparable(path: Path) -> bytes:
    """A file's bytes, less what differs between any two runs: the seconds each step took."""
    data = path.read_bytes()
    if path.name.endswith("_brainage.json"):
        sidecar = json.loads(data)
        sidecar.pop("timings", None)
        return json.dumps(sidecar, sort_keys=True).encode()
    if path.suffix == ".html":
        text = data.decode()
        text = re.sub(r"<h3>Processing times</h3>.*?</table>", "", text, flags=re.S)
        return text.encode()
    return data


def outputs(out: Path) -> dict[str, Path]:
    return {str(p.relative_to(out)): p for p in out.rglob("*")
            if p.is_file() and "logs" not in p.relative_to(out).parts}


def test_killed_at_six_points_then_resumed_equals_an_uninterrupted_run(tmp_path):
    base = tmp_path / "run"
    out, work, marker = base / "out", base / "work", tmp_path / "paused"
    # the uninterrupted run, at the same paths (the sidecar records them), then moved aside
    start = time.monotonic()
    reference = subprocess.run(command(out, work), capture_output=True, text=True)
    uninterrupted = time.monotonic() - start
    assert reference.returncode == 0, reference.stderr
    ref = tmp_path / "reference"
    shutil.move(base, ref)

    seconds, mtimes = {}, {}
    for point in POINTS:
        seconds[point] = run_until(point, out, work, marker)
        for name, node in RESULTS.items():
            for result in work.rglob(f"result_{node}.pklz"):
                mtimes.setdefault(name, (result, result.stat().st_mtime_ns))
    start = time.monotonic()
    final = subprocess.run(command(out, work), capture_output=True, text=True)
    seconds["final"] = time.monotonic() - start
    print(f"\nuninterrupted {uninterrupted:.1f} s; killed runs and the final one: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    assert final.returncode == 0, final.stderr

    # finished work was reused: each step's result written before a kill is the same file
    assert set(mtimes) == set(RESULTS)
    for name, (result, mtime) in mtimes.items():
        assert result.stat().st_mtime_ns == mtime, f"{name} ran again after it had finished"
    assert "reused from the work dir" in final.stderr

    # the outputs of the uninterrupted run, byte for byte (timings aside), no temporaries
    got, want = outputs(out), outputs(ref / "out")
    assert sorted(got) == sorted(want)
    for name in want:
        assert comparable(got[name]) == comparable(want[name]), f"{name} differs"
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name], "temporaries left behind"
    assert len(list((out / "logs").glob("config-*.toml"))) == len(POINTS)  # one per run
