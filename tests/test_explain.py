"""Why this age: contributions of the linear tissue model, summed per atlas region."""
from __future__ import annotations

import doctest

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_brainage.models import explain


def test_doctests():
    assert doctest.testmod(explain).failed == 0


def test_atlas_is_on_the_model_grid_with_named_regions():
    from bids_brainage.preproc.template import template_2mm

    labels, names = explain.atlas()
    assert labels.shape == template_2mm().shape
    present = set(np.unique(labels)) - {0}
    assert len(present) > 100 and present <= set(names)
    assert names[51] == "Right Lateral Ventricle" and names[48] == "Left Hippocampus"


def test_region_sums_add_up_to_the_map():
    labels, _ = explain.atlas()
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1e-3, labels.shape)
    rows = explain.region_contributions(values)
    assert sum(r["years"] for r in rows) == pytest.approx(values.sum(), abs=1e-2)
    assert abs(rows[0]["years"]) >= abs(rows[-1]["years"])


@pytest.mark.slow
def test_enlarged_ventricles_come_out_on_top(example_run):
    """Enlarge one participant's lateral ventricles (dilate them by 4 mm into the tissue
    around them, at CSF intensity) on the MNI brain: the regions that change most in the
    tissue model's contributions are the ventricles and what the dilation covered, and the
    change makes the brain look older."""
    from bids_brainage.models.forest import load_forest
    from bids_brainage.models.predict import model_inputs
    from bids_brainage.models.registry import load_cards, verified_file

    _, out, _ = example_run
    anat = out / "sub-IXI354" / "anat"
    mni = nib.load(str(anat / "sub-IXI354_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz"))
    data = mni.get_fdata(dtype=np.float32)
    mask = np.asanyarray(nib.load(str(
        anat / "sub-IXI354_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz")).dataobj) > 0
    labels, names = explain.atlas()
    ventricles = np.isin(labels, [51, 52])
    grown = ndimage.binary_dilation(ventricles, iterations=2) & mask
    changed = data.copy()
    changed[grown] = np.percentile(data[mask], 3)  # CSF
    card = load_cards()["tissue"]
    model = load_forest(verified_file(card))

    def regions(volume):
        rows = explain.explain(model, model_inputs(volume, mask, card["input"]))["regions"]
        return {r["index"]: r["years"] for r in rows}

    before, after = regions(data), regions(changed)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}
    top = sorted(delta, key=lambda k: -abs(delta[k]))[:3]
    touched = set(np.unique(labels[grown])) - {0}
    assert set(top) <= touched, ([names.get(k) for k in top], delta)
    assert sum(delta.values()) > 0  # more CSF, less tissue: older
