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


def test_tissue_map_sums_every_map_of_a_voxel():
    """Contributions of two maps or of four (modulated and unmodulated GM and WM) give one
    map whose total is theirs; a length that is not whole maps is refused."""
    from bids_brainage.features import tissue

    n = int(tissue.feature_mask().sum())
    rng = np.random.default_rng(1)
    two = rng.normal(0, 1e-3, 2 * n)
    four = np.concatenate([two, rng.normal(0, 1e-3, 2 * n)])
    assert explain.tissue_map(two).sum() == pytest.approx(two.sum(), abs=1e-4)
    assert explain.tissue_map(four).sum() == pytest.approx(four.sum(), abs=1e-4)
    first = explain.tissue_map(np.concatenate([two, np.zeros(2 * n)]))
    assert np.array_equal(first, explain.tissue_map(two))
    with pytest.raises(ValueError, match="not whole maps"):
        explain.tissue_map(four[:-1])


def expand_around(volume: np.ndarray, centre, amount: float = 0.35, sigma: float = 8.0):
    """A smooth deformation that enlarges what lies around ``centre`` (voxels): each voxel
    samples the image closer to the centre, by ``amount`` of its offset times a Gaussian of
    width ``sigma`` voxels (a dilation by a smooth warp, as SyN would make one)."""
    grid = np.indices(volume.shape).astype(np.float32)
    offset = grid - np.asarray(centre, np.float32)[:, None, None, None]
    weight = np.exp(-(offset ** 2).sum(axis=0) / (2 * sigma ** 2))
    return ndimage.map_coordinates(volume, grid - amount * offset * weight, order=1)


def example_brain(example_run):
    """sub-IXI354's 2 mm MNI brain and mask from the example's run."""
    _, out, _ = example_run
    anat = out / "sub-IXI354" / "anat"
    mni = nib.load(str(anat / "sub-IXI354_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz"))
    mask = np.asanyarray(nib.load(str(
        anat / "sub-IXI354_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz")).dataobj) > 0
    return mni.get_fdata(dtype=np.float32), mask


def region_changes(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> dict:
    """How each atlas region's contribution of the bundled tissue model changes (years)."""
    from bids_brainage.models.forest import load_forest
    from bids_brainage.models.predict import model_inputs
    from bids_brainage.models.registry import load_cards, verified_file

    card = load_cards()["tissue"]
    model = load_forest(verified_file(card))

    def regions(volume):
        rows = explain.explain(model, model_inputs(volume, mask, card["input"]))["regions"]
        return {r["index"]: r["years"] for r in rows}

    a, b = regions(before), regions(after)
    return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in set(a) | set(b)}


@pytest.mark.slow
def test_enlarged_ventricles_come_out_on_top(example_run):
    """Enlarge one participant's lateral ventricles by a smooth warp on its MNI brain: the
    regions that change most are all inside the warped part, and the brain looks older.

    With the modulated maps alone the right lateral ventricle came out on top; the bundled
    tissue model also reads the unmodulated maps, which see the enlargement as tissue pushed
    aside: the thalami, the right ventral DC and caudate then change most (measured: right
    thalamus +0.16, right lateral ventricle not among the top five). A change made inside
    one region is found in that region: the next test."""
    data, mask = example_brain(example_run)
    labels, names = explain.atlas()
    centre = ndimage.center_of_mass(np.isin(labels, [51, 52]))
    delta = region_changes(data, expand_around(data, centre), mask)
    top = sorted(delta, key=lambda k: -abs(delta[k]))[:5]
    index = np.indices(data.shape)[0].astype(np.float32)
    warped = np.abs(expand_around(index, centre) - index) > 0.5
    touched = set(np.unique(labels[warped])) - {0}
    assert set(top) <= touched, ([names.get(k) for k in top], delta)
    assert sum(delta.values()) > 0.2  # measured +0.39 y: larger ventricles look older


@pytest.mark.slow
def test_tissue_changed_in_one_region_puts_that_region_on_top(example_run):
    """Darken one participant's right hippocampus (its intensities × 0.7 on the MNI brain:
    grey matter read as part CSF, white as part grey): the region whose contribution changes
    most is the right hippocampus (measured −0.32 y; the next, the right temporal white
    matter around it, −0.19)."""
    data, mask = example_brain(example_run)
    labels, names = explain.atlas()
    target = next(k for k, v in names.items() if v == "Right Hippocampus")
    changed = data.copy()
    changed[(labels == target) & mask] *= 0.7
    delta = region_changes(data, changed, mask)
    top = sorted(delta, key=lambda k: -abs(delta[k]))[:3]
    assert top[0] == target, [(names.get(k), round(delta[k], 3)) for k in top]


def _template_brain():
    from bids_brainage.preproc.template import template_2mm, template_mask

    tpl = template_2mm()
    return tpl.get_fdata(dtype=np.float32), template_mask(tpl)


def test_occlusion_rows_are_the_histogram_without_each_region():
    """Row 0 is the forest's input; each other row is the forest's input made on the brain
    without that region (the whole brain's tissue class means kept)."""
    from bids_brainage.features.histogram import intensity_histogram
    from bids_brainage.models.predict import model_inputs, model_region, tissue_fractions
    from bids_brainage.models.registry import load_cards
    from bids_brainage.preproc.normalize import log_tissue_normalise

    data, mask = _template_brain()
    spec = load_cards()["rf"]["input"]
    rows, present = explain.histogram_occlusion_inputs(data, mask, spec)
    assert rows.shape == (present.size + 1, 103)
    np.testing.assert_allclose(rows[0], model_inputs(data, mask, spec), atol=1e-5)
    region = model_region(mask, spec)
    _, whole = log_tissue_normalise(data, region, method=spec["normalization"])
    labels, _ = explain.atlas()
    for k in (0, present.size // 2, present.size - 1):
        without = region & (labels != present[k])
        norm, info = log_tissue_normalise(data, without, method=spec["normalization"])
        # the whole brain's class means (log units), in this normalisation's units
        info["peaks"] = {c: (p - whole["shift"]) / whole["scale"] * info["scale"] + info["shift"]
                         for c, p in whole["peaks"].items()}
        direct = np.concatenate([
            intensity_histogram(norm, without, spec["normalization"], spec["bins"])[0],
            tissue_fractions(norm, without, info)])
        np.testing.assert_allclose(rows[k + 1], direct, atol=1e-4)


def test_plain_gmm_histogram_occlusion_rows():
    """rf_sites's GMM histogram (log-quantile form): row 0 is its input; each other row is
    the histogram of the brain's normalised voxels without that region, the whole brain's
    normalisation kept, in the same form."""
    from bids_brainage.features.histogram import intensity_histogram
    from bids_brainage.models.predict import histogram_form, model_inputs, model_region
    from bids_brainage.preproc.normalize import normalize_intensity
    from bids_brainage.training.seed_rows import SITES_INPUT

    data, mask = _template_brain()
    rows, present = explain.histogram_occlusion_inputs(data, mask, SITES_INPUT)
    assert rows.shape == (present.size + 1, 100)
    np.testing.assert_allclose(rows[0], model_inputs(data, mask, SITES_INPUT), atol=1e-9)
    region = model_region(mask, SITES_INPUT)  # inside the template brain, not eroded
    assert 0.9 * mask.sum() < region.sum() <= mask.sum()
    norm, _ = normalize_intensity(data, region, "gmm")
    labels, _ = explain.atlas()
    for k in (0, present.size // 2, present.size - 1):
        without = region & (labels != present[k])
        direct = histogram_form(intensity_histogram(norm, without, "gmm", 100)[0], SITES_INPUT)
        # a voxel on a bin edge may round to the other bin: one voxel is ~1e-5 of density
        np.testing.assert_allclose(rows[k + 1], direct, atol=1e-4)
        assert not np.allclose(rows[k + 1], rows[0])


def test_occlusion_finds_a_region_painted_dark():
    """Paint one large region with CSF-like intensities: the forest's occlusion value of that
    region changes most of all regions, and in the older direction."""
    from bids_brainage.models.forest import load_forest
    from bids_brainage.models.registry import load_cards, verified_file

    data, mask = _template_brain()
    card = load_cards()["rf"]
    model = load_forest(verified_file(card))
    labels, names = explain.atlas()
    target = 81  # Frontal Lobe White Matter Right
    csf = np.percentile(data[mask], 5)
    painted = np.where(labels == target, csf, data).astype(np.float32)

    def regions(volume):
        rows = explain.forest_occlusion(model, volume, mask, card["input"])["regions"]
        return {r["index"]: r["years"] for r in rows}

    before, after = regions(data), regions(painted)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}
    top = sorted(delta, key=lambda k: -abs(delta[k]))
    assert top[0] == target, [(names.get(k), round(delta[k], 2)) for k in top[:5]]
    assert delta[target] > 1.0


def test_combined_map_is_the_sum_of_its_members():
    labels, _ = explain.atlas()
    rng = np.random.default_rng(1)
    a = {"map": rng.normal(0, 1e-3, labels.shape), "method": "exact linear contributions",
         "weight": 0.6, "total_years": 1.0, "training_mean": 45.0}
    b = {"map": rng.normal(0, 1e-3, labels.shape), "method": "occlusion", "weight": 0.4,
         "total_years": None}
    out = explain.combine({"tissue": a, "rf": b}, "ensemble")
    np.testing.assert_allclose(out["map"], a["map"] + b["map"])
    assert out["members"]["rf"]["method"] == "occlusion" and out["weight"] == 1.0
    assert out["total_years"] == 1.0  # the linear member's; occlusion values do not add up
    assert sum(r["years"] for r in out["regions"]) == pytest.approx(out["map"].sum(), abs=1e-2)
