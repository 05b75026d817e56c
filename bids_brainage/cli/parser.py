"""Command-line parser: BIDS-Apps positionals plus fMRIPrep/MRIQC-style option groups.

Kept free of heavy imports so that ``--help`` and ``--version`` answer at once.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from bids_brainage import __version__

NORMALIZATIONS = ("gmm", "zscore", "whitestripe", "fcm", "twopoint")
SKULL_STRIP = ("auto", "deepbet", "restrip", "none")
REGISTRATIONS = ("affine", "syn")
MODEL_CHOICES = ("rf", "resnet34", "morph", "ensemble", "all")
BIAS_FITS = ("model", "cohort")


def _label(value: str) -> str:
    """Accept ``sub-01`` and ``01`` alike (BIDS-Apps convention)."""
    value = value.strip()
    for prefix in ("sub-", "ses-"):
        if value.startswith(prefix):
            value = value[len(prefix):]
    # ASCII letters and digits only (BIDS): also refuses "../x", "a/b" and "Müller"
    if not value or not (value.isascii() and value.isalnum()):
        raise argparse.ArgumentTypeError(f"invalid label {value!r}: BIDS labels are letters "
                                         "and digits (A-Z, a-z, 0-9)")
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def _models(value: str) -> list[str]:
    names = [v.strip() for v in value.replace(",", " ").split() if v.strip()]
    return names


def get_parser() -> argparse.ArgumentParser:
    """Build the parser; ``bids_brainage --help`` prints it."""
    parser = argparse.ArgumentParser(
        prog="bids_brainage",
        description=(
            "Predict brain age from T1-weighted MRI in a BIDS dataset. "
            "participant level preprocesses each T1w image and predicts its age; "
            "group level collects the predictions and reports cohort metrics."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the root folder of a BIDS dataset (read only)")
    parser.add_argument(
        "output_dir", type=Path,
        help="where derivatives are written; must not be bids_dir or inside it",
    )
    parser.add_argument(
        "analysis_level", help="processing stage: participant or group",
    )
    parser.add_argument("--version", action="version", version=f"bids_brainage {__version__}")

    sel = parser.add_argument_group("Selecting data")
    sel.add_argument(
        "--participant-label", "--participant_label", dest="participant_label", nargs="+",
        type=_label, metavar="LABEL",
        help="participants to analyse (with or without 'sub-'); default: all",
    )
    sel.add_argument(
        "--session-label", "--session_label", dest="session_label", nargs="+", type=_label,
        metavar="LABEL", help="sessions to analyse (with or without 'ses-'); default: all",
    )
    sel.add_argument(
        "--skip-bids-validation", "--skip_bids_validation", dest="skip_bids_validation",
        action="store_true", help="do not run the BIDS validator on the input",
    )

    perf = parser.add_argument_group("Performance")
    perf.add_argument(
        "--nprocs", "--n_cpus", "--n-cpus", dest="nprocs", type=_positive_int,
        default=os.cpu_count() or 1, help="processes nipype may run at once",
    )
    perf.add_argument(
        "--omp-nthreads", "--omp_nthreads", dest="omp_nthreads", type=_positive_int,
        default=None, help="threads per process (torch, ITK); default: nprocs, at most 8",
    )
    perf.add_argument(
        "-w", "--work-dir", "--work_dir", dest="work_dir", type=Path, default=None,
        help="intermediate results; a rerun with the same folder redoes only what changed "
        "(default: output_dir/../bids_brainage_work)",
    )

    proc = parser.add_argument_group("Processing")
    proc.add_argument(
        "--normalization", choices=NORMALIZATIONS, default="gmm",
        help="intensity normalisation of the written MNI-space image and its histogram "
        "(each model always receives the normalisation it was trained with)",
    )
    proc.add_argument(
        "--skull-strip", "--skull_strip", dest="skull_strip", choices=SKULL_STRIP,
        default="auto",
        help="deepbet: always strip; restrip: the input is already skull-stripped, deepbet "
        "strips it again inside its non-zero voxels (a loose strip loses its dura, a tight "
        "one keeps what it has); none: the input is already skull-stripped, mask = its "
        "non-zero voxels; auto (default): restrip when the image looks skull-stripped "
        "(non-zero volume < 2.5 l), else deepbet",
    )
    proc.add_argument(
        "--registration", choices=REGISTRATIONS, default="affine",
        help="registration to MNI152NLin2009aSym: affine (fast) or syn (adds a "
        "non-linear warp)",
    )

    mod = parser.add_argument_group("Models")
    mod.add_argument(
        "--models", type=_models, default=None, metavar="NAME[,NAME]",
        help="models to predict with, by name from the model card (e.g. rf, resnet34, "
        "ensemble); default: all in the card",
    )
    mod.add_argument(
        "--model-dir", "--model_dir", dest="model_dir", type=Path, default=None,
        help="a model directory made by bids_brainage-train (its models.json and weights "
        "are verified before use); default: the bundled models",
    )

    grp = parser.add_argument_group("Group level")
    grp.add_argument(
        "--bias-fit", "--bias_fit", dest="bias_fit", choices=BIAS_FITS, default="model",
        help="age-bias correction of the brain-age gap: coefficients from the model card, "
        "or refitted on this cohort (reported loudly: it removes real effects too)",
    )
    grp.add_argument(
        "--controls", dest="controls", metavar="COLUMN=VALUE", nargs="+", default=(),
        help="with --bias-fit cohort: fit the correction on the participants whose "
        "participants.tsv COLUMN equals VALUE (e.g. group=control); every participant is "
        "corrected",
    )
    grp.add_argument(
        "--site-column", dest="site_column", default="auto", metavar="COLUMN",
        help="with --bias-fit cohort: fit each site separately on this participants.tsv "
        "column (auto: 'site' or 'scanner' when present; none: one fit for all); a site "
        "needs 8 controls with an age (offset) or 20 (line), else it is refused",
    )
    grp.add_argument(
        "--allow-model-mismatch", dest="allow_model_mismatch", action="store_true",
        help="warn instead of refusing when participants were predicted with other model "
        "cards than the ones this group run would apply (--model-dir)",
    )

    other = parser.add_argument_group("Other")
    other.add_argument(
        "-v", "--verbose", dest="verbose", action="count", default=0,
        help="more log messages (-vv for debug)",
    )
    other.add_argument(
        "--no-report", dest="reports", action="store_false",
        help="skip the HTML reports",
    )
    return parser
