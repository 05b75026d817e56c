"""Ridge models as plain arrays (``.npz``): a format whose loading runs no code.

A joblib file is a Python pickle: opening it can run any code its author put in it, so a
model directory of joblib files is code, trusted or not (the sha256 in the card proves the
file is the one the card's author made, not that the author is benign). The ridge on
morphometry features is four arrays: the standardiser's mean and scale, the coefficients and
the intercept. Stored as ``.npz`` and read with ``allow_pickle=False``, it is data.

``ridge_to_npz`` converts a fitted ``make_pipeline(StandardScaler(), Ridge/RidgeCV)``;
``load_forest`` (``models.forest``) opens a card's ``.npz`` file with :func:`load_linear`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FORMAT = "bids_brainage-linear-1"


class LinearModel:
    """``((x - mean) / scale) @ coef + intercept``, as the scikit-learn pipeline computes it."""

    def __init__(self, mean, scale, coef, intercept):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        if not (self.mean.shape == self.scale.shape == self.coef.shape and self.coef.ndim == 1):
            raise ValueError(f"inconsistent linear model arrays: mean {self.mean.shape}, "
                             f"scale {self.scale.shape}, coef {self.coef.shape}")

    def predict(self, features) -> np.ndarray:
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != self.coef.size:
            raise ValueError(f"the model expects {self.coef.size} features, got {x.shape[1]}")
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept


def ridge_to_npz(pipeline, path: Path | str) -> Path:
    """Save a fitted StandardScaler + (Ridge|RidgeCV) pipeline as plain arrays."""
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.preprocessing import StandardScaler

    from bids_brainage.io import atomic_path

    steps = [step for _, step in pipeline.steps]
    names = [type(step).__name__ for step in steps]
    if len(steps) != 2 or not isinstance(steps[0], StandardScaler) or not isinstance(
            steps[1], (Ridge, RidgeCV)):
        raise TypeError(f"expected StandardScaler + Ridge, got {names}")
    scaler, ridge = steps
    scale = scaler.scale_ if scaler.with_std else np.ones_like(scaler.mean_)
    mean = scaler.mean_ if scaler.with_mean else np.zeros_like(scale)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, format=np.array(FORMAT), mean=mean, scale=scale,
                     coef=np.ravel(ridge.coef_), intercept=np.array(float(ridge.intercept_)))
    return Path(path)


def load_linear(path: Path | str) -> LinearModel:
    """Read a ``.npz`` linear model; never unpickles (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as arrays:
        if str(arrays.get("format", "")) != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        return LinearModel(arrays["mean"], arrays["scale"], arrays["coef"],
                           arrays["intercept"])
