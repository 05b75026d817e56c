"""The work of ``bids_brainage-train``: a labelled BIDS dataset in, a model directory out.

The command line is ``bids_brainage.cli.train``.

1. Preprocess with the participant workflow (or reuse ``--derivatives``), no prediction.
2. Split participants by age (seeded): train 60 % / validation 20 % / test 20 %.
3. Per model: k-fold CV on train+validation, fit on train. The out-of-fold predictions of
   the CV calibrate (ensemble weights, age-bias line, conformal interval); validation and
   test are predicted by the model fitted on train; test is reported once and never used
   to choose anything.
4. Write weights and ``models.json`` (cards with data, metrics, seed, versions, sha256).
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
from bids_brainage.training.splits import SPLIT_FRACTIONS

LOG = logging.getLogger("bids_brainage.train")
# the voxels every model reads: the brain inside the template brain eroded by 2 voxels
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
INTERVAL_LEVEL = 0.9


def metrics(age, predicted) -> dict:
    from bids_brainage.stats import metrics as m

    age, predicted = np.asarray(age, float), np.asarray(predicted, float)
    r = m.pearson_r(age, predicted)
    return {"n": int(age.size), "mae": round(m.mae(age, predicted), 3),
            "rmse": round(m.rmse(age, predicted), 3), "r": round(r.r, 4),
            "r2": round(m.r2(age, predicted), 4)}


def conformal_halfwidth(residuals, level: float = INTERVAL_LEVEL) -> float:
    """Split-conformal half-width: the ceil((n+1)·level)-th smallest |residual|.

    >>> conformal_halfwidth(np.arange(1, 20), 0.9)
    18.0
    """
    scores = np.sort(np.abs(np.asarray(residuals, float)))
    k = int(np.ceil((scores.size + 1) * level))
    return float(scores[min(k, scores.size) - 1])


def simplex_grid(n: int, step: float = 0.05) -> np.ndarray:
    """Every weight vector of ``n`` non-negative multiples of ``step`` summing to one.

    >>> simplex_grid(3, 0.5).tolist()
    [[0.0, 0.0, 1.0], [0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]
    """
    import itertools

    units = round(1 / step)
    rows = [c for c in itertools.product(range(units + 1), repeat=n - 1) if sum(c) <= units]
    return np.array([[*c, units - sum(c)] for c in rows], float) / units


def ensemble_weights(predictions: dict[str, np.ndarray], age) -> dict[str, float]:
    """Convex weights on a 0.05 grid minimising the MAE of held-out predictions (ties go to
    the first grid point, i.e. more weight on later members)."""
    names = list(predictions)
    if len(names) == 1:
        return {names[0]: 1.0}
    grid = simplex_grid(len(names))
    stacked = np.column_stack([predictions[n] for n in names])
    errors = np.abs(stacked @ grid.T - np.asarray(age, float)[:, None]).mean(axis=0)
    best = grid[int(np.argmin(errors))]
    return {n: round(float(w), 2) for n, w in zip(names, best)}


def preprocess(args, work_dir: Path) -> Path:
    """Participant-level preprocessing (no prediction) of the training dataset."""
    from bids_brainage.cli.parser import get_parser as app_parser
    from bids_brainage.config import Settings, apply_thread_environment
    from bids_brainage.levels.participant import run_participant

    derivatives = work_dir / "derivatives"
    argv = [str(args.bids_dir), str(derivatives), "participant", "-w", str(work_dir / "work"),
            "--nprocs", str(args.nprocs), "--no-report", "--skip-bids-validation"]
    if args.participant_label:
        argv += ["--participant-label", *args.participant_label]
    settings = Settings.from_args(app_parser().parse_args(argv))
    apply_thread_environment(settings)
    run_participant(settings, predict=False)
    return derivatives


def train_sklearn_model(x, ages, split, folds, args, fit=None):
    """CV on train+val, fit on train; returns the card metrics, the model, all predictions
    and the out-of-fold predictions (NaN on test). ``fit(x, y)`` defaults to the forest."""
    from bids_brainage.models.forest import train_forest
    from bids_brainage.training.splits import kfold_indices

    if fit is None:
        def fit(features, target):
            return train_forest(features, target, seed=args.random_seed,
                                n_estimators=args.rf_trees, n_jobs=args.nprocs)

    dev = np.flatnonzero(split != "test")
    oof = np.full(len(ages), np.nan)
    for fold in kfold_indices(ages[dev], k=folds, seed=args.random_seed):
        held = dev[fold]
        rest = np.setdiff1d(dev, held)
        oof[held] = fit(x[rest], ages[rest]).predict(x[held])
    train = split == "train"
    model = fit(x[train], ages[train])
    predicted = model.predict(x)
    return {"cv": metrics(ages[dev], oof[dev])}, model, predicted, oof


def train_resnet_model(x, ages, split, args, spec):
    """K-fold CV on train+val with the same settings, then fit on train (validation only
    monitored: no early stopping on it); returns the CV metrics, the net, predictions for
    everyone, the card fragment and the out-of-fold predictions (NaN on test)."""
    from bids_brainage.models import resnet3d
    from bids_brainage.training.splits import kfold_indices

    def fit(rows, monitor=None, progress=True):
        extra = (x[monitor], ages[monitor]) if monitor is not None else ()
        return resnet3d.train_resnet(
            x[rows], ages[rows], *extra,
            depth=args.resnet_depth, width=args.resnet_width, epochs=args.resnet_epochs,
            batch_size=args.resnet_batch_size, lr=args.resnet_lr, seed=args.random_seed,
            augment=resnet_augment(args), threads=args.nprocs, val_every=10,
            progress=progress)

    dev = np.flatnonzero(split != "test")
    oof = np.full(len(ages), np.nan)
    folds = kfold_indices(ages[dev], k=args.folds, seed=args.random_seed)
    for k, fold in enumerate(folds, 1):
        held = dev[fold]
        LOG.info("ResNet cross-validation: fold %d of %d (%d held out)", k, len(folds),
                 held.size)
        net, history = fit(np.setdiff1d(dev, held))
        oof[held] = resnet3d.predict_batch(net, x[held], history["target_mean"],
                                           history["target_std"])
    train, val = split == "train", split == "val"
    LOG.info("ResNet: fitting on the training split")
    net, history = fit(np.flatnonzero(train), np.flatnonzero(val))
    card = resnet3d.resnet_card(
        f"resnet{args.resnet_depth}", args.resnet_depth, args.resnet_width,
        spec, history["target_mean"], history["target_std"],
        flip_average=args.resnet_flip_average,
    )
    card["training_params"] = history["params"]
    predicted = np.array([resnet3d.predict_volume(net, xi, threads=args.nprocs, card=card)
                          for xi in x])
    return {"cv": metrics(ages[dev], oof[dev])}, net, predicted, card, oof


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


def resnet_spec(args, subjects=None, split=None) -> dict:
    """The ResNet's input spec; for ``quantile`` with the reference quantiles: the mean over
    the training split of each brain's GMM-normalised quantiles (in the model region)."""
    from bids_brainage.models import resnet3d
    from bids_brainage.training.dataset import build_inputs

    spec = resnet3d.image_spec(downsample=args.resnet_downsample)
    if args.resnet_normalization in ("rank", "quantile"):
        spec.update(normalization=args.resnet_normalization, **MODEL_REGION)
    if args.resnet_normalization == "quantile":
        train = [s for s, k in zip(subjects, split) if k == "train"]
        quantiles = build_inputs(train, {"feature": "quantiles", "normalization": "gmm",
                                         **MODEL_REGION}, nprocs=args.nprocs)
        spec["reference"] = [round(float(q), 5) for q in quantiles.mean(axis=0)]
    return spec

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


def calibrate(card: dict, predicted: np.ndarray, ages: np.ndarray, split: np.ndarray,
              held_out: np.ndarray | None = None) -> dict:
    """Calibration (interval, age-bias line) and metrics, added to a card in place.

    ``held_out`` holds the out-of-fold predictions of cross-validation on train+val (NaN on
    test): the interval and the bias line come from them (110 held-out predictions on our
    data instead of the validation split's 28, so a less noisy quantile and line). Without
    them (a card re-calibrated by ``--skip-training``) the validation predictions are used.
    """
    from bids_brainage.stats.metrics import fit_age_bias

    val, test, train = split == "val", split == "test", split == "train"
    if held_out is None:
        rows, scored, source = val, predicted, "validation split"
    else:
        rows, scored, source = ~np.isnan(held_out), held_out, "cross-validation out-of-fold"
    half = conformal_halfwidth(scored[rows] - ages[rows])
    covered = np.abs(predicted[test] - ages[test]) <= half
    slope, intercept = fit_age_bias(ages[rows], scored[rows])
    card.setdefault("validation", {}).update({
        "val": metrics(ages[val], predicted[val]),
        "test": metrics(ages[test], predicted[test]),
        "train_mean_baseline_test_mae": round(float(np.mean(np.abs(ages[train].mean()
                                                                  - ages[test]))), 3),
    })
    n = int(rows.sum())
    card["interval"] = {"method": f"split-conformal on {source} |residuals| (n={n})",
                        "level": INTERVAL_LEVEL, "halfwidth": round(half, 3),
                        "test_coverage": round(float(covered.mean()), 3)}
    card["bias_correction"] = {"slope": round(slope, 5), "intercept": round(intercept, 4),
                               "fitted_on": f"{source} predictions (n={n})"}
    return card


def training_card(subjects, ages, split, args, excluded) -> dict:
    sites = sorted({s.site for s in subjects})
    return {
        "dataset": str(args.bids_dir.name), "n": int(len(ages)),
        "n_train": int((split == "train").sum()), "n_val": int((split == "val").sum()),
        "n_test": int((split == "test").sum()),
        "age_min": round(float(ages.min()), 2), "age_max": round(float(ages.max()), 2),
        "sites": sites, "split_seed": args.random_seed,
        "split": {**SPLIT_FRACTIONS, "stratified_by": "age"},
        "excluded_participants": sorted(excluded),
        "val_participants": sorted(s.participant_id for s, k in zip(subjects, split)
                                   if k == "val"),
        "test_participants": sorted(s.participant_id for s, k in zip(subjects, split)
                                    if k == "test"),
    }


def write_models(model_dir: Path, cards: list[dict]) -> Path:
    from bids_brainage.io import atomic_write_json
    from bids_brainage.models.registry import CARD_FILE, sha256sum

    for card in cards:
        if card.get("file"):
            card["sha256"] = sha256sum(model_dir / card["file"])
    return atomic_write_json(model_dir / CARD_FILE, {"schema_version": 1, "models": cards})


def run(args) -> int:
    from bids_brainage.bids.participants import read_participants
    from bids_brainage.training.dataset import build_inputs, find_subjects
    from bids_brainage.training.splits import stratified_assign

    model_dir = args.model_dir.resolve()
    model_dir.mkdir(parents=True, exist_ok=True)
    work_dir = (args.work_dir or model_dir / "work").resolve()
    derivatives = args.derivatives or preprocess(args, work_dir)
    participants = read_participants(args.bids_dir)
    excluded = {f"sub-{x.removeprefix('sub-')}" for x in args.exclude_label}
    subjects = [s for s in find_subjects(derivatives, participants)
                if s.participant_id not in excluded]
    if args.participant_label:
        keep = {f"sub-{x.removeprefix('sub-')}" for x in args.participant_label}
        subjects = [s for s in subjects if s.participant_id in keep]
    if len(subjects) < 10:
        LOG.error("only %d participants with an age and complete outputs; need >= 10",
                  len(subjects))
        return 1
    ages = np.array([s.age for s in subjects])
    split = stratified_assign(ages, SPLIT_FRACTIONS, seed=args.random_seed)
    LOG.info("%d participants: %s", len(ages),
             {k: int((split == k).sum()) for k in ("train", "val", "test")})
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if args.skip_training:
        from bids_brainage.models.registry import load_cards

        cards = [{k: v for k, v in c.items() if k != "_dir"}
                 for c in load_cards(model_dir).values()]
        val_predictions = {c["name"]: predict_subjects(dict(c, _dir=str(model_dir)), subjects,
                                                       args.nprocs)
                           for c in cards if c.get("kind") != "ensemble"}
        apply_robustness(cards, subjects, ages, split, val_predictions, derivatives, args,
                         model_dir, work_dir)
        write_models(model_dir, cards)
        return 0
    common = {
        "version": __version__,
        "training": training_card(subjects, ages, split, args, excluded),
        "versions": _versions(),
        "date": _dt.date.today().isoformat(),
        "command": "bids_brainage-train " + " ".join(sys.argv[1:]),
        "licence": "CC BY-SA 3.0 (trained on IXI: Imperial College London, "
                   "brain-development.org; resampled and labelled by NiChart, CBICA)",
    }
    cards, val_predictions, oof = [], {}, {}
    if "rf" in names:
        spec = FOREST_INPUTS[args.rf_normalization]
        x = build_inputs(subjects, spec, nprocs=args.nprocs)
        extra, model, predicted, oof["rf"] = train_sklearn_model(x, ages, split, args.folds,
                                                                 args)
        from bids_brainage.models.forest import save_forest

        save_forest(model, model_dir / "rf.joblib")
        histogram = {"logquantile": "log intensities (10th percentile at 0, 90th at 1) and "
                                    "the 3 tissue fractions",
                     "loggmm": "log intensities (CSF class at 0, WM at 1) and the 3 tissue "
                               "fractions",
                     "gmm": "GMM-normalised intensities"}[args.rf_normalization]
        card = {"name": "rf", "kind": "forest", "file": "rf.joblib",
                "architecture": f"RandomForestRegressor({args.rf_trees} trees, max_features "
                                f"0.33, min_samples_leaf 2) on the 100-bin histogram of "
                                f"{histogram} inside the template brain eroded by 2 voxels",
                "input": spec, **common, "preprocessing": preprocessing(spec),
                "validation": extra}
        cards.append(calibrate(card, predicted, ages, split, oof["rf"]))
        val_predictions["rf"] = predicted
    if "morph" in names:
        from bids_brainage.models.forest import save_forest, train_ridge

        x = build_inputs(subjects, MORPH_INPUT, nprocs=args.nprocs)
        extra, model, predicted, oof["morph"] = train_sklearn_model(
            x, ages, split, args.folds, args, fit=train_ridge)
        save_forest(model, model_dir / "morph.joblib")
        card = {"name": "morph", "kind": "ridge", "file": "morph.joblib",
                "architecture": "standardised features, ridge (penalty by leave-one-out CV on "
                                "the training split) on log-Jacobians of a SyN warp to the "
                                "template and rank-normalised intensities, both at 8 mm inside "
                                "the template brain eroded by 2 voxels",
                "input": MORPH_INPUT, **common, "preprocessing": preprocessing(MORPH_INPUT),
                "validation": extra}
        cards.append(calibrate(card, predicted, ages, split, oof["morph"]))
        val_predictions["morph"] = predicted
    resnet_names = [n for n in names if n.startswith("resnet")]
    if resnet_names:
        from bids_brainage.models import resnet3d

        spec = resnet_spec(args, subjects, split)
        x = build_inputs(subjects, spec, nprocs=args.nprocs)
        extra, net, predicted, card, held_out = train_resnet_model(x, ages, split, args, spec)
        resnet3d.save_resnet(net, model_dir / f"{card['name']}.pt")
        card.update(file=f"{card['name']}.pt", **common, preprocessing=preprocessing(spec),
                    validation=extra)
        cards.append(calibrate(card, predicted, ages, split, held_out))
        val_predictions[card["name"]] = predicted
        oof[card["name"]] = held_out
    if len(val_predictions) > 1:
        weights = ensemble_weights({n: p[split != "test"] for n, p in oof.items()},
                                   ages[split != "test"])
        cards.append(ensemble_card(weights, val_predictions, ages, split,
                                   {**common, "preprocessing": PREPROCESSING}, oof))
    if args.robustness:
        apply_robustness(cards, subjects, ages, split, val_predictions, derivatives, args,
                         model_dir, work_dir, oof)
    path = write_models(model_dir, cards)
    for card in cards:
        v = card["validation"]
        LOG.info("%-10s val MAE %.2f  test MAE %.2f r %.3f  (baseline %.2f)", card["name"],
                 v["val"]["mae"], v["test"]["mae"], v["test"]["r"],
                 v["train_mean_baseline_test_mae"])
    LOG.info("wrote %s", path)
    return 0


PREPROCESSING = ("conform RAS; deepbet; largest component; "
                 f"N4 (log-spread {LOG_SPREAD}, fit on ~8 mm); antspyx affine to "
                 "MNI152NLin2009aSym at 2 mm")


def preprocessing(spec: dict) -> str:
    """The card's preprocessing line: the shared pipeline, then what the model's input adds.

    >>> preprocessing({"feature": "image", "normalization": "quantile"}).split("; ")[-1]
    'rank-normalised, mapped onto the reference quantiles'
    """
    feature, norm = spec.get("feature", "histogram"), spec.get("normalization", "gmm")
    if feature == "morphometry":
        last = "rank-normalised; SyN to the rank-normalised template (log-Jacobians)"
    elif norm == "quantile":
        last = "rank-normalised, mapped onto the reference quantiles"
    elif norm == "rank":
        last = "rank-normalised"
    elif norm == "loggmm":
        last = "log intensities, 3-class GMM (CSF = 0, WM = 1)"
    elif norm == "logquantile":
        last = "log intensities (10th percentile = 0, 90th = 1)"
    else:
        last = f"{norm} normalisation"
    return f"{PREPROCESSING}; {last}"


def predict_subjects(card: dict, subjects, threads: int) -> np.ndarray:
    """A model's predictions for every subject, through the prediction code path."""
    from bids_brainage.training.dataset import build_inputs
    from bids_brainage.models.predict import load_predictor

    x = build_inputs(subjects, card.get("input", {}), nprocs=threads)
    predictor = load_predictor(card, threads)
    return np.array([predictor(xi) for xi in x])


def ensemble_card(weights: dict[str, float], predictions: dict[str, np.ndarray], ages, split,
                  template: dict, held_out: dict[str, np.ndarray] | None = None) -> dict:
    """The ensemble's card: its members' weights, and its calibration from the weighted
    out-of-fold predictions (``held_out``, when every member has them)."""
    predicted = sum(w * predictions[n] for n, w in weights.items())
    combined = None
    if held_out and all(n in held_out for n in weights):
        combined = sum(w * held_out[n] for n, w in weights.items())
    source = ("cross-validation out-of-fold predictions on train+validation"
              if combined is not None else "validation predictions")
    card = {"name": "ensemble", "kind": "ensemble", "members": weights, "intercept": 0.0,
            "architecture": (f"convex combination, weights (0.05 grid) minimising the MAE of "
                             f"the members' {source}"
                             if len(weights) > 1 else
                             f"the single default model {next(iter(weights))} (its interval and "
                             f"bias line from its {source})"),
            **{k: template[k] for k in ("version", "training", "preprocessing", "versions",
                                        "date", "command", "licence") if k in template}}
    return calibrate(card, predicted, ages, split, combined)


def apply_robustness(cards, subjects, ages, split, predictions, derivatives, args, model_dir,
                     work_dir, held_out: dict[str, np.ndarray] | None = None) -> None:
    """Measure each model on changed copies of validation brains; keep only robust models
    (every mean |change| < 2 years) in the default ensemble; say why in the others' cards."""
    from bids_brainage.training.robustness import (ROBUST_LIMIT, evaluate, least_sensitive,
                                                 robust_models)

    write_models(model_dir, cards)  # the variants run through the app with these models
    val = [s for s, k in zip(subjects, split) if k == "val"][: args.robustness]
    images = {}
    for s in val:
        t1w = sorted((args.bids_dir / s.participant_id).rglob(f"{s.prefix}_T1w.nii*"))[0]
        masks = args.reference_masks or derivatives
        found = sorted(Path(masks).glob(f"{s.participant_id}/**/{s.prefix}*_desc-brain_mask.nii*"))
        images[s.participant_id.removeprefix("sub-")] = (t1w, found[0] if found else None)
    changes = evaluate(model_dir, images, work_dir / "robustness", args.nprocs)
    reasons = robust_models({m: c for m, c in changes.items() if m != "ensemble"})
    for card in cards:
        name = card["name"]
        card["robustness"] = {
            "mean_abs_change_years": changes.get(name, {}), "limit_years": ROBUST_LIMIT,
            "participants": [f"sub-{x}" for x in images], "split": "validation",
            "mask_for_stripped_variant": "reference" if args.reference_masks else "pipeline",
        }
        if card.get("kind") == "ensemble":
            continue
        card["default"] = reasons.get(name) is None
        if reasons.get(name):
            card["not_default_because"] = reasons[name]
    robust = [c["name"] for c in cards if c.get("kind") != "ensemble" and c["default"]]
    others = [c for c in cards if c.get("kind") != "ensemble"]
    if not robust:
        # nothing meets the limit: the default (and its ensemble) is the one model whose
        # worst change is smallest; every card keeps its reason, the figures stay in
        # "robustness", and the others stay available by name
        best = least_sensitive({c["name"]: changes[c["name"]] for c in others})
        LOG.warning("no model's changes stay below %.1f years; the default is the least "
                    "sensitive one, %s", ROBUST_LIMIT, best)
        for card in others:
            if card["name"] == best:
                card["default"] = True
                card["robustness_warning"] = (
                    card.pop("not_default_because")
                    + "; no model passes the limit, and this one's worst change is the "
                      "smallest, so it is the default")
        robust = [best]
    template = others[0]
    cards[:] = others
    if robust:
        if held_out and all(n in held_out for n in robust):
            rows, scored = split != "test", held_out
        else:  # --skip-training: the cards keep no out-of-fold predictions
            rows, scored = split == "val", predictions
        weights = ensemble_weights({n: scored[n][rows] for n in robust}, ages[rows])
        card = ensemble_card(weights, predictions, ages, split,
                             {**template, "preprocessing": PREPROCESSING}, held_out)
        card["robustness"] = {
            "mean_abs_change_years_bound": {
                v: round(sum(w * changes[m][v] for m, w in weights.items()), 3)
                for v in changes[robust[0]]},
            "note": "weighted sum of the members' changes, an upper bound of the ensemble's",
            "limit_years": ROBUST_LIMIT,
        }
        cards.append(card)
