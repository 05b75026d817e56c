"""How far each model's prediction moves when a dataset changes the same brain.

    python benchmarks/robustness.py --from-cards [--model-dir DIR]
    python benchmarks/robustness.py [--n 6 | --participants IXI202,...] [--variants tight,...]
                                    [--model-dir DIR] [--pool ../shared/data/ixi-hh-2mm]
                                    [--keep OUT] [--json FILE]

``--from-cards`` prints the robustness gate's table that training wrote into each card (mean
|change| and the worst image, in years, over participants the gate's models were fitted
without; the training command's ``--robustness N``).

Otherwise it measures the app as it is: N pool participants spread over the ages (or those
named), the variants of ``bids_brainage.training.robustness`` made from each (the DLMUSE
reference masks for the stripped ones; ``atlas`` and ``mni1mm`` need the pipeline's affine and
are left out here), the participant level run on them with every model (``--models all``,
``--skip-bids-validation --no-report``), and per model and variant the mean |change| of the
predicted age from the original image's (worst image in brackets), then per variant how many
images a reliability reason other than ``age_outside_training`` flagged, and the ensemble's
mean |change| on flagged against unflagged images. The bundled models are fitted on every pool
participant, so these participants are in-sample: the figures say how the app responds to a
change, the card's gate says how models that never saw them do. 48 images (6 participants,
8 variants) take about 10 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bids_brainage.bids.participants import participant_age, read_participants
from bids_brainage.models.registry import load_cards, model_dir_or_default
from bids_brainage.training.robustness import (NEEDS_AFFINE, VARIANTS, pick_spread,
                                               prediction_changes, run_variants)

ROOT = Path(__file__).resolve().parent.parent
IGNORED_REASONS = ("ok", "age_outside_training")


def print_table(mean: dict, worst: dict, variants) -> None:
    print(f"{'model':<10}" + "".join(f"{v:>14}" for v in variants)
          + "   (mean |change| (worst), years)")
    for model in sorted(mean):
        cells = [f"{mean[model][v]:.2f} ({worst.get(model, {}).get(v, float('nan')):.1f})"
                 if v in mean[model] else "n/a" for v in variants]
        print(f"{model:<10}" + "".join(f"{c:>14}" for c in cells))


def from_cards(cards: dict) -> None:
    gates = {name: card["robustness"] for name, card in cards.items()
             if (card.get("robustness") or {}).get("mean_abs_change_years")}
    if not gates:
        print("no card carries a robustness table (trained without --robustness)")
        return
    first = next(iter(gates.values()))
    print(f"the gate's participants (models fitted without them): "
          f"{', '.join(first.get('participants', []))}")
    print_table({n: g["mean_abs_change_years"] for n, g in gates.items()},
                {n: g.get("worst_abs_change_years", {}) for n, g in gates.items()},
                list(first["mean_abs_change_years"]))


def pool_images(pool: Path, labels) -> dict[str, tuple]:
    images = {}
    for label in labels:
        pid = f"sub-{label}"
        t1w = sorted((pool / pid).rglob(f"{pid}*_T1w.nii*"))
        if not t1w:
            raise SystemExit(f"{pool / pid}: no T1w image")
        mask = pool / "derivatives" / "dlmuse" / pid / "anat" / f"{pid}_desc-brain_mask.nii.gz"
        images[label] = (t1w[0], mask if mask.exists() else None)
    return images


def spread_labels(pool: Path, n: int) -> list[str]:
    rows = read_participants(pool)
    with_images = [(pid, participant_age(row)) for pid, row in sorted(rows.items())
                   if participant_age(row) is not None and (pool / pid).is_dir()]
    chosen = pick_spread([age for _, age in with_images], n)
    return [with_images[i][0].removeprefix("sub-") for i in chosen]


def flag_summary(rows, labels, variants, model: str = "ensemble") -> dict:
    """Per variant, the images flagged for a reason other than the age range, and how often
    each reason fired (the originals' too: a reason that fires unchanged is the brain's, not
    the variant's); the ``model``'s mean |change| on flagged against unflagged variant images."""
    from collections import Counter

    counts, by_reason, flagged, unflagged = {}, {}, [], []
    for variant in ["orig", *variants]:
        found = (rows.get(f"sub-{label}{variant}", {}).get(model) for label in labels)
        by_reason[variant] = Counter(r for row in found if row for r in row["flag"].split(";")
                                     if r not in (*IGNORED_REASONS, "ok"))
    for variant in variants:
        counts[variant] = 0
        for label in labels:
            new, base = (rows.get(f"sub-{label}{v}", {}).get(model) for v in (variant, "orig"))
            if new is None or base is None:
                continue
            reasons = [r for r in new["flag"].split(";") if r not in IGNORED_REASONS]
            change = abs(float(new["predicted_age"]) - float(base["predicted_age"]))
            (flagged if reasons else unflagged).append(change)
            counts[variant] += bool(reasons)
    mean = (lambda x: round(float(np.mean(x)), 2) if x else None)
    return {"flagged_per_variant": counts, "model": model,
            "reasons_per_variant": {v: dict(sorted(c.items())) for v, c in by_reason.items()},
            "mean_change_flagged": mean(flagged), "n_flagged": len(flagged),
            "mean_change_unflagged": mean(unflagged), "n_unflagged": len(unflagged)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-cards", action="store_true")
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--participants", default=None,
                        help="comma-separated pool labels (without sub-) instead of --n")
    parser.add_argument("--variants", default=None,
                        help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--pool", type=Path, default=ROOT.parent / "shared/data/ixi-hh-2mm")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the outputs here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cards = load_cards(args.model_dir)
    if args.from_cards:
        from_cards(cards)
        return
    labels = (args.participants.split(",") if args.participants
              else spread_labels(args.pool, args.n))
    wanted = args.variants.split(",") if args.variants else [
        v for v in VARIANTS if v not in NEEDS_AFFINE]
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    variants = ["orig"] + [v for v in wanted if v != "orig"]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="robustness-"))
    try:
        rows = run_variants(model_dir_or_default(args.model_dir), pool_images(args.pool, labels),
                            work, args.nprocs, variants)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ages = {pid: {m: float(r["predicted_age"]) for m, r in by.items()} for pid, by in rows.items()}
    mean = prediction_changes(ages, labels, variants)
    worst = prediction_changes(ages, labels, variants, np.max)
    shown = [v for v in variants if v != "orig"]
    print(f"participants: {', '.join(labels)} (in the bundled models' fit: in-sample)")
    print_table(mean, worst, shown)
    flags = flag_summary(rows, labels, shown)
    print("flagged (a reason other than age_outside_training), images per variant: "
          + ", ".join(f"{v} {c}/{len(labels)}" for v, c in flags["flagged_per_variant"].items()))
    print("reasons per variant: " + "; ".join(
        f"{v} " + (", ".join(f"{r} {c}" for r, c in counts.items()) or "none")
        for v, counts in flags["reasons_per_variant"].items()))
    print(f"ensemble mean |change|: flagged {flags['mean_change_flagged']} "
          f"({flags['n_flagged']} images), unflagged {flags['mean_change_unflagged']} "
          f"({flags['n_unflagged']})")
    if args.json:
        args.json.write_text(json.dumps({"participants": labels, "mean": mean, "worst": worst,
                                         "flags": flags}, indent=2))


if __name__ == "__main__":
    main()
