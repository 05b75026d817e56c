"""Tissue features: grey- and white-matter (and CSF) maps, warped to the template.

brainageR's idea (Cole et al. 2018) on our 2 mm MNI grid. Intensities depend on the scanner,
its contrast and on how much CSF a site's skull strip keeps; the amount of grey and white matter
at each place of the brain much less. So:

1. **Segment** the affine-aligned brain into CSF, GM and WM: a three-class Gaussian mixture
   of the *log* intensities with the template's tissue maps as spatial priors (the EM of
   unified segmentation, without its bias and warp terms: N4 ran before) gives the class
   means; each voxel's tissue **fractions** then come from linear unmixing between those
   means (a partial-volume model, as FSL FAST's). Log intensities make a scale change a shift
   and a gamma change a scaling, which the means absorb; the fractions do not depend on the
   classes' widths (noise, resolution), nor change under a contrast change that is linear
   between the class means (a 1.5 T-like lower grey/white contrast). Voxels outside the
   brain mask, or zero inside it (holes a tight strip filled), count as neither GM nor WM.
2. **Warp** the tissue composite (GM + 2 WM) to the template's, segmented the same way
   (antspyx SyN, mean squares, seeded) at :data:`WARP_MM`. Its update is voxelwise, so
   its result is the same to the bit with 1, 2, 3 or 4 ITK threads (measured); ITK reads
   its thread count once per process, and a run's process has fixed it at one for the
   affine registration (whose global metric sums do depend on it), so with more threads
   the warp runs in the run's helper process (:mod:`bids_brainage.helper`).
3. **Modulate**: the warped GM and WM fractions times the Jacobian determinant of the warp
   (tissue volume per template voxel, as VBM's "modulated" maps), smoothed by
   :data:`SMOOTH_FWHM_MM` and read inside the template brain at :data:`FEATURE_MM`. The
   warped fractions themselves (tissue concentration, VBM's "unmodulated" maps) are read the
   same way when a card's input asks for them (``"maps"``, :data:`MAPS`): the bundled
   ``tissue`` reads those four (nested CV of the member alone 5.61 against 5.78 for the
   modulated pair, exploration 5 x 5; docs/models.md). The CSF fractions, carried by the same
   warp, can be read too; they are not in the bundled input: nested CV 5.25 for the member
   and 5.13 for the ensemble, but ds000011 read 6.5 years younger (docs/models.md).

Measured (repeated nested CV on the 138-image pool and the 14 ds000011 heads, ridge; see
docs/models.md): posterior maps instead of fractions were better on the pool (MAE 5.24 vs
5.68) but read the other scanner 4.5 years younger (fractions: −0.5); adding the
log-Jacobian or a second smoothing scale did not help.
"""
from __future__ import annotations

import functools
import os
import tempfile

import numpy as np

from bids_brainage.features.morphometry import block_mean
from bids_brainage.preproc.template import GM_PROB, WM_PROB, template_2mm, template_mask

CLASSES = ("CSF", "GM", "WM")
WARP_MM = 4
FEATURE_MM = 4
SMOOTH_FWHM_MM = 8.0
SYN_ITERATIONS = (60, 30, 15)
EM_ITERATIONS = 20
PRIOR_FLOOR = 0.05  # affine alignment is loose: no class is ever ruled out at a voxel


def _to_2mm(path) -> np.ndarray:
    import nibabel as nib

    data = np.asarray(nib.load(str(path)).dataobj, np.float32) / 255.0
    return _block_to_grid(data)


def _block_to_grid(data: np.ndarray) -> np.ndarray:
    """A 1 mm template-grid array block-averaged onto the 2 mm grid (as ``template_2mm``)."""
    shape = template_2mm().shape
    padded = np.zeros([s * 2 for s in shape], np.float32)
    padded[: data.shape[0], : data.shape[1], : data.shape[2]] = data
    return padded.reshape(shape[0], 2, shape[1], 2, shape[2], 2).mean(axis=(1, 3, 5))


@functools.lru_cache(maxsize=None)
def tissue_priors() -> np.ndarray:
    """CSF, GM and WM priors on the 2 mm grid, shape (3, x, y, z), summing to one.

    GM and WM are the template's probability maps; CSF is the rest of the template's brain
    mask plus everything outside it (dark voxels a subject's mask may still hold), smoothed by
    one voxel and floored at :data:`PRIOR_FLOOR`.
    """
    from scipy import ndimage

    gm, wm = _to_2mm(GM_PROB), _to_2mm(WM_PROB)
    gm, wm = (ndimage.gaussian_filter(p, 1.0) for p in (gm, wm))
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    priors = np.stack([csf, gm, wm]) + PRIOR_FLOOR
    return (priors / priors.sum(axis=0, keepdims=True)).astype(np.float32)


def segment(mni: np.ndarray, mask: np.ndarray, priors: np.ndarray | None = None,
            iterations: int = EM_ITERATIONS, fractions: bool = True) -> tuple[np.ndarray, dict]:
    """CSF, GM and WM of each brain voxel, shape (3, x, y, z): fractions by unmixing between
    the class means (default), or the mixture's posterior probabilities (``fractions=False``).

    A Gaussian mixture of log intensities whose class weights at each voxel are the spatial
    priors times a global mixing proportion (EM). Zero outside ``mask`` and at non-positive
    voxels. The same for ``c * mni ** g`` (any scale and gamma) up to float error.

    >>> rng = np.random.default_rng(0)
    >>> truth = rng.integers(0, 3, (6, 6, 6))
    >>> img = np.choose(truth, [0.3, 0.7, 1.0]) * np.exp(rng.normal(0, 0.03, truth.shape))
    >>> flat = np.full((3,) + truth.shape, 1 / 3, np.float32)
    >>> post, info = segment(img, np.ones(truth.shape, bool), flat, fractions=False)
    >>> float((post.argmax(0) == truth).mean())
    1.0
    >>> post2, _ = segment(10 * img ** 0.8, np.ones(truth.shape, bool), flat, fractions=False)
    >>> bool(np.abs(post2 - post).max() < 1e-3)
    True
    >>> frac, _ = segment(img, np.ones(truth.shape, bool), flat)
    >>> frac2, _ = segment(10 * img ** 0.8, np.ones(truth.shape, bool), flat)
    >>> bool(np.abs(frac2 - frac).max() < 1e-3), bool(np.allclose(frac.sum(0), 1))
    (True, True)
    """
    priors = tissue_priors() if priors is None else priors
    positive = np.asarray(mask, bool) & (np.asarray(mni) > 0)
    out = np.zeros((len(CLASSES),) + mni.shape, np.float32)
    if positive.sum() < 10:
        return out, {"means": None}
    y = np.log(np.asarray(mni, np.float64)[positive])
    spatial = priors[:, positive].astype(np.float64)
    # start from dark / middle / bright quantiles, so flat priors still separate the classes
    mean = np.quantile(y, [0.1, 0.5, 0.9])
    var = np.full(3, np.var(y) / 9 + 1e-8)
    post = _posteriors(y, spatial, mean, var, np.full(3, 1 / 3))
    for _ in range(iterations):
        weight = post.sum(axis=1) + 1e-12
        mean = (post * y).sum(axis=1) / weight
        var = (post * (y - mean[:, None]) ** 2).sum(axis=1) / weight + 1e-8
        post = _posteriors(y, spatial, mean, var, weight / weight.sum())
    if fractions:
        post = _partial_volumes(y, mean)
    out[:, positive] = post
    spread = float(np.exp(mean[2] - mean[0])) if mean[2] > mean[0] else float("nan")
    return out, {"means": dict(zip(CLASSES, np.exp(mean).round(6).tolist())),
                 "wm_csf_ratio": round(spread, 4),
                 "ordered": bool(mean[0] < mean[1] < mean[2])}


def _partial_volumes(y, mean) -> np.ndarray:
    """Tissue fractions of each voxel by linear unmixing between the class means (of log
    intensities): a voxel halfway between the GM and WM means is half of each. Unlike the
    posteriors, they do not depend on the classes' widths (noise, resolution) and stay the
    same under any change of contrast that is linear between the class means.

    >>> _partial_volumes(np.array([0.0, 1.5, 2.5, 9.0]), np.array([1.0, 2.0, 3.0])).round(2).T.tolist()
    [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]]
    """
    csf, gm, wm = mean
    lower = np.clip((y - csf) / (gm - csf), 0, 1)   # GM share between CSF and GM
    upper = np.clip((y - gm) / (wm - gm), 0, 1)     # WM share between GM and WM
    below = y < gm
    out = np.empty((3, y.size))
    out[0] = np.where(below, 1 - lower, 0)
    out[1] = np.where(below, lower, 1 - upper)
    out[2] = np.where(below, 0, upper)
    return out


def _posteriors(y, spatial, mean, var, mix) -> np.ndarray:
    """E-step: class probabilities of each voxel (spatial prior × mixing × likelihood)."""
    loglik = -0.5 * (y - mean[:, None]) ** 2 / var[:, None] - 0.5 * np.log(var)[:, None]
    loglik -= loglik.max(axis=0)
    post = spatial * mix[:, None] * np.exp(loglik)
    return post / (post.sum(axis=0) + 1e-300)


@functools.lru_cache(maxsize=None)
def _fixed():
    """The template's tissue composite at :data:`WARP_MM` and the feature mask (the template
    brain at :data:`FEATURE_MM`). The template is segmented as a subject is, with its
    posterior probabilities instead of fractions: an average of many brains has blurred
    edges, and the sharper posteriors are the warp's target the measured models used."""
    tpl = template_2mm()
    brain = template_mask(tpl)
    post, _ = segment(tpl.get_fdata(dtype=np.float32), brain, fractions=False)
    composite = block_mean(post[1] + 2 * post[2], WARP_MM // 2)
    return composite, feature_mask()


@functools.lru_cache(maxsize=None)
def feature_mask() -> np.ndarray:
    """Where the features are read: the template brain at :data:`FEATURE_MM` (cheap; the
    composite of :func:`_fixed` takes half a second)."""
    brain = template_mask(template_2mm())
    return block_mean(brain.astype(np.float32), FEATURE_MM // 2) > 0.5


def _ants_image(data: np.ndarray, voxel_mm: float):
    import ants

    origin = template_2mm().affine[:3, 3]
    return ants.from_numpy(np.ascontiguousarray(data, np.float32), origin=tuple(origin),
                           spacing=(float(voxel_mm),) * 3)


def warp_tissue(post: np.ndarray, seed: int = 20240, threads: int = 1) -> dict:
    """Warp GM and WM to the template (CSF carried by the same warp): modulated and unmodulated
    maps and the log-Jacobian, all at :data:`WARP_MM` on the template grid. With ``threads``
    > 1 the warp runs in the helper process that uses them (the same numbers; here when the
    helper cannot run)."""
    return start_warp(post, seed, threads)()


def start_warp(post: np.ndarray, seed: int = 20240, threads: int = 1):
    """:func:`warp_tissue` begun: with ``threads`` > 1 the helper warps while the caller goes
    on; the function returned waits for it and gives the maps (with one thread, or when the
    helper cannot run, it warps in this process when called)."""
    f = WARP_MM // 2
    csf, gm, wm = (block_mean(p, f) for p in post[:3])

    def here() -> dict:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
        return _warp(gm, wm, seed, csf)

    if threads <= 1:
        return here
    from bids_brainage import helper

    return helper.run_there(threads, here, __name__, "_warp", gm, wm, seed, csf)


def prepare_warp() -> None:
    """What a warp loads (ants, the template's composite): a helper process runs this early."""
    import ants  # noqa: F401

    _fixed()


def _warp(gm: np.ndarray, wm: np.ndarray, seed: int, csf: np.ndarray | None = None) -> dict:
    import ants

    ants.config._random_seed = seed
    fixed_data, _ = _fixed()
    fixed = _ants_image(fixed_data, WARP_MM)
    moving = _ants_image(gm + 2 * wm, WARP_MM)
    with tempfile.TemporaryDirectory(prefix="bids_brainage_tissue_") as tmp:
        reg = ants.registration(
            fixed=fixed, moving=moving, type_of_transform="SyNOnly",
            initial_transform="identity", syn_metric="meansquares", syn_sampling=32,
            reg_iterations=SYN_ITERATIONS, outprefix=os.path.join(tmp, "syn_"), verbose=False,
        )
        warp = [p for p in reg["fwdtransforms"] if p.endswith(".nii.gz")][0]
        logjac = ants.create_jacobian_determinant_image(fixed, warp, do_log=True).numpy()
        warped = [ants.apply_transforms(fixed=fixed, moving=_ants_image(m, WARP_MM),
                                        transformlist=[warp], interpolator="linear").numpy()
                  for m in (gm, wm) + (() if csf is None else (csf,))]
    jac = np.exp(logjac)
    out = {"gm": warped[0] * jac, "wm": warped[1] * jac,
           "gm_unmodulated": warped[0], "wm_unmodulated": warped[1],
           "logjac": logjac.astype(np.float32), "fixed": fixed_data}
    if csf is not None:  # the warp follows GM and WM only; CSF rides along
        out["csf"], out["csf_unmodulated"] = warped[2] * jac, warped[2]
    return out


# the maps a card's input may read (``{"feature": "tissue", "maps": [...]}``): modulated GM,
# WM and CSF (tissue volume per template voxel; a card without "maps" reads GM and WM) and
# the unmodulated ones (the warped fractions: tissue concentration)
FEATURE_MAPS = ("gm", "wm")
MAPS = ("gm", "wm", "gm_unmodulated", "wm_unmodulated", "csf", "csf_unmodulated")


def feature_maps(spec: dict) -> tuple[str, ...]:
    """The maps a ``tissue`` input spec reads, checked.

    >>> feature_maps({"feature": "tissue"})
    ('gm', 'wm')
    >>> feature_maps({"feature": "tissue", "maps": ["gm", "wm", "gm_unmodulated"]})
    ('gm', 'wm', 'gm_unmodulated')
    """
    maps = tuple(spec.get("maps", FEATURE_MAPS))
    unknown = [m for m in maps if m not in MAPS]
    if unknown or not maps:
        raise ValueError(f"tissue input maps must be some of {MAPS}, not {list(maps)}")
    return maps


def tissue_features(mni: np.ndarray, mask: np.ndarray, threads: int = 1,
                    maps: tuple[str, ...] = FEATURE_MAPS) -> np.ndarray:
    """The ``tissue`` model's input: the warped GM and WM ``maps`` (modulated by default),
    each smoothed by :data:`SMOOTH_FWHM_MM` and read inside the template brain at
    :data:`FEATURE_MM`, one after the other (``threads``: the warp's, which do not change
    it)."""
    return start_tissue_features(mni, mask, threads, maps)()


# tissue features begun ahead (:func:`begin_tissue_features`), by the content of their input
_BEGUN: dict[str, object] = {}


def _content_key(mni: np.ndarray, mask: np.ndarray) -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for array in (np.ascontiguousarray(mni, np.float32), np.ascontiguousarray(mask, bool)):
        digest.update(repr(array.shape).encode())
        digest.update(array.data)
    return digest.hexdigest()


def begin_tissue_features(mni: np.ndarray, mask: np.ndarray, threads: int) -> None:
    """Begin :func:`start_tissue_features` now (the registration step, as soon as the MNI
    brain exists, with ``threads`` > 1: the warp goes to the helper), for a later call with
    the same brain in this process to finish: the warp then runs while the normalisation
    step and the prediction's other models work. Keeps the last few begun."""
    if threads <= 1:
        return
    key = _content_key(mni, mask)
    _keep(_BEGUN, key, _start_tissue_features(mni, mask, threads, key))


def start_tissue_features(mni: np.ndarray, mask: np.ndarray, threads: int = 1,
                          maps: tuple[str, ...] = FEATURE_MAPS):
    """:func:`tissue_features` begun (segmented, the warp handed to its helper with
    ``threads`` > 1), or taken over when :func:`begin_tissue_features` began it for this
    brain; the function returned finishes it."""
    key = _content_key(mni, mask)
    begun = _BEGUN.pop(key, None)
    if begun is None:
        begun = _start_tissue_features(mni, mask, threads, key)
    return functools.partial(begun, tuple(maps))


# the last few brains' segmentation summaries (:func:`segment`'s info), by content
_SEGMENTED: dict[str, dict] = {}


def _keep(store: dict, key: str, value, last: int = 4):
    """``store[key] = value``, the oldest entries dropped so that at most ``last`` stay."""
    while len(store) >= last:
        store.pop(next(iter(store)))
    store[key] = value
    return value


def segment_info(mni: np.ndarray, mask: np.ndarray) -> dict:
    """:func:`segment`'s info (class means, their order) with the template priors: taken from
    the tissue features' segmentation of this brain when this process made it, so that the
    reliability's contrast (:func:`bids_brainage.models.reliability.tissue_contrast`) runs
    no second EM. The means are the same either way (``fractions`` changes only the maps)."""
    key = _content_key(mni, mask)
    return _SEGMENTED.get(key) or _keep(_SEGMENTED, key, segment(mni, mask, fractions=False)[1])


def _start_tissue_features(mni: np.ndarray, mask: np.ndarray, threads: int, key: str):
    """Segment (remembering the class means for :func:`segment_info` under ``key``, the
    brain's :func:`_content_key`) and hand the warp to its helper."""
    post, info = segment(mni, mask)
    _keep(_SEGMENTED, key, info)
    warped = start_warp(post, threads=threads)

    def finish(names: tuple[str, ...] = FEATURE_MAPS) -> np.ndarray:
        from scipy import ndimage

        maps = warped()
        inside = feature_mask()
        sigma = SMOOTH_FWHM_MM / (2 * np.sqrt(2 * np.log(2))) / WARP_MM
        parts = []
        for key in names:
            smooth = ndimage.gaussian_filter(maps[key], sigma)
            parts.append(block_mean(smooth, FEATURE_MM // WARP_MM)[inside])
        return np.concatenate(parts).astype(np.float64)

    return finish
