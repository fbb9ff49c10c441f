"""Tests of event matching and scoring on hand-made cases."""

import numpy as np
import pandas as pd
import pytest

from sleepvlm.rules.validation import event_scores, match_events, score_kind


def events(kind, rows):
    return pd.DataFrame(
        [(kind, "C4", on, dur, amp) for on, dur, amp in rows],
        columns=["kind", "channel", "onset", "duration", "amplitude"],
    )


def test_iou_matching_is_one_to_one_and_best_first():
    truth = events("spindle", [(10.0, 1.0, 30), (20.0, 1.0, 30)])
    detected = events("spindle", [(10.1, 1.0, 30), (10.3, 1.0, 30), (20.9, 1.0, 30)])
    pairs = match_events(detected, truth, min_iou=0.2)
    # the closer of the two candidates wins the first spindle; 20.9 overlaps 0.1 s only
    assert pairs[["detected", "truth"]].values.tolist() == [[0, 0]]
    assert pairs["iou"].iloc[0] == pytest.approx(0.9 / 1.1)


def test_onset_tolerance_matching():
    truth = events("rem", [(5.0, 1.0, 100), (8.0, 1.0, 100)])
    detected = events("rem", [(5.25, 0.1, 100), (8.4, 0.1, 100)])
    pairs = match_events(detected, truth, onset_tol_s=0.3)
    assert pairs["truth"].tolist() == [0]
    assert pairs["onset_diff"].iloc[0] == pytest.approx(0.25)


def test_scores_count_hits_misses_and_false_alarms():
    truth = events("spindle", [(10.0, 1.0, 30), (20.0, 1.0, 30), (30.0, 1.0, 30)])
    detected = events("spindle", [(10.0, 1.0, 30), (20.1, 0.8, 30), (50.0, 1.0, 30)])
    score = score_kind(detected, truth, "spindle")
    assert (score.tp, score.fp, score.fn) == (2, 1, 1)
    assert score.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert score.missed["onset"].tolist() == [30.0]
    assert score.false_alarms["onset"].tolist() == [50.0]


def test_sub_threshold_slow_waves_and_artefacts_are_dont_care():
    truth = pd.concat(
        [
            events("slow_wave", [(10.0, 1.0, 120), (20.0, 1.0, 60)]),
            events("artifact", [(40.0, 10.0, 500)]),
            events("kcomplex", [(60.0, 1.0, 150)]),
        ],
        ignore_index=True,
    )
    detected = events("slow_wave", [(10.0, 1.0, 110), (20.0, 1.0, 80), (45.0, 1.0, 300),
                                    (60.1, 1.0, 140)])  # fmt: skip
    score = score_kind(detected, truth, "slow_wave")
    assert (score.tp, score.fp, score.fn, score.ignored) == (1, 0, 0, 3)
    # a sub-threshold true wave that nobody found is no miss either
    assert score_kind(detected.iloc[:1], truth, "slow_wave").fn == 0


def test_event_scores_table_and_empty_cases():
    truth = events("spindle", [(10.0, 1.0, 30)])
    table = event_scores(events("spindle", []), truth, ["spindle", "kcomplex"])
    assert table.set_index("kind").loc["spindle", "recall"] == 0.0
    assert np.isnan(table.set_index("kind").loc["kcomplex", "f1"])
