"""Benchmark: what one SLURM array task needs (the defaults of ``bids_brainage-slurm``).

    python benchmarks/slurm_resources.py [--runs 2] [--nprocs 2]

Runs the participant level for one image exactly as an array task does (fresh work folder,
``--nprocs 2``, ``--skip-bids-validation``, reports on) on the example's 2 mm image and on a
real full-resolution head (``../shared/data/ds000011-heads``, 1 x 1.33 x 1.33 mm), and samples
the memory of the whole process tree (the app, nipype's forkserver and its workers) every
0.2 s from ``/proc``: the peak of the summed RSS (what SLURM's ``jobacct_gather/linux``
counts) and of the summed PSS (shared pages counted once, closer to a cgroup's charge).
Prints the median wall time and the largest peaks over ``--runs`` runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ds-ixi3"
HEADS = Path(os.environ.get("BIDS_BRAINAGE_SHARED_DATA", ROOT.parent / "shared" / "data")) \
    / "ds000011-heads"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_memory(pid: int) -> tuple[int, int]:
    """Summed RSS and PSS (bytes) of ``pid`` and all its descendants."""
    tree, todo, rss, pss = _children(), [pid], 0, 0
    while todo:
        current = todo.pop()
        todo += tree.get(current, [])
        try:
            with open(f"/proc/{current}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def one_dataset(folder: Path, source: Path, subject: str) -> Path:
    folder.mkdir(parents=True)
    for name in ("dataset_description.json", "participants.tsv"):
        shutil.copy(source / name, folder / name)
    image = source / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz"
    (folder / f"sub-{subject}" / "anat").mkdir(parents=True)
    shutil.copy(image, folder / f"sub-{subject}" / "anat" / image.name)
    return folder


def run_task(bids: Path, scratch: Path, subject: str, nprocs: int) -> tuple[float, int, int]:
    out, work = scratch / "out", scratch / "work" / subject
    shutil.rmtree(scratch, ignore_errors=True)
    app = Path(sys.executable).parent / "bids_brainage"
    cmd = [str(app), str(bids), str(out), "participant", "--participant-label", subject,
           "-w", str(work), "--nprocs", str(nprocs), "--skip-bids-validation"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
    return seconds, peak_rss, peak_pss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--nprocs", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="slurm_resources-"))
    cases = [("example 2 mm (IXI095)", EXAMPLE, "IXI095")]
    if HEADS.exists():
        cases.append(("full-resolution head (ds000011 sub-01)", HEADS, "01"))
    else:
        print(f"{HEADS} not found: the full-resolution case is left out")
    try:
        for name, source, subject in cases:
            bids = one_dataset(root / subject / "bids", source, subject)
            results = [run_task(bids, root / subject / "run", subject, args.nprocs)
                       for _ in range(args.runs)]
            seconds = statistics.median(r[0] for r in results)
            rss, pss = max(r[1] for r in results), max(r[2] for r in results)
            print(f"{name:<42} {seconds:6.1f} s  peak RSS {rss / 2**30:4.2f} GiB  "
                  f"peak PSS {pss / 2**30:4.2f} GiB  (--nprocs {args.nprocs}, "
                  f"{args.runs} runs)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
