"""The changes a real dataset makes to the same brain, and how much each moves a prediction.

For each image: skull-stripped beforehand (a given brain mask applied, so ``--skull-strip auto``
takes it as stripped), a 1 mm version, contrast changes (gamma 0.8 and 1.25), a ×10 intensity
scale and an added smooth bias field; and the ways other sites scan and strip: a tight strip
(sulcal CSF and ventricles removed), a loose one (mask dilated by 3 mm), a strip by another
method (the template's brain mask brought back through the inverse affine: an atlas strip), a
brain already affinely registered to MNI at 1 mm, a 1.5 T-like lower grey/white contrast,
anisotropic 1 × 1.33 × 1.33 mm voxels and added Rician noise. Each variant becomes a
participant of a small BIDS dataset that runs through the ordinary participant pipeline; the
change of each model's prediction against the original is the measure (mean |Δ| in years).
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
    "tight": "stripped tightly (reference mask ∧ above the CSF/GM midpoint)",
    "loose": "stripped loosely (reference mask dilated by 3 mm)",
    "atlas": "stripped by another method (template mask through the inverse affine)",
    "mni1mm": "already stripped and affinely registered to MNI at 1 mm",
    "lowcon": "1.5 T-like: grey/white contrast reduced by 40 %",
    "aniso": "anisotropic 1 × 1.33 × 1.33 mm voxels",
    "noise": "Rician noise (sd 4 % of white matter)",
}
# variants that need the reference brain mask (and, for atlas/mni1mm, the original's affine)
NEEDS_MASK = ("strip", "tight", "loose", "lowcon", "mni1mm")
NEEDS_AFFINE = ("atlas", "mni1mm")


def upsample_to_1mm(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same field of view on a grid of half the voxel size (cubic interpolation)."""
    return resample_voxels(img, (0.5, 0.5, 0.5))


def resample_voxels(img: nib.Nifti1Image, factors) -> nib.Nifti1Image:
    """The same field of view on a grid whose voxels are ``factors`` times the old ones
    (cubic interpolation; 0.5 halves the voxel size)."""
    data = img.get_fdata(dtype=np.float32)
    factors = np.asarray(factors, float)
    shape = np.round(np.array(data.shape) / factors).astype(int)
    offset = (factors - 1) / 2  # voxel centres of the new grid in old voxel units
    grid = np.meshgrid(*[np.arange(n) * f + o for n, f, o in zip(shape, factors, offset)],
                       indexing="ij")
    fine = ndimage.map_coordinates(data, grid, order=3, mode="nearest")
    to_old = np.diag([*factors, 1.0])
    to_old[:3, 3] = offset
    return nib.Nifti1Image(np.clip(fine, 0, None).astype(np.float32), img.affine @ to_old)


def class_means(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """CSF, GM and WM means of a brain: a 3-class mixture of its log intensities."""
    from bids_brainage.features.tissue import segment

    flat = np.full((3,) + data.shape, 1 / 3, np.float32)
    _, info = segment(data, mask, flat)
    return np.array([info["means"][k] for k in ("CSF", "GM", "WM")])


def tight_mask(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A tight strip: the mask where the intensity is above the CSF/GM midpoint."""
    csf, gm, _ = class_means(data, mask)
    return mask & (data > (csf + gm) / 2)


def dilate_mm(mask: np.ndarray, mm: float, zooms) -> np.ndarray:
    """The mask grown by ``mm`` millimetres (a Euclidean distance, any voxel size)."""
    distance = ndimage.distance_transform_edt(~mask, sampling=zooms)
    return distance <= mm


def lower_contrast(data: np.ndarray, mask: np.ndarray, factor: float = 0.6) -> np.ndarray:
    """Grey/white contrast times ``factor``: intensities above the GM mean are pulled towards
    it (monotonic, but not a power law: a 1.5 T-like T1w)."""
    _, gm, _ = class_means(data, mask)
    return np.where(data > gm, gm + (data - gm) * factor, data).astype(np.float32)


def rician_noise(data: np.ndarray, mask: np.ndarray, fraction: float = 0.04,
                 seed: int = 0) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of sd ``fraction`` × WM mean."""
    _, _, wm = class_means(data, mask)
    rng = np.random.default_rng(seed)
    sd = fraction * wm
    real = data + rng.normal(0, sd, data.shape)
    imag = rng.normal(0, sd, data.shape)
    return np.sqrt(real ** 2 + imag ** 2).astype(np.float32)


def atlas_mask(img: nib.Nifti1Image, affine_file: Path) -> np.ndarray:
    """An atlas strip: the template's brain mask brought into the image through the inverse
    of its affine registration (another method than deepbet, with other edges)."""
    import ants

    from bids_brainage.preproc.template import template_1mm, template_mask

    tpl = template_1mm()
    tmask = nib.Nifti1Image(template_mask(tpl).astype(np.float32), tpl.affine)
    back = ants.apply_transforms(ants.from_nibabel_nifti(img), ants.from_nibabel_nifti(tmask),
                                 [str(affine_file)], whichtoinvert=[True],
                                 interpolator="linear")
    return back.numpy() > 0.5


def to_mni_1mm(img: nib.Nifti1Image, affine_file: Path) -> nib.Nifti1Image:
    """The image resampled onto the 1 mm MNI template grid through its affine registration."""
    import ants

    from bids_brainage.preproc.template import template_1mm

    tpl = template_1mm()
    fixed = ants.from_nibabel_nifti(nib.Nifti1Image(np.asarray(tpl.dataobj, np.float32),
                                                    tpl.affine))
    out = ants.apply_transforms(fixed, ants.from_nibabel_nifti(img), [str(affine_file)],
                                interpolator="linear")
    data = np.clip(out.numpy(), 0, None).astype(np.float32)
    return nib.Nifti1Image(data, tpl.affine)


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


def make_variant(img: nib.Nifti1Image, variant: str, mask: np.ndarray | None = None,
                 affine_file: Path | None = None):
    """``img`` changed as ``variant`` says; ``mask`` is a reference brain mask and
    ``affine_file`` the image's affine registration to the template (ITK .mat)."""
    data = img.get_fdata(dtype=np.float32)
    if variant in NEEDS_MASK and mask is None:
        raise ValueError(f"the {variant} variant needs a brain mask")
    if variant in NEEDS_AFFINE and affine_file is None:
        raise ValueError(f"the {variant} variant needs the image's affine registration")

    def stripped(keep):
        return nib.Nifti1Image(np.where(keep, data, 0).astype(np.float32), img.affine)

    if variant == "orig":
        return nib.Nifti1Image(data, img.affine)
    if variant == "strip":
        return stripped(mask)
    if variant == "tight":
        return stripped(tight_mask(data, mask))
    if variant == "loose":
        return stripped(dilate_mm(mask, 3.0, img.header.get_zooms()[:3]))
    if variant == "atlas":
        return stripped(atlas_mask(img, affine_file))
    if variant == "mni1mm":
        return to_mni_1mm(stripped(mask), affine_file)
    if variant == "lowcon":
        return nib.Nifti1Image(lower_contrast(data, mask), img.affine)
    if variant == "aniso":
        zooms = np.array(img.header.get_zooms()[:3], float)
        return resample_voxels(img, np.array([1.0, 1.33, 1.33]) / zooms)
    if variant == "noise":
        brain = mask if mask is not None else data > np.percentile(data, 75)
        return nib.Nifti1Image(rician_noise(data, brain), img.affine)
    if variant == "res1":
        return upsample_to_1mm(img)
    if variant in ("gam08", "gam125"):
        return gamma(img, 0.8 if variant == "gam08" else 1.25)
    if variant == "scale10":
        return nib.Nifti1Image(data * 10, img.affine)
    if variant == "bias":
        return nib.Nifti1Image(data * bias_field(data.shape), img.affine)
    raise ValueError(f"unknown variant {variant!r}")


def load_head(t1w: Path, mask_path: Path | None = None):
    """A raw T1w in RAS+ and its reference brain mask (boolean, or None without one): how
    the variants and the training's contrast copies (``training.raw_copies``) read a head."""
    img = nib.as_closest_canonical(nib.load(str(t1w)))
    if mask_path is None:
        return img, None
    return img, np.asanyarray(nib.as_closest_canonical(nib.load(str(mask_path))).dataobj) > 0


def start_dataset(out_dir: Path, name: str) -> Path:
    """``out_dir`` made, with the ``dataset_description.json`` of a generated dataset."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset_description.json").write_text(json.dumps(
        {"Name": name, "BIDSVersion": "1.9.0"}))
    return out_dir


def write_variant_dataset(images: dict[str, tuple], out_dir: Path,
                          variants=tuple(VARIANTS)) -> Path:
    """A BIDS dataset with one participant per image × variant (``sub-<label><variant>``).

    ``images`` maps a participant label to (its T1w, a reference brain mask or None[, its
    affine registration to the template or None]); variants that need what is missing are
    left out.
    """
    out_dir = start_dataset(out_dir, "bids_brainage robustness variants")
    lines = ["participant_id"]
    for label, (t1w, mask_path, *rest) in images.items():
        affine_file = rest[0] if rest else None
        img, mask = load_head(t1w, mask_path)
        for variant in variants:
            if ((variant in NEEDS_MASK and mask is None)
                    or (variant in NEEDS_AFFINE and affine_file is None)):
                continue
            sub = f"sub-{label}{variant}"
            folder = out_dir / sub / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            make_variant(img, variant, mask, affine_file).to_filename(
                str(folder / f"{sub}_T1w.nii.gz"))
            lines.append(sub)
    (out_dir / "participants.tsv").write_text("\n".join(lines) + "\n")
    return out_dir


def prediction_changes(predictions: dict[str, dict[str, float]], labels,
                       variants=tuple(VARIANTS), statistic=np.mean) -> dict[str, dict[str, float]]:
    """``{model: {variant: mean |prediction(variant) − prediction(original)|}}`` (or another
    ``statistic`` of the |changes|, e.g. ``np.max`` for the worst image).

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
    return {m: {v: round(float(statistic(d)), 3) for v, d in vs.items()} for m, vs in out.items()}


ROBUST_LIMIT = 2.0  # years: the largest mean |change| a default model may show


def run_variants(model_dir: Path, images: dict[str, tuple], work: Path, nprocs: int = 2,
                 variants=tuple(VARIANTS)) -> dict[str, dict[str, dict]]:
    """The variants of ``images`` (:func:`write_variant_dataset`) run through the app with
    every model of ``model_dir``: ``{participant_id: {model: its _brainage.tsv row}}``, rows
    with status ok only."""
    import csv
    import shutil

    from bids_brainage.cli.run import main as app

    data = write_variant_dataset(images, Path(work) / "variants", variants)
    out = Path(work) / "variants_out"
    # a fresh output folder: a variant that fails now must not be read from an earlier run
    shutil.rmtree(out, ignore_errors=True)
    app([str(data), str(out), "participant", "-w", str(Path(work) / "variants_work"),
         "--nprocs", str(nprocs), "--skip-bids-validation", "--no-report", "--models", "all",
         "--model-dir", str(model_dir)])
    rows: dict[str, dict[str, dict]] = {}
    for tsv in out.glob("sub-*/anat/*_brainage.tsv"):
        with tsv.open(newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                if row["status"] == "ok":
                    rows.setdefault(row["participant_id"], {})[row["model"]] = row
    return rows


def evaluate(model_dir: Path, images: dict[str, tuple], work: Path, nprocs: int = 2,
             variants=tuple(VARIANTS), worst: bool = False):
    """Run every model of ``model_dir`` on the variants of ``images``; the mean |change|
    (and, with ``worst``, also the largest |change| of one image: a pair of tables)."""
    predictions = {pid: {model: float(row["predicted_age"]) for model, row in by_model.items()}
                   for pid, by_model in run_variants(model_dir, images, work, nprocs,
                                                     variants).items()}
    mean = prediction_changes(predictions, list(images), variants)
    if worst:
        return mean, prediction_changes(predictions, list(images), variants, np.max)
    return mean


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


def pick_spread(ages, n: int) -> np.ndarray:
    """``n`` indices whose ages spread evenly over the range (deterministic).

    >>> pick_spread([50, 20, 80, 35, 65], 3).tolist()
    [1, 0, 2]
    """
    order = np.argsort(np.asarray(ages, float), kind="stable")
    return order[np.unique(np.round(np.linspace(0, len(order) - 1, n)).astype(int))]


def gate(members, subjects, ages, groups, defaults, derivatives, args, work_dir: Path,
         common: dict):
    """The robustness gate: the candidate defaults (and their ensemble) fitted without
    ``args.robustness`` participants, whose images, changed as other sites change them, run
    through the app. Returns ``({"mean", "worst", "about"}, {model: reason})``."""
    from bids_brainage.training.crossval import fit_ensemble
    from bids_brainage.training.raw_copies import label, source_files
    from bids_brainage.training.train import member_input, member_kind, save_member, write_models

    held = pick_spread(ages, args.robustness)
    held_ids = sorted({groups[i] for i in held})
    rows = np.flatnonzero(~np.isin(groups, held_ids))
    candidates = [m for m in members if m.name in defaults]
    fitted = fit_ensemble(candidates, ages, rows, groups, k=args.folds, seed=args.random_seed,
                          recalibrate=getattr(args, "recalibrate", True))
    model_dir = Path(work_dir) / "robustness_models"
    model_dir.mkdir(parents=True, exist_ok=True)
    cards = [{"name": m.name, "kind": member_kind(m.name),
              "file": save_member(m.name, fitted.models[m.name], model_dir),
              "input": member_input(m.name, args), "default": True,
              "recalibration": fitted.lines[m.name],
              "interval": fitted.intervals[m.name]} for m in candidates]
    cards.append({"name": "ensemble", "kind": "ensemble", "members": fitted.weights,
                  "intercept": 0.0, "recalibration": fitted.lines["ensemble"],
                  "default": True, "interval": fitted.interval})
    write_models(model_dir, cards)
    masks = Path(args.reference_masks or derivatives)
    images = {label(subjects[i]): source_files(subjects[i], args.bids_dir, masks, derivatives)
              for i in held}
    mean, worst = evaluate(model_dir, images, Path(work_dir) / "robustness", args.nprocs,
                           worst=True)
    reasons = {n: r for n, r in robust_models({n: mean[n] for n in defaults if n in mean}).items()
               if r}
    about = {"limit_years": ROBUST_LIMIT, "participants": held_ids,
             "fitted_without_them": True,
             "mask_for_stripped_variants": "reference" if args.reference_masks else "pipeline",
             "variants": {v: d for v, d in VARIANTS.items() if v != "orig"}}
    return {"mean": mean, "worst": worst, "about": about}, reasons
