"""Tissue features: segmentation, warp and modulation (bids_brainage.features.tissue)."""
from __future__ import annotations

import doctest

import numpy as np
import pytest

from bids_brainage.features import tissue
from bids_brainage.preproc.template import template_2mm, template_mask


def test_doctests():
    assert doctest.testmod(tissue).failed == 0


def _template_brain():
    """The template on the 2 mm grid as if it were a subject: brain and mask."""
    tpl = template_2mm()
    return tpl.get_fdata(dtype=np.float32), template_mask(tpl)


def test_priors_sum_to_one_and_favour_the_right_class():
    priors = tissue.tissue_priors()
    assert np.allclose(priors.sum(axis=0), 1.0, atol=1e-5)
    data, mask = _template_brain()
    # the template's brightest brain voxels are white matter, its darkest inside the brain CSF
    bright = mask & (data > np.percentile(data[mask], 95))
    assert priors[2][bright].mean() > 0.6
    assert priors[1][mask].sum() > priors[0][mask].sum()


def test_segmentation_of_the_template_matches_its_priors():
    data, mask = _template_brain()
    post, info = tissue.segment(data, mask, fractions=False)
    assert info["ordered"]
    priors = tissue.tissue_priors()
    for k in (1, 2):  # GM, WM: the template's own maps are the best reference we ship
        a, b = post[k][mask], priors[k][mask]
        assert np.corrcoef(a, b)[0, 1] > 0.8


def test_segmentation_ignores_scale_and_gamma():
    data, mask = _template_brain()
    post, _ = tissue.segment(data, mask)
    changed, _ = tissue.segment(10 * data ** 0.8, mask)
    assert np.abs(changed - post).max() < 1e-3


def test_tight_strip_leaves_white_matter_and_bounds_grey_matter():
    """Removing the dark voxels (sulcal CSF, ventricles) from the mask: the posteriors of GM
    and WM stay; the fractions keep WM, and GM moves only where voxels were part CSF (the
    CSF mean is estimated from the darkest voxels left: measured 0.077, the gate's 'tight'
    variant measures what that does to an age)."""
    data, mask = _template_brain()
    post, _ = tissue.segment(data, mask, fractions=False)
    csf_like = post[0] > 0.5
    inside = mask & ~csf_like
    tight, _ = tissue.segment(np.where(csf_like, 0, data), inside, fractions=False)
    for k in (1, 2):
        assert np.abs(tight[k][inside] - post[k][inside]).mean() < 0.05
    frac, _ = tissue.segment(data, mask)
    tight_frac, _ = tissue.segment(np.where(csf_like, 0, data), inside)
    assert np.abs(tight_frac[2][inside] - frac[2][inside]).mean() < 0.02
    assert np.abs(tight_frac[1][inside] - frac[1][inside]).mean() < 0.1


@pytest.mark.slow
def test_template_warped_to_itself_has_no_volume_change():
    """The template segmented as the warp's target is (posteriors) maps onto it by the
    identity; segmented as a subject is (fractions, blurrier edges) it is warped locally (mean
    |log-Jacobian| 0.14 measured) but with no net change of volume."""
    data, mask = _template_brain()
    _, feature_mask = tissue._fixed()
    post, _ = tissue.segment(data, mask, fractions=False)
    assert np.abs(tissue.warp_tissue(post)["logjac"][feature_mask]).mean() < 0.05
    frac, _ = tissue.segment(data, mask)
    assert abs(tissue.warp_tissue(frac)["logjac"][feature_mask].mean()) < 0.03


@pytest.mark.slow
def test_a_shrunken_brain_has_negative_log_jacobians():
    """A brain 8 % smaller than the template needs the template shrunk: log-Jacobian < 0
    (warp of the template onto the subject: volume of subject per template volume)."""
    from scipy import ndimage

    data, mask = _template_brain()
    centre = np.array(data.shape) / 2
    zoom = 1 / 0.92  # sample the template further out: the brain looks 8 % smaller
    matrix = np.eye(3) * zoom
    offset = centre - matrix @ centre
    small = ndimage.affine_transform(data, matrix, offset, order=1)
    small_mask = ndimage.affine_transform(mask.astype(np.float32), matrix, offset, order=0) > 0.5
    post, _ = tissue.segment(small, small_mask)
    maps = tissue.warp_tissue(post)
    _, feature_mask = tissue._fixed()
    assert maps["logjac"][feature_mask].mean() < -0.05


def test_unmodulated_maps_are_the_modulated_before_the_jacobian():
    """The warp gives the warped fractions (tissue concentration) and those times the
    Jacobian (tissue volume); a spec's ``maps`` picks them, in its order, each smoothed and
    read inside the template brain as the modulated ones; without ``maps`` only GM and WM."""
    from scipy import ndimage

    data, mask = _template_brain()
    centre = np.array(data.shape) / 2
    matrix = np.eye(3) * 1.05  # a brain 5 % smaller than the template's: Jacobian not 1
    offset = centre - matrix @ centre
    moved = ndimage.affine_transform(data, matrix, offset, order=1)
    moved_mask = ndimage.affine_transform(mask.astype(np.float32), matrix, offset, order=0) > 0.5
    post, _ = tissue.segment(moved, moved_mask)
    maps = tissue.warp_tissue(post)
    jac = np.exp(maps["logjac"])
    for k in ("gm", "wm", "csf"):
        assert np.array_equal(maps[k], maps[f"{k}_unmodulated"] * jac)
    _, inside = tissue._fixed()
    assert maps["logjac"][inside].mean() < -0.02
    # the CSF fractions ride on the warp of GM and WM: the same warp, applied to CSF
    assert 0.02 < maps["csf_unmodulated"][inside].mean() < maps["gm_unmodulated"][inside].mean()

    default = tissue.tissue_features(moved, moved_mask)
    every = tissue.tissue_features(moved, moved_mask, maps=tissue.MAPS)
    n = int(tissue.feature_mask().sum())
    assert default.size == 2 * n and every.size == 6 * n
    assert np.array_equal(every[: 2 * n], default)
    # concentration: larger than volume where the brain had to be enlarged onto the template
    assert every[2 * n:3 * n].mean() > every[:n].mean()
    wm_only = tissue.tissue_features(moved, moved_mask, maps=("wm_unmodulated",))
    assert np.array_equal(wm_only, every[3 * n:4 * n])
    with pytest.raises(ValueError, match="maps must be some of"):
        tissue.feature_maps({"feature": "tissue", "maps": ["logjac"]})


def test_warp_with_threads_in_its_own_process_gives_the_same_numbers():
    """The warp's update is voxelwise: with two ITK threads, in the helper process, its maps
    are the same to the bit as in this process; a helper that dies is replaced by this
    process, with the same numbers again; stopping leaves no process behind."""
    from scipy import ndimage

    data, mask = _template_brain()
    centre = np.array(data.shape) / 2
    matrix = np.eye(3) * 1.05  # a brain 5 % smaller than the template's
    offset = centre - matrix @ centre
    moved = ndimage.affine_transform(data, matrix, offset, order=1)
    moved_mask = ndimage.affine_transform(mask.astype(np.float32), matrix, offset, order=0) > 0.5
    post, _ = tissue.segment(moved, moved_mask)
    from bids_brainage import helper

    here = tissue.warp_tissue(post, threads=1)
    try:
        process = helper.helper(2).process
        there = tissue.warp_tissue(post, threads=2)
        for key in ("gm", "wm", "logjac"):
            assert np.array_equal(here[key], there[key]), key
        process.kill()
        process.wait()
        again = tissue.warp_tissue(post, threads=2)  # the dead helper: warped here instead
        assert np.array_equal(here["gm"], again["gm"])
        assert 2 not in helper._helpers
        helper.helper(2)
    finally:
        processes = [h.process for h in helper._helpers.values()]
        helper.stop_helpers()
    assert all(p.poll() is not None for p in processes) and not helper._helpers


def test_predictions_with_threads_equal_those_without():
    """predict_ages begins the tissue warp in its helper and does the forest's work
    meanwhile: the rows, the reliability and the contribution map are those of one thread."""
    from bids_brainage.models.predict import predict_ages
    from bids_brainage.models.registry import default_models, load_cards

    data, mask = _template_brain()
    data = data * 1000.0 / data[mask].mean()
    cards = load_cards()
    names = default_models(cards)
    assert any((cards[n].get("input") or {}).get("feature") == "tissue" for n in names)
    try:
        one = predict_ages(data, mask, cards, names, threads=1, age=40.0, explain=True)
        two = predict_ages(data, mask, cards, names, threads=2, age=40.0, explain=True)
    finally:
        from bids_brainage.helper import stop_helpers

        stop_helpers()
    assert one[0] == two[0]
    assert one[1]["reliability"] == two[1]["reliability"]
    a, b = one[1]["contributions"], two[1]["contributions"]
    assert np.array_equal(a.pop("map"), b.pop("map")) and a == b


def test_features_begun_by_the_registration_are_taken_over_by_the_prediction():
    """The registration step begins the tissue features of its MNI brain; a prediction of the
    same brain (equal arrays, not the same objects) takes them over, with the numbers of one
    thread; another brain is computed for itself."""
    from bids_brainage.helper import stop_helpers
    from bids_brainage.models.predict import predict_ages
    from bids_brainage.models.registry import default_models, load_cards

    data, mask = _template_brain()
    data = data * 1000.0 / data[mask].mean()
    cards = load_cards()
    names = default_models(cards)
    try:
        one = predict_ages(data, mask, cards, names, threads=1)
        tissue.begin_tissue_features(data, mask, threads=2)
        assert len(tissue._BEGUN) == 1
        two = predict_ages(data.copy(), mask.copy(), cards, names, threads=2)
        assert not tissue._BEGUN  # taken over
        tissue.begin_tissue_features(data * 1.01, mask, threads=2)  # another brain
        direct = tissue.tissue_features(data, mask, threads=1)
        assert np.array_equal(tissue.tissue_features(data, mask, threads=2), direct)
        assert len(tissue._BEGUN) == 1
        tissue.begin_tissue_features(data, mask, threads=1)  # one thread: nothing begun
        assert len(tissue._BEGUN) == 1
    finally:
        tissue._BEGUN.clear()
        stop_helpers()
    assert one[0] == two[0]


def test_each_model_reports_its_raw_output_through_its_recalibration_line():
    """Every bundled card carries the line fitted on its out-of-fold predictions; a member's
    age is its raw output through its line, the ensemble's is its weighted members' ages
    through its own (cards without lines, as earlier releases wrote, give the raw output)."""
    import copy

    from bids_brainage.models.predict import predict_ages
    from bids_brainage.models.registry import default_models, load_cards

    data, mask = _template_brain()
    data = data * 1000.0 / data[mask].mean()
    cards = load_cards()
    names = default_models(cards)
    plain = copy.deepcopy(cards)
    for card in plain.values():
        card.pop("recalibration")
    ages = {r["model"]: r["predicted_age"] for r in predict_ages(data, mask, cards, names)[0]}
    raw = {r["model"]: r["predicted_age"] for r in predict_ages(data, mask, plain, names)[0]}
    assert any(abs(cards[n]["recalibration"]["slope"] - 1) > 0.02 for n in names)
    for name in names:
        line = cards[name]["recalibration"]
        if cards[name].get("kind") == "ensemble":
            before = sum(w * ages[m] for m, w in cards[name]["members"].items())
        else:
            before = raw[name]
        assert abs(ages[name] - (line["intercept"] + line["slope"] * before)) < 0.01
