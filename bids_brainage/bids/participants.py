"""``participants.tsv`` and ``sessions.tsv``: the ages and the other columns of a dataset."""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import pandas as pd

from bids_brainage.io import scan_dir

LOG = logging.getLogger("bids_brainage.group")
NA = "n/a"


def finite_float(value) -> float | None:
    """A finite float, or None for anything else (n/a, empty, nan, text).

    >>> finite_float("24.9"), finite_float("n/a"), finite_float(float("nan"))
    (24.9, None, None)
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_participants(bids_dir: Path) -> dict[str, dict[str, str]]:
    """``participants.tsv`` as ``{participant_id: {column: value}}`` (empty when absent)."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {row["participant_id"]: row for row in rows if row.get("participant_id")}


def participant_age(row: dict[str, str] | None) -> float | None:
    """The age of a participants.tsv row in years, or None when absent or not a number."""
    if not row:
        return None
    value = row.get("age", "n/a")
    try:
        age = float(value)
    except (TypeError, ValueError):
        return None
    return age if age == age else None


def participants_table(bids_dir: Path | str | None) -> pd.DataFrame:
    """``participants.tsv`` as strings (``age`` numeric), indexed by participant_id."""
    path = Path(bids_dir) / "participants.tsv" if bids_dir else None
    if path is None or not path.is_file():
        return pd.DataFrame(index=pd.Index([], name="participant_id"))
    table = pd.read_csv(path, sep="\t", dtype=str, na_values=[NA], keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    if "participant_id" not in table.columns:
        LOG.warning("%s has no participant_id column; ignored", path)
        return pd.DataFrame(index=pd.Index([], name="participant_id"))
    if "age" in table.columns:
        numeric = pd.to_numeric(table["age"], errors="coerce")
        odd = sorted(set(table.loc[numeric.isna() & table["age"].notna(), "age"]))
        if odd:  # e.g. "89+", which BIDS allows for de-identification
            LOG.warning("%s: ages %s are not numbers; treated as unknown", path, odd[:5])
        table["age"] = numeric
    return table.drop_duplicates("participant_id").set_index("participant_id")


def read_session_ages(bids_dir: Path | str | None) -> dict[tuple[str, str], float]:
    """Per-session ages from ``sub-*/sub-*_sessions.tsv`` files that have an age column."""
    ages = {}
    for sub in scan_dir(Path(bids_dir), dirs=True, prefix="sub-") if bids_dir else []:
        path = sub / f"{sub.name}_sessions.tsv"
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                age = finite_float(row.get("age"))
                if row.get("session_id") and age is not None:
                    ages[(sub.name, row["session_id"])] = age
    return ages
