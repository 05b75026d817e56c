"""The changes a real dataset makes to the same brain, and how much each moves a prediction.

For each image: skull-stripped beforehand (a given brain mask applied, so ``--skull-strip auto``
takes it as stripped), a 1 mm version, contrast changes (gamma 0.8 and 1.25), a ×10 intensity
scale and an added smooth bias field. Each variant becomes a participant of a small BIDS
dataset that runs through the ordinary participant pipeline; the change of each model's
prediction against the original is the measure (mean |Δ| in years).
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

VARIANTS = {
    "orig": "original",
    "strip": "skull-stripped beforehand (reference mask applied)",
    "res1": "1 mm version",
    "gam08": "gamma 0.8",
    "gam125": "gamma 1.25",
    "scale10": "intensities x10",
    "bias": "smooth bias field (about ±30 %)",
}


def upsample_to_1mm(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same field of view on a grid of half the voxel size (cubic interpolation)."""
    data = img.get_fdata(dtype=np.float32)
    grid = np.meshgrid(*[np.arange(2 * n) * 0.5 - 0.25 for n in data.shape], indexing="ij")
    fine = ndimage.map_coordinates(data, grid, order=3, mode="nearest")
    to_old = np.diag([0.5, 0.5, 0.5, 1.0])
    to_old[:3, 3] = -0.25
    return nib.Nifti1Image(np.clip(fine, 0, None).astype(np.float32), img.affine @ to_old)


def gamma(img: nib.Nifti1Image, g: float) -> nib.Nifti1Image:
    data = img.get_fdata(dtype=np.float32)
    top = float(np.percentile(data[data > 0], 99.9)) if np.any(data > 0) else 1.0
    out = top * np.power(np.clip(data, 0, None) / top, g)
    return nib.Nifti1Image(out.astype(np.float32), img.affine)


def bias_field(shape) -> np.ndarray:
    """A smooth multiplicative field, about ±30 % across the field of view."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return np.exp(0.25 * grid[0] - 0.15 * grid[1] ** 2 + 0.2 * grid[2] * grid[0]).astype(
        np.float32)


def make_variant(img: nib.Nifti1Image, variant: str, mask: np.ndarray | None = None):
    data = img.get_fdata(dtype=np.float32)
    if variant == "orig":
        return nib.Nifti1Image(data, img.affine)
    if variant == "strip":
        if mask is None:
            raise ValueError("the skull-stripped variant needs a brain mask")
        return nib.Nifti1Image(np.where(mask, data, 0).astype(np.float32), img.affine)
    if variant == "res1":
        return upsample_to_1mm(img)
    if variant in ("gam08", "gam125"):
        return gamma(img, 0.8 if variant == "gam08" else 1.25)
    if variant == "scale10":
        return nib.Nifti1Image(data * 10, img.affine)
    if variant == "bias":
        return nib.Nifti1Image(data * bias_field(data.shape), img.affine)
    raise ValueError(f"unknown variant {variant!r}")


def write_variant_dataset(images: dict[str, tuple[Path, Path | None]], out_dir: Path,
                          variants=tuple(VARIANTS)) -> Path:
    """A BIDS dataset with one participant per image × variant (``sub-<label><variant>``).

    ``images`` maps a participant label to (its T1w, a brain mask for the stripped variant).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset_description.json").write_text(json.dumps(
        {"Name": "bids_brainage robustness variants", "BIDSVersion": "1.9.0"}))
    lines = ["participant_id"]
    for label, (t1w, mask_path) in images.items():
        img = nib.as_closest_canonical(nib.load(str(t1w)))
        mask = None
        if mask_path is not None:
            mask = np.asanyarray(nib.as_closest_canonical(nib.load(str(mask_path))).dataobj) > 0
        for variant in variants:
            if variant == "strip" and mask is None:
                continue
            sub = f"sub-{label}{variant}"
            folder = out_dir / sub / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            make_variant(img, variant, mask).to_filename(str(folder / f"{sub}_T1w.nii.gz"))
            lines.append(sub)
    (out_dir / "participants.tsv").write_text("\n".join(lines) + "\n")
    return out_dir


def prediction_changes(predictions: dict[str, dict[str, float]], labels,
                       variants=tuple(VARIANTS)) -> dict[str, dict[str, float]]:
    """``{model: {variant: mean |prediction(variant) − prediction(original)|}}``.

    ``predictions`` maps ``sub-<label><variant>`` to ``{model: age}``.

    >>> p = {"sub-Aorig": {"rf": 40.0}, "sub-Ares1": {"rf": 41.5},
    ...      "sub-Borig": {"rf": 60.0}, "sub-Bres1": {"rf": 59.5}}
    >>> prediction_changes(p, ["A", "B"], ["orig", "res1"])
    {'rf': {'res1': 1.0}}
    """
    out: dict[str, dict[str, list[float]]] = {}
    for label in labels:
        base = predictions.get(f"sub-{label}orig", {})
        for variant in variants:
            if variant == "orig":
                continue
            other = predictions.get(f"sub-{label}{variant}", {})
            for model, age in other.items():
                if model in base:
                    out.setdefault(model, {}).setdefault(variant, []).append(abs(age - base[model]))
    return {m: {v: round(float(np.mean(d)), 3) for v, d in vs.items()} for m, vs in out.items()}


ROBUST_LIMIT = 2.0  # years: the largest mean |change| a default model may show


def evaluate(model_dir: Path, images: dict[str, tuple[Path, Path | None]], work: Path,
             nprocs: int = 2) -> dict[str, dict[str, float]]:
    """Run every model of ``model_dir`` on the variants of ``images``; the mean |change|."""
    import csv

    from bids_brainage.cli.run import main as app

    import shutil

    data = write_variant_dataset(images, Path(work) / "variants")
    out = Path(work) / "variants_out"
    # a fresh output folder: a variant that fails now must not be read from an earlier run
    shutil.rmtree(out, ignore_errors=True)
    app([str(data), str(out), "participant", "-w", str(Path(work) / "variants_work"),
         "--nprocs", str(nprocs), "--skip-bids-validation", "--no-report", "--models", "all",
         "--model-dir", str(model_dir)])
    predictions: dict[str, dict[str, float]] = {}
    for tsv in out.glob("sub-*/anat/*_brainage.tsv"):
        with tsv.open() as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                if row["status"] == "ok":
                    predictions.setdefault(row["participant_id"], {})[row["model"]] = float(
                        row["predicted_age"])
    return prediction_changes(predictions, list(images))


def robust_models(changes: dict[str, dict[str, float]], limit: float = ROBUST_LIMIT):
    """``{model: reason or None}``: None for models whose every change stays below ``limit``.

    >>> robust_models({"rf": {"gam08": 5.2, "res1": 0.4}, "cnn": {"gam08": 0.9}})
    {'rf': 'mean |change| of 5.2 y (>= 2.0) for gam08: gamma 0.8', 'cnn': None}
    """
    out = {}
    for model, by_variant in changes.items():
        worst = max(by_variant, key=by_variant.get)
        out[model] = (None if by_variant[worst] < limit else
                      f"mean |change| of {by_variant[worst]:.1f} y (>= {limit}) for "
                      f"{worst}: {VARIANTS[worst]}")
    return out


def least_sensitive(changes: dict[str, dict[str, float]]) -> str:
    """The model whose largest mean |change| is smallest (the default when none passes).

    >>> least_sensitive({"rf": {"gam08": 12.4, "res1": 2.5}, "cnn": {"gam08": 3.4, "res1": 2.6}})
    'cnn'
    """
    return min(changes, key=lambda m: (max(changes[m].values()), m))
