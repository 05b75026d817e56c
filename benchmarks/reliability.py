"""How often each flag fires, the MAE of flagged against unflagged images, and the intervals'
coverage and width, on participant-level outputs of a labelled dataset.

    bids_brainage DS OUT participant            (e.g. ../shared/data/ds000011-heads)
    python benchmarks/reliability.py DS OUT [--model ensemble]

The pool's own figures (nested CV) are in the ensemble card and printed with
``--card bids_brainage/data/models``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np


def rows_of(out: Path, model: str) -> list[dict]:
    rows = []
    for tsv in sorted(out.glob("sub-*/**/*_brainage.tsv")):
        with tsv.open(newline="") as handle:
            rows += [r for r in csv.DictReader(handle, delimiter="\t")
                     if r["model"] == model and r["status"] == "ok"]
    return rows


def ages_of(bids: Path) -> dict[str, float]:
    with (bids / "participants.tsv").open(newline="") as handle:
        return {r["participant_id"]: float(r["age"]) for r in csv.DictReader(handle, delimiter="\t")
                if r.get("age") not in (None, "", "n/a")}


def summary(rows: list[dict], ages: dict[str, float]) -> dict:
    age = np.array([ages[r["participant_id"]] for r in rows])
    pred = np.array([float(r["predicted_age"]) for r in rows])
    low = np.array([float(r["interval_low"]) for r in rows])
    high = np.array([float(r["interval_high"]) for r in rows])
    flagged = np.array([r.get("flag", "ok") not in ("ok", "n/a") for r in rows])
    reasons = Counter(reason for r in rows if r.get("flag", "ok") not in ("ok", "n/a")
                      for reason in r["flag"].split(";"))

    def mae(mask):
        return round(float(np.mean(np.abs(pred[mask] - age[mask]))), 2) if mask.any() else None

    return {"n": len(rows), "mae": mae(np.ones(len(rows), bool)),
            "mean_gap": round(float(np.mean(pred - age)), 2),
            "flagged": int(flagged.sum()), "reasons": dict(reasons),
            "mae_flagged": mae(flagged), "mae_unflagged": mae(~flagged),
            "coverage": round(float(np.mean((age >= low) & (age <= high))), 3),
            "coverage_unflagged": (round(float(np.mean(((age >= low) & (age <= high))[~flagged])), 3)
                                   if (~flagged).any() else None),
            "mean_halfwidth": round(float(np.mean(high - low) / 2), 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bids_dir", type=Path, nargs="?")
    p.add_argument("output_dir", type=Path, nargs="?")
    p.add_argument("--model", default="ensemble")
    p.add_argument("--card", type=Path, default=None, help="print a model directory's "
                   "nested-CV interval and flag figures")
    args = p.parse_args(argv)
    if args.card:
        cards = {c["name"]: c for c in json.loads((args.card / "models.json").read_text())["models"]}
        ens = cards["ensemble"]
        nested = ens["validation"]["nested_cv"]
        print(json.dumps({"coverage": nested["coverage"], "mean_halfwidth": nested["mean_halfwidth"],
                          "by_decade": nested.get("coverage_by_decade"),
                          "pool_held_out_flag_rates": ens.get("reliability", {}).get(
                              "pool_held_out_rates")}, indent=2))
    if args.bids_dir and args.output_dir:
        print(json.dumps(summary(rows_of(args.output_dir, args.model), ages_of(args.bids_dir)),
                         indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
