"""The model table: repeated nested cross-validation on the pool and validation on ds000011.

Re-runs the training procedure (``bids_brainage-train``: nested CV, the fit on every image,
the external validation) from participant-level derivatives into a scratch model directory
and prints the table the cards and docs carry. Nothing is fitted or chosen on ds000011.

    python benchmarks/accuracy.py --derivatives POOL_DERIVS --external-derivatives DS11_DERIVS
    python benchmarks/accuracy.py --from-cards bids_brainage/data/models   (print a directory's)

Without derivatives the pool and ds000011 are preprocessed first (about 25 min on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POOL = ROOT.parent / "shared" / "data" / "ixi-hh-2mm"
EXTERNAL = ROOT.parent / "shared" / "data" / "ds000011-heads"
SEED_ROWS = ROOT.parent / "shared" / "data" / "seed-histograms" / "rep2.json"


def table(model_dir: Path) -> str:
    cards = json.loads((model_dir / "models.json").read_text())["models"]
    lines = ["| model | default | nested-CV MAE (sd over repeats) | r | R² | 90 % coverage | "
             "mean half-width | ds000011 MAE | ds000011 mean gap |",
             "|---|---|---|---|---|---|---|---|---|"]
    for card in cards:
        v = card["validation"].get("nested_cv") or card["validation"].get("cv", {})
        ext = card.get("external", {})
        sd = f" ({v['mae_sd']:.2f})" if "mae_sd" in v else " (one CV)"
        lines.append(
            f"| {card['name']} | {'yes' if card.get('default') else 'no'} | "
            f"{v.get('mae', float('nan')):.2f}{sd} | {v.get('r', float('nan')):.3f} | "
            f"{v.get('r2', float('nan')):.3f} | {v.get('coverage', float('nan')):.3f} | "
            f"±{v.get('mean_halfwidth', float('nan')):.1f} | "
            f"{ext.get('mae', float('nan')):.2f} | {ext.get('mean_gap', float('nan')):+.2f} |")
    ensemble = next((c for c in cards if c["name"] == "ensemble"), None)
    if ensemble:
        decades = ensemble["validation"]["nested_cv"].get("coverage_by_decade", {})
        lines.append("")
        lines.append("ensemble interval by decade of age (nested CV): " + "; ".join(
            f"{k}: {d['coverage']:.0%} ±{d['mean_halfwidth']:.1f} (n={d['n']})"
            for k, d in decades.items()))
        rel = ensemble.get("reliability", {}).get("pool_held_out_rates", {})
        if rel:
            lines.append(f"held-out pool images flagged: {rel}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--derivatives", type=Path, default=None)
    p.add_argument("--external-derivatives", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None, help="work folder (kept: inputs cache)")
    p.add_argument("--models", default="rf,morph,tissue,rf_sites")
    p.add_argument("--defaults", default="tissue,rf_sites")
    p.add_argument("--seed-rows", type=Path, default=SEED_ROWS,
                   help="rf_sites's other-site rows (the bundled models': rep2.json)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--robustness", type=int, default=0)
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--no-recalibration", action="store_true",
                   help="the same procedure without recalibration lines (raw outputs)")
    p.add_argument("--contrast-copies", type=float, nargs=2, default=None,
                   metavar=("LOW", "HIGH"),
                   help="the training command's contrast copies (docs/models.md)")
    p.add_argument("--contrast-copy-derivatives", type=Path, default=None,
                   help="the copies' derivatives from an earlier run (else preprocessed)")
    p.add_argument("--from-cards", type=Path, default=None,
                   help="print the table of an existing model directory and stop")
    args = p.parse_args(argv)
    if args.from_cards:
        print(table(args.from_cards))
        return 0
    from bids_brainage.cli.train import main as train

    work = args.work or Path(tempfile.mkdtemp(prefix="bids_brainage_accuracy_"))
    out = work / "models"
    argv = [str(POOL), str(out), "-w", str(work), "--models", args.models, "--defaults",
            args.defaults, "--repeats", str(args.repeats), "--external", str(EXTERNAL),
            "--nprocs", str(args.nprocs), "--robustness", str(args.robustness),
            "--reference-masks", str(POOL / "derivatives" / "dlmuse"),
            "--seed-rows", str(args.seed_rows)]
    if args.derivatives:
        argv += ["--derivatives", str(args.derivatives)]
    if args.external_derivatives:
        argv += ["--external-derivatives", str(args.external_derivatives)]
    if args.no_recalibration:
        argv += ["--no-recalibration"]
    if args.contrast_copies:
        argv += ["--contrast-copies", *map(str, args.contrast_copies)]
    if args.contrast_copy_derivatives:
        argv += ["--contrast-copy-derivatives", str(args.contrast_copy_derivatives)]
    code = train(argv)
    if code == 0:
        print(table(out))
    return code


if __name__ == "__main__":
    sys.exit(main())
