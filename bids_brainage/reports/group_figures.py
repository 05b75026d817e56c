"""Cohort figures of the group report: one panel per model, drawn from the group table."""
from __future__ import annotations

import numpy as np
import pandas as pd

from bids_brainage.stats import metrics
from bids_brainage.reports.figures import Figure, group_colours, model_panels

POINT = dict(s=9, alpha=0.6, linewidths=0, rasterized=True)


def _model_rows(table: pd.DataFrame, name: str) -> pd.DataFrame:
    rows = table[(table["status"] == "ok") & (table["model"] == name)]
    return rows[rows["age"].notna() & rows["predicted_age"].notna()]


def _outside(rows: pd.DataFrame) -> np.ndarray:
    return rows["out_of_training_range"].fillna(False).astype(bool).to_numpy()


def predicted_vs_age_figure(table: pd.DataFrame, models: list[str],
                            training: dict[str, tuple | None]) -> Figure:
    """Predicted against chronological age: identity line, least-squares fit, training range."""
    fig, axes = model_panels(len(models))
    colour_by = "site" if "site" in table.columns else None
    for ax, name in zip(axes[0], models):
        rows = _model_rows(table, name)
        age, predicted = rows["age"].to_numpy(), rows["predicted_age"].to_numpy()
        colours, legend = group_colours(rows[colour_by] if colour_by else [None] * len(rows))
        ax.scatter(age, predicted, c=colours, **POINT)
        outside = _outside(rows)
        if outside.any():
            ax.scatter(age[outside], predicted[outside], s=14, facecolors="none",
                       edgecolors="#d62728", linewidths=0.6, rasterized=True,
                       label=f"outside training ages ({outside.sum()})")
        _reference_lines(ax, age, predicted, training.get(name))
        ax.add_artist(ax.legend(fontsize=7, loc="upper left", frameon=False))
        if legend:
            handles = [ax.scatter([], [], color=colour, s=12) for colour in legend.values()]
            ax.legend(handles, [f"site {label}" for label in legend], fontsize=6,
                      loc="lower right", ncol=2, frameon=False)
        ax.set_title(f"{name} (N = {age.size})")
        ax.set_xlabel("chronological age (years)")
        ax.set_ylabel("predicted age (years)")
    return fig


def _reference_lines(ax, age, predicted, span) -> None:
    values = np.concatenate([age, predicted]) if age.size else np.array([0.0, 100.0])
    low, high = float(values.min()) - 2, float(values.max()) + 2
    ax.set_xlim(low, high)  # same limits on both axes: the identity line is the diagonal
    ax.set_ylim(low, high)
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="identity")
    if age.size >= 2 and np.ptp(age) > 0:
        slope, intercept = metrics.fit_age_bias(age, predicted)
        ax.plot([low, high], [slope * low + intercept, slope * high + intercept],
                color="#ff7f0e", linewidth=1.5,
                label=f"fit: {slope:.2f} x age + {intercept:.1f}")
    if span is not None:
        ax.axvspan(span[0], span[1], color="#2ca02c", alpha=0.07,
                   label=f"training ages {span[0]:g}-{span[1]:g}")


def gap_distribution_figure(table: pd.DataFrame, models: list[str],
                            groupings: list[str]) -> Figure:
    """The brain-age gap: histogram (raw and corrected), then box plots by each grouping."""
    fig, axes = model_panels(len(models), rows=1 + len(groupings), size=3.6)
    for col, name in enumerate(models):
        rows = _model_rows(table, name)
        ax = axes[0, col]
        raw = rows["brain_age_gap"].to_numpy()
        corrected = rows["brain_age_gap_corrected"].dropna().to_numpy()
        bins = _bins(np.concatenate([raw, corrected]))
        ax.hist(raw, bins=bins, color="#9bb7d4", label="raw")
        if corrected.size:
            ax.hist(corrected, bins=bins, histtype="step", color="#d62728", linewidth=1.3,
                    label="bias-corrected")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{name}: brain-age gap")
        ax.set_xlabel("gap = predicted - chronological age (years)")
        ax.legend(fontsize=7, frameon=False)
        for row, column in enumerate(groupings, start=1):
            _box_by(axes[row, col], rows, column)
    return fig


def _bins(values: np.ndarray):
    """Shared bin edges for raw and corrected gaps: about sqrt(N) bins, 10 to 60."""
    if values.size == 0:
        return 10
    return np.histogram_bin_edges(values, bins=int(np.clip(np.sqrt(values.size), 10, 60)))


def _box_by(ax, rows: pd.DataFrame, column: str) -> None:
    parts = [(str(k), g["brain_age_gap"].to_numpy())
             for k, g in rows[rows[column].notna()].groupby(column, sort=True)]
    if not parts:
        ax.set_axis_off()
        return
    ax.boxplot([p[1] for p in parts], showfliers=False)
    ax.set_xticks(range(1, len(parts) + 1), [p[0] for p in parts])  # any matplotlib >= 3.5
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("raw gap (years)")
    ax.set_title(f"by {column}")
    if len(parts) > 6:
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)


def bland_altman_figure(table: pd.DataFrame, models: list[str]) -> Figure:
    """Difference (predicted - age) against the mean of the two, with the limits of agreement."""
    fig, axes = model_panels(len(models))
    for ax, name in zip(axes[0], models):
        rows = _model_rows(table, name)
        age, predicted = rows["age"].to_numpy(), rows["predicted_age"].to_numpy()
        mean, diff = (age + predicted) / 2, predicted - age
        ax.scatter(mean, diff, color="#2a5d8f", **POINT)
        if diff.size >= 2:
            centre, spread = diff.mean(), 1.96 * diff.std(ddof=1)
            ax.axhline(centre, color="black", linewidth=1, label=f"mean {centre:.2f}")
            for limit in (centre - spread, centre + spread):
                ax.axhline(limit, color="#d62728", linestyle="--", linewidth=1)
            ax.plot([], [], color="#d62728", linestyle="--",
                    label=f"limits of agreement ±{spread:.1f}")
            ax.legend(fontsize=7, frameon=False)
        ax.set_title(f"{name}: Bland-Altman")
        ax.set_xlabel("mean of predicted and chronological age (years)")
        ax.set_ylabel("predicted - chronological age (years)")
    return fig
