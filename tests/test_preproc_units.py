"""Fast tests of the pure preprocessing functions on small arrays."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_brainage.features.histogram import intensity_histogram
from bids_brainage.io import InputError, load_t1w
from bids_brainage.preproc.conform import conform
from bids_brainage.preproc.mask import largest_component
from bids_brainage.preproc.normalize import METHODS, log_tissue_normalise, normalize_intensity
from bids_brainage.preproc.register import antialias


def _tissue_image(seed=0, shape=(20, 20, 20)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, shape)
    data = np.choose(labels, [30.0, 80.0, 120.0]) + rng.normal(0, 4, shape)
    return data.astype(np.float32), labels


@pytest.mark.parametrize("method", METHODS)
def test_each_normalisation_keeps_its_promise_on_synthetic_tissue(method):
    data, labels = _tissue_image()
    mask = np.ones_like(data, bool)
    out, info = normalize_intensity(data * 7.3 + 11, mask, method)  # any scale and offset
    wm = np.median(out[labels == 2])
    gm = np.median(out[labels == 1])
    if method in ("gmm", "fcm"):
        assert wm == pytest.approx(1.0, abs=0.02)
    elif method == "twopoint":
        assert (gm, wm) == (pytest.approx(0.75, abs=0.02), pytest.approx(1.0, abs=0.02))
    elif method == "whitestripe":
        assert wm == pytest.approx(0.0, abs=1.0)  # in units of the stripe's sd
    else:
        assert out[mask].mean() == pytest.approx(0, abs=1e-3)
        assert out[mask].std() == pytest.approx(1, abs=1e-3)
    assert info["method"] == method


def test_normalisation_is_invariant_to_intensity_scale():
    data, _ = _tissue_image(1)
    mask = np.ones_like(data, bool)
    a, _ = normalize_intensity(data, mask, "gmm")
    b, _ = normalize_intensity(data * 10, mask, "gmm")
    assert np.allclose(a, b, atol=1e-4)


def test_log_normalisation_is_the_same_for_any_scale_and_gamma():
    data, labels = _tissue_image(3)
    mask = np.ones_like(data, bool)
    mask[0] = False
    out, info = log_tissue_normalise(data, mask)
    assert info["peaks"]["CSF"] == pytest.approx(0) and info["peaks"]["WM"] == pytest.approx(1)
    assert np.median(out[mask & (labels == 1)]) == pytest.approx(info["peaks"]["GM"], abs=0.03)
    assert not out[~mask].any()
    for scale, gamma in ((10, 1), (1, 0.8), (0.01, 1.25)):
        changed, _ = log_tissue_normalise(scale * data**gamma, mask)
        assert np.abs(changed - out).max() < 1e-3, (scale, gamma)
    # the GMM-normalised image is not: a gamma moves its grey matter
    gmm, _ = normalize_intensity(data, mask, "gmm")
    gmm_g, _ = normalize_intensity(data**0.8, mask, "gmm")
    assert abs(np.median(gmm_g[labels == 1]) - np.median(gmm[labels == 1])) > 0.03


def test_forest_input_is_the_same_for_any_scale_and_gamma():
    from bids_brainage.models.predict import model_inputs
    from bids_brainage.training.train import FOREST_INPUT

    data, _ = _tissue_image(4)
    mask = np.zeros_like(data, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    spec = {k: v for k, v in FOREST_INPUT.items() if k not in ("region", "erode")}
    x = model_inputs(data, mask, spec)
    assert x.shape == (103,) and x[-3:].sum() == pytest.approx(1)
    for scale, gamma in ((10, 1), (1, 0.8), (3, 1.25)):
        assert np.abs(model_inputs(scale * data**gamma, mask, spec) - x).max() < 1e-3


def test_log_normalisation_refuses_a_brain_without_signal():
    with pytest.raises(ValueError, match="too few positive brain voxels"):
        log_tissue_normalise(np.zeros((10, 10, 10)), np.ones((10, 10, 10), bool))


def test_normalisation_zeroes_outside_mask_and_refuses_tiny_masks():
    data, _ = _tissue_image(2)
    mask = np.zeros_like(data, bool)
    mask[2:18, 2:18, 2:18] = True
    out, _ = normalize_intensity(data, mask, "gmm")
    assert not out[~mask].any()
    with pytest.raises(ValueError, match="too few brain voxels"):
        normalize_intensity(data, np.zeros_like(mask), "gmm")


def test_histogram_is_a_density_over_the_method_range():
    data, _ = _tissue_image(3)
    out, _ = normalize_intensity(data, np.ones_like(data, bool), "gmm")
    density, edges = intensity_histogram(out, np.ones_like(out, bool), "gmm")
    assert len(density) == 100 and edges[0] == 0 and edges[-1] == 1.5
    assert (density * np.diff(edges)).sum() == pytest.approx(1.0)


def test_largest_component_removes_islands_and_fills_holes():
    mask = np.zeros((12, 12, 12), bool)
    mask[2:9, 2:9, 2:9] = True
    mask[5, 5, 5] = False          # a hole
    mask[11, 11, 11] = True        # an island
    out = largest_component(mask)
    assert out[5, 5, 5] and not out[11, 11, 11] and out.sum() == 343


def test_conform_reorients_to_ras_without_changing_values():
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    affine = np.array([[0, 0, -2, 10], [-2, 0, 0, 5], [0, 2, 0, 0], [0, 0, 0, 1.0]])  # PSL-ish
    out = conform(nib.Nifti1Image(data, affine))
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    assert out.get_data_dtype() == np.float32
    # the same world coordinate holds the same value
    ijk = np.array([1, 2, 3, 1])
    world = affine @ ijk
    new_ijk = np.round(np.linalg.inv(out.affine) @ world).astype(int)[:3]
    assert out.get_fdata()[tuple(new_ijk)] == data[1, 2, 3]


def test_antialias_leaves_coarse_images_alone_and_smooths_fine_ones():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(16, 16, 16)).astype(np.float32)
    coarse = nib.Nifti1Image(noise, np.diag([2, 2, 2, 1.0]))
    assert antialias(coarse) is coarse
    fine = antialias(nib.Nifti1Image(noise, np.diag([1, 1, 1, 1.0])))
    assert np.asarray(fine.dataobj).std() < 0.5 * noise.std()


@pytest.mark.parametrize("case,reason", [
    ("unreadable", "cannot read the image"),
    ("four_d", "expected a 3-D T1w image"),
    ("zeros", "all zeros"),
    ("singular", "affine is singular"),
    ("nan_affine", "non-finite"),
    ("nan_data", "NaN"),
])
def test_bad_inputs_are_refused_with_file_and_reason(tmp_path, case, reason):
    path = tmp_path / f"{case}.nii.gz"
    good = np.random.default_rng(0).random((32, 32, 32)).astype(np.float32)
    affine = np.eye(4)
    if case == "unreadable":
        path.write_bytes(b"this is not a nifti file")
    elif case == "four_d":
        nib.save(nib.Nifti1Image(np.stack([good, good], -1), affine), path)
    elif case == "zeros":
        nib.save(nib.Nifti1Image(np.zeros_like(good), affine), path)
    elif case in ("singular", "nan_affine"):
        # nibabel refuses to build such affines, so write the header rows directly
        img = nib.Nifti1Image(good, None)
        img.header["qform_code"], img.header["sform_code"] = 0, 1
        img.header["srow_x"] = [1, 0, 0, np.nan if case == "nan_affine" else 0]
        img.header["srow_y"] = [0, 1, 0, 0]
        img.header["srow_z"] = [0, 0, 0, 0] if case == "singular" else [0, 0, 1, 0]
        nib.save(img, path)
    else:
        data = good.copy()
        data[0, 0, 0] = np.nan
        nib.save(nib.Nifti1Image(data, affine), path)
    with pytest.raises(InputError) as err:
        load_t1w(path)
    assert str(path) in str(err.value) and reason in str(err.value)


def test_the_conform_step_keeps_a_scanners_integers_as_int16(tmp_path):
    """The conformed head (a step's input, written uncompressed) is int16 when that loses
    nothing — the real ds000011 head — with the values conform gives; fractions stay float."""
    from bids_brainage.interfaces.preproc import Conform
    from bids_brainage.io import load_t1w

    from conftest import SHARED_DATA

    head = SHARED_DATA / "ds000011-heads/sub-01/anat/sub-01_T1w.nii.gz"
    result = Conform(in_file=str(head)).run(cwd=str(tmp_path))
    written = nib.load(result.outputs.out_file)
    assert result.outputs.out_file.endswith("conformed.nii")
    assert written.get_data_dtype() == np.int16
    expected = conform(load_t1w(head))
    assert np.array_equal(np.asarray(written.dataobj, np.float32), np.asarray(expected.dataobj))
    assert np.allclose(written.affine, expected.affine)

    halves = nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 40), np.float32) * 100
                             + 0.5, np.eye(4))
    halves.to_filename(str(tmp_path / "halves.nii.gz"))
    (tmp_path / "b").mkdir()
    result = Conform(in_file=str(tmp_path / "halves.nii.gz")).run(cwd=str(tmp_path / "b"))
    assert nib.load(result.outputs.out_file).get_data_dtype() == np.float32


def test_a_mixture_is_fitted_once_per_content_of_the_intensities():
    """tissue_means remembers its fits by the intensities' content: the same values give the
    same means without a second fit, other values their own fit, and a caller that changes
    the returned array changes nothing remembered."""
    from bids_brainage.preproc import normalize

    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(m, 4, 3000) for m in (30, 80, 120)])
    normalize._FITTED.clear()
    first = normalize.tissue_means(values)
    first[:] = -1
    again = normalize.tissue_means(values.copy())
    assert len(normalize._FITTED) == 1
    assert np.round(again).tolist() == [30.0, 80.0, 120.0]
    other = normalize.tissue_means(values * 2)
    assert len(normalize._FITTED) == 2 and np.round(other).tolist() == [60.0, 160.0, 240.0]
    for scale in range(3, 30):  # a bounded memory
        normalize.tissue_means(values * scale)
    assert len(normalize._FITTED) == 16


def test_largest_component_on_the_bounding_box_is_the_whole_arrays():
    """Cropping to the mask's box changes no voxel: the same component (ties included) and
    the same holes as labelling and filling the whole array, wherever the mask touches."""
    from scipy import ndimage

    def whole(mask):
        labels, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            mask = labels == int(np.argmax(sizes))
        return ndimage.binary_fill_holes(mask)

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        mask = rng.random(tuple(rng.integers(1, 12, 3))) < rng.uniform(0.05, 0.9)
        if mask.any():
            assert np.array_equal(largest_component(mask), whole(mask))
            checked += 1
    shell = np.zeros((9, 9, 9), bool)  # a hollow box touching the border: filled
    shell[:6, :6, :6] = True
    shell[1:5, 1:5, 1:5] = False
    assert largest_component(shell).sum() == 216 and checked > 250


def test_quantile_by_selection_is_torchs_to_the_bit():
    """deepbet's intensity quantiles, found by selection (preproc.skullstrip.quantile):
    torch.quantile's values exactly, for odd and even sizes, ties, and the ends."""
    import torch

    from bids_brainage.preproc.skullstrip import quantile

    rng = np.random.default_rng(7)
    for i in range(120):
        n = int(rng.integers(1, 3000 if i % 2 else 70000))
        values = [rng.normal(size=n), rng.integers(0, 30, size=n),
                  rng.gamma(2.0, 500.0, size=n)][i % 3].astype(np.float32)
        x = torch.from_numpy(values)
        for q in (0.0, 0.005, 0.5, 0.995, 1.0):
            assert torch.equal(quantile(x, q).reshape(()), x.quantile(q).reshape(())), (n, q)
