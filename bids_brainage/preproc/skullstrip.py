"""Skull stripping with deepbet (weights ship in its wheel, runs offline on the CPU)."""
from __future__ import annotations

import functools
import threading

import nibabel as nib
import numpy as np

from bids_brainage.preproc.conform import voxel_sizes
from bids_brainage.preproc.mask import largest_component, nonzero_mask

# A whole head with skull and neck is 4-6 litres of non-zero voxels; a brain 1-1.8 litres.
STRIPPED_MAX_LITRES = 2.5
# re-stripping a stripped input keeps 0.90-0.95 of a loose strip's voxels and > 0.99 of a
# good or tight one's (the robustness variants of 5 pool images); less means deepbet failed
RESTRIP_MIN_KEEP = 0.8


_DEEPBET_LOCK = threading.Lock()


def _deepbet():
    """deepbet's network, loaded once per process; a caller that comes while another thread
    loads it (the warm-up, ``levels.warmup``) waits for that load instead of loading twice."""
    with _DEEPBET_LOCK:
        return _load_deepbet()


@functools.lru_cache(maxsize=1)
def _load_deepbet():
    from deepbet.bet import BrainExtraction

    return BrainExtraction(no_gpu=True)


def looks_skull_stripped(img: nib.Nifti1Image) -> bool:
    """True when the non-zero part of the image is brain-sized (< 2.5 l), as after stripping.

    >>> affine = np.diag([1.0, 1.0, 1.0, 1.0])
    >>> head = np.ones((200, 200, 150), np.float32)        # 6 litres of non-zero voxels
    >>> looks_skull_stripped(nib.Nifti1Image(head, affine))
    False
    >>> brain = np.zeros_like(head); brain[50:150, 50:150, 30:130] = 1   # 1 litre
    >>> looks_skull_stripped(nib.Nifti1Image(brain, affine))
    True
    """
    data = np.asanyarray(img.dataobj)
    litres = float(np.count_nonzero(data)) * float(np.prod(voxel_sizes(img))) / 1e6
    return litres < STRIPPED_MAX_LITRES


def deepbet_mask(img: nib.Nifti1Image, threshold: float = 0.5, threads: int = 1) -> np.ndarray:
    """Brain mask of a RAS+ image predicted by deepbet (boolean array on the image grid);
    with ``threads`` > 1, in the run's helper process (:mod:`bids_brainage.helper`), which
    loaded the network while this process did other work (the same numbers)."""
    x = np.asarray(img.dataobj, dtype=np.float32)
    if threads <= 1:
        return mask_of(x, threshold, threads)
    from bids_brainage import helper

    with helper.waiting_for_cores():
        return helper.run_there(threads, lambda: mask_of(x, threshold, threads), __name__,
                                "mask_of", x, threshold, threads)()


def mask_of(x: np.ndarray, threshold: float, threads: int) -> np.ndarray:
    """deepbet's mask of the array ``x`` (RAS+), with torch on ``threads`` threads."""
    prepare_deepbet(threads)
    bet = _deepbet()
    return bet.postprocess(run_model(bet, x.copy()) > threshold)


def quantile(x, q: float):
    """``torch.quantile(x, q)`` (linear interpolation) to the bit, by selection instead of
    torch's sort of every value: deepbet's two intensity quantiles of its 128³ copy took
    0.35 s of the skull strip, now 0.03 s."""
    import torch

    flat = x.reshape(-1)
    rank = torch.tensor(q, dtype=flat.dtype) * (flat.numel() - 1)  # as torch computes it
    below, above = int(rank.floor().item()), int(rank.ceil().item())
    values = np.partition(flat.numpy(), sorted({below, above}))
    return torch.lerp(torch.tensor(values[below]), torch.tensor(values[above]), rank - below)


def run_model(bet, x: np.ndarray) -> np.ndarray:
    """deepbet's ``BrainExtraction.run_model`` (deepbet 1.0.2, its defaults), with
    :func:`quantile` for ``Tensor.quantile``: the same probabilities to the bit
    (tests/test_preproc_real.py), 0.3 s sooner."""
    import torch
    import torch.nn.functional as F
    from deepbet.utils import keep_largest_connected_component, normalize

    small_shape, shape, bbox_margin = (128, 128, 128), (256, 256, 256), 0.1
    device = next(bet.model.parameters()).device
    x = torch.nan_to_num(torch.from_numpy(x).to(device))
    mask = torch.zeros_like(x)
    x_small = F.interpolate(x[None, None], small_shape, mode="nearest-exact")[0, 0]
    low, high = quantile(x_small, 0.005), quantile(x_small, 0.995)
    with torch.no_grad():
        mask_small = bet.bbox_model(normalize(x_small, low, high)[None, None])[0, 1]
    mask_small = keep_largest_connected_component((mask_small > 0.5).float().cpu().numpy())
    mask_small = torch.from_numpy(mask_small).to(device)
    bet.bbox = bet.get_bbox_with_margin(mask_small, mask.shape, bbox_margin)
    x = F.interpolate(x[bet.bbox][None, None], shape, mode="nearest-exact")[0, 0]
    with torch.no_grad():
        mask_bbox = bet.model(normalize(x, low, high)[None, None])[0, 1]
    mask[bet.bbox] = F.interpolate(mask_bbox[None, None], mask[bet.bbox].shape,
                                   mode="nearest-exact")[0, 0]
    return mask.cpu().numpy()


def prepare_deepbet(threads: int) -> None:
    """torch on ``threads`` threads and deepbet's network loaded (a helper runs this early)."""
    import torch

    torch.set_num_threads(max(1, threads))
    _deepbet()


def raw_mask(img: nib.Nifti1Image, method: str = "auto", threads: int = 1):
    """``(mask, method_used)`` before the largest-component clean-up.

    ``deepbet``: deepbet's mask. ``none``: the non-zero voxels (the input is taken as
    stripped). ``restrip``: deepbet's mask inside the non-zero voxels, so an input stripped
    loosely (dura, some skull) loses what deepbet would not keep, and one stripped tightly
    gains nothing (deepbet alone would put the zeroed sulci back in the brain as fake CSF);
    if that keeps under :data:`RESTRIP_MIN_KEEP` of the non-zero voxels (deepbet failing on
    an odd input) the non-zero voxels are used (``none``). ``auto``: ``restrip`` when the
    image looks skull-stripped, else ``deepbet``.
    """
    if method == "auto":
        method = "restrip" if looks_skull_stripped(img) else "deepbet"
    if method == "deepbet":
        return deepbet_mask(img, threads=threads), method
    if method not in ("none", "restrip"):
        raise ValueError(f"unknown skull-strip method {method!r}")
    nonzero = nonzero_mask(np.asanyarray(img.dataobj))
    if method == "restrip":
        inside = deepbet_mask(img, threads=threads) & nonzero
        if inside.sum() >= RESTRIP_MIN_KEEP * nonzero.sum():
            return inside, method
    return nonzero, "none"


def skull_strip(img: nib.Nifti1Image, method: str = "auto", threads: int = 1):
    """Return ``(mask, method_used)``: the cleaned brain mask and which method made it
    (see :func:`raw_mask`)."""
    mask, method = raw_mask(img, method, threads)
    return largest_component(mask), method
