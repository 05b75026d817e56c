"""``bids_brainage-train BIDS_DIR MODEL_DIR``: train the models from a labelled BIDS dataset.

The parser and the entry point; the work is ``bids_brainage.training.train.run``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from bids_brainage.training.splits import DEFAULT_SEED
from bids_brainage.training.train import FOREST_INPUTS


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bids_brainage-train",
        description="Train brain-age models on a BIDS dataset whose participants.tsv has ages.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("bids_dir", type=Path)
    p.add_argument("model_dir", type=Path, help="where weights and models.json are written")
    p.add_argument("--derivatives", type=Path, default=None,
                   help="reuse participant-level outputs of bids_brainage (else preprocess "
                        "into WORK_DIR/derivatives)")
    p.add_argument("-w", "--work-dir", type=Path, default=None)
    p.add_argument("--models", default="rf,morph,tissue",
                   help="comma-separated: rf, rf_sites (needs --seed-rows), morph, tissue, "
                        "resnet34 (or resnet10/18/50 via --resnet-depth)")
    p.add_argument("--seed-rows", type=Path, default=None, metavar="JSON",
                   help="the original project's GMM histograms of 21 sites "
                        "(seed-histograms/rep2.json): training rows of the rf_sites forest "
                        "(other sites' rows always; IXI rows only of training participants, "
                        "in their folds)")
    p.add_argument("--defaults", default="rf,tissue",
                   help="the models the app runs by default and the ensemble combines (the "
                        "robustness gate may remove some; the ResNet is never a default)")
    p.add_argument("--random-seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--folds", type=int, default=5,
                   help="folds of the outer and the inner cross-validation")
    p.add_argument("--repeats", type=int, default=5,
                   help="repeats of the nested cross-validation (the figures' spread)")
    p.add_argument("--external", type=Path, default=None,
                   help="a labelled BIDS dataset from another site: the final models are "
                        "reported on it (never fitted or chosen on it)")
    p.add_argument("--external-derivatives", type=Path, default=None,
                   help="its participant-level derivatives (else preprocessed into WORK_DIR)")
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--participant-label", nargs="+", default=None,
                   help="train on these participants only (e.g. a quick subset)")
    p.add_argument("--exclude-label", nargs="+", default=(),
                   help="participants never used (e.g. an example dataset's)")
    p.add_argument("--rf-trees", type=int, default=500)
    p.add_argument("--rf-normalization", choices=tuple(FOREST_INPUTS), default="logquantile",
                   help="forest input: the histogram of log intensities with the brain's 10th "
                        "and 90th percentiles at 0 and 1, plus tissue fractions (the same for "
                        "any scale or gamma change); the same with the CSF and WM classes at 0 "
                        "and 1 (loggmm); or the original project's histogram of GMM-normalised "
                        "intensities (WM = 1), which moves >10 years under a gamma change")
    p.add_argument("--resnet-depth", type=int, default=34)
    p.add_argument("--resnet-width", type=int, default=16)
    p.add_argument("--resnet-epochs", type=int, default=40)
    p.add_argument("--resnet-batch-size", type=int, default=8)
    p.add_argument("--resnet-lr", type=float, default=1e-3)
    p.add_argument("--resnet-downsample", type=int, default=2,
                   help="block-average the 2 mm input by this factor (2: 4 mm voxels)")
    p.add_argument("--resnet-normalization", choices=("gmm", "rank", "quantile"),
                   default="gmm",
                   help="ResNet input: GMM-normalised (WM = 1); rank-normalised (each voxel's "
                        "percentile in the brain: the same for any contrast change); or "
                        "quantile (those percentiles mapped onto the training split's mean "
                        "GMM-normalised quantiles: contrast-free, looks like gmm)")
    p.add_argument("--resnet-flip-average", action="store_true",
                   help="predict as the mean over the brain and its mirror image")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="ResNet: no random flips and shifts while training")
    p.add_argument("--copies", type=int, default=0, metavar="N",
                   help="add N domain-randomised copies of every training image (random "
                        "grey/white contrast, a tight strip half the time, Rician noise; "
                        "same age) to the training rows of the forest and ridge models; "
                        "copies are never scored, and penalties are then chosen by folds of "
                        "participants (see training/augment.py). Default 0, as the bundled "
                        "models: one copy cost 0.2 y of nested-CV MAE and did not make the "
                        "app's robustness variants move less (docs/models.md)")
    p.add_argument("--contrast-copies", type=float, nargs=2, default=None,
                   metavar=("LOW", "HIGH"),
                   help="add one copy of every training image with its grey/white contrast "
                        "times U(LOW, HIGH), made on the raw head (the reference mask's class "
                        "means; --reference-masks, else the pipeline's masks) and run "
                        "through the participant pipeline, to the training rows of "
                        "--contrast-copy-models; never scored (training/raw_copies.py)")
    p.add_argument("--contrast-copy-models", default="tissue",
                   help="the forest or ridge models that train on the contrast copies")
    p.add_argument("--contrast-copy-derivatives", type=Path, default=None,
                   help="the copies' participant-level derivatives from an earlier run with "
                        "the same images, seed and range (else preprocessed into "
                        "WORK_DIR/contrast_copies/derivatives); refused (exit 2) when the "
                        "contrast_copies.tsv kept there names other factors")
    p.add_argument("--no-recalibration", dest="recalibrate", action="store_false",
                   help="report every model's raw output: no recalibration line (age on "
                        "out-of-fold prediction) is fitted, and the cards have none. The "
                        "bundled models have lines: they took the ensemble's nested-CV MAE "
                        "from 5.48 to 5.28 (docs/models.md)")
    p.add_argument("--robustness", type=int, default=0, metavar="N",
                   help="fit the default models without N participants and run those "
                        "participants' images changed as datasets change them (stripped "
                        "tightly, loosely or by an atlas, 1 mm, already in MNI, 1.5 T-like "
                        "contrast, anisotropic, noise, gamma, x10, bias) through the app; "
                        "models whose mean change reaches 2 years leave the defaults")
    p.add_argument("--reference-masks", type=Path, default=None,
                   help="derivatives holding sub-*/anat/*_desc-brain_mask.nii.gz for the "
                        "skull-stripped variant (default: the pipeline's own masks)")
    p.add_argument("--skip-bids-validation", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose == 0 else logging.DEBUG,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from bids_brainage.config import OFFLINE_ENVIRONMENT

    os.environ.update(OFFLINE_ENVIRONMENT)  # no update checks, before nipype is imported
    from bids_brainage.training.train import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
