"""Domain-randomised training copies (bids_brainage.training.augment), on the template brain."""
from __future__ import annotations

import numpy as np

from bids_brainage.preproc.template import template_2mm, template_mask
from bids_brainage.training import augment
from bids_brainage.training.robustness import class_means


def _brain():
    tpl = template_2mm()
    mask = template_mask(tpl)
    return np.where(mask, tpl.get_fdata(dtype=np.float32), 0).astype(np.float32), mask


def test_a_copy_is_fixed_by_image_index_and_seed():
    data, mask = _brain()
    spec = augment.augmented_spec({"feature": "tissue"}, 0, 20240)
    one = augment.copy_of("sub-01", data, mask, spec["augment"])
    two = augment.copy_of("sub-01", data, mask, spec["augment"])
    assert np.array_equal(one[0], two[0]) and one[2] == two[2]
    draws = {tuple(augment.copy_of(p, data, mask, {**spec["augment"], "index": i})[2].values())
             for p in ("sub-01", "sub-02") for i in range(2)}
    assert len(draws) == 4  # other images and other copies draw otherwise
    assert augment.copy_seed("sub-01", 0, 1) != augment.copy_seed("sub-01", 0, 2)


def test_each_change_does_what_it_says():
    data, mask = _brain()
    csf, gm, wm = class_means(data, mask)
    always = {"contrast": [0.6, 0.6], "tight": 1.0, "noise": [0.0, 0.0]}
    copy, tight, drawn = augment.randomised_copy(data, mask, np.random.default_rng(0), always)
    assert drawn == {"contrast": 0.6, "tight": True, "noise": 0.0}
    # a tight strip: a smaller mask that keeps no voxel darker than the CSF/GM midpoint
    assert tight.sum() < 0.9 * mask.sum() and not (tight & ~mask).any()
    assert copy[~tight].max() == 0
    # grey/white contrast reduced, GM unchanged
    _, gm2, wm2 = class_means(np.where(mask, augment.randomised_copy(
        data, mask, np.random.default_rng(0), {**always, "tight": 0.0})[0], 0), mask)
    assert (wm2 - gm2) < 0.75 * (wm - gm) and abs(gm2 - gm) < 0.1 * (wm - gm)
    # noise: a noisy copy of the unchanged brain differs inside the mask, not outside
    none = {"contrast": [1.0, 1.0], "tight": 0.0, "noise": [0.05, 0.05]}
    noisy, same_mask, _ = augment.randomised_copy(data, mask, np.random.default_rng(1), none)
    assert np.array_equal(same_mask, mask) and noisy[~mask].max() == 0
    assert 0.02 * wm < np.std(noisy[mask] - data[mask]) < 0.1 * wm


def test_training_inputs_of_a_copy_go_through_the_prediction_code(tmp_path, monkeypatch):
    """``subject_inputs`` with an ``augment`` entry gives the model input of the copy."""
    from bids_brainage.models.predict import model_inputs
    from bids_brainage.training import dataset

    data, mask = _brain()
    monkeypatch.setattr(dataset, "load_mni", lambda subject: (data, mask))
    subject = dataset.Subject("sub-01", 40.0, "sub-01", tmp_path)
    from bids_brainage.training.train import FOREST_INPUT as spec

    copy_spec = augment.augmented_spec(spec, 0, 7)
    copy, copy_mask, _ = augment.copy_of("sub-01", data, mask, copy_spec["augment"])
    assert np.allclose(dataset.subject_inputs(subject, copy_spec),
                       model_inputs(copy, copy_mask, spec))
    assert not np.allclose(dataset.subject_inputs(subject, copy_spec),
                           dataset.subject_inputs(subject, spec))
