"""Prediction: model inputs from the MNI-space brain, each model's age, the ensemble, intervals.

Training builds its inputs with :func:`model_inputs` too, so a model sees in use exactly the
preprocessing it was trained on, whatever ``--normalization`` the user chose for the outputs.
"""
from __future__ import annotations

import functools

import numpy as np

from bids_brainage.models.registry import verified_file
from bids_brainage.stats.metrics import recalibrate


def model_inputs(mni: np.ndarray, mask: np.ndarray, spec: dict, threads: int = 1):
    """The input a model card's ``input`` spec asks for, from the un-normalised 2 mm MNI brain.

    ``{"feature": "histogram", "normalization": "gmm"}`` gives the 100-bin density histogram;
    ``{"feature": "image", "normalization": "gmm", ...}`` the normalised, cropped volume
    (``"normalization": "rank"``: each voxel's percentile in the brain, contrast-free;
    ``"quantile"``: that percentile mapped through the card's ``reference`` quantiles;
    ``"loggmm"`` / ``"logquantile"``: log intensities with CSF at 0 and WM at 1, or the 10th
    and 90th percentiles at 0 and 1; both the same for any ``c * x**g``);
    ``{"feature": "morphometry", ...}`` log-Jacobians and ranks (:mod:`bids_brainage.features.morphometry`);
    ``{"feature": "tissue"}`` modulated GM and WM maps, with ``"maps"`` also the
    unmodulated ones (:mod:`bids_brainage.features.tissue`). ``threads`` speed up the tissue warp and change
    no number.
    """
    from bids_brainage.features.histogram import intensity_histogram
    from bids_brainage.preproc.normalize import (
        LOG_METHODS,
        log_tissue_normalise,
        normalize_intensity,
    )

    feature = spec.get("feature", "histogram")
    if feature == "qc":  # registration overlap and relative mask volume (reliability flags)
        from bids_brainage.models.reliability import mask_measures

        return np.array(list(mask_measures(mask).values()))
    if feature == "contrast":  # the tissue classes' grey/white spacing (reliability flags)
        from bids_brainage.models.reliability import tissue_contrast

        return np.array([tissue_contrast(mni, mask)])
    if feature == "tissue":
        from bids_brainage.features.tissue import feature_maps, tissue_features

        # the whole brain mask: GM/WM maps need no eroded region, a tight or loose strip
        # changes only the CSF around the edge, which is neither
        return tissue_features(mni, mask, threads=threads, maps=feature_maps(spec))
    mask = model_region(mask, spec)
    if feature == "morphometry":
        from bids_brainage.features.morphometry import REGION_ERODE, morphometry_features

        if spec.get("region") != "template" or spec.get("erode") != REGION_ERODE:
            # the SyN target and feature grid are built on that region (morphometry._fixed)
            raise ValueError(f"morphometry features need the input region "
                             f"{{'region': 'template', 'erode': {REGION_ERODE}}}, not {spec}")
        return morphometry_features(mni, mask)
    if spec.get("normalization") in ("rank", "quantile"):
        from bids_brainage.features.morphometry import quantile_normalise, rank_normalise

        norm, info = rank_normalise(mni, mask), {}
        if spec["normalization"] == "quantile":
            norm = quantile_normalise(norm, mask, spec["reference"])
    elif spec.get("normalization") in LOG_METHODS:
        norm, info = log_tissue_normalise(mni, mask, method=spec["normalization"])
    else:
        norm, info = normalize_intensity(mni, mask, spec.get("normalization", "gmm"))
    if feature == "histogram":
        density, _ = intensity_histogram(norm, mask, spec.get("normalization", "gmm"),
                                         bins=spec.get("bins", 100))
        return histogram_form(density, spec)
    if feature == "histogram+tissue":
        density, _ = intensity_histogram(norm, mask, spec.get("normalization", "gmm"),
                                         bins=spec.get("bins", 100))
        return np.concatenate([density, tissue_fractions(norm, mask, info)])
    if feature == "quantiles":
        from bids_brainage.features.morphometry import QUANTILE_LEVELS

        return np.quantile(norm[mask], QUANTILE_LEVELS)
    if feature == "image":
        from bids_brainage.models.resnet3d import crop_to_grid

        return crop_to_grid(norm, spec)
    raise ValueError(f"unknown model input {feature!r}")


def histogram_form(density: np.ndarray, spec: dict) -> np.ndarray:
    """A plain histogram as the card's ``form`` asks: as it is, or (``"logquantile"``, a GMM
    histogram only) its log-quantile form (``features.histogram.gmm_to_logquantile``)."""
    form = spec.get("form")
    if form is None:
        return density
    if form == "logquantile" and spec.get("normalization") == "gmm":
        from bids_brainage.features.histogram import gmm_to_logquantile

        return gmm_to_logquantile(density, bins=spec.get("bins", 100))
    raise ValueError(f"unknown histogram form {form!r} of a {spec.get('normalization')} "
                     f"histogram")


def model_region(mask: np.ndarray, spec: dict) -> np.ndarray:
    """The voxels a model reads: the brain mask, or its part inside the template's brain mask
    eroded by ``spec["erode"]`` voxels (``"region": "template"``). The second makes features
    independent of where a skull stripper puts the brain's edge (dilating the mask by one voxel
    moved the histogram forest's prediction by 6 years; inside the eroded template, by 0.4)."""
    if spec.get("region", "mask") != "template":
        return mask
    from scipy import ndimage

    from bids_brainage.preproc.template import template_2mm, template_mask

    inner = template_mask(template_2mm())
    if spec.get("erode", 2) > 0:  # scipy erodes until nothing changes for iterations=0
        inner = ndimage.binary_erosion(inner, iterations=spec.get("erode", 2))
    return mask & inner


def tissue_fractions(norm: np.ndarray, mask: np.ndarray, info: dict) -> np.ndarray:
    """CSF, GM and WM fractions of the brain: voxels nearest each class's GMM peak."""
    peaks = np.array([info["peaks"][k] for k in ("CSF", "GM", "WM")])
    values = norm[mask]
    nearest = np.argmin(np.abs(values[:, None] - peaks[None, :]), axis=1)
    return np.bincount(nearest, minlength=3) / max(values.size, 1)


@functools.lru_cache(maxsize=8)
def _loaded(path: str, sha256: str | None = None):
    """A verified forest or ridge file, loaded once per process and file content (predict
    and explain, and a worker's next image, share it; the models are only read)."""
    from bids_brainage.models.forest import load_forest

    return load_forest(path)


def load_predictor(card: dict, threads: int = 1):
    """A callable ``f(inputs) -> age`` for a card, after verifying its weight file."""
    kind = card.get("kind", "forest")
    if kind in ("forest", "ridge"):
        model = _loaded(str(verified_file(card)), card.get("sha256"))
        return lambda x: float(model.predict(np.asarray(x)[None, :])[0])
    if kind == "resnet":
        from bids_brainage.models.resnet3d import load_resnet, predict_volume

        net = load_resnet(verified_file(card), card)
        return lambda x: predict_volume(net, x, threads=threads, card=card)
    raise ValueError(f"model {card['name']!r}: unknown kind {kind!r}")


def ensemble_age(card: dict, ages: dict):
    """An ensemble card's age from its members' (recalibrated) ages, numbers or arrays: its
    intercept plus the weighted members, through the ensemble's own recalibration line."""
    mixed = float(card.get("intercept", 0.0)) + sum(
        float(w) * np.asarray(ages[m], float) for m, w in card["members"].items())
    return recalibrate(card.get("recalibration"), mixed)


def interval(card: dict, age: float, spread: float | None = None):
    """The card's prediction interval for a predicted ``age`` (and, for an ensemble, its
    members' spread): local or normalised split-conformal, or a constant half-width on older
    cards."""
    from bids_brainage.stats.intervals import apply_interval

    spec = card.get("interval") or {}
    if spec.get("halfwidth") is None and "q" not in spec and "local" not in spec:
        return None, None
    low, high = apply_interval(spec, age, spread)
    return float(low[0]), float(high[0])


def predict_ages(mni: np.ndarray, mask: np.ndarray, cards: dict[str, dict], names,
                 threads: int = 1, age: float | None = None,
                 explain: bool = False) -> tuple[list[dict], dict]:
    """One row per model (``model``, ``predicted_age``, ``interval_low``, ``interval_high``,
    ``flag``), and details: the reliability assessment behind the flags
    (:mod:`.reliability`) and, with ``explain``, the tissue model's contribution map
    (:mod:`.explain`)."""
    from bids_brainage.models import reliability

    rows, cache = [], {}

    def key_of(spec: dict) -> str:
        return repr(sorted(spec.items()))

    def inputs(spec):
        key = key_of(spec)
        if key not in cache:
            cache[key] = model_inputs(mni, mask, spec, threads)
        if callable(cache[key]):  # begun below: wait for it
            cache[key] = cache[key]()
        return cache[key]

    plain = [n for n in names if cards[n].get("kind") != "ensemble"]
    begun = set()
    if threads > 1:
        # the tissue warp runs in a process of its own with the threads: begin it, and do
        # the other models' work (their ages, the forest's occlusion map) while it runs
        from bids_brainage.features.tissue import feature_maps, start_tissue_features

        for name in plain:
            spec = cards[name].get("input") or {}
            if spec.get("feature") == "tissue":
                if key_of(spec) not in cache:
                    cache[key_of(spec)] = start_tissue_features(mni, mask, threads,
                                                                feature_maps(spec))
                begun.add(name)
    ensembles = [cards[n] for n in names if cards[n].get("kind") == "ensemble"]

    def age_of(name: str) -> float:
        raw = load_predictor(cards[name], threads)(inputs(cards[name].get("input", {})))
        return float(recalibrate(cards[name].get("recalibration"), raw))

    ages = {name: age_of(name) for name in plain if name not in begun}
    contributions = (explain_models(cards, names, ensembles, inputs, mni, mask)
                     if explain else None)
    ages.update({name: age_of(name) for name in plain if name in begun})
    ages = {name: ages[name] for name in plain}  # the cards' order, whatever ran first
    for card in ensembles:
        ages[card["name"]] = float(ensemble_age(card, ages))
    rel_card = ensembles[0].get("reliability") if ensembles else None
    spread = features = None
    if ensembles and len(ensembles[0]["members"]) > 1:
        spread = float(np.std([ages[m] for m in ensembles[0]["members"]]))
    if rel_card and rel_card.get("distance_model"):
        features = inputs(rel_card["distance_model"]["input"])
    contrast = (float(inputs({"feature": "contrast"})[0])  # as training built it
                if rel_card and rel_card.get("contrast") else None)
    assessment = reliability.assess(
        rel_card, spread=spread, features=features, predicted=ages, age=age,
        measures=reliability.mask_measures(mask), contrast=contrast,
        contrast_age=ages[ensembles[0]["name"]] if ensembles else None)
    flag = reliability.flag_text(assessment["reasons"])
    for name in names:
        is_ensemble = cards[name].get("kind") == "ensemble"
        low, high = interval(cards[name], ages[name], spread if is_ensemble else None)
        rows.append({"model": name, "predicted_age": round(ages[name], 3),
                     "interval_low": None if low is None else round(low, 3),
                     "interval_high": None if high is None else round(high, 3),
                     "flag": flag})
    details = {"reliability": assessment}
    if explain:
        details["contributions"] = contributions
    return rows, details


def explain_models(cards, names, ensembles, inputs, mni, mask) -> dict | None:
    """Why this age, per region: the first ensemble's members, each times its weight (the
    linear tissue member exactly, the histogram forest by occlusion), or the one model run
    alone; None when no model can be mapped. A weight includes the recalibration slopes of
    the member and the ensemble: the years of the reported age per year of raw output."""
    from bids_brainage.models import explain

    def slope(card: dict) -> float:  # a recalibrated model's age moves this much per year
        return float((card.get("recalibration") or {}).get("slope", 1.0))

    if ensembles:
        weights = {m: float(w) * slope(ensembles[0]) * slope(cards[m])
                   for m, w in ensembles[0]["members"].items() if m in cards}
        of = ensembles[0]["name"]
    else:
        weights = {n: slope(cards[n]) for n in names[:1]}
        of = names[0] if names else ""
    parts = {}
    for name, weight in weights.items():
        card = cards[name]
        feature = card.get("input", {}).get("feature")
        if weight == 0 or card.get("kind") not in ("ridge", "forest"):
            continue
        model = _loaded(str(verified_file(card)), card.get("sha256"))
        if feature == "tissue" and card.get("kind") == "ridge":
            part = explain.explain(model, inputs(card["input"]), weight)
        elif feature == "histogram+tissue" and card["input"].get("normalization", "").startswith("log"):
            part = explain.forest_occlusion(model, mni, mask, card["input"], weight)
        elif feature == "histogram" and card["input"].get("normalization") in \
                explain.FIXED_OCCLUSION and card.get("kind") == "forest":
            part = explain.forest_occlusion(model, mni, mask, card["input"], weight)
        else:
            part = None
        if part is not None:
            parts[name] = part
    return explain.combine(parts, of) if parts else None
