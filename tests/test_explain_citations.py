"""Tests of citing only what SleepVLM-mini is sure of: hand-made answers with hand-made token
probabilities against the hand-made N2 epoch of the faithfulness tests."""

import numpy as np
import pandas as pd
import pytest

from sleepvlm.explain import citations, faithfulness
from sleepvlm.explain.annotations import (
    AnnotationError,
    EpochAnnotation,
    answer_text,
    evidence_items,
    parse_answer,
)
from sleepvlm.explain.mini import ScoredAnswer
from sleepvlm.params import EXTERNAL, WITHIN
from test_explain_faithfulness import KCOMPLEX, RUN, SPINDLE

N2 = EpochAnnotation(
    "d", "s", "n", 7, "N2", ["N2.spindle", "N2.kcomplex"], [SPINDLE, KCOMPLEX], "truth"
)
RIGHT = "spindle on EEG at 12-13 s"
WRONG = "K complex on EEG at 5-6 s"
TEXT = f"Stage: N2. Rules: N2.spindle, N2.kcomplex. Evidence: {RIGHT}; {WRONG}."


def _scored(text: str, unsure: dict[str, float]) -> ScoredAnswer:
    """``text`` written with certainty except the words of ``unsure`` (item: probability)."""
    confidence = np.ones(len(text))
    for words, probability in unsure.items():
        start = text.index(words)
        confidence[start : start + len(words)] = probability
    return ScoredAnswer(text, confidence)


def test_evidence_items_are_split_as_the_parser_splits_them():
    section, spans = evidence_items(TEXT)
    assert TEXT[section:].startswith("Evidence:")
    assert [TEXT[a:b].strip() for a, b in spans] == [RIGHT, WRONG]
    assert evidence_items("Stage: W.") == (None, [])


def test_unsure_items_are_left_out_and_sure_ones_kept():
    answer = _scored(TEXT, {"5-6": 0.2, "12": 0.6})
    assert citations.cite_confident(answer, 0.0) == TEXT
    assert citations.cite_confident(answer, 0.5) == (
        f"Stage: N2. Rules: N2.spindle, N2.kcomplex. Evidence: {RIGHT}."
    )
    nothing_left = citations.cite_confident(answer, 0.7)
    assert nothing_left == "Stage: N2. Rules: N2.spindle, N2.kcomplex."
    assert parse_answer(nothing_left).claims == [] and parse_answer(nothing_left).stage == "N2"


def test_the_curve_trades_precision_for_comprehensiveness():
    answers = [_scored(TEXT, {"5-6": 0.2, "12": 0.6}), ScoredAnswer.certain(answer_text(N2))]
    curve = citations.confidence_curve(answers, [N2, N2], thresholds=[0.0, 0.5, 0.7])
    assert curve["precision"].tolist() == [0.75, 1.0, 1.0]  # (0.5 + 1) / 2, then 1
    assert curve["ungrounded_share"].tolist() == [0.5, 0.0, 0.0]
    assert curve["comprehensiveness"].is_monotonic_decreasing
    assert curve["answers_citing"].tolist() == [1.0, 1.0, 0.5]
    assert curve["claims_per_answer"].tolist() == [2.0, 1.5, 1.0]
    assert citations.choose_min_confidence(curve) == 0.5


def test_no_threshold_is_chosen_when_none_meets_the_goals():
    curve = pd.DataFrame(
        {"min_confidence": [0.0, 0.5], "precision": [0.5, 0.9], "ungrounded_share": [0.5, 0.3]}
    )
    assert citations.choose_min_confidence(curve) is None
    assert citations.choose_min_confidence(curve, goals=("precision",)) == 0.5


def test_cut_and_contrasted_answers_are_summaries_of_their_own_beside_the_answers_as_written(
    tmp_path,
):
    from sleepvlm.report import load_summaries, rationale_table

    answers = [_scored(TEXT, {"5-6": 0.2})]
    as_written = citations.score_confident(answers, [N2], 0.0)
    written = faithfulness.write_faithfulness(RUN, as_written, tmp_path)
    cut = citations.score_confident(answers, [N2], 0.3)
    assert cut["answer"].tolist() == [citations.cite_confident(answers[0], 0.3)]
    cut_path = faithfulness.write_faithfulness(RUN, cut, tmp_path, min_claim_confidence=0.3)
    assert cut_path != written and cut_path.name.endswith("min_claim_confidence-0.3.json")
    pulled = "against the blank image, weight 4"
    pulled_path = faithfulness.write_faithfulness(RUN, as_written, tmp_path, contrast=pulled)
    assert pulled_path.name.endswith("contrast-against-the-blank-image-weight-4.json")
    summaries = load_summaries(tmp_path, faithfulness.FAITHFULNESS)
    goals = faithfulness.goal_table(summaries)
    cut_label = "items with confidence ≥ 0.3"
    assert set(goals["answers"]) == {"as written", cut_label, f"decoded {pulled}"}
    precision = goals[goals["metric"] == "precision"].set_index("answers")["measured"]
    assert precision["as written"] == 0.5 and precision[cut_label] == 1.0
    sentence = citations.cut_sentence(goals, "dcsm", cut_label)
    assert (
        "precision from 0.50 to 1.00" in sentence and "ungrounded share from 100% to 0%" in sentence
    )
    same = citations.cut_sentence(goals, "dcsm", faithfulness.answers_label(None, pulled))
    assert "precision from 0.50 to 0.50" in same
    only_written = goals[goals["answers"] == "as written"]
    assert "no summary of DCSM with items" in citations.cut_sentence(
        only_written, "dcsm", cut_label
    )
    columns = rationale_table(summaries).columns
    assert "sleepvlm-mini, DCSM (external), items with confidence ≥ 0.3" in columns
    assert f"sleepvlm-mini, DCSM (external), decoded {pulled}" in columns
    assert "sleepvlm-mini, DCSM (external)" in columns


def test_a_build_keeps_one_record_per_setting_and_replaces_an_earlier_builds_choice(tmp_path):
    from sleepvlm.metrics import CONTRAST, MIN_CLAIM_CONFIDENCE
    from sleepvlm.report import load_summaries

    answers = [_scored(TEXT, {"5-6": 0.2})]
    other_run = {**RUN, "manifest_hash": "ffff000011112222"}
    faithfulness.write_faithfulness(RUN, citations.score_confident(answers, [N2], 0.0), tmp_path)
    faithfulness.write_faithfulness(
        other_run, citations.score_confident(answers, [N2], 0.5), tmp_path, min_claim_confidence=0.5
    )
    faithfulness.write_faithfulness(
        RUN, citations.score_confident(answers, [N2], 0.0), tmp_path, contrast="x"
    )

    def on_file():
        found = load_summaries(tmp_path, faithfulness.FAITHFULNESS)
        return sorted(
            (
                row["manifest_hash"][:4],
                faithfulness.answers_label(row.get(MIN_CLAIM_CONFIDENCE), row.get(CONTRAST)),
            )
            for _, row in found.iterrows()
        )

    runs = {"dcsm": RUN}
    for threshold in (0.5, 0.3):  # a rebuild that chooses 0.3 replaces its own earlier 0.5
        cut = {"dcsm": citations.score_confident(answers, [N2], threshold)}
        faithfulness.write_setting(runs, cut, tmp_path, setting={MIN_CLAIM_CONFIDENCE: threshold})
    assert on_file() == [
        ("abcd", "as written"),
        ("abcd", "decoded x"),
        ("abcd", "items with confidence ≥ 0.3"),
        ("ffff", "items with confidence ≥ 0.5"),  # another run's record is not this build's
    ]
    faithfulness.write_setting(runs, {}, tmp_path, setting={CONTRAST: None})
    assert ("abcd", "decoded x") not in on_file()  # none chosen: the earlier choice goes
    with pytest.raises(ValueError, match="holds None"):
        faithfulness.write_setting(runs, cut, tmp_path, setting={CONTRAST: None})
    with pytest.raises(ValueError, match="not one of"):
        faithfulness.write_setting(runs, {}, tmp_path, setting={"temperature": 1.0})
    with pytest.raises(ValueError, match="not one of"):
        faithfulness.write_setting(runs, {}, tmp_path, setting={})
    with pytest.raises(AnnotationError, match="no run's record for \\['shhs'\\]"):
        faithfulness.write_setting(
            runs, {"shhs": cut["dcsm"]}, tmp_path, setting={MIN_CLAIM_CONFIDENCE: 0.3}
        )


def test_a_setting_of_two_fields_is_kept_apart_from_either_field_alone(tmp_path):
    from sleepvlm.metrics import MIN_PROBE_SUPPORT, PROBE_GUIDANCE
    from sleepvlm.report import load_summaries

    answers = [_scored(TEXT, {"5-6": 0.2})]
    cut = {"dcsm": citations.score_confident(answers, [N2], 0.3)}
    runs = {"dcsm": RUN}
    faithfulness.write_setting(runs, cut, tmp_path, setting={MIN_PROBE_SUPPORT: 0.5})
    both = {PROBE_GUIDANCE: 4.0, MIN_PROBE_SUPPORT: 0.4}
    path = faithfulness.write_setting(runs, cut, tmp_path, setting=both)[0]
    assert path.name.endswith("probe_guidance-4__min_probe_support-0.4.json")

    def labels():
        found = load_summaries(tmp_path, faithfulness.FAITHFULNESS)
        return sorted(faithfulness.summary_label(row) for _, row in found.iterrows())

    cut_alone = faithfulness.answers_label(min_probe_support=0.5)
    guided_cut = (
        "times guided by a probe of the vision tower (weight 4); "
        "items a probe of the vision tower supports at ≥ 0.4"
    )
    assert labels() == [cut_alone, guided_cut]
    faithfulness.write_setting(runs, cut, tmp_path, setting={**both, PROBE_GUIDANCE: 2.0})
    assert len(labels()) == 2 and cut_alone in labels()  # the weight-4 record gave way
    faithfulness.write_setting(runs, {}, tmp_path, setting={PROBE_GUIDANCE: None})
    assert len(labels()) == 2  # no record of the guidance alone: nothing to take away
    faithfulness.write_setting(runs, {}, tmp_path, setting={**both, PROBE_GUIDANCE: None})
    assert labels() == [cut_alone]
    with pytest.raises(ValueError, match="not among the summary variants"):
        faithfulness.faithfulness_record(RUN, cut["dcsm"], temperature=1.0)


def test_setting_goals_are_this_builds_answers_as_written_and_in_one_setting(tmp_path):
    from sleepvlm.report import load_summaries

    answers = [_scored(TEXT, {"5-6": 0.2})]
    other_run = {**RUN, "manifest_hash": "ffff000011112222"}
    other_model = {**RUN, "model": "gpt-4o"}
    for run in (RUN, other_run, other_model):
        faithfulness.write_faithfulness(
            run, citations.score_confident(answers, [N2], 0.0), tmp_path
        )
    cut = citations.score_confident(answers, [N2], 0.3)
    faithfulness.write_faithfulness(RUN, cut, tmp_path, min_claim_confidence=0.3)
    faithfulness.write_faithfulness(RUN, cut, tmp_path, min_claim_confidence=0.6)
    summaries = load_summaries(tmp_path, faithfulness.FAITHFULNESS)
    label = faithfulness.answers_label(0.3)
    goals = faithfulness.setting_goals(summaries, [RUN["manifest_hash"]], label, "shhs")
    assert sorted(set(goals["answers"])) == ["as written", label]
    assert len(goals) == 2 * len(faithfulness.FAITHFULNESS_GOALS)  # one model, one manifest
    assert set(goals["setting"]) == {EXTERNAL} and set(goals["dataset"]) == {"dcsm"}
    assert faithfulness.goals_met_text(goals, label) == "3 of 4"  # all but comprehensiveness
    assert faithfulness.goals_met_text(goals, "as written") == "1 of 4"  # coherence
    within = faithfulness.setting_goals(summaries, [RUN["manifest_hash"]], label, "dcsm")
    assert set(within["setting"]) == {WITHIN}
    assert faithfulness.goals_met_text(goals, faithfulness.answers_label(0.9)) == "none measured"
    empty = faithfulness.setting_goals(summaries.iloc[:0], [], label, "dcsm")
    assert empty.empty and faithfulness.goals_met_text(empty, label) == "none measured"


def test_record_setting_scores_the_chosen_nights_writes_them_and_returns_their_goals(tmp_path):
    from sleepvlm.metrics import MIN_CLAIM_CONFIDENCE

    answers = [_scored(TEXT, {"5-6": 0.2})]
    faithfulness.write_faithfulness(RUN, citations.score_confident(answers, [N2], 0.0), tmp_path)
    frame = pd.DataFrame({"subject": ["s1", "s1", "s2", "s3"], "night": ["1", "1", "1", "2"]})
    night_frames = {("dcsm", "image", "sleepvlm-mini"): frame}
    asked = []

    def score(dataset, nights):
        asked.append((dataset, nights))
        return citations.score_confident(answers, [N2], 0.3)

    label = faithfulness.answers_label(0.3)
    kept = dict(answers=label, train_dataset="dcsm", max_nights=2, seed=1)
    goals = faithfulness.record_setting(
        {"dcsm": RUN}, night_frames, score, tmp_path, setting={MIN_CLAIM_CONFIDENCE: 0.3}, **kept
    )
    assert asked == list(faithfulness.scored_nights(night_frames, 2, seed=1).items())
    assert len(asked[0][1]) == 2  # two of the three nights, as score_run chooses them
    assert faithfulness.goals_met_text(goals, label) == "3 of 4"
    pivot = faithfulness.goal_pivot(goals)
    assert pivot.loc[(WITHIN, "dcsm", label), "precision >= 0.75"] == 1.0
    assert pivot.loc[(WITHIN, "dcsm", "as written"), "precision >= 0.75"] == 0.5
    asked.clear()
    nothing = faithfulness.record_setting(
        {"dcsm": RUN}, night_frames, score, tmp_path, setting={MIN_CLAIM_CONFIDENCE: None}, **kept
    )
    assert asked == []  # nothing chosen: nothing scored, and the earlier choice is gone
    assert set(nothing["answers"]) == {"as written"}
    assert faithfulness.goals_met_text(nothing, label) == "none measured"


def test_remembered_answers_are_decoded_once_per_model_dataset_and_nights():
    from types import SimpleNamespace

    calls = []

    def answers(model, prepared, nights):
        calls.append((model, prepared.dataset, list(nights)))
        return [ScoredAnswer.certain(TEXT)], [N2]

    recall = citations.remembered(answers)
    dcsm, shhs = SimpleNamespace(dataset="dcsm"), SimpleNamespace(dataset="shhs")
    first = recall("m", dcsm, [("s1", "1")])
    assert recall("m", SimpleNamespace(dataset="dcsm"), [("s1", "1")]) is first
    recall("m", dcsm, [("s2", "1")])
    recall("m", shhs, [("s1", "1")])
    recall("other model", dcsm, [("s1", "1")])
    assert len(calls) == 4


def test_error_texts_name_the_shares_and_say_when_nothing_was_cited():
    scored = faithfulness.score_answers([TEXT], [N2])
    texts = faithfulness.error_texts(faithfulness.claim_table(scored), token_s=6.0)
    assert set(texts) == set(faithfulness.ERROR_TEXTS)
    assert texts["share_wrong_time"] == "50%" and texts["top_error"] == "wrong time"
    assert texts["wrong_time_median_s"] == f"{20.3 - 6:.1f}"
    assert texts["precision_at_epoch"] == "1.00"
    empty = faithfulness.error_texts(faithfulness.claim_table(scored.iloc[:0]), token_s=6.0)
    assert set(empty.values()) == {"— (no cited events)"}


def test_cuts_text_sets_what_each_cut_keeps_at_its_chosen_threshold():
    kept = pd.DataFrame(
        {
            "min_confidence": [0.0, 0.5],
            "precision": [0.5, 0.9],
            "ungrounded_share": [0.5, 0.1],
            "comprehensiveness": [0.6, 0.3],
        }
    )
    never = kept.assign(ungrounded_share=[0.5, 0.4])
    text = citations.cuts_text({"tokens": kept, "probe": never, "none": pd.DataFrame()})
    assert text == (
        "On the validation nights, tokens at 0.5: comprehensiveness 0.30, precision 0.90; "
        "probe: no threshold meets the goals; none: no threshold meets the goals."
    )
