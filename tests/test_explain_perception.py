"""What SleepVLM-mini sees: its perception answers scored per 5-s segment against the true
events, after its perception phase and when finished."""

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from sleepvlm.explain import mini, perception, snapshots
from sleepvlm.explain.annotations import EpochAnnotation, Evidence
from test_explain_mini import TINY, prepared  # noqa: F401 (a fixture)
from test_explain_snapshots import snapshotted  # noqa: F401 (a fixture)


def _epoch(*events: Evidence) -> EpochAnnotation:
    return EpochAnnotation("d", "s", "n", 0, "REM", ["R.rem"], list(events), "truth")


REM_EARLY = Evidence("rem", "eog", 2.0, 3.0)
BLINK_LATE = Evidence("blink", "eog", 21.0, 21.5)


def token_probe(model, data) -> perception.EventProbe:
    """A probe of ``model``'s image tokens fitted on a few epochs of ``data``."""
    reads = {"image tokens": True}
    return perception.fit_probes(model, data, per_class=3, max_nights=1, reads=reads)[
        "image tokens"
    ]


def test_described_segments_reads_the_events_each_segment_names():
    text = "t0 theta eeg1 eog2 emg0 rem@EOG t5 theta eeg1 eog1 emg0 t20 alpha eeg1 blink@EOG"
    segments = perception.described_segments(text)
    assert segments == [{"rem@EOG"}, set(), set(), set(), {"blink@EOG"}, set()]
    assert perception.described_segments("Stage: REM. Rules: R.rem.") == [set()] * 6
    assert perception.described_segments("t45 rem@EOG t0 x@EEG") == [{"x@EEG"}, *[set()] * 5]


def test_perception_scores_count_events_per_segment():
    truth = _epoch(REM_EARLY, BLINK_LATE)
    right = "t0 rem@EOG t5 t10 t15 t20 blink@EOG t25"
    assert perception.perception_scores([right], [truth]) == {
        "precision": 1.0,
        "recall": 1.0,
        "same_every_segment": 0.0,
    }
    smeared = " ".join(f"t{5 * k} rem@EOG blink@EOG" for k in range(6))
    scores = perception.perception_scores([smeared], [truth])
    assert scores["precision"] == pytest.approx(2 / 12) and scores["recall"] == 1.0
    assert scores["same_every_segment"] == 1.0  # one description for the whole epoch
    quiet = perception.perception_scores(["t0 t5"], [_epoch()])
    assert np.isnan(quiet["precision"]) and np.isnan(quiet["recall"])
    assert np.isnan(quiet["same_every_segment"])  # the truth is the same everywhere
    with pytest.raises(ValueError):
        perception.perception_scores([right, right], [truth])


def test_perception_table_asks_the_model_before_and_after_grounding(
    snapshotted,  # noqa: F811
    tmp_path,
):
    folder, data = snapshotted
    table = perception.perception_table(folder, {"dcsm": data}, max_nights=1, max_epochs=4)
    assert table["model"].tolist() == ["after perception", "finished"]
    assert table["epochs"].tolist() == [4, 4]
    values = table[list(perception.PERCEPTION_METRICS)].stack().dropna()
    assert values.between(0, 1).all()
    unkept = shutil.copytree(folder, tmp_path / "model")
    settings = json.loads((unkept / mini.SETTINGS_FILE).read_text())
    settings["snapshot_steps"].remove(mini.PERCEPTION_SNAPSHOT)
    (unkept / mini.SETTINGS_FILE).write_text(json.dumps(settings))
    table = perception.perception_table(unkept, {"dcsm": data}, max_nights=1, max_epochs=4)
    assert table["model"].tolist() == ["finished"]  # a model that kept no perception snapshot


def test_perception_text_says_what_the_table_shows():
    rows = [
        ("after perception", "dcsm", 0.67, 0.22, 0.8),
        ("after perception", "isruc", 0.5, 0.12, 0.9),
        ("finished", "dcsm", np.nan, 0.0, np.nan),
        ("finished", "isruc", np.nan, 0.0, np.nan),
    ]
    table = pd.DataFrame(rows, columns=["model", "dataset", *perception.PERCEPTION_METRICS])
    text = perception.perception_text(table)
    assert text.startswith(
        "Events named per 5-s segment, after perception: DCSM precision 0.67, recall 0.22, "
        "one description for every segment 80%; ISRUC precision 0.50"
    )
    assert "finished: DCSM precision —, recall 0.00" in text
    assert "fewer than half of the events that are there" in text
    assert text.endswith(
        "keeps 0% of that recall: the grounding phase overwrote what the perception phase taught."
    )
    seeing = table.assign(recall=[0.8, 0.7, 0.75, 0.7])
    text = perception.perception_text(seeing)
    assert "names most of the events" in text and text.endswith("keeps 97% of that recall.")
    assert perception.perception_text(table.iloc[:0]).startswith("No held-out epoch")


class _Tokens:
    """A stand-in for a trained model whose image tokens (``merged``) or patch states are given
    (a probe reads only their ``settings`` and ``image_tokens``)."""

    def __init__(self, tokens: dict[bytes, np.ndarray], merged: bool = True):
        self.tokens, self.merged = tokens, merged
        self.settings = {"config": dataclasses.asdict(mini.MiniConfig())}

    def image_tokens(self, pngs, merged=True):
        assert merged == self.merged, "the probe asked for the other grid"
        return np.stack([self.tokens[p] for p in pngs])


def _probe_inputs(n: int, seed: int, informative: bool, merged: bool = True, shown_at: int = 0):
    """``n`` epochs, each with a spindle in one random column of the scored epoch, and tokens
    (``merged`` False: patch states) that show which column (a large value on the tokens of the
    column ``shown_at`` columns to its right) or are noise."""
    config = (
        mini.MiniConfig() if merged else dataclasses.replace(mini.MiniConfig(), spatial_merge=1)
    )
    rng = np.random.default_rng(seed)
    spans = [s for s in mini.column_spans(config) if s is not None]
    columns = [k for k, s in enumerate(mini.column_spans(config)) if s is not None]
    rows, width = mini.token_grid(config)
    pngs, found, tokens = [], [], {}
    for i in range(n):
        k = int(rng.integers(len(spans)))
        middle = sum(spans[k]) / 2
        found.append(_epoch(Evidence("spindle", "eeg", middle - 0.5, middle + 0.5)))
        grid = rng.normal(size=(rows, width, 4))
        if informative:
            grid[:, columns[k] + shown_at, 0] += 3.0
        png = f"{seed}-{i}".encode()
        pngs.append(png)
        tokens[png] = grid
    return pngs, found, tokens


def test_token_probe_finds_where_the_tokens_show_an_event_and_nothing_in_noise():
    fit_pngs, fit_found, fit_tokens = _probe_inputs(60, 0, informative=True)
    pngs, found, tokens = _probe_inputs(40, 1, informative=True)
    model = _Tokens({**fit_tokens, **tokens})
    probe = perception.fit_event_probe(model, fit_pngs, fit_found)
    assert list(probe.probes) == ["spindle"]  # the one kind with positive columns
    table = perception.probe_scores(model, probe, {"d": (pngs, found)})["d"]
    spindle = table.set_index("kind").loc["spindle"]
    assert spindle["within_epoch_auc"] > 0.95 and spindle["epochs"] == 40
    assert spindle["positives"] >= 40
    noise_fit = _probe_inputs(60, 2, informative=False)
    noise = _probe_inputs(40, 3, informative=False)
    model = _Tokens({**noise_fit[2], **noise[2]})
    noise_probe = perception.fit_event_probe(model, *noise_fit[:2])
    table = perception.probe_scores(model, noise_probe, {"d": noise[:2]})["d"]
    assert 0.3 < table.set_index("kind").loc["spindle", "within_epoch_auc"] < 0.7
    text = perception.probe_text({"dcsm": table, "shhs": table.iloc[:0]})
    assert text.startswith("Which column of a held-out epoch holds an event")
    assert "DCSM 0." in text and "(spindle 0." in text and "SHHS" not in text
    assert perception.probe_text({}) == "No event kind had enough positive columns for a probe."


def test_a_probe_reads_where_an_event_lies_from_the_columns_beside_it():
    # the tokens show each spindle one column to its left: only a probe that reads the columns
    # on each side of the one it judges can tell where the spindle lies
    fit_pngs, fit_found, fit_tokens = _probe_inputs(80, 0, informative=True, shown_at=-1)
    pngs, found, tokens = _probe_inputs(40, 1, informative=True, shown_at=-1)
    model = _Tokens({**fit_tokens, **tokens})
    rows, within = mini.token_grid(mini.MiniConfig())[0], {}
    for neighbours in (0, 1):
        probe = perception.fit_event_probe(model, fit_pngs, fit_found, neighbours=neighbours)
        # each column's tokens (rows of 4 values) beside those of its neighbours
        assert probe.features(model, pngs[:1]).shape[1] == (2 * neighbours + 1) * rows * 4
        table = perception.probe_scores(model, probe, {"d": (pngs, found)})["d"]
        within[neighbours] = table.set_index("kind").loc["spindle", "within_epoch_auc"]
    assert within[1] > 0.95 and within[0] < 0.7


def test_a_probe_of_the_patch_states_finds_the_event_in_columns_narrower_in_time():
    fit_pngs, fit_found, fit_tokens = _probe_inputs(80, 0, informative=True, merged=False)
    pngs, found, tokens = _probe_inputs(40, 1, informative=True, merged=False)
    model = _Tokens({**fit_tokens, **tokens}, merged=False)
    probe = perception.fit_event_probe(model, fit_pngs, fit_found, merged=False)
    tokens_probe = perception.EventProbe(probe.config)
    merge = probe.config.spatial_merge
    assert len(probe.columns) > (merge - 0.5) * len(tokens_probe.columns)
    token_width = np.diff(tokens_probe.spans[1])[0]
    assert np.allclose(np.diff(probe.spans[1:-1]), token_width / merge)  # inner columns
    table = perception.probe_scores(model, probe, {"d": (pngs, found)})["d"]
    assert table.set_index("kind").loc["spindle", "within_epoch_auc"] > 0.95
    text = perception.probe_text({"dcsm": table}, "the patch states")
    assert "read by a linear probe from the patch states (AUC within epochs" in text
    assert probe.probabilities(model, pngs).shape[1] == len(probe.columns)


def test_image_tokens_are_the_vision_towers_on_their_grid(snapshotted):  # noqa: F811
    folder, data = snapshotted
    model = mini.MiniModel.load(folder)
    pngs, _ = snapshots.held_out_inputs({"d": data}, model.image_options(), 1, 3)["d"]
    tokens = model.image_tokens(pngs, batch_size=2)
    config = mini.MiniConfig(**model.settings["config"])
    assert tokens.shape == (3, *mini.token_grid(config), config.text_dim)
    batch = mini.make_batch(model.tokenizer, model.processor, pngs[:1], "")
    direct = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
    assert np.allclose(tokens[0].reshape(-1, config.text_dim), direct.pooler_output[0].detach())
    patches = model.image_tokens(pngs, batch_size=2, merged=False)
    merge, (rows, columns) = config.spatial_merge, mini.token_grid(config)
    assert patches.shape == (3, rows * merge, columns * merge, config.vision_dim)
    # the tower's own merger, handed each token's block of patch states, gives the token back
    blocks = torch.as_tensor(patches[0]).view(rows, merge, columns, merge, -1)
    in_blocks = blocks.permute(0, 2, 1, 3, 4).reshape(-1, config.vision_dim)
    with torch.inference_mode():
        remerged = mini.vision_tower(model.model).merger(in_blocks)
    assert np.allclose(tokens[0].reshape(-1, config.text_dim), remerged, atol=1e-5)


def test_probes_are_fitted_and_scored_on_images_drawn_once_for_all_of_them(
    snapshotted,  # noqa: F811
    monkeypatch,
):
    folder, data = snapshotted
    model = mini.MiniModel.load(folder)
    drawn = []
    for name in ("epoch_inputs", "held_out_inputs"):
        draw = getattr(perception, name)
        monkeypatch.setattr(
            perception,
            name,
            lambda *a, name=name, draw=draw, **k: drawn.append(name) or draw(*a, **k),
        )
    probes = perception.fit_probes(model, data, per_class=3, max_nights=1)
    assert {name: p.merged for name, p in probes.items()} == perception.PROBE_READS
    tables = perception.probe_tables(model, probes, {"a": data, "b": data}, max_epochs=4)
    assert drawn == ["epoch_inputs", "held_out_inputs"]
    assert list(tables) == list(perception.PROBE_READS)
    for by_dataset in tables.values():
        assert list(by_dataset) == ["a", "b"]
        for table in by_dataset.values():
            assert list(table.columns) == list(perception.PROBE_COLUMNS)
            assert table["auc"].dropna().between(0, 1).all()


def test_an_item_is_supported_where_the_probe_finds_its_kind_in_the_columns_it_cites():
    from sleepvlm.data.records import EVENT_KINDS
    from sleepvlm.explain.citations import cite_confident

    probe = perception.EventProbe(mini.MiniConfig(), probes={"spindle": None})  # fitted: its name
    spans = [mini.column_spans(probe.config)[k] for k in probe.columns]
    probabilities = np.full((len(spans), len(EVENT_KINDS)), np.nan)
    spindle = EVENT_KINDS.index("spindle")
    probabilities[:, spindle] = [0.9 if a < 12 < b else 0.1 for a, b in spans]
    assert probe.item_support("spindle on EEG at 10-15 s", probabilities) == 0.9
    assert probe.item_support("spindle on EEG at 25-30 s", probabilities) == 0.1
    assert probe.item_support("K complex on EEG at 25-30 s", probabilities) == 1.0  # no probe
    assert probe.item_support("low chin tone", probabilities) == 1.0  # no event cited
    head = "Stage: N2. Rules: N2.spindle. Evidence: spindle on EEG at 10-15 s"
    text = f"{head}; spindle on EEG at 25-30 s."
    supported = probe.supported(text, probabilities)
    assert supported.text == text
    assert cite_confident(supported, 0.5) == f"{head}."
    assert cite_confident(supported, 0.0) == text


def test_probe_night_answers_are_the_greedy_answers_with_the_probes_support(snapshotted):  # noqa: F811
    from sleepvlm.explain import citations
    from sleepvlm.splits import night_keys, nights_of

    folder, data = snapshotted
    model = mini.MiniModel.load(folder)
    probe = token_probe(model, data)
    test = data.manifest[data.manifest["split"] == "test"]
    nights = nights_of(test, 1, 0)
    answers, found = perception.probe_night_answers(model, data, nights, probe)
    pngs, truth = citations.night_inputs(data, nights, model.image_options())
    assert len(answers) == len(found) == int(night_keys(test).isin(nights).sum())
    assert [a.text for a in answers] == model.generate(pngs)
    assert [a.key for a in found] == [a.key for a in truth]


def test_guided_night_answers_ask_the_probe_once_per_image(snapshotted, monkeypatch):  # noqa: F811
    from sleepvlm.explain import citations, guidance
    from sleepvlm.splits import nights_of

    folder, data = snapshotted
    model = mini.MiniModel.load(folder)
    probe = token_probe(model, data)
    nights = nights_of(data.manifest[data.manifest["split"] == "test"], 1, 0)
    asked = []
    probabilities = perception.EventProbe.probabilities
    monkeypatch.setattr(
        perception.EventProbe,
        "probabilities",
        lambda self, model, pngs: asked.extend(pngs) or probabilities(self, model, pngs),
    )
    guide = guidance.ProbeGuidance(probe, 8.0)
    answers, _ = perception.probe_night_answers(model, data, nights, probe, guide=guide)
    pngs, _ = citations.night_inputs(data, nights, model.image_options())
    assert sorted(asked) == sorted(pngs)  # once each: the guide reads what the check worked out
    assert [a.text for a in answers] == model.generate(pngs, guide=guide)
