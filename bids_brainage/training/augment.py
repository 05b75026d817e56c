"""Domain-randomised copies of a training brain, for training only (SynthBA's idea, small).

Other sites strip tighter than deepbet (no sulcal CSF left), scan at 1.5 T (less grey/white
contrast) and with more noise. A model that has only seen this pool's images reads those
differences as age: a tight strip moved the tissue model by about +25 years on the MNI brain.
Each copy is one of the pool's MNI-space brains with a random grey/white contrast, a tight
strip with some probability and Rician noise, labelled with the same age; its inputs are made
by the very code that makes the original's (``models.predict.model_inputs``). Copies are
training rows only: cross-validation keeps them with their participant, scores originals
only, and chooses penalties by folds of participants (``training.crossval``).

A copy is fixed by the participant's image prefix, its index and the training seed, so a
training run is reproducible and the input cache can key on it (the ``augment`` entry of an
input spec, see :func:`augmented_spec`).
"""
from __future__ import annotations

import zlib

import numpy as np

# the randomisation: contrast factor range, probability of a tight strip, noise range
# (sd as a fraction of the white-matter mean)
SCHEME = {"contrast": [0.55, 1.0], "tight": 0.5, "noise": [0.0, 0.05]}


def augmented_spec(spec: dict, index: int, seed: int, scheme: dict | None = None) -> dict:
    """``spec`` for copy ``index``: the inputs of a randomised copy, not of the image."""
    return {**spec, "augment": {"index": int(index), "seed": int(seed),
                                **(scheme or SCHEME)}}


def copy_seed(prefix: str, index: int, seed: int) -> int:
    """A stable seed per image, copy and training seed (``hash`` changes per process)."""
    return zlib.crc32(f"{prefix}:{index}:{seed}".encode())


def randomised_copy(data: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                    scheme: dict | None = None):
    """One randomised copy of an MNI-space brain: ``(data, mask, what was drawn)``."""
    from bids_brainage.training.robustness import lower_contrast, rician_noise, tight_mask

    scheme = scheme or SCHEME
    mask = np.asarray(mask, bool)
    factor = float(rng.uniform(*scheme["contrast"]))
    tight = bool(rng.random() < scheme["tight"])
    noise = float(rng.uniform(*scheme["noise"]))
    noise_seed = int(rng.integers(2 ** 31))
    if factor < 0.99:
        data = lower_contrast(data, mask, factor)
    if tight:
        mask = tight_mask(data, mask)
    data = np.where(mask, data, 0).astype(np.float32)
    if noise > 0:
        data = (rician_noise(data, mask, noise, seed=noise_seed) * mask).astype(np.float32)
    return data, mask, {"contrast": factor, "tight": tight, "noise": noise}


def copy_of(prefix: str, data: np.ndarray, mask: np.ndarray, augment: dict):
    """The copy an ``augment`` entry of a spec names (see :func:`augmented_spec`)."""
    scheme = {k: augment[k] for k in SCHEME}
    rng = np.random.default_rng(copy_seed(prefix, augment["index"], augment["seed"]))
    return randomised_copy(data, mask, rng, scheme)
