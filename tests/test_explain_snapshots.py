"""SleepVLM-mini's training curve: snapshots of the grounding phase are kept, saved and loaded
as they were, and each is scored on the same held-out epochs."""

import dataclasses
import json

import pandas as pd
import pytest
import torch

from sleepvlm.explain import citations, mini, snapshots, train
from sleepvlm.explain.faithfulness import FAITHFULNESS_GOALS
from sleepvlm.params import EXTERNAL, WITHIN
from test_explain_mini import TINY, make_examples, prepared  # noqa: F401 (a fixture)


def test_snapshot_steps_are_spaced_through_the_phase_without_its_ends():
    assert train.snapshot_steps(2400, 3) == [600, 1200, 1800]
    assert train.snapshot_steps(2400, 0) == []
    assert train.snapshot_steps(3, 5) == [1, 2]  # no step twice, neither 0 nor the last


def test_training_keeps_the_weights_of_each_snapshot_step():
    torch.manual_seed(0)
    examples = make_examples()
    tokenizer = mini.train_tokenizer([e.targets[p] for e in examples for p in mini.PHASES])
    model = mini.build_model(tokenizer, TINY)
    log = train.train_phases(
        model, tokenizer, mini.image_processor(TINY), examples, TINY, snapshot_at=(4, 8)
    )
    assert sorted(log.snapshots) == [mini.PERCEPTION_SNAPSHOT, 4, 8]  # and perception's end
    final = mini.trainable_weights(model)
    name = next(iter(final))
    assert not torch.equal(log.snapshots[4][name], log.snapshots[8][name])
    assert not torch.equal(log.snapshots[8][name], final[name])


@pytest.fixture
def snapshotted(prepared):  # noqa: F811 (the fixture imported above)
    """A tiny model trained by train_mini on the simulated nights, keeping two snapshots."""
    config = dataclasses.replace(TINY, grounding_steps=9)
    folder = train.train_mini(
        "dcsm",
        prepared.source,
        config=config,
        per_class=3,
        max_nights=1,
        make_default=False,
        snapshots=2,
    )
    return folder, prepared


def test_a_saved_snapshot_loads_as_the_model_was_at_that_step(snapshotted):
    folder, _ = snapshotted
    settings = json.loads((folder / mini.SETTINGS_FILE).read_text())
    assert settings["snapshot_steps"] == [mini.PERCEPTION_SNAPSHOT, 3, 6]
    assert snapshots.grounding_snapshots(settings) == [3, 6]
    assert snapshots.curve_steps(settings) == {3: 3, 6: 6, 9: None}
    capped = {**settings, "log": {"loss": {"grounding": [1.0] * 5}}, "snapshot_steps": [3]}
    assert snapshots.curve_steps(capped) == {3: 3, 5: None}
    kept = torch.load(mini.snapshot_path(folder, 3))
    early = mini.MiniModel.load(folder, snapshot=3)
    for name, weights in mini.trainable_weights(early.model).items():
        assert torch.equal(weights, kept[name])
    finished = mini.trainable_weights(mini.MiniModel.load(folder).model)
    assert any(not torch.equal(finished[n], kept[n]) for n in kept)
    with pytest.raises(mini.MiniError, match=r"no snapshot after 5 grounding steps.*\[0, 3, 6\]"):
        mini.MiniModel.load(folder, snapshot=5)


def test_training_curve_scores_every_snapshot_on_the_same_held_out_epochs(snapshotted):
    folder, data = snapshotted
    curve = snapshots.training_curve(folder, {"dcsm": data}, max_nights=1, max_epochs=6)
    assert curve["step"].tolist() == [3, 6, 9]
    assert curve["epochs"].tolist() == [6, 6, 6]
    values = curve[list(snapshots.CURVE_METRICS)].stack().dropna()
    assert len(values) and values.between(-1, 1).all()  # undefined where no event is cited
    held_out = snapshots.held_out_epochs(data, 1, 6)
    assert (held_out["split"] == "val").all() and len(held_out) == 6
    assert held_out.index.is_monotonic_increasing
    _, found = citations.epoch_inputs(data, held_out, TINY.image_options())
    blank = snapshots.score_point(["Unreadable image: no trace."] * len(found), found, 1.0)
    assert blank["kappa"] == 0.0  # no stage given: every epoch wrong, as in every run
    assert blank["precision"] is None and blank["ungrounded_share"] == 0.0
    no_val = dataclasses.replace(data, manifest=data.manifest.query("split != 'val'"))
    assert snapshots.training_curve(folder, {"dcsm": no_val}).empty


def test_curve_text_reads_the_first_and_last_snapshots_and_the_end_of_each_setting():
    rows = []
    points = ((100, 0.5, 0.3), (200, 0.55, 0.4), (300, 0.6, 0.45), (400, 0.62, None))
    for step, kappa, precision in points:
        for setting, shift in ((WITHIN, 0.0), (EXTERNAL, -0.1)):
            rows.append(
                {
                    "step": step,
                    "setting": setting,
                    "kappa": kappa + shift,
                    "precision": precision,
                    "comprehensiveness": None,
                    "coherence": 0.9,
                    "ungrounded_share": 0.5,
                }
            )
    text = snapshots.curve_text(pd.DataFrame(rows))
    assert text.startswith("At grounding steps 100 → 300 → 400 (the finished model): within")
    assert "within center: κ 0.50 → 0.60 → 0.62, precision 0.30 → 0.45 → —" in text
    assert "external: κ 0.40 → 0.50 → 0.52, precision" in text
    assert "comprehensiveness — → — → —, coherence 0.90 → 0.90 → 0.90" in text
    assert "ungrounded share 50% → 50% → 50%." in text
    assert set(snapshots.CURVE_METRICS) == {"kappa", *FAITHFULNESS_GOALS}
    two = snapshots.curve_text(pd.DataFrame(rows[4:]))
    assert two.startswith("At grounding steps 300 → 400 (the finished model)")
    assert snapshots.curve_text(pd.DataFrame(rows[:2])) == (
        "The run kept no snapshot, so there is no curve to read."
    )
