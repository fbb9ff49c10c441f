"""Tests of the automatic rationale scores: hand-made answers against a hand-made N2 epoch, then
the reference answers of a simulated night and the same answers with shifted times."""

import re

import pytest

from sleepvlm.data.simulate import simulate_night
from sleepvlm.explain import faithfulness
from sleepvlm.explain.annotations import (
    AnnotationError,
    EpochAnnotation,
    Evidence,
    annotate_night,
    answer_text,
    parse_answer,
)
from sleepvlm.explain.faithfulness import (
    faithfulness_summary,
    score_answer,
    score_answers,
    ungrounded_claims,
)

SPINDLE = Evidence("spindle", "eeg", 12.2, 13.1)
KCOMPLEX = Evidence("kcomplex", "eeg", 20.3, 21.0)


@pytest.fixture
def n2() -> EpochAnnotation:
    return EpochAnnotation(
        "d",
        "s",
        "n",
        7,
        "N2",
        ["N2.spindle", "N2.kcomplex"],
        [SPINDLE, KCOMPLEX],
        "truth",
        other_events=[Evidence("blink", "eog", 3.0, 3.4)],
    )


def test_the_reference_answer_scores_one_everywhere(n2):
    score = score_answer(answer_text(n2), n2)
    assert score.stage_correct and score.predicted == "N2"
    assert (score.precision, score.comprehensiveness, score.coherence) == (1.0, 1.0, 1.0)
    assert score.rule_recall == 1.0 and score.ungrounded == []


def test_a_wrong_time_lowers_precision_and_is_listed(n2):
    text = (
        "Stage: N2. Rules: N2.spindle, N2.kcomplex. "
        "Evidence: spindle on EEG at 25-26 s; K complex on EEG at 20-21 s."
    )
    score = score_answer(text, n2)
    assert score.precision == 0.5 and score.comprehensiveness == 0.5
    assert [c.describe() for c in score.ungrounded] == ["spindle on EEG at 25-26 s"]
    assert score.coherence == 1.0  # wrong, but consistent with the stage
    assert ungrounded_claims(text, n2) == score.ungrounded


def test_tolerance_decides_how_near_a_time_must_be(n2):
    text = "Stage: N2. Rules: N2.spindle. Evidence: spindle on EEG at 14 s."
    assert score_answer(text, n2, tolerance_s=1.0).precision == 1.0
    assert score_answer(text, n2, tolerance_s=0.5).precision == 0.0
    with pytest.raises(AnnotationError, match="tolerance_s must be >= 0"):
        score_answer(text, n2, tolerance_s=-1)


def test_a_missing_spindle_lowers_recall_only(n2):
    score = score_answer(
        "Stage: N2. Rules: N2.kcomplex. Evidence: K complex on EEG at 20-21 s.", n2
    )
    assert score.precision == 1.0 and score.coherence == 1.0
    assert score.comprehensiveness == 0.5 and score.rule_recall == 0.5
    assert (score.n_decisive, score.n_decisive_cited) == (2, 1)


def test_a_rule_of_another_stage_lowers_coherence(n2):
    score = score_answer(
        "Stage: N2. Rules: N2.spindle, R.rem. Evidence: spindle on EEG at 12-13 s.", n2
    )
    assert score.off_stage_rules == ["R.rem"]
    assert score.coherence == pytest.approx(2 / 3)
    unknown = score_answer("Stage: N2. Rules: N2.spindle, N2.hunch.", n2)
    assert unknown.unknown_rules == ["N2.hunch"] and unknown.coherence == 0.5


def test_true_events_of_other_stages_are_facts_but_not_coherent_reasons(n2):
    score = score_answer("Stage: N2. Rules: N2.spindle. Evidence: eye blink on EOG at 3 s.", n2)
    assert score.precision == 1.0  # the blink is there
    assert [c.kind for c in score.off_stage_claims] == ["blink"]
    assert score.coherence == 0.5
    wrong_channel = score_answer("Stage: N2. Evidence: spindle on EOG at 12-13 s.", n2)
    assert wrong_channel.precision == 0.0


def test_free_text_answer_of_a_general_model(n2):
    text = "This looks like N2 because of a spindle at about 12 s"
    score = score_answer(parse_answer(text), n2)
    assert score.stage_correct and score.precision == 1.0
    assert score.comprehensiveness == 0.5 and score.rule_recall == 0.0
    assert score.coherence == 1.0
    invented = "Clearly N2: K-complex around 5 s, sleep spindles at 12 s and 27 s."
    assert [c.describe() for c in ungrounded_claims(invented, n2)] == [
        "K complex on EEG at 5 s",
        "spindle on EEG at 27 s",
    ]


def test_answers_without_a_stage_or_without_reasons(n2):
    empty = score_answer("I cannot tell.", n2)
    assert empty.predicted is None and not empty.stage_correct
    assert empty.precision is None and empty.coherence is None
    assert empty.comprehensiveness == 0.0
    stageless = score_answer("There is a spindle at 12 s.", n2)
    assert stageless.precision == 1.0 and stageless.coherence == 0.0
    assert score_answer(None, n2).n_claims == 0


def test_comprehensiveness_counts_kinds_not_the_reference_events():
    rems = [Evidence("rem", "eog", t, t + 0.2) for t in (2.0, 6.0, 9.0, 14.0, 22.0)]
    rem = EpochAnnotation("d", "s", "n", 0, "REM", ["R.rem", "R.atonia"], rems, "truth")
    other_three = "Stage: REM. Evidence: REMs at 9 s, 14 s and 22 s."
    assert score_answer(other_three, rem).comprehensiveness == 1.0
    one_twice = "Stage: REM. Evidence: REMs at 2 s, 2 s and 2 s."
    assert score_answer(one_twice, rem).comprehensiveness == pytest.approx(1 / 3)
    background = EpochAnnotation("d", "s", "n", 1, "REM", ["R.atonia", "R.cont"], [], "truth")
    assert score_answer(answer_text(background), background).comprehensiveness is None


def test_score_table_and_summary(n2):
    answers = [answer_text(n2), "Stage: N2. Rules: R.rem. Evidence: spindle on EEG at 25 s.", None]
    frame = score_answers(answers, [n2, n2, n2])
    assert len(frame) == 3 and frame["epoch"].tolist() == [7, 7, 7]
    assert frame["precision"].tolist()[:2] == [1.0, 0.0]
    summary = faithfulness_summary(frame)
    assert summary["n_epochs"] == 3
    assert summary["precision"] == {
        "rating": "factual accuracy",
        "mean": 0.5,
        "n": 2,
        "scale_1_5": 3.0,
    }
    assert summary["coherence"]["mean"] == pytest.approx(0.75)
    assert summary["comprehensiveness"]["n"] == 3
    assert summary["stage_accuracy"] == pytest.approx(2 / 3)
    assert summary["share_with_ungrounded_claims"] == pytest.approx(1 / 3)
    assert "proxy" in summary["note"] and "not an expert rating" in summary["note"]
    with pytest.raises(AnnotationError, match="2 answers for 3 annotations"):
        score_answers(answers[:2], [n2, n2, n2])
    with pytest.raises(AnnotationError, match="missing columns"):
        faithfulness_summary(frame.drop(columns="coherence"))


def test_summary_table_has_one_column_per_center_on_the_proxy_scale(n2):
    good = score_answers([answer_text(n2)] * 2, [n2, n2])
    mixed = score_answers(
        [answer_text(n2), "Stage: N2. Evidence: spindle on EEG at 25 s."], [n2, n2]
    )
    table = faithfulness.summary_table({"dcsm": good, "shhs": mixed})
    assert list(table.columns) == ["dcsm", "shhs"]
    assert table.loc["factual accuracy (1–5)", "dcsm"] == 5.0
    assert table.loc["factual accuracy (1–5)", "shhs"] == 3.0
    assert table.loc["answers with an invented event", "shhs"] == 0.5
    assert table.loc["epochs scored"].tolist() == [2, 2]


def test_reference_answers_of_a_simulated_night_score_one_and_shifted_ones_do_not():
    annotations = annotate_night(simulate_night("shhs", 0, hours=0.5))
    reference = score_answers([answer_text(a) for a in annotations], annotations)
    summary = faithfulness_summary(reference)
    for column in ("precision", "comprehensiveness", "coherence", "rule_recall"):
        assert summary[column]["mean"] == 1.0, column
    assert summary["precision"]["n"] >= 20

    def shifted(text: str) -> str:
        return re.sub(
            r"at (\d+)-(\d+) s",
            lambda m: f"at {(int(m[1]) + 15) % 30}-{(int(m[1]) + 15) % 30 + 1} s",
            text,
        )

    moved = score_answers([shifted(answer_text(a)) for a in annotations], annotations)
    assert faithfulness_summary(moved)["precision"]["mean"] < 0.8


def test_the_reference_of_a_real_run_is_named_as_the_detectors():
    assert "ground truth of the scored nights" in faithfulness.reference_text(True)
    real = faithfulness.reference_text(False)
    assert "our detectors" in real and "no ground truth" in real
