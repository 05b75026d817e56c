"""The work of ``bids_brainage-train``: a labelled BIDS dataset in, a model directory out.

The command line is ``bids_brainage.cli.train``.

1. Preprocess with the participant workflow (or reuse ``--derivatives``), no prediction.
2. Build every model's input with the prediction code path (cached in the work folder).
3. Robustness (``--robustness N``): the candidate default models are fitted without N
   participants, and those participants' images, changed as other sites change them, run
   through the app; a model whose mean change reaches 2 years leaves the defaults.
4. Repeated nested cross-validation of the whole fitting procedure
   (:func:`bids_brainage.training.crossval.fit_ensemble`: members, ensemble weights,
   intervals): the figures the cards report, from outer folds no choice touched.
5. The same procedure on **every** participant: the bundled weights; ensemble weights,
   intervals and age-bias lines from its inner out-of-fold predictions.
6. External validation (``--external``): the final models on a labelled dataset from another
   site, reported in each card and never used to fit or choose anything.
7. Write the weights and ``models.json``.
"""
from __future__ import annotations

import datetime as _dt
import logging
import platform
import sys
from pathlib import Path

import numpy as np

from bids_brainage import __version__
from bids_brainage.features.morphometry import REGION_ERODE
from bids_brainage.preproc.bias import LOG_SPREAD
from bids_brainage.training.crossval import Member, fit_ensemble, nested_cv, summarise

LOG = logging.getLogger("bids_brainage.train")
# the voxels the histogram and morphometry models read: the brain inside the template brain
# eroded by 2 voxels
MODEL_REGION = {"region": "template", "erode": REGION_ERODE}
# the original project's forest: the 100-bin histogram of GMM-normalised intensities (WM = 1)
FOREST_INPUT_GMM = {"feature": "histogram", "normalization": "gmm", "bins": 100, **MODEL_REGION}
# the default forest: the histogram of log intensities with the brain's 10th and 90th
# percentiles at 0 and 1, and the three tissue fractions: the same for any scale or gamma
# change of the image; "loggmm" anchors CSF and WM instead (moved 4.6 y at 1 mm)
FOREST_INPUTS = {
    "logquantile": {"feature": "histogram+tissue", "normalization": "logquantile",
                    "bins": 100, **MODEL_REGION},
    "loggmm": {"feature": "histogram+tissue", "normalization": "loggmm", "bins": 100,
               **MODEL_REGION},
    "gmm": FOREST_INPUT_GMM,
}
FOREST_INPUT = FOREST_INPUTS["logquantile"]
MORPH_INPUT = {"feature": "morphometry", **MODEL_REGION}
# modulated and unmodulated GM and WM: together 5.61 against 5.78 for the modulated alone
# (exploration nested CV 5 x 5, docs/models.md)
TISSUE_INPUT = {"feature": "tissue", "maps": ["gm", "wm", "gm_unmodulated", "wm_unmodulated"]}
SKLEARN_MODELS = ("rf", "morph", "tissue", "rf_sites")
FORESTS = ("rf", "rf_sites")
LICENCE = ("CC BY-SA 3.0 (trained on IXI: Imperial College London, brain-development.org; "
           "resampled and labelled by NiChart, CBICA)")


def member_kind(name: str) -> str:
    """The card's ``kind`` of a scikit-learn member: the forests, or a ridge."""
    return "forest" if name in FORESTS else "ridge"


def metrics(age, predicted) -> dict:
    from bids_brainage.stats import metrics as m

    age, predicted = np.asarray(age, float), np.asarray(predicted, float)
    r = m.pearson_r(age, predicted)
    return {"n": int(age.size), "mae": round(m.mae(age, predicted), 3),
            "rmse": round(m.rmse(age, predicted), 3), "r": round(r.r, 4),
            "r2": round(m.r2(age, predicted), 4),
            "mean_gap": round(float(np.mean(predicted - age)), 3)}


def preprocess(bids_dir: Path, work_dir: Path, nprocs: int, labels=None) -> Path:
    """Participant-level preprocessing (no prediction) of a dataset into ``work_dir``."""
    from bids_brainage.cli.parser import get_parser as app_parser
    from bids_brainage.config import Settings, apply_thread_environment
    from bids_brainage.levels.participant import run_participant

    derivatives = work_dir / "derivatives"
    argv = [str(bids_dir), str(derivatives), "participant", "-w", str(work_dir / "work"),
            "--nprocs", str(nprocs), "--no-report", "--skip-bids-validation"]
    if labels:
        argv += ["--participant-label", *labels]
    settings = Settings.from_args(app_parser().parse_args(argv))
    apply_thread_environment(settings)
    run_participant(settings, predict=False)
    return derivatives


# ---------------------------------------------------------------------------------- members
def sklearn_fit(name: str, args):
    """``fit(x, y, groups)`` of a scikit-learn member; hyper-parameters are chosen inside it
    (the forest has none to choose)."""
    from bids_brainage.models.forest import train_forest, train_ridge

    if name in FORESTS:
        return lambda x, y, groups=None: train_forest(
            x, y, seed=args.random_seed, n_estimators=args.rf_trees, n_jobs=args.nprocs)
    return train_ridge


def member_input(name: str, args) -> dict:
    from bids_brainage.training.seed_rows import SITES_INPUT

    return {"rf": FOREST_INPUTS[args.rf_normalization], "morph": MORPH_INPUT,
            "tissue": TISSUE_INPUT, "rf_sites": SITES_INPUT}[name]


def sklearn_member(name: str, subjects, args, cache: Path, contrast_copies=None) -> Member:
    """A forest or ridge member: every image's input and, with ``--copies``, its copies';
    with ``contrast_copies`` (the copies' subjects and the index of the image each copies,
    ``training.raw_copies.copy_subjects``) and ``name`` in ``--contrast-copy-models``, those
    copies' inputs too; ``rf_sites`` also the seed rows of ``--seed-rows``
    (``training.seed_rows``; ``run`` refuses ``rf_sites`` without it)."""
    from bids_brainage.training.augment import augmented_spec
    from bids_brainage.training.dataset import build_inputs
    from bids_brainage.training.seed_rows import load_seed_rows

    spec = member_input(name, args)
    x = build_inputs(subjects, spec, nprocs=args.nprocs, cache_dir=cache)
    copies = copy_of = extra_x = extra_y = source = None
    if args.copies:
        copies = np.concatenate([
            build_inputs(subjects, augmented_spec(spec, i, args.random_seed),
                         nprocs=args.nprocs, cache_dir=cache) for i in range(args.copies)])
        copy_of = np.tile(np.arange(len(subjects)), args.copies)
    if contrast_copies is not None and name in contrast_copy_models(args):
        found, of = contrast_copies
        more = build_inputs(found, spec, nprocs=args.nprocs, cache_dir=cache)
        copies = more if copies is None else np.concatenate([copies, more])
        copy_of = of if copy_of is None else np.concatenate([copy_of, of])
    if name == "rf_sites":
        seed = load_seed_rows(args.seed_rows, [s.participant_id for s in subjects], spec)
        extra_x, extra_y, source = seed.x, seed.ages, seed.source
        copies = seed.own_x if copies is None else np.concatenate([copies, seed.own_x])
        copy_of = seed.own_of if copy_of is None else np.concatenate([copy_of, seed.own_of])
    return Member(name, x, sklearn_fit(name, args), copies, copy_of, extra_x, extra_y, source)


def name_list(text: str) -> list[str]:
    """A comma-separated option's names (``--models``, ``--defaults``, ...), blanks dropped."""
    return [n.strip() for n in text.split(",") if n.strip()]


def contrast_copy_models(args) -> list[str]:
    """The models that train on ``--contrast-copies`` (none without it)."""
    if not getattr(args, "contrast_copies", None):
        return []
    return name_list(args.contrast_copy_models)


def contrast_copy_rows(args, subjects, derivatives: Path, work_dir: Path):
    """``--contrast-copies``: the copies' subjects and the image each copies (made and
    preprocessed here unless ``--contrast-copy-derivatives``), or None. Reused copies that
    are not this run's (``training.raw_copies.reuse_problems``) raise ``ReusedCopiesError``."""
    if not contrast_copy_models(args):
        return None
    from bids_brainage.training.raw_copies import (ReusedCopiesError, copy_subjects,
                                                   copy_table, keep_table, reuse_problems,
                                                   write_contrast_copies)

    low, high = args.contrast_copies
    table = copy_table(subjects, args.bids_dir, args.reference_masks or derivatives, low, high,
                       args.random_seed)
    copies_derivatives = args.contrast_copy_derivatives
    if copies_derivatives is None:
        folder = work_dir / "contrast_copies"
        LOG.info("contrast copies: writing and preprocessing %d copies (contrast x U(%g, %g))",
                 len(table), low, high)
        copies_derivatives = preprocess(write_contrast_copies(table, folder / "bids"), folder,
                                        args.nprocs)
        keep_table(table, copies_derivatives)
    else:
        problems = reuse_problems(table, copies_derivatives)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ReusedCopiesError("--contrast-copy-derivatives: not the copies this run makes: "
                             + "; ".join(problems[:3]) + more)
    found, of = copy_subjects(subjects, table, copies_derivatives)
    LOG.info("contrast copies: %d of %d with complete outputs, for %s", len(found),
             len(table), contrast_copy_models(args))
    return found, of


def penalty_text(grouped: bool) -> str:
    """How ``train_ridge`` chose the penalty: by folds of participants when a participant
    has several training rows (copies or sessions), else by leave-one-out."""
    return ("penalty by 5-fold CV over participants inside the training data, each "
            "participant's images and copies in one fold" if grouped else
            "penalty by leave-one-out CV inside the training data")


ARCHITECTURES = {
    "rf": lambda args, grouped: (
        f"RandomForestRegressor({args.rf_trees} trees, max_features 0.33, min_samples_leaf 2) "
        f"on the 100-bin histogram of {HISTOGRAMS[args.rf_normalization]} inside the template "
        f"brain eroded by 2 voxels"),
    "rf_sites": lambda args, grouped: (
        f"RandomForestRegressor({args.rf_trees} trees, max_features 0.33, min_samples_leaf 2) "
        f"on the 100-bin histogram of GMM-normalised intensities (WM = 1, 0-1.5) in the "
        f"brain mask read in its log-quantile form (log intensities, 10th and 90th "
        f"percentiles at 0 and 1), trained on the pool's images and on the original "
        f"project's histogram rows of 20 other sites (FCP-1000) and of the pool's own "
        f"participants, in the same form (--seed-rows, training.seed_rows)"),
    "morph": lambda args, grouped: (
        f"standardised features, ridge ({penalty_text(grouped)}) "
        "on log-Jacobians of a SyN warp to the template and rank-normalised intensities, both "
        "at 8 mm inside the template brain eroded by 2 voxels"),
    "tissue": lambda args, grouped: (
        f"standardised features, ridge ({penalty_text(grouped)}) "
        "on grey- and white-matter fractions (unmixed between the class means of a 3-class "
        "mixture of log intensities with the template's tissue priors) warped to the "
        "template's by SyN, modulated by its Jacobian (tissue volume) and unmodulated "
        "(tissue concentration), smoothed (8 mm FWHM) at 4 mm inside the template brain"),
}
HISTOGRAMS = {"logquantile": "log intensities (10th percentile at 0, 90th at 1) and the 3 "
                             "tissue fractions",
              "loggmm": "log intensities (CSF class at 0, WM at 1) and the 3 tissue fractions",
              "gmm": "GMM-normalised intensities"}


# ------------------------------------------------------------------------------------ ResNet
def train_resnet_model(x, ages, groups, args, spec):
    """K-fold CV on every participant (one repeat, the same settings: the ResNet is not a
    default, its nested CV would cost hours), then the fit on every participant; returns the
    net, its card fragment and the out-of-fold predictions."""
    from bids_brainage.models import resnet3d
    from bids_brainage.training.crossval import group_folds

    def fit(rows):
        return resnet3d.train_resnet(
            x[rows], ages[rows], depth=args.resnet_depth, width=args.resnet_width,
            epochs=args.resnet_epochs, batch_size=args.resnet_batch_size, lr=args.resnet_lr,
            seed=args.random_seed, augment=resnet_augment(args), threads=args.nprocs,
            val_every=10, progress=True)

    oof = np.full(len(ages), np.nan)
    folds = group_folds(ages, groups, args.folds, args.random_seed)
    for k, held in enumerate(folds, 1):
        LOG.info("ResNet cross-validation: fold %d of %d (%d held out)", k, len(folds),
                 held.size)
        net, history = fit(np.setdiff1d(np.arange(len(ages)), held))
        oof[held] = resnet3d.predict_batch(net, x[held], history["target_mean"],
                                           history["target_std"])
    LOG.info("ResNet: fitting on every participant")
    net, history = fit(np.arange(len(ages)))
    card = resnet3d.resnet_card(
        f"resnet{args.resnet_depth}", args.resnet_depth, args.resnet_width,
        spec, history["target_mean"], history["target_std"],
        flip_average=args.resnet_flip_average,
    )
    card["training_params"] = history["params"]
    return net, card, oof


def resnet_augment(args) -> dict:
    """The default augmentation; for rank input without gamma and global scale, which
    cannot change a rank-normalised image."""
    from bids_brainage.models import resnet3d

    if not args.augment:
        return {}
    if args.resnet_normalization in ("rank", "quantile"):
        return {k: v for k, v in resnet3d.DEFAULT_AUGMENT.items()
                if k not in ("gamma", "intensity")}
    return dict(resnet3d.DEFAULT_AUGMENT)


def resnet_spec(args, subjects, cache_dir=None) -> dict:
    """The ResNet's input spec; for ``quantile`` with the reference quantiles: the mean of
    every training brain's GMM-normalised quantiles (in the model region)."""
    from bids_brainage.models import resnet3d
    from bids_brainage.training.dataset import build_inputs

    spec = resnet3d.image_spec(downsample=args.resnet_downsample)
    if args.resnet_normalization in ("rank", "quantile"):
        spec.update(normalization=args.resnet_normalization, **MODEL_REGION)
    if args.resnet_normalization == "quantile":
        quantiles = build_inputs(subjects, {"feature": "quantiles", "normalization": "gmm",
                                            **MODEL_REGION}, nprocs=args.nprocs,
                                 cache_dir=cache_dir)
        spec["reference"] = [round(float(q), 5) for q in quantiles.mean(axis=0)]
    return spec


# -------------------------------------------------------------------------------- the cards
def _versions() -> dict:
    import sklearn

    out = {"bids_brainage": __version__, "python": platform.python_version(),
           "numpy": np.__version__, "scikit-learn": sklearn.__version__}
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def calibration(predicted_oof, ages, source: str, spread=None) -> dict:
    """The card's ``interval`` and ``bias_correction`` from out-of-fold predictions (and, for
    an ensemble, its members' spread on them)."""
    from bids_brainage.stats.intervals import calibrate_interval
    from bids_brainage.stats.metrics import fit_age_bias

    slope, intercept = fit_age_bias(ages, predicted_oof)
    interval = calibrate_interval(predicted_oof, ages, spread)
    interval["fitted_on"] = f"{source} (n={len(ages)})"
    return {"interval": interval,
            "bias_correction": {"slope": round(slope, 5), "intercept": round(intercept, 4),
                                "fitted_on": f"{source} predictions (n={len(ages)})"}}


def recalibration_card(final, name: str, source: str) -> dict:
    """The card's ``recalibration``: the model's line (``stats.metrics.fit_recalibration``),
    which ``predict`` applies to its raw output; nothing with ``--no-recalibration``."""
    if final.lines[name] is None:
        return {}
    return {"recalibration": {**final.lines[name],
                              "about": "reported age = intercept + slope x raw output",
                              "fitted_on": f"{source} (n={len(final.ages)})"}}


def training_card(subjects, ages, args, excluded) -> dict:
    return {
        "dataset": str(args.bids_dir.name), "n": int(len(ages)),
        "n_participants": len({s.participant_id for s in subjects}),
        "fitted_on": "every labelled participant",
        "age_min": round(float(ages.min()), 2), "age_max": round(float(ages.max()), 2),
        "sites": sorted({s.site for s in subjects}), "seed": args.random_seed,
        "excluded_participants": sorted(excluded),
        **({"augmentation": augmentation_card(args)} if args.copies else {}),
    }


def augmentation_card(args) -> dict:
    from bids_brainage.training.augment import SCHEME

    return {"copies_per_image": args.copies, "models": sorted(SKLEARN_MODELS), **SCHEME,
            "about": "domain-randomised copies of each image on the 2 mm MNI grid: grey/white "
                     "contrast times U(contrast), a tight strip (mask and above the CSF/GM "
                     "midpoint) with probability `tight`, Rician noise of sd U(noise) x WM "
                     "mean; same age; training rows only (never scored), the participant's "
                     "fold in every CV"}


def contrast_copy_card(args, contrast_copies) -> dict:
    low, high = args.contrast_copies
    return {"copies": int(len(contrast_copies[1])), "contrast_factor": [low, high],
            "seed": args.random_seed,
            "about": "one copy of each image, made on the raw head: intensities above the "
                     "reference mask's GM class mean moved towards or away from it by the "
                     "factor, then the whole participant pipeline; same age; training rows "
                     "only (never scored), in their image's fold in every CV "
                     "(training/raw_copies.py)"}


def write_models(model_dir: Path, cards: list[dict]) -> Path:
    from bids_brainage.io import atomic_write_json
    from bids_brainage.models.registry import CARD_FILE, sha256sum

    for card in cards:
        if card.get("file"):
            card["sha256"] = sha256sum(model_dir / card["file"])
    return atomic_write_json(model_dir / CARD_FILE, {"schema_version": 2, "models": cards})


def save_member(name: str, model, model_dir: Path) -> str:
    from bids_brainage.models.forest import save_forest

    save_forest(model, model_dir / f"{name}.joblib")
    return f"{name}.joblib"


PREPROCESSING = ("conform RAS; deepbet; largest component; "
                 f"N4 (log-spread {LOG_SPREAD}, fit on ~8 mm); antspyx affine to "
                 "MNI152NLin2009aSym at 2 mm")


def tissue_maps_text(spec: dict) -> str:
    """Which warped maps a tissue input reads, in words.

    >>> tissue_maps_text({"feature": "tissue"})
    'Jacobian-modulated GM and WM'
    >>> tissue_maps_text(TISSUE_INPUT)
    'Jacobian-modulated and unmodulated GM and WM'
    >>> tissue_maps_text({"feature": "tissue", "maps": ["gm", "csf_unmodulated", "wm"]})
    'Jacobian-modulated and unmodulated GM, WM and CSF'
    """
    from bids_brainage.features.tissue import feature_maps

    maps = feature_maps(spec)
    names = [t for t in ("gm", "wm", "csf") if t in maps or f"{t}_unmodulated" in maps]
    tissues = " and ".join([", ".join(n.upper() for n in names[:-1]), names[-1].upper()]
                           if len(names) > 1 else [names[0].upper()])
    modulated = any(not m.endswith("_unmodulated") for m in maps)
    unmodulated = any(m.endswith("_unmodulated") for m in maps)
    kind = ("Jacobian-modulated and unmodulated" if modulated and unmodulated
            else "unmodulated" if unmodulated else "Jacobian-modulated")
    return f"{kind} {tissues}"


def preprocessing(spec: dict) -> str:
    """The card's preprocessing line: the shared pipeline, then what the model's input adds.

    >>> preprocessing({"feature": "image", "normalization": "quantile"}).split("; ")[-1]
    'rank-normalised, mapped onto the reference quantiles'
    """
    feature, norm = spec.get("feature", "histogram"), spec.get("normalization", "gmm")
    if feature == "morphometry":
        last = "rank-normalised; SyN to the rank-normalised template (log-Jacobians)"
    elif feature == "tissue":
        last = ("GM/WM/CSF fractions (mixture with template priors, linear unmixing); SyN of "
                "the tissue maps to the template's; " + tissue_maps_text(spec))
    elif norm == "quantile":
        last = "rank-normalised, mapped onto the reference quantiles"
    elif norm == "rank":
        last = "rank-normalised"
    elif spec.get("form") == "logquantile":
        last = ("GMM normalisation (WM = 1), its histogram in log-quantile form (log "
                "intensities, 10th percentile = 0, 90th = 1)")
    elif norm == "loggmm":
        last = "log intensities, 3-class GMM (CSF = 0, WM = 1)"
    elif norm == "logquantile":
        last = "log intensities (10th percentile = 0, 90th = 1)"
    else:
        last = f"{norm} normalisation"
    return f"{PREPROCESSING}; {last}"


# --------------------------------------------------------------------------------------- run
def load_subjects(args, derivatives: Path, excluded=()):
    from bids_brainage.bids.participants import read_participants
    from bids_brainage.training.dataset import find_subjects

    participants = read_participants(args.bids_dir)
    subjects = [s for s in find_subjects(derivatives, participants)
                if s.participant_id not in excluded]
    if args.participant_label:
        keep = {f"sub-{x.removeprefix('sub-')}" for x in args.participant_label}
        subjects = [s for s in subjects if s.participant_id in keep]
    return subjects


def run(args) -> int:
    names = name_list(args.models)
    unknown = [n for n in contrast_copy_models(args) if n not in names or n not in SKLEARN_MODELS]
    if unknown:  # before any preprocessing
        LOG.error("--contrast-copy-models %s: not a forest or ridge model of --models %s",
                  ",".join(unknown), args.models)
        return 2
    model_dir = args.model_dir.resolve()
    model_dir.mkdir(parents=True, exist_ok=True)
    work_dir = (args.work_dir or model_dir / "work").resolve()
    cache = work_dir / "inputs"
    derivatives = args.derivatives or preprocess(args.bids_dir, work_dir, args.nprocs,
                                                 args.participant_label)
    excluded = {f"sub-{x.removeprefix('sub-')}" for x in args.exclude_label}
    subjects = load_subjects(args, derivatives, excluded)
    if len(subjects) < 10:
        LOG.error("only %d participants with an age and complete outputs; need >= 10",
                  len(subjects))
        return 1
    ages = np.array([s.age for s in subjects])
    groups = np.array([s.participant_id for s in subjects])
    defaults = [n for n in name_list(args.defaults) if n in names]
    if "rf_sites" in names and not args.seed_rows:
        LOG.error("the rf_sites model trains on other sites' histogram rows: give "
                  "--seed-rows (e.g. ../shared/data/seed-histograms/rep2.json)")
        return 2
    LOG.info("%d images of %d participants; models %s (defaults %s)", len(ages),
             len(set(groups)), names, defaults)
    from bids_brainage.training.raw_copies import ReusedCopiesError

    try:
        contrast_copies = contrast_copy_rows(args, subjects, derivatives, work_dir)
    except ReusedCopiesError as err:  # only this: another failure is not a usage error
        LOG.error("%s", err)
        return 2
    members = [sklearn_member(n, subjects, args, cache, contrast_copies)
               for n in names if n in SKLEARN_MODELS]
    common = {
        "version": __version__, "training": training_card(subjects, ages, args, excluded),
        "versions": _versions(), "date": _dt.date.today().isoformat(),
        "command": "bids_brainage-train " + " ".join(sys.argv[1:]), "licence": LICENCE,
    }
    robustness, reasons = {}, {}
    if args.robustness and defaults:
        from bids_brainage.training.robustness import gate

        robustness, reasons = gate(members, subjects, ages, groups, defaults, derivatives,
                                   args, work_dir, common)
        if len(reasons) < len(defaults):  # models that fail leave the defaults
            defaults = [n for n in defaults if n not in reasons]
        else:
            # none passes: the defaults stay as asked, and every card says how it failed (a
            # single "least sensitive" model was worse on average than the ensemble here)
            LOG.warning("no default model stays below %.1f years for every variant; the "
                        "defaults stay %s, each card carries a robustness_warning",
                        2.0, defaults)
            reasons = {n: {"warning": r} for n, r in reasons.items()}
    ensemble_members = [m for m in members if m.name in defaults]

    cards = []
    if members:
        LOG.info("repeated nested cross-validation (%d x %d folds) of %s", args.repeats,
                 args.folds, [m.name for m in members])
        # the ensemble combines the defaults only; every member is fitted and scored once
        combined = [m.name for m in ensemble_members]
        nested = nested_cv(members, ages, groups, k=args.folds, repeats=args.repeats,
                           inner_k=args.folds, seed=args.random_seed, ensemble=combined or None,
                           recalibrate=args.recalibrate)
        LOG.info("fitting every model on all %d images", len(ages))
        final = fit_ensemble(members, ages, None, groups, k=args.folds, seed=args.random_seed,
                             weights=None, ensemble=combined or None,
                             recalibrate=args.recalibrate)
        weights = final.weights
        external = external_predictions(args, final, members, work_dir)
        reliability = reliability_card(args, subjects, ages, groups, nested, cache)

        source = f"{args.folds}-fold cross-validation out-of-fold predictions on every image"
        from bids_brainage.models.forest import grouped_rows

        for member in members:
            # copies add rows of their participant: train_ridge saw grouped rows then too
            grouped = member.copies is not None or grouped_rows(groups)
            card = {"name": member.name, "kind": member_kind(member.name),
                    "file": save_member(member.name, final.models[member.name], model_dir),
                    "architecture": ARCHITECTURES[member.name](args, grouped),
                    "input": member_input(member.name, args), **common,
                    "preprocessing": preprocessing(member_input(member.name, args)),
                    "default": member.name in defaults,
                    "validation": validation_block(nested, member.name, final, args),
                    **recalibration_card(final, member.name, source),
                    **calibration(final.oof[member.name], final.ages, source)}
            if member.extra_source:  # read once, with the rows (sklearn_member)
                card["training"] = {**card["training"], "seed_rows": member.extra_source}
            if member.name in contrast_copy_models(args):
                card["training"] = {**card["training"], "contrast_copies": contrast_copy_card(
                    args, contrast_copies)}
            add_external(card, external, member.name)
            add_robustness(card, robustness, reasons)
            cards.append(card)
        ensemble = ensemble_card(weights, final, ensemble_members, nested, common, args)
        ensemble["reliability"] = reliability
        add_external(ensemble, external, "ensemble")
        add_robustness(ensemble, robustness, {})
        cards.append(ensemble)
    resnet_names = [n for n in names if n.startswith("resnet")]
    if resnet_names:
        cards.append(resnet_card(args, subjects, ages, groups, model_dir, common, cache,
                                 external_subjects(args, work_dir)))
    cards.sort(key=lambda card: card.get("kind") == "ensemble")  # the ensemble last
    path = write_models(model_dir, cards)
    log_table(cards)
    LOG.info("wrote %s", path)
    return 0


def reliability_card(args, subjects, ages, groups, nested, cache) -> dict:
    """Flag limits from the pool's held-out images (see ``models/reliability.py``)."""
    from bids_brainage.models import reliability
    from bids_brainage.training.crossval import group_folds
    from bids_brainage.training.dataset import build_inputs

    spec = FOREST_INPUTS["logquantile"]
    x = build_inputs(subjects, spec, nprocs=args.nprocs, cache_dir=cache)
    qc = build_inputs(subjects, {"feature": "qc"}, nprocs=args.nprocs, cache_dir=cache)
    contrast = build_inputs(subjects, {"feature": "contrast"}, nprocs=args.nprocs,
                            cache_dir=cache)[:, 0]
    folds = group_folds(ages, groups, args.folds, args.random_seed)
    distances = reliability.held_out_distances(x, folds)
    contrast_z = reliability.held_out_contrast_z(contrast, ages, folds)
    spread = nested["spread"]
    card = reliability.calibrate(
        spreads=None if np.all(np.isnan(spread)) else spread.ravel(), distances=distances,
        ages=ages, dice=qc[:, 0], volume_ratio=qc[:, 1],
        distance_model={**reliability.fit_distance(x), "input": spec},
        contrast=contrast, contrast_z=contrast_z)
    card["pool_held_out_rates"] = {
        "members_disagree": (None if card["members_spread_limit"] is None else
                             round(float(np.nanmean(spread > card["members_spread_limit"])), 4)),
        "unlike_training": round(float(np.mean(distances > card["distance_limit"])), 4),
        "unusual_contrast": round(float(np.mean(
            reliability.contrast_outside(contrast_z, card["contrast"]["z_range"]))), 4)}
    return card


def validation_block(nested: dict, name: str, final, args) -> dict:
    from bids_brainage.training.crossval import coverage_by_decade

    return {
        "nested_cv": {**summarise(nested, name),
                      "coverage_by_decade": coverage_by_decade(nested, name),
                      "method": f"{args.repeats} repeats of {args.folds}-fold CV by participant, "
                                f"stratified by age; inside each outer training part: every "
                                f"hyper-parameter, the {args.folds}-fold inner CV that sets "
                                f"ensemble weights, intervals and bias lines"},
        "oof_all": metrics(final.ages, final.oof[name]),
    }


def ensemble_card(weights, final, members, nested, common, args) -> dict:
    from bids_brainage.training.crossval import member_spread

    oof = final.oof["ensemble"]
    spread = member_spread({m.name: final.oof[m.name] for m in members})
    source = (f"the members' {args.folds}-fold cross-validation out-of-fold predictions on "
              f"every image, weighted")
    card = {"name": "ensemble", "kind": "ensemble", "members": weights, "intercept": 0.0,
            **recalibration_card(final, "ensemble", source),
            "default": True,
            "architecture": ("convex combination of the default models' recalibrated ages, "
                             "weights (0.05 grid) minimising the MAE of their out-of-fold "
                             "predictions, then recalibrated"
                             if len(weights) > 1 else
                             f"the single default model {next(iter(weights))}"),
            **{k: common[k] for k in ("version", "training", "versions", "date", "command",
                                      "licence")},
            "preprocessing": PREPROCESSING,
            "validation": {"nested_cv": {**summarise(nested, "ensemble"),
                                         "weights_per_outer_fold": nested["weights"]},
                           "oof_all": metrics(final.ages, oof)},
            **calibration(oof, final.ages, source, spread)}
    from bids_brainage.training.crossval import coverage_by_decade

    card["validation"]["nested_cv"]["coverage_by_decade"] = coverage_by_decade(nested)
    return card


def resnet_card(args, subjects, ages, groups, model_dir, common, cache, ext) -> dict:
    from bids_brainage.models import resnet3d
    from bids_brainage.training.dataset import build_inputs

    spec = resnet_spec(args, subjects, cache)
    x = build_inputs(subjects, spec, nprocs=args.nprocs, cache_dir=cache)
    net, card, oof = train_resnet_model(x, ages, groups, args, spec)
    resnet3d.save_resnet(net, model_dir / f"{card['name']}.pt")
    source = f"{args.folds}-fold cross-validation out-of-fold predictions on every image"
    card.update(file=f"{card['name']}.pt", **common, preprocessing=preprocessing(spec),
                default=False,
                validation={"cv": {**metrics(ages, oof),
                                   "method": f"one {args.folds}-fold CV by participant (not "
                                             f"nested: no hyper-parameter is tuned)"}},
                **calibration(oof, ages, source))
    if ext is not None:
        ext_subjects, ext_ages = ext
        xe = build_inputs(ext_subjects, spec, nprocs=args.nprocs, cache_dir=cache)
        predicted = resnet3d.predict_batch(net, xe, card["target_mean"], card["target_std"])
        card["external"] = {"dataset": args.external.name, **metrics(ext_ages, predicted)}
    card["not_default_because"] = ("nested CV is not run for it, and its predictions carry "
                                   "the scanner's contrast (docs/models.md)")
    return card


def external_subjects(args, work_dir: Path):
    """The external dataset's subjects with ages and derivatives, or None."""
    if not args.external:
        return None
    from bids_brainage.bids.participants import read_participants
    from bids_brainage.training.dataset import find_subjects

    derivatives = args.external_derivatives or preprocess(args.external,
                                                          work_dir / "external", args.nprocs)
    subjects = find_subjects(derivatives, read_participants(args.external))
    return subjects, np.array([s.age for s in subjects])


def external_predictions(args, final, members, work_dir: Path) -> dict | None:
    """The final models' predictions on the external dataset (never used to fit)."""
    from bids_brainage.training.dataset import build_inputs

    ext = external_subjects(args, work_dir)
    if ext is None:
        return None
    subjects, ages = ext
    predictions = {m.name: final.predict_member(m.name, build_inputs(
        subjects, member_input(m.name, args), nprocs=args.nprocs,
        cache_dir=work_dir / "inputs")) for m in members}
    return {"subjects": [s.participant_id for s in subjects], "ages": ages,
            "predictions": predictions}


def add_external(card: dict, external: dict | None, name: str) -> None:
    if external is None:
        return
    preds = external["predictions"]
    if name == "ensemble":
        from bids_brainage.models.predict import ensemble_age

        predicted = ensemble_age(card, preds)
    else:
        predicted = preds[name]
    card["external"] = {"dataset": "external validation (never used to fit or choose)",
                        **metrics(external["ages"], predicted)}


def add_robustness(card: dict, robustness: dict, reasons: dict) -> None:
    if not robustness:
        return
    name = card["name"]
    card["robustness"] = {"mean_abs_change_years": robustness["mean"].get(name, {}),
                          "worst_abs_change_years": robustness["worst"].get(name, {}),
                          **robustness["about"]}
    if isinstance(reasons.get(name), dict):
        card["robustness_warning"] = reasons[name]["warning"]
    elif reasons.get(name):
        card["default"] = False
        card["not_default_because"] = reasons[name]


def log_table(cards: list[dict]) -> None:
    for card in cards:
        v = card["validation"].get("nested_cv") or card["validation"].get("cv", {})
        ext = card.get("external", {})
        LOG.info("%-10s nested-CV MAE %.2f (sd %.2f) r %.3f | external MAE %s gap %s | "
                 "interval ±%.1f", card["name"], v.get("mae", float("nan")),
                 v.get("mae_sd", float("nan")), v.get("r", float("nan")),
                 ext.get("mae", "-"), ext.get("mean_gap", "-"),
                 v.get("mean_halfwidth", float("nan")))
