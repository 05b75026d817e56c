"""Group level: collecting participant outputs, joining participants.tsv, metrics, outputs."""
from __future__ import annotations

import doctest
import json
import logging
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from bids_brainage.stats import cohort as cohort_stats
from bids_brainage.levels import group
from bids_brainage.config import Settings

try:
    from tests import _report_data as data
except ImportError:  # tests/ run as a rootdir without a package
    import _report_data as data

CARDS = {
    "rf": {"name": "rf", "training": {"age_min": 20, "age_max": 60},
           "bias_correction": {"slope": 0.8, "intercept": 9.0, "fitted_on": "validation"}},
    "resnet34": {"name": "resnet34", "training": {"age_min": 20, "age_max": 82}},
}


@pytest.fixture
def cohort(tmp_path):
    """The example dataset plus: two sessions, a failed image, a missing age, a stray file.

    sub-IXI095: two sessions; sub-IXI161: failed; sub-IXI354: ok; sub-IXI777: in
    participants.tsv without an age; sub-IXI888: in participants.tsv with no output at all.
    """
    bids = tmp_path / "bids"
    shutil.copytree(data.EXAMPLE, bids, ignore=shutil.ignore_patterns("*.nii.gz"))
    with open(bids / "participants.tsv", "a") as handle:
        handle.write("sub-IXI777\tn/a\tM\tGuys\nsub-IXI888\t70.0\tF\tHH\n")
    ages = data.participant_ages()
    out = tmp_path / "out"
    for session, shift in (("ses-1", 0.0), ("ses-2", 2.0)):
        data.write_tsv(out, data.prediction_rows("sub-IXI095", ages["sub-IXI095"] + shift,
                                                 session=session))
    data.write_tsv(out, data.prediction_rows("sub-IXI161", ages["sub-IXI161"],
                                             failed="skull strip: empty mask"))
    data.write_tsv(out, data.prediction_rows("sub-IXI354", ages["sub-IXI354"],
                                             models=(("rf", 4.0), ("resnet34", -3.0))))
    data.write_tsv(out, data.prediction_rows("sub-IXI777", None))
    # a participant job still writing: its temporary file must be ignored
    (out / "sub-IXI354" / "anat" / ".sub-IXI354_run-2_brainage.tsv.ab12.tmp.tsv").write_text(
        "participant_id\tmod")
    return bids, out


def _settings(bids, out, **kwargs) -> Settings:
    return Settings(bids_dir=bids, output_dir=out, analysis_level="group",
                    work_dir=out.parent / "work", **kwargs)


def _analyse(bids, out, bias_fit="model"):
    df = group.join_participants(group.collect(out), bids)
    return group.analyse(df, CARDS, bias_fit, group.missing_participants(df, bids))


def test_doctests():
    assert doctest.testmod(cohort_stats).failed == 0
    assert doctest.testmod(group).failed == 0


def test_cohort_gives_the_right_rows(cohort):
    bids, out = cohort
    table, summary = _analyse(bids, out)
    images = table.groupby(["participant_id", "session_id", "run"], dropna=False).size()
    assert len(images) == 5 and len(table) == 9  # 4 ok images x 2 models + 1 failed row
    ixi095 = table[table["participant_id"] == "sub-IXI095"]
    assert sorted(ixi095["session_id"].unique()) == ["ses-1", "ses-2"]
    # ages come from participants.tsv: both sessions get 24.9 (no sessions.tsv here)
    assert ixi095["age"].tolist() == [24.9] * 4
    failed = table[table["status"] == "failed"]
    assert failed["participant_id"].tolist() == ["sub-IXI161"]
    assert failed["message"].tolist() == ["skull strip: empty mask"]
    no_age = table[table["participant_id"] == "sub-IXI777"]
    assert len(no_age) == 2 and no_age["age"].isna().all()
    assert no_age["predicted_age"].notna().all()  # predictions kept
    assert set(table["site"].dropna()) == {"HH", "Guys"} and "sex" in table.columns
    assert summary["failed"][0]["image"] == "sub-IXI161"
    assert summary["without_age"] == ["sub-IXI777"]
    assert summary["missing"] == ["sub-IXI888"]
    assert summary["counts"] == {"participants": 4, "images": 5, "images_failed": 1,
                                 "images_unreadable": 0, "images_without_prediction": 0,
                                 "images_without_age": 1, "participants_missing": 1}
    # metrics: 3 images with an age per model (IXI095 x2, IXI354)
    assert summary["models"]["rf"]["overall"]["N"] == 3
    assert summary["models"]["rf"]["overall"]["n_participants"] == 2


def test_metrics_equal_scipy_and_scikit_learn_on_the_same_numbers(cohort):
    bids, out = cohort
    table, summary = _analyse(bids, out)
    for name, entry in summary["models"].items():
        rows = table[(table["model"] == name) & table["age"].notna()]
        age, predicted = rows["age"].to_numpy(), rows["predicted_age"].to_numpy()
        raw = entry["overall"]["raw"]
        assert raw["MAE"] == pytest.approx(skm.mean_absolute_error(age, predicted), rel=1e-5)
        assert raw["RMSE"] == pytest.approx(np.sqrt(skm.mean_squared_error(age, predicted)),
                                            rel=1e-5)
        assert raw["R2"] == pytest.approx(skm.r2_score(age, predicted), rel=1e-5)
        reference = stats.pearsonr(age, predicted)
        assert raw["pearson_r"]["r"] == pytest.approx(reference.statistic, rel=1e-5)
        assert raw["pearson_r"]["p"] == pytest.approx(reference.pvalue, rel=1e-5)
        assert raw["mean_gap"] == pytest.approx(np.mean(predicted - age), rel=1e-5)


def test_bias_correction_from_the_model_card_or_refitted_loudly(cohort, caplog):
    bids, out = cohort
    table, summary = _analyse(bids, out)
    rf = table[(table["model"] == "rf") & table["predicted_age"].notna()]
    assert np.allclose(rf["predicted_age_corrected"], (rf["predicted_age"] - 9.0) / 0.8)
    assert summary["models"]["rf"]["bias_correction"]["source"] == "model card"
    assert "corrected" in summary["models"]["rf"]["overall"]
    # no bias_correction in the resnet34 card: no correction, and it says so
    assert "corrected" not in summary["models"]["resnet34"]["overall"]
    assert any("resnet34" in w and "no bias correction" in w for w in summary["warnings"])

    caplog.set_level(logging.WARNING, logger="bids_brainage.group")
    # one fit for the whole cohort (its 'site' column would ask for one per site, and its
    # sites have too few participants: test_a_site_with_too_few_controls_is_refused)
    code = group.run_group(_settings(bids, out, bias_fit="cohort", site_column="none",
                                     reports=False))
    assert code == 0
    saved = json.loads((out / "group_brainage.json").read_text())
    assert saved["bias_fit"] == "cohort"
    assert saved["models"]["resnet34"]["bias_correction"]["source"] == "cohort"
    assert any("COHORT REFIT" in w for w in saved["warnings"])
    assert "COHORT REFIT" in caplog.text


def test_cohort_refit_removes_the_age_dependence_of_the_gap(tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "out"
    for i, age in enumerate(rng.uniform(20, 85, 60)):
        predicted = 0.65 * age + 18 + rng.normal(0, 4)
        data.write_tsv(out, data.prediction_rows(f"sub-{i:03d}", float(age),
                                                 models=(("rf", predicted - age),)))
    table, summary = group.analyse(group.join_participants(group.collect(out), None), {},
                                   "cohort")
    entry = summary["models"]["rf"]["overall"]
    assert entry["raw"]["r_gap_age"] < -0.5
    assert abs(entry["corrected"]["r_gap_age"]) < 1e-5
    assert abs(stats.pearsonr(table["age"], table["brain_age_gap_corrected"]).statistic) < 1e-6


def test_out_of_training_range_is_flagged_not_hidden(cohort):
    bids, out = cohort
    table, summary = _analyse(bids, out)
    rf = table[(table["model"] == "rf") & table["age"].notna()]
    flagged = rf[rf["out_of_training_range"].fillna(False).astype(bool)]
    assert flagged["participant_id"].tolist() == []  # 24.9, 26.9, 45.6: all inside 20-60
    table.loc[table["participant_id"] == "sub-IXI354", "age"] = 75.0
    table, summary = group.analyse(table.drop(columns=list(group.ADDED)), CARDS, "model")
    assert summary["models"]["rf"]["out_of_training_range"] == ["sub-IXI354"]
    assert summary["models"]["resnet34"]["out_of_training_range"] == []
    assert summary["models"]["rf"]["overall"]["N"] == 3  # still in the metrics
    assert summary["models"]["rf"]["within_training_range"]["N"] == 2


def test_groupings_per_site_and_sex_only_when_present(cohort, tmp_path):
    bids, out = cohort
    _, summary = _analyse(bids, out)
    assert set(summary["models"]["rf"]["by_site"]) == {"HH"}
    assert set(summary["models"]["rf"]["by_sex"]) == {"F", "M"}
    _, bare = group.analyse(group.join_participants(group.collect(out), tmp_path / "none"),
                            CARDS, "model")
    assert "by_site" not in bare["models"]["rf"] and "by_sex" not in bare["models"]["rf"]


def test_session_ages_come_from_sessions_tsv(cohort):
    bids, out = cohort
    (bids / "sub-IXI095").mkdir(exist_ok=True)
    (bids / "sub-IXI095" / "sub-IXI095_sessions.tsv").write_text(
        "session_id\tage\nses-1\t24.9\nses-2\t26.9\n")
    table, _ = _analyse(bids, out)
    ages = table[table["participant_id"] == "sub-IXI095"].groupby("session_id")["age"].first()
    assert ages.to_dict() == {"ses-1": 24.9, "ses-2": 26.9}


def test_unreadable_and_vanishing_files_are_listed_not_fatal(cohort, monkeypatch, caplog):
    bids, out = cohort
    broken = out / "sub-IXI354" / "anat" / "sub-IXI354_run-3_brainage.tsv"
    broken.write_text("participant_id\tmodel\tpredicted_age\tstatus\nsub-IXI354\trf\n")
    vanishing = out / "sub-IXI095" / "ses-1" / "anat" / "sub-IXI095_ses-1_brainage.tsv"
    real_reader = group.read_prediction_file

    def flaky(path):
        if path == vanishing:
            raise FileNotFoundError(path)
        return real_reader(path)

    monkeypatch.setattr(group, "read_prediction_file", flaky)
    caplog.set_level(logging.WARNING, logger="bids_brainage.group")
    table, summary = _analyse(bids, out)
    bad = table[table["status"] == "unreadable"]
    assert bad[["participant_id", "run"]].values.tolist() == [["sub-IXI354", 3]]
    assert "line 2 has 2 fields" in bad["message"].iloc[0]
    assert any(f["status"] == "unreadable" for f in summary["failed"])
    assert "ses-1" not in set(table["session_id"].dropna())
    assert "vanished" in caplog.text and "unreadable" in caplog.text


def test_an_output_without_models_is_listed_as_without_prediction(cohort):
    bids, out = cohort
    folder = out / "sub-IXI888" / "anat"
    folder.mkdir(parents=True)
    (folder / "sub-IXI888_brainage.tsv").write_text("\t".join(group.TSV_COLUMNS) + "\n")
    table, summary = _analyse(bids, out)
    row = table[table["participant_id"] == "sub-IXI888"]
    assert row["status"].tolist() == ["no_prediction"] and row["age"].tolist() == [70.0]
    assert summary["counts"]["images_without_prediction"] == 1
    assert summary["missing"] == []
    assert "sub-IXI888" in [entry["image"] for entry in summary["failed"]]


def test_run_group_writes_tables_json_and_is_idempotent(cohort, caplog):
    bids, out = cohort
    caplog.set_level(logging.INFO, logger="bids_brainage.group")
    settings = _settings(bids, out, reports=True)
    assert group.run_group(settings) == 0
    names = ["group_brainage.tsv", "group_brainage.csv", "group_brainage.json",
             "group_report.html"]
    first = {name: (out / name).read_bytes() for name in names}
    assert group.run_group(settings) == 0
    assert {name: (out / name).read_bytes() for name in names} == first
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    tsv = pd.read_csv(out / "group_brainage.tsv", sep="\t", na_values="n/a",
                      keep_default_na=False)
    csv = pd.read_csv(out / "group_brainage.csv")
    pd.testing.assert_frame_equal(tsv, csv, check_dtype=False)
    assert list(tsv.columns[:len(group.TSV_COLUMNS)]) == list(group.TSV_COLUMNS)
    assert len(tsv) == 9 and "out_of_training_range" in tsv.columns
    def no_nan(constant):
        raise AssertionError(f"{constant} is not valid JSON")

    saved = json.loads((out / "group_brainage.json").read_text(), parse_constant=no_nan)
    assert saved["Columns"]["brain_age_gap_corrected"] and saved["models"]["rf"]["overall"]
    assert "4 participants, 5 images" in caplog.text
    assert "sub-IXI161 failed: skull strip: empty mask" in caplog.text
    assert "sub-IXI888" in caplog.text and "1 images without an age" in caplog.text


def test_group_level_while_participant_jobs_are_writing(cohort):
    """Participants written (temp name, then rename) during collection: never half-read."""
    bids, out = cohort
    stop = threading.Event()

    def participant_jobs():
        number = 0
        while not stop.is_set() and number < 2000:
            rows = data.prediction_rows(f"sub-W{number:04d}", 40.0)
            data.write_tsv(out, rows)
            number += 1

    writer = threading.Thread(target=participant_jobs)
    writer.start()
    try:
        time.sleep(0.05)
        tables = [group.collect(out) for _ in range(3)]
    finally:
        stop.set()
        writer.join()
    for table in tables:
        assert set(table["status"]) == {"ok", "failed"}
        assert table.groupby("participant_id").size().drop(["sub-IXI161"]).ge(2).all()
    assert len(tables[-1]) > len(tables[0]) or len(tables[0]) > 9  # it did run concurrently


def test_run_group_without_participant_outputs_exits_66(tmp_path, caplog):
    (tmp_path / "out").mkdir()
    assert group.run_group(_settings(tmp_path, tmp_path / "out")) == 66
    assert group.run_group(_settings(tmp_path, tmp_path / "absent")) == 66
    assert "run the participant level first" in caplog.text


def test_cards_are_read_from_a_model_directory(tmp_path):
    (tmp_path / "models.json").write_text(json.dumps({"models": [CARDS["rf"]]}))
    cards = group.load_cards(tmp_path)
    assert group.training_range(cards["rf"]) == (20.0, 60.0)
    assert group.load_cards(tmp_path / "nothing") == {}  # no card: features off, not a crash


# ------------------------------------------------------------------ per-site bias correction
def _two_site_cohort(tmp_path, offset=6.0, n_controls=(30, 12), seed=3):
    """Site A and site B (predictions +``offset`` years), controls and patients (+3 years),
    predictions = card line (0.8 age + 9) + site offset + patient effect + noise."""
    rng = np.random.default_rng(seed)
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    lines = ["participant_id\tage\tsite\tgroup"]
    truth = {}
    number = 0
    for site, shift, controls in (("A", 0.0, n_controls[0]), ("B", offset, n_controls[1])):
        for kind, count in (("control", controls), ("patient", 15)):
            for _ in range(count):
                number += 1
                pid = f"sub-{number:03d}"
                age = float(rng.uniform(20, 80))
                effect = 3.0 if kind == "patient" else 0.0
                predicted = 0.8 * age + 9.0 + shift + 0.8 * effect + rng.normal(0, 1.5)
                lines.append(f"{pid}\t{age:.2f}\t{site}\t{kind}")
                truth[pid] = (site, kind)
                data.write_tsv(out, [{"participant_id": pid, "session_id": "n/a", "run": "n/a",
                                      "model": "rf", "predicted_age": f"{predicted:.3f}",
                                      "interval_low": "n/a", "interval_high": "n/a",
                                      "age": f"{age:.2f}", "brain_age_gap": "n/a",
                                      "status": "ok", "message": "n/a"}])
    (bids / "participants.tsv").write_text("\n".join(lines) + "\n")
    return bids, out, truth


def test_per_site_correction_recovers_a_known_offset(tmp_path):
    bids, out, truth = _two_site_cohort(tmp_path)
    df = group.join_participants(group.collect(out), bids)
    controls = group.control_rows(df, ["group=control"])
    site = group.resolve_site_column(df, "auto", "cohort")
    table, summary = group.analyse(df, CARDS, "cohort", (), controls, site)
    fits = summary["models"]["rf"]["bias_correction"]["by_site"]
    assert fits["A"]["method"] == "line" and fits["A"]["n_controls"] == 30
    assert fits["B"]["method"] == "offset" and fits["B"]["n_controls"] == 12
    # site B's offset in corrected years is 6 / 0.8 = 7.5: recovered within 0.5 y
    assert abs(fits["B"]["offset"] - 6.0 / 0.8) < 0.5
    gaps = table.set_index("participant_id")["brain_age_gap_corrected"]
    for site_name in ("A", "B"):
        controls_gap = [gaps[p] for p, (s, k) in truth.items() if s == site_name and k == "control"]
        patients_gap = [gaps[p] for p, (s, k) in truth.items() if s == site_name and k == "patient"]
        assert abs(np.mean(controls_gap)) < 0.6
        # the patients' effect (3 y) survives the correction at both sites
        assert abs(np.mean(patients_gap) - 3.0) < 1.2


def test_a_site_with_too_few_controls_is_refused(tmp_path, caplog):
    bids, out, _ = _two_site_cohort(tmp_path, n_controls=(30, 5))
    settings = _settings(bids, out, bias_fit="cohort", controls=("group=control",))
    with caplog.at_level(logging.ERROR, logger="bids_brainage.group"):
        assert group.run_group(settings) == 64
    assert "site(s) B (5)" in caplog.text and "at least 8" in caplog.text
    assert not (out / "group_brainage.tsv").exists()


def test_group_refuses_predictions_made_with_other_models(tmp_path, caplog):
    bids, out, _ = _two_site_cohort(tmp_path)
    tsv = next(out.glob("sub-001/anat/*_brainage.tsv"))
    sidecar = tsv.with_suffix(".json")
    sidecar.write_text(json.dumps({"status": "ok", "models_json_sha256": "0" * 64}))
    with caplog.at_level(logging.ERROR, logger="bids_brainage.group"):
        assert group.run_group(_settings(bids, out)) == 64
    assert "other models" in caplog.text and "sub-001" in caplog.text
    assert group.run_group(_settings(bids, out, allow_model_mismatch=True)) == 0
    summary = json.loads((out / "group_brainage.json").read_text())
    assert any("other model cards" in w for w in summary["warnings"])
