"""Brain-mask clean-up: keep the largest connected component and fill its holes."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 6-connected component of ``mask`` and fill enclosed holes.

    >>> m = np.zeros((7, 7, 7), bool); m[1:4, 1:4, 1:4] = True; m[6, 6, 6] = True
    >>> m[2, 2, 2] = False
    >>> out = largest_component(m)
    >>> int(out.sum()), bool(out[6, 6, 6]), bool(out[2, 2, 2])
    (27, False, True)
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask)
    if n == 0:
        raise ValueError("the brain mask is empty")
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """The mask of an image that is already skull-stripped: its non-zero voxels."""
    return np.asarray(data) > 0
