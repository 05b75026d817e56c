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
