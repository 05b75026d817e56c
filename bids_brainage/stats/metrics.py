"""Brain-age metrics and age-bias correction: plain numpy, one number per function.

Every function takes array-likes of equal length and ignores nothing: callers drop missing
values first (``finite_pairs``), so a metric never quietly changes its N.

Age bias. Brain-age models regress towards the mean of their training ages: the young look
older and the old look younger, so the raw gap (predicted - age) correlates negatively with
age. The correction used here is the one of de Lange & Cole (2020, NeuroImage: Clinical 26,
102229), itself building on Smith et al. (2019, NeuroImage 200:528-539):

1. fit ``predicted = slope * age + intercept`` by least squares (``fit_age_bias``), on the
   model's validation data (the model card) or, when asked, on the cohort itself;
2. corrected predicted age ``= (predicted - intercept) / slope`` (``correct_age_bias``);
3. corrected gap ``= corrected predicted age - age`` (``corrected_brain_age_gap``).

This form does not use the chronological age to correct a prediction, so a participant with
no known age still gets a corrected predicted age; the corrected gap is the residual of step 1
divided by the slope, hence uncorrelated with age in the data the line was fitted on.

Recalibration is another line, part of the model rather than of the analysis: training fits
``age = intercept + slope * predicted`` on a model's inner out-of-fold predictions
(``fit_recalibration``) and the model's reported age is that line applied to its raw output
(``recalibrate``). It undoes the part of the regression to the mean that least squares can
undo without knowing anyone's age (slope ~1.05-1.08 for the bundled models); the age-bias
correction above is still there for the analyses that want a gap uncorrelated with age.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Two-sided 95 % normal quantile, so the default confidence interval needs no scipy.
_Z95 = 1.959963984540054


class PearsonResult(NamedTuple):
    r: float
    p: float
    ci_low: float
    ci_high: float
    n: int


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"arrays of different length: {x.size} and {y.size}")
    return x, y


def finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Keep the positions where both values are finite.

    >>> finite_pairs([1, float("nan"), 3], [4, 5, float("inf")])
    (array([1.]), array([4.]))
    """
    x, y = _pair(x, y)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def brain_age_gap(predicted, age) -> np.ndarray:
    """Brain-age gap (also called brain-PAD or delta): predicted minus chronological age.

    Positive means the brain looks older than the person is.

    >>> brain_age_gap([30.0, 50.0], [25.0, 55.0])
    array([ 5., -5.])
    """
    predicted, age = _pair(predicted, age)
    return predicted - age


def mae(age, predicted) -> float:
    """Mean absolute error in years; ``nan`` for no data.

    >>> mae([20, 40, 60], [25, 40, 50])
    5.0
    """
    age, predicted = _pair(age, predicted)
    return float(np.mean(np.abs(predicted - age))) if age.size else float("nan")


def rmse(age, predicted) -> float:
    """Root mean squared error in years; ``nan`` for no data.

    >>> rmse([20, 40], [23, 36])
    3.5355339059327378
    """
    age, predicted = _pair(age, predicted)
    return float(np.sqrt(np.mean((predicted - age) ** 2))) if age.size else float("nan")


def r2(age, predicted) -> float:
    """Coefficient of determination of the predictions, as scikit-learn's ``r2_score``.

    It is 1 - SS_res / SS_tot with chronological age as the truth. It is not r squared:
    a biased model can have a high r and a low (even negative) R².

    >>> r2([20, 40, 60], [20, 40, 60])
    1.0
    >>> r2([20, 40, 60], [40, 40, 40])
    0.0
    """
    age, predicted = _pair(age, predicted)
    if age.size < 2:
        return float("nan")
    ss_tot = np.sum((age - age.mean()) ** 2)
    if ss_tot == 0:
        return float("nan")
    return float(1.0 - np.sum((age - predicted) ** 2) / ss_tot)


def pearson_r(x, y, confidence: float = 0.95) -> PearsonResult:
    """Pearson correlation with its two-sided p value and a Fisher-z confidence interval.

    p comes from t = r sqrt((n - 2) / (1 - r²)) with n - 2 degrees of freedom (as
    ``scipy.stats.pearsonr``); the interval is tanh(atanh(r) ± z / sqrt(n - 3)).
    Undefined parts are ``nan``: r needs n >= 2 and variation, p n >= 3, the interval n >= 4.

    >>> res = pearson_r([1, 2, 3, 4, 5], [2, 4, 5, 4, 5])
    >>> round(res.r, 4), round(res.p, 4), res.n
    (0.7746, 0.124, 5)
    >>> round(res.ci_low, 3), round(res.ci_high, 3)
    (-0.34, 0.984)
    """
    x, y = _pair(x, y)
    n = x.size
    nan = float("nan")
    if n < 2:
        return PearsonResult(nan, nan, nan, nan, n)
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if denom == 0:
        return PearsonResult(nan, nan, nan, nan, n)
    r = float(np.clip(np.sum(dx * dy) / denom, -1.0, 1.0))
    return PearsonResult(r, _pearson_p(r, n), *_fisher_ci(r, n, confidence), n)


def _pearson_p(r: float, n: int) -> float:
    if n < 3:
        return float("nan")
    if abs(r) == 1.0:
        return 0.0
    from scipy.special import betainc  # the t tail as a regularised incomplete beta

    df = n - 2
    t2 = r * r * df / (1.0 - r * r)
    return float(betainc(0.5 * df, 0.5, df / (df + t2)))


def _fisher_ci(r: float, n: int, confidence: float) -> tuple[float, float]:
    if n < 4:
        return float("nan"), float("nan")
    if confidence == 0.95:
        z = _Z95
    else:
        from scipy.special import ndtri

        z = float(ndtri(0.5 + confidence / 2.0))
    centre = np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))
    half = z / np.sqrt(n - 3)
    return float(np.tanh(centre - half)), float(np.tanh(centre + half))


def _least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of the least-squares line ``y = slope * x + intercept``."""
    dx = x - x.mean()
    slope = np.sum(dx * (y - y.mean())) / np.sum(dx * dx)
    return float(slope), float(y.mean() - slope * x.mean())


def fit_age_bias(age, predicted) -> tuple[float, float]:
    """Least-squares line ``predicted = slope * age + intercept`` (step 1 of the correction).

    >>> fit_age_bias([20, 40, 60], [30, 40, 50])
    (0.5, 20.0)
    """
    age, predicted = _pair(age, predicted)
    if age.size < 2 or np.ptp(age) == 0:
        raise ValueError("the age-bias fit needs at least two different ages")
    return _least_squares(age, predicted)


def correct_age_bias(predicted, slope: float, intercept: float) -> np.ndarray:
    """Bias-corrected predicted age ``(predicted - intercept) / slope`` (de Lange & Cole 2020).

    The chronological age is not an input: the line fitted by ``fit_age_bias`` is inverted.

    >>> correct_age_bias([30.0, 40.0, 50.0], 0.5, 20.0)
    array([20., 40., 60.])
    """
    if not np.isfinite(slope) or abs(slope) < 1e-6:
        raise ValueError(f"an age-bias slope of {slope} cannot be inverted")
    return (np.asarray(predicted, dtype=float) - intercept) / slope


def corrected_brain_age_gap(predicted, age, slope: float, intercept: float) -> np.ndarray:
    """Bias-corrected gap: ``(predicted - intercept) / slope - age``.

    >>> corrected_brain_age_gap([32.0, 40.0, 48.0], [20, 40, 60], 0.5, 20.0)
    array([ 4.,  0., -4.])
    """
    return correct_age_bias(predicted, slope, intercept) - np.asarray(age, dtype=float)


def fit_recalibration(predicted, age) -> dict | None:
    """Least-squares line ``age = intercept + slope * predicted``: the model's recalibration,
    fitted on its out-of-fold predictions (see the module's docstring). None (no line: the
    raw output) when the held-out predictions do not rise with age: a line would then turn
    the predictions upside down or flat, as on a handful of training images.

    >>> fit_recalibration([30, 40, 50], [20, 40, 60])
    {'intercept': -40.0, 'slope': 2.0}
    >>> fit_recalibration([50, 40, 30], [20, 40, 60]) is None
    True
    """
    predicted, age = _pair(predicted, age)
    if predicted.size < 2 or np.ptp(predicted) == 0:
        raise ValueError("a recalibration needs at least two different predictions")
    slope, intercept = _least_squares(predicted, age)
    if not slope > 0:
        return None
    return {"intercept": round(intercept, 4), "slope": round(slope, 5)}


def recalibrate(line: dict | None, predicted):
    """A model's raw output through its recalibration line (unchanged without one: the cards
    of earlier releases have none).

    >>> recalibrate({"intercept": -40.0, "slope": 2.0}, [30.0, 45.0]).tolist()
    [20.0, 50.0]
    >>> recalibrate(None, 45.0)
    45.0
    """
    if not line:
        return predicted
    return line["intercept"] + line["slope"] * np.asarray(predicted, dtype=float)
