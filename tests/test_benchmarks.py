"""The benchmark scripts that read the bundled cards still run on them (a card change once
left ``benchmarks/robustness.py`` reading a key the cards no longer have)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_robustness_from_cards_prints_the_gate():
    from bids_brainage.models.registry import load_cards

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "robustness.py"),
                          "--from-cards"], capture_output=True, text=True, check=True).stdout
    gated = {n: c["robustness"]["mean_abs_change_years"] for n, c in load_cards(None).items()
             if (c.get("robustness") or {}).get("mean_abs_change_years")}
    assert gated, "the bundled cards carry the gate's table"
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    for name, changes in gated.items():
        assert f"{changes['tight']:.2f}" in rows[name]


def test_robustness_flag_summary():
    bench = _load("robustness")

    def row(age, flag="ok"):
        return {"ensemble": {"predicted_age": str(age), "flag": flag}}

    rows = {"sub-Aorig": row(40), "sub-Atight": row(46, "poor_skull_strip"),
            "sub-Borig": row(60), "sub-Btight": row(61, "age_outside_training"),
            "sub-Aaniso": row(42)}
    out = bench.flag_summary(rows, ["A", "B"], ["tight", "aniso"])
    assert out["flagged_per_variant"] == {"tight": 1, "aniso": 0}
    assert out["reasons_per_variant"] == {"orig": {}, "tight": {"poor_skull_strip": 1},
                                          "aniso": {}}
    assert (out["n_flagged"], out["mean_change_flagged"]) == (1, 6.0)
    assert (out["n_unflagged"], out["mean_change_unflagged"]) == (2, 1.5)


def test_robustness_picks_participants_spread_over_the_ages(tmp_path):
    bench = _load("robustness")
    ages = {"sub-A": 20, "sub-B": 50, "sub-C": 80, "sub-D": 35, "sub-E": 65}
    (tmp_path / "participants.tsv").write_text(
        "participant_id\tage\n" + "".join(f"{p}\t{a}\n" for p, a in ages.items()))
    for pid in list(ages)[:-1]:  # sub-E has no folder: not a candidate
        (tmp_path / pid).mkdir()
    assert bench.spread_labels(tmp_path, 3) == ["A", "B", "C"]
