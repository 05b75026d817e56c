"""The changes a real dataset makes to the same brain, on validation images of the bundled
models' card: the variants are what they claim, and the default models hold within the card's
2-year limit."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_brainage.models.registry import BUNDLED_DIR, default_models, load_cards
from bids_brainage.training.robustness import (
    ROBUST_LIMIT,
    evaluate,
    make_variant,
    robust_models,
)


def test_variants_change_what_they_claim():
    rng = np.random.default_rng(0)
    data = rng.uniform(1, 100, (10, 12, 8)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([2, 2, 2, 1.0]))
    fine = make_variant(img, "res1")
    assert fine.shape == (20, 24, 16) and np.allclose(np.diag(fine.affine)[:3], 1)
    assert np.allclose(make_variant(img, "scale10").get_fdata(), data * 10, rtol=1e-6)
    g = make_variant(img, "gam08").get_fdata()
    assert np.all(np.diff(g.ravel()[np.argsort(data.ravel())]) >= -1e-4)  # monotone
    mask = data > 50
    stripped = make_variant(img, "strip", mask).get_fdata()
    assert not stripped[~mask].any() and np.allclose(stripped[mask], data[mask])
    field = make_variant(img, "bias").get_fdata() / data
    assert 0.5 < field.min() < field.max() < 1.6  # about ±30 % and more at the corners


@pytest.mark.slow
def test_default_models_hold_on_changed_validation_images(ixi_pool, tmp_path):
    cards = load_cards()
    val = next(c["training"]["val_participants"] for c in cards.values() if "training" in c)
    labels = [pid.removeprefix("sub-") for pid in val[:2]]
    images = {}
    for label in labels:
        sub = f"sub-{label}"
        images[label] = (ixi_pool / sub / "anat" / f"{sub}_T1w.nii.gz",
                         ixi_pool / "derivatives" / "dlmuse" / sub / "anat"
                         / f"{sub}_desc-brain_mask.nii.gz")
    changes = evaluate(BUNDLED_DIR, images, tmp_path, nprocs=2)
    singles = [m for m in cards if cards[m].get("kind") != "ensemble"]
    verdict = robust_models({m: changes[m] for m in singles})
    for model in singles:
        assert set(changes[model]) == {"strip", "res1", "gam08", "gam125", "scale10", "bias"}
        card = cards[model]
        if card.get("default", True) and "robustness_warning" not in card:
            # N4, the skull strip and the rank/quantile/log-percentile inputs ignore a global
            # intensity scale (N4's output is exactly ×10); what is left is the registration's
            # sampling. (The original GMM-histogram forest moved 3.2 y on IXI015 here: its
            # histogram amplified a slightly different affine.) Measured on these two
            # participants for the bundled forest: ×10 0.45, 1 mm 1.96, gamma 1.25 1.55.
            assert changes[model]["scale10"] < 1.0, changes
            # a model the card calls robust is robust here too
            assert verdict[model] is None, (model, changes[model])
        else:
            # a model the card warns about, or leaves out of the default, shows the change
            # it was judged on
            worst = max(card["robustness"]["mean_abs_change_years"].items(), key=lambda kv: kv[1])
            assert changes[model][worst[0]] >= ROBUST_LIMIT / 2, (model, changes[model])
    assert set(default_models(cards)) >= {"ensemble"}
