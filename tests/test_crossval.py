"""Nested cross-validation and the ensemble fit (bids_brainage.training.crossval), and the
prediction intervals (bids_brainage.stats.intervals), on synthetic data."""
from __future__ import annotations

import doctest

import numpy as np

from bids_brainage.stats import intervals
from bids_brainage.training import crossval
from bids_brainage.training.crossval import Member, fit_ensemble, nested_cv, summarise


def test_doctests():
    assert doctest.testmod(crossval).failed == 0
    assert doctest.testmod(intervals).failed == 0


class Memoriser:
    """Predicts the age it was trained with for a row it saw, the training mean otherwise:
    its held-out error is zero only if a held-out row leaked into training."""

    def __init__(self, x, y):
        self.seen = {float(row[0]): age for row, age in zip(x, y)}
        self.mean = float(np.mean(y))

    def predict(self, x):
        return np.array([self.seen.get(float(row[0]), self.mean) for row in x])


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 80, n)
    x = np.column_stack([ages + rng.normal(0, 5, n), rng.normal(0, 1, (n, 3))])
    return ages, x


def _linear(x, y):
    from sklearn.linear_model import LinearRegression

    return LinearRegression().fit(x, y)


def test_outer_folds_never_see_their_images():
    ages, _ = _data()
    ids = np.arange(len(ages), dtype=float)[:, None]  # a unique key per image
    result = nested_cv([Member("memo", ids, Memoriser)], ages, k=4, repeats=2, inner_k=3,
                       seed=1, progress=False)
    predicted = result["predictions"]["memo"]
    assert not np.isnan(predicted).any()
    # every outer prediction is a training mean, never the image's own age
    assert np.all(np.abs(predicted - ages) > 1e-9)


def test_participants_stay_in_one_fold():
    ages, x = _data(60)
    groups = np.repeat(np.arange(30), 2)  # two sessions per participant
    ids = np.arange(60, dtype=float)[:, None]
    # a participant's other session is in training if folds split it: the memoriser would then
    # still not know this row; so check the folds directly
    for fold in crossval.group_folds(ages, groups, 5, seed=3):
        inside = set(groups[fold])
        outside = set(groups[np.setdiff1d(np.arange(60), fold)])
        assert not inside & outside
    result = nested_cv([Member("lin", x, _linear)], ages, groups, k=5, repeats=1, inner_k=3,
                       progress=False)
    assert not np.isnan(result["predictions"]["lin"]).any()
    assert ids.shape[0] == result["predictions"]["lin"].shape[1]


def test_ensemble_weights_prefer_the_better_member():
    ages, x = _data(150)
    rng = np.random.default_rng(5)
    noisy = x.copy()
    noisy[:, 0] = ages + rng.normal(0, 15, len(ages))
    fitted = fit_ensemble([Member("good", x, _linear), Member("bad", noisy, _linear)], ages,
                          k=5, seed=0)
    assert fitted.weights["good"] > fitted.weights["bad"]
    assert abs(sum(fitted.weights.values()) - 1) < 1e-9


def test_intervals_cover_about_ninety_percent_and_follow_the_bias():
    ages, x = _data(600, seed=2)
    result = nested_cv([Member("lin", x, _linear)], ages, k=5, repeats=1, inner_k=5,
                       progress=False)
    summary = summarise(result, "ensemble")
    assert 0.85 <= summary["coverage"] <= 0.95
    # a model shrunk towards the mean: residuals of low predictions are negative-leaning
    predicted = 0.6 * ages + 0.4 * ages.mean() + np.random.default_rng(0).normal(0, 3, 600)
    calib = intervals.calibrate_interval(predicted, ages)
    low, high = intervals.apply_interval(calib, np.array([predicted.min(), predicted.max()]))
    # the interval of the lowest prediction reaches further down than up, and vice versa
    assert predicted.min() - low[0] > high[0] - predicted.min()
    assert high[1] - predicted.max() > predicted.max() - low[1]
