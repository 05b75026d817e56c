"""How far each model's prediction moves when a dataset changes the same brain.

    python benchmarks/robustness.py [--n 6] [--model-dir DIR] [--pool ../shared/data/ixi-hh-2mm]

Takes the first N validation participants named in the model card, makes the variants of
``bids_brainage.training.robustness`` (skull-stripped with the DLMUSE reference mask, 1 mm,
gamma 0.8 / 1.25, ×10, bias field), runs the participant pipeline on them with every model
(``--skull-strip auto``, as users run it), and prints the mean |change| in years per model and
variant. Writes the table as JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bids_brainage.models.registry import load_cards, model_dir_or_default
from bids_brainage.training.robustness import VARIANTS, evaluate

ROOT = Path(__file__).resolve().parent.parent


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
    images = {}
    for pid in val[: args.n]:
        mask = args.pool / "derivatives" / "dlmuse" / pid / "anat" / f"{pid}_desc-brain_mask.nii.gz"
        images[pid.removeprefix("sub-")] = (args.pool / pid / "anat" / f"{pid}_T1w.nii.gz",
                                            mask if mask.exists() else None)
    with tempfile.TemporaryDirectory() as tmp:
        changes = evaluate(model_dir_or_default(args.model_dir), images, Path(tmp), args.nprocs)
    print(f"validation participants: {', '.join(images)}")
    variants = [v for v in VARIANTS if v != "orig"]
    print(f"{'model':<10}" + "".join(f"{v:>9}" for v in variants) + "   (mean |change|, years)")
    for model, by_variant in sorted(changes.items()):
        print(f"{model:<10}" + "".join(f"{by_variant.get(v, float('nan')):9.2f}"
                                       for v in variants))
    if args.json:
        args.json.write_text(json.dumps({"participants": list(images), "changes": changes},
                                        indent=2))


if __name__ == "__main__":
    main()
