"""Deformation features: rank normalisation, the SyN log-Jacobian and their invariances."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bids_brainage.features import morphometry as mo
from bids_brainage.preproc.template import template_2mm, template_mask


def test_rank_normalise_ignores_monotonic_changes_and_the_outside():
    rng = np.random.default_rng(0)
    x = rng.gamma(3, 30, size=(6, 7, 8)).astype(np.float32)
    mask = x > 40
    ranks = mo.rank_normalise(x, mask)
    assert (ranks[~mask] == 0).all()
    assert 0 < ranks[mask].min() and ranks[mask].max() < 1
    assert np.isclose(ranks[mask].mean(), 0.5)
    for changed in (x ** 0.8, x ** 1.25, x * 10, np.log(x) + 3):
        assert np.array_equal(mo.rank_normalise(changed, mask), ranks)


def test_block_mean_pads_and_averages():
    x = np.ones((5, 4, 3), np.float32)
    out = mo.block_mean(x, 2)
    assert out.shape == (3, 2, 2)
    assert out[0, 0, 0] == 1 and out[2, 0, 0] == 0.5  # half of the last block is padding


def _zoomed(factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The 2 mm template brain scaled by ``factor`` about the grid centre."""
    data = template_2mm().get_fdata(dtype=np.float32)
    centre = (np.array(data.shape) - 1) / 2
    matrix = np.eye(3) / factor
    out = ndimage.affine_transform(data, matrix, offset=centre - matrix @ centre, order=1)
    return out, out > 0.2 * 255


@pytest.fixture(scope="module")
def template_brain():
    tpl = template_2mm()
    return tpl.get_fdata(dtype=np.float32), template_mask(tpl)


def test_log_jacobian_measures_local_volume(template_brain):
    from bids_brainage.models.predict import model_region

    data, mask = template_brain
    inside = mo._fixed()[1]
    region = model_region(mask, {"region": "template", "erode": mo.REGION_ERODE})
    same = mo.log_jacobian(data, region)
    assert abs(float(same[inside].mean())) < 0.02
    whole = float(mo.log_jacobian(data, mask)[inside].mean())
    bigger, smaller = (float(mo.log_jacobian(*_zoomed(f))[inside].mean()) for f in (1.08, 0.92))
    # a larger brain maps the template's voxels onto more volume: positive log-Jacobian
    assert bigger > whole + 0.05 and smaller < whole - 0.05


def test_features_are_the_same_for_any_contrast_change(template_brain):
    data, mask = template_brain
    base = mo.morphometry_features(data, mask)
    assert base.shape == (2 * int(mo._fixed()[2].sum()),) and np.isfinite(base).all()
    changed = np.where(mask, np.clip(data, 1e-3, None) ** 0.8 * 10, 0)
    assert np.array_equal(mo.morphometry_features(changed, mask), base)


def test_morphometry_input_must_use_the_region_its_target_was_built_on():
    from bids_brainage.models.predict import model_inputs

    tpl = template_2mm()
    data = tpl.get_fdata(dtype=np.float32)
    with pytest.raises(ValueError, match="erode"):
        model_inputs(data, template_mask(tpl), {"feature": "morphometry", "region": "template",
                                                "erode": mo.REGION_ERODE + 1})
