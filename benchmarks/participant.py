"""Per-stage seconds and peak memory of participant level for one image, 2 mm and 1 mm.

    python benchmarks/participant.py [--runs 3] [--subject IXI095]

Each run is a fresh ``bids_brainage`` process with a fresh work dir (nothing cached), one
process (``--nprocs 1``) with 2 threads, so the peak RSS of that process is the run's peak.
The 1 mm image is the 2 mm example resampled (cubic) onto a grid of half the voxel size.
Prints the median over runs of the wall time, each stage's seconds and the peak RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib

from bids_brainage.training.robustness import upsample_to_1mm

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ds-ixi3"


def make_dataset(folder: Path, subject: str, one_mm: bool) -> Path:
    folder.mkdir(parents=True)
    for name in ("dataset_description.json", "participants.tsv"):
        shutil.copy(EXAMPLE / name, folder / name)
    src = EXAMPLE / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz"
    dst = folder / f"sub-{subject}" / "anat" / src.name
    dst.parent.mkdir(parents=True)
    if not one_mm:
        shutil.copy(src, dst)
        return folder
    upsample_to_1mm(nib.load(src)).to_filename(str(dst))
    return folder


def child_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def one_run(data: Path, subject: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out, work = Path(tmp) / "out", Path(tmp) / "work"
        cmd = [sys.executable, "-m", "bids_brainage", str(data), str(out), "participant",
               "-w", str(work), "--nprocs", "1", "--omp-nthreads", "2", "--no-report",
               "--skip-bids-validation"]
        # ru_maxrss of children is the maximum over all children so far: measure each run
        # in its own intermediate process so runs do not mask each other
        probe = ("import resource, subprocess, sys, time, json; t = time.perf_counter();"
                 "rc = subprocess.call(sys.argv[1:]);"
                 "print(json.dumps({'rc': rc, 'wall': time.perf_counter() - t,"
                 "'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
        res = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True)
        result = json.loads(res.stdout.strip().splitlines()[-1])
        if result["rc"] != 0:
            raise SystemExit(f"run failed ({result['rc']}): {res.stderr[-2000:]}")
        sidecar = out / f"sub-{subject}" / "anat" / f"sub-{subject}_brainage.json"
        result["stages"] = json.loads(sidecar.read_text())["timings"]
        tsv = sidecar.with_suffix(".tsv").read_text().splitlines()
        result["predictions"] = [line.split("\t")[3:5] for line in tsv[1:]]
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--subject", default="IXI095")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for label, one_mm in (("2 mm", False), ("1 mm", True)):
            data = make_dataset(Path(tmp) / label.replace(" ", ""), args.subject, one_mm)
            shape = nib.load(next(data.rglob("*_T1w.nii.gz"))).shape
            runs = [one_run(data, args.subject) for _ in range(args.runs)]
            med = statistics.median
            print(f"\n{label} image {shape}: median of {args.runs} runs")
            walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
            print(f"  wall            {med(r['wall'] for r in runs):7.1f} s   (runs: {walls})")
            print(f"  peak RSS        {med(r['rss_mb'] for r in runs):7.0f} MB")
            for stage in runs[0]["stages"]:
                print(f"  {stage:<15} {med(r['stages'][stage] for r in runs):7.2f} s")
            print(f"  predictions     {runs[0]['predictions']}")


if __name__ == "__main__":
    main()
