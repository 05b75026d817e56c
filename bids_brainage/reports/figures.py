"""Report figures: matplotlib ``Figure`` objects turned into embeddable PNG data URIs.

No pyplot: a ``Figure`` made directly has no global state, no GUI backend and is freed when
it goes out of scope, so reports can be made inside nipype workers and threads.
"""
from __future__ import annotations

import base64
import functools
import io
import os
import sys
import tempfile


def _writable_mpl_config() -> None:
    """Point MPLCONFIGDIR at a temporary folder when the usual one is read-only.

    Containers often run as a user whose home is not writable; matplotlib copes but warns on
    every start. Must run before matplotlib is imported.
    """
    if "matplotlib" in sys.modules:
        return
    folder = os.environ.get("MPLCONFIGDIR") or os.path.join(
        os.path.expanduser("~"), ".config", "matplotlib")
    probe = folder
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not probe or not os.path.isdir(probe) or not os.access(probe, os.W_OK):
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="bids_brainage-mpl-")


_writable_mpl_config()

import matplotlib  # noqa: E402

matplotlib.use("Agg", force=False)

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

BACKGROUND = "#111111"
MASK_COLOUR = "#ff4040"
TEMPLATE_COLOUR = "#ff4040"
TEMPLATE_INNER_COLOUR = "#40d0ff"
FRACTIONS = (0.25, 0.5, 0.75)
# Rows of a brain mosaic: (axis, plane name, horizontal letters, vertical letters).
PLANES = ((0, "sagittal", "PA", "IS"), (1, "coronal", "LR", "IS"), (2, "axial", "LR", "PA"))


def prepare() -> None:
    """What the first figure of a process would load (matplotlib, its fonts, the PNG writer,
    scipy.ndimage, nibabel): a helper process does it ahead of the report."""
    import nibabel  # noqa: F401
    from scipy import ndimage  # noqa: F401

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().set_title("x")
    to_data_uri(fig)


def to_data_uri(fig: Figure, dpi: int = 80) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (no Software tag: same bytes on rerun)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None},
                facecolor=fig.get_facecolor())
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------ volumes
def load_canonical(path):
    """Data (float32, RAS voxel order) and voxel sizes of a NIfTI file; 4-D is squeezed."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    return data, np.asarray(img.header.get_zooms()[:3], dtype=float), img.affine


def resample_to(path, shape, affine, order: int = 0) -> np.ndarray:
    """Resample a NIfTI file onto another grid (given by shape and affine) in world space."""
    import nibabel as nib
    from scipy import ndimage

    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    if data.shape == tuple(shape) and np.allclose(img.affine, affine, atol=1e-4):
        return data  # already on the grid (the usual case): skip 10^7 interpolations
    to_source = np.linalg.inv(img.affine) @ affine
    return ndimage.affine_transform(data, to_source[:3, :3], offset=to_source[:3, 3],
                                    output_shape=tuple(shape), order=order, cval=0.0)


def slice_positions(mask: np.ndarray, axis: int, fractions=FRACTIONS) -> list[int]:
    """Slice indices at fractions of the mask's extent along ``axis``.

    >>> m = np.zeros((10, 4, 4), bool); m[2:8] = True
    >>> slice_positions(m, 0)
    [3, 4, 6]
    """
    other = tuple(a for a in range(mask.ndim) if a != axis)
    present = np.flatnonzero(mask.any(axis=other))
    if present.size == 0:
        present = np.arange(mask.shape[axis])
    low, high = present[0], present[-1]
    return [int(round(low + f * (high - low))) for f in fractions]


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices around the non-zero part of ``mask`` with ``margin`` voxels to spare."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(present[0] - margin, 0), min(present[-1] + margin + 1,
                                                          mask.shape[axis])))
    return tuple(box)


def brain_mosaic(background: np.ndarray, zooms, *, outlines, focus: np.ndarray,
                 window: tuple[float, float], title: str, overlay=None) -> Figure:
    """Three planes x three positions of ``background`` with contour ``outlines``.

    ``outlines`` is a list of ``(volume, level, colour, width)`` on the same grid;
    ``focus`` (a boolean volume) chooses the slices and the crop; ``overlay`` is an optional
    ``(volume, limit)`` drawn in a diverging colour map (blue −limit … red +limit, zero
    transparent).
    """
    fig = Figure(figsize=(9, 9), facecolor=BACKGROUND)
    axes = fig.subplots(3, 3)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95, wspace=0.02, hspace=0.06)
    fig.suptitle(title, color="white", fontsize=11)
    crop = bounding_box(focus, margin=max(2, int(round(12 / float(min(zooms))))))
    for row, (axis, name, horizontal, vertical) in enumerate(PLANES):
        for col, index in enumerate(slice_positions(focus, axis)):
            ax = axes[row, col]
            plane_crop = tuple(s for a, s in enumerate(crop) if a != axis)
            spacing = [z for a, z in enumerate(zooms) if a != axis]
            image = _plane(background, axis, index)[plane_crop]
            extent = (0, image.shape[0] * spacing[0], 0, image.shape[1] * spacing[1])
            ax.imshow(image.T, cmap="gray", origin="lower", extent=extent,
                      vmin=window[0], vmax=window[1], interpolation="nearest")
            if overlay is not None:
                values = _plane(overlay[0], axis, index)[plane_crop]
                shown = np.ma.masked_where(np.abs(values) < overlay[1] * 0.05, values)
                ax.imshow(shown.T, cmap="RdBu_r", origin="lower", extent=extent, alpha=0.75,
                          vmin=-overlay[1], vmax=overlay[1], interpolation="nearest")
            for volume, level, colour, width in outlines:
                _contour(ax, _plane(volume, axis, index)[plane_crop], spacing, level, colour,
                         width)
            _orientation_letters(ax, horizontal, vertical)
            # y given: matplotlib then skips placing the title around the (hidden) tick
            # labels, which builds every tick of the axes (a third of the figure's time)
            ax.set_title(f"{name} {index}", color="#bbbbbb", fontsize=8, pad=2, y=1.0)
            ax.set_axis_off()
    return fig


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    # a view, not np.take's copy (10 ms a slice of a 1 mm head)
    return volume[(slice(None),) * axis + (index,)]


def _contour(ax, plane: np.ndarray, spacing, level, colour, width) -> None:
    if plane.min() >= level or plane.max() <= level:
        return  # nothing crosses the level on this slice
    x = (np.arange(plane.shape[0]) + 0.5) * spacing[0]
    y = (np.arange(plane.shape[1]) + 0.5) * spacing[1]
    ax.contour(x, y, plane.T, levels=[level], colors=[colour], linewidths=width)


def _orientation_letters(ax, horizontal: str, vertical: str) -> None:
    style = dict(transform=ax.transAxes, color="#ffd040", fontsize=8, fontweight="bold")
    ax.text(0.01, 0.5, horizontal[0], ha="left", va="center", **style)
    ax.text(0.99, 0.5, horizontal[1], ha="right", va="center", **style)
    ax.text(0.5, 0.01, vertical[0], ha="center", va="bottom", **style)
    ax.text(0.5, 0.99, vertical[1], ha="center", va="top", **style)


def intensity_window(data: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    """Grey-level window: from the 0.5th percentile of the image to the 99.5th of ``inside``."""
    values = data[inside] if inside.any() else data.ravel()
    low = float(np.percentile(data, 0.5))
    high = float(np.percentile(values, 99.5))
    return low, high if high > low else low + 1.0


def mask_outline_figure(t1w, mask) -> Figure:
    """The brain mask's outline on the (bias-corrected) T1w, three planes, three slices each."""
    data, zooms, affine = load_canonical(t1w)
    mask_data = resample_to(mask, data.shape, affine, order=0) > 0.5
    return brain_mosaic(data, zooms, outlines=[(mask_data.astype(np.float32), 0.5,
                                                MASK_COLOUR, 1.0)],
                        focus=mask_data, window=intensity_window(data, mask_data),
                        title="Brain mask (red outline) on the bias-corrected T1w")


def mni_overlay_figure(mni, template_mask, template=None) -> Figure:
    """The normalised brain in MNI space with the template's outline (and inner contour)."""
    data, zooms, affine = load_canonical(mni)
    brain = _template_on_grid(template_mask, data.shape, affine, order=0) > 0.5
    outlines = [(brain.astype(np.float32), 0.5, TEMPLATE_COLOUR, 1.0)]
    title = "Registered brain (MNI space) with the template's brain outline (red)"
    if template is not None:
        tpl = _template_on_grid(template, data.shape, affine, order=1)
        if brain.any():
            # the white-matter boundary of the template: where ventricles and gyri should be
            level = float(np.percentile(tpl[brain], 60))
            outlines.append((tpl * brain, level, TEMPLATE_INNER_COLOUR, 0.6))
            title += " and white-matter contour (blue)"
    return brain_mosaic(data, zooms, outlines=outlines, focus=brain,
                        window=intensity_window(data, brain), title=title)


def prepare_mni_overlay(template_mask, template, shape, affine) -> None:
    """Resample the template's mask and image onto an MNI grid now, into the cache
    :func:`mni_overlay_figure` reads: a process that will draw reports does it ahead."""
    _template_on_grid(template_mask, shape, affine, order=0)
    _template_on_grid(template, shape, affine, order=1)


def _template_on_grid(path, shape, affine, order: int) -> np.ndarray:
    """:func:`resample_to` for the template's files, kept per process: every participant's
    MNI image shares one grid, so a worker drawing many reports resamples them once."""
    info = os.stat(path)
    return _template_cache(str(path), info.st_mtime_ns, tuple(shape),
                           np.asarray(affine, float).tobytes(), order)


@functools.lru_cache(maxsize=4)
def _template_cache(path: str, _stamp: int, shape: tuple, affine: bytes, order: int):
    out = resample_to(path, shape, np.frombuffer(affine).reshape(4, 4), order=order)
    out.setflags(write=False)  # shared between reports
    return out


def contribution_figure(mni, contributions) -> Figure:
    """Where the brain looked older (red) or younger (blue) than the training mean: the
    contribution map over the normalised brain in MNI space."""
    data, zooms, affine = load_canonical(mni)
    values = resample_to(contributions, data.shape, affine, order=0)
    focus = data > 0
    limit = float(np.percentile(np.abs(values[values != 0]), 99)) if np.any(values) else 1.0
    title = "Why this age: red looks older, blue younger than the training mean"
    return brain_mosaic(data, zooms, outlines=[], focus=focus if focus.any() else values != 0,
                        window=intensity_window(data, focus), title=title,
                        overlay=(values, limit or 1.0))


# ------------------------------------------------------------------------------ charts
def histogram_figure(histogram: dict) -> Figure:
    """The normalised intensity histogram with the tissue peaks marked."""
    values = np.asarray(histogram["values"], dtype=float)
    edges = np.asarray(histogram["edges"], dtype=float)
    fig = Figure(figsize=(7, 2.8))
    ax = fig.subplots()
    ax.stairs(values, edges, fill=True, color="#9bb7d4", edgecolor="#2a5d8f")
    peaks = histogram.get("peaks") or {}
    colours = {"CSF": "#2ca02c", "GM": "#d62728", "WM": "#1f77b4"}
    for tissue, position in sorted(peaks.items(), key=lambda item: item[1]):
        ax.axvline(position, color=colours.get(tissue, "black"), linestyle="--", linewidth=1.2)
        ax.annotate(f"{tissue} {position:.2f}", (position, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize=8,
                    color=colours.get(tissue, "black"))
    method = histogram.get("normalization") or "unknown"
    ax.set_xlabel(f"normalised intensity (method: {method})")
    ax.set_ylabel("density")
    ax.set_xlim(edges[0], edges[-1])
    fig.tight_layout()
    return fig


def prediction_figure(predictions: list[dict], age: float | None) -> Figure:
    """Each model's predicted age with its interval; the chronological age as a line."""
    rows = [p for p in predictions if _number(p.get("predicted_age")) is not None]
    fig = Figure(figsize=(7, 0.9 + 0.45 * max(len(rows), 1)))
    ax = fig.subplots()
    for y, row in enumerate(rows):
        predicted = _number(row["predicted_age"])
        low, high = _number(row.get("interval_low")), _number(row.get("interval_high"))
        if low is not None and high is not None:
            ax.plot([low, high], [y, y], color="#2a5d8f", linewidth=3, alpha=0.45,
                    solid_capstyle="butt")
        ax.plot(predicted, y, "o", color="#2a5d8f")
        ax.annotate(f"{predicted:.1f}", (predicted, y), xytext=(0, 6),
                    textcoords="offset points", ha="center", fontsize=8)
    if age is not None:
        ax.axvline(age, color="#d62728", linewidth=1.2)
        ax.set_title(f"chronological age {age:.1f} (red line)", fontsize=9, color="#d62728")
    ax.set_yticks(range(len(rows)), [str(r.get("model")) for r in rows])
    ax.set_ylim(len(rows) - 0.3, -0.7)  # first model on top, as in the table
    ax.set_xlabel("age (years); bars: the model's prediction interval")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def model_panels(n_models: int, rows: int = 1, size: float = 4.0):
    """A figure with one column per model (``rows`` rows), axes always 2-D.

    Margins are fixed in inches rather than found by ``tight_layout``, which draws the
    figure once more (a second per figure with 10,000 points a panel).
    """
    width, height = size * n_models + 0.5, size * rows * 0.9
    fig = Figure(figsize=(width, height))
    axes = np.atleast_2d(fig.subplots(rows, n_models, squeeze=False))
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.65 / height,
                        top=1 - 0.4 / height, wspace=0.35, hspace=0.55)
    return fig, axes


def group_colours(labels) -> tuple[list, dict]:
    """A colour per point from a category (≤ 10 categories), else one colour."""
    from matplotlib import colormaps

    labels = ["n/a" if v is None or v != v else str(v) for v in labels]
    names = sorted(set(labels))
    if len(names) > 10 or len(names) <= 1:
        return ["#2a5d8f"] * len(labels), {}
    palette = colormaps["tab10"]
    lookup = {name: palette(i) for i, name in enumerate(names)}
    return [lookup[v] for v in labels], lookup
