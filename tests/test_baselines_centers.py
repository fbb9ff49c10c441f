import pandas as pd
import pytest

from sleepvlm import paper, report
from sleepvlm.baselines import (
    CROSS_LOSS_GOAL,
    beside_paper,
    center_goal_texts,
    center_goals,
    cross_center_loss,
    cross_center_texts,
    kappa_matrix,
    paper_within_center,
    scores_from_records,
)
from sleepvlm.baselines.centers import ONE_CENTER
from sleepvlm.baselines.evaluate import MODALITY, NIGHTS, SAMPLE
from sleepvlm.data.records import STAGES
from sleepvlm.metrics import evaluate, result_record, write_result

CENTERS = ["dcsm", "shhs", "isruc"]


def _scores(accuracy: dict, kappa: dict[tuple[str, str], float], model="deepsleepnet"):
    rows = [
        {"model": model, "train": a, "test": b, "epochs": SAMPLE, "kappa": k,
         "accuracy": accuracy[a] if a == b else k}
        for (a, b), k in kappa.items()
    ]  # fmt: skip
    # whole test nights are scored too; they must not enter the goals
    rows += [{"model": model, "train": c, "test": c, "epochs": NIGHTS, "kappa": 0.99,
              "accuracy": 0.99} for c in CENTERS]  # fmt: skip
    return pd.DataFrame(rows)


def _kappas(diagonal: dict, off: float):
    return {(a, b): diagonal[a] if a == b else off for a in CENTERS for b in CENTERS}


def test_cross_center_loss_is_diagonal_minus_off_diagonal():
    scores = _scores(
        {c: 0.7 for c in CENTERS}, _kappas({"dcsm": 0.7, "shhs": 0.6, "isruc": 0.5}, 0.4)
    )
    matrix = kappa_matrix(scores, "deepsleepnet", CENTERS)
    assert list(matrix.index) == CENTERS and list(matrix.columns) == CENTERS
    assert cross_center_loss(matrix) == pytest.approx(0.6 - 0.4)
    assert cross_center_texts(matrix) == {"cross_mean": "0.40", "cross_drop": "0.20"}


def test_one_center_has_no_cross_center_loss_and_says_so(recwarn):
    scores = _scores({"dcsm": 0.7}, {("dcsm", "dcsm"): 0.6})
    matrix = kappa_matrix(scores, "deepsleepnet", ["dcsm"])
    assert pd.isna(cross_center_loss(matrix))
    texts = cross_center_texts(matrix)
    assert set(texts.values()) == {ONE_CENTER} and "one center" in ONE_CENTER
    assert not recwarn.list  # no numpy warning about empty means


def test_goals_met_in_the_papers_order_with_spread_and_loss():
    scores = _scores(
        {"dcsm": 0.70, "shhs": 0.66, "isruc": 0.55},
        _kappas({"dcsm": 0.62, "shhs": 0.58, "isruc": 0.45}, 0.40),
    )
    goals = center_goals(scores).set_index("goal")
    assert goals["met"].all()
    assert goals.loc["spread", "measured"] == "15.0 points"
    texts = center_goal_texts(center_goals(scores))
    assert texts["center_goals_met"] == "3 of 3"
    assert "every goal is met" in texts["center_verdict"]


def test_goals_missed_are_named_with_their_numbers():
    # ISRUC easiest, small spread, nothing lost across centers: the old cohort's situation
    scores = _scores(
        {"dcsm": 0.67, "shhs": 0.70, "isruc": 0.72},
        _kappas({"dcsm": 0.58, "shhs": 0.61, "isruc": 0.68}, 0.62),
    )
    goals = center_goals(scores).set_index("goal")
    assert not goals["met"].any()
    assert goals.loc["cross-center loss", "measured"] == f"{0.623333 - 0.62:.2f} κ"
    verdict = center_goal_texts(center_goals(scores))["center_verdict"]
    assert verdict.startswith("not met")
    assert "deepsleepnet order" in verdict and f"goal ≥ {CROSS_LOSS_GOAL:.2f} κ" in verdict


def test_without_the_three_centers_nothing_is_claimed():
    scores = _scores({"dcsm": 0.7}, {("dcsm", "dcsm"): 0.6})
    assert center_goals(scores).empty
    assert center_goal_texts(center_goals(scores))["center_goals_met"] == "—"


def _record(
    folder,
    train,
    test,
    right,
    *,
    per_stage=None,
    data="simulated",
    created=None,
    prompt=None,
    manifest="m" * 16,
):
    """A baseline's record written by the metrics code: ``right`` of every 20 epochs of each
    stage answered correctly, the others as the next stage. ``per_stage`` (epochs of each
    stage) defaults to the paper's sample of ``test`` in multiples of 20 (a class-balanced
    record is told apart by its stage shares)."""
    per_stage = per_stage or {
        s: 20 * round(c / 100) for s, c in paper.BALANCED_COUNTS[test].items()
    }
    truth, answers = [], []
    for i, stage in enumerate(STAGES):
        n = per_stage[stage]
        truth += [stage] * n
        answers += [stage if k % 20 < right else STAGES[(i + 1) % 5] for k in range(n)]
    record = result_record(
        dataset=test, modality=MODALITY, prompt=prompt or f"trained-on-{train}",
        model="deepsleepnet", backend="local", model_id=f"deepsleepnet-{train}", data=data,
        evaluation=evaluate(truth, answers, subjects=[k % 4 for k in range(len(truth))], n_boot=0),
        manifest_hash=manifest, prompt_hash="p" * 64, decoding={"width": 8},
    )  # fmt: skip
    if created:
        record["created"] = created
    write_result(record, folder)


def test_the_center_goals_are_read_back_from_the_baselines_records(tmp_path):
    right = {"dcsm": 16, "shhs": 15, "isruc": 12}  # of 20 on their own center; 10 elsewhere
    for train in CENTERS:
        for test in CENTERS:
            _record(tmp_path, train, test, right[train] if train == test else 10)
    # not among the center runs: whole nights (mostly N2), a zero-shot model, real data, and
    # an earlier record of the same run, which the later one replaces
    nights = {"W": 20, "N1": 4, "N2": 100, "N3": 20, "REM": 20}
    _record(tmp_path, "dcsm", "dcsm", 20, per_stage=nights, manifest="n" * 16)
    _record(tmp_path, "dcsm", "dcsm", 20, prompt="plain", manifest="z" * 16)
    _record(tmp_path, "isruc", "isruc", 20, data="real", manifest="r" * 16)
    _record(tmp_path, "isruc", "isruc", 20, created="2000-01-01T00:00:00+00:00",
            manifest="o" * 16)  # fmt: skip

    scores = scores_from_records(report.load_records(tmp_path))
    sample = scores[scores["epochs"] == SAMPLE]
    assert len(sample) == 9 and set(scores["epochs"]) == {SAMPLE, NIGHTS}
    assert scores[scores["epochs"] == NIGHTS]["accuracy"].tolist() == [1.0]
    goals = center_goals(scores).set_index("goal")
    assert goals.loc["order", "measured"].startswith("80.0 % ")  # DCSM's 16 of 20
    assert goals.loc["spread", "measured"] == "20.0 points" and goals["met"].all()

    table = beside_paper(scores)
    assert table.loc[("deepsleepnet", "isruc"), "accuracy"] == pytest.approx(60.0)
    assert (
        table.loc[("deepsleepnet", "isruc"), "paper accuracy"]
        == (paper.BASELINE_RESULTS["deepsleepnet"]["isruc"]["accuracy"])
    )
    real = scores_from_records(report.load_records(tmp_path), data="real")
    assert real[["train", "test", "accuracy"]].values.tolist() == [["isruc", "isruc", 1.0]]


def test_no_baseline_on_record_claims_no_goal(tmp_path):
    _record(tmp_path, "dcsm", "dcsm", 20, prompt="plain")
    scores = scores_from_records(report.load_records(tmp_path))
    assert scores.empty
    assert center_goal_texts(center_goals(scores))["center_goals_met"] == "—"


def test_the_papers_within_center_accuracy_as_text():
    text = paper_within_center()
    first = paper.BASELINE_RESULTS["deepsleepnet"]
    assert text.startswith(
        f"deepsleepnet {first['dcsm']['accuracy']:.1f} / {first['shhs']['accuracy']:.1f} / "
    )
    assert text.count(" %") == len(paper.BASELINE_RESULTS)
