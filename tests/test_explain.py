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


def expand_around(volume: np.ndarray, centre, amount: float = 0.35, sigma: float = 8.0):
    """A smooth deformation that enlarges what lies around ``centre`` (voxels): each voxel
    samples the image closer to the centre, by ``amount`` of its offset times a Gaussian of
    width ``sigma`` voxels (a dilation by a smooth warp, as SyN would make one)."""
    grid = np.indices(volume.shape).astype(np.float32)
    offset = grid - np.asarray(centre, np.float32)[:, None, None, None]
    weight = np.exp(-(offset ** 2).sum(axis=0) / (2 * sigma ** 2))
    return ndimage.map_coordinates(volume, grid - amount * offset * weight, order=1)


@pytest.mark.slow
def test_enlarged_ventricles_come_out_on_top(example_run):
    """Enlarge one participant's lateral ventricles by a smooth warp on its MNI brain: the
    region whose contribution changes most is a lateral ventricle, the regions that change
    most are all inside the warped part, and the brain looks older."""
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
    centre = ndimage.center_of_mass(np.isin(labels, [51, 52]))
    changed = expand_around(data, centre)
    card = load_cards()["tissue"]
    model = load_forest(verified_file(card))

    def regions(volume):
        rows = explain.explain(model, model_inputs(volume, mask, card["input"]))["regions"]
        return {r["index"]: r["years"] for r in rows}

    before, after = regions(data), regions(changed)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}
    top = sorted(delta, key=lambda k: -abs(delta[k]))[:5]
    index = np.indices(data.shape)[0].astype(np.float32)
    warped = np.abs(expand_around(index, centre) - index) > 0.5
    touched = set(np.unique(labels[warped])) - {0}
    assert top[0] in (51, 52), [names.get(k) for k in top]  # measured: right lateral ventricle
    assert set(top) <= touched, ([names.get(k) for k in top], delta)
    assert sum(delta.values()) > 0.2  # measured +0.6 y: larger ventricles look older
