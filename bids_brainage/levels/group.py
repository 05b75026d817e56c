"""Group level: collect every participant's predictions, join participants.tsv, summarise.

Runs from the derivatives alone. Participant jobs may still be writing: they write
``.<name>.XXXX.tmp.tsv`` and rename it into place, so only names without a leading dot are
read, and a file that vanishes or cannot be parsed is logged and listed, never fatal.
Cohort statistics live in ``bids_brainage.stats.cohort``. Outputs (written atomically and
deterministic, so a rerun on the same inputs gives the same bytes):
``group_brainage.tsv`` / ``.csv`` (one row per image x model), ``group_brainage.json``
(metrics per model) and ``group_report.html``.
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

# the cohort statistics are part of this module's interface
from bids_brainage.stats.cohort import (  # noqa: F401
    ADDED, CohortFitError, analyse, annotate, bias_coefficients, finite_float, image_labels, load_cards,
    summarize, training_range,
)
from bids_brainage.bids.participants import participants_table, read_session_ages
from bids_brainage.io import atomic_path, atomic_write_json, scan_dir

LOGGER = logging.getLogger("bids_brainage.group")

NA = "n/a"
TSV_COLUMNS = (
    "participant_id", "session_id", "run", "model", "predicted_age", "interval_low",
    "interval_high", "age", "brain_age_gap", "status", "flag", "message",
)
REQUIRED = ("participant_id", "model", "predicted_age", "status")
NUMERIC = ("predicted_age", "interval_low", "interval_high", "age", "brain_age_gap")
LOG_LIMIT = 20  # names per problem in the log; the tables list them all
_ENTITIES = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_(ses-[A-Za-z0-9]+))?(?:.*_run-(\d+))?")

COLUMN_DESCRIPTIONS = {
    "participant_id": "BIDS participant label",
    "session_id": "BIDS session label (n/a without sessions)",
    "run": "BIDS run index (n/a without runs)",
    "model": "model name from the model card (n/a on a failed image)",
    "predicted_age": "predicted brain age, years",
    "interval_low": "lower end of the model's nominal 90 % prediction interval, years",
    "interval_high": "upper end of the model's nominal 90 % prediction interval, years",
    "age": "chronological age, years (sessions.tsv, else participants.tsv, else the participant "
           "output)",
    "brain_age_gap": "predicted_age - age, years",
    "status": "ok; failed (the participant level failed); unreadable (its output could not "
              "be parsed); no_prediction (preprocessed, but no model was run)",
    "flag": "ok, or the reasons to doubt the prediction (members_disagree, unlike_training, "
            "age_outside_training, poor_registration, poor_skull_strip, unusual_contrast), "
            "n/a for older outputs",
    "message": "failure reason",
    "predicted_age_corrected": "age-bias-corrected predicted age, (predicted - intercept) / slope",
    "brain_age_gap_corrected": "predicted_age_corrected - age, years",
    "out_of_training_range": "age outside the model's training age range (metrics still include "
                             "it)",
    "source": "the participant-level file this row came from, relative to output_dir",
}


# ---------------------------------------------------------------------------------- collect
def find_prediction_files(output_dir: Path | str) -> list[Path]:
    """Every complete ``*_brainage.tsv`` under ``sub-*/[ses-*/]anat/``, sorted.

    ``os.scandir`` rather than ``glob``: a cohort has thousands of folders, and names starting
    with '.' (files still being written) are skipped here.
    """
    found = []
    for sub in scan_dir(Path(output_dir), dirs=True, prefix="sub-"):
        for folder in [sub / "anat"] + [s / "anat" for s in scan_dir(sub, dirs=True, prefix="ses-")]:
            found.extend(
                p for p in scan_dir(folder, dirs=False, prefix="sub-")
                if p.name.endswith("_brainage.tsv")
            )
    return sorted(found)


def read_prediction_file(path: Path) -> list[list[str]]:
    """Rows of one participant TSV as lists of strings in ``TSV_COLUMNS`` order.

    Raises ValueError when the file is not a complete prediction table. A header alone is
    valid: the participant level ran without any model (preprocessing only).
    """
    with open(path, "rb") as handle:
        text = handle.read().decode("utf-8")
    # csv only when something is quoted: plain splitting is 3x faster on 10,000 small files
    lines = (list(csv.reader(text.splitlines(), delimiter="\t")) if '"' in text
             else [line.split("\t") for line in text.splitlines()])
    if not lines:
        raise ValueError("empty file")
    header = lines[0]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")
    index = [header.index(c) if c in header else None for c in TSV_COLUMNS]
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if len(line) != len(header):
            raise ValueError(f"line {number} has {len(line)} fields, the header {len(header)}")
        rows.append([NA if i is None else line[i] for i in index])
    return rows


def collect(output_dir: Path | str) -> pd.DataFrame:
    """One DataFrame of every participant's rows; unparsable files become ``unreadable`` rows.

    Columns: ``TSV_COLUMNS`` plus ``source``. Numbers are floats (``nan`` for n/a),
    ``run`` is a nullable integer, text columns hold ``None`` for n/a.
    """
    output_dir = Path(output_dir)
    rows, sources = [], []
    for path in find_prediction_files(output_dir):
        rel = path.relative_to(output_dir).as_posix()
        try:
            new = read_prediction_file(path)
        except FileNotFoundError:
            LOGGER.warning("%s vanished while reading (rewritten or removed); skipped", rel)
            continue
        except (OSError, ValueError, UnicodeDecodeError, csv.Error) as exc:
            LOGGER.warning("%s is unreadable (%s); listed as unreadable", rel, exc)
            new = [_status_row(path.name, "unreadable", f"unreadable participant output: {exc}")]
        if not new:
            new = [_status_row(path.name, "no_prediction", "no model predicted an age "
                                                            "(preprocessing only)")]
        rows.extend(new)
        sources.extend([rel] * len(new))
    return _frame(rows, sources)


def _status_row(name: str, status: str, message: str) -> list[str]:
    match = _ENTITIES.match(name)
    sub, ses, run = match.groups() if match else (name.split("_")[0], None, None)
    values = dict.fromkeys(TSV_COLUMNS, NA)
    values.update(participant_id=sub, session_id=ses or NA, run=run or NA,
                  status=status, message=message)
    return [values[c] for c in TSV_COLUMNS]


def _frame(rows: list[list[str]], sources: list[str]) -> pd.DataFrame:
    columns = list(zip(*rows)) if rows else [()] * len(TSV_COLUMNS)
    data = {}
    for name, values in zip(TSV_COLUMNS, columns):
        if name in NUMERIC:
            data[name] = pd.to_numeric(pd.Series(values, dtype=object).replace(NA, np.nan),
                                       errors="coerce").astype(float)
        elif name == "run":
            data[name] = pd.to_numeric(pd.Series(values, dtype=object).replace(NA, np.nan),
                                       errors="coerce").astype("Int64")
        else:
            data[name] = pd.Series(values, dtype=object).replace({NA: None, "": None})
    data["source"] = pd.Series(sources, dtype=object)
    return pd.DataFrame(data)


# ---------------------------------------------------------------------- participants.tsv
def join_participants(df: pd.DataFrame, bids_dir: Path | str | None) -> pd.DataFrame:
    """Add participants.tsv columns and settle each image's age; recompute the raw gap.

    Age precedence: the session's age (sessions.tsv), participants.tsv, then the age the
    participant level wrote. Columns that clash with ours get a ``participants_`` prefix.
    """
    out = df.copy()
    participants = participants_table(bids_dir)
    session_ages = read_session_ages(bids_dir)
    ages = participants["age"] if "age" in participants.columns else pd.Series(dtype=float)
    resolved = out["participant_id"].map(ages).astype(float)
    if session_ages:
        keys = zip(out["participant_id"], out["session_id"])
        by_session = pd.Series([session_ages.get(k, np.nan) for k in keys], index=out.index)
        resolved = by_session.where(by_session.notna(), resolved)
    resolved = resolved.where(resolved.notna(), out["age"])
    changed = (out["age"].notna() & (out["age"] - resolved).abs().gt(0.01)).sum()
    if changed:
        LOGGER.warning("%d rows: the age in participants.tsv/sessions.tsv differs from the one "
                       "the participant level wrote; using participants.tsv/sessions.tsv", changed)
    out["age"] = resolved
    out["brain_age_gap"] = out["predicted_age"] - out["age"]
    for column in participants.columns:
        if column == "age":
            continue
        name = f"participants_{column}" if column in out.columns or column in ADDED else column
        out[name] = out["participant_id"].map(participants[column])
    return out


def missing_participants(df: pd.DataFrame, bids_dir: Path | str | None) -> list[str]:
    """Participants of the dataset (participants.tsv or sub-* folders) without any output."""
    known = set(participants_table(bids_dir).index)
    if bids_dir:
        known |= {p.name for p in scan_dir(Path(bids_dir), dirs=True, prefix="sub-")}
    return sorted(known - set(df["participant_id"]))

# ------------------------------------------------------------------- models and controls
def model_mismatches(output_dir: Path, df: pd.DataFrame, model_dir) -> list[str]:
    """Images whose sidecar records another ``models.json`` (sha256) than ``model_dir``'s:
    their bias lines, intervals and training ranges are not the ones this run would apply."""
    import json

    from bids_brainage.models.registry import cards_sha256

    expected = cards_sha256(model_dir)
    out = []
    for source in sorted(set(df.loc[df["status"] == "ok", "source"].dropna())):
        sidecar = output_dir / source.replace("_brainage.tsv", "_brainage.json")
        try:
            recorded = json.loads(sidecar.read_text()).get("models_json_sha256")
        except (OSError, ValueError):
            continue
        if recorded and recorded != expected:
            out.append(f"{source} (models.json {recorded[:12]}…, here {expected[:12]}…)")
    return out


def control_rows(df: pd.DataFrame, controls) -> pd.Series | None:
    """Rows of the participants matching every ``COLUMN=VALUE`` of ``--controls``."""
    if not controls:
        return None
    keep = pd.Series(True, index=df.index)
    for item in controls:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise CohortFitError(f"--controls {item!r}: expected COLUMN=VALUE, e.g. "
                                 f"group=control")
        if column not in df.columns:
            raise CohortFitError(f"--controls {item!r}: participants.tsv has no column "
                                 f"{column!r}")
        keep &= df[column].astype("string").str.strip() == value
    if not keep.any():
        raise CohortFitError(f"--controls {' '.join(controls)}: no participant matches")
    return keep


def resolve_site_column(df: pd.DataFrame, requested: str, bias_fit: str) -> str | None:
    """The participants.tsv column that names sites (``auto``: site or scanner), or None."""
    if bias_fit != "cohort" or requested == "none":
        return None
    if requested == "auto":
        found = [c for c in ("site", "scanner") if c in df.columns and df[c].notna().any()]
        return found[0] if found else None
    if requested not in df.columns:
        raise CohortFitError(f"--site-column {requested!r}: participants.tsv has no such "
                             f"column")
    return requested


# ---------------------------------------------------------------------------------- outputs
def table_columns(table: pd.DataFrame) -> list[str]:
    """Our columns first, then the participants.tsv ones, then the source file."""
    ours = list(TSV_COLUMNS) + list(ADDED)
    extra = [c for c in table.columns if c not in ours and c != "source"]
    return ours + extra + ["source"]


def write_outputs(table: pd.DataFrame, summary: dict, output_dir: Path) -> list[Path]:
    """``group_brainage.tsv`` (n/a for missing), ``.csv`` (empty cells) and ``.json``."""
    columns = table_columns(table)
    cells = [_text_column(table[c]) for c in columns]  # formatted once for both files
    paths = []
    for suffix, sep, na in ((".tsv", "\t", NA), (".csv", ",", "")):
        path = output_dir / f"group_brainage{suffix}"
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter=sep, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(zip(*[[na if v is None else v for v in col] for col in cells]))
        paths.append(path)
    described = {c: text for c, text in COLUMN_DESCRIPTIONS.items() if c in columns}
    paths.append(atomic_write_json(output_dir / "group_brainage.json",
                                   {**summary, "Columns": described}))
    return paths


def _text_column(values: pd.Series) -> list:
    """Cells as text (None for missing): floats with 3 decimals, booleans as true/false."""
    missing = values.isna().to_numpy()
    if pd.api.types.is_bool_dtype(values.dtype):
        text = ["true" if v else "false" for v in values.fillna(False)]
    elif pd.api.types.is_float_dtype(values.dtype):
        text = [f"{v:.3f}" for v in values.to_numpy(dtype=float, na_value=np.nan)]
    else:
        text = [str(v) for v in values.to_numpy(dtype=object)]
    return [None if m else t for m, t in zip(missing, text)]


def run_group(settings) -> int:
    """The group level: 0 written, 66 no participant outputs, 73 outputs not writable,
    1 tables written but the report failed."""
    output_dir = Path(settings.output_dir)
    if not output_dir.is_dir():
        LOGGER.error("output_dir %s does not exist: run the participant level first", output_dir)
        return 66
    df = collect(output_dir)
    if df.empty:
        LOGGER.error("no participant outputs (sub-*/[ses-*/]anat/*_brainage.tsv) under %s: "
                     "run the participant level first", output_dir)
        return 66
    df = join_participants(df, settings.bids_dir)
    missing = missing_participants(df, settings.bids_dir)
    mismatched = model_mismatches(output_dir, df, settings.model_dir)
    if mismatched and not settings.allow_model_mismatch:
        LOGGER.error("%d image(s) were predicted with other models than the ones this group "
                     "run applies (%s), e.g. %s; run the group level with the participant "
                     "level's --model-dir, or pass --allow-model-mismatch",
                     len(mismatched), settings.model_dir or "the bundled models",
                     "; ".join(mismatched[:3]))
        return 64
    try:
        controls = control_rows(df, settings.controls)
        site_column = resolve_site_column(df, settings.site_column, settings.bias_fit)
        table, summary = analyse(df, load_cards(settings.model_dir), settings.bias_fit,
                                 missing, controls, site_column)
    except CohortFitError as exc:
        LOGGER.error("%s", exc)
        return 64
    if mismatched:
        summary["warnings"].append(
            f"{len(mismatched)} image(s) were predicted with other model cards than the ones "
            f"applied here (--allow-model-mismatch): {'; '.join(mismatched[:5])}")
    try:
        written = write_outputs(table, summary, output_dir)
    except OSError as exc:
        LOGGER.error("cannot write the group outputs to %s: %s", output_dir, exc)
        return 73
    code = 0
    if settings.reports:
        try:
            from bids_brainage.reports.group import write_group_report

            written.append(write_group_report(output_dir / "group_report.html", table, summary))
        except Exception:  # the tables are the result; a broken figure must not hide them
            LOGGER.exception("the group report could not be written")
            code = 1
    _log_summary(summary, written)
    return code


def _log_summary(summary: dict, written: list[Path]) -> None:
    counts = summary["counts"]
    LOGGER.info("group level: %d participants, %d images, models %s",
                counts["participants"], counts["images"], ", ".join(summary["models"]) or "none")
    for entry in summary["failed"][:LOG_LIMIT]:
        LOGGER.warning("%s %s: %s", entry["image"], entry["status"], entry["message"])
    if len(summary["failed"]) > LOG_LIMIT:
        LOGGER.warning("... and %d more failed or unreadable images (status column of "
                       "group_brainage.tsv)", len(summary["failed"]) - LOG_LIMIT)
    if summary["without_age"]:
        LOGGER.warning("%d images without an age (kept in the table, left out of the metrics)",
                       len(summary["without_age"]))
    if summary["missing"]:
        shown = ", ".join(summary["missing"][:LOG_LIMIT])
        more = len(summary["missing"]) - LOG_LIMIT
        LOGGER.warning("%d participants of the dataset have no output: %s%s",
                       len(summary["missing"]), shown, f" and {more} more" if more > 0 else "")
    for name, entry in summary["models"].items():
        raw = entry["overall"]["raw"]
        LOGGER.info("%s: N=%d MAE=%s r=%s", name, raw["N"], raw["MAE"], raw["pearson_r"]["r"])
    for warning in summary["warnings"]:
        LOGGER.warning("%s", warning)
    for path in written:
        LOGGER.info("wrote %s", path)
