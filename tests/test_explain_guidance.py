"""Tests of probe-guided decoding: the time of each cited event read from where the probe finds
the event in the image tokens; hand-made probabilities and scores, then a tiny trained model."""

import numpy as np
import pandas as pd
import pytest
import torch

from sleepvlm.data.records import EVENT_KINDS
from sleepvlm.explain import guidance, mini, perception
from sleepvlm.explain.mini import MiniError
from test_explain_mini import prepared  # noqa: F401 (a fixture)
from test_explain_perception import token_probe
from test_explain_snapshots import snapshotted  # noqa: F401 (a fixture)

ITEMS = "Evidence: spindle on EEG at 0-5 s; K complex on EEG at 10-15 s; 25-30 s 20-30 s."


@pytest.fixture(scope="module")
def tokenizer():
    return mini.train_tokenizer([ITEMS])


def _probe() -> perception.EventProbe:
    return perception.EventProbe(mini.MiniConfig(), probes={"spindle": None})  # fitted: its name


def _spindle_at_12s(probe: perception.EventProbe) -> np.ndarray:
    """(columns, kinds): a spindle found in the column that shows 12 s, nowhere else; no probe
    for any other kind (NaN)."""
    probabilities = np.full((len(probe.spans), len(EVENT_KINDS)), np.nan)
    probabilities[:, EVENT_KINDS.index("spindle")] = [
        0.9 if a < 12 < b else 0.05 for a, b in probe.spans
    ]
    return probabilities


def test_the_kind_being_cited_is_read_only_where_a_time_comes_next():
    head = "Stage: N2. Rules: N2.spindle, N2.kcomplex. Evidence:"
    assert guidance.kind_being_cited(f"{head} spindle on EEG at") == "spindle"
    assert guidance.kind_being_cited(f"{head} spindle on EEG at 0-5 s; K complex on EEG at") == (
        "kcomplex"
    )
    assert guidance.kind_being_cited("; rapid eye movement on EOG at") == "rem"
    assert guidance.kind_being_cited(f"{head} spindle on EEG at 0-5") is None
    assert guidance.kind_being_cited(f"{head} chin tone low at") is None
    assert guidance.kind_being_cited(f"{head} mystery wave on EEG at") is None


def test_time_tokens_and_the_columns_their_spans_cover(tokenizer):
    times = guidance.time_tokens(tokenizer)
    assert sorted(times.values()) == [(0, 5), (10, 15), (20, 30), (25, 30)]
    assert tokenizer.convert_ids_to_tokens(min(times, key=times.get)) == "0-5"
    cover = perception.span_cover([(0, 5), (10, 20)], [(0, 6), (6, 12), (12, 18)])
    assert cover.tolist() == [[1, 0, 0], [0, 1, 1]]


def _guided(tokenizer, weight: float, probabilities: np.ndarray) -> guidance.GuidedTimes:
    probe = _probe()
    times = guidance.time_tokens(tokenizer)
    ids = sorted(times)
    return guidance.GuidedTimes(
        tokenizer,
        probabilities,
        np.array(ids),
        [times[i] for i in ids],
        perception.span_cover([times[i] for i in ids], probe.spans),
        tokenizer.convert_tokens_to_ids(guidance.AT),
        weight,
    )


def _rows(tokenizer, *texts: str):
    ids = [tokenizer(text)["input_ids"] for text in texts]
    width = max(map(len, ids))
    pad = tokenizer.convert_tokens_to_ids(mini.PAD)
    return torch.tensor([[pad] * (width - len(row)) + row for row in ids])  # left padded


def test_guidance_moves_the_time_to_where_the_probe_finds_the_kind(tokenizer):
    probabilities = _spindle_at_12s(_probe())
    input_ids = _rows(
        tokenizer,
        "Evidence: spindle on EEG at",
        "Evidence: K complex on EEG at",  # no probe for K complexes: left as it is
        "Evidence: spindle on EEG",  # not at a time
    )
    vocab = tokenizer.get_vocab()
    scores = torch.zeros(3, len(tokenizer))
    scores[:, vocab["25-30"]] = 2.0  # the template's time
    scores[:, vocab["10-15"]] = 1.0
    scores[:, vocab["s"]] = 0.5
    guided = _guided(tokenizer, 4.0, np.stack([probabilities] * 3))(input_ids, scores.clone())
    assert guided[0].argmax() == vocab["10-15"]
    assert torch.equal(guided[1:], scores[1:])
    times = list(guidance.time_tokens(tokenizer))
    before, after = scores[0].log_softmax(-1), guided[0].log_softmax(-1)
    others = [i for i in range(len(tokenizer)) if i not in times]
    assert torch.allclose(after[others], before[others])  # the other tokens are left as they were
    assert torch.allclose(after[times].logsumexp(0), before[times].logsumexp(0))
    unguided = _guided(tokenizer, 0.0, np.stack([probabilities] * 3))(input_ids, scores.clone())
    assert torch.equal(unguided, scores)
    with pytest.raises(MiniError, match="2 images' probabilities, the batch has 3 rows"):
        _guided(tokenizer, 4.0, np.stack([probabilities] * 2))(input_ids, scores)


def test_the_times_an_answer_cites_for_each_kind():
    text = "spindle on EEG at 0-5 s; K complex on EEG at 10-15 s; spindle on EEG at 20-30 s."
    assert guidance.times_cited(text, "spindle") == {(0, 5), (20, 30)}
    assert guidance.times_cited(text, "kcomplex") == {(10, 15)}
    assert guidance.times_cited(text, "slow_wave") == set()
    assert guidance.times_cited("spindle on EEG at", "spindle") == set()


def test_a_time_already_cited_for_the_kind_is_not_written_again(tokenizer):
    probabilities = _spindle_at_12s(_probe())
    vocab = tokenizer.get_vocab()
    again = "Evidence: spindle on EEG at 10-15 s; spindle on EEG at"
    other_kind = "Evidence: K complex on EEG at 10-15 s; spindle on EEG at"
    input_ids = _rows(tokenizer, again, other_kind)
    scores = torch.zeros(2, len(tokenizer))
    scores[:, vocab["10-15"]] = 2.0
    guided = _guided(tokenizer, 4.0, np.stack([probabilities] * 2))(input_ids, scores.clone())
    assert guided[0, vocab["10-15"]] == -np.inf  # the probe's best place, already cited
    assert guided[0].argmax() != vocab["10-15"]
    assert guided[1].argmax() == vocab["10-15"]  # cited for another kind: free
    times = list(guidance.time_tokens(tokenizer))
    assert torch.allclose(
        guided[0, times].logsumexp(0), scores[0].log_softmax(-1)[times].logsumexp(0)
    )


def test_a_wide_span_gains_nothing_by_covering_more_columns(tokenizer):
    guided = _guided(tokenizer, 1.0, _spindle_at_12s(_probe())[None])
    row = _rows(tokenizer, "Evidence: spindle on EEG at")[0].tolist()
    bias = dict(zip(guided.time_ids.tolist(), guided.time_bias(0, row), strict=True))
    vocab = tokenizer.get_vocab()
    assert bias[vocab["20-30"]] == pytest.approx(np.log(0.05))  # the mean over its columns
    assert bias[vocab["10-15"]] > bias[vocab["20-30"]]


def test_guidance_needs_time_words_in_the_vocabulary_and_a_weight_of_at_least_zero(tokenizer):
    with pytest.raises(MiniError, match="weights >= 0"):
        guidance.ProbeGuidance(_probe(), -1.0)
    bare = type("Bare", (), {"tokenizer": mini.train_tokenizer([])})()
    with pytest.raises(MiniError, match="time words"):
        guidance.ProbeGuidance(_probe(), 4.0).logits(bare, [])
    assert guidance.ProbeGuidance(_probe(), 4.0).label == (
        "times guided by a probe of the vision tower (weight 4)"
    )


ANSWER = (
    "Stage: N2. Rules: N2.spindle, N2.kcomplex, N1.sem, N3.sw20. Evidence: spindle on EEG at "
    "0-5 s; K complex on EEG at 10-15 s; slow wave on EEG at 20-30 s; slow eye movement on EOG "
    "at 5-10 s; 25-30 s."
)
N2 = "Stage: N2. Rules: N2.spindle, N2.kcomplex. Evidence:"
SPINDLES = "Stage: N2. Rules: N2.spindle. Evidence:"  # K complexes name no rule
SLOW = "Stage: N2. Rules: N1.sem, N3.sw20. Evidence:"


@pytest.fixture(scope="module")
def answer_tokenizer():
    return mini.train_tokenizer([ANSWER, N2, SPINDLES, SLOW])


def _guided_kinds(tokenizer, probabilities: np.ndarray, weight: float = 4.0):
    probe = _probe()
    times = guidance.time_tokens(tokenizer)
    spans = [times[i] for i in sorted(times)]
    cover = perception.span_cover(spans, probe.spans)
    return guidance.GuidedKinds.of(tokenizer, probabilities, spans, cover, weight)


def _found(probe: perception.EventProbe, **kinds: float) -> np.ndarray:
    """:func:`_spindle_at_12s`, with each other kind of ``kinds`` found everywhere at that
    probability."""
    probabilities = _spindle_at_12s(probe)
    for kind, value in kinds.items():
        probabilities[:, EVENT_KINDS.index(kind)] = value
    return probabilities


def test_the_kinds_an_answer_may_cite_are_those_of_its_rules():
    assert guidance.kinds_of_rules(N2) == {"spindle", "kcomplex"}
    assert guidance.kinds_of_rules("Stage: W. Rules: W.eyes. Evidence: eye") == {"blink", "rem"}
    assert guidance.kinds_of_rules("Stage: N2. Rules: N2.cont. Evidence:") == set()
    assert guidance.kinds_of_rules("Stage: N2. Evidence:") == set()


def test_the_next_item_names_the_kind_the_probe_sees_and_not_yet_cited(answer_tokenizer):
    vocab = answer_tokenizer.get_vocab()
    rows = _rows(
        answer_tokenizer,
        N2,  # the spindle at 12 s is the surest event
        f"{N2} spindle on EEG at 10-15 s;",  # cited: the K complexes are what is left
        SPINDLES,  # K complexes name no rule: spindles, guided alone, keep their probability
    )
    guide = _guided_kinds(answer_tokenizer, np.stack([_found(_probe(), kcomplex=0.2)] * 3))
    scores = torch.zeros(3, len(answer_tokenizer))
    scores[:, vocab["K"]] = 1.0  # the model's own choice
    scores[:, vocab["25-30"]] = 0.5  # an item that is no event: left to the model
    guided = guide(rows, scores.clone())
    assert guided[0].argmax() == vocab["spindle"]
    assert guided[1].argmax() == vocab["K"]
    assert guided[1, vocab["K"]] - guided[1, vocab["spindle"]] > 1.0  # 0.2 against 0.05
    assert torch.allclose(guided[2].log_softmax(-1), scores[2].log_softmax(-1))
    kinds = [vocab["spindle"], vocab["K"]]
    for row in guided[:2]:
        before, after = scores[0].log_softmax(-1), row.log_softmax(-1)
        assert torch.allclose(after[kinds].logsumexp(0), before[kinds].logsumexp(0))
        others = [i for i in range(len(answer_tokenizer)) if i not in kinds]
        assert torch.allclose(after[others], before[others])
    two_images = np.stack([_found(_probe(), kcomplex=0.2)] * 2)
    with pytest.raises(MiniError, match="2 images' probabilities, the batch has 3 rows"):
        _guided_kinds(answer_tokenizer, two_images)(rows, scores)


def test_a_kind_of_several_words_is_guided_word_by_word(answer_tokenizer):
    vocab = answer_tokenizer.get_vocab()
    rows = _rows(answer_tokenizer, f"{SLOW} slow", f"{SLOW} slow wave")
    guide = _guided_kinds(
        answer_tokenizer, np.stack([_found(_probe(), slow_wave=0.1, sem=0.7)] * 2)
    )
    scores = torch.zeros(2, len(answer_tokenizer))
    scores[:, vocab["wave"]] = 1.0
    guided = guide(rows, scores.clone())
    assert guided[0].argmax() == vocab["eye"]
    assert torch.equal(guided[1], scores[1])  # the kind is named: its channel is not guided


def test_kinds_are_guided_only_by_a_vocabulary_that_separates_items(tokenizer):
    with pytest.raises(MiniError, match="guide the times only"):
        _guided_kinds(mini.train_tokenizer(["Evidence: spindle on EEG at 0-5 s"]), np.zeros(0))
    assert guidance.ProbeGuidance(_probe(), 4.0, kind_weight=2.0).label == (
        "times guided by a probe of the vision tower (weight 4), kinds too (weight 2)"
    )
    with pytest.raises(MiniError, match=r"weights >= 0, got 4.0 \(kinds -1.0\)"):
        guidance.ProbeGuidance(_probe(), 4.0, kind_weight=-1.0)


def _table(rows):
    columns = ["weight", "dataset", "precision", "comprehensiveness", "ungrounded_share"]
    return pd.DataFrame(rows, columns=columns).assign(epochs=10, kappa=0.7, coherence=1.0)


def test_the_weight_chosen_raises_precision_most_with_comprehensiveness_kept():
    table = _table(
        [
            (0.0, "dcsm", 0.40, 0.50, 0.8),
            (2.0, "dcsm", 0.50, 0.52, 0.7),
            (4.0, "dcsm", 0.55, 0.49, 0.6),  # 0.01 lower: kept
            (8.0, "dcsm", 0.65, 0.40, 0.3),  # more precise, but cites fewer decisive events
            (0.0, "isruc", 0.30, 0.30, 0.8),
            (8.0, "isruc", 0.90, 0.30, 0.1),  # another center's rows do not choose
        ]
    )
    assert guidance.choose_guidance(table, "dcsm") == 4.0
    assert guidance.choose_guidance(table, "dcsm", slack=0.1) == 8.0
    worse = table.assign(precision=lambda t: np.where(t["weight"] > 0, 0.1, t["precision"]))
    assert guidance.choose_guidance(worse, "dcsm") is None
    assert guidance.choose_guidance(table, "shhs") is None
    text = guidance.guidance_text(table[table["weight"].isin([0.0, 4.0])], 4.0, "dcsm")
    assert text.startswith("Chosen on DCSM's held-out epochs: weight 4.")
    assert "DCSM precision 0.40 → 0.55, ungrounded share 80% → 60%" in text
    assert "ISRUC" not in text  # not measured at weight 4
    assert "no weight raised" in guidance.guidance_text(table, None, "dcsm")
    kinds = table.rename(columns={"weight": guidance.KIND_WEIGHT})
    assert guidance.choose_guidance(kinds, "dcsm", column=guidance.KIND_WEIGHT) == 4.0
    text = guidance.guidance_text(kinds, 4.0, "dcsm", guidance.KIND_WEIGHT)
    assert text.startswith("Chosen on DCSM's held-out epochs: kind weight 4.")
    assert "no kind weight raised" in guidance.guidance_text(kinds, None, "dcsm", "kind_weight")


def test_the_kinds_setting_names_its_answers_and_its_record_file(tmp_path):
    from sleepvlm.explain import faithfulness
    from sleepvlm.metrics import KIND_GUIDANCE, PROBE_GUIDANCE, write_result

    setting = {PROBE_GUIDANCE: 16.0, KIND_GUIDANCE: 8.0}
    assert faithfulness.answers_label(**setting) == (
        "times guided by a probe of the vision tower (weight 16); kinds guided by it too (weight 8)"
    )
    record = {"dataset": "dcsm", "modality": "image", "model": "m", "prompt": "expert"}
    record = {**record, "summary": "faithfulness", "manifest_hash": "0123456789", **setting}
    path = write_result(record, tmp_path)
    assert path.name.endswith("__probe_guidance-16__kind_guidance-8.json")
    assert faithfulness.summary_label(record) == faithfulness.answers_label(**setting)


def test_guided_answers_keep_the_greedy_stage_and_rules(snapshotted):  # noqa: F811
    from sleepvlm.explain import contrast, snapshots

    folder, data = snapshotted
    model = mini.MiniModel.load(folder)
    probe = token_probe(model, data)
    pngs, truth = snapshots.held_out_inputs({"d": data}, model.image_options(), 1, 6)["d"]
    greedy = model.generate(pngs)
    assert model.generate(pngs, guide=guidance.ProbeGuidance(probe, 0.0)) == greedy
    pulled = model.generate(pngs, guide=guidance.ProbeGuidance(probe, 50.0))
    before_evidence = [text.split(mini.EVIDENCE)[0] for text in greedy]
    assert [text.split(mini.EVIDENCE)[0] for text in pulled] == before_evidence
    table = guidance.guidance_table(model, probe, {"d": (pngs, truth)}, (0.0, 50.0))
    assert table["weight"].tolist() == [0.0, 50.0] and table["epochs"].tolist() == [6, 6]
    assert table["kappa"].nunique() == 1  # the stages are greedy decoding's at every weight
    kinds = guidance.kind_table(model, probe, {"d": (pngs, truth)}, 50.0, (50.0,))
    assert kinds[guidance.KIND_WEIGHT].tolist() == [0.0, 50.0]
    times_alone = guidance.ProbeGuidance(probe, 50.0, kind_weight=0.0)
    assert model.generate(pngs, guide=times_alone) == pulled
    assert kinds["kappa"].nunique() == 1
    both = model.generate(pngs, guide=guidance.ProbeGuidance(probe, 50.0, kind_weight=50.0))
    assert [text.split(mini.EVIDENCE)[0] for text in both] == before_evidence
    with pytest.raises(MiniError, match="separate levers"):
        model.generate(
            pngs,
            contrast=contrast.Contrast("blank", 1.0),
            guide=guidance.ProbeGuidance(probe, 1.0),
        )
