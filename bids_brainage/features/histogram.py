"""Hand-made features: the original project's 100-bin intensity histogram.

The histogram is taken on the fixed 2 mm MNI grid inside the registered brain mask, so it
does not depend on the input's voxel size (DESIGN.md, "Resolution").
"""
from __future__ import annotations

import numpy as np

HIST_BINS = 100
# Ranges per normalisation: gmm and twopoint as the original rep2/rep4 features.
HIST_RANGE = {
    "gmm": (0.0, 1.5),
    "fcm": (0.0, 1.5),
    "twopoint": (0.2, 1.5),
    "whitestripe": (-35.0, 15.0),
    "zscore": (-4.0, 3.0),
    # log intensities, CSF class at 0 and WM at 1 (normalize.log_tissue_normalise): the
    # 1st-99th percentiles of the training brains are about -0.95 and 1.18
    "loggmm": (-0.5, 1.3),
    # log intensities, the brain's 10th percentile at 0 and 90th at 1
    "logquantile": (-1.0, 1.6),
}


def intensity_histogram(values: np.ndarray, mask: np.ndarray, method: str = "gmm",
                        bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Density histogram of the brain voxels of a normalised image.

    Returns ``(density, edges)`` with ``bins`` values integrating to one over the range.

    >>> v = np.linspace(0, 1.5, 1000, endpoint=False)
    >>> d, e = intensity_histogram(v, np.ones_like(v, bool))
    >>> len(d), len(e), round(float((d * np.diff(e)).sum()), 6)
    (100, 101, 1.0)
    """
    lo, hi = HIST_RANGE[method]
    brain = np.asarray(values)[np.asarray(mask, bool)]
    density, edges = np.histogram(brain, bins=bins, range=(lo, hi), density=True)
    return density.astype(np.float64), edges
