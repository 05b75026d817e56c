"""The random forest on 100-bin intensity histograms (the original project's model), and the
ridge regression on morphometry features; both are scikit-learn estimators saved with joblib."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def train_forest(features: np.ndarray, ages: np.ndarray, *, seed: int, n_estimators: int = 500,
                 n_jobs: int = 1):
    from sklearn.ensemble import RandomForestRegressor

    model = RandomForestRegressor(
        n_estimators=n_estimators, max_features=0.33, min_samples_leaf=2,
        random_state=seed, n_jobs=n_jobs,
    )
    return model.fit(np.asarray(features), np.asarray(ages))


def train_ridge(features: np.ndarray, ages: np.ndarray):
    """Standardised features, ridge with its penalty chosen by efficient leave-one-out CV
    (inside the training data only)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 25)))
    return model.fit(np.asarray(features), np.asarray(ages))


def save_forest(model, path: Path) -> Path:
    import joblib

    from bids_brainage.io import atomic_path

    with atomic_path(path) as tmp:
        joblib.dump(model, tmp, compress=3)
    return Path(path)


def load_forest(path: Path):
    """Load a forest file; call only on a file already verified against its card's sha256
    (a joblib file can run code when loaded, so only trusted, checked files are opened).
    A ``.npz`` file is a linear model stored as plain arrays (``models.linear``): no code."""
    if Path(path).suffix == ".npz":
        from bids_brainage.models.linear import load_linear

        return load_linear(path)
    import joblib

    model = joblib.load(path)
    model.n_jobs = 1
    return model
