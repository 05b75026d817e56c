"""Participant outputs for the group and report tests, made from the real example images.

Until the participant pipeline writes real derivatives in the tests, these stand in for it:
the example T1w (real IXI scan), a crude brain mask by thresholding, the subject's brain
moved onto the 2 mm MNI grid by its centre of mass, and nilearn's bundled MNI template.
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "ds-ixi3"
COLUMNS = ("participant_id", "session_id", "run", "model", "predicted_age", "interval_low",
           "interval_high", "age", "brain_age_gap", "status", "message")


def nilearn_template() -> Path:
    import nilearn

    return (Path(nilearn.__file__).parent / "datasets" / "data"
            / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")


def crude_brain_mask(data: np.ndarray) -> np.ndarray:
    """Threshold, erode away the skull's bridges, keep the largest blob, grow it back."""
    from scipy import ndimage

    head = data > 0.35 * np.percentile(data[data > 0], 99)
    core = ndimage.binary_erosion(head, iterations=3)
    labels, count = ndimage.label(core)
    if count == 0:
        return head
    largest = 1 + int(np.argmax(ndimage.sum_labels(core, labels, range(1, count + 1))))
    brain = ndimage.binary_dilation(labels == largest, iterations=3) & head
    return ndimage.binary_fill_holes(brain)


def make_image_files(folder: Path, participant: str = "IXI095") -> dict:
    """T1w, mask, MNI-space image, template and template mask on disk; returns the paths."""
    from scipy import ndimage

    folder.mkdir(parents=True, exist_ok=True)
    src = nib.load(str(EXAMPLE / f"sub-{participant}" / "anat" / f"sub-{participant}_T1w.nii.gz"))
    data = np.asarray(src.dataobj, dtype=np.float32)
    mask = crude_brain_mask(data)
    paths = {key: folder / f"{key}.nii.gz" for key in ("t1w", "mask", "mni", "template_mask")}
    nib.save(nib.Nifti1Image(data, src.affine), str(paths["t1w"]))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), src.affine), str(paths["mask"]))

    template = nib.load(str(nilearn_template()))
    tpl = np.asarray(template.dataobj, dtype=np.float32)
    tpl_mask = tpl > 0.2 * tpl.max()
    nib.save(nib.Nifti1Image(tpl_mask.astype(np.uint8), template.affine),
             str(paths["template_mask"]))
    # a 2 mm grid on the template's origin; the subject's brain centred on the template's
    grid = template.affine.copy()
    grid[:3, :3] *= 2
    shape = tuple(int(np.ceil(s / 2)) for s in tpl.shape)
    centre_src = src.affine @ np.r_[ndimage.center_of_mass(mask), 1]
    centre_tpl = template.affine @ np.r_[ndimage.center_of_mass(tpl_mask), 1]
    shift = np.eye(4)
    shift[:3, 3] = centre_src[:3] - centre_tpl[:3]
    to_src = np.linalg.inv(src.affine) @ shift @ grid
    brain = data * mask
    mni = ndimage.affine_transform(brain, to_src[:3, :3], offset=to_src[:3, 3],
                                   output_shape=shape, order=1)
    mni /= np.percentile(brain[mask], 90)
    nib.save(nib.Nifti1Image(mni.astype(np.float32), grid), str(paths["mni"]))

    values, edges = np.histogram(mni[mni > 0.05], bins=np.linspace(0, 1.5, 101), density=True)
    out = {key: str(path) for key, path in paths.items()}
    out["template"] = str(nilearn_template())
    out["histogram"] = {"values": values.tolist(), "edges": edges.tolist(),
                        "normalization": "gmm", "peaks": {"GM": 0.78, "WM": 1.0, "CSF": 0.3}}
    return out


def participant_ages() -> dict[str, float]:
    lines = (EXAMPLE / "participants.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]
    return {r["participant_id"]: float(r["age"]) for r in rows}


def prediction_rows(participant_id: str, age: float | None, *, session=None, run=None,
                    models=(("rf", 3.0), ("resnet34", -2.0)), failed: str | None = None):
    """TSV rows (dicts, strings as the participant level writes them)."""
    def text(value):
        return "n/a" if value is None else (f"{value:.2f}" if isinstance(value, float)
                                            else str(value))

    base = {"participant_id": participant_id, "session_id": text(session), "run": text(run),
            "age": text(age)}
    if failed:
        return [dict(base, model="n/a", predicted_age="n/a", interval_low="n/a",
                     interval_high="n/a", brain_age_gap="n/a", status="failed", message=failed)]
    rows = []
    for model, offset in models:
        predicted = (age if age is not None else 50.0) + offset
        rows.append(dict(base, model=model, predicted_age=text(predicted),
                         interval_low=text(predicted - 8.0), interval_high=text(predicted + 8.0),
                         brain_age_gap=text(None if age is None else predicted - age),
                         status="ok", message="n/a"))
    return rows


def write_tsv(output_dir: Path, rows: list[dict]) -> Path:
    """Write rows as the participant level does: temp name with a dot, then rename."""
    first = rows[0]
    sub = first["participant_id"]
    parts = [sub]
    folder = output_dir / sub
    if first["session_id"] != "n/a":
        parts.append(first["session_id"])
        folder = folder / first["session_id"]
    if first["run"] != "n/a":
        parts.append(f"run-{first['run']}")
    folder = folder / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("_".join(parts) + "_brainage.tsv")
    lines = ["\t".join(COLUMNS)] + ["\t".join(row[c] for c in COLUMNS) for row in rows]
    tmp = folder / f".{path.name}.x1y2.tmp.tsv"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
