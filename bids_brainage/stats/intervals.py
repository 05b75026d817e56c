"""Prediction intervals: split-conformal, calibrated on held-out (out-of-fold) predictions.

A card's ``interval`` holds the calibration; :func:`apply_interval` turns a predicted age into
its interval at prediction time.
"""
from __future__ import annotations

import numpy as np

INTERVAL_LEVEL = 0.9


def conformal_halfwidth(residuals, level: float = INTERVAL_LEVEL) -> float:
    """Split-conformal half-width: the ceil((n+1)·level)-th smallest |residual|.

    >>> conformal_halfwidth(np.arange(1, 20), 0.9)
    18.0
    """
    scores = np.sort(np.abs(np.asarray(residuals, float)))
    k = int(np.ceil((scores.size + 1) * level))
    return float(scores[min(k, scores.size) - 1])



def _trend(predicted: np.ndarray, ages: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The residual's (age − predicted) linear trend in the prediction: its intercept and
    slope, the residuals, and each one's |deviation| from the trend."""
    residual = ages - predicted
    slope, intercept = np.polyfit(predicted, residual, 1)
    return intercept, slope, residual, np.abs(residual - (intercept + slope * predicted))


LOCAL_WINDOW = 8.0      # years of predicted age either side
LOCAL_NEIGHBOURS = 20   # at least this many calibration images


def calibrate_interval(predicted, ages, spread=None, level: float = INTERVAL_LEVEL) -> dict:
    """A 90 % interval whose centre follows the models' regression to the mean and whose
    width is that of the errors of images predicted at about the same age (local
    split-conformal, calibrated on out-of-fold predictions).

    The centre is the prediction plus the linear trend of the residual (age − predicted) in
    the prediction, as in :func:`calibrate_normalised`. The half-width at a prediction ``p``
    is the split-conformal quantile of the calibration images' |deviation from that trend|
    among those predicted within :data:`LOCAL_WINDOW` years of ``p`` (the
    :data:`LOCAL_NEIGHBOURS` nearest when fewer are): where the pool's errors are larger (its
    fifties and sixties) the interval is wider. The card keeps the calibration pairs
    (rounded) to find the neighbours of any prediction. ``spread`` is not used: members
    that disagree raise the ``members_disagree`` flag, whose interval is not calibrated.

    Chosen on the bundled 5 x 5 nested-CV split among 14 variants (Mondrian bins, hinged
    scales, windows of 8 to 15 years) for the per-decade coverage, then checked on another
    5 x 5 split (seed 7): docs/models.md.

    >>> rng = np.random.default_rng(0)
    >>> age = rng.uniform(20, 80, 400)
    >>> pred = age + rng.normal(0, np.where(age > 50, 8, 3))   # larger errors when older
    >>> cal = calibrate_interval(pred, age)
    >>> low, high = apply_interval(cal, np.array([30.0, 70.0]))
    >>> (high - low).round(1).tolist()   # wider where the errors are
    [13.6, 20.1]
    """
    predicted, ages = np.asarray(predicted, float), np.asarray(ages, float)
    intercept, slope, residual, deviation = _trend(predicted, ages)
    order = np.argsort(predicted, kind="stable")
    return {"method": "local split-conformal: centre = predicted + trend of the residual in "
                      f"the prediction; half-width = conformal quantile of the |deviations| "
                      f"of images predicted within {LOCAL_WINDOW:g} years (at least "
                      f"{LOCAL_NEIGHBOURS})",
            "level": level, "trend": [round(float(intercept), 4), round(float(slope), 5)],
            "local": {"window": LOCAL_WINDOW, "neighbours": LOCAL_NEIGHBOURS,
                      "predicted": np.round(predicted[order], 3).tolist(),
                      "deviation": np.round(deviation[order], 3).tolist()},
            "halfwidth": round(conformal_halfwidth(residual, level), 3), "n": int(ages.size)}


def local_halfwidth(local: dict, predicted, level: float = INTERVAL_LEVEL) -> np.ndarray:
    """The half-width of :func:`calibrate_interval` at each prediction.

    >>> local = {"window": 1.0, "neighbours": 2, "predicted": [0, 1, 2, 10, 11],
    ...          "deviation": [1, 1, 1, 5, 6]}
    >>> local_halfwidth(local, [1.0, 10.5, 6.0], 0.5).tolist()
    [1.0, 6.0, 5.0]
    """
    calib = np.asarray(local["predicted"], float)
    deviation = np.asarray(local["deviation"], float)
    out = []
    for p in np.atleast_1d(np.asarray(predicted, float)):
        distance = np.abs(calib - p)
        near = distance <= local["window"]
        if near.sum() < local["neighbours"]:
            near = np.argsort(distance, kind="stable")[: local["neighbours"]]
        out.append(conformal_halfwidth(deviation[near], level))
    return np.array(out)


def calibrate_normalised(predicted, ages, spread=None, level: float = INTERVAL_LEVEL) -> dict:
    """A 90 % interval whose centre and width depend on the person (normalised
    split-conformal, calibrated on out-of-fold predictions): the previous release's method,
    kept to read its cards and to compare (it covered the pool's fifties 81-82 %).

    Brain-age models regress to the mean: the young are predicted older and the old younger,
    so the residual (age − predicted) has a linear trend in the prediction: the interval's
    centre follows it. Errors also grow away from the training mean and where the ensemble's
    members disagree: the width is ``q × scale``, with ``scale`` a non-negative linear function
    of |predicted − mean prediction| (and of the members' spread, when given) fitted to the
    |deviations|, never below half their mean; ``q`` is the conformal quantile of
    |deviation| / scale. ``halfwidth`` keeps the constant interval (older readers).
    """
    from scipy.optimize import nnls

    predicted, ages = np.asarray(predicted, float), np.asarray(ages, float)
    intercept, slope, residual, deviation = _trend(predicted, ages)
    centre = float(np.mean(predicted))
    columns = [np.ones_like(predicted), np.abs(predicted - centre)]
    if spread is not None:
        columns.append(np.asarray(spread, float))
    coef, _ = nnls(np.column_stack(columns), deviation)
    floor = 0.5 * float(np.mean(deviation))
    scale = np.maximum(np.column_stack(columns) @ coef, floor)
    q = conformal_halfwidth(deviation / scale, level)
    return {"method": "normalised split-conformal: centre = predicted + trend of the residual "
                      "in the prediction; half-width = q x scale(|predicted - mean|"
                      + (", members' spread" if spread is not None else "") + ")",
            "level": level, "trend": [round(float(intercept), 4), round(float(slope), 5)],
            "scale": {"intercept": round(float(coef[0]), 4),
                      "distance": round(float(coef[1]), 5), "centre": round(centre, 3),
                      **({"spread": round(float(coef[2]), 5)} if spread is not None else {}),
                      "floor": round(floor, 4)},
            "q": round(float(q), 4),
            "halfwidth": round(conformal_halfwidth(residual, level), 3), "n": int(ages.size)}


def apply_interval(interval: dict, predicted, spread=None) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper ends of the interval for each prediction: local (``local``),
    normalised (``q``), or the constant half-width of older cards."""
    predicted = np.atleast_1d(np.asarray(predicted, float))
    if "local" not in interval and "q" not in interval:
        half = float(interval["halfwidth"])
        return predicted - half, predicted + half
    intercept, slope = interval["trend"]
    mid = predicted + intercept + slope * predicted
    if "local" in interval:
        half = local_halfwidth(interval["local"], predicted, interval.get("level", INTERVAL_LEVEL))
        return mid - half, mid + half
    sc = interval["scale"]
    scale = sc["intercept"] + sc["distance"] * np.abs(predicted - sc["centre"])
    if spread is not None and "spread" in sc:
        scale = scale + sc["spread"] * np.atleast_1d(np.asarray(spread, float))
    scale = np.maximum(scale, sc["floor"])
    return mid - interval["q"] * scale, mid + interval["q"] * scale
