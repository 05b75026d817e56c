"""The group report ``group_report.html``: cohort metrics, figures, failures and flags."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from bids_brainage import __version__
from bids_brainage.io import atomic_write_text
from bids_brainage.reports.templates import GROUP, render

LOGGER = logging.getLogger("bids_brainage.reports")
DPI = 72
# Longer lists stay in the tables; a page with 10,000 rows helps nobody.
LIST_LIMIT = 300


def write_group_report(path, table: pd.DataFrame, summary: dict) -> Path:
    """Render the group report from ``group.analyse``'s table and summary, atomically."""
    from bids_brainage.stats.cohort import image_labels

    models = list(summary["models"])
    spans = {name: _span(entry.get("training")) for name, entry in summary["models"].items()}
    figures, problems = _figures(table, models, spans)
    outside = table[table["out_of_training_range"].fillna(False).astype(bool)]
    out_of_range = [
        {"image": label, "model": row.model, "age": row.age, "span": _span_text(spans[row.model]),
         "predicted_age": row.predicted_age, "brain_age_gap": row.brain_age_gap}
        for label, row in zip(image_labels(outside), outside.itertuples())
    ]
    html = render(
        GROUP, title="bids_brainage: group report", version=__version__,
        counts=summary["counts"], bias_fit=summary["bias_fit"], warnings=summary["warnings"],
        models=summary["models"], notes=_model_notes(summary, spans),
        figures=figures, figure_problems=problems,
        failed=summary["failed"], flagged=summary.get("flagged", []), out_of_range=out_of_range,
        any_range=any(span is not None for span in spans.values()),
        without_age=summary["without_age"], missing=summary["missing"], limit=LIST_LIMIT,
    )
    return atomic_write_text(path, html)


def _model_notes(summary: dict, spans: dict) -> dict[str, dict]:
    """One line each on the training ages and the bias line of every model."""
    notes = {}
    for name, entry in summary["models"].items():
        coef = entry["bias_correction"]
        if coef.get("by_site"):
            bias = f"refitted per site ({coef['site_column']}): " + "; ".join(
                f"{site}: {fit['method']} on {fit['n_controls']} controls"
                + (f", offset {fit['offset']:+.1f} y" if fit.get("offset") is not None else "")
                for site, fit in coef["by_site"].items())
        elif coef.get("slope") is not None:
            bias = (f"predicted = {coef['slope']:.3f} x age + {coef['intercept']:.2f}, "
                    f"from the {coef['source']}")
            bias += f" ({coef['fitted_on']})" if coef.get("fitted_on") else ""
        else:
            bias = "none" + (f" ({coef['note']})" if coef.get("note") else "")
        span = spans.get(name)
        training = "unknown (not checked)" if span is None else f"{_span_text(span)} years"
        notes[name] = {"training": training, "bias": bias}
    return notes


def _span(training: dict | None) -> tuple[float, float] | None:
    from bids_brainage.stats.cohort import training_range

    return training_range({"training": training}) if training else None


def _span_text(span) -> str:
    return "unknown" if span is None else f"{span[0]:g}-{span[1]:g}"


def _figures(table: pd.DataFrame, models: list[str], spans: dict) -> tuple[list, list]:
    if not models:
        return [], ["No model has a successful prediction: no figures."]
    from bids_brainage.reports import group_figures
    from bids_brainage.reports.figures import to_data_uri

    groupings = [c for c in ("site", "sex") if c in table.columns and table[c].notna().any()]
    specs = (
        ("Predicted against chronological age: identity line (black), least-squares fit "
         "(orange), training age range (green band), images outside it circled in red.",
         lambda: group_figures.predicted_vs_age_figure(table, models, spans)),
        ("Brain-age gap: raw (filled) and bias-corrected (red outline)"
         + (f"; raw gap by {' and by '.join(groupings)}" if groupings else "") + ".",
         lambda: group_figures.gap_distribution_figure(table, models, groupings)),
        ("Bland-Altman: difference against mean of predicted and chronological age, with the "
         "mean difference and the 95 % limits of agreement.",
         lambda: group_figures.bland_altman_figure(table, models)),
    )
    from bids_brainage.stats.cohort import flagged_rows

    flagged = flagged_rows(table)
    if flagged.any():
        hidden = table[~flagged]
        from bids_brainage.stats.cohort import image_labels

        n_hidden = image_labels(table[flagged]).nunique()
        specs += ((f"Brain-age gap without the flagged predictions: {n_hidden} flagged "
                   f"image(s) hidden (listed under Flagged).",
                   lambda: group_figures.gap_distribution_figure(hidden, models, groupings)),)
    figures, problems = [], []
    for caption, make in specs:
        try:
            fig = make()
            width, height = (fig.get_size_inches() * DPI).round().astype(int)
            figures.append({"uri": to_data_uri(fig, dpi=DPI), "alt": caption.split(":")[0],
                            "caption": caption, "width": int(width), "height": int(height)})
        except Exception as exc:  # a figure must not cost the tables and the other figures
            LOGGER.warning("group figure failed: %s", exc)
            problems.append(f"{caption.split(':')[0]}: could not be drawn ({exc})")
    return figures, problems
