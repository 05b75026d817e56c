"""The reliability reasons: the contrast reason's calibration and judgement, on tiny arrays and
on a real example brain whose grey/white contrast is lowered as a 1.5 T scanner lowers it."""
from __future__ import annotations

import doctest

import numpy as np
import pytest

from bids_brainage.models import reliability


def test_doctests():
    assert doctest.testmod(reliability).failed == 0


def pool(n=200, seed=0):
    """A pool whose contrast rises a little with age (as the IXI pool's does), sd 0.25."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 80, n)
    return ages, 2.8 + 0.003 * ages + rng.normal(0, 0.25, n)


def calibrated(ages, values):
    folds = np.array_split(np.arange(len(ages)), 5)
    z = reliability.held_out_contrast_z(values, ages, folds)
    return z, reliability.calibrate(
        spreads=None, distances=np.ones(len(ages)), ages=ages, dice=np.full(len(ages), 0.95),
        volume_ratio=np.full(len(ages), 1.08), distance_model=None, contrast=values,
        contrast_z=z)


def test_the_line_and_the_two_sided_limits_come_from_the_pool():
    ages, values = pool()
    z, card = calibrated(ages, values)
    line = card["contrast"]
    assert line["slope"] == pytest.approx(0.003, abs=0.002)
    assert line["sd"] == pytest.approx(0.25, abs=0.03)
    low, high = line["z_range"]
    assert -3 < low < -1.5 and 1.5 < high < 3  # 1.25 % and 98.75 % of held-out z-scores
    outside = np.mean((z < low) | (z > high))
    assert 0.01 <= outside <= 0.05  # about 2.5 % of the pool's own images, no more than 5 %


def judge(card, contrast, age):
    return reliability.assess(
        card, spread=None, features=None, predicted={"ensemble": age}, age=None,
        measures={"registration_dice": 0.95, "mask_volume_ratio": 1.08},
        contrast=contrast, contrast_age=age)


def test_contrast_unlike_the_pool_is_flagged_on_either_side_and_typical_is_not():
    ages, values = pool()
    _, card = calibrated(ages, values)
    line = card["contrast"]
    at = lambda age: line["intercept"] + line["slope"] * age  # noqa: E731
    ok = judge(card, at(50), 50)
    assert ok["reasons"] == [] and abs(ok["quantities"]["tissue_contrast_z"]) < 0.01
    low_contrast = judge(card, at(50) + 4 * line["sd"], 50)  # grey close to white
    high_contrast = judge(card, at(30) - 4 * line["sd"], 30)
    assert low_contrast["reasons"] == ["unusual_contrast"]
    assert high_contrast["reasons"] == ["unusual_contrast"]
    assert low_contrast["quantities"]["tissue_contrast_z"] == pytest.approx(4, abs=0.01)
    # classes out of order (no grey/white contrast to measure) are flagged, not passed
    assert "unusual_contrast" in judge(card, float("nan"), 50)["reasons"]
    # a predicted age beyond the pool's is placed at its end of the line, not extrapolated
    assert judge(card, at(ages.max()), 120)["quantities"]["tissue_contrast_z"] == \
        pytest.approx(0, abs=0.01)
    # a card from before the reason (no contrast block) judges nothing
    older = {k: v for k, v in card.items() if k != "contrast"}
    assert "tissue_contrast_z" not in judge(older, at(50) + 9, 50)["quantities"]


@pytest.mark.slow
def test_a_real_brain_with_lowered_contrast_is_flagged_by_the_bundled_card(example_run):
    """An example IXI brain (IXI354, 45.6 y) on the MNI grid, as prediction sees it, before
    and after the robustness gate's 1.5 T-like contrast change (grey/white contrast × 0.6):
    its spacing rises past the bundled card's limit (z 0.3 → 4.6 against +2.1), and the
    original sits inside it."""
    from bids_brainage.models.registry import load_cards
    from bids_brainage.training.dataset import Subject, load_mni
    from bids_brainage.training.robustness import lower_contrast

    _, out, _ = example_run
    anat = out / "sub-IXI354" / "anat"
    mni, mask = load_mni(Subject("sub-IXI354", 0.0, "sub-IXI354", anat))
    card = load_cards()["ensemble"]["reliability"]
    assert "contrast" in card, "the bundled card has no contrast limits: retrain"
    before = reliability.tissue_contrast(mni, mask)
    after = reliability.tissue_contrast(lower_contrast(mni, mask), mask)
    assert after > before + 0.5
    line, age = card["contrast"], 45.62  # IXI354's age (examples/ds-ixi3/participants.tsv)
    z_before, z_after = (reliability.contrast_z(line, v, age) for v in (before, after))
    low, high = line["z_range"]
    assert low <= z_before <= high and z_after > high


def test_the_contrast_reuses_the_tissue_features_segmentation():
    """The contrast is read from the segmentation the tissue features made of this brain (no
    second EM), and the class means are the same whether that one made fractions or not."""
    from bids_brainage.features import tissue

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, (10, 10, 10))
    img = np.choose(truth, [0.25, 0.6, 1.0]) * np.exp(rng.normal(0, 0.02, truth.shape))
    mask = np.ones(truth.shape, bool)
    priors = np.full((3,) + truth.shape, 1 / 3, np.float32)
    _, with_fractions = tissue.segment(img, mask, priors)
    _, posteriors = tissue.segment(img, mask, priors, fractions=False)
    assert with_fractions == posteriors
    key = tissue._content_key(img, mask)
    tissue._keep(tissue._SEGMENTED, key, with_fractions)  # as the tissue features leave it
    try:
        assert tissue.segment_info(img.astype(np.float32), mask) is with_fractions
        # no priors: the template's, which do not fit this grid, so the value can only
        # come from the remembered segmentation
        assert reliability.tissue_contrast(img, mask) == pytest.approx(
            reliability.tissue_contrast(img, mask, priors))
    finally:
        tissue._SEGMENTED.pop(key, None)


def test_an_image_whose_classes_are_not_ordered_takes_no_part_in_the_line():
    ages, values = pool()
    line = reliability.fit_contrast(values, ages)
    with_nan = reliability.fit_contrast(np.append(values, np.nan), np.append(ages, 50.0))
    assert with_nan == line
