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


# the log-quantile form of a GMM histogram (the rf_sites forest's input): log intensities with
# the 10th and 90th percentiles at 0 and 1, as "logquantile", on 100 bins of -1..1.6
LOG_QUANTILE_FORM = {"range": HIST_RANGE["logquantile"], "quantiles": (0.1, 0.9)}


def gmm_to_logquantile(density, bins: int = HIST_BINS) -> np.ndarray:
    """A GMM histogram (intensity / WM peak, density on 0-1.5) as the histogram of log
    intensities with its 10th and 90th percentiles at 0 and 1: the same for any change
    ``c * x**g`` of the image (the WM peak moves with it, and log then quantiles remove
    ``c`` and ``g``). Made from the histogram alone, so the original project's seed rows and
    our images take one path (``training.seed_rows``). Within each source bin the mass is
    spread evenly in log intensity; the first bin (from 0) has no log and is dropped.

    The change ``3 x**1.25`` moves the GMM histogram by an L1 distance of 0.19 and its
    log-quantile form by 0.06 (the bins' width is what is left):

    >>> x = np.random.default_rng(0).gamma(30, 0.03, 200_000)
    >>> h = lambda v: np.histogram(v / np.median(v), 100, (0, 1.5), density=True)[0]
    >>> a, b = gmm_to_logquantile(h(x)), gmm_to_logquantile(h(3 * x ** 1.25))
    >>> round(float((a * 0.026).sum()), 6), round(float(np.abs(h(x) - h(3 * x ** 1.25)).sum() * 0.015), 2)
    (1.0, 0.19)
    >>> round(float(np.abs(a - b).sum() * 0.026), 2)
    0.06
    """
    density = np.asarray(density, float)
    lo_x, hi_x = HIST_RANGE["gmm"]
    edges = np.linspace(lo_x, hi_x, density.size + 1)
    mass = density * np.diff(edges)
    mass[0] = 0.0
    if mass.sum() <= 0:
        raise ValueError("an empty histogram has no log-quantile form")
    cdf = np.concatenate([[0.0], np.cumsum(mass / mass.sum())])
    log_edges = np.log(np.maximum(edges, edges[1]))
    q_low, q_high = np.interp(LOG_QUANTILE_FORM["quantiles"], cdf, log_edges)
    lo, hi = LOG_QUANTILE_FORM["range"]
    target = np.linspace(lo, hi, bins + 1)
    cumulative = np.interp(target, (log_edges - q_low) / (q_high - q_low), cdf,
                           left=0.0, right=1.0)
    out = np.diff(cumulative)
    return out / (max(out.sum(), 1e-12) * (hi - lo) / bins)
