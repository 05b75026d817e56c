"""Model files that are data, not code: the ridge as plain arrays predicts as the joblib file."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bids_brainage.models.linear import load_linear, ridge_to_npz
from bids_brainage.models.predict import load_predictor
from bids_brainage.models.registry import BUNDLED_DIR, ModelError, load_cards, sha256sum


def _ridge_card(cards):
    return next(card for card in cards.values() if card.get("kind") == "ridge")


def test_npz_ridge_predicts_exactly_as_the_joblib_file(tmp_path):
    import joblib

    cards = load_cards()
    card = _ridge_card(cards)
    pipeline = joblib.load(BUNDLED_DIR / card["file"])
    models = tmp_path / "models"
    shutil.copytree(BUNDLED_DIR, models)
    npz = ridge_to_npz(pipeline, models / "morph.npz")
    registry = json.loads((models / "models.json").read_text())
    for entry in registry["models"]:
        if entry["name"] == card["name"]:
            entry.update(file=npz.name, sha256=sha256sum(npz))
    (models / "models.json").write_text(json.dumps(registry))

    features = np.random.default_rng(0).normal(size=(20, pipeline[-1].coef_.size))
    as_arrays = load_predictor(load_cards(models)[card["name"]])
    as_pickle = load_predictor(card)
    assert [as_arrays(x) for x in features] == [as_pickle(x) for x in features]


def test_npz_loading_never_unpickles(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, format=np.array("bids_brainage-linear-1"),
             mean=np.array([object()], dtype=object), scale=np.ones(1), coef=np.ones(1),
             intercept=np.array(0.0))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_linear(path)


def test_an_altered_npz_is_refused_by_its_sha256(tmp_path):
    import joblib

    card = dict(_ridge_card(load_cards()))
    npz = ridge_to_npz(joblib.load(BUNDLED_DIR / card["file"]), tmp_path / "m.npz")
    card.update(_dir=str(tmp_path), file="m.npz", sha256=sha256sum(npz))
    with open(npz, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ModelError, match="sha256"):
        load_predictor(card)
