"""Tests of the MASS-EX-style annotations: rules and evidence per epoch (hand-made detections,
a short simulated night, a prepared store), the JSONL file, and the answer format and parser."""

import json

import numpy as np
import pandas as pd
import pytest

from sleepvlm.data.dcsm import write_dcsm
from sleepvlm.data.records import STAGES
from sleepvlm.data.simulate import simulate_night
from sleepvlm.explain import annotations as ann_module
from sleepvlm.explain.annotations import (
    FALLBACK_RULE,
    MAX_EVIDENCE,
    RULE_EVIDENCE,
    AnnotationError,
    EpochAnnotation,
    Evidence,
    annotate_night,
    annotate_store,
    answer_text,
    decisive_evidence,
    parse_answer,
    read_jsonl,
    select,
    supported_stages,
    write_jsonl,
)
from sleepvlm.metrics import parse_stage
from sleepvlm.prepare import prepare_dataset
from sleepvlm.rules.evidence import Detection
from sleepvlm.rules.table import RULES


def detection(met, events=(), label="test/s1/n1") -> Detection:
    """A Detection whose epoch k meets the rules in ``met[k]``; ``events`` are detected
    (kind, onset, duration) on the EEG."""
    ids = np.arange(len(met))
    criteria = pd.DataFrame(
        {r: pd.array([r in m for m in met], dtype="boolean") for r in RULES}, index=ids
    )
    epochs = pd.DataFrame({"onset": 30.0 * ids}, index=ids)
    ev = pd.DataFrame(
        [(k, "EEG", on, dur, 120.0) for k, on, dur in events],
        columns=["kind", "channel", "onset", "duration", "amplitude"],
    )
    return Detection(label, epochs, ev, criteria)


def truth(*rows) -> pd.DataFrame:
    """True events (kind, channel, onset, duration, amplitude)."""
    return pd.DataFrame(rows, columns=["kind", "channel", "onset", "duration", "amplitude"])


def one(stage, rules, evidence=(), source="truth", epoch=0) -> EpochAnnotation:
    return EpochAnnotation("d", "s", "n", epoch, stage, list(rules), list(evidence), source)


# --- rules and evidence on hand-made detections -----------------------------------------------


def test_rules_are_those_met_for_the_scored_stage_with_detected_evidence():
    det = detection(
        [{"N2.spindle", "R.atonia"}, {"N2.cont", "R.atonia"}, set()],
        events=[("spindle", 3.0, 1.0), ("spindle", 20.0, 0.8), ("blink", 62.0, 0.4)],
    )
    first, second, third = annotate_night(det, ["N2", "N2", "W"])
    assert first.rules == ["N2.spindle"] and first.source == "detected"
    # the spindle in the first half comes first; the one in the second half is kept after it
    assert first.evidence == [
        Evidence("spindle", "eeg", 3.0, 4.0),
        Evidence("spindle", "eeg", 20.0, 20.8),
    ]
    assert second.rules == ["N2.cont"] and second.evidence == []
    assert third.rules == [FALLBACK_RULE]
    assert third.other_events == [Evidence("blink", "eog", 2.0, 2.4)]


def test_context_rules_follow_the_previous_scored_stage():
    det = detection(
        [
            {"R.rem", "R.atonia"},
            {"R.atonia"},
            {"arousal", "R.arousal_end"},
            {"N2.spindle"},
            {"arousal", "N2.arousal_end"},
        ],
        events=[("arousal", 61.0, 4.0), ("arousal", 125.0, 5.0), ("rem", 5.0, 0.3)],
    )
    stages = ["REM", "REM", "N1", "N2", "N1"]
    rules = [a.rules for a in annotate_night(det, stages)]
    assert rules == [
        ["R.rem", "R.atonia"],
        ["R.atonia", "R.cont"],
        ["R.arousal_end"],
        ["N2.spindle"],
        ["N2.arousal_end", "arousal"],
    ]


def test_true_events_decide_counting_rules_and_give_the_evidence():
    # the detector saw no spindle in epoch 1, the simulator drew one at 35.2 s
    det = detection([set(), set()], events=[("kcomplex", 40.0, 1.0)])
    events = truth(
        ("spindle", "C4", 35.2, 0.9, 30.0),
        ("twitch", "CHIN", 50.0, 0.2, 10.0),
        ("snore", "MIC", 40.0, 1.0, 5.0),  # a kind the annotations do not know: left out
    )
    a = annotate_night(det, ["N1", "N2"], events, roles={"eeg": "C4", "emg": "CHIN"})[1]
    assert a.source == "truth" and a.rules == ["N2.spindle"]
    assert a.evidence == [Evidence("spindle", "eeg", 5.2, 6.1)]
    assert a.other_events == [Evidence("twitch", "emg", 20.0, 20.2)]


def test_k_complexes_with_an_arousal_and_small_slow_waves_are_not_evidence():
    det = detection([{"N3.sw20"}, set()])
    events = truth(
        ("slow_wave", "C4", 2.0, 1.0, 120.0),
        ("slow_wave", "C4", 5.0, 1.0, 40.0),  # under the N3 amplitude
        ("kcomplex", "C4", 33.0, 1.0, 150.0),
        ("arousal", "C4", 34.5, 5.0, 20.0),  # starts 0.5 s after the K complex
    )
    n3, n2 = annotate_night(det, ["N3", "N2"], events)
    assert n3.evidence == [Evidence("slow_wave", "eeg", 2.0, 3.0)]
    assert "N2.kcomplex" not in n2.rules


def test_every_rule_supports_its_stage_and_unknown_rules_are_refused():
    assert supported_stages("N2.arousal_end") == ("N1",)
    assert "REM" not in supported_stages("R.arousal_end")
    assert supported_stages("arousal") == STAGES
    with pytest.raises(AnnotationError, match="unknown rule ID 'N9.magic'"):
        supported_stages("N9.magic")


def test_bad_annotations_raise_clear_errors():
    with pytest.raises(AnnotationError, match=r"d/s/n epoch 0: unknown rule ID\(s\) \['N2.foo'\]"):
        one("N2", ["N2.foo"])
    with pytest.raises(AnnotationError, match="stage 'MOVE'"):
        one("MOVE", ["W.alpha"])
    with pytest.raises(AnnotationError, match="within 0-30 s"):
        one("N2", ["N2.spindle"], [Evidence("spindle", "eeg", 29.0, 31.0)])
    with pytest.raises(AnnotationError, match="unknown kind or role"):
        one("N2", ["N2.spindle"], [Evidence("spindel", "eeg", 1.0, 2.0)])
    with pytest.raises(AnnotationError, match="needs its stages"):
        annotate_night(detection([set()]))
    with pytest.raises(AnnotationError, match="no epoch has both"):
        annotate_night(detection([set()]), {5: "N2"})


# --- a short simulated night --------------------------------------------------------------------


@pytest.fixture(scope="module")
def night():
    rec = simulate_night("dcsm", 3, hours=0.5)
    return rec, annotate_night(rec)


def test_simulated_n2_epochs_cite_the_true_spindles_and_k_complexes(night):
    rec, annotations = night
    assert [a.stage for a in annotations] == [str(s) for s in rec.stages]
    assert {a.source for a in annotations} == {"truth"}
    n2 = [a for a in annotations if a.stage == "N2"]
    cited = {e.kind for a in n2 for e in a.evidence}
    assert {"spindle", "kcomplex"} <= cited
    assert sum("N2.spindle" in a.rules for a in n2) >= 5
    ev = rec.events
    for a in n2:
        for e in a.evidence:
            start, end = 30 * a.epoch + e.start_s, 30 * a.epoch + e.end_s
            same = ev[(ev["kind"] == e.kind) & (ev["onset"] <= start + 0.01)]
            assert ((same["onset"] + same["duration"]) >= end - 0.01).any(), (a.epoch, e)


def test_rules_and_evidence_agree_on_the_simulated_night(night):
    _, annotations = night
    for a in annotations:
        assert all(a.stage in supported_stages(r) for r in a.rules), (a.epoch, a.rules)
        kinds = {k for r in a.rules for k in RULE_EVIDENCE[r]}
        assert {e.kind for e in a.evidence} <= kinds


def test_jsonl_round_trip_and_errors_name_file_and_line(night, tmp_path):
    _, annotations = night
    path = write_jsonl(annotations, tmp_path / "night.jsonl")
    assert read_jsonl(path) == annotations
    assert len(path.read_text().splitlines()) == len(annotations)

    bad = tmp_path / "bad.jsonl"
    good = json.dumps(annotations[0].to_dict())
    bad.write_text(good + "\n{not json\n")
    with pytest.raises(AnnotationError, match=r"bad.jsonl, line 2: not an epoch annotation"):
        read_jsonl(bad)
    data = annotations[0].to_dict() | {"rules": ["W.teleport"]}
    bad.write_text(good + "\n\n" + json.dumps(data) + "\n")
    with pytest.raises(AnnotationError, match=r"line 3: .*unknown rule ID.*W.teleport"):
        read_jsonl(bad)
    with pytest.raises(AnnotationError, match="no annotation file"):
        read_jsonl(tmp_path / "missing.jsonl")


# --- answers --------------------------------------------------------------------------------------


def test_answer_text_format():
    a = one(
        "N2",
        ["N2.spindle", "N2.kcomplex"],
        [Evidence("spindle", "eeg", 12.2, 13.1), Evidence("kcomplex", "eeg", 20.3, 21.0)],
    )
    assert answer_text(a) == (
        "Stage: N2. Rules: N2.spindle, N2.kcomplex. "
        "Evidence: spindle on EEG at 12-14 s; K complex on EEG at 20-21 s."
    )
    background = one("N1", ["N1.lamf"])
    assert answer_text(background) == (
        "Stage: N1. Rules: N1.lamf. Evidence: low-amplitude mixed-frequency EEG."
    )


def test_answers_cite_the_most_decisive_events_first_and_at_most_three():
    rems = [Evidence("rem", "eog", t, t + 0.2) for t in (2.0, 6.0, 9.0, 14.0)]
    a = one(
        "REM", ["R.rem", "R.atonia", "R.sawtooth"], [*rems, Evidence("sawtooth", "eeg", 20, 22)]
    )
    cited = decisive_evidence(a)
    assert len(cited) == MAX_EVIDENCE
    assert cited == [rems[0], Evidence("sawtooth", "eeg", 20, 22), rems[1]]
    assert answer_text(a).endswith("rapid eye movement on EOG at 6-7 s; low chin EMG tone.")


@pytest.mark.parametrize("stage", STAGES)
def test_answer_text_round_trips_through_the_parser_for_every_stage(stage):
    examples = {
        "W": (["W.alpha", "W.eyes"], [Evidence("blink", "eog", 4.1, 4.5)]),
        "N1": (["N1.vertex", "N1.sem"], [Evidence("vertex", "eeg", 7.0, 7.5)]),
        "N2": (["N2.kcomplex"], [Evidence("kcomplex", "eeg", 0.0, 0.8)]),
        "N3": (["N3.sw20"], [Evidence("slow_wave", "eeg", t, t + 1.1) for t in (1, 5, 9, 15)]),
        "REM": (["R.atonia", "R.cont"], []),
    }
    rules, evidence = examples[stage]
    a = one(stage, rules, evidence)
    text = answer_text(a)
    parsed = parse_answer(text)
    assert parse_stage(text) == parsed.stage == stage
    assert parsed.rules == rules
    assert [(c.kind, c.role) for c in parsed.claims] == [
        (e.kind, e.role) for e in decisive_evidence(a)
    ]
    for claim, event in zip(parsed.claims, decisive_evidence(a), strict=True):
        assert claim.start_s <= event.start_s and claim.end_s >= event.end_s
    assert parsed.unparsed == []


def test_free_text_answers_of_other_models_are_parsed():
    p = parse_answer("This looks like N2 because of a spindle at about 12 s")
    assert p.stage == "N2" and p.rules == []
    assert [(c.kind, c.role, c.start_s, c.end_s) for c in p.claims] == [("spindle", "eeg", 12, 12)]

    p = parse_answer(
        "Stage N2: a K-complex around 20 s and sleep spindles at 4-5 s and 17.3–18.1 s; "
        "no arousals. REMs between 3 and 5 seconds, low chin tone; sawtooth waves from 10 to "
        "12 s on the EEG; alpha throughout; slow waves lasting 1.2 s at 3-4 s."
    )
    got = [(c.kind, c.role, c.start_s, c.end_s) for c in p.claims]
    assert got == [
        ("kcomplex", "eeg", 20, 20),
        ("spindle", "eeg", 4, 5),
        ("spindle", "eeg", 17.3, 18.1),
        ("rem", "eog", 3, 5),
        ("sawtooth", "eeg", 10, 12),
        ("alpha", "eeg", 0, 30),
        ("slow_wave", "eeg", 3, 4),
    ]
    assert p.unparsed == []


def test_parser_reports_rule_ids_and_what_it_could_not_check():
    p = parse_answer(
        "Stage: N2. Rules: N2.spindle, X.bogus. Evidence: spindle on EOG at 12-13 s; "
        "something odd; a K complex."
    )
    assert p.rules == ["N2.spindle", "X.bogus"]
    assert [(c.kind, c.role) for c in p.claims] == [("spindle", "eog")]
    assert p.unparsed == ["something odd", "a K complex"]
    free = parse_answer("Per W.alpha and N2.spindle (e.g. a spindle) it is W.")
    assert free.rules == ["W.alpha", "N2.spindle"] and free.stage == "W"
    assert parse_answer(None) == parse_answer("") == ann_module.ParsedAnswer(None, [], [], [])


# --- a prepared store ---------------------------------------------------------------------------


@pytest.fixture
def prepared(monkeypatch, tmp_path):
    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    recs = [simulate_night("dcsm", s, hours=0.5) for s in (3, 0, 1)]
    for rec in recs:
        write_dcsm(rec, tmp_path / "dcsm")
    return prepare_dataset("dcsm", data_dir=tmp_path / "dcsm"), recs


def test_store_annotations_use_true_events_and_are_cached(prepared, monkeypatch):
    ready, recs = prepared
    rec = recs[0]
    night = ready.manifest.loc[ready.manifest["subject"] == rec.subject, "night"].iloc[0]
    found = annotate_store(ready, [(rec.subject, night)])
    assert len(found) == (ready.manifest["subject"] == rec.subject).sum()
    assert {a.source for a in found} == {"truth"}
    ev = rec.events
    onsets = ready.manifest.set_index(["subject", "epoch"])["onset"]
    for a in found:
        for e in a.evidence:
            start = onsets[(a.subject, a.epoch)] + e.start_s
            same = ev[(ev["kind"] == e.kind) & (ev["onset"] <= start + 0.01)]
            assert ((same["onset"] + same["duration"]) >= start).any(), (a.epoch, e)

    def no_rerun(*args, **kwargs):
        raise AssertionError("annotations should come from the cache")

    monkeypatch.setattr(ann_module, "annotate_night", no_rerun)
    assert annotate_store(ready, [(rec.subject, night)]) == found

    sample = ready.manifest[ready.manifest["subject"] == rec.subject].iloc[[5, 2]]
    assert [a.epoch for a in select(found, sample)] == sample["epoch"].tolist()
    with pytest.raises(AnnotationError, match="have no annotation"):
        select(found, ready.manifest)
    with pytest.raises(AnnotationError, match="not in the store"):
        annotate_store(ready, [("nobody", "1")])


def test_event_times_at_a_coarser_step_cover_the_event():
    spindle = Evidence("spindle", "eeg", 12.2, 13.1)
    assert spindle.text() == "spindle on EEG at 12-14 s"
    assert spindle.text(5) == "spindle on EEG at 10-15 s"
    assert Evidence("spindle", "eeg", 13.5, 16.2).text(5) == "spindle on EEG at 10-20 s"
    assert Evidence("blink", "eog", 29.6, 30.0).text(5) == "eye blink on EOG at 25-30 s"


def test_a_coarse_answer_cites_two_events_of_one_segment_once():
    spindles = [Evidence("spindle", "eeg", 11.0, 12.0), Evidence("spindle", "eeg", 13.0, 14.0)]
    n2 = EpochAnnotation("d", "s", "n", 0, "N2", ["N2.spindle"], spindles, "truth")
    assert answer_text(n2).count("spindle on EEG") == 2
    assert answer_text(n2, 5) == (
        "Stage: N2. Rules: N2.spindle. Evidence: spindle on EEG at 10-15 s."
    )
