"""Benchmark: start-up of one participant's job in a 1,000-participant dataset, and the group level.

    python benchmarks/slurm_startup.py [--participants 1000] [--repeat 5] [--keep DIR]

Builds a synthetic BIDS dataset (not timed): ``sub-NNNN/anat/sub-NNNN_T1w.nii.gz`` symlinked
to the example's three real images, a JSON sidecar each, a ``participants.tsv`` with ages.
Then, in fresh processes, as a SLURM array task runs it (``--participant-label`` of one
participant, ``--skip-bids-validation``, a new work folder, 2 processes):

- start-up: seconds from launching ``bids_brainage`` to nipype's ``[Node] Executing`` line of
  the first node, with the T1w discovery of this version (walks the participant's folder) and
  with the one it replaced (a pybids index of the whole dataset, database in the work folder);
  the process is stopped there;
- group level: ``bids_brainage bids out group`` on a derivatives folder with one
  ``_brainage.tsv`` / ``.json`` per participant (the bundled models' rows), report included;
  its peak RSS too.

Prints the median and the range of ``--repeat`` runs of each. Targets (issue 14): start-up
<= 5 s, group level <= 10 s.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ds-ixi3"
FIRST_NODE = re.compile(r"\[Node\] Executing")

# the app with T1w discovery swapped for the pybids index of the whole dataset it replaced
BEFORE = """
import sys
from pathlib import Path
import bids_brainage.bids.layout as layout
import bids_brainage.levels.participant as participant
assert hasattr(participant, "find_t1w"), "levels.participant no longer calls find_t1w"
work = Path(sys.argv[sys.argv.index("-w") + 1])
participant.find_t1w = lambda bids, labels=(), sessions=(): layout.find_t1w_pybids(
    bids, labels, sessions, database_path=work / "pybids_db")
from bids_brainage.cli.run import main
sys.exit(main(sys.argv[1:]))
"""
AFTER = "import sys; from bids_brainage.cli.run import main; sys.exit(main(sys.argv[1:]))"


def make_dataset(root: Path, n: int) -> Path:
    """A BIDS dataset of ``n`` participants whose images are links to the example's."""
    bids = root / "bids"
    bids.mkdir(parents=True)
    shutil.copy(EXAMPLE / "dataset_description.json", bids)
    images = sorted(EXAMPLE.glob("sub-*/anat/*_T1w.nii.gz"))
    lines = ["participant_id\tage\tsex\tsite"]
    for i in range(n):
        label = f"{i:04d}"
        anat = bids / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-{label}_T1w.nii.gz").symlink_to(images[i % len(images)])
        (anat / f"sub-{label}_T1w.json").write_text('{"MagneticFieldStrength": 3}\n')
        lines.append(f"sub-{label}\t{20 + i % 60}.5\t{'FM'[i % 2]}\tHH")
    (bids / "participants.tsv").write_text("\n".join(lines) + "\n")
    return bids


def time_startup(bids: Path, scratch: Path, label: str, code: str) -> float:
    """Seconds from launch to the first node executing; the run is stopped there."""
    out, work = scratch / "out", scratch / "work"
    for folder in (out, work):
        shutil.rmtree(folder, ignore_errors=True)
    cmd = [sys.executable, "-u", "-c", code, str(bids), str(out), "participant",
           "--participant-label", label, "--skip-bids-validation", "-w", str(work),
           "--nprocs", "2", "-v"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seconds, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if FIRST_NODE.search(line):
            seconds = time.perf_counter() - start
            break
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait()
    if seconds is None:
        sys.exit("no node started:\n" + "".join(lines[-30:]))
    return seconds


def make_outputs(bids: Path, out: Path, n: int) -> None:
    """One participant table and sidecar per participant, as the participant level writes."""
    from bids_brainage.bids.derivatives import tsv_text, write_dataset_description
    from bids_brainage.models.registry import default_models, load_cards

    models = default_models(load_cards())
    write_dataset_description(out, bids)
    for i in range(n):
        label, age = f"{i:04d}", 20 + i % 60 + 0.5
        rows = []
        for k, model in enumerate(models):
            predicted = round(age + ((i * 7 + k * 3) % 21 - 10) * 0.9, 3)
            rows.append({"participant_id": f"sub-{label}", "session_id": "n/a", "run": "n/a",
                         "model": model, "predicted_age": predicted,
                         "interval_low": predicted - 13.2, "interval_high": predicted + 13.2,
                         "age": age, "brain_age_gap": round(predicted - age, 3),
                         "status": "ok"})
        anat = out / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-{label}_brainage.tsv").write_text(tsv_text(rows))
        (anat / f"sub-{label}_brainage.json").write_text(json.dumps({"status": "ok"}))


def time_group(bids: Path, out: Path, work: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one group-level process."""
    cmd = [sys.executable, "-c", AFTER, str(bids), str(out), "group", "-w", str(work)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"group level exited {proc.returncode}: {' '.join(cmd)}")
    return seconds, usage.ru_maxrss * 1024


def summary(name: str, values: list[float], target: float) -> str:
    median = statistics.median(values)
    verdict = "ok" if median <= target else "OVER"
    return (f"{name:<38} median {median:6.2f} s  (min {min(values):.2f}, max {max(values):.2f}, "
            f"n={len(values)})  target <= {target:g} s: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the dataset here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="slurm_startup-"))
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    try:
        start = time.perf_counter()
        bids = make_dataset(root, args.participants)
        out = root / "derivatives"
        make_outputs(bids, out, args.participants)
        print(f"dataset of {args.participants} participants and their outputs built in "
              f"{time.perf_counter() - start:.1f} s under {root}")
        label = f"{args.participants // 2:04d}"
        results = {"before": [], "after": []}
        for _ in range(args.repeat):  # interleaved: a change in machine load hits both
            results["before"].append(time_startup(bids, root / "run", label, BEFORE))
            results["after"].append(time_startup(bids, root / "run", label, AFTER))
        group = [time_group(bids, out, root / "work") for _ in range(args.repeat)]
        print(summary("start-up, pybids index (before)", results["before"], 5))
        print(summary("start-up, participant folder (after)", results["after"], 5))
        print(summary("group level", [g[0] for g in group], 10)
              + f"  peak RSS {max(g[1] for g in group) / 2**30:.2f} GiB")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
