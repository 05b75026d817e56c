"""3D ResNet (Med3D family) that regresses age from the GMM-normalised brain in MNI space.

The network sees a fixed box of the 2 mm MNI grid (:func:`crop_to_grid`), predicts the
standardised age ``(age - mean) / std`` of its training set, and :func:`predict_volume` turns
that back into years with the card's ``target``. Training (:func:`train_resnet`) is seeded and
deterministic on CPU; the augmentation mimics what differs between scans once the brain is
registered and normalised: a few degrees / voxels of residual misregistration, a gamma change
of contrast, a smooth bias field left over by N4, and the left-right mirror image.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np

DEPTHS = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)),
          34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
GRID_SHAPE = (99, 117, 95)
# The template brain on the 2 mm grid spans voxels x 13-85, y 14-103, z 0-77; the box adds a
# margin of 3-4 voxels and is centred on the mid-sagittal plane (x = 0 mm is voxel 49), so a
# left-right flip of the box maps the brain onto itself.
DEFAULT_CROP = {"start": [9, 11, 0], "size": [81, 96, 82]}
DEFAULT_AUGMENT = {"flip": 0.5, "rotate": 4.0, "translate": 3.0, "scale": 0.04,
                   "gamma": 0.25, "bias": 0.1, "intensity": 0.05}


def image_spec(crop: dict | None = None, downsample: int = 1) -> dict:
    """The card's ``input`` for the ResNet: GMM-normalised brain, cropped (and downsampled)."""
    crop = dict(DEFAULT_CROP if crop is None else crop)
    return {"feature": "image", "normalization": "gmm",
            "crop": {"start": list(crop["start"]), "size": list(crop["size"])},
            "downsample": int(downsample)}


def input_shape(spec: dict) -> tuple[int, int, int]:
    """Shape of :func:`crop_to_grid`'s output for ``spec``.

    >>> input_shape(image_spec())
    (81, 96, 82)
    >>> input_shape(image_spec(downsample=2))
    (41, 48, 41)
    """
    size = (spec.get("crop") or DEFAULT_CROP)["size"]
    factor = int(spec.get("downsample", 1))
    return tuple(int(math.ceil(s / factor)) for s in size)


def crop_to_grid(norm: np.ndarray, spec: dict) -> np.ndarray:
    """The float32 network input: ``spec["crop"]`` box of the 2 mm MNI brain, block-averaged
    by ``spec["downsample"]``; voxels of the box outside the grid are zero.

    >>> x = crop_to_grid(np.ones(GRID_SHAPE, np.float32), image_spec())
    >>> x.shape, x.dtype, float(x.min())
    ((81, 96, 82), dtype('float32'), 1.0)
    """
    norm = np.asarray(norm)
    if norm.shape != GRID_SHAPE:
        raise ValueError(f"expected the 2 mm MNI grid {GRID_SHAPE}, got an array of {norm.shape}")
    crop = spec.get("crop") or DEFAULT_CROP
    start, size = np.asarray(crop["start"], int), np.asarray(crop["size"], int)
    out = np.zeros(tuple(size), np.float32)
    lo, hi = np.maximum(start, 0), np.minimum(start + size, GRID_SHAPE)
    src = tuple(slice(a, b) for a, b in zip(lo, hi))
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
    out[dst] = np.nan_to_num(norm[src], nan=0.0, posinf=0.0, neginf=0.0)
    return downsample_block(out, int(spec.get("downsample", 1)))


def downsample_block(x: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor``³ blocks of a 3-D box (zero-padded up to a multiple of ``factor``).

    >>> downsample_block(np.ones((3, 4, 4), np.float32), 2)[:, 0, 0].tolist()
    [1.0, 0.5]
    """
    x = np.ascontiguousarray(x, np.float32)
    if factor > 1:
        padded = np.zeros([int(math.ceil(s / factor)) * factor for s in x.shape], np.float32)
        padded[: x.shape[0], : x.shape[1], : x.shape[2]] = x
        a, b, c = (s // factor for s in padded.shape)
        x = padded.reshape(a, factor, b, factor, c, factor).mean(axis=(1, 3, 5))
    return np.ascontiguousarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------- network
def _torch():
    import torch

    return torch


def build_resnet(depth: int = 34, width: int = 16, **kw):
    """A 3D ResNet-``depth`` (10/18/34: basic blocks, 50: bottleneck) with one regression output.

    Stages have ``width, 2·width, 4·width, 8·width`` planes (Med3D uses 64: ``width`` trades
    size for speed). Keywords: ``in_channels=1``, ``dropout=0.0`` before the linear head,
    ``stem_kernel=7``, ``stem_stride=2``, ``maxpool=True``.
    """
    torch = _torch()
    nn = torch.nn
    if depth not in DEPTHS:
        raise ValueError(f"ResNet depth {depth} not in {sorted(DEPTHS)}")
    kind, layers = DEPTHS[depth]
    in_channels = int(kw.pop("in_channels", 1))
    dropout = float(kw.pop("dropout", 0.0))
    stem_kernel = int(kw.pop("stem_kernel", 7))
    stem_stride = int(kw.pop("stem_stride", 2))
    maxpool = bool(kw.pop("maxpool", True))
    if kw:
        raise TypeError(f"build_resnet: unknown argument(s) {', '.join(kw)}")

    def conv(cin, cout, k, stride=1):
        return nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2, bias=False)

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1, self.bn1 = conv(cin, planes, 3, stride), nn.BatchNorm3d(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3), nn.BatchNorm3d(planes)
            self.shortcut = _shortcut(cin, planes, stride)

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1, self.bn1 = conv(cin, planes, 1), nn.BatchNorm3d(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3, stride), nn.BatchNorm3d(planes)
            self.conv3, self.bn3 = conv(planes, planes * 4, 1), nn.BatchNorm3d(planes * 4)
            self.shortcut = _shortcut(cin, planes * 4, stride)

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = torch.relu(self.bn2(self.conv2(out)))
            return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))

    def _shortcut(cin, cout, stride):
        if stride == 1 and cin == cout:
            return nn.Identity()
        return nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm3d(cout))

    block = Basic if kind == "basic" else Bottleneck
    stem = [conv(in_channels, width, stem_kernel, stem_stride), nn.BatchNorm3d(width),
            nn.ReLU(inplace=True)]
    if maxpool:
        stem.append(nn.MaxPool3d(3, stride=2, padding=1))
    stages, cin = [], width
    for i, n_blocks in enumerate(layers):
        planes = width * 2 ** i
        blocks = []
        for j in range(n_blocks):
            blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
            cin = planes * block.expansion
        stages.append(nn.Sequential(*blocks))
    net = nn.Sequential(
        nn.Sequential(*stem), *stages, nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Dropout(dropout), nn.Linear(cin, 1),
    )
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    # start every residual branch at zero so a deep net on few images begins as a shallow one
    for m in net.modules():
        if isinstance(m, (Basic, Bottleneck)):
            nn.init.zeros_(m.bn3.weight if isinstance(m, Bottleneck) else m.bn2.weight)
    return net


def count_parameters(net) -> int:
    return int(sum(p.numel() for p in net.parameters()))


# ----------------------------------------------------------------------------- augmentation
def augment_batch(x, augment: dict, generator):
    """Randomly transformed copy of a batch ``(N, 1, X, Y, Z)`` (see :data:`DEFAULT_AUGMENT`).

    ``rotate`` (degrees), ``translate`` (voxels) and ``scale`` (fraction) bound a uniform
    random affine about the box centre; ``flip`` is the probability of a left-right mirror
    (first axis); ``gamma`` bounds ``|log γ|`` of ``x ** γ`` (the GMM normalisation keeps the
    WM at 1, so a gamma change of the scan becomes exactly this); ``bias`` the amplitude of a
    smooth multiplicative field ``exp(b)``; ``intensity`` a global scale ``exp(±s)``.
    """
    torch = _torch()
    F = torch.nn.functional
    if not augment:
        return x
    n, shape = x.shape[0], x.shape[2:]

    def uniform(bound, *size):
        return (torch.rand(*size, generator=generator, dtype=torch.float64) * 2 - 1) * bound

    rotate, translate = float(augment.get("rotate", 0)), float(augment.get("translate", 0))
    scale, flip = float(augment.get("scale", 0)), float(augment.get("flip", 0))
    if rotate or translate or scale or flip:
        thetas = []
        for _ in range(n):
            a = torch.deg2rad(uniform(rotate, 3))
            rot = _rotation(a[0], a[1], a[2], torch)
            mat = rot * torch.exp(uniform(scale, 1))
            if flip and torch.rand(1, generator=generator).item() < flip:
                mat = mat @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
            shift = uniform(translate, 3)
            # voxel-space matrix -> affine_grid's normalised (last axis first) coordinates
            half = torch.tensor([s / 2 for s in shape], dtype=torch.float64)
            norm_mat = torch.diag(1 / half) @ mat @ torch.diag(half)
            theta = torch.cat([norm_mat, (shift / half)[:, None]], dim=1)
            perm = [2, 1, 0]
            theta = torch.cat([theta[perm][:, perm], theta[perm][:, 3:]], dim=1)
            thetas.append(theta)
        theta = torch.stack(thetas).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brain = x > 0
    if augment.get("gamma"):
        g = torch.exp(uniform(float(augment["gamma"]), n)).to(x.dtype).view(n, 1, 1, 1, 1)
        x = torch.where(brain, x.clamp(min=1e-6) ** g, x)
    if augment.get("bias"):
        coarse = uniform(float(augment["bias"]), n, 1, 3, 3, 3).to(x.dtype)
        field = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)
        x = x * torch.exp(field)
    if augment.get("intensity"):
        x = x * torch.exp(uniform(float(augment["intensity"]), n)).to(x.dtype).view(n, 1, 1, 1, 1)
    return x


def _rotation(a, b, c, torch):
    ca, sa, cb, sb, cc, sc = (f(v) for v in (a, b, c) for f in (torch.cos, torch.sin))
    one, zero = torch.ones((), dtype=a.dtype), torch.zeros((), dtype=a.dtype)
    rx = torch.stack([torch.stack(r) for r in ((one, zero, zero), (zero, ca, -sa), (zero, sa, ca))])
    ry = torch.stack([torch.stack(r) for r in ((cb, zero, sb), (zero, one, zero), (-sb, zero, cb))])
    rz = torch.stack([torch.stack(r) for r in ((cc, -sc, zero), (sc, cc, zero), (zero, zero, one))])
    return rz @ ry @ rx


# ----------------------------------------------------------------------------- training
@contextlib.contextmanager
def torch_settings(threads: int | None, deterministic: bool = False):
    """Set torch's thread count (and deterministic mode) for a block, then restore them."""
    torch = _torch()
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if threads:
        torch.set_num_threads(int(threads))
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def _loss_fn(name: str):
    torch = _torch()
    losses = {"mse": torch.nn.MSELoss(), "l1": torch.nn.L1Loss(),
              "huber": torch.nn.HuberLoss(delta=0.5)}
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(losses)}")
    return losses[name]


def train_resnet(x_train, y_train, x_val=None, y_val=None, *, depth: int, width: int,
                 epochs: int, batch_size: int, lr: float, seed: int, augment: dict,
                 threads: int, progress: bool = True, weight_decay: float = 1e-4,
                 loss: str = "mse", dropout: float = 0.0, warmup: int = 2,
                 val_every: int = 1):
    """Train a ResNet on ``x_train (N, X, Y, Z)`` → ``y_train`` (years); ``(model, history)``.

    The target is standardised with the training set's mean and (population) standard
    deviation, returned as ``history["target_mean"]`` / ``history["target_std"]``: give these
    to :func:`resnet_card`. AdamW (Adam with decoupled ``weight_decay``) at peak ``lr`` with
    ``warmup`` linear epochs and a cosine decay to zero; the final weights are returned (no
    early stopping, so a validation set stays free for ensemble weights and intervals).
    ``history["epochs"]`` holds loss, seconds and, every ``val_every`` epochs, val MAE / r.
    Same seed, same data, same thread count → the same weights on CPU.
    """
    torch = _torch()
    from tqdm import tqdm

    x_train = np.asarray(x_train, np.float32)
    y_train = np.asarray(y_train, np.float64)
    mean, std = float(y_train.mean()), float(y_train.std()) or 1.0
    rng = np.random.default_rng(seed)
    history = {"target_mean": mean, "target_std": std, "epochs": [],
               "params": dict(depth=depth, width=width, epochs=epochs, batch_size=batch_size,
                              lr=lr, seed=seed, augment=dict(augment or {}), threads=threads,
                              weight_decay=weight_decay, loss=loss, dropout=dropout,
                              warmup=warmup, n_train=len(y_train))}
    with torch_settings(threads, deterministic=True):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        net = build_resnet(depth, width, dropout=dropout)
        optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = max(1, int(math.ceil(len(y_train) / batch_size)))
        total, warm = epochs * steps_per_epoch, warmup * steps_per_epoch

        def schedule(step):
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
        criterion = _loss_fn(loss)
        targets = torch.from_numpy(((y_train - mean) / std).astype(np.float32))
        bar = tqdm(range(epochs), desc=f"resnet{depth} w{width}", disable=not progress)
        for epoch in bar:
            start = time.perf_counter()
            net.train()
            order = rng.permutation(len(y_train))
            # drop a last batch of one: BatchNorm cannot normalise a single volume
            batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
            if len(batches) > 1 and len(batches[-1]) < 2:
                batches[-2] = np.concatenate(batches[-2:])
                batches.pop()
            running = 0.0
            for idx in batches:
                xb = torch.from_numpy(x_train[idx][:, None])
                xb = augment_batch(xb, augment, generator)
                optimiser.zero_grad(set_to_none=True)
                out = net(xb).squeeze(1)
                batch_loss = criterion(out, targets[idx])
                batch_loss.backward()
                optimiser.step()
                scheduler.step()
                running += float(batch_loss.detach()) * len(idx)
            row = {"epoch": epoch + 1, "loss": running / len(y_train),
                   "lr": optimiser.param_groups[0]["lr"]}
            if x_val is not None and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs):
                pred = predict_batch(net, x_val, mean, std)
                err = np.abs(pred - np.asarray(y_val, float))
                row["val_mae"] = float(err.mean())
                row["val_r"] = float(np.corrcoef(pred, y_val)[0, 1]) if len(pred) > 2 else None
            row["seconds"] = time.perf_counter() - start
            history["epochs"].append(row)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items()
                             if k in ("loss", "val_mae", "val_r") and v is not None})
    net.eval()
    return net, history


def predict_batch(net, x, mean: float, std: float, batch_size: int = 4,
                  flip: bool = False) -> np.ndarray:
    """Ages in years for a stack of inputs ``(N, X, Y, Z)`` (eval mode, no gradients);
    ``flip`` averages each input's prediction with its left-right mirror image's."""
    torch = _torch()
    net.eval()
    x = np.ascontiguousarray(x, np.float32)
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size][:, None])
            pred = net(xb).squeeze(1)
            if flip:
                pred = (pred + net(torch.flip(xb, dims=[2])).squeeze(1)) / 2
            out.append(pred.numpy())
    return np.concatenate(out).astype(np.float64) * std + mean


# ----------------------------------------------------------------------------- files and cards
def save_resnet(model, path: Path | str) -> Path:
    """Write the model's state_dict atomically (no pickled code: loadable with weights_only).

    Saved through a buffer: ``torch.save`` to a path names the zip's folder after the file,
    and the atomic write's temporary name is random, so equal weights gave unequal files
    (and sha256s). From a buffer the folder is always ``archive``.
    """
    import io

    torch = _torch()
    from bids_brainage.io import atomic_path

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
    return Path(path)


def load_resnet(path: Path | str, card: dict):
    """The network a card describes with the weights of ``path``, in eval mode.

    Only tensors are read (``weights_only=True``); a file that is not a state_dict of the
    card's architecture is refused with :class:`~bids_brainage.models.registry.ModelError`.
    """
    torch = _torch()
    from bids_brainage.models.registry import ModelError

    name = card.get("name", "resnet")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ModelError(f"model {name!r}: cannot read weight file {path} "
                         f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ModelError(f"model {name!r}: {path} does not hold a state_dict")
    net = build_resnet(**card.get("architecture_args", {}))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"model {name!r}: {path} does not match the card's architecture "
                         f"{card.get('architecture')}: {exc}") from exc
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ModelError(f"model {name!r}: {path} holds non-finite weights")
    return net.eval()


def predict_volume(net, x: np.ndarray, *, threads: int, card: dict) -> float:
    """Age in years for one input from :func:`crop_to_grid` (shape checked against the card).

    With ``card["inference"]["flip"]`` the prediction is the mean over the input and its
    left-right mirror image (the crop is centred on the mid-sagittal plane).
    """
    torch = _torch()
    x = np.ascontiguousarray(x, np.float32)
    expected = input_shape(card.get("input", {}))
    if x.shape != expected:
        raise ValueError(f"model {card.get('name')!r} expects input {expected}, got {x.shape}")
    target = card["target"]
    flip = bool((card.get("inference") or {}).get("flip", False))
    with torch_settings(threads):
        out = predict_batch(net, x[None], float(target["mean"]), float(target["std"]),
                            flip=flip)
    return float(out[0])


def resnet_card(name: str, depth: int, width: int, spec: dict, target_mean: float,
                target_std: float, flip_average: bool = False, **architecture_args) -> dict:
    """The card fragment of a ResNet (the training command adds file, sha256 and metrics).

    ``flip_average`` makes prediction average the input and its mirror image (twice the
    cost); ``architecture_args`` beyond depth and width go to :func:`build_resnet`.

    >>> card = resnet_card("resnet34", 34, 16, image_spec(), 50.0, 15.0)
    >>> card["architecture"], card["architecture_args"], card["input"]["crop"]["size"]
    ('3D ResNet34 (basic blocks [3, 4, 6, 3]), width 16', {'depth': 34, 'width': 16}, [81, 96, 82])
    """
    kind, layers = DEPTHS[depth]
    spec = dict(spec)
    return {
        "name": name,
        "kind": "resnet",
        "architecture": f"3D ResNet{depth} ({kind} blocks {list(layers)}), width {width}",
        "architecture_args": {"depth": int(depth), "width": int(width), **architecture_args},
        "input": {**spec, "feature": "image",
                  "normalization": spec.get("normalization", "gmm"),
                  "crop": spec.get("crop") or dict(DEFAULT_CROP),
                  "downsample": int(spec.get("downsample", 1))},
        "target": {"mean": float(target_mean), "std": float(target_std)},
        "inference": {"flip": bool(flip_average)},
    }
