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
    if not mask.any():
        raise ValueError("the brain mask is empty")
    # on the mask's bounding box with a background margin of one voxel: the same components
    # and the same holes (what is outside the box is background reaching the border), on a
    # third of a 1 mm head's voxels (0.5 s -> 0.2 s)
    box = tuple(slice(max(int(w.min()) - 1, 0), int(w.max()) + 2)
                for w in (np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim)
                                                             if a != axis)))
                          for axis in range(mask.ndim)))
    inner = np.pad(mask[box], 1)
    labels, n = ndimage.label(inner)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        inner = labels == int(np.argmax(sizes))
    out = np.zeros_like(mask)
    out[box] = ndimage.binary_fill_holes(inner)[(slice(1, -1),) * mask.ndim]
    return out


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """The mask of an image that is already skull-stripped: its non-zero voxels."""
    return np.asarray(data) > 0
