"""Why this age: each brain region's contribution to a prediction, in years.

For a linear member (standardised features, ridge: the ``tissue`` model) the prediction is
exactly the training mean plus the sum of per-feature contributions
``coef_j / scale_j × (x_j − mean_j)``. The tissue features are modulated GM and WM at each
voxel of the template brain (4 mm), so a voxel's contribution is its GM term plus its WM
term; summed over the regions of the bundled DLMUSE atlas they say which regions made the
brain look older (positive) or younger (negative) than the training mean. In the ensemble,
the map is the tissue member's contributions times its weight; the forest reads a
whole-brain histogram and has no place in the brain (its share is reported as a number).
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np

ATLAS_DIR = Path(__file__).resolve().parents[1] / "data" / "atlas-DLMUSE"
ATLAS = ATLAS_DIR / "tpl-MNI152NLin2009aSym_res-2_atlas-DLMUSE_dseg.nii.gz"
ATLAS_NAMES = ATLAS_DIR / "tpl-MNI152NLin2009aSym_atlas-DLMUSE_dseg.tsv"
TOP_REGIONS = 5


def linear_contributions(model, x: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Per-feature contributions of a StandardScaler + linear model pipeline, and its
    intercept (the prediction of a feature vector at the training mean); None for other
    models.

    >>> from sklearn.linear_model import Ridge
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> rng = np.random.default_rng(0); x = rng.normal(size=(50, 4)); y = x @ [1, 2, 0, 0] + 40
    >>> model = make_pipeline(StandardScaler(), Ridge(1.0)).fit(x, y)
    >>> parts, base = linear_contributions(model, x[:1])
    >>> bool(np.isclose(base + parts.sum(), model.predict(x[:1])[0]))
    True
    """
    steps = getattr(model, "steps", None)
    if not steps or len(steps) != 2:
        return None
    scaler, linear = steps[0][1], steps[1][1]
    if not hasattr(scaler, "scale_") or not hasattr(linear, "coef_"):
        return None
    weights = np.asarray(linear.coef_, float) / scaler.scale_
    x = np.asarray(x, float).ravel()
    return weights * (x - scaler.mean_), float(linear.intercept_)


def tissue_map(contributions: np.ndarray) -> np.ndarray:
    """Tissue-feature contributions (GM then WM, inside the feature mask) as one map on the
    2 mm MNI grid: GM + WM per 4 mm voxel, spread evenly over its 8 voxels of 2 mm."""
    from bids_brainage.features import tissue
    from bids_brainage.preproc.template import template_2mm

    _, feature_mask = tissue._fixed()
    n = int(feature_mask.sum())
    coarse = np.zeros(feature_mask.shape, np.float32)
    for k in range(len(tissue.FEATURE_MAPS)):
        coarse[feature_mask] += contributions[k * n:(k + 1) * n]
    fine = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2) / 8.0
    shape = template_2mm().shape
    return fine[: shape[0], : shape[1], : shape[2]]


@functools.lru_cache(maxsize=None)
def atlas() -> tuple[np.ndarray, dict[int, str]]:
    import nibabel as nib

    labels = np.asarray(nib.load(str(ATLAS)).dataobj).astype(np.int16)
    with open(ATLAS_NAMES, newline="", encoding="utf-8") as handle:
        names = {int(r["index"]): r["name"] for r in csv.DictReader(handle, delimiter="\t")}
    return labels, names


def region_contributions(contribution_map: np.ndarray) -> list[dict]:
    """Years per atlas region (and 'outside the atlas'), largest |years| first."""
    labels, names = atlas()
    totals = np.bincount(labels.ravel().clip(0), weights=contribution_map.ravel())
    rows = [{"index": int(i), "region": names.get(int(i), f"label {i}"),
             "years": round(float(totals[i]), 3)}
            for i in np.flatnonzero(totals) if i > 0]
    outside = float(totals[0]) if totals.size else 0.0
    if abs(outside) > 1e-6:
        rows.append({"index": 0, "region": "outside the atlas", "years": round(outside, 3)})
    return sorted(rows, key=lambda r: -abs(r["years"]))


def explain(model, x: np.ndarray, weight: float = 1.0) -> dict | None:
    """The contribution map (2 mm MNI grid, years) and the top regions of a tissue member
    whose ensemble weight is ``weight``; None when the model is not linear."""
    parts = linear_contributions(model, x)
    if parts is None:
        return None
    contributions, base = parts
    contribution_map = tissue_map(contributions * weight)
    regions = region_contributions(contribution_map)
    return {"map": contribution_map, "weight": weight, "training_mean": round(base, 3),
            "total_years": round(float(contributions.sum() * weight), 3),
            "older": [r for r in regions if r["years"] > 0][:TOP_REGIONS],
            "younger": [r for r in regions if r["years"] < 0][:TOP_REGIONS],
            "regions": regions}
