import pandas as pd
import pytest

from sleepvlm.baselines import (
    CROSS_LOSS_GOAL,
    center_goal_texts,
    center_goals,
    cross_center_loss,
    cross_center_texts,
    kappa_matrix,
)
from sleepvlm.baselines.centers import ONE_CENTER
from sleepvlm.baselines.evaluate import NIGHTS, SAMPLE

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
