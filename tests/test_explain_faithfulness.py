"""Tests of the automatic rationale scores: hand-made answers against a hand-made N2 epoch, then
the reference answers of a simulated night and the same answers with shifted times."""

import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from sleepvlm import render
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


def _claim(kind, role, start, end):
    return parse_answer(f"Evidence: {kind} on {role} at {start}-{end} s.").claims[0]


def test_each_wrong_claim_is_named_by_what_it_got_wrong(n2):
    checks = {
        text: faithfulness.claim_error(_claim(*args), n2)
        for text, args in {
            "grounded": ("spindle", "EEG", 12, 13),
            "time": ("spindle", "EEG", 25, 26),
            "channel": ("eye blink", "EEG", 3, 4),
            "kind": ("vertex sharp wave", "EEG", 20, 21),  # the K-complex is there
            "invented": ("sawtooth", "EEG", 5, 6),
        }.items()
    }
    assert {k: c.error for k, c in checks.items()} == {
        "grounded": "grounded",
        "time": "wrong time",
        "channel": "wrong channel",
        "kind": "wrong kind",
        "invented": "invented",
    }
    assert checks["grounded"].gap_s == 0.0
    assert checks["time"].gap_s == pytest.approx(25 - 13.1)
    assert checks["invented"].gap_s is None and checks["kind"].gap_s is None


def test_claim_table_breakdown_and_tolerance_curve_agree_with_the_scores(n2):
    answers = [
        "Stage: N2. Rules: N2.spindle. Evidence: spindle on EEG at 14-15 s; "
        "sawtooth waves on EEG at 5-6 s.",
        answer_text(n2),
    ]
    scored = score_answers(answers, [n2, n2])
    claims = faithfulness.claim_table(scored)
    assert len(claims) == scored["n_claims"].sum() == 4
    first = claims[claims["epoch"] == 7].iloc[:2]
    assert first["error"].tolist() == ["grounded", "invented"]  # 14 s lies 0.9 s from 13.1
    assert first["time_bin"].tolist() == ["10-15 s", "5-10 s"]
    breakdown = faithfulness.error_breakdown(claims)
    assert breakdown.loc["spindle", "grounded"] == 1.0 and breakdown.loc["spindle", "claims"] == 2
    assert breakdown.loc["sawtooth", "invented"] == 1.0
    curve = faithfulness.precision_by_tolerance(claims, [0.0, 1.0, 5.0])
    assert curve[1.0] == pytest.approx((claims["error"] == "grounded").mean())
    assert curve[0.0] == 0.5  # the 14-15 s spindle needs 0.9 s of tolerance
    assert curve.is_monotonic_increasing


def test_claim_table_asks_for_scored_rows():
    with pytest.raises(AnnotationError, match="score_answers"):
        faithfulness.claim_table(pd.DataFrame({"x": [1]}))


RUN = {
    "dataset": "dcsm",
    "modality": "image",
    "prompt": "expert",
    "model": "sleepvlm-mini",
    "data": "simulated",
    "train_dataset": "shhs",
    "manifest_hash": "abcdef0123456789",
    "metrics": {"accuracy": 0.5},
}


def test_a_faithfulness_record_is_read_as_a_summary_and_kept_out_of_the_runs(n2, tmp_path):
    from sleepvlm.metrics import read_results
    from sleepvlm.report import load_records, load_summaries, rationale_table

    answers = [
        answer_text(n2),
        "Stage: N2. Rules: N2.spindle. Evidence: spindle on EEG at 25-26 s.",
    ]
    scored = score_answers(answers, [n2, n2])
    path = faithfulness.write_faithfulness(RUN, scored, tmp_path)
    assert path.name.startswith("faithfulness__dcsm__image__sleepvlm-mini__expert__")
    summaries = load_summaries(tmp_path, faithfulness.FAITHFULNESS)
    row = summaries.iloc[0]
    assert (row["dataset"], row["train_dataset"], row["n"]) == ("dcsm", "shhs", 2)
    assert row["nights"] == ["s/n"] and row["reference"] == ["truth"]
    assert row["precision"] == pytest.approx(0.5)  # the mean of 1 and 0
    assert row["ungrounded_share"] == 0.5 and row["claim_precision"] == pytest.approx(2 / 3)
    assert row["claim_errors"]["wrong time"] == pytest.approx(1 / 3)
    assert row["n_claims"] == 3 and row["coherence"] == 1.0
    assert load_records(tmp_path).empty and read_results(tmp_path).empty
    assert load_summaries(tmp_path, "something else").empty
    goals = faithfulness.goal_table(summaries).set_index("metric")
    assert goals["met"].tolist() == [False, False, True, False]  # comprehensiveness (1 + 0) / 2
    assert goals.loc["ungrounded_share", "goal"] == "< 0.2"
    table = rationale_table(summaries)
    assert table["SleepVLM (paper: expert rating)"].iloc[0] == "> 4"
    mini = table["sleepvlm-mini, DCSM (external)"]  # trained on SHHS
    assert mini.tolist() == ["3.0", "3.0", "5.0", "50%"]  # 1 + 4 x (0.5, 0.5, 1)


def test_a_faithfulness_record_needs_its_run(n2):
    scored = score_answers([answer_text(n2)], [n2])
    with pytest.raises(AnnotationError, match="lacks"):
        faithfulness.faithfulness_record({"dataset": "dcsm"}, scored)


def test_draw_claims_marks_events_and_cited_spans_where_they_lie(n2):
    options = render.ImageOptions(width=448, height=224, context=1)
    epoch = np.random.default_rng(0).normal(0, 10, (3, 3000))
    png = render.render_png(epoch, epoch, epoch, options)
    answer = "Stage: N2. Evidence: spindle on EEG at 12-13 s; spindle on EEG at 25-26 s."
    ax = faithfulness.draw_claims(png, n2, answer, options)
    bands = [p for p in ax.patches if p.get_fill()]
    outlines = [p for p in ax.patches if not p.get_fill()]
    assert len(bands) == 3 and len(outlines) == 2  # spindle, K complex, blink; two claims
    start, stop = render.layout(options).center_columns
    per_s = (stop - start) / 30
    assert outlines[0].get_x() == pytest.approx(start + 12 * per_s)
    assert outlines[0].get_edgecolor() == to_rgba(faithfulness.CLAIM_COLORS["grounded"])
    assert outlines[1].get_edgecolor() == to_rgba(faithfulness.CLAIM_COLORS["ungrounded"])
    eog_top, _ = render.layout(options).lanes["eog"]
    assert bands[2].get_y() == eog_top + 1  # the blink is drawn in the EOG lane


def test_repeated_answers_measure_one_template_per_stage(n2):
    template = "Stage: N2. Rules: N2.spindle. Evidence: spindle on EEG at 0-1 s."
    answers = [template, template, template, answer_text(n2), "Stage: W. Rules: W.alpha."]
    scored = score_answers(answers, [n2] * 5).assign(answer=answers)
    shares = faithfulness.repeated_answers(scored)
    assert shares.to_dict() == {"W": 1.0, "N2": 0.75}
    with pytest.raises(AnnotationError, match="answer"):
        faithfulness.repeated_answers(scored.drop(columns="answer"))


def test_template_sentence_follows_the_repeated_shares(n2):
    mostly = pd.DataFrame({"dcsm": {"N2": 0.7, "W": 0.2}, "shhs": {"N2": 0.5, "W": 0.1}})
    assert faithfulness.template_sentence(mostly).startswith("60% of its N2 answers are one")
    varied = mostly * 0.5
    assert faithfulness.template_sentence(varied).startswith("No stage's answers are mostly")
    assert "none repeats" in faithfulness.template_sentence(pd.DataFrame())
    # a model that names no stage (the smoke build's) leaves every center empty
    none = score_answers(["no idea", "unsure"], [n2, n2]).assign(answer=["no idea", "unsure"])
    empty = pd.DataFrame({"dcsm": faithfulness.repeated_answers(none)})
    assert "none repeats" in faithfulness.template_sentence(empty)
