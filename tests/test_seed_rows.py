"""The original project's histogram rows as training rows of the rf_sites forest
(bids_brainage.training.seed_rows), on the real seed file."""
from __future__ import annotations

import doctest
import json

import numpy as np
import pytest

from bids_brainage.training import seed_rows
from conftest import SHARED_DATA

REP2 = SHARED_DATA / "seed-histograms" / "rep2.json"


def test_doctests():
    assert doctest.testmod(seed_rows).failed == 0


@pytest.mark.skipif(not REP2.exists(), reason="needs ../shared/data/seed-histograms")
def test_other_sites_always_own_site_only_for_pool_participants():
    ids = ["sub-IXI012", "sub-IXI015", "sub-IXI012", "sub-NOTIXI"]  # IXI012 has two images
    rows = seed_rows.load_seed_rows(REP2, ids)
    table = json.loads(REP2.read_text())
    others = sum(len(v) for k, v in table.items() if k != "IXI")
    assert len(rows.x) == len(rows.ages) == others == rows.source["rows"]
    assert "IXI" not in rows.sites and len(set(rows.sites)) == 20
    # IXI rows: only of the participants asked for, one per image of theirs
    assert sorted(rows.own_of.tolist()) == [0, 1, 2]
    assert rows.own_x.shape == (3, 100)
    # densities in the member's log-quantile form, like model_inputs' (range -1..1.6)
    assert np.allclose(rows.x.sum(1) * 2.6 / 100, 1.0)
    assert rows.source["form"] == "logquantile"
    plain = seed_rows.load_seed_rows(REP2, ids, {"feature": "histogram", "normalization": "gmm"})
    assert np.allclose(plain.x.sum(1) * 1.5 / 100, 1.0) and plain.source["form"] == "as stored"
    from bids_brainage.features.histogram import gmm_to_logquantile

    assert np.allclose(rows.x[7], gmm_to_logquantile(plain.x[7]))
    assert np.allclose(rows.own_x[rows.own_of == 0], rows.own_x[rows.own_of == 2])
    assert 5 < rows.ages.min() and rows.ages.max() < 100


def test_a_bad_seed_file_is_named(tmp_path):
    bad = tmp_path / "rep2.json"
    bad.write_text(json.dumps({"Site": [{"name": "a", "age": 30, "hist": [1, 2]}]}))
    with pytest.raises(ValueError, match="rep2.json.*100-bin"):
        seed_rows.load_seed_rows(bad, ["sub-IXI012"])
    bad.write_text("{")
    with pytest.raises(ValueError, match="rep2.json.*not a readable"):
        seed_rows.load_seed_rows(bad, ["sub-IXI012"])
