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


def read_table_text(path: Path) -> str | None:
    """The text of a TSV as a user's editor saved it: UTF-8 with or without a byte-order
    mark, else Latin-1 (said once); None, with a warning, when it cannot be read at all."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        LOG.warning("%s cannot be read (%s); treated as absent", path, exc.strerror or exc)
        return None
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark, even before Latin-1 text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        LOG.warning("%s is not UTF-8 (byte %d); read as Latin-1", path, exc.start)
        return raw.decode("latin-1")


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a TSV: any encoding :func:`read_table_text` reads, any line ending
    (LF, CRLF, CR), names and values stripped, short rows padded with ``n/a``, extra cells
    dropped; ``([], [])`` for an absent or unparsable file (with a warning)."""
    text = read_table_text(path) if Path(path).is_file() else None
    if not text:
        return [], []
    try:
        lines = list(csv.reader(text.splitlines(), delimiter="\t"))
    except csv.Error as exc:
        LOG.warning("%s cannot be parsed (%s); ignored", path, exc)
        return [], []
    if not lines:
        return [], []
    header = [name.strip() for name in lines[0]]
    rows = []
    for line in lines[1:]:
        if not any(cell.strip() for cell in line):
            continue
        cells = [cell.strip() for cell in line] + [NA] * (len(header) - len(line))
        rows.append(dict(zip(header, cells)))
    return header, rows


def read_participants(bids_dir: Path) -> dict[str, dict[str, str]]:
    """``participants.tsv`` as ``{participant_id: {column: value}}`` (empty when absent).

    The first row of a participant listed twice is used, as by :func:`participants_table`.
    """
    path = Path(bids_dir) / "participants.tsv"
    header, rows = read_table(path)
    if header and "participant_id" not in header:
        LOG.warning("%s has no participant_id column; ignored", path)
        return {}
    table = {}
    for row in rows:
        pid = row.get("participant_id")
        if pid and pid in table:
            LOG.warning("%s lists %s twice; the first row is used", path, pid)
        elif pid and pid != NA:
            table[pid] = row
    return table


def participant_age(row: dict[str, str] | None) -> float | None:
    """The age of a participants.tsv row in years, or None when absent or not a number."""
    if not row:
        return None
    return finite_float(row.get("age", NA))


def participants_table(bids_dir: Path | str | None) -> pd.DataFrame:
    """``participants.tsv`` as strings (``age`` numeric), indexed by participant_id."""
    empty = pd.DataFrame(index=pd.Index([], name="participant_id"))
    if not bids_dir:
        return empty
    path = Path(bids_dir) / "participants.tsv"
    rows = read_participants(bids_dir)  # the same reading, warnings and duplicates rule
    if not rows:
        return empty
    header = list(next(iter(rows.values())))  # every row has every column (padded)
    table = pd.DataFrame(list(rows.values()), columns=header, dtype=object)
    table = table.replace({NA: None}).astype(object)
    if "age" in table.columns:
        ages = [finite_float(v) for v in table["age"]]
        odd = sorted({str(v) for v, a in zip(table["age"], ages) if a is None and v})
        if odd:  # e.g. "89+", which BIDS allows for de-identification
            LOG.warning("%s: ages %s are not numbers; treated as unknown", path, odd[:5])
        table["age"] = pd.Series(ages, index=table.index, dtype=float)
    return table.set_index("participant_id")


def read_session_ages(bids_dir: Path | str | None) -> dict[tuple[str, str], float]:
    """Per-session ages from ``sub-*/sub-*_sessions.tsv`` files that have an age column."""
    ages = {}
    for sub in scan_dir(Path(bids_dir), dirs=True, prefix="sub-") if bids_dir else []:
        path = sub / f"{sub.name}_sessions.tsv"
        if not path.is_file():
            continue
        for row in read_table(path)[1]:
            age = finite_float(row.get("age"))
            if row.get("session_id") and age is not None:
                ages[(sub.name, row["session_id"])] = age
    return ages
