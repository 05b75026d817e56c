"""Why this age: each brain region's contribution to a prediction, in years.

For a linear member (standardised features, ridge: the ``tissue`` model) the prediction is
exactly the training mean plus the sum of per-feature contributions
``coef_j / scale_j × (x_j − mean_j)``. The tissue features are modulated GM and WM at each
voxel of the template brain (4 mm), so a voxel's contribution is its GM term plus its WM
term; summed over the regions of the bundled DLMUSE atlas they say which regions made the
brain look older (positive) or younger (negative) than the training mean. In the ensemble,
the map is the tissue member's contributions times its weight.

The forest reads a whole-brain histogram (and tissue fractions), which has no place in the
brain and no additive decomposition. Its map is an **occlusion** map: for each atlas region,
the forest's prediction with the region's voxels left out (its histogram, normalisation
anchors and tissue fractions made again from the remaining voxels) is subtracted from its prediction on the whole
brain, times its ensemble weight. A region whose voxels look old (e.g. dark, CSF-like
intensities where tissue should be) gets a positive value. Occlusion values are
sensitivities: unlike the linear contributions they need not add up to the member's
distance from the training mean. The ensemble's map is the sum of its members' maps, each
region's years spread evenly over its voxels.
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
    """Tissue-feature contributions (its maps one after the other, each inside the feature
    mask: GM, WM, and their unmodulated maps when the card reads them) as one map on the
    2 mm MNI grid: every map's part per 4 mm voxel, summed, spread evenly over its 8 voxels
    of 2 mm."""
    from bids_brainage.features import tissue
    from bids_brainage.preproc.template import template_2mm

    feature_mask = tissue.feature_mask()
    n = int(feature_mask.sum())
    if contributions.size % n:
        raise ValueError(f"{contributions.size} tissue contributions are not whole maps "
                         f"of {n} voxels")
    coarse = np.zeros(feature_mask.shape, np.float32)
    for k in range(contributions.size // n):
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


def _summary(contribution_map: np.ndarray) -> dict:
    regions = region_contributions(contribution_map)
    return {"older": [r for r in regions if r["years"] > 0][:TOP_REGIONS],
            "younger": [r for r in regions if r["years"] < 0][:TOP_REGIONS],
            "regions": regions}


def explain(model, x: np.ndarray, weight: float = 1.0) -> dict | None:
    """The contribution map (2 mm MNI grid, years) and the top regions of a tissue member
    whose ensemble weight is ``weight``; None when the model is not linear."""
    parts = linear_contributions(model, x)
    if parts is None:
        return None
    contributions, base = parts
    contribution_map = tissue_map(contributions * weight)
    return {"map": contribution_map, "weight": weight, "training_mean": round(base, 3),
            "method": "exact linear contributions",
            "total_years": round(float(contributions.sum() * weight), 3),
            **_summary(contribution_map)}


def histogram_occlusion_inputs(mni: np.ndarray, mask: np.ndarray, spec: dict):
    """The forest's input on the whole brain (row 0) and with each atlas region left out
    (one row per region), and the regions.

    Row 0 is exactly ``model_inputs(mni, mask, spec)``, made from the same normalisation.
    Without a region, the input is made again from the remaining voxels (their percentiles
    anchor the log normalisation), with the whole brain's tissue class means kept (a mixture
    fit per region would cost seconds and move little).
    """
    from bids_brainage.features.histogram import HIST_RANGE, intensity_histogram
    from bids_brainage.models.predict import model_region, tissue_fractions
    from bids_brainage.preproc.normalize import LOG_ANCHOR_QUANTILES, log_tissue_normalise

    method = spec.get("normalization")
    if spec.get("feature") == "histogram" and method in FIXED_OCCLUSION:
        return _plain_histogram_occlusion(mni, mask, spec)
    if spec.get("feature") != "histogram+tissue" or method not in ("logquantile", "loggmm"):
        raise ValueError(f"occlusion needs a histogram+tissue input with a log "
                         f"normalisation, or a plain histogram of {FIXED_OCCLUSION}, "
                         f"not {spec}")
    region = model_region(mask, spec)
    norm, info = log_tissue_normalise(mni, region, method=method)
    logs = np.log(np.maximum(np.asarray(mni, np.float64)[region], info["log_floor"]))
    # the class means of the log intensities, as the whole brain's mixture found them
    means = np.array([(info["peaks"][k] - info["shift"]) / info["scale"]
                      for k in ("CSF", "GM", "WM")])
    labels, _ = atlas()
    where = labels[region]
    present = np.array([r for r in np.unique(where) if r > 0], np.int64)
    bins = int(spec.get("bins", 100))
    lo, hi = HIST_RANGE[method]
    quantiles = np.asarray(LOG_ANCHOR_QUANTILES, float) / 100.0
    peaks = np.sort(means)
    cuts = (peaks[1:] + peaks[:-1]) / 2  # nearest class mean: cut halfway between them
    # counting in sorted arrays, no voxel binned twice: each row is the whole brain's counts
    # minus the region's, below edges set by that row's anchors
    order = np.argsort(where, kind="stable")
    starts = np.searchsorted(where[order], present)
    ends = np.searchsorted(where[order], present, side="right")
    full = np.sort(logs)
    rows = [np.concatenate([intensity_histogram(norm, region, method, bins)[0],
                            tissue_fractions(norm, region, info)])]  # as model_inputs
    for r, a, b in zip(present, starts, ends):
        removed = np.sort(logs[order[a:b]])
        kept = full.size - removed.size
        if method == "logquantile":
            low, high = _percentiles(full, removed, quantiles)
        else:
            low, high = means[0], means[2]
        span = high - low
        edges = low + span * np.linspace(lo, hi, bins + 1)
        below = (np.searchsorted(full, edges[:-1]) - np.searchsorted(removed, edges[:-1]))
        top = (np.searchsorted(full, edges[-1], side="right")
               - np.searchsorted(removed, edges[-1], side="right"))
        counts = np.diff(np.append(below, top)).astype(float)
        density = counts / (max(counts.sum(), 1.0) * (hi - lo) / bins)
        at_or_below = (np.searchsorted(full, cuts, side="right")
                       - np.searchsorted(removed, cuts, side="right"))
        classes = np.diff(np.concatenate([[0], at_or_below, [kept]])) / max(kept, 1)
        rows.append(np.concatenate([density, classes]))
    return np.vstack(rows), present


# plain histograms whose normalisation is kept from the whole brain when a region is left
# out (the GMM's WM peak: one region moves it little, and a refit costs a second per region)
FIXED_OCCLUSION = ("gmm",)


def _plain_histogram_occlusion(mni: np.ndarray, mask: np.ndarray, spec: dict):
    """:func:`histogram_occlusion_inputs` of a plain histogram (``rf_sites``'s GMM one): row
    0 exactly ``model_inputs``; then the histogram of the brain's normalised voxels without
    each region, the whole brain's normalisation kept."""
    from bids_brainage.features.histogram import HIST_RANGE, intensity_histogram
    from bids_brainage.models.predict import histogram_form, model_region
    from bids_brainage.preproc.normalize import normalize_intensity

    method, bins = spec["normalization"], int(spec.get("bins", 100))
    region = model_region(mask, spec)
    norm, _ = normalize_intensity(mni, region, method)
    labels, _ = atlas()
    where = labels[region].clip(0).astype(np.int64)
    values = np.asarray(norm, np.float64)[region]
    lo, hi = HIST_RANGE[method]
    inside = (values >= lo) & (values <= hi)  # np.histogram's range: the top edge counts
    index = np.minimum(((values[inside] - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
    counts = np.bincount(where[inside] * bins + index,
                         minlength=(int(where.max()) + 1) * bins).reshape(-1, bins)
    total = counts.sum(axis=0)
    present = np.array([r for r in np.unique(where) if r > 0], np.int64)
    rows = [intensity_histogram(norm, region, method, bins)[0]]
    for r in present:
        kept = (total - counts[r]).astype(float)
        rows.append(kept / (max(kept.sum(), 1.0) * (hi - lo) / bins))
    return np.vstack([histogram_form(row, spec) for row in rows]), present


def _percentiles(full: np.ndarray, removed: np.ndarray, quantiles) -> np.ndarray:
    """``np.percentile`` (linear) of the sorted ``full`` without the sorted ``removed`` (a
    part of it), by bisection on counts instead of copying what is kept.

    >>> rng = np.random.default_rng(0); x = rng.normal(size=1000); gone = x[::7]
    >>> kept = np.setdiff1d(np.arange(1000), np.arange(0, 1000, 7))
    >>> got = _percentiles(np.sort(x), np.sort(gone), np.array([0.1, 0.9]))
    >>> bool(np.allclose(got, np.percentile(x[kept], [10, 90])))
    True
    """
    size = full.size - removed.size
    position = quantiles * (size - 1)
    index = np.floor(position).astype(np.int64)
    wanted = np.concatenate([index, np.minimum(index + 1, size - 1)])
    low, high = np.zeros(wanted.size, np.int64), np.full(wanted.size, full.size - 1)
    while np.any(low < high):  # smallest i with #kept <= full[i] above wanted
        mid = (low + high) // 2
        value = full[mid]
        kept = (np.searchsorted(full, value, side="right")
                - np.searchsorted(removed, value, side="right"))
        above = kept >= wanted + 1
        high = np.where(above, mid, high)
        low = np.where(above, low, mid + 1)
    values = full[low]
    first, second = values[: index.size], values[index.size:]
    return first + (position - index) * (second - first)


def forest_occlusion(model, mni: np.ndarray, mask: np.ndarray, spec: dict,
                     weight: float = 1.0) -> dict:
    """The occlusion map of a histogram forest (2 mm MNI grid, years × ``weight``)."""
    inputs, present = histogram_occlusion_inputs(mni, mask, spec)
    predicted = np.asarray(model.predict(inputs), float)
    years = (predicted[0] - predicted[1:]) * weight
    labels, _ = atlas()
    sizes = np.bincount(labels.ravel().clip(0), minlength=int(labels.max()) + 1)
    per_voxel = np.zeros(sizes.size)
    per_voxel[present] = years / np.maximum(sizes[present], 1)
    occlusion_map = np.where(labels > 0, per_voxel[labels.clip(0)], 0.0).astype(np.float32)
    return {"map": occlusion_map, "weight": weight, "prediction": round(float(predicted[0]), 3),
            "method": "occlusion (each region left out of its input)",
            "total_years": None,  # sensitivities do not add up
            **_summary(occlusion_map)}


def combine(parts: dict[str, dict], of: str) -> dict:
    """One map for an ensemble: the sum of its members' maps, with each member's method,
    weight and years in ``members``."""
    contribution_map = sum(part["map"] for part in parts.values())
    members = {name: {k: part[k] for k in ("method", "weight", "total_years")}
               for name, part in parts.items()}
    return {"map": contribution_map, "of": of, "model": " + ".join(parts),
            "members": members,
            "weight": round(sum(p["weight"] for p in parts.values()), 3),
            "training_mean": next((p["training_mean"] for p in parts.values()
                                   if "training_mean" in p), None),
            "total_years": round(sum(p["total_years"] for p in parts.values()
                                 if p["total_years"] is not None), 3),
            **_summary(contribution_map)}
