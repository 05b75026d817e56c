"""Benchmark: group level over 10,000 synthetic participants' outputs (target ≤ 10 s, ≤ 1 GB).

    python benchmarks/group.py [--participants 10000] [--repeat 1] [--keep DIR]

Writes a synthetic derivatives tree (not timed): every participant a ``_brainage.tsv`` with
three models, 5 % of them two sessions, 2 % failed, 1 % without an age, ten sites, plus a
model directory whose cards give training ranges and bias lines. Then runs the real
``run_group`` (tables, JSON and the HTML report) in a fresh Python process and prints its wall
time, including imports, the time per stage and the peak resident memory of that process.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = ("participant_id", "session_id", "run", "model", "predicted_age", "interval_low",
           "interval_high", "age", "brain_age_gap", "status", "message")
MODELS = {"rf": (0.70, 14.0), "resnet34": (0.85, 7.0), "ensemble": (0.80, 9.0)}


def make_dataset(root: Path, n: int, seed: int = 0) -> tuple[Path, Path, Path]:
    import numpy as np

    rng = np.random.default_rng(seed)
    bids, out, model_dir = root / "bids", root / "out", root / "models"
    for folder in (bids, out, model_dir):
        folder.mkdir(parents=True)
    ages = rng.uniform(18, 90, n)
    lines = ["participant_id\tage\tsex\tsite"]
    for i in range(n):
        sub = f"sub-{i:05d}"
        age = ages[i]
        no_age = rng.random() < 0.01
        lines.append(f"{sub}\t{'n/a' if no_age else f'{age:.2f}'}\t{'FM'[i % 2]}\tS{i % 10}")
        sessions = ["ses-1", "ses-2"] if rng.random() < 0.05 else [None]
        for ses in sessions:
            _write_participant(out, sub, ses, None if no_age else age, rng)
    (bids / "participants.tsv").write_text("\n".join(lines) + "\n")
    cards = [{"name": name, "training": {"age_min": 20, "age_max": 82, "n": 138},
              "bias_correction": {"slope": slope, "intercept": icpt, "fitted_on": "synthetic"}}
             for name, (slope, icpt) in MODELS.items()]
    (model_dir / "models.json").write_text(json.dumps({"models": cards}))
    return bids, out, model_dir


def _write_participant(out: Path, sub: str, ses: str | None, age, rng) -> None:
    folder = out / sub / ses / "anat" if ses else out / sub / "anat"
    folder.mkdir(parents=True)
    stem = f"{sub}_{ses}" if ses else sub
    common = [sub, ses or "n/a", "n/a"]
    age_text = "n/a" if age is None else f"{age:.2f}"
    rows = []
    if rng.random() < 0.02:
        rows.append(common + ["n/a"] * 4 + [age_text, "n/a", "failed", "skull strip: empty mask"])
    else:
        truth = 50.0 if age is None else age
        for name, (slope, icpt) in MODELS.items():
            pred = slope * truth + icpt + rng.normal(0, 5)
            gap = "n/a" if age is None else f"{pred - age:.2f}"
            rows.append(common + [name, f"{pred:.2f}", f"{pred - 8:.2f}", f"{pred + 8:.2f}",
                                  age_text, gap, "ok", "n/a"])
    text = "\n".join("\t".join(r) for r in [list(COLUMNS)] + rows) + "\n"
    (folder / f"{stem}_brainage.tsv").write_text(text)


def run_child(bids: str, out: str, model_dir: str) -> None:
    """In a fresh process: time run_group and each stage; print one JSON line."""
    start = time.perf_counter()
    stages: dict[str, float] = {}
    from bids_brainage.levels import group
    from bids_brainage.config import Settings
    from bids_brainage.reports import group as report

    def timed(module, name):
        function = getattr(module, name)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
        setattr(module, name, wrapper)

    for name in ("collect", "join_participants", "missing_participants", "analyse",
                 "write_outputs"):
        timed(group, name)
    timed(report, "write_group_report")
    stages["imports"] = time.perf_counter() - start
    settings = Settings(bids_dir=Path(bids), output_dir=Path(out), analysis_level="group",
                        work_dir=Path(out).parent / "work", model_dir=Path(model_dir))
    code = group.run_group(settings)
    total = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = sum(1 for _ in open(Path(out) / "group_brainage.tsv")) - 1
    print(json.dumps({"exit": code, "seconds": total, "peak_mb": peak_mb, "rows": rows,
                      "stages": stages}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="make the dataset here and keep it")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(*args.child)
        return 0
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-group-"))
    try:
        t0 = time.perf_counter()
        bids, out, model_dir = make_dataset(root, args.participants)
        files = sum(1 for _ in out.rglob("*_brainage.tsv"))
        print(f"dataset: {args.participants} participants, {files} _brainage.tsv files "
              f"({time.perf_counter() - t0:.1f} s to write, not timed)")
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        results = []
        for number in range(args.repeat):
            line = subprocess.run(
                [sys.executable, __file__, "--child", str(bids), str(out), str(model_dir)],
                check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
            result = json.loads(line)
            results.append(result)
            stages = ", ".join(f"{k} {v:.2f}" for k, v in result["stages"].items())
            print(f"run {number + 1}: {result['seconds']:.2f} s, peak RSS "
                  f"{result['peak_mb']:.0f} MB, {result['rows']} rows, exit {result['exit']} "
                  f"[{stages}]")
        worst = max(r["seconds"] for r in results), max(r["peak_mb"] for r in results)
        verdict = "PASS" if worst[0] <= 10 and worst[1] <= 1024 else "FAIL"
        print(f"{verdict}: slowest {worst[0]:.2f} s (target ≤ 10 s), "
              f"peak {worst[1]:.0f} MB (target ≤ 1024 MB)")
        return 0 if verdict == "PASS" else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
