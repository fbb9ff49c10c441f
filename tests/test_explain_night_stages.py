"""Tests of the stages read over the night: transitions counted per night, Viterbi on hand-made
probabilities, nights decoded apart, and a tiny trained model's stage words read and fixed."""

import numpy as np
import pandas as pd
import pytest

from sleepvlm.data.records import STAGES
from sleepvlm.explain import citations, contrast, faithfulness, night_stages
from sleepvlm.explain.annotations import EpochAnnotation
from sleepvlm.explain.mini import MiniError, MiniModel, ScoredAnswer
from sleepvlm.metrics import NIGHT_STAGES, parse_stage, write_result
from sleepvlm.params import EXTERNAL, WITHIN
from test_explain_mini import prepared  # noqa: F401 (a fixture)
from test_explain_snapshots import snapshotted  # noqa: F401 (a fixture)

W, N1, N2, N3, REM = range(len(STAGES))


def _manifest(nights: dict[str, list[str]]) -> pd.DataFrame:
    rows = [
        {"subject": subject, "night": "1", "epoch": epoch, "stage": stage}
        for subject, stages in nights.items()
        for epoch, stage in enumerate(stages)
    ]
    return pd.DataFrame(rows).sample(frac=1, random_state=0)  # rows out of order


def test_transitions_are_counted_within_each_night_in_epoch_order():
    manifest = _manifest({"a": ["W", "W", "N1", "N2", "N2"], "b": ["N2", "MOVE", "N3"]})
    counted = night_stages.StageTransitions.count(manifest, pseudocount=1.0)
    assert counted.nights == 2
    assert counted.initial.tolist() == pytest.approx([2 / 7, 1 / 7, 2 / 7, 1 / 7, 1 / 7])
    # W -> W and W -> N1 once each; nothing crosses from night a into b, nor over "MOVE"
    assert counted.transitions[W].tolist() == pytest.approx([2 / 7, 2 / 7, 1 / 7, 1 / 7, 1 / 7])
    assert counted.transitions[N2].tolist() == pytest.approx([1 / 6, 1 / 6, 2 / 6, 1 / 6, 1 / 6])
    assert counted.transitions[N3].tolist() == pytest.approx([0.2] * 5)
    assert np.allclose(counted.transitions.sum(1), 1)


def test_transitions_need_the_manifest_columns_and_a_night():
    with pytest.raises(MiniError, match=r"\['stage'\] columns"):
        night_stages.StageTransitions.count(pd.DataFrame({"subject": [], "night": [], "epoch": []}))
    with pytest.raises(MiniError, match="need a scored night"):
        night_stages.StageTransitions.count(
            _manifest({}).reindex(columns=["subject", "night", "epoch", "stage"])
        )


def _sticky(stay: float = 0.9) -> night_stages.StageTransitions:
    moves = np.full((len(STAGES), len(STAGES)), (1 - stay) / (len(STAGES) - 1))
    np.fill_diagonal(moves, stay)
    return night_stages.StageTransitions(np.full(len(STAGES), 0.2), moves, 1)


def _probabilities(*rows: dict[int, float]) -> np.ndarray:
    """One row per epoch: the stages named get their probability, the rest share what is left."""
    out = []
    for row in rows:
        left = (1 - sum(row.values())) / (len(STAGES) - len(row))
        out.append([row.get(k, left) for k in range(len(STAGES))])
    return np.array(out)


def test_a_night_read_as_a_sequence_keeps_its_stage_through_a_weak_blip():
    epochs = _probabilities({N2: 0.8}, {N2: 0.8}, {N1: 0.45, N2: 0.4}, {N2: 0.8}, {N2: 0.8})
    assert night_stages.night_path(epochs, _sticky()) == ["N2"] * 5
    alone = night_stages.night_path(epochs, _sticky(0.2))  # transitions that say nothing
    assert alone == ["N2", "N2", "N1", "N2", "N2"] == [STAGES[k] for k in epochs.argmax(1)]
    later = epochs.copy()
    later[2:] = _probabilities({REM: 0.9})[0]  # the night moves on, and stays
    assert night_stages.night_path(later, _sticky()) == ["N2", "N2", "REM", "REM", "REM"]


def test_a_stage_given_no_probability_is_never_chosen_and_an_unread_epoch_follows_its_night():
    epochs = _probabilities({N3: 0.9}, {N3: 0.9}, {N3: 0.9})
    epochs[1] = np.nan  # an image not shown to the model
    assert night_stages.night_path(epochs, _sticky()) == ["N3"] * 3
    epochs = np.array([[0.0, 0.5, 0.5, 0.0, 0.0]] * 2)
    assert set(night_stages.night_path(epochs, _sticky())) <= {"N1", "N2"}


def _epoch(subject: str, epoch: int) -> EpochAnnotation:
    return EpochAnnotation("dcsm", subject, "1", epoch, "N2", ["epoch.majority"], [], "truth")


def test_each_night_is_read_apart_and_answered_in_the_order_given():
    """Night a is wake, night b N3; b's middle epoch says nothing of its own, so its stage comes
    from its own night's neighbours, not from night a's epochs of the same number."""
    given = [("b", 2), ("a", 0), ("b", 0), ("a", 2), ("a", 1), ("b", 1)]
    strong = {"a": _probabilities({W: 0.9})[0], "b": _probabilities({N3: 0.9})[0]}
    rows = [np.full(len(STAGES), 0.2) if key == ("b", 1) else strong[key[0]] for key in given]
    found = [_epoch(subject, epoch) for subject, epoch in given]
    stages = night_stages.stages_over_nights(np.array(rows), found, _sticky())
    assert stages == ["N3", "W", "N3", "W", "W", "N3"]
    with pytest.raises(MiniError, match="5 images for 6 annotated epochs"):
        night_stages.night_stages(None, [b""] * 5, found, _sticky())


def test_only_answers_whose_stage_the_night_changed_are_written_again(
    snapshotted,  # noqa: F811 (the fixture imported above)
    monkeypatch,
):
    folder, data = snapshotted
    model = MiniModel.load(folder)
    night = faithfulness.nights_of(data.manifest[data.manifest["split"] == "test"])[:1]
    given, found = citations.night_answers(model, data, night)
    written = [parse_stage(a.text) for a in given]
    night_of = [s if k % 3 else ("W" if s != "W" else "N3") for k, s in enumerate(written)]
    monkeypatch.setattr(night_stages, "night_stages", lambda *args: night_of)
    asked = []

    def rewrite(model, pngs, stages):
        asked.append(list(stages))
        return [ScoredAnswer.certain(f"Stage: {s}. Rules: none.") for s in stages]

    transitions = night_stages.StageTransitions.count(data.manifest)
    read = night_stages.night_staged(lambda *args: (given, found), rewrite, transitions)
    answers, same = read(model, data, night)
    assert same == found
    changed = [k for k in range(len(given)) if k % 3 == 0]
    assert asked == [[night_of[k] for k in changed]]
    assert [parse_stage(a.text) for a in answers] == night_of
    assert all(answers[k] is given[k] for k in range(len(given)) if k not in changed)


def test_the_tiny_model_stages_are_its_words_probabilities_and_can_be_fixed(
    snapshotted,  # noqa: F811 (the fixture imported above)
):
    folder, data = snapshotted
    model = MiniModel.load(folder)
    night = faithfulness.nights_of(data.manifest[data.manifest["split"] == "test"])[:1]
    pngs, found = citations.night_inputs(data, night, model.image_options())
    pngs = pngs[:6]
    probabilities = night_stages.stage_probabilities(model, pngs)
    assert probabilities.shape == (6, len(STAGES))
    assert np.allclose(probabilities.sum(1), 1)
    greedy = [parse_stage(a) for a in model.generate(pngs)]
    assert greedy == [STAGES[k] for k in probabilities.argmax(1)]
    words = night_stages.stage_word_ids(model.tokenizer)
    writable = [s for s, i in zip(STAGES, words, strict=True) if i >= 0]
    chosen = [writable[k % len(writable)] for k in range(6)]
    fixed = model.answer_all(pngs, batch_size=4, stages=chosen)
    assert [parse_stage(a.text) for a in fixed] == chosen
    same = model.answer_all(pngs, stages=greedy)
    assert [a.text for a in same] == model.generate(pngs)  # its own stage: greedy word for word


def test_chosen_stages_are_refused_where_they_cannot_be_written(
    snapshotted,  # noqa: F811 (the fixture imported above)
):
    folder, data = snapshotted
    model = MiniModel.load(folder)
    night = faithfulness.nights_of(data.manifest[data.manifest["split"] == "test"])[:1]
    pngs = citations.night_inputs(data, night, model.image_options())[0][:2]
    with pytest.raises(MiniError, match="2 stages chosen for 1 images"):
        model.answer_all(pngs[:1], stages=["W", "W"])
    with pytest.raises(MiniError, match="chosen stages are separate levers"):
        model.answer_all(pngs, contrast=contrast.SETTINGS[0], stages=["W", "W"])
    with pytest.raises(MiniError, match=r"cannot write the stage\(s\) \['XX'\]"):
        model.answer_all(pngs, stages=["XX", "W"])


def test_whole_night_kappa_is_read_alone_and_over_the_night(
    snapshotted,  # noqa: F811 (the fixture imported above)
):
    folder, data = snapshotted
    model = MiniModel.load(folder)
    night = faithfulness.nights_of(data.manifest[data.manifest["split"] == "test"])[:1]
    transitions = night_stages.StageTransitions.count(
        data.manifest[data.manifest["split"] == "train"]
    )
    table = night_stages.night_kappa_table(model, {"dcsm": data}, {"dcsm": night}, transitions)
    epochs = citations.night_inputs(data, night, model.image_options())[1]
    assert table.loc[0, ["dataset", "nights", "epochs"]].tolist() == ["dcsm", 1, len(epochs)]
    assert 0 <= table.loc[0, "changed"] <= 1


def test_the_setting_names_its_answers_and_its_record_file(tmp_path):
    label = faithfulness.answers_label(probe_guidance=16.0, night_stages=night_stages.HMM)
    assert label.startswith("stages read over the night (hmm); times guided")
    record = {"dataset": "dcsm", "modality": "image", "model": "m", "prompt": "expert"}
    record = {**record, "summary": "faithfulness", "manifest_hash": "0123456789"}
    path = write_result({**record, NIGHT_STAGES: night_stages.HMM}, tmp_path)
    assert path.name.endswith("__night_stages-hmm.json")
    assert faithfulness.summary_label({**record, NIGHT_STAGES: night_stages.HMM}) == (
        "stages read over the night (hmm)"
    )


def test_the_kappa_sentence_follows_the_numbers_and_the_goals():
    table = pd.DataFrame(
        {
            "dataset": ["dcsm", "shhs", "isruc"],
            "setting": [WITHIN, EXTERNAL, EXTERNAL],
            "epochs": [100, 100, 300],
            "kappa_alone": [0.73, 0.70, 0.50],
            "kappa_night": [0.76, 0.74, 0.54],
            "changed": [0.1, 0.1, 0.0],
        }
    )
    text = night_stages.night_kappa_text(table)
    assert "within center 0.730 → 0.760 (meets the goal of 0.75)" in text
    assert "external 0.600 → 0.640 (is short of the goal of 0.70)" in text
    assert text.endswith("changed the stage of 4% of the epochs.")
    assert night_stages.night_kappa_text(table.iloc[:0]) == "No whole night was read."


def test_chosen_stages_begin_each_answer_with_the_marker_then_its_rows_stage():
    import torch

    chosen = night_stages.ChosenStages(marker=7, start=3, words=[1, 2])
    scores = torch.zeros(2, 10)
    first = chosen(torch.tensor([[0, 0, 5], [0, 4, 5]]), scores)
    assert (first.argmax(1) == 7).all() and torch.isinf(first).sum() == 2 * 9
    after = chosen(torch.tensor([[0, 0, 5, 7], [0, 4, 5, 3]]), scores)
    assert after[0].argmax() == 1 and torch.isinf(after[0]).sum() == 9
    assert torch.equal(after[1], scores[1])  # its last token is not the marker: left alone
    free = night_stages.ChosenStages(marker=7, start=3)
    assert torch.equal(free(torch.tensor([[0, 0, 5, 7]]), scores[:1]), scores[:1])
    with pytest.raises(MiniError, match="2 stages chosen for a batch of 1"):
        chosen(torch.tensor([[0, 0, 5]]), scores[:1])
