"""Cohort statistics of the group level: model cards, age-bias correction, metrics per model.

Works on the table ``bids_brainage.levels.group.collect`` builds (one row per image x model); no I/O
apart from reading the model cards.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bids_brainage import __version__
from bids_brainage.bids.participants import finite_float
from bids_brainage.stats import metrics

LOGGER = logging.getLogger("bids_brainage.group")

ADDED = ("predicted_age_corrected", "brain_age_gap_corrected", "out_of_training_range")
GROUPINGS = ("site", "sex")
# Cohort refits need enough spread to mean anything; below this the fit is still made, but flagged.
MIN_COHORT_FIT = 20
# Per-site refits: a line needs this many controls with an age; fewer (but at least
# MIN_SITE_OFFSET) correct only the site's offset against the model card's line; fewer still
# are refused (a mean of 4 gaps is off by years: its standard error is ~sd_gap / 2).
MIN_SITE_LINE = 20
MIN_SITE_OFFSET = 8


class CohortFitError(ValueError):
    """A requested cohort correction that the data cannot support (too few controls)."""


# ------------------------------------------------------------------------------ model cards
def load_cards(model_dir: Path | str | None = None) -> dict[str, dict]:
    """Model cards by name: the registry's when it exists, else ``models.json`` read here.

    Group level only needs the training age range and the bias-correction line; a card
    without them (or no card at all) switches those features off, and the outputs say so.
    """
    try:
        from bids_brainage.models.registry import load_cards as registry_load_cards
    except ImportError:
        registry_load_cards = None
    if registry_load_cards is not None:
        try:
            return dict(registry_load_cards(model_dir))
        except Exception as exc:  # a broken card must not stop the cohort tables
            LOGGER.warning("model cards could not be loaded (%s); metrics without them", exc)
            return {}
    folder = Path(model_dir) if model_dir else Path(__file__).resolve().parents[1] / "data" / "models"
    try:
        raw = json.loads((folder / "models.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        LOGGER.warning("no usable model card in %s (%s); metrics without it", folder, exc)
        return {}
    return _cards_by_name(raw)


def _cards_by_name(raw) -> dict[str, dict]:
    """Accept ``{"models": [...]}``, ``{"models": {name: card}}``, ``[...]`` or ``{name: card}``."""
    if isinstance(raw, dict) and "models" in raw:
        raw = raw["models"]
    if isinstance(raw, list):
        return {card["name"]: card for card in raw if isinstance(card, dict) and "name" in card}
    if isinstance(raw, dict):
        return {name: card for name, card in raw.items() if isinstance(card, dict)}
    return {}


def training_range(card: dict | None) -> tuple[float, float] | None:
    training = (card or {}).get("training") or {}
    low, high = finite_float(training.get("age_min")), finite_float(training.get("age_max"))
    return (low, high) if low is not None and high is not None else None


# ------------------------------------------------------------------------- bias correction
def bias_coefficients(df: pd.DataFrame, cards: dict, bias_fit: str, controls=None,
                      site_column: str | None = None) -> dict[str, dict]:
    """The age-bias line of each model: from its card, or refitted on this cohort.

    With ``bias_fit="cohort"``, ``controls`` (a boolean Series on ``df``) restricts the fit to
    those rows, and ``site_column`` fits each site separately (``by_site``): a line with at
    least ``MIN_SITE_LINE`` controls, else the site's offset against the card's line with at
    least ``MIN_SITE_OFFSET``; a site with fewer raises :class:`CohortFitError`.
    """
    if bias_fit not in ("model", "cohort"):
        raise ValueError(f"bias_fit must be 'model' or 'cohort', not {bias_fit!r}")
    controls = pd.Series(True, index=df.index) if controls is None else controls
    out = {}
    for name in model_names(df):
        rows = _ok(df) & (df["model"] == name) & controls
        if bias_fit == "cohort" and site_column:
            out[name] = _site_fits(df[rows], site_column, _card_fit(cards.get(name)), name)
            continue
        if bias_fit == "cohort":
            out[name] = _cohort_fit(df[rows])
        else:
            out[name] = _card_fit(cards.get(name))
        _refuse_flat(out[name])
    return out


def _refuse_flat(coef: dict) -> None:
    slope = coef.get("slope")
    if slope is not None and not slope > 0.1:
        coef.update(slope=None, intercept=None,
                    note=f"slope {slope:.3g} is too flat to invert; no correction")


def _site_fits(rows: pd.DataFrame, column: str, card: dict, model: str) -> dict:
    """One fit per site of ``rows`` (the controls of one model)."""
    by_site, refused = {}, []
    sites = rows[column].fillna("n/a").astype(str)
    for site in sorted(sites.unique()):
        part = rows[sites == site]
        n = int((part["age"].notna() & part["predicted_age"].notna()).sum())
        if n >= MIN_SITE_LINE:
            fit = _cohort_fit(part)
            fit["method"] = "line"
        elif n >= MIN_SITE_OFFSET and card.get("slope") is not None:
            corrected = metrics.correct_age_bias(part["predicted_age"], card["slope"],
                                                 card["intercept"])
            offset = float(np.nanmean(corrected - part["age"]))
            fit = {"slope": card["slope"],
                   "intercept": card["intercept"] + card["slope"] * offset,
                   "offset": offset, "method": "offset", "source": "cohort",
                   "fitted_on": f"the model card's line, then the mean corrected gap of this "
                                f"site's {n} controls"}
        else:
            refused.append(f"{site} ({n})")
            continue
        fit["n_controls"] = n
        _refuse_flat(fit)
        by_site[site] = fit
    if refused:
        raise CohortFitError(
            f"model {model}: too few controls with an age to correct site(s) {', '.join(refused)}"
            f" (column {column!r}); a per-site correction needs at least {MIN_SITE_OFFSET} "
            f"controls (an offset) or {MIN_SITE_LINE} (a line); add controls, merge sites, or "
            f"drop --site-column")
    return {"source": "cohort", "site_column": column, "by_site": by_site,
            "warning": "COHORT REFIT PER SITE: each site's controls set its correction; "
                       "corrected metrics of those controls are optimistic."}


def _card_fit(card: dict | None) -> dict:
    if not card:
        return {"slope": None, "intercept": None, "source": None,
                "note": "no model card for this model: no bias correction"}
    bias = card.get("bias_correction") or {}
    slope, intercept = finite_float(bias.get("slope")), finite_float(bias.get("intercept"))
    if slope is None or intercept is None:
        return {"slope": None, "intercept": None, "source": None,
                "note": "the model card has no bias_correction: no bias correction"}
    return {"slope": slope, "intercept": intercept, "source": "model card",
            "fitted_on": bias.get("fitted_on")}


def _cohort_fit(rows: pd.DataFrame) -> dict:
    age, predicted = metrics.finite_pairs(rows["age"], rows["predicted_age"])
    try:
        slope, intercept = metrics.fit_age_bias(age, predicted)
    except ValueError as exc:
        return {"slope": None, "intercept": None, "source": "cohort", "note": str(exc)}
    fit = {"slope": slope, "intercept": intercept, "source": "cohort",
           "fitted_on": f"this cohort ({age.size} images with an age)",
           "warning": "COHORT REFIT: the line was fitted on the same images it corrects, so "
                      "the corrected gap is uncorrelated with age by construction and any real "
                      "age-related effect in this cohort is removed too; corrected metrics are "
                      "optimistic. Use --bias-fit model for unbiased figures."}
    if age.size < MIN_COHORT_FIT:
        fit["warning"] += f" Only {age.size} images: the line itself is unreliable."
    return fit


def annotate(df: pd.DataFrame, cards: dict, coefficients: dict[str, dict]) -> pd.DataFrame:
    """Add the corrected predicted age and gap, and the out-of-training-range flag."""
    out = df.copy()
    out["predicted_age_corrected"] = np.nan
    out["out_of_training_range"] = pd.array([pd.NA] * len(out), dtype="boolean")
    for name, coef in coefficients.items():
        rows = out["model"] == name
        parts = [(rows, coef)]
        if "by_site" in coef:
            sites = out[coef["site_column"]].fillna("n/a").astype(str)
            parts = [(rows & (sites == site), fit) for site, fit in coef["by_site"].items()]
        for part, fit in parts:
            if fit.get("slope") is not None:
                out.loc[part, "predicted_age_corrected"] = metrics.correct_age_bias(
                    out.loc[part, "predicted_age"], fit["slope"], fit["intercept"])
        span = training_range(cards.get(name))
        if span is not None:
            age = out.loc[rows, "age"]
            flag = ((age < span[0]) | (age > span[1])).astype("boolean")
            out.loc[rows, "out_of_training_range"] = flag.mask(age.isna())
    out["brain_age_gap_corrected"] = out["predicted_age_corrected"] - out["age"]
    return out


# --------------------------------------------------------------------------------- summary
def model_names(df: pd.DataFrame) -> list[str]:
    return sorted(df.loc[_ok(df), "model"].dropna().unique())


def _ok(df: pd.DataFrame) -> pd.Series:
    return (df["status"] == "ok") & df["model"].notna()


def image_labels(df: pd.DataFrame) -> pd.Series:
    """``sub-01_ses-1_run-2`` style labels, one per row."""
    label = df["participant_id"].fillna("sub-?").astype(str)
    ses = df["session_id"].fillna("")
    label = label.where(ses == "", label + "_" + ses.astype(str))
    run = df["run"].astype("string").fillna("")
    return label.where(run == "", label + "_run-" + run).astype(str)


def metric_set(age, predicted) -> dict:
    """MAE, RMSE, R², Pearson r (p, 95 % CI), mean and SD of the gap, and r(gap, age)."""
    age, predicted = metrics.finite_pairs(age, predicted)
    gap = metrics.brain_age_gap(predicted, age)
    r = metrics.pearson_r(age, predicted)
    bias = metrics.pearson_r(age, gap)
    return {
        "N": int(age.size),
        "MAE": metrics.mae(age, predicted),
        "RMSE": metrics.rmse(age, predicted),
        "R2": metrics.r2(age, predicted),
        "pearson_r": {"r": r.r, "p": r.p, "ci95": [r.ci_low, r.ci_high]},
        "mean_gap": float(gap.mean()) if gap.size else None,
        "sd_gap": float(gap.std(ddof=1)) if gap.size > 1 else None,
        "r_gap_age": bias.r,
    }


def metric_block(rows: pd.DataFrame) -> dict:
    """Raw and (when a correction exists) bias-corrected metrics of some rows of one model."""
    block = {"N": int((rows["age"].notna() & rows["predicted_age"].notna()).sum()),
             "n_participants": int(rows.loc[rows["age"].notna(), "participant_id"].nunique()),
             "raw": metric_set(rows["age"], rows["predicted_age"])}
    if rows["predicted_age_corrected"].notna().any():
        block["corrected"] = metric_set(rows["age"], rows["predicted_age_corrected"])
    return block


def _by_column(rows: pd.DataFrame, column: str) -> dict:
    groups = {}
    usable = rows[rows[column].notna() & rows["age"].notna()]  # no empty groups
    for value, part in usable.groupby(column, sort=True):
        groups[str(value)] = metric_block(part)
    return groups


def analyse(df: pd.DataFrame, cards: dict, bias_fit: str = "model",
            missing: list[str] | tuple = (), controls=None,
            site_column: str | None = None) -> tuple[pd.DataFrame, dict]:
    """The annotated, sorted table and its summary (what ``group_brainage.json`` holds)."""
    coefficients = bias_coefficients(df, cards, bias_fit, controls, site_column)
    table = annotate(df, cards, coefficients)
    table = table.sort_values(["participant_id", "session_id", "run", "model"],
                              na_position="first", kind="stable").reset_index(drop=True)
    labels = image_labels(table)
    ok = _ok(table)
    summary = {
        "GeneratedBy": [{"Name": "bids_brainage", "Version": __version__}],
        "bias_fit": bias_fit,
        "bias_fit_controls": None if controls is None else int(
            df.loc[_ok(df) & controls, "participant_id"].nunique()),
        "bias_fit_site_column": site_column,
        "warnings": [],
        "counts": {
            "participants": int(table["participant_id"].nunique()),
            "images": int(labels.nunique()),
            "images_failed": int(labels[table["status"] == "failed"].nunique()),
            "images_unreadable": int(labels[table["status"] == "unreadable"].nunique()),
            "images_without_prediction": int(
                labels[table["status"] == "no_prediction"].nunique()),
            "images_without_age": int(labels[ok & table["age"].isna()].nunique()),
            "participants_missing": len(missing),
        },
        "models": {},
        "failed": _failures(table, labels),
        "flagged": _flagged(table, labels),
        "without_age": sorted(labels[ok & table["age"].isna()].unique()),
        "missing": list(missing),
    }
    for name in model_names(table):
        summary["models"][name] = _model_summary(table, labels, name, cards.get(name),
                                                 coefficients[name])
        coef = coefficients[name]
        for key in ("warning", "note"):
            if coef.get(key):
                summary["warnings"].append(f"{name}: {coef[key]}")
    return table, _clean(summary)


def summarize(df: pd.DataFrame, cards: dict, bias_fit: str = "model") -> dict:
    """Metrics per model, overall and per site / sex (see ``analyse``)."""
    return analyse(df, cards, bias_fit)[1]


def flagged_rows(table: pd.DataFrame) -> pd.Series:
    """Rows whose prediction carries a reliability flag (not ``ok``, known)."""
    if "flag" not in table.columns:
        return pd.Series(False, index=table.index)
    flag = table["flag"].astype("string")
    return (_ok(table) & flag.notna() & (flag != "ok")).fillna(False).astype(bool)


def _flagged(table: pd.DataFrame, labels: pd.Series) -> list[dict]:
    """One entry per flagged image: its reasons (the same for every model of the image)."""
    rows = flagged_rows(table)
    out = {}
    for label, row in zip(labels[rows], table[rows].itertuples()):
        out.setdefault(label, {"image": label, "participant_id": row.participant_id,
                               "reasons": str(row.flag).split(";"), "models": []})
        out[label]["models"].append(row.model)
    return list(out.values())


def _model_summary(table, labels, name, card, coef) -> dict:
    rows = table[_ok(table) & (table["model"] == name)]
    outside = rows["out_of_training_range"].fillna(False).astype(bool)
    span = training_range(card)
    entry = {
        "training": (card or {}).get("training"),
        "bias_correction": coef,
        "overall": metric_block(rows),
    }
    flagged = flagged_rows(rows)
    entry["n_flagged"] = int(flagged.sum())
    if flagged.any():
        entry["unflagged"] = metric_block(rows[~flagged])
    for column in GROUPINGS:
        if column in rows.columns and rows[column].notna().any():
            entry[f"by_{column}"] = _by_column(rows, column)
    if span is None:
        entry["out_of_training_range"] = None
        entry["note"] = "the model card gives no training age range: range not checked"
    else:
        entry["out_of_training_range"] = sorted(labels[outside.reindex(labels.index,
                                                                       fill_value=False)])
        if outside.any():
            entry["within_training_range"] = metric_block(rows[~outside])
    return entry


def _failures(table: pd.DataFrame, labels: pd.Series) -> list[dict]:
    bad = table["status"] != "ok"
    listed = []
    for label, row in zip(labels[bad], table[bad].itertuples()):
        listed.append({"image": label, "participant_id": row.participant_id,
                       "status": row.status, "message": row.message, "source": row.source})
    return listed


def _clean(value):
    """JSON-safe: NaN -> None, numpy scalars -> Python, floats to 6 significant digits."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if value is pd.NA:
        return None
    return value
