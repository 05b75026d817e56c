"""The metric functions against scipy / scikit-learn, and the age-bias correction."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from bids_brainage.stats import metrics


@pytest.fixture(params=[0, 1, 2])
def cohort(request):
    """Seeded ages and predictions with the usual regression to the mean."""
    rng = np.random.default_rng(request.param)
    n = [12, 150, 1000][request.param]
    age = rng.uniform(20, 85, n)
    predicted = 0.7 * age + 15 + rng.normal(0, 5, n)
    return age, predicted


def test_doctests():
    assert doctest.testmod(metrics).failed == 0


def test_errors_match_scikit_learn(cohort):
    age, predicted = cohort
    assert metrics.mae(age, predicted) == pytest.approx(skm.mean_absolute_error(age, predicted))
    assert metrics.rmse(age, predicted) == pytest.approx(
        np.sqrt(skm.mean_squared_error(age, predicted)))
    assert metrics.r2(age, predicted) == pytest.approx(skm.r2_score(age, predicted))


def test_pearson_matches_scipy(cohort):
    age, predicted = cohort
    ours = metrics.pearson_r(age, predicted)
    theirs = stats.pearsonr(age, predicted)
    assert ours.r == pytest.approx(theirs.statistic, rel=1e-12)
    assert ours.p == pytest.approx(theirs.pvalue, rel=1e-6, abs=1e-300)
    ci = theirs.confidence_interval(0.95)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    ours90 = metrics.pearson_r(age, predicted, confidence=0.90)
    ci90 = theirs.confidence_interval(0.90)
    assert (ours90.ci_low, ours90.ci_high) == pytest.approx((ci90.low, ci90.high), rel=1e-9)
    assert ours.n == age.size


def test_pearson_p_of_a_weak_correlation_matches_scipy():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=30), rng.normal(size=30)
    assert metrics.pearson_r(x, y).p == pytest.approx(stats.pearsonr(x, y).pvalue, rel=1e-9)


def test_bias_fit_matches_linregress(cohort):
    age, predicted = cohort
    slope, intercept = metrics.fit_age_bias(age, predicted)
    fit = stats.linregress(age, predicted)
    assert (slope, intercept) == pytest.approx((fit.slope, fit.intercept), rel=1e-10)


def test_bias_correction_removes_the_linear_age_dependence():
    rng = np.random.default_rng(42)
    age = rng.uniform(20, 85, 2000)
    predicted = 0.6 * age + 22 + rng.normal(0, 4, age.size)
    raw_gap = metrics.brain_age_gap(predicted, age)
    assert metrics.pearson_r(age, raw_gap).r < -0.7  # the bias is there to start with
    slope, intercept = metrics.fit_age_bias(age, predicted)
    corrected_gap = metrics.corrected_brain_age_gap(predicted, age, slope, intercept)
    assert abs(metrics.pearson_r(age, corrected_gap).r) < 1e-10
    assert abs(corrected_gap.mean()) < 1e-9
    # the corrected predictions lie on the identity line
    assert metrics.fit_age_bias(age, metrics.correct_age_bias(predicted, slope, intercept)) == \
        pytest.approx((1.0, 0.0), abs=1e-9)


def test_bias_line_from_other_data_also_removes_the_dependence():
    """As with coefficients from a model card: fitted on validation data, applied to a cohort."""
    rng = np.random.default_rng(3)
    val_age = rng.uniform(20, 85, 500)
    slope, intercept = metrics.fit_age_bias(val_age, 0.6 * val_age + 22 + rng.normal(0, 4, 500))
    age = rng.uniform(30, 80, 800)
    predicted = 0.6 * age + 22 + rng.normal(0, 4, age.size)
    corrected_gap = metrics.corrected_brain_age_gap(predicted, age, slope, intercept)
    assert abs(metrics.pearson_r(age, corrected_gap).r) < 0.1
    assert abs(metrics.pearson_r(age, metrics.brain_age_gap(predicted, age)).r) > 0.5


def test_undefined_cases_are_nan_not_errors():
    assert np.isnan(metrics.mae([], []))
    assert np.isnan(metrics.r2([40.0], [41.0]))
    assert np.isnan(metrics.r2([40.0, 40.0], [41.0, 39.0]))
    assert np.isnan(metrics.pearson_r([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]).r)
    two = metrics.pearson_r([1.0, 2.0], [2.0, 1.0])
    assert two.r == pytest.approx(-1.0) and np.isnan(two.p) and np.isnan(two.ci_low)
    perfect = metrics.pearson_r([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0])
    assert perfect.r == 1.0 and perfect.p == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="different length"):
        metrics.mae([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="two different ages"):
        metrics.fit_age_bias([40, 40], [41, 39])
    with pytest.raises(ValueError, match="cannot be inverted"):
        metrics.correct_age_bias([40.0], 0.0, 10.0)


def test_finite_pairs_drops_missing_values_pairwise():
    x, y = metrics.finite_pairs([1, np.nan, 3, 4], [5, 6, np.nan, 8])
    assert x.tolist() == [1, 4] and y.tolist() == [5, 8]
