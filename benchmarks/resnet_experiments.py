"""ResNet experiments on ixi-hh-2mm: train on ``train``, report on ``val``; never on ``test``.

Inputs are built once with the prediction code path (``load_mni`` → ``normalize_intensity``
→ ``crop_to_grid``) and cached as npz; the split is the project's age-stratified 60/20/20
split with ``DEFAULT_SEED`` over all participants with finished derivatives.

    python benchmarks/resnet_experiments.py cache
    python benchmarks/resnet_experiments.py train --depth 34 --width 16 --epochs 60 \\
        --augment default --seed 1 [--downsample 2] [--save /work/derivs/resnet]
    python benchmarks/resnet_experiments.py baseline
    python benchmarks/resnet_experiments.py robustness --model-dir DIR --name resnet34

Each ``train`` appends one JSON line (hyper-parameters, per-epoch loss and val MAE / r,
seconds) to ``--log``; ``--save DIR`` also writes ``DIR/<name>.pt`` and ``DIR/<name>.json``
(the card fragment plus training facts) so the training command can reproduce the model.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DERIVS = Path("/work/derivs/ixi-hh-2mm")
RAW = Path("/work/shared/data/ixi-hh-2mm")
CACHE = Path("/work/derivs/cache/resnet_inputs.npz")
LOG = Path("/work/derivs/resnet/experiments.jsonl")
AUGMENTS = {  # "default" is resnet3d.DEFAULT_AUGMENT, "noflip" the same without flips
    "none": {},
    "affine": {"rotate": 4.0, "translate": 3.0, "scale": 0.04},
    "affine+flip": {"flip": 0.5, "rotate": 4.0, "translate": 3.0, "scale": 0.04},
}


def augment_preset(name: str) -> dict:
    from bids_brainage.models.resnet3d import DEFAULT_AUGMENT

    if name.startswith("{"):
        return json.loads(name)
    if name == "default":
        return dict(DEFAULT_AUGMENT)
    if name == "noflip":
        return {k: v for k, v in DEFAULT_AUGMENT.items() if k != "flip"}
    if name not in AUGMENTS:
        raise SystemExit(f"unknown augmentation preset {name!r}")
    return dict(AUGMENTS[name])


def finished_without_models(derivs: Path, participants: dict):
    """Like ``find_subjects``, for derivatives written with no model (an empty TSV): the
    JSON sidecar's ``status`` says whether preprocessing finished."""
    from bids_brainage.bids.participants import participant_age
    from bids_brainage.training.dataset import Subject

    subjects = []
    for sidecar in sorted(Path(derivs).glob("sub-*/**/anat/*_brainage.json")):
        if json.loads(sidecar.read_text()).get("status") != "ok":
            continue
        pid = sidecar.name.split("_")[0]
        age = participant_age(participants.get(pid))
        if age is not None:
            row = participants[pid]
            subjects.append(Subject(pid, age, sidecar.name[: -len("_brainage.json")],
                                    sidecar.parent, row.get("sex", "n/a"),
                                    row.get("site", "n/a")))
    return subjects


def build_cache(derivs: Path, raw: Path, cache: Path, allow_partial: bool = False) -> Path:
    """Stack the full-resolution network inputs of every finished participant into ``cache``."""
    from tqdm import tqdm

    from bids_brainage.bids.participants import read_participants
    from bids_brainage.training.dataset import find_subjects, load_mni
    from bids_brainage.models.resnet3d import crop_to_grid, image_spec
    from bids_brainage.preproc.normalize import normalize_intensity
    from bids_brainage.training.splits import DEFAULT_SEED, stratified_assign

    participants = read_participants(raw)
    subjects = find_subjects(derivs, participants)
    if len(subjects) < len(participants):
        subjects = finished_without_models(derivs, participants)
    if len(subjects) < len(participants) and not allow_partial:
        raise SystemExit(f"only {len(subjects)} of {len(participants)} participants are finished;"
                         " the split depends on the full list (use --allow-partial to try)")
    split = stratified_assign([s.age for s in subjects],
                              {"train": 0.6, "val": 0.2, "test": 0.2}, seed=DEFAULT_SEED)
    spec = image_spec()
    rows = []
    for subject in tqdm(subjects, desc="inputs"):
        mni, mask = load_mni(subject)
        norm, _ = normalize_intensity(mni, mask, "gmm")
        rows.append(crop_to_grid(norm, spec))
    cache.parent.mkdir(parents=True, exist_ok=True)
    from bids_brainage.io import atomic_path

    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, x=np.stack(rows), age=np.array([s.age for s in subjects]),
                     participant_id=np.array([s.participant_id for s in subjects]),
                     split=split.astype(str), spec=json.dumps(spec), seed=DEFAULT_SEED)
    print(f"{cache}: {len(rows)} inputs, " + ", ".join(
        f"{k} {int((split == k).sum())}" for k in ("train", "val", "test")))
    return cache


def load_split(cache: Path, name: str, downsample: int = 1):
    """``(x, ages, ids)`` of one split (``train`` or ``val``) from the cache."""
    from bids_brainage.models.resnet3d import downsample_block

    if name not in ("train", "val"):
        raise SystemExit("experiments look at train and val only")
    data = np.load(cache)
    keep = data["split"] == name
    x = data["x"][keep]
    if downsample > 1:
        x = np.stack([downsample_block(v, downsample) for v in x])
    return x, data["age"][keep], data["participant_id"][keep]


def baseline(args) -> None:
    _, y_train, _ = load_split(args.cache, "train")
    _, y_val, _ = load_split(args.cache, "val")
    mae = float(np.abs(y_val - y_train.mean()).mean())
    print(f"train n={len(y_train)}, val n={len(y_val)}; training-mean baseline on val: "
          f"MAE {mae:.2f} y (mean {y_train.mean():.2f}); 40 % better = {0.6 * mae:.2f} y")


def train(args) -> None:
    import torch

    from bids_brainage.models import resnet3d

    x_train, y_train, _ = load_split(args.cache, "train", args.downsample)
    x_val, y_val, ids_val = load_split(args.cache, "val", args.downsample)
    if args.subset:
        x_train, y_train = x_train[: args.subset], y_train[: args.subset]
    augment = augment_preset(args.augment)
    arch = {"dropout": args.dropout} if args.dropout else {}
    start = time.perf_counter()
    net, history = resnet3d.train_resnet(
        x_train, y_train, x_val, y_val, depth=args.depth, width=args.width,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        augment=augment, threads=args.threads, weight_decay=args.weight_decay,
        loss=args.loss, dropout=args.dropout, val_every=args.val_every,
    )
    seconds = time.perf_counter() - start
    torch.set_num_threads(args.threads)
    plain = resnet3d.predict_batch(net, x_val, history["target_mean"], history["target_std"])
    mirrored = resnet3d.predict_batch(net, x_val, history["target_mean"], history["target_std"],
                                      flip=True)
    flip_mae = float(np.abs(mirrored - y_val).mean())
    pred = mirrored if args.flip_average else plain
    mae = float(np.abs(pred - y_val).mean())
    r = float(np.corrcoef(pred, y_val)[0, 1])
    base = float(np.abs(y_val - y_train.mean()).mean())
    name = args.name or f"resnet{args.depth}"
    record = {"name": name, "params": history["params"], "downsample": args.downsample,
              "augment_preset": args.augment, "n_train": len(y_train), "n_val": len(y_val),
              "split_seed": int(np.load(args.cache)["seed"]), "val_mae": mae, "val_r": r,
              "val_baseline_mae": base, "flip_average": args.flip_average,
              "val_mae_plain": float(np.abs(plain - y_val).mean()), "val_mae_flip": flip_mae, "train_seconds": seconds,
              "val_mean_error": float((pred - y_val).mean()),
              "val_predictions": dict(zip(ids_val.tolist(), np.round(pred, 3).tolist())),
              "val_predictions_flip": dict(zip(ids_val.tolist(), np.round(mirrored, 3).tolist())),
              "epochs": history["epochs"], "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(f"{name}: val MAE {mae:.2f} y, r {r:.3f} (n={len(y_val)}; training-mean baseline "
          f"{base:.2f} y, {100 * (1 - mae / base):.0f} % better); with flip averaging "
          f"{flip_mae:.2f} y; {seconds / 60:.1f} min")
    if args.save:
        from bids_brainage.io import atomic_write_json
        from bids_brainage.models.registry import sha256sum

        spec = resnet3d.image_spec(downsample=args.downsample)
        card = resnet3d.resnet_card(name, args.depth, args.width, spec,
                                    history["target_mean"], history["target_std"],
                                    flip_average=args.flip_average, **arch)
        path = resnet3d.save_resnet(net, args.save / f"{name}.pt")
        card.update(file=path.name, sha256=sha256sum(path),
                    training={k: v for k, v in record.items()
                              if k not in ("epochs", "name") and not k.startswith("val_pred")},
                    val_predictions=record["val_predictions_flip" if args.flip_average
                                           else "val_predictions"])
        atomic_write_json(args.save / f"{name}.json", card)
        # the folder doubles as a model directory (``--model-dir``) holding the saved models
        registry_path = args.save / "models.json"
        registry = json.loads(registry_path.read_text()) if registry_path.exists() else {}
        models = [c for c in registry.get("models", []) if c.get("name") != name]
        atomic_write_json(registry_path, {"models": models + [card]})
        print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB) and {name}.json")


def robustness(args) -> None:
    """Prediction change on ``val`` brains under contrast changes applied to the MNI brain
    before normalisation: gamma 0.8 / 1.25, ×10 intensity, a smooth bias field of 0.84-1.43
    over the grid (applied after N4, so harsher than a field in the raw scan, which N4 would
    mostly remove)."""
    import torch

    from bids_brainage.bids.participants import read_participants
    from bids_brainage.training.dataset import load_mni
    from bids_brainage.models.registry import load_cards
    from bids_brainage.models.predict import load_predictor, model_inputs

    torch.set_num_threads(args.threads)
    card = load_cards(args.model_dir)[args.name or "resnet34"]
    predict = load_predictor(card, threads=args.threads)
    data = np.load(args.cache)
    val_ids = set(data["participant_id"][data["split"] == "val"].tolist())
    participants = read_participants(args.raw)
    subjects = [s for s in finished_without_models(args.derivs, participants)
                if s.participant_id in val_ids]
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in (99, 117, 95)], indexing="ij")
    field = np.exp(0.2 * (0.6 * grid[0] + 0.5 * grid[1] ** 2 - 0.7 * grid[2] * grid[1]))
    variants = {"gamma0.8": lambda v: v ** 0.8, "gamma1.25": lambda v: v ** 1.25,
                "x10": lambda v: v * 10, "bias": lambda v: v * field}
    deltas = {k: [] for k in variants}
    for subject in subjects:
        mni, mask = load_mni(subject)
        mni = np.clip(mni, 0, None)
        base = predict(model_inputs(mni, mask, card["input"]))
        for name, change in variants.items():
            changed = np.where(mask, change(mni), 0).astype(np.float32)
            deltas[name].append(predict(model_inputs(changed, mask, card["input"])) - base)
    for name, d in deltas.items():
        d = np.abs(d)
        print(f"{name:>10}: |change| mean {d.mean():.2f} y, max {d.max():.2f} y (n={len(d)})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["cache", "train", "baseline", "robustness"])
    parser.add_argument("--model-dir", type=Path, help="robustness: folder with models.json")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--derivs", type=Path, default=DERIVS)
    parser.add_argument("--raw", type=Path, default=RAW)
    parser.add_argument("--allow-partial", action="store_true")
    parser.add_argument("--log", type=Path, default=LOG)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--depth", type=int, default=34)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--downsample", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--loss", default="mse")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--augment", default="default",
                        help="preset (none, default, noflip, affine, affine+flip) or a JSON dict")
    parser.add_argument("--flip-average", action="store_true",
                        help="predict with the mean over the input and its mirror image")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--subset", type=int, default=0, help="first N training images only")
    parser.add_argument("--val-every", type=int, default=5)
    args = parser.parse_args(argv)
    if args.command == "cache":
        build_cache(args.derivs, args.raw, args.cache, args.allow_partial)
    elif args.command == "baseline":
        baseline(args)
    elif args.command == "robustness":
        robustness(args)
    else:
        train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
