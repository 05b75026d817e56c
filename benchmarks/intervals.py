"""Interval methods compared on the training procedure's own nested cross-validation.

Runs ``bids_brainage-train``'s repeated nested CV (the defaults, from participant-level
derivatives) and records, for every outer fold, the inner out-of-fold predictions that
calibrate its interval; then calibrates each method there, applies it to the untouched outer
fold and prints coverage and mean half-width overall and per decade of true age. With
``--external-out`` (participant-level outputs of a labelled dataset, e.g. ds000011 run with
the bundled models) it also applies the bundled ensemble card's interval, variants of it on
the card's own calibration pairs, and other cards' intervals to those predictions. Nothing
is fitted on the external set.

    python benchmarks/intervals.py --derivatives POOL_DERIVS --record nested.pkl
    python benchmarks/intervals.py --from-record nested.pkl --random-seed 7 ...
    python benchmarks/intervals.py --from-record nested.pkl \\
        --external-out DS11_OUT --external ../shared/data/ds000011-heads \\
        --compare-cards previous/models.json

(about 12 min on 2 cores for a 5 x 5 run with the bundled three models; ``--random-seed``
gives another split.)
"""
from __future__ import annotations

import argparse
import csv
import json
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability import ages_of  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
POOL = ROOT.parent / "shared" / "data" / "ixi-hh-2mm"
SEED_ROWS = ROOT.parent / "shared" / "data" / "seed-histograms" / "rep2.json"
CARDS = ROOT / "bids_brainage" / "data" / "models" / "models.json"


def record_nested(argv: list[str], out: Path) -> None:
    """Run the training command, keeping each outer fit's inner out-of-fold predictions."""
    from bids_brainage.cli.train import main as train
    from bids_brainage.training import crossval
    from bids_brainage.training import train as training

    fits, fit, nested = [], crossval.fit_ensemble, crossval.nested_cv

    def recording_fit(members, ages, rows=None, groups=None, **kw):
        fitted = fit(members, ages, rows, groups, **kw)
        fits.append({"rows": None if rows is None else np.asarray(rows),
                     "oof": {k: np.asarray(v) for k, v in fitted.oof.items()},
                     "ages": np.asarray(fitted.ages), "weights": dict(fitted.weights)})
        return fitted

    def recording_nested(*a, **kw):
        result = nested(*a, **kw)
        with open(out, "wb") as handle:
            pickle.dump({"nested": result, "record": fits}, handle)
        return result

    crossval.fit_ensemble = training.fit_ensemble = recording_fit
    crossval.nested_cv = training.nested_cv = recording_nested
    train(argv)


def floored(low, high, least: float):
    """The interval widened to a half-width of at least ``least`` around its centre."""
    mid, half = (low + high) / 2, np.maximum((high - low) / 2, least)
    return mid - half, mid + half


def methods() -> dict:
    """name -> calibrate(predicted, ages, spread) returning an ``apply(predicted, spread)``."""
    from bids_brainage.stats import intervals as iv

    def card_method(calibrate):
        def fitted(p, a, s):
            card = calibrate(p, a, s)
            return lambda q, t: iv.apply_interval(card, q, t)
        return fitted

    def local(window, floor=0.0):
        def fitted(p, a, s):
            card = iv.calibrate_interval(p, a)
            card["local"]["window"] = window
            least = floor * iv.conformal_halfwidth(card["local"]["deviation"])
            return lambda q, t: floored(*iv.apply_interval(card, q), least)
        return fitted

    return {"normalised (previous)": card_method(iv.calibrate_normalised),
            "local 8 y (bundled)": card_method(iv.calibrate_interval),
            "local 8 y, floor 0.9": local(8.0, 0.9), "local 15 y": local(15.0),
            "local 20 y": local(20.0)}


def pool_table(record: dict) -> list[str]:
    from bids_brainage.training.crossval import coverage_by_decade, member_spread

    nested, fits = record["nested"], record["record"]
    ages = nested["ages"]
    n, repeats = len(ages), nested["predictions"]["ensemble"].shape[0]
    # the nested CV's outer fits are the last ones recorded before it returned: one per
    # outer fold, as many as the weights it chose
    outer = fits[-len(nested["weights"]):]
    per_repeat = len(outer) // repeats
    lines = []
    for name, calibrate in methods().items():
        low, high = (np.full((repeats, n), np.nan) for _ in range(2))
        for i, fit in enumerate(outer):
            r, fold = i // per_repeat, np.setdiff1d(np.arange(n), fit["rows"])
            apply = calibrate(fit["oof"]["ensemble"], fit["ages"],
                              member_spread({k: fit["oof"][k] for k in fit["weights"]}))
            low[r, fold], high[r, fold] = apply(nested["predictions"]["ensemble"][r, fold],
                                                nested["spread"][r, fold])
        inside = (ages >= low) & (ages <= high)
        decades = coverage_by_decade({"ages": ages, "member_low": {name: low},
                                      "member_high": {name: high}}, name)
        lines.append(f"{name:24s} {inside.mean():6.1%} ±{np.mean(high - low) / 2:5.2f}   "
                     + "  ".join(f"{k} {d['coverage']:4.0%} ±{d['mean_halfwidth']:4.1f}"
                                 for k, d in decades.items()))
    return lines


def external_table(out: Path, bids: Path, cards: list[Path]) -> list[str]:
    """The bundled ensemble card's interval, its window and floor variants (on the card's
    own calibration pairs) and each of ``cards``' ensemble intervals, on an external run."""
    from bids_brainage.stats import intervals as iv

    ages = ages_of(bids)
    rows: dict[str, dict] = {}
    for tsv in sorted(out.glob("sub-*/**/*_brainage.tsv")):
        with tsv.open(newline="") as handle:
            for r in csv.DictReader(handle, delimiter="\t"):
                if r["status"] == "ok":
                    rows.setdefault(r["participant_id"], {})[r["model"]] = r
    pred = np.array([float(r["ensemble"]["predicted_age"]) for r in rows.values()])
    age = np.array([ages[p] for p in rows])

    def ensemble(path: Path) -> dict:
        return next(c for c in json.loads(path.read_text())["models"] if c["name"] == "ensemble")

    def spread(card: dict) -> np.ndarray:
        # as the app: every member the card names, weighted or not (models.predict)
        return np.array([np.std([float(r[m]["predicted_age"]) for m in card["members"]])
                         for r in rows.values()])

    lines = [f"external: {len(age)} images, ages {age.min():.0f}-{age.max():.0f}"]

    def line(name, lo, hi):
        inside = (age >= lo) & (age <= hi)
        lines.append(f"{name:24s} {inside.mean():6.1%} ±{np.mean(hi - lo) / 2:5.2f}")

    bundled = ensemble(CARDS)
    for window, floor in ((None, 0.0), (None, 0.9), (15.0, 0.0), (20.0, 0.0)):
        interval = json.loads(json.dumps(bundled["interval"]))
        if window is not None:
            interval["local"]["window"] = window
        least = floor * iv.conformal_halfwidth(interval["local"]["deviation"])
        line(f"local {interval['local']['window']:g} y" + (f", floor {floor}" if floor else "")
             + (" (bundled)" if window is None and not floor else ""),
             *floored(*iv.apply_interval(interval, pred), least))
    for path in cards:
        card = ensemble(path)
        lo, hi = iv.apply_interval(card["interval"], pred, spread(card))
        line(f"{path}", lo, hi)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--derivatives", type=Path, default=None)
    p.add_argument("--work", type=Path, default=Path("intervals_work"))
    p.add_argument("--random-seed", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--record", type=Path, default=Path("nested.pkl"))
    p.add_argument("--from-record", type=Path, default=None)
    p.add_argument("--external-out", type=Path, default=None)
    p.add_argument("--external", type=Path, default=None, help="its BIDS folder (the ages)")
    p.add_argument("--compare-cards", type=Path, nargs="*", default=[],
                   help="other models.json whose ensemble interval is applied to the external "
                        "run too (e.g. the previous release's)")
    args = p.parse_args(argv)
    path = args.from_record
    if path is None:
        if args.derivatives is None:
            p.error("--derivatives (or --from-record) is needed")
        train_argv = [str(POOL), str(args.work / "models"), "--derivatives",
                      str(args.derivatives), "-w", str(args.work), "--models",
                      "rf,tissue,rf_sites", "--defaults", "tissue,rf_sites", "--repeats",
                      str(args.repeats), "--seed-rows", str(SEED_ROWS), "--nprocs", "2"]
        if args.random_seed is not None:
            train_argv += ["--random-seed", str(args.random_seed)]
        record_nested(train_argv, args.record)
        path = args.record
    with open(path, "rb") as handle:
        record = pickle.load(handle)
    print("ensemble interval, nested CV: coverage, mean half-width; by decade of true age")
    print("\n".join(pool_table(record)))
    if args.external_out:
        if args.external is None:
            p.error("--external-out needs --external (the BIDS folder with the ages)")
        print("\n".join(external_table(args.external_out, args.external,
                                        args.compare_cards)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
