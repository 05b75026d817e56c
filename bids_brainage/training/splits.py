"""Participant-level splits stratified by age: train / validation / test, and k folds.

Every participant lands in exactly one split; ages are spread evenly across splits by sorting
on age and dealing participants out of consecutive blocks in a seeded random order.
"""
from __future__ import annotations

import numpy as np

DEFAULT_SEED = 20240
# test 20 %, validation 20 % (for ensemble weights, bias fit and conformal intervals)
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2
SPLIT_FRACTIONS = {"train": 1 - TEST_FRACTION - VAL_FRACTION, "val": VAL_FRACTION,
                   "test": TEST_FRACTION}


def stratified_assign(ages, fractions: dict[str, float], seed: int = DEFAULT_SEED) -> np.ndarray:
    """Assign each index to a named split; shares follow ``fractions`` within every age block.

    >>> ages = np.arange(100)
    >>> parts = stratified_assign(ages, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    >>> {k: int((parts == k).sum()) for k in ("train", "val", "test")}
    {'train': 60, 'val': 20, 'test': 20}
    >>> bool(abs(ages[parts == "test"].mean() - ages.mean()) < 5)
    True
    """
    ages = np.asarray(ages, float)
    names = list(fractions)
    weights = np.array([fractions[n] for n in names], float)
    weights = weights / weights.sum()
    # a block of size ~1/min(fraction) holds each split's share once
    block = int(round(1 / weights.min()))
    counts = np.round(weights * block).astype(int)
    counts[np.argmax(counts)] += block - counts.sum()
    pattern = np.repeat(np.arange(len(names)), counts)
    rng = np.random.default_rng(seed)
    order = np.argsort(ages + rng.uniform(0, 1e-6, len(ages)), kind="stable")
    out = np.empty(len(ages), dtype=object)
    for start in range(0, len(ages), block):
        idx = order[start:start + block]
        labels = rng.permutation(pattern)[: len(idx)]
        out[idx] = [names[i] for i in labels]
    return out


def kfold_indices(ages, k: int = 5, seed: int = DEFAULT_SEED) -> list[np.ndarray]:
    """Age-stratified k folds: a list of k index arrays that partition ``range(len(ages))``.

    >>> folds = kfold_indices(np.arange(23), k=5, seed=0)
    >>> sorted(np.concatenate(folds).tolist()) == list(range(23)), [len(f) for f in folds]
    (True, [5, 5, 5, 4, 4])
    """
    ages = np.asarray(ages, float)
    rng = np.random.default_rng(seed)
    order = np.argsort(ages, kind="stable")
    folds: list[list[int]] = [[] for _ in range(k)]
    for start in range(0, len(order), k):
        block = order[start:start + k]
        for fold, idx in zip(rng.permutation(k)[: len(block)], block):
            folds[fold].append(int(idx))
    folds.sort(key=len, reverse=True)
    return [np.array(sorted(f)) for f in folds]
