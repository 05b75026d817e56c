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

    def __init__(self, x, y, groups=None):
        self.seen = {float(row[0]): age for row, age in zip(x, y)}
        self.mean = float(np.mean(y))

    def predict(self, x):
        return np.array([self.seen.get(float(row[0]), self.mean) for row in x])


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 80, n)
    x = np.column_stack([ages + rng.normal(0, 5, n), rng.normal(0, 1, (n, 3))])
    return ages, x


def _linear(x, y, groups=None):
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


def test_copies_train_but_never_leak():
    """Augmented copies join training with their image and are never scored: a memoriser
    that knows every training copy still cannot know a held-out image."""
    ages, _ = _data(60)
    ids = np.arange(len(ages), dtype=float)[:, None]
    member = Member("memo", ids, Memoriser, copies=np.vstack([ids, ids]),
                    copy_of=np.tile(np.arange(len(ages)), 2))
    result = nested_cv([member], ages, k=4, repeats=2, inner_k=3, seed=1, progress=False)
    predicted = result["predictions"]["memo"]
    assert predicted.shape == (2, len(ages)) and not np.isnan(predicted).any()
    assert np.all(np.abs(predicted - ages) > 1e-9)
    # the copies are training rows: a fit on half the images sees each of them three times
    rows = np.arange(30)
    x, y, groups = member.training(rows, ages, np.arange(len(ages)))
    assert len(x) == 90 and set(groups) == set(rows)
    assert np.array_equal(np.sort(y), np.sort(np.tile(ages[rows], 3)))


def test_ridge_penalty_with_copies_is_chosen_by_groups():
    """Leave-one-out with copies in the data leaves a copy of the held-out row in training
    and picks the smallest penalty; folds of participants do not."""
    from bids_brainage.models import forest

    assert doctest.testmod(forest).failed == 0
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 400))
    y = x[:, :5].sum(1) + rng.normal(0, 3, 60)
    doubled, target = np.vstack([x, x + rng.normal(0, .01, x.shape)]), np.r_[y, y]
    groups = np.r_[np.arange(60), np.arange(60)]
    loo = forest.train_ridge(doubled, target)[-1].alpha_
    grouped = forest.train_ridge(doubled, target, groups)[-1].alpha
    assert loo == forest.RIDGE_ALPHAS[0] and grouped > 10 * loo
    # one row per group: the same model as before (leave-one-out)
    same = forest.train_ridge(x, y, np.arange(60))
    assert np.allclose(same[-1].coef_, forest.train_ridge(x, y)[-1].coef_)


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


def test_local_interval_follows_the_errors_near_each_prediction_and_survives_json():
    """The half-width is the conformal quantile of the errors of images predicted within the
    window: with errors three times larger above 50, intervals there are wider, and no
    side's coverage on new data falls below 85 %; the card's JSON gives the same interval; a
    card of the previous method (normalised, ``q``) still applies."""
    import json

    rng = np.random.default_rng(3)

    def draw(n):
        age = rng.uniform(20, 80, n)
        return age, age + rng.normal(0, np.where(age > 50, 9.0, 3.0))

    age, pred = draw(300)
    calib = intervals.calibrate_interval(pred, age)
    assert "local" in calib and len(calib["local"]["predicted"]) == 300
    new_age, new_pred = draw(3000)
    low, high = intervals.apply_interval(calib, new_pred)
    inside = (new_age >= low) & (new_age <= high)
    older = new_age > 55
    young = new_age < 45
    assert (high - low)[older].mean() > 1.3 * (high - low)[young].mean()  # measured 1.47
    # measured 0.92 overall; 0.87 above 55 and 0.97 below 45 (a young prediction's window
    # reaches people whose errors are larger)
    assert 0.87 <= inside.mean() <= 0.95
    for part in (older, young):
        assert inside[part].mean() >= 0.85
    again = json.loads(json.dumps(calib))
    assert np.array_equal(intervals.apply_interval(again, new_pred[:50])[0], low[:50])
    old = intervals.calibrate_normalised(pred, age)
    lo, hi = intervals.apply_interval(old, new_pred[:5])
    assert "q" in old and np.all(hi > lo)


def test_extra_rows_train_every_fit_and_are_never_scored():
    """Other sites' rows (``extra_x``) are training rows of every fit, inner and outer, and
    are never predicted; the ensemble can combine a subset of the members."""
    ages, x = _data(60)
    ids = np.arange(len(ages), dtype=float)[:, None]
    extra = np.arange(1000, 1010, dtype=float)[:, None]
    member = Member("memo", ids, Memoriser, extra_x=extra, extra_y=np.full(10, 99.0))
    x_, y_, g_ = member.training(np.arange(5), ages, np.arange(len(ages)))
    assert len(x_) == 15 and np.sum(y_ == 99.0) == 10 and len(set(g_)) == 15
    seen = []

    class Recorder(Memoriser):
        def __init__(self, x, y, groups=None):
            seen.append(set(float(r[0]) for r in x))
            super().__init__(x, y, groups)

    member.fit = Recorder
    result = nested_cv([member, Member("lin", x, _linear)], ages, k=3, repeats=1, inner_k=3,
                       seed=0, progress=False, ensemble=["lin"])
    assert all(set(extra[:, 0]) <= s for s in seen)  # every fit had them
    assert result["predictions"]["memo"].shape == (1, len(ages))  # scored: the images only
    assert np.all(np.abs(result["predictions"]["memo"] - ages) > 1e-9)
    # the ensemble is the one member it was asked to combine
    assert all(w == {"lin": 1.0} for w in result["weights"])
    assert np.allclose(result["predictions"]["ensemble"], result["predictions"]["lin"])


class Shrunk:
    """A model that regresses to the mean as a penalised fit does: 0.6 x the linear fit's
    prediction plus 0.4 x the training mean."""

    def __init__(self, x, y, groups=None):
        self.fit, self.mean = _linear(x, y), float(np.mean(y))

    def predict(self, x):
        return 0.6 * self.fit.predict(x) + 0.4 * self.mean


def test_recalibration_undoes_the_regression_to_the_mean_on_new_data():
    """Each member's line (age on its inner out-of-fold prediction) and the ensemble's are
    fitted inside the training rows; on held-out rows the recalibrated ages are closer and
    no longer shrunk, and the line is what the card keeps."""
    ages, x = _data(300, seed=3)
    train, test = np.arange(200), np.arange(200, 300)
    members = [Member("shrunk", x, Shrunk), Member("lin", x, _linear)]
    fitted = fit_ensemble(members, ages, train, k=5, seed=0)
    line = fitted.lines["shrunk"]
    assert 1.5 < line["slope"] < 1.8          # 1 / 0.6, up to the noise the fit keeps out
    raw = fitted.models["shrunk"].predict(x[test])
    out = fitted.predict(members, test)
    assert np.allclose(out["shrunk"], line["intercept"] + line["slope"] * raw)
    assert np.mean(np.abs(out["shrunk"] - ages[test])) < np.mean(np.abs(raw - ages[test]))
    assert abs(np.polyfit(ages[test], out["shrunk"], 1)[0] - np.polyfit(
        ages[test], out["lin"], 1)[0]) < 0.1
    # the ensemble is its convex combination of recalibrated ages through its own line
    mix = sum(w * out[n] for n, w in fitted.weights.items())
    e = fitted.lines["ensemble"]
    assert np.allclose(out["ensemble"], e["intercept"] + e["slope"] * mix)
    # its inner out-of-fold predictions, which the intervals are calibrated on, are too
    assert abs(np.polyfit(fitted.oof["shrunk"], ages[train], 1)[0] - 1) < 1e-4
    # --no-recalibration: no lines, the raw outputs throughout
    plain = fit_ensemble(members, ages, train, k=5, seed=0, recalibrate=False)
    assert all(line is None for line in plain.lines.values())
    assert np.allclose(plain.predict(members, test)["shrunk"], raw)
