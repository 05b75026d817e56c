"""Contrast copies made on the raw head (``bids_brainage-train --contrast-copies LOW HIGH``).

The models read a scanner's grey/white contrast as age: held out, a pool image with 40 % less
contrast came out ~8 years older and one with 40 % more ~5 years younger (docs/models.md).
One copy of each training image with its contrast times a factor drawn from U(LOW, HIGH)
(:func:`bids_brainage.training.robustness.lower_contrast`, the reference brain mask's class
means) is written as a BIDS dataset, run through the participant pipeline like any image
(strip, N4, registration: the copy meets every step a real scan meets, unlike the MNI-space
copies of ``training.augment``) and joins the training rows of the chosen members with its
image's age. Copies follow their image into every fold and are never scored
(``training.crossval.Member``).

The factor of image ``i`` (in the order of the training images) is the ``i``-th draw of
``numpy.random.default_rng(seed)``, so a training run is reproducible and its copies'
derivatives can be reused (``--contrast-copy-derivatives``): the table of copies is
remade from the seed, only the images are not. The table the images were made from is kept
with their derivatives (:data:`TABLE`), and a reuse whose remade table differs from it (another
seed, range or set of images draws other factors) is refused (:func:`reuse_problems`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SUFFIX = "c1"  # sub-<label>c1: the image's one copy
TABLE = "contrast_copies.tsv"  # in the copies' derivatives: the table they were made from


def source_files(subject, bids_dir: Path, masks: Path, derivatives: Path | None = None):
    """An image's raw T1w, its reference brain mask (or None) and, with ``derivatives``, its
    affine registration to the template (or None)."""
    t1w = sorted((Path(bids_dir) / subject.participant_id).rglob(f"{subject.prefix}_T1w.nii*"))
    if not t1w:
        raise FileNotFoundError(f"no raw T1w for {subject.prefix} under {bids_dir}")
    mask = sorted(Path(masks).glob(
        f"{subject.participant_id}/**/{subject.prefix}*_desc-brain_mask.nii*"))
    out = [t1w[0], mask[0] if mask else None]
    if derivatives is not None:
        affine = sorted(Path(derivatives).glob(
            f"{subject.participant_id}/**/{subject.prefix}_from-T1w_to-*_mode-image_xfm.mat"))
        out.append(affine[0] if affine else None)
    return tuple(out)


def label(subject) -> str:
    """The BIDS label a copy (or a robustness variant) of this image is named after: its
    prefix's letters and digits (a label allows no others).

    >>> from types import SimpleNamespace
    >>> label(SimpleNamespace(prefix="sub-IXI012")), label(SimpleNamespace(prefix="sub-A_ses-2"))
    ('IXI012', 'Ases2')
    """
    return "".join(ch for ch in subject.prefix.removeprefix("sub-") if ch.isalnum())


def factors(n: int, low: float, high: float, seed: int) -> np.ndarray:
    """The contrast factors of ``n`` images, one draw each in their order.

    >>> factors(3, 0.75, 1.25, 0).round(3).tolist()
    [1.068, 0.885, 0.77]
    """
    rng = np.random.default_rng(seed)
    return np.array([float(rng.uniform(low, high)) for _ in range(n)])


def copy_table(subjects, bids_dir: Path, masks: Path, low: float, high: float,
               seed: int) -> list[dict]:
    """One row per copy: its ``participant_id``, the ``age`` and ``source`` image it copies,
    its contrast ``factor`` and the raw ``t1w`` and reference ``mask`` it is made from. An
    image without a reference mask gets no copy (its draw is still made, so the others keep
    theirs)."""
    rows = []
    for subject, factor in zip(subjects, factors(len(subjects), low, high, seed)):
        t1w, mask = source_files(subject, bids_dir, masks)
        if mask is not None:
            rows.append({"participant_id": f"sub-{label(subject)}{SUFFIX}", "age": subject.age,
                         "source": subject.prefix, "factor": float(factor),
                         "t1w": t1w, "mask": mask})
    return rows


def write_contrast_copies(table: list[dict], out_dir: Path) -> Path:
    """The copies of ``table`` (:func:`copy_table`) as a BIDS dataset in ``out_dir``, its
    ``participants.tsv`` naming each copy's age, source image and factor."""
    import nibabel as nib

    from bids_brainage.training.robustness import load_head, lower_contrast, start_dataset

    out_dir = start_dataset(out_dir, "bids_brainage contrast copies (training only)")
    for row in table:
        sub = row["participant_id"]
        img, mask = load_head(row["t1w"], row["mask"])
        target = out_dir / sub / "anat" / f"{sub}_T1w.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        copy = lower_contrast(img.get_fdata(dtype=np.float32), mask, row["factor"])
        nib.Nifti1Image(copy, img.affine).to_filename(str(target))
    (out_dir / "participants.tsv").write_text(table_lines(table))
    return out_dir


def table_lines(table: list[dict]) -> str:
    """``table`` as a TSV of each copy's ``participant_id``, ``age``, ``source``, ``factor``."""
    lines = ["participant_id\tage\tsource\tfactor"]
    lines += [f"{r['participant_id']}\t{r['age']}\t{r['source']}\t{r['factor']:.4f}"
              for r in table]
    return "\n".join(lines) + "\n"


def read_copies_table(copies_dir: Path, name: str = "participants.tsv") -> dict[str, dict]:
    """A copies dataset's ``participants.tsv`` (or their derivatives' :data:`TABLE`):
    ``{participant_id: {age, source, factor}}``."""
    import csv

    with (Path(copies_dir) / name).open(newline="") as fh:
        return {row["participant_id"]: row for row in csv.DictReader(fh, delimiter="\t")}


def keep_table(table: list[dict], derivatives: Path) -> None:
    """Keep the table the copies were made from with their derivatives (:data:`TABLE`)."""
    (Path(derivatives) / TABLE).write_text(table_lines(table))


class ReusedCopiesError(ValueError):
    """``--contrast-copy-derivatives`` names copies that are not the ones this run draws."""


def reuse_problems(table: list[dict], derivatives: Path) -> list[str]:
    """Why the copies in ``derivatives`` are not the copies of ``table`` (empty: they are).

    Each copy this run would make must have been made from the same image with the same
    factor (to the 4 decimals kept): other factors come from another ``--random-seed``,
    another ``--contrast-copies`` range or another set or order of images (e.g.
    ``--participant-label``), and the card would then describe copies that were not trained on.

    >>> import tempfile
    >>> row = {"participant_id": "sub-Ac1", "age": 30.0, "source": "sub-A", "factor": 0.91}
    >>> folder = Path(tempfile.mkdtemp())
    >>> keep_table([row], folder)
    >>> reuse_problems([row], folder)
    []
    >>> reuse_problems([{**row, "factor": 1.2}], folder)[0].split(": ", 1)[1]
    'sub-Ac1 was made with contrast factor 0.9100 from sub-A, this run draws 1.2000 from sub-A'
    """
    path = Path(derivatives) / TABLE
    if not path.is_file():
        return [f"{path}: missing; bids_brainage-train --contrast-copies keeps there the "
                f"table of the copies it makes (copies made before it did: make them again)"]
    made = read_copies_table(derivatives, TABLE)
    problems = []
    for row in table:
        old = made.get(row["participant_id"])
        if old is None:
            continue  # not among the reused copies: it has no outputs there, as a failed copy
        if old["source"] != row["source"] or abs(float(old["factor"]) - row["factor"]) > 5e-5:
            problems.append(f"{path}: {row['participant_id']} was made with contrast factor "
                            f"{float(old['factor']):.4f} from {old['source']}, this run draws "
                            f"{row['factor']:.4f} from {row['source']}")
    return problems


def copy_subjects(subjects, table: list[dict], derivatives: Path):
    """The copies with complete participant-level outputs in ``derivatives``, and the index
    into ``subjects`` of the image each copies."""
    from bids_brainage.training.dataset import find_subjects

    rows = {row["participant_id"]: row for row in table}
    index = {s.prefix: i for i, s in enumerate(subjects)}
    found = [c for c in find_subjects(derivatives, {k: {"age": str(r["age"])}
                                                    for k, r in rows.items()})
             if rows[c.participant_id]["source"] in index]
    return found, np.array([index[rows[c.participant_id]["source"]] for c in found], int)
