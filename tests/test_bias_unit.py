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
