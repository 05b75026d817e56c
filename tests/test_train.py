"""The training command on a small real subset: it trains, its model directory loads and
predicts, it is deterministic, and altered weights are refused."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bids_brainage.cli.run import main as app
from bids_brainage.models.registry import ModelError, load_cards, verified_file
from bids_brainage.cli.train import main as train
from conftest import EXAMPLE

pytestmark = pytest.mark.slow
SUBSET = ["IXI012", "IXI015", "IXI034", "IXI039", "IXI052", "IXI056", "IXI057", "IXI079",
          "IXI092", "IXI093", "IXI127", "IXI130"]
TINY = ["--models", "rf,tissue,resnet34,morph", "--defaults", "rf,tissue", "--rf-trees", "50",
        "--folds", "3", "--repeats", "2", "--resnet-depth", "10", "--resnet-width", "4",
        "--resnet-epochs", "2", "--resnet-batch-size", "4", "--resnet-normalization",
        "quantile", "--copies", "0", "--nprocs", "2"]


@pytest.fixture(scope="module")
def trained(ixi_pool, tmp_path_factory):
    """Preprocess 12 pool participants once and train tiny models on them twice."""
    base = tmp_path_factory.mktemp("train")
    first = base / "models_a"
    assert train([str(ixi_pool), str(first), "-w", str(base / "work"),
                  "--participant-label", *SUBSET, *TINY]) == 0
    # two more trainings from the same derivatives, on one thread: same seed, same weights
    # (a multi-threaded CPU backward pass need not sum in the same order twice); one repeat
    # of the nested CV is enough to show it and halves the suite's slowest fixture
    once = [*TINY[:TINY.index("--repeats") + 1], "1", *TINY[TINY.index("--repeats") + 2:-1], "1"]
    again = []
    for name in ("models_b", "models_c"):
        folder = base / name
        assert train([str(ixi_pool), str(folder), "--derivatives",
                      str(base / "work" / "derivatives"), "--participant-label", *SUBSET,
                      *once]) == 0
        again.append(folder)
    return first, *again


def test_training_writes_a_model_card_with_metrics(trained):
    cards = load_cards(trained[0])
    assert set(cards) == {"rf", "tissue", "resnet10", "morph", "ensemble"}
    for card in cards.values():
        # every model is fitted on every participant; figures from repeated nested CV
        assert card["training"]["n"] == len(SUBSET)
        assert card["training"]["fitted_on"] == "every labelled participant"
        local = card["interval"]["local"]  # the calibration pairs: n out-of-fold predictions
        assert card["interval"]["level"] == 0.9 and len(local["predicted"]) == len(SUBSET)
        assert min(local["deviation"]) >= 0 and local["predicted"] == sorted(local["predicted"])
        assert "slope" in card["bias_correction"]
        assert f"(n={len(SUBSET)})" in card["bias_correction"]["fitted_on"]
    for name in ("rf", "tissue", "morph", "ensemble"):
        nested = cards[name]["validation"]["nested_cv"]
        assert nested["n"] == len(SUBSET) and nested["repeats"] == 2
        assert nested["mae"] > 0 and "mae_sd" in nested and 0 <= nested["coverage"] <= 1
        # the line that recalibrates the model's raw output, from its out-of-fold predictions
        # (none for a model whose held-out predictions on this handful fall with age)
        line = cards[name].get("recalibration")
        assert line is None or (line["slope"] > 0 and f"(n={len(SUBSET)})" in line["fitted_on"])
    assert cards["resnet10"]["validation"]["cv"]["n"] == len(SUBSET)
    assert cards["resnet10"]["default"] is False and cards["morph"]["default"] is False
    assert cards["rf"]["default"] and cards["tissue"]["default"]
    # the ensemble combines the defaults only, and carries the reliability limits
    assert sorted(cards["ensemble"]["members"]) == ["rf", "tissue"]
    assert sum(cards["ensemble"]["members"].values()) == pytest.approx(1.0)
    reliability = cards["ensemble"]["reliability"]
    assert reliability["distance_limit"] > 0 and reliability["registration_dice_min"] > 0.5
    assert len(reliability["distance_model"]["components"]) >= 1
    # the grey/white contrast line on age, with two-sided limits from held-out images
    contrast = reliability["contrast"]
    assert contrast["sd"] > 0 and contrast["z_range"][0] < 0 < contrast["z_range"][1]
    assert 0 <= reliability["pool_held_out_rates"]["unusual_contrast"] <= 0.5
    # the ResNet's contrast-free input carries its reference quantiles, learnt on the pool
    reference = cards["resnet10"]["input"]["reference"]
    assert cards["resnet10"]["input"]["normalization"] == "quantile" and len(reference) == 101
    assert reference == sorted(reference) and 0.3 < reference[50] < 1.1
    # the default forest reads the contrast-free log histogram and the tissue fractions
    assert cards["rf"]["input"]["normalization"] == "logquantile"
    assert cards["rf"]["input"]["feature"] == "histogram+tissue"
    assert cards["rf"]["preprocessing"].endswith("log intensities (10th percentile = 0, 90th = 1)")
    # the tissue ridge reads the modulated and the unmodulated GM and WM maps
    assert cards["tissue"]["input"] == {"feature": "tissue", "maps": [
        "gm", "wm", "gm_unmodulated", "wm_unmodulated"]}
    assert cards["tissue"]["preprocessing"].endswith("Jacobian-modulated and unmodulated GM and WM")


def test_same_seed_gives_identical_models(trained):
    a, b = ({c["name"]: c for c in json.loads((d / "models.json").read_text())["models"]}
            for d in trained[1:])
    assert a["rf"]["sha256"] == b["rf"]["sha256"]
    assert a["morph"]["sha256"] == b["morph"]["sha256"]
    assert a["tissue"]["sha256"] == b["tissue"]["sha256"]
    assert a["ensemble"]["members"].keys() == b["ensemble"]["members"].keys()
    # the weight files, not only the weights: torch.save once named the zip's folder after
    # the random temporary file, so equal weights gave different sha256s
    assert a["resnet10"]["sha256"] == b["resnet10"]["sha256"]
    assert a["ensemble"]["members"] == b["ensemble"]["members"]


def test_trained_directory_predicts_on_the_example(trained, example_run, tmp_path):
    _, _, work = example_run
    models = tmp_path / "models"
    shutil.copytree(trained[0], models)

    def run(out):
        assert app([str(EXAMPLE), str(out), "participant", "-w", str(work), "--nprocs", "2",
                    "--participant-label", "IXI095", "--model-dir", str(models),
                    "--models", "all", "--no-report"]) == 0
        rows = (out / "sub-IXI095/anat/sub-IXI095_brainage.tsv").read_text().splitlines()
        return {r.split("\t")[3]: r.split("\t") for r in rows[1:]}

    rows = run(tmp_path / "out")
    assert list(rows) == ["rf", "tissue", "morph", "resnet10", "ensemble"]
    # one image, one flag on every row: ok or known reasons
    from bids_brainage.models.reliability import REASONS

    flags = {r[10] for r in rows.values()}
    assert len(flags) == 1 and set(flags.pop().split(";")) <= {"ok", *REASONS}
    # models retrained into the same directory, run with the same work directory: the
    # prediction must come from the new cards, not from nipype's cache of the old ones
    # (it did: the robustness runs of the training command once reported stale figures)
    registry = json.loads((models / "models.json").read_text())
    for card in registry["models"]:
        if card["name"] == "rf":
            card["interval"] = {"halfwidth": 1.25, "level": 0.9}
    (models / "models.json").write_text(json.dumps(registry))
    rf = run(tmp_path / "out2")["rf"]
    assert float(rf[6]) - float(rf[5]) == pytest.approx(2.5, abs=0.01)


def test_training_with_copies(trained, ixi_pool, tmp_path):
    """--copies: every image's randomised copy joins the training rows of the forest and
    the ridge; the card says so; scores still count each image once."""
    models = tmp_path / "models"
    derivatives = trained[0].parent / "work" / "derivatives"
    assert train([str(ixi_pool), str(models), "--derivatives", str(derivatives),
                  "-w", str(derivatives.parent), "--participant-label", *SUBSET,
                  "--models", "rf,tissue", "--defaults", "rf,tissue", "--rf-trees", "50",
                  "--folds", "3", "--repeats", "1", "--copies", "1", "--nprocs", "2"]) == 0
    cards = load_cards(models)
    augmentation = cards["tissue"]["training"]["augmentation"]
    assert augmentation["copies_per_image"] == 1 and augmentation["tight"] == 0.5
    assert "over participants" in cards["tissue"]["architecture"]
    assert cards["ensemble"]["validation"]["nested_cv"]["n"] == len(SUBSET)
    plain = load_cards(trained[0])
    assert cards["tissue"]["sha256"] != plain["tissue"]["sha256"]
    assert cards["rf"]["sha256"] != plain["rf"]["sha256"]


def test_training_with_contrast_copies(trained, ixi_pool, tmp_path):
    """--contrast-copies: each image's copy, made on the raw head with another grey/white
    contrast, runs through the pipeline and joins the tissue ridge's training rows (only its
    rows); the pipeline sees the contrast moved the way the factor says."""
    from bids_brainage.training.dataset import build_inputs, find_subjects
    from bids_brainage.training.raw_copies import read_copies_table

    models = tmp_path / "models"
    derivatives = trained[0].parent / "work" / "derivatives"
    labels = SUBSET[:10]  # the fewest the command trains on: each copy is preprocessed
    assert train([str(ixi_pool), str(models), "--derivatives", str(derivatives),
                  "-w", str(tmp_path / "work"), "--participant-label", *labels,
                  "--models", "rf,tissue", "--defaults", "rf,tissue", "--rf-trees", "30",
                  "--folds", "3", "--repeats", "1", "--nprocs", "2",
                  "--reference-masks", str(ixi_pool / "derivatives" / "dlmuse"),
                  "--contrast-copies", "0.6", "1.4"]) == 0
    cards = load_cards(models)
    block = cards["tissue"]["training"]["contrast_copies"]
    assert block["copies"] == len(labels) and block["contrast_factor"] == [0.6, 1.4]
    assert "contrast_copies" not in cards["rf"]["training"]  # --contrast-copy-models tissue
    assert "over participants" in cards["tissue"]["architecture"]
    assert cards["tissue"]["training"]["n"] == len(labels)  # copies are never counted
    # the copies' own contrast, measured by the pipeline as for any image, against their
    # originals' (the GM-CSF over WM-GM spacing): a factor below 1 narrows WM-GM, so up
    copies_dir = tmp_path / "work" / "contrast_copies"
    table = read_copies_table(copies_dir / "bids")
    copies = find_subjects(copies_dir / "derivatives", table)
    originals = {s.prefix: s for s in find_subjects(derivatives, {
        f"sub-{x}": {"age": "40"} for x in labels})}
    spec = {"feature": "contrast"}
    moved = build_inputs(copies, spec, nprocs=2)[:, 0] - build_inputs(
        [originals[table[c.participant_id]["source"]] for c in copies], spec, nprocs=2)[:, 0]
    factor = np.array([float(table[c.participant_id]["factor"]) for c in copies])
    far = np.abs(factor - 1) > 0.1
    assert far.sum() >= 3 and np.all(np.sign(moved[far]) == np.sign(1 - factor[far]))
    # the table the copies were made from is kept with them; reusing them where another
    # seed draws other factors is refused before any model is fitted
    assert read_copies_table(copies_dir / "derivatives", "contrast_copies.tsv") == table
    assert train([str(ixi_pool), str(tmp_path / "m3"), "--derivatives", str(derivatives),
                  "-w", str(tmp_path / "work"), "--participant-label", *labels,
                  "--models", "rf,tissue", "--reference-masks",
                  str(ixi_pool / "derivatives" / "dlmuse"), "--contrast-copies", "0.6", "1.4",
                  "--contrast-copy-derivatives", str(copies_dir / "derivatives"),
                  "--random-seed", "1"]) == 2
    assert not (tmp_path / "m3" / "models.json").exists()
    # asked for a model that is not trained: refused before any work
    assert train([str(ixi_pool), str(tmp_path / "m2"), "--derivatives", str(derivatives),
                  "--participant-label", *labels, "--models", "rf,tissue",
                  "--contrast-copies", "0.6", "1.4", "--contrast-copy-models", "morph"]) == 2


def test_training_with_seed_rows(trained, ixi_pool, example_run, tmp_path):
    """rf_sites: a GMM-histogram forest trained with the other sites' seed rows; the card
    names them; the app predicts with it; without --seed-rows the command refuses."""
    from conftest import SHARED_DATA

    rep2 = SHARED_DATA / "seed-histograms" / "rep2.json"
    models = tmp_path / "models"
    derivatives = trained[0].parent / "work" / "derivatives"
    common = [str(ixi_pool), str(models), "--derivatives", str(derivatives),
              "-w", str(derivatives.parent), "--participant-label", *SUBSET,
              "--models", "tissue,rf_sites", "--defaults", "tissue,rf_sites", "--rf-trees",
              "30", "--folds", "3", "--repeats", "1", "--nprocs", "2"]
    assert train(common) == 2 and not (models / "models.json").exists()
    assert train([*common, "--seed-rows", str(rep2)]) == 0
    cards = load_cards(models)
    card = cards["rf_sites"]
    assert card["kind"] == "forest" and card["default"]
    assert card["input"] == {"feature": "histogram", "normalization": "gmm", "bins": 100,
                             "form": "logquantile"}
    source = card["training"]["seed_rows"]
    assert source["rows"] == 1093 and len(source["sites"]) == 20
    assert source["own_site_rows"] == len(SUBSET)  # IXI rows of the 12, never anyone else's
    assert card["training"]["n"] == len(SUBSET)  # scored and counted: the pool's images
    assert sorted(cards["ensemble"]["members"]) == ["rf_sites", "tissue"]
    _, _, work = example_run
    out = tmp_path / "out"
    assert app([str(EXAMPLE), str(out), "participant", "-w", str(work), "--nprocs", "2",
                "--participant-label", "IXI095", "--model-dir", str(models),
                "--no-report"]) == 0
    rows = (out / "sub-IXI095/anat/sub-IXI095_brainage.tsv").read_text().splitlines()
    ages = {r.split("\t")[3]: float(r.split("\t")[4]) for r in rows[1:]}
    assert list(ages) == ["tissue", "rf_sites", "ensemble"]
    assert 10 < ages["rf_sites"] < 95


def test_corrupted_weights_are_refused(trained, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(trained[0], copy)
    card = load_cards(copy)["resnet10"]
    weights = copy / card["file"]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        verified_file(card)


def test_doctests():
    import doctest

    from bids_brainage.training import train

    assert doctest.testmod(train).failed == 0


def test_ensemble_weights_minimise_held_out_mae():
    from bids_brainage.training.crossval import ensemble_weights

    rng = np.random.default_rng(0)
    age = rng.uniform(20, 80, 200)
    good, noisy = age + rng.normal(0, 2, 200), age + rng.normal(0, 8, 200)
    useless = np.full(200, age.mean())
    weights = ensemble_weights({"good": good, "noisy": noisy, "useless": useless}, age)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["good"] >= 0.8 and weights["useless"] == 0.0
    assert ensemble_weights({"only": good}, age) == {"only": 1.0}
