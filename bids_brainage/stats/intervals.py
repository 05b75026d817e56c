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



def calibrate_interval(predicted, ages, spread=None, level: float = INTERVAL_LEVEL) -> dict:
    """A 90 % interval whose centre and width depend on the person (normalised
    split-conformal, calibrated on out-of-fold predictions).

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
    residual = ages - predicted
    slope, intercept = np.polyfit(predicted, residual, 1)
    deviation = np.abs(residual - (intercept + slope * predicted))
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
    """Lower and upper ends of the interval for each prediction (a card without ``q``: the
    constant half-width of older cards)."""
    predicted = np.atleast_1d(np.asarray(predicted, float))
    if "q" not in interval:
        half = float(interval["halfwidth"])
        return predicted - half, predicted + half
    intercept, slope = interval["trend"]
    sc = interval["scale"]
    scale = sc["intercept"] + sc["distance"] * np.abs(predicted - sc["centre"])
    if spread is not None and "spread" in sc:
        scale = scale + sc["spread"] * np.atleast_1d(np.asarray(spread, float))
    scale = np.maximum(scale, sc["floor"])
    mid = predicted + intercept + slope * predicted
    return mid - interval["q"] * scale, mid + interval["q"] * scale
