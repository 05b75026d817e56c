"""The example's predictions per model, pinned to their measured values.

``tests/data/expected_predictions.tsv`` holds them, with the sha256 of the models.json they
were measured with. When the models change, regenerate it in the same commit:

    bids_brainage examples/ds-ixi3 OUT participant -w WORK --nprocs 2
    python tests/test_pinned_predictions.py OUT > tests/data/expected_predictions.tsv

A prediction that moves by more than the tolerance with the same models is a regression
somewhere in preprocessing (or a library update that changed the numbers): look before
regenerating.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

EXPECTED = Path(__file__).parent / "data" / "expected_predictions.tsv"
TOLERANCE = 0.01  # years; the TSV rounds to 0.001, runs on one machine agree exactly


def read_expected(path: Path = EXPECTED) -> tuple[str, dict[tuple[str, str], float]]:
    lines = path.read_text().splitlines()
    sha = next(line.split()[-1] for line in lines if line.startswith("# models.json sha256"))
    rows = csv.DictReader([line for line in lines if not line.startswith("#")], delimiter="\t")
    return sha, {(r["participant_id"], r["model"]): float(r["predicted_age"]) for r in rows}


def measured(out: Path) -> dict[tuple[str, str], float]:
    found = {}
    for tsv in sorted(Path(out).glob("sub-*/anat/*_brainage.tsv")):
        with tsv.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                if row["status"] == "ok":
                    found[(row["participant_id"], row["model"])] = float(row["predicted_age"])
    return found


@pytest.mark.slow
def test_example_predictions_equal_the_pinned_values(example_run):
    from bids_brainage.models.registry import cards_sha256

    code, out, _ = example_run
    assert code == 0
    sha, expected = read_expected()
    assert sha == cards_sha256(), (
        "the bundled models changed since tests/data/expected_predictions.tsv was made: "
        "regenerate it in the same commit (see this file's docstring)")
    got = measured(out)
    assert sorted(got) == sorted(expected)
    moved = {key: (got[key], value) for key, value in expected.items()
             if abs(got[key] - value) > TOLERANCE}
    assert not moved, f"predictions moved (got, pinned): {moved}"


if __name__ == "__main__":  # regenerate: python tests/test_pinned_predictions.py OUT
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bids_brainage.models.registry import cards_sha256

    print(f"# models.json sha256 {cards_sha256()}")
    print("participant_id\tmodel\tpredicted_age")
    for (participant, model), age in sorted(measured(Path(sys.argv[1])).items()):
        print(f"{participant}\t{model}\t{age}")
