"""The BIDS Derivatives layout: names, the dataset description, per-image outputs, failures.

Every file is written atomically (``bids_brainage.io``): readers such as the group level,
running while participants are still being processed, only ever see complete files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bids_brainage import __version__
from bids_brainage.io import atomic_copy, atomic_write_json, atomic_write_text, copy_compressed
from bids_brainage.preproc.template import SPACE

BIDS_VERSION = "1.10.0"
# below this Dice between the registered brain mask and the template's, flag the image
REGISTRATION_DICE_WARN = 0.85
TSV_COLUMNS = (
    "participant_id", "session_id", "run", "model", "predicted_age", "interval_low",
    "interval_high", "age", "brain_age_gap", "status", "flag", "message",
)
# transforms are not in the BIDS schema yet (BEP014): listed here like other apps do
BIDSIGNORE = ("*_xfm.*\n*_brainage.tsv\n*_brainage.json\n*_brainage.nii.gz\n*.html\nlogs/\n"
              "group_brainage.*\n")


def format_value(value) -> str:
    """TSV cell: ``n/a`` for missing values (BIDS), numbers as they are."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return str(value)


def tsv_text(rows: list[dict]) -> str:
    lines = ["\t".join(TSV_COLUMNS)]
    lines += ["\t".join(format_value(row.get(c)) for c in TSV_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"

DERIVATIVES_README = """bids_brainage derivatives

Per T1w image (sub-<label>/[ses-<label>/]anat/):
  *_desc-brain_mask.nii.gz        brain mask, native space
  *_desc-preproc_T1w.nii.gz       N4 bias-corrected T1w, native space (RAS+)
  *_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz   normalised brain, MNI 2 mm grid
  *_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz    brain mask, MNI 2 mm grid
  *_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat  ITK affine, T1w -> MNI
  *_space-MNI152NLin2009aSym_desc-contrib_brainage.nii.gz  why this age: each voxel's
                                  contribution to the predicted age (years), MNI 2 mm
  *_brainage.tsv / .json          predicted age per model, interval, gap, status, flag
                                  (ok, or the reasons to doubt it); provenance and the
                                  quantities behind the flag
sub-<label>.html                  visual QC report
group_brainage.tsv/.csv/.json, group_report.html   group level
"""


def output_names(prefix: str) -> dict[str, str]:
    """File names of an image's outputs (DESIGN.md, "Outputs").

    >>> output_names("sub-01_ses-A")["mni_norm"]
    'sub-01_ses-A_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz'
    """
    xfm = f"{prefix}_from-T1w_to-{SPACE}_mode-image"
    return {
        "mask": f"{prefix}_desc-brain_mask.nii.gz",
        "t1w": f"{prefix}_desc-preproc_T1w.nii.gz",
        "mni_norm": f"{prefix}_space-{SPACE}_desc-preproc_T1w.nii.gz",
        "mni_mask": f"{prefix}_space-{SPACE}_desc-brain_mask.nii.gz",
        "affine": f"{xfm}_xfm.mat",
        "warp": f"{xfm}_desc-warp_xfm.nii.gz",
        "contrib": f"{prefix}_space-{SPACE}_desc-contrib_brainage.nii.gz",
        "tsv": f"{prefix}_brainage.tsv",
        "json": f"{prefix}_brainage.json",
    }


def write_dataset_description(output_dir: Path, bids_dir: Path) -> Path:
    """Top-level ``dataset_description.json`` (DatasetType derivative, GeneratedBy) and
    a ``.bidsignore`` for the app's own non-BIDS files."""
    source = {}
    desc_in = Path(bids_dir) / "dataset_description.json"
    try:  # the input's description only names the source: a broken one costs nothing
        source = json.loads(desc_in.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):  # absent, unreadable, not UTF-8, not JSON
        source = {}
    if not isinstance(source, dict):
        source = {}
    generated = {"Name": "bids_brainage", "Version": __version__,
                 "CodeURL": "https://github.com/bids-brainage/bids_brainage"}
    image = os.environ.get("BIDS_BRAINAGE_CONTAINER")
    if image:
        generated["Container"] = {"Type": "docker", "Tag": image}
    description = {
        "Name": f"bids_brainage outputs for {source.get('Name', Path(bids_dir).name)}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [{"URL": f"file://{Path(bids_dir).resolve()}",
                            **({"Version": source["DatasetDOI"]} if "DatasetDOI" in source else {})}],
        "License": source.get("License", "n/a"),
    }
    output_dir = Path(output_dir)
    atomic_write_text(output_dir / ".bidsignore", BIDSIGNORE)
    atomic_write_text(output_dir / "README", DERIVATIVES_README)
    return atomic_write_json(output_dir / "dataset_description.json", description)


def image_sidecars(names: dict, raw: str, normalization: str, skull_strip_method: str,
                   anat_dir: str) -> dict:
    """Sidecars the derivatives spec asks of each image (SkullStripped, Sources, Type)."""
    def own(name):
        return f"bids::{anat_dir}/{name}"

    return {
        "t1w": {"SkullStripped": False, "Sources": [raw],
                "Description": "N4 bias-field corrected T1w, native space, RAS+"},
        "mask": {"Type": "Brain", "Sources": [raw],
                 "Description": f"brain mask ({skull_strip_method}), largest component, "
                                "holes filled"},
        "mni_norm": {"SkullStripped": True, "Description": "brain in MNI space, intensity "
                     "normalised: the input of the models", "Sources": [own(names["t1w"]),
                                                         own(names["affine"])],
                     "SpatialReference": "MNI152NLin2009aSym, 2 mm grid 99x117x95",
                     "IntensityNormalization": normalization},
        "mni_mask": {"Type": "Brain", "Description": "brain mask in MNI space", "Sources": [own(names["mask"])],
                     "SpatialReference": "MNI152NLin2009aSym, 2 mm grid 99x117x95"},
        "contrib": {"Description": "why this age: each voxel's contribution to the ensemble's "
                    "predicted age through its tissue model, in years (positive: looks older "
                    "than the training mean)", "Units": "years",
                    "Sources": [own(names["mni_norm"])],
                    "SpatialReference": "MNI152NLin2009aSym, 2 mm grid 99x117x95"},
    }


def _dice(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 0.0


def qc_warnings(files: dict, normalization: dict, skull_strip_method: str, age) -> list[str]:
    """Warnings a reader of the outputs should see: weak registration, odd tissue peaks."""
    import nibabel as nib
    import numpy as np

    from bids_brainage.preproc.template import template_2mm, template_mask

    warnings = []
    mni_mask = np.asanyarray(nib.load(files["mni_mask"]).dataobj) > 0
    dice = _dice(mni_mask, template_mask(template_2mm()))
    if dice < REGISTRATION_DICE_WARN:
        warnings.append(f"registration: brain mask overlaps the template's with Dice {dice:.2f} "
                        f"(< {REGISTRATION_DICE_WARN}); check the report")
    if skull_strip_method == "none":
        warnings.append("skull stripping skipped: the input was taken as already skull-stripped")
    elif skull_strip_method == "restrip":
        warnings.append("the input looked skull-stripped already: deepbet stripped it again "
                        "inside its non-zero voxels (what the other strip removed stays out)")
    peaks = normalization.get("peaks", {})
    if peaks and not peaks.get("CSF", 0) < peaks.get("GM", 0) < peaks.get("WM", 0):
        warnings.append(f"intensity: tissue peaks out of order {peaks}; is this a T1w image?")
    return warnings, dice


def training_range_notes(model: str, card: dict | None, predicted: float | None,
                         age: float | None) -> list[str]:
    """Notes for a row whose age or prediction lies outside the model's training ages.

    A brain-age model says nothing reliable about people unlike those it learnt from (an
    infant, a child): such rows are kept, and flagged, not hidden.

    >>> card = {"training": {"age_min": 20.2, "age_max": 79.4}}
    >>> training_range_notes("rf", card, 31.0, 8.0)
    ['age 8 y outside the training ages of rf (20.2-79.4 y): an indication, not a measurement']
    """
    training = (card or {}).get("training") or {}
    low, high = training.get("age_min"), training.get("age_max")
    if low is None or high is None:
        return []
    span = f"the training ages of {model} ({low:g}-{high:g} y)"
    notes = []
    if age is not None and not low <= age <= high:
        notes.append(f"age {age:g} y outside {span}")
    if predicted is not None and not low <= predicted <= high:
        notes.append(f"predicted age {predicted:g} y outside {span}")
    if notes:
        notes[-1] += ": an indication, not a measurement"
    return notes


def write_image_outputs(*, output_dir: Path, anat_dir: str, prefix: str, entities: dict, age,
                        source: str, settings: dict, files: dict, normalization: dict,
                        predictions: dict, skull_strip_method: str, timings: dict) -> Path:
    """Copy an image's results into the derivatives and write its TSV and JSON sidecar."""
    folder = Path(output_dir) / anat_dir
    names = output_names(prefix)
    for key, src in files.items():
        if src:
            copy = copy_compressed if names[key].endswith(".nii.gz") else atomic_copy
            copy(src, folder / names[key])
    raw = f"bids:raw:{source}"
    for key, meta in image_sidecars(names, raw, normalization.get("method"),
                                    skull_strip_method, anat_dir).items():
        if key in files and not files[key]:
            continue
        atomic_write_json(folder / names[key].replace(".nii.gz", ".json"), meta)
    warnings, dice = qc_warnings(files, normalization, skull_strip_method, age)
    rows, flags = [], []
    for pred in predictions.get("rows", []):
        gap = None if age is None else round(pred["predicted_age"] - age, 3)
        notes = training_range_notes(pred["model"], predictions.get("models", {}).get(
            pred["model"]), pred["predicted_age"], age)
        rows.append({**entities, **pred, "age": age, "brain_age_gap": gap, "status": "ok",
                     "message": "; ".join(notes) or None})
        if notes:
            flags.append(pred["model"])
            warnings.append("; ".join(notes))
    if not rows:
        warnings.append("no model predicted an age (preprocessing only)")
    sidecar = {
        "Sources": [f"bids:raw:{source}"],
        "status": "ok",
        "models": predictions.get("models", {}),
        "models_json_sha256": predictions.get("cards_sha256"),
        "normalization": normalization,
        "skull_strip": skull_strip_method,
        "registration_dice": round(dice, 4),
        "reliability": predictions.get("reliability", {}),
        "contributions": predictions.get("contributions"),
        "settings": settings,
        "timings": {k: round(float(v), 3) for k, v in timings.items()},
        "warnings": warnings,
    }
    if flags:  # models whose row is outside their training ages (the rows' message says how)
        sidecar["flags"] = {"outside_training_range": flags}
    atomic_write_json(folder / names["json"], sidecar)
    return atomic_write_text(folder / names["tsv"], tsv_text(rows))


def write_failure(*, output_dir: Path, anat_dir: str, prefix: str, entities: dict, age,
                  source: str, message: str, settings: dict) -> Path:
    """One ``failed`` row (and a sidecar with the message) for an image that did not finish."""
    folder = Path(output_dir) / anat_dir
    names = output_names(prefix)
    row = {**entities, "model": None, "age": age, "status": "failed",
           "message": " ".join(message.split())}
    atomic_write_json(folder / names["json"], {
        "Sources": [f"bids:raw:{source}"], "status": "failed", "message": message,
        "settings": settings, "warnings": [],
    })
    return atomic_write_text(folder / names["tsv"], tsv_text([row]))
