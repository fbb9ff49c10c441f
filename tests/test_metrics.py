"""Tests of answer parsing, the metrics, the subject bootstrap and the result records."""

import json
import re

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

import sleepvlm
from sleepvlm.data.records import STAGES, CorruptFileError, DataError
from sleepvlm.metrics import (
    GRAMMAR,
    INVALID,
    MetricsError,
    bootstrap_ci,
    classification_metrics,
    evaluate,
    grammar_table,
    kappa_text,
    metrics_from_confusion,
    parse_stage,
    point_value,
    predictions,
    read_results,
    result_record,
    subject_confusions,
    write_result,
)


@pytest.mark.parametrize(
    "answer, stage",
    [
        ("N2", "N2"),
        ("n3", "N3"),
        ("Stage N1.", "N1"),
        ('{"stage": "REM"}', "REM"),
        ("W", "W"),
        ("Wake", "W"),
        ("The subject is awake.", "W"),
        ("Wakefulness", "W"),
        ("Stage W", "W"),
        ("stage w", "W"),
        ("R", "REM"),
        ("Stage R", "REM"),
        ("REM sleep", "REM"),
        ("rapid eye movement sleep", "REM"),
        ("Stage 1", "N1"),
        ("stage: 2", "N2"),
        ("Stage 3", "N3"),
        ("Stage 4", "N3"),
        ("S1", "N1"),
        ("S4", "N3"),
        ("SWS", "N3"),
        ("slow-wave sleep", "N3"),
        ("slow wave sleep", "N3"),
        ("NREM 2", "N2"),
        ("non-REM stage 3", "N3"),
        ("NREM1", "N1"),
        # The first valid label wins, even when negated: this is the rule, stated up front.
        ("Not N3 but N2", "N3"),
        ("N2/N3 boundary", "N2"),
        ("Between W and N1: N1", "W"),
        # Labels inside longer words or numbers are not labels.
        ("N12", None),
        ("I remain unsure", None),
        ("REMs are absent, so N2", "N2"),
        ("awakening, then N1", "N1"),
        ("Stage Rationale: N2", "N2"),
        ("per R&K rules this is N2", "N2"),
        ("W-shaped waves, N3", "N3"),
        ("slow waves dominate: N3", "N3"),
        ("rapid eye movements are seen; N1", "N1"),
        # NREM without a number names no single stage: skipped, the next label counts.
        ("NREM sleep, most likely N2", "N2"),
        ("non-REM", None),
        # Lower-case single letters are ordinary words.
        ("w", None),
        ("r = 0.4", None),
        ("I cannot tell.", None),
        ("", None),
        (None, None),
        ("N4", None),
    ],
)
def test_first_valid_label_is_the_prediction(answer, stage):
    assert parse_stage(answer) == stage


def test_grammar_table_lists_every_rule_and_its_examples_parse():
    table = grammar_table()
    assert len(table) == len(GRAMMAR)
    for rule in GRAMMAR:
        assert parse_stage(rule.example) == rule.stage


def test_invalid_answers_stay_in_the_denominator():
    result = evaluate(["W", "N2", "N2", "REM"], ["W", "N2", "no idea", "REM"])
    assert result["n"] == 4 and result["invalid"] == 1 and result["parse_rate"] == 0.75
    metrics = result["metrics"]
    assert metrics["accuracy"] == 0.75  # 1.0 if the invalid answer were dropped
    # W: F1 1; N2: tp 1, fn 1 -> 2/3; REM: 1; N1, N3 absent from truth and predictions.
    assert metrics["per_class_f1"] == {"W": 1.0, "N1": None, "N2": 2 / 3, "N3": None, "REM": 1.0}
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert metrics["macro_recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["confusion"][STAGES.index("N2")] == [0, 0, 1, 0, 0, 1]
    assert "ci95" not in metrics


def test_macro_f1_is_unweighted_and_counts_a_predicted_absent_class():
    y_true = ["W", "W", "N2", "N2", "N2", "N2"]
    y_pred = ["W", "N3", "N2", "N2", "N2", "N2"]
    metrics = classification_metrics(y_true, y_pred)
    # W: 2/3; N2: 1; N3 (never true, predicted once): 0; N1 and REM undefined.
    assert metrics["per_class_f1"]["N3"] == 0.0
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    weighted = f1_score(y_true, y_pred, average="weighted")
    assert metrics["macro_f1"] != pytest.approx(weighted)
    assert metrics["macro_recall"] == pytest.approx((0.5 + 1) / 2)


def test_kappa_matches_sklearn_with_invalid_as_disagreement():
    rng = np.random.default_rng(1)
    y_true = rng.choice(STAGES, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.choice([*STAGES, INVALID], 300))
    metrics = classification_metrics(y_true, y_pred)
    assert metrics["kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred))
    assert metrics["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert np.array(metrics["confusion"]).shape == (5, 6)
    assert np.array(metrics["confusion"])[:, -1].sum() == np.sum(y_pred == INVALID)


def test_confusion_path_agrees_with_sklearn_path():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = rng.integers(5, 60)
        present = rng.choice(STAGES, size=rng.integers(1, 6), replace=False)
        y_true = rng.choice(present, n)
        y_pred = rng.choice([*STAGES, INVALID], n)
        direct = classification_metrics(y_true, y_pred)
        fast = metrics_from_confusion(np.array(direct["confusion"]))
        for name in ("accuracy", "macro_f1", "macro_recall", "kappa"):
            expected = np.nan if direct[name] is None else direct[name]
            assert float(fast[name]) == pytest.approx(expected, nan_ok=True)


def test_bad_labels_are_refused():
    with pytest.raises(MetricsError, match="MOVE"):
        classification_metrics(["W", "MOVE"], ["W", "W"])
    with pytest.raises(MetricsError, match="predictions()"):
        classification_metrics(["W"], ["Stage 2"])
    with pytest.raises(MetricsError, match="2 true labels but 1"):
        classification_metrics(["W", "N1"], ["W"])
    with pytest.raises(DataError, match="no epochs"):
        classification_metrics([], [])
    with pytest.raises(MetricsError, match="subject ids"):
        subject_confusions(["W"], ["W"], [1, 2])


def _cohort(n_subjects=12, per_subject=40, seed=0):
    rng = np.random.default_rng(seed)
    y_true, y_pred, subjects = [], [], []
    for s in range(n_subjects):
        skill = rng.uniform(0.3, 0.9)
        truth = rng.choice(STAGES, per_subject)
        noise = rng.choice([*STAGES, INVALID], per_subject)
        y_true += list(truth)
        y_pred += list(np.where(rng.random(per_subject) < skill, truth, noise))
        subjects += [f"s{s}"] * per_subject
    return y_true, y_pred, subjects


def test_bootstrap_is_seeded_and_contains_the_point_estimate():
    y_true, y_pred, subjects = _cohort()
    point = classification_metrics(y_true, y_pred)
    ci = bootstrap_ci(y_true, y_pred, subjects, n_boot=500, seed=3)
    assert ci == bootstrap_ci(y_true, y_pred, subjects, n_boot=500, seed=3)
    assert ci != bootstrap_ci(y_true, y_pred, subjects, n_boot=500, seed=4)
    for name in ("accuracy", "macro_f1", "macro_recall", "kappa"):
        low, high = ci[name]
        assert low < point[name] < high


def test_bootstrap_resamples_subjects_not_epochs():
    # One subject all right, one all wrong: epochs would give a narrow interval around 0.5,
    # subjects give the whole range.
    y_true = ["N2"] * 100
    y_pred = ["N2"] * 50 + ["W"] * 50
    subjects = ["good"] * 50 + ["bad"] * 50
    low, high = bootstrap_ci(y_true, y_pred, subjects, n_boot=400, seed=0)["accuracy"]
    assert low == 0.0 and high == 1.0
    single = bootstrap_ci(y_true, y_pred, ["one"] * 100)
    assert single["accuracy"] == [None, None]


def _record(evaluation, **changes):
    fields = dict(
        dataset="dcsm",
        modality="image",
        prompt="aasm-v1",
        model="chance",
        backend="local",
        model_id="chance",
        data="simulated",
        evaluation=evaluation,
        manifest_hash="abcdef0123456789",
        prompt_hash="0123",
        decoding={"temperature": 0},
    )
    return result_record(**{**fields, **changes})


def test_records_round_trip_into_one_table(tmp_path):
    y_true, y_pred, subjects = _cohort(n_subjects=4, per_subject=20)
    evaluation = evaluate(y_true, y_pred, subjects, n_boot=200)
    path = write_result(_record(evaluation), tmp_path)
    write_result(_record(evaluation, model="majority", model_id="majority"), tmp_path)
    assert path.name == "dcsm__image__chance__aasm-v1__abcdef01.json"
    record = json.loads(path.read_text())
    assert record["library_version"] == sleepvlm.__version__
    assert set(record["metrics"]) == {
        "accuracy",
        "macro_f1",
        "macro_recall",
        "kappa",
        "per_class_f1",
        "confusion",
        "ci95",
    }
    table = read_results(tmp_path)
    assert list(table["model"]) == ["chance", "majority"]
    row = table.iloc[0]
    assert row["accuracy"] == pytest.approx(evaluation["metrics"]["accuracy"])
    assert row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"]
    assert row["parse_rate"] == pytest.approx(evaluation["parse_rate"])
    assert row["temperature"] == 0 and row["data"] == "simulated"
    # Rewriting the same run replaces its file.
    write_result(_record(evaluation), tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_records_never_hold_secrets(tmp_path, monkeypatch):
    key = "sk-proj-" + "K" * 30
    monkeypatch.setenv("OPENAI_API_KEY", key)
    evaluation = evaluate(["W", "N2"], ["W", "N2"])
    record = _record(evaluation, decoding={"temperature": 0, "note": f"key {key}"})
    record["prompt"] = f"prompt with Bearer {'t' * 20}"
    write_result(record, tmp_path)
    for path in tmp_path.iterdir():
        text = path.read_text()
        assert key not in text and not re.search(r"sk-[A-Za-z0-9_\-]{8,}", text)
        assert "t" * 20 not in text


def test_bad_records_are_refused(tmp_path):
    evaluation = evaluate(["W"], ["W"])
    with pytest.raises(MetricsError, match="data must be one of"):
        _record(evaluation, data="synthetic")
    with pytest.raises(MetricsError, match="modality"):
        _record(evaluation, modality="audio")
    with pytest.raises(MetricsError, match="evaluate()"):
        _record({"n": 1})
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(CorruptFileError, match="broken.json"):
        read_results(tmp_path)
    assert read_results(tmp_path / "empty").empty


def test_predictions_mark_invalid():
    assert predictions(["N2 probably", None, "hmm"]) == ["N2", INVALID, INVALID]


def test_kappa_text_names_each_group_and_its_kappa():
    import pandas as pd

    kappas = pd.Series({"dcsm": 0.712, "shhs": 0.65, "isruc": 0.6})
    assert kappa_text(kappas) == "0.71 (DCSM), 0.65 (SHHS) and 0.60 (ISRUC)"
    assert kappa_text(kappas.iloc[:1]) == "0.71 (DCSM)"


def test_point_value_reads_the_mean_of_an_entry_with_its_interval():
    assert point_value({"mean": 0.42, "ci95": [0.3, 0.5]}) == 0.42
    assert point_value(0.7) == 0.7
    assert point_value({"W": 0.1}) == {"W": 0.1}  # a per-stage table is not a point
