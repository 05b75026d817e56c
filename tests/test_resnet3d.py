"""The 3D ResNet on tiny arrays: shapes, augmentation, seeded training, weight files."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bids_brainage.models import resnet3d  # noqa: E402
from bids_brainage.models.registry import ModelError, load_cards, sha256sum  # noqa: E402

TINY = {"start": [40, 50, 40], "size": [16, 16, 16]}


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_data(n=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1.2, (n, 16, 16, 16)).astype(np.float32)
    y = rng.uniform(20, 80, n)
    return x, y


def tiny_card(name="resnet10", depth=10, width=4, mean=50.0, std=15.0):
    return resnet3d.resnet_card(name, depth, width, resnet3d.image_spec(TINY), mean, std)


def train_tiny(seed=3, **kw):
    x, y = tiny_data()
    args = dict(depth=10, width=4, epochs=2, batch_size=3, lr=1e-3, seed=seed,
                augment=resnet3d.DEFAULT_AUGMENT, threads=1, progress=False)
    args.update(kw)
    return resnet3d.train_resnet(x[:4], y[:4], x[4:], y[4:], **args)


def test_crop_to_grid_box_and_downsampling():
    norm = np.zeros(resnet3d.GRID_SHAPE, np.float32)
    norm[49, 60, 40] = 8.0
    norm[0, 0, 94] = np.nan  # outside the box and not finite: must not leak
    spec = resnet3d.image_spec()
    x = resnet3d.crop_to_grid(norm, spec)
    start = spec["crop"]["start"]
    assert x.shape == resnet3d.input_shape(spec) == (81, 96, 82)
    assert x.dtype == np.float32 and np.isfinite(x).all()
    assert x[49 - start[0], 60 - start[1], 40 - start[2]] == 8.0 and x.sum() == 8.0
    # the box is centred on the mid-sagittal plane (x = 0 mm is grid voxel 49)
    assert start[0] + (spec["crop"]["size"][0] - 1) / 2 == 49
    half = resnet3d.crop_to_grid(norm, resnet3d.image_spec(downsample=2))
    assert half.shape == (41, 48, 41) and half.sum() == pytest.approx(1.0)


def test_crop_to_grid_refuses_other_grids():
    with pytest.raises(ValueError, match="2 mm MNI grid"):
        resnet3d.crop_to_grid(np.zeros((120, 120, 90)), resnet3d.image_spec())


@pytest.mark.parametrize("depth", [10, 18, 34, 50])
def test_each_depth_gives_one_output(depth):
    net = resnet3d.build_resnet(depth, width=4).eval()
    with torch.inference_mode():
        out = net(torch.zeros(2, 1, 16, 20, 16))
    assert out.shape == (2, 1)
    last = net[-1]
    assert last.in_features == 32 * (4 if depth == 50 else 1)


def test_build_resnet_refuses_unknown_depth_and_arguments():
    with pytest.raises(ValueError, match="depth 20"):
        resnet3d.build_resnet(20)
    with pytest.raises(TypeError, match="colour"):
        resnet3d.build_resnet(10, 4, colour="red")


def test_augmentation_flip_gamma_and_identity():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 1, 5, 4, 4)
    x[0, 0, 0, 1, 2] = 0.5
    assert resnet3d.augment_batch(x, {}, gen) is x
    flipped = resnet3d.augment_batch(x, {"flip": 1.0}, gen)
    assert torch.allclose(flipped, torch.flip(x, dims=[2]), atol=1e-6)
    gamma = resnet3d.augment_batch(x, {"gamma": 0.3}, gen)
    assert (gamma[x == 0] == 0).all() and gamma[0, 0, 0, 1, 2] != 0.5
    full = resnet3d.augment_batch(torch.rand(2, 1, 9, 10, 11), resnet3d.DEFAULT_AUGMENT, gen)
    assert full.shape == (2, 1, 9, 10, 11) and torch.isfinite(full).all()


def test_training_is_deterministic_for_a_seed():
    net_a, hist_a = train_tiny(seed=3)
    net_b, hist_b = train_tiny(seed=3)
    net_c, _ = train_tiny(seed=4)
    state_a, state_b, state_c = net_a.state_dict(), net_b.state_dict(), net_c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not all(torch.equal(state_a[k], state_c[k]) for k in state_a)
    assert [r["loss"] for r in hist_a["epochs"]] == [r["loss"] for r in hist_b["epochs"]]
    assert len(hist_a["epochs"]) == 2 and "val_mae" in hist_a["epochs"][-1]
    assert not net_a.training
    assert hist_a["target_mean"] == pytest.approx(tiny_data()[1][:4].mean())


def test_save_load_round_trip_predicts_the_same(tmp_path):
    net, hist = train_tiny()
    card = tiny_card(mean=hist["target_mean"], std=hist["target_std"])
    path = resnet3d.save_resnet(net, tmp_path / "resnet10.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet10.pt"]  # no temporary left
    loaded = resnet3d.load_resnet(path, card)
    x = tiny_data()[0][0]
    age = resnet3d.predict_volume(loaded, x, threads=1, card=card)
    assert age == resnet3d.predict_volume(net, x, threads=1, card=card)
    expected = resnet3d.predict_batch(net, x[None], hist["target_mean"], hist["target_std"])[0]
    assert age == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="expects input"):
        resnet3d.predict_volume(loaded, np.zeros((8, 8, 8), np.float32), threads=1, card=card)
    mirrored = resnet3d.predict_volume(loaded, x[::-1], threads=1, card=card)
    card["inference"]["flip"] = True
    both = resnet3d.predict_volume(loaded, x, threads=1, card=card)
    assert both == pytest.approx((age + mirrored) / 2, abs=1e-4)


def test_equal_weights_give_byte_identical_files(tmp_path):
    net = resnet3d.build_resnet(10, 4)
    a = resnet3d.save_resnet(net, tmp_path / "a" / "resnet10.pt")
    b = resnet3d.save_resnet(net, tmp_path / "b" / "resnet10.pt")
    assert a.read_bytes() == b.read_bytes()


def test_load_reads_tensors_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"conv": torch.zeros(1), "payload": ModelError("pickled object")}, path)
    with pytest.raises(ModelError, match="cannot read weight file"):
        resnet3d.load_resnet(path, tiny_card())


def test_load_refuses_wrong_architecture_and_garbage(tmp_path):
    path = resnet3d.save_resnet(resnet3d.build_resnet(18, 4), tmp_path / "r18.pt")
    with pytest.raises(ModelError, match="does not match"):
        resnet3d.load_resnet(path, tiny_card())
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(path.read_bytes()[: 2000])
    with pytest.raises(ModelError, match="cannot read"):
        resnet3d.load_resnet(garbage, tiny_card())


def test_corrupted_weight_file_is_refused_before_loading(tmp_path):
    from bids_brainage.models.predict import load_predictor

    path = resnet3d.save_resnet(resnet3d.build_resnet(10, 4), tmp_path / "resnet10.pt")
    card = dict(tiny_card(), file=path.name, sha256=sha256sum(path))
    (tmp_path / "models.json").write_text(json.dumps({"models": [card]}))
    card = load_cards(tmp_path)["resnet10"]
    assert callable(load_predictor(card))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="altered or corrupt"):
        load_predictor(card)


def test_card_fragment_names_architecture_input_and_target():
    card = resnet3d.resnet_card("resnet34", 34, 16, resnet3d.image_spec(), 49.5, 16.2,
                                dropout=0.2)
    assert card["kind"] == "resnet" and card["name"] == "resnet34"
    assert card["architecture_args"] == {"depth": 34, "width": 16, "dropout": 0.2}
    assert card["input"] == {"feature": "image", "normalization": "gmm",
                             "crop": resnet3d.DEFAULT_CROP, "downsample": 1}
    assert card["target"] == {"mean": 49.5, "std": 16.2}
    assert card["inference"] == {"flip": False}
    net = resnet3d.build_resnet(**card["architecture_args"])
    assert net[-2].p == 0.2
    json.dumps(card)
