"""A whole dataset in one command: participants per hour, and each participant's wall time.

    python benchmarks/cohort.py [--dataset ../shared/data/ds000011-heads] [--nprocs 2]
                                [--runs 1] [--app PATH] [--app-args "..."] [--json FILE]

Runs ``bids_brainage <dataset> <out> participant -w <work> --nprocs N`` (fresh folders; the
validator and the reports on) on the 14 raw ds000011 heads (1 × 1.33 × 1.33 mm) and prints
the wall time, participants per hour, the peak memory of the whole process tree, and per
participant the wall time from its first step handed to nipype to its outputs written (the
markers of :mod:`bids_brainage.timeline`), next to the sum of its stages (sidecar). With
``--nprocs 2`` two participants run at once, so a participant's wall is longer than the
cohort's time per participant; and nipype's MultiProc hands out the ready steps in graph
order (every participant's conform, then every skull strip, ...), so each participant's
wall spans most of the run (measured 2026-11-30: ~170 s of a 190 s run for all 14).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from participant import HEADS, default_app, predictions, run_app, sidecars  # noqa: E402


def per_participant(events: list[dict]) -> dict[str, float]:
    """``{image workflow: seconds from its first step handed over to its outputs written}``."""
    first, last = {}, {}
    for e in sorted(events, key=lambda e: e["t"]):
        if e["event"] == "node_start":
            image = e["node"].split(".")[1]
            first.setdefault(image, e["t"])
        elif e["event"] == "run_end" and e.get("step") == "DerivativesSink":
            image = Path(e["cwd"]).parent.name
            last[image] = e["t"]
    return {k: last[k] - first[k] for k in first if k in last}


def one_run(dataset: Path, tmp: Path, *, app: Path, nprocs: int, app_args) -> dict:
    out, work = tmp / "out", tmp / "work"
    args = [str(dataset), str(out), "participant", "-w", str(work), "--nprocs", str(nprocs),
            *app_args]
    run = run_app(args, app=app, timeline=tmp / "timeline.jsonl")
    if run["rc"] != 0:
        raise SystemExit(f"run failed ({run['rc']}): {run['output'][-3000:]}")
    run["participants"] = per_participant(run["events"])
    run["stages"] = {prefix: sum(sidecar.get("timings", {}).values())
                     for prefix, sidecar in sidecars(out).items()}
    run["predictions"] = predictions(out)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=HEADS)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--app", type=Path, default=default_app())
    parser.add_argument("--app-args", default="")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    n = len([p for p in args.dataset.glob("sub-*") if p.is_dir()])
    print(f"app: {args.app}; {args.dataset} ({n} participants); --nprocs {args.nprocs}; "
          f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M')}")
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
            runs.append(one_run(args.dataset, Path(tmp), app=args.app, nprocs=args.nprocs,
                                app_args=shlex.split(args.app_args)))
        r = runs[-1]
        walls = sorted(r["participants"].values())
        print(f"run {i + 1}: {r['wall']:.1f} s wall, {n / r['wall'] * 3600:.0f} participants/h,"
              f" peak {r['peak_rss_gb']:.2f} GB RSS ({r['peak_pss_gb']:.2f} GB PSS), load avg "
              f"{r['load'][0]:.1f} before, {r['load'][1]:.1f} after")
        print(f"  per participant (first step to outputs written): median "
              f"{statistics.median(walls):.1f} s, min {walls[0]:.1f}, max {walls[-1]:.1f}")
        print(f"  per participant, sum of stages: median "
              f"{statistics.median(r['stages'].values()):.1f} s")
        for image, seconds in sorted(r["participants"].items()):
            print(f"    {image:<10} {seconds:6.1f} s")
    if args.runs > 1:
        wall = statistics.median(r["wall"] for r in runs)
        print(f"median of {args.runs}: {wall:.1f} s, {n / wall * 3600:.0f} participants/h")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "output"}
                                         for r in runs], indent=1))


if __name__ == "__main__":
    main()
