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


RIDGE_ALPHAS = np.logspace(-1, 5, 25)


def train_ridge(features: np.ndarray, ages: np.ndarray, groups=None):
    """Standardised features, ridge with its penalty chosen inside the training data: by
    efficient leave-one-out CV when every row is its own group, else by 5 folds of groups
    (leaving one row out would leave its copies in, see ``training.augment``)."""
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(features), np.asarray(ages, float)
    if not grouped_rows(groups):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
        return model.fit(x, y)
    alpha = grouped_ridge_alpha(x, y, np.asarray(groups))
    return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x, y)


def grouped_rows(groups) -> bool:
    """Whether some group holds several rows (then :func:`train_ridge` chooses its penalty by
    folds of groups, not by leaving one row out)."""
    return groups is not None and len(np.unique(groups)) < len(groups)


def grouped_ridge_alpha(x, y, groups, alphas=RIDGE_ALPHAS, k: int = 5) -> float:
    """The penalty of :data:`RIDGE_ALPHAS` with the least squared error over ``k`` folds of
    groups, each fold standardised on its training rows (one eigen-decomposition of the
    rows' kernel per fold for all penalties).

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 5)); y = x @ [1, 2, 0, 0, 0] + rng.normal(0, .1, 40)
    >>> grouped_ridge_alpha(np.vstack([x, x]), np.r_[y, y], np.r_[range(40), range(40)]) < 1
    True
    """
    from sklearn.model_selection import GroupKFold

    errors = np.zeros(len(alphas))
    for train, test in GroupKFold(min(k, len(np.unique(groups)))).split(x, y, groups):
        mean, scale = x[train].mean(0), x[train].std(0)
        scale[scale == 0] = 1.0
        xt, xv = (x[train] - mean) / scale, (x[test] - mean) / scale
        centre = y[train].mean()
        # the kernel form: prediction = xv xt' (xt xt' + alpha)^-1 (y - centre) + centre
        eigenvalues, vectors = np.linalg.eigh(xt @ xt.T)
        eigenvalues = np.clip(eigenvalues, 0, None)
        uy, cross = vectors.T @ (y[train] - centre), (xv @ xt.T) @ vectors
        for i, alpha in enumerate(alphas):
            predicted = cross @ (uy / (eigenvalues + alpha)) + centre
            errors[i] += np.sum((predicted - y[test]) ** 2)
    return float(alphas[int(np.argmin(errors))])


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
