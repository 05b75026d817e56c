"""The log-spread that scales N4's fit: what it must and must not respond to (tiny arrays)."""
from __future__ import annotations

import numpy as np
import pytest

from bids_brainage.preproc.bias import log_spread


@pytest.fixture
def brain():
    rng = np.random.default_rng(0)
    shape = (40, 40, 40)
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    mask = sum((g - 20.0) ** 2 for g in grid) < 17 ** 2
    # two "tissues" in 4-voxel blocks plus noise, in log units
    tissue = ((grid[0] // 4 + grid[1] // 4 + grid[2] // 4) % 2).astype(float)
    logs = 6.0 + 0.3 * tissue + 0.05 * rng.standard_normal(shape)
    return logs, mask


def test_log_spread_scales_with_a_contrast_change(brain):
    logs, mask = brain
    base = log_spread(logs, mask, (2.0, 2.0, 2.0))
    assert log_spread(0.8 * logs, mask, (2.0, 2.0, 2.0)) == pytest.approx(0.8 * base, rel=1e-6)
    assert log_spread(logs + np.log(10), mask, (2.0, 2.0, 2.0)) == pytest.approx(base, rel=1e-6)


def test_log_spread_ignores_a_smooth_bias_field(brain):
    logs, mask = brain
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in logs.shape], indexing="ij")
    field = 0.25 * grid[0] - 0.15 * grid[1] ** 2 + 0.2 * grid[2] * grid[0]
    base = log_spread(logs, mask, (2.0, 2.0, 2.0))
    assert log_spread(logs + field, mask, (2.0, 2.0, 2.0)) == pytest.approx(base, rel=0.05)


def test_n4_gives_the_same_field_with_any_thread_count(brain):
    """The fit runs on one thread; the field's evaluation on the threads given, voxel by
    voxel: the corrected image is the same to the bit."""
    import nibabel as nib

    from bids_brainage.preproc.bias import n4_correct

    logs, mask = brain
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in logs.shape], indexing="ij")
    head = np.exp(logs + 0.2 * grid[0] - 0.1 * grid[1] * grid[2]).astype(np.float32)
    img = nib.Nifti1Image(head, np.diag([1.0, 1.0, 1.0, 1.0]))
    one, field_one = n4_correct(img, mask, threads=1)
    two, field_two = n4_correct(img, mask, threads=2)
    assert np.array_equal(field_one, field_two)
    assert np.array_equal(np.asarray(one.dataobj), np.asarray(two.dataobj))
    assert not np.allclose(field_one, 1.0)
