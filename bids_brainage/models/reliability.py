"""How far to trust one prediction: the reasons to flag it, each with a measured threshold.

An image is flagged (the ``flag`` column of ``_brainage.tsv``: ``ok`` or the reasons joined
by ``;``) when

- ``members_disagree``: the default members' predictions spread (sd) more than the pool's
  held-out images do (the limit is a high percentile of the spread in nested CV);
- ``unlike_training``: its forest input (log-intensity histogram and tissue fractions: what
  a scanner, a contrast or a strip changes first) is far from the training images'
  (Mahalanobis distance in their principal components plus what those leave out; the limit
  is a high percentile of held-out pool images' distances);
- ``age_outside_training``: the predicted age (or the known age) lies outside the training
  ages;
- ``poor_registration``: its MNI brain mask overlaps the template's less than any pool
  image's did;
- ``poor_skull_strip``: its MNI brain mask is smaller or larger, relative to the template's,
  than the pool's range (a strip that cut brain, or kept skull and dura);
- ``unusual_contrast``: the grey/white contrast of its tissue classes is unlike the pool's
  (the spacing of the log class means, :func:`tissue_contrast`, against the pool's line on
  age; the limits are low and high percentiles of held-out pool images' z-scores). The
  models read contrast as age: lower grey/white contrast looks older.

The limits live in the ensemble card's ``reliability`` block, written by training.
"""
from __future__ import annotations

import numpy as np

REASONS = ("members_disagree", "unlike_training", "age_outside_training",
           "poor_registration", "poor_skull_strip", "unusual_contrast")
FLAG_PERCENTILE = 97.5  # held-out pool images above it are flagged: ~2.5 % per reason
PCA_COMPONENTS = 10


# ------------------------------------------------------------------------------ distances
def fit_distance(x: np.ndarray, components: int = PCA_COMPONENTS) -> dict:
    """The training images' feature distribution: mean, scale, principal axes, variances and
    the typical squared residual outside them (all JSON-ready)."""
    x = np.asarray(x, float)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    k = min(components, len(s) - 1)
    variances = s[:k] ** 2 / (len(x) - 1)
    residual = z - (z @ vt[:k].T) @ vt[:k]
    return {"mean": mean.round(6).tolist(), "scale": scale.round(6).tolist(),
            "components": vt[:k].round(6).tolist(), "variances": variances.round(6).tolist(),
            "residual": float(np.mean(np.sum(residual ** 2, axis=1)))}


def distance(model: dict, x: np.ndarray) -> np.ndarray:
    """A normalised distance of each row of ``x`` from the training images: the root mean of
    the squared Mahalanobis distance in the principal axes and the squared residual outside
    them relative to the training images' (about 1 for a typical training image).

    >>> rng = np.random.default_rng(0)
    >>> train = rng.normal(0, 1, (200, 5))
    >>> model = fit_distance(train, 2)
    >>> near, far = distance(model, np.zeros((1, 5))), distance(model, np.full((1, 5), 6.0))
    >>> bool(near[0] < 1 < far[0])
    True
    """
    x = np.atleast_2d(np.asarray(x, float))
    z = (x - np.asarray(model["mean"])) / np.asarray(model["scale"])
    v = np.asarray(model["components"])
    scores = z @ v.T
    inside = np.sum(scores ** 2 / np.asarray(model["variances"]), axis=1)
    outside = np.sum((z - scores @ v) ** 2, axis=1) / max(model["residual"], 1e-12)
    return np.sqrt((inside + outside) / (len(model["variances"]) + 1))


def held_out(fit, judge, folds, *columns) -> np.ndarray:
    """Each image's measure from a model fitted without its fold: ``judge(fit(*rest),
    *held)`` on the columns' rows split by fold (the calibration of a limit: the pool's own
    images as the app will see new ones).

    >>> folds = [np.array([0, 1]), np.array([2, 3])]
    >>> held_out(np.mean, lambda m, v: v - m, folds, np.array([1.0, 2.0, 3.0, 5.0]))
    array([-3. , -2. ,  1.5,  3.5])
    """
    n = len(columns[0])
    out = np.full(n, np.nan)
    for fold in folds:
        rest = np.setdiff1d(np.arange(n), fold)
        out[fold] = judge(fit(*(c[rest] for c in columns)), *(c[fold] for c in columns))
    return out


def held_out_distances(x: np.ndarray, folds) -> np.ndarray:
    """Each image's distance from a model fitted without its fold."""
    return held_out(fit_distance, distance, folds, np.asarray(x, float))


# ------------------------------------------------------------------------------ QC measures
def mask_measures(mni_mask: np.ndarray) -> dict:
    """Registration overlap (Dice with the template's brain mask) and the mask's volume
    relative to the template's, on the 2 mm MNI grid."""
    from bids_brainage.preproc.template import template_2mm, template_mask

    mask = np.asarray(mni_mask, bool)
    tpl = template_mask(template_2mm())
    total = mask.sum() + tpl.sum()
    return {"registration_dice": round(float(2 * (mask & tpl).sum() / total) if total else 0.0, 4),
            "mask_volume_ratio": round(float(mask.sum() / tpl.sum()), 4)}


def tissue_contrast(mni: np.ndarray, mask: np.ndarray, priors: np.ndarray | None = None) -> float:
    """The spacing ``(log GM - log CSF) / (log WM - log GM)`` of the tissue segmentation's class
    means (:func:`bids_brainage.features.tissue.segment`): large when grey matter sits close to
    white matter (low grey/white contrast), small when it sits close to CSF. The same for any
    ``c * mni ** g``; NaN when the classes are not ordered CSF < GM < WM. ``priors``: the
    segmentation's (the template's tissue maps by default).

    >>> rng = np.random.default_rng(0)
    >>> truth = rng.integers(0, 3, (8, 8, 8))
    >>> img = np.choose(truth, [0.25, 0.6, 1.0]) * np.exp(rng.normal(0, 0.02, truth.shape))
    >>> flat, mask = np.full((3,) + truth.shape, 1 / 3, np.float32), np.ones(truth.shape, bool)
    >>> round(tissue_contrast(img, mask, flat), 2), round(tissue_contrast(5 * img ** 0.7, mask, flat), 2)
    (1.71, 1.71)
    >>> lower = np.choose(truth, [0.25, 0.75, 1.0]) * np.exp(rng.normal(0, 0.02, truth.shape))
    >>> round(tissue_contrast(lower, mask, flat), 2)  # grey closer to white: a larger spacing
    3.82
    """
    from bids_brainage.features.tissue import CLASSES, segment, segment_info

    info = (segment_info(mni, mask) if priors is None
            else segment(mni, mask, priors, fractions=False)[1])
    if not info.get("means") or not info.get("ordered"):
        return float("nan")
    csf, gm, wm = (np.log(info["means"][name]) for name in CLASSES)
    return float((gm - csf) / (wm - gm))


def fit_contrast(values, ages) -> dict:
    """The pool's contrast on age: a least-squares line and the residuals' sd (images whose
    classes were not ordered, NaN, take no part).

    >>> line = fit_contrast([1.0, 2.0, float("nan"), 3.1], [20, 40, 50, 60])
    >>> line["slope"], round(contrast_z(line, 2.0, 40), 2)
    (0.0525, -0.82)
    """
    from bids_brainage.stats.metrics import fit_age_bias

    values, ages = np.asarray(values, float), np.asarray(ages, float)
    keep = np.isfinite(values) & np.isfinite(ages)
    values, ages = values[keep], ages[keep]
    slope, intercept = fit_age_bias(ages, values)
    residual = values - (intercept + slope * ages)
    return {"intercept": round(intercept, 5), "slope": round(slope, 6),
            "sd": round(float(np.std(residual, ddof=2)), 5)}


def contrast_z(line: dict, value: float, age: float) -> float:
    """How many of the pool's sds ``value`` lies above the pool's line at ``age``."""
    return (value - (line["intercept"] + line["slope"] * age)) / line["sd"]


def contrast_outside(z, z_range):
    """Whether contrast z-scores lie outside the card's ``z_range``; NaN (classes not
    ordered) is outside too. The app's judgement and training's pool rate both use it.

    >>> contrast_outside(np.array([-3.0, 0.0, 2.5, np.nan]), [-2.5, 2.1]).tolist()
    [True, False, True, True]
    """
    low, high = z_range
    z = np.asarray(z, float)
    return ~((z >= low) & (z <= high))


def held_out_contrast_z(values, ages, folds) -> np.ndarray:
    """Each pool image's z-score against the line fitted without its fold."""
    return held_out(fit_contrast, contrast_z, folds,
                    np.asarray(values, float), np.asarray(ages, float))


def calibrate(*, spreads, distances, ages, dice, volume_ratio, distance_model,
              contrast=None, contrast_z=None) -> dict:
    """The ensemble card's ``reliability`` block from the pool's held-out measurements
    (``contrast``: each pool image's :func:`tissue_contrast`; ``contrast_z``: its held-out
    z-score, :func:`held_out_contrast_z`)."""
    def pct(values, q):
        values = np.asarray(values, float)
        return round(float(np.nanpercentile(values, q)), 4)

    tail = (100 - FLAG_PERCENTILE) / 2  # two-sided: half the rate on each side
    block = {} if contrast is None else {"contrast": {
        **fit_contrast(contrast, ages),
        "z_range": [pct(contrast_z, tail), pct(contrast_z, 100 - tail)],
        "measure": "(log GM - log CSF) / (log WM - log GM) of the tissue segmentation's class "
                   "means, against the pool's line on age (the predicted age at prediction)"}}
    return {
        "percentile": FLAG_PERCENTILE,
        "members_spread_limit": pct(spreads, FLAG_PERCENTILE) if spreads is not None else None,
        "distance_limit": pct(distances, FLAG_PERCENTILE),
        "distance_model": distance_model,
        "age_range": [round(float(np.min(ages)), 2), round(float(np.max(ages)), 2)],
        # QC limits: outside the whole pool's range (every pool image passes)
        "registration_dice_min": round(float(np.min(dice)), 4),
        "mask_volume_ratio_range": [round(float(np.min(volume_ratio)), 4),
                                    round(float(np.max(volume_ratio)), 4)],
        **block,
        "note": "limits from held-out pool images (nested CV) and the pool's QC range",
    }


def assess(card: dict | None, *, spread, features, predicted, age, measures,
           contrast: float | None = None, contrast_age: float | None = None) -> dict:
    """The reasons to flag one image's predictions and the quantities behind them.

    ``card`` is the ensemble card's ``reliability`` block (None: nothing can be said, and
    the result says so). ``predicted`` maps model name to age. ``contrast``: the image's
    :func:`tissue_contrast`, judged when the card has a ``contrast`` block against the pool's
    line at ``contrast_age`` (the ensemble's age; clipped to the training ages).

    >>> rel = {"members_spread_limit": 5.0, "distance_limit": 2.0, "age_range": [20, 80],
    ...        "registration_dice_min": 0.8, "mask_volume_ratio_range": [0.9, 1.1],
    ...        "distance_model": None}
    >>> out = assess(rel, spread=7.0, features=None, predicted={"ensemble": 85.0}, age=None,
    ...              measures={"registration_dice": 0.9, "mask_volume_ratio": 1.0})
    >>> out["reasons"]
    ['members_disagree', 'age_outside_training']
    """
    if not card:
        return {"reasons": [], "quantities": {}, "calibrated": False}
    reasons, q = [], dict(measures)
    if spread is not None and card.get("members_spread_limit") is not None:
        q["members_spread"] = round(float(spread), 3)
        q["members_spread_limit"] = card["members_spread_limit"]
        if spread > card["members_spread_limit"]:
            reasons.append("members_disagree")
    if features is not None and card.get("distance_model"):
        d = float(distance(card["distance_model"], features)[0])
        q["training_distance"] = round(d, 3)
        q["training_distance_limit"] = card["distance_limit"]
        if d > card["distance_limit"]:
            reasons.append("unlike_training")
    low, high = card["age_range"]
    outside = [n for n, a in predicted.items() if not low <= a <= high]
    if age is not None and not low <= age <= high:
        outside.append("age")
    q["training_age_range"] = [low, high]
    if outside:
        q["outside_training_ages"] = outside
        reasons.append("age_outside_training")
    if measures["registration_dice"] < card["registration_dice_min"]:
        reasons.append("poor_registration")
    vlow, vhigh = card["mask_volume_ratio_range"]
    if not vlow <= measures["mask_volume_ratio"] <= vhigh:
        reasons.append("poor_skull_strip")
    q["registration_dice_min"] = card["registration_dice_min"]
    q["mask_volume_ratio_range"] = card["mask_volume_ratio_range"]
    line = card.get("contrast")
    if line and contrast is not None and contrast_age is not None:
        at = float(np.clip(contrast_age, low, high))
        z = contrast_z(line, contrast, at) if np.isfinite(contrast) else float("nan")
        q["tissue_contrast"] = round(float(contrast), 4) if np.isfinite(contrast) else None
        q["tissue_contrast_z"] = round(float(z), 3) if np.isfinite(z) else None
        q["tissue_contrast_z_range"] = list(line["z_range"])
        if contrast_outside(z, line["z_range"]):
            reasons.append("unusual_contrast")
    return {"reasons": reasons, "quantities": q, "calibrated": True}


def flag_text(reasons) -> str:
    """``ok`` or the reasons joined by ``;`` (the TSV's ``flag`` column)."""
    return ";".join(reasons) if reasons else "ok"
