"""How far each model's prediction moves when a dataset changes the same brain.

    python benchmarks/robustness.py [--n 6] [--model-dir DIR] [--pool ../shared/data/ixi-hh-2mm]

Takes the first N validation participants named in the model card, makes the variants of
``bids_brainage.models.robustness`` (skull-stripped with the DLMUSE reference mask, 1 mm,
gamma 0.8 / 1.25, ×10, bias field), runs the participant pipeline on them with every model
(``--skull-strip auto``, as users run it), and prints the mean |change| in years per model and
variant. Writes the table as JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

from bids_brainage.cli.run import main as app
from bids_brainage.models.registry import load_cards
from bids_brainage.models.robustness import VARIANTS, prediction_changes, write_variant_dataset

ROOT = Path(__file__).resolve().parent.parent


def run(pool: Path, labels: list[str], model_dir, work: Path, nprocs: int) -> dict:
    images = {}
    for label in labels:
        sub = f"sub-{label}"
        mask = pool / "derivatives" / "dlmuse" / sub / "anat" / f"{sub}_desc-brain_mask.nii.gz"
        images[label] = (pool / sub / "anat" / f"{sub}_T1w.nii.gz", mask if mask.exists() else None)
    data = write_variant_dataset(images, work / "data")
    out = work / "out"
    argv = [str(data), str(out), "participant", "-w", str(work / "work"), "--nprocs",
            str(nprocs), "--skip-bids-validation", "--no-report", "--models", "all"]
    if model_dir:
        argv += ["--model-dir", str(model_dir)]
    code = app(argv)
    predictions = {}
    for tsv in out.glob("sub-*/anat/*_brainage.tsv"):
        with tsv.open() as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                if row["status"] == "ok":
                    predictions.setdefault(row["participant_id"], {})[row["model"]] = float(
                        row["predicted_age"])
    return {"exit_code": code, "labels": labels, "predictions": predictions,
            "changes": prediction_changes(predictions, labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--pool", type=Path, default=ROOT.parent / "shared/data/ixi-hh-2mm")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cards = load_cards(args.model_dir)
    val = next(c["training"]["val_participants"] for c in cards.values() if "training" in c)
    labels = [pid.removeprefix("sub-") for pid in val[: args.n]]
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.pool, labels, args.model_dir, Path(tmp), args.nprocs)
    print(f"validation participants: {', '.join(labels)} (exit code {result['exit_code']})")
    variants = [v for v in VARIANTS if v != "orig"]
    print(f"{'model':<10}" + "".join(f"{v:>9}" for v in variants) + "   (mean |change|, years)")
    for model, changes in sorted(result["changes"].items()):
        print(f"{model:<10}" + "".join(f"{changes.get(v, float('nan')):9.2f}" for v in variants))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
