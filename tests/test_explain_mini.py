"""SleepVLM-mini on a tiny configuration: targets, tokenizer, training lowers the loss, the
saved folder loads and answers the same, the embedded server serves it, LoRA on a base."""

import concurrent.futures
import dataclasses
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sleepvlm import experiment
from sleepvlm.data.dcsm import write_dcsm
from sleepvlm.data.records import EVENT_KINDS
from sleepvlm.data.simulate import simulate_night
from sleepvlm.explain import faithfulness, mini, train
from sleepvlm.explain.annotations import Evidence, parse_answer
from sleepvlm.metrics import parse_stage
from sleepvlm.models import Engine, get_model, load_registry, running_server, user_request
from sleepvlm.params import EXTERNAL, WITHIN
from sleepvlm.prepare import prepare_dataset
from sleepvlm.render import render_png

TINY = mini.MiniConfig(
    image_width=224,
    image_height=112,
    context=1,
    chin_reference_uv=0.0,  # the hand-made windows below have no night to scale against
    vision_depth=1,
    vision_dim=32,
    text_dim=32,
    text_layers=1,
    heads=2,
    perception_steps=4,
    grounding_steps=12,
    batch_size=4,
    learning_rate=3e-3,
    warmup_steps=2,
    max_new_tokens=12,
)
ANSWERS = {
    "W": "Stage: W. Rules: W.alpha. Evidence: alpha rhythm.",
    "N3": "Stage: N3. Rules: N3.sw20. Evidence: slow wave on EEG at 3-5 s.",
}


def _epoch(stage: str, seed: int) -> np.ndarray:
    """A (3, 3000) epoch: alpha at 10 Hz for W, large 1-Hz waves for N3."""
    rng = np.random.default_rng(seed)
    t = np.arange(3000) / 100
    eeg = (
        30 * np.sin(2 * np.pi * 10 * t) if stage == "W" else 120 * np.sin(2 * np.pi * 1 * t)
    ) + rng.normal(0, 5, 3000)
    return np.stack([eeg, rng.normal(0, 10, 3000), rng.normal(0, 3, 3000)])


def make_examples(n: int = 8) -> list[mini.Example]:
    """``n`` rendered windows, alternately N3 and W, with both phases' targets."""
    out = []
    for i in range(n):
        stage = "W" if i % 2 else "N3"
        window = [_epoch(stage, 10 * i + k) for k in range(3)]
        png = render_png(window[1], window[0], window[2], options=TINY.image_options())
        targets = {"perception": mini.waveform_description(window[1]), "grounding": ANSWERS[stage]}
        out.append(mini.Example(png, targets, ("tiny", str(i), "1", i)))
    return out


@pytest.fixture(scope="module")
def examples():
    return make_examples()


@pytest.fixture(scope="module")
def trained(examples, tmp_path_factory):
    """A tiny model trained a few steps in both phases and saved."""
    torch.manual_seed(0)
    texts = [e.targets[p] for e in examples for p in mini.PHASES]
    tokenizer = mini.train_tokenizer(texts)
    processor = mini.image_processor(TINY)
    model = mini.build_model(tokenizer, TINY)
    log = train.train_phases(model, tokenizer, processor, examples, TINY)
    folder = tmp_path_factory.mktemp("mini") / "model"
    mini.save(model, tokenizer, processor, folder, mini.settings_of(TINY, log=log.loss))
    return folder, log


def test_waveform_description_reads_band_amplitude_and_events():
    text = mini.waveform_description(_epoch("W", 0), ["spindle on EEG at 12-14 s"])
    words = text.split()
    assert words[:5] == ["t0", "alpha", "eeg2", "eog1", "emg1"]
    assert words.count("alpha") == 6  # every 5-s segment
    assert text.endswith("events: spindle on EEG at 12-14 s ;")
    slow = mini.waveform_description(_epoch("N3", 0)).split()
    assert slow[1] == "delta" and slow[2] == "eeg4"
    assert slow[-1] == "none"


def test_tokenizer_round_trips_answers_and_knows_every_rule():
    tokenizer = mini.train_tokenizer(list(ANSWERS.values()))
    for answer in ANSWERS.values():
        ids = tokenizer(answer)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == answer
    assert tokenizer.unk_token_id not in tokenizer("N2.spindle R.rem 29")["input_ids"]


def test_batches_mask_everything_but_the_target(examples):
    tokenizer = mini.train_tokenizer([e.targets["grounding"] for e in examples])
    processor = mini.image_processor(TINY)
    pngs = [e.image for e in examples[:2]]
    batch = mini.make_batch(tokenizer, processor, pngs, "Score.", [ANSWERS["W"], ANSWERS["N3"]])
    image_tokens = batch["mm_token_type_ids"].sum(dim=1)
    # 224x112 px in patches of patch_size px, merged 2x2 into one image token each
    per_image = (224 // TINY.patch_size) * (112 // TINY.patch_size) // 4
    assert per_image >= 8 and image_tokens.tolist() == [per_image, per_image]
    kept = [tokenizer.decode(row[row != mini.IGNORE]) for row in batch["labels"]]
    assert kept == [f"{ANSWERS['W']} {mini.IM_END}", f"{ANSWERS['N3']} {mini.IM_END}"]
    generation = mini.make_batch(tokenizer, processor, pngs, "Score.")
    assert "labels" not in generation
    assert (generation["input_ids"][:, -1] == generation["input_ids"][0, -1]).all()  # left pad


def test_training_lowers_the_loss_in_both_phases(trained):
    _, log = trained
    for phase in mini.PHASES:
        losses = log.loss[phase]
        assert len(losses) == {"perception": 4, "grounding": 12}[phase]
        assert np.mean(losses[-3:]) < losses[0]


def test_saved_model_loads_and_answers_deterministically(trained, examples):
    folder, _ = trained
    settings = json.loads((folder / mini.SETTINGS_FILE).read_text())
    assert settings["config"]["vision_dim"] == TINY.vision_dim
    model = mini.MiniModel.load(folder)
    pngs = [e.image for e in examples[:3]]
    first = model.generate(pngs)
    assert first == model.generate(pngs)
    assert all(isinstance(a, str) for a in first)
    assert model.generate(pngs[:1]) == first[:1]  # padding does not change an answer


def _white_png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, "PNG")
    return buffer.getvalue()


def test_unreadable_images_get_no_stage_and_no_evidence(trained, examples):
    """A blank image, one drawn at another size and one with a dead chin channel are not shown
    to the model: their answer says what is wrong and cites nothing."""
    model = mini.MiniModel.load(trained[0])
    dead_chin = [_epoch("N3", k) for k in range(3)]
    dead_chin[1][2] = 0.0
    pngs = [
        examples[0].image,
        _white_png((TINY.image_width, TINY.image_height)),
        _white_png((448, 224)),
        render_png(dead_chin[1], dead_chin[0], dead_chin[2], options=TINY.image_options()),
        examples[1].image,
    ]
    answers = model.generate(pngs)
    assert [answers[0], answers[4]] == model.generate([pngs[0], pngs[4]])
    for answer in answers[1:4]:
        assert answer.startswith("Unreadable image:") and parse_stage(answer) is None
        parsed = parse_answer(answer)
        assert parsed.claims == [] and parsed.rules == []
    assert "is 448x224 px, not the 224x112" in answers[2]
    assert "EMG lane holds only a flat line" in answers[3] and "EEG" not in answers[3]


def test_batching_answerer_gives_each_caller_its_own_answer(trained, examples):
    model = mini.MiniModel.load(trained[0])
    pngs = [e.image for e in examples]
    alone = model.generate(pngs)
    answerer = mini.BatchingAnswerer(model, max_batch=4, wait_s=0.05)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(answerer, pngs))
    assert together == alone


def test_missing_model_folder_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(mini.MiniError, match="config.json missing.*chapter 11"):
        mini.MiniModel.load(tmp_path)
    monkeypatch.delenv(train.MODEL_DIR_ENV, raising=False)
    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(mini.MiniError, match="no SleepVLM-mini has been trained"):
        train.default_model_dir()


def test_served_model_answers_images_through_the_harness(trained, examples, monkeypatch, tmp_path):
    folder, _ = trained
    monkeypatch.setenv(train.MODEL_DIR_ENV, str(folder))
    direct = mini.MiniModel.load(folder).generate([e.image for e in examples[:4]])
    requests = [user_request("Stage?", images=(e.image,)) for e in examples[:4]]
    requests.append(user_request("Stage? (no image)"))
    with running_server() as server:
        spec = get_model("sleepvlm-mini", base_url=server.url, backend="openai_compatible")
        answers = Engine(spec, tmp_path / "r.jsonl", concurrency=4, progress=False).run(requests)
    assert [a.text for a in answers[:4]] == direct
    assert answers[4].text == train.NO_IMAGE_ANSWER
    local = Engine(get_model("sleepvlm-mini"), tmp_path / "l.jsonl", progress=False)
    assert folder.name in local.model  # stored answers are keyed by the weights served
    info = experiment.local_model_info(get_model("sleepvlm-mini"))
    assert info["model_folder"] == folder.name  # results records name the weights too
    assert experiment.local_model_info(get_model("chance")) == {}


def test_registry_image_options_are_the_models(trained):
    spec = load_registry()["sleepvlm-mini"]
    options = mini.MiniConfig().image_options()
    assert spec.image == {
        "width": options.width,
        "height": options.height,
        "context": options.context,
        "chin_reference_uv": options.chin_reference_uv,
    }


def test_lora_fine_tunes_a_base_of_the_same_family(trained, examples, tmp_path):
    base = mini.MiniModel.load(trained[0])
    model = mini.add_lora(base.model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "merger" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "embed_tokens" in n}
    grounding_only = dataclasses.replace(TINY, perception_steps=0, grounding_steps=8)
    log = train.train_phases(model, base.tokenizer, base.processor, examples, grounding_only)
    assert np.mean(log.loss["grounding"][-3:]) < log.loss["grounding"][0]
    for name, before in frozen.items():
        assert torch.equal(dict(model.named_parameters())[name], before)
    folder = mini.save(model, base.tokenizer, base.processor, tmp_path / "lora", {"lora": True})
    merged = mini.MiniModel.load(folder)
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())
    assert merged.generate([examples[0].image]) == mini.MiniModel.load(folder).generate(
        [examples[0].image]
    )


def test_unknown_phase_and_empty_examples_are_refused(trained):
    model = mini.MiniModel.load(trained[0])
    with pytest.raises(mini.MiniError, match="phase 'pretraining'"):
        mini.train_phase(model.model, model.tokenizer, model.processor, [], "pretraining", 1, TINY)
    with pytest.raises(mini.MiniError, match="no training examples"):
        mini.train_phase(model.model, model.tokenizer, model.processor, [], "grounding", 1, TINY)


def test_chapter_defaults_train_the_model_the_library_trains_by_default():
    """Chapters 07 and 12 call train_mini with its defaults, chapter 11 with its parameters:
    equal defaults mean one model is trained and cached, not two."""
    import inspect

    from sleepvlm.book import notebook_defaults
    from sleepvlm.cache import project_root

    # the parameters cell's values, its names of sleepvlm.params constants resolved
    values = notebook_defaults(project_root() / "notebooks" / "11_sleepvlm_mini.ipynb")
    defaults = inspect.signature(train.train_mini).parameters
    config = mini.MiniConfig()
    assert values["per_class"] == defaults["per_class"].default
    assert values["train_nights"] == defaults["max_nights"].default
    assert values["perception_steps"] == config.perception_steps
    assert values["grounding_steps"] == config.grounding_steps
    assert values["seed"] == config.seed


@pytest.fixture
def prepared(monkeypatch, tmp_path):
    """Three half-hour simulated DCSM nights, prepared into an epoch store."""
    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    for subject in (0, 1, 3):
        write_dcsm(simulate_night("dcsm", subject, hours=0.5), tmp_path / "dcsm")
    return prepare_dataset("dcsm", data_dir=tmp_path / "dcsm")


def test_training_examples_pair_each_image_with_both_targets(prepared):
    sample = train.training_sample(prepared, per_class=3, seed=0, max_nights=1, split="train")
    assert sample["subject"].nunique() == 1
    assert (sample["stage"].value_counts() <= 3).all()
    examples = train.build_examples(prepared, sample, TINY)
    assert len(examples) == len(sample)
    for example, stage in zip(examples, sample["stage"], strict=True):
        assert example.image.startswith(b"\x89PNG")
        assert example.targets["grounding"].startswith(f"Stage: {stage}. Rules: ")
        assert example.targets["perception"].startswith("t0 ")
    scores = faithfulness.score_run(
        prepared, sample.assign(answer=[e.targets["grounding"] for e in examples])
    )
    assert (scores["stage_correct"]).all()
    assert scores["precision"].dropna().eq(1.0).all()  # the references cite only true events


def test_kappa_goal_texts_follow_the_numbers():
    met = train.kappa_goal_texts(0.80, 0.74)
    assert met["mini_goal_verdict"] == "met"
    assert met["mini_external_verdict"].startswith("lower than within, by 0.06")
    missed = train.kappa_goal_texts(0.72, 0.78)
    assert missed["mini_goal_verdict"] == "not met (within center 0.72 < 0.75)"
    assert missed["mini_external_verdict"].startswith("not lower than within (0.78 vs 0.72)")
    assert train.kappa_goal_texts(0.8, float("nan"))["mini_goal_verdict"] == "—"


def _ceilings(sample: float | None, nights: float | None, scorers=(None, None)):
    return pd.DataFrame(
        {
            "epochs": ["class-balanced sample", "whole test nights", "class-balanced sample"],
            "setting": [WITHIN, WITHIN, EXTERNAL],
            "kappa": [0.5, 0.6, 0.4],
            "label ceiling κ": [sample, nights, 0.5],
            "share of ceiling": [0.8, 0.9, 0.7],
            "two scorers κ": [*scorers, None],
        }
    )


def test_ceiling_text_follows_the_numbers_and_says_when_there_is_none():
    text = train.ceiling_text(_ceilings(0.70, 0.82), "dcsm")
    assert "DCSM's class-balanced sample" in text and "κ 0.70" in text and "80 %" in text
    assert "κ 0.82" in text and "90 %" in text and "is lower: it holds as much N1" in text
    assert "is not lower" in train.ceiling_text(_ceilings(0.85, 0.82), "dcsm")
    real = train.ceiling_text(_ceilings(None, None), "mass")
    assert real.startswith("MASS is read here from a real dataset") and "κ" not in real
    isruc = train.ceiling_text(_ceilings(None, None, scorers=(0.625, 0.7)), "isruc")
    assert "its two scorers agree at κ 0.62 on the class-balanced sample" in isruc
    assert "SleepVLM-mini reaches 80 %" in isruc  # 0.5 / 0.625


def test_token_seconds_shrink_as_the_image_widens():
    """An image token spans 2 patches of the epoch's slot: twice the width, half the seconds
    (up to the label margin, which does not grow with it)."""
    default = mini.MiniConfig()
    wide = dataclasses.replace(default, image_width=2 * default.image_width)
    assert mini.token_seconds(wide) == pytest.approx(mini.token_seconds(default) / 2, rel=0.1)
    assert 5 < mini.token_seconds(default) < 8  # ~6 s of a 30-s epoch


def test_unmerged_patches_give_four_times_the_tokens_each_half_as_wide(examples):
    unmerged = dataclasses.replace(TINY, spatial_merge=1)
    assert mini.token_seconds(unmerged) == pytest.approx(mini.token_seconds(TINY) / 2)
    counts = {}
    for config in (TINY, unmerged):
        processor = mini.image_processor(config)
        grid = processor(images=[mini._rgb(examples[0].image)], return_tensors="pt")
        counts[config.spatial_merge] = mini.image_tokens(
            grid["image_grid_thw"], processor.merge_size
        )
    assert counts[1] == [4 * n for n in counts[2]]


def test_segment_events_name_each_segments_own_events():
    events = [
        Evidence("kcomplex", "eeg", 4.5, 5.6),  # crosses into the second segment
        Evidence("spindle", "eeg", 12.2, 13.1),
        Evidence("spindle", "eeg", 13.5, 14.0),  # the same kind twice: named once
        Evidence("blink", "eog", 29.5, 30.0),
    ]
    words = mini.segment_event_words(events)
    assert words == [["kcomplex@EEG"], ["kcomplex@EEG"], ["spindle@EEG"], [], [], ["blink@EOG"]]
    text = mini.waveform_description(_epoch("N3", 0), segment_events=words).split()
    assert text[5:7] == ["kcomplex@EEG", "t5"] and text[-1] == "blink@EOG"
    assert "events:" not in text


def test_scored_answers_are_the_answers_with_a_probability_per_character(trained, examples):
    model = mini.MiniModel.load(trained[0])
    pngs = [e.image for e in examples[:3]] + [_white_png((448, 224))]
    scored = model.generate_scored(pngs)
    assert [a.text for a in scored] == model.generate(pngs)
    for answer in scored[:3]:
        assert len(answer.confidence) == len(answer.text)
        assert ((answer.confidence > 0) & (answer.confidence <= 1)).all()
        assert answer.least_confidence(0, len(answer.text)) == answer.confidence.min()
    assert scored[3].confidence.tolist() == [1.0] * len(scored[3].text)  # not the model's words


def test_night_answers_pair_each_epoch_of_the_nights_with_its_annotation(trained, prepared):
    from sleepvlm.explain import citations
    from sleepvlm.splits import night_keys, nights_of

    model = mini.MiniModel.load(trained[0])
    manifest = prepared.manifest
    night = nights_of(manifest[manifest["split"] == "test"], 1)
    answers, found = citations.night_answers(model, prepared, night)
    epochs = manifest[night_keys(manifest).isin(night)]
    assert len(answers) == len(found) == len(epochs)
    assert [a.epoch for a in found] == epochs["epoch"].tolist()
    curve = citations.confidence_curve(answers, found, thresholds=[0.0, 1.0])
    assert curve.loc[1, "claims_per_answer"] <= curve.loc[0, "claims_per_answer"]
    cut = citations.score_nights(model, prepared, night, 0.5)
    assert cut["answer"].tolist() == [citations.cite_confident(a, 0.5) for a in answers]
    curve, chosen = citations.validation_threshold(model, prepared, 1)  # the one val night
    assert curve["min_confidence"].tolist() == list(citations.THRESHOLDS)
    assert chosen == citations.choose_min_confidence(curve)
    no_val = dataclasses.replace(prepared, manifest=manifest[manifest["split"] != "val"])
    curve, chosen = citations.validation_threshold(model, no_val, 1)
    assert curve.empty and chosen is None


def test_evidence_tokens_can_weigh_more_in_the_grounding_loss(trained, examples):
    folder, _ = trained
    model = mini.MiniModel.load(folder)
    batch = mini.make_batch(
        model.tokenizer,
        model.processor,
        [e.image for e in examples[:2]],
        mini.INSTRUCTIONS["grounding"],
        [e.targets["grounding"] for e in examples[:2]],
    )
    marker = model.tokenizer.convert_tokens_to_ids(mini.EVIDENCE)
    weights = mini.evidence_weights(batch["input_ids"], marker, 3.0)
    for ids, row in zip(batch["input_ids"].tolist(), weights.tolist(), strict=True):
        at = ids.index(marker)
        assert set(row[: at + 1]) == {1.0} and set(row[at + 1 :]) == {3.0}
    with torch.no_grad():
        output = model.model(**batch)
    plain = mini.weighted_next_token_loss(output.logits, batch["labels"], torch.ones_like(weights))
    assert float(plain) == pytest.approx(float(output.loss), rel=1e-4)
    # Weight 0 before the marker: the model's own loss of the evidence tokens alone.
    evidence_only = (weights == 3.0).float()
    labels = batch["labels"].masked_fill(evidence_only == 0, mini.IGNORE)
    with torch.no_grad():
        own = model.model(**{**batch, "labels": labels}).loss
    weighted = mini.weighted_next_token_loss(output.logits, batch["labels"], evidence_only)
    assert float(weighted) == pytest.approx(float(own), rel=1e-4)
    config = dataclasses.replace(TINY, evidence_weight=3.0, grounding_steps=2)
    log = train.train_phases(model.model, model.tokenizer, model.processor, examples, config)
    assert len(log.loss["grounding"]) == 2 and all(np.isfinite(log.loss["grounding"]))


def test_column_spans_cover_the_scored_epoch_once():
    config = mini.MiniConfig()
    spans = mini.column_spans(config)
    assert len(spans) == config.image_width // (config.spatial_merge * config.patch_size)
    inside = [k for k, span in enumerate(spans) if span is not None]
    assert inside == list(range(inside[0], inside[-1] + 1))  # one run of columns
    assert spans[inside[0]][0] == 0.0 and 29 < spans[inside[-1]][1] <= 30
    for k in inside[:-1]:
        assert spans[k][1] == pytest.approx(spans[k + 1][0])  # no gap, no overlap
        assert spans[k][1] - spans[k][0] <= mini.token_seconds(config) + 1e-9


def test_presence_targets_mark_the_columns_an_event_overlaps():
    config = mini.MiniConfig()
    spans = mini.column_spans(config)
    spindle = Evidence("spindle", "eeg", 12.0, 13.5)
    targets = mini.presence_targets([spindle, Evidence("rem", "eog", 0.0, 0.0)], config)
    assert targets.shape == (len(spans), len(EVENT_KINDS))
    kind = EVENT_KINDS.index("spindle")
    for span, row in zip(spans, targets, strict=True):
        if span is None:
            assert np.isnan(row).all()  # the neighbours' columns: their events are unknown
        else:
            assert row[kind] == float(span[0] < 13.5 and span[1] > 12.0)
    assert targets[:, EVENT_KINDS.index("rem")][[s is not None for s in spans]].tolist()[0] == 1
    assert np.nansum(targets) == 2  # each event in one column here, nothing else marked


def test_the_presence_loss_trains_the_image_tokens_and_leaves_no_hook(prepared):
    config = dataclasses.replace(TINY, presence_weight=1.0, image_width=448)
    sample = train.training_sample(prepared, per_class=2, seed=0, max_nights=1)
    examples = train.build_examples(prepared, sample, config)
    assert all(e.presence.shape[1] == len(EVENT_KINDS) for e in examples)
    torch.manual_seed(0)
    tokenizer = mini.train_tokenizer([e.targets[p] for e in examples for p in mini.PHASES])
    model = mini.build_model(tokenizer, config)
    processor = mini.image_processor(config)
    head = mini.PresenceHead(model, config)
    batch = mini.make_batch(tokenizer, processor, [e.image for e in examples], "Describe.")
    optimizer = torch.optim.AdamW([*model.parameters(), *head.linear.parameters()], lr=1e-2)
    targets = np.stack([e.presence for e in examples])
    losses = []
    for _ in range(15):
        model(**batch)
        loss = head.loss(targets)
        loss.backward()
        tower = [p.grad for p in model.model.visual.parameters() if p.grad is not None]
        assert tower and any(g.abs().sum() > 0 for g in tower)  # it reaches the vision tower
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    head.close()
    assert losses[-1] < 0.5 * losses[0]
    log = mini.train_phase(model, tokenizer, processor, examples, "perception", 2, config)
    assert len(log.loss["perception"]) == 2
    assert not model.model.visual._forward_hooks  # the head is gone after training
    bare = [dataclasses.replace(e, presence=None) for e in examples]
    with pytest.raises(mini.MiniError, match="presence_weight needs each example's presence"):
        mini.train_phase(model, tokenizer, processor, bare, "perception", 1, config)


def test_a_column_embedding_is_trained_saved_and_loaded_with_the_model(examples, tmp_path, capfd):
    config = dataclasses.replace(TINY, column_embedding=True)
    torch.manual_seed(0)
    tokenizer = mini.train_tokenizer([e.targets[p] for e in examples for p in mini.PHASES])
    model = mini.build_model(tokenizer, config)
    processor = mini.image_processor(config)
    columns = model.model.visual.column_embedding
    assert columns.shape == (mini.token_grid(config)[1], config.text_dim)
    before = columns.detach().clone()
    batch = mini.make_batch(tokenizer, processor, [examples[0].image], "Describe.")
    plain = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
    tokens = plain.pooler_output[0].detach().view(*mini.token_grid(config), -1)
    # each column's tokens are shifted by that column's vector (the tokens of one column
    # differ from their row neighbours' by more than the tower alone makes them differ)
    with torch.no_grad():
        columns.zero_()
        bare = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        columns.copy_(before)
    shift = tokens - bare.pooler_output[0].view(*mini.token_grid(config), -1)
    assert torch.allclose(shift, before.expand_as(shift), atol=1e-6)
    log = train.train_phases(model, tokenizer, processor, examples, config)
    assert not torch.equal(columns.detach(), before)  # trained
    mini.save(model, tokenizer, processor, tmp_path / "m", mini.settings_of(config, log=log.loss))
    capfd.readouterr()
    loaded = mini.MiniModel.load(tmp_path / "m")
    assert "UNEXPECTED" not in "".join(capfd.readouterr())  # no stray loader report
    assert torch.equal(loaded.model.model.visual.column_embedding.detach(), columns.detach())
    model.eval()
    assert loaded.generate([e.image for e in examples[:2]]) == mini.MiniModel(
        model, tokenizer, processor, mini.settings_of(config)
    ).generate([e.image for e in examples[:2]])
    # a folder whose settings ask for the embedding but whose weights lack it
    plain = mini.save(mini.build_model(tokenizer, TINY), tokenizer, processor, tmp_path / "p", {})
    (plain / mini.SETTINGS_FILE).write_text(json.dumps(mini.settings_of(config)))
    with pytest.raises(mini.MiniError, match="column embedding it does not hold"):
        mini.MiniModel.load(plain)


def test_a_grounding_batch_mixes_in_the_perception_share_asked():
    assert mini.batch_phases("grounding", 8, 0.25) == ["perception"] * 2 + ["grounding"] * 6
    assert mini.batch_phases("grounding", 8, 0.0) == ["grounding"] * 8
    assert mini.batch_phases("perception", 8, 0.25) == ["perception"] * 8
    examples = make_examples(4)
    tokenizer = mini.train_tokenizer([e.targets[p] for e in examples for p in mini.PHASES])
    processor = mini.image_processor(TINY)
    tasks = mini.batch_phases("grounding", 4, 0.5)
    batch = mini.make_batch(
        tokenizer,
        processor,
        [e.image for e in examples],
        [mini.INSTRUCTIONS[t] for t in tasks],
        [e.targets[t] for e, t in zip(examples, tasks, strict=True)],
    )
    asked = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert [mini.INSTRUCTIONS["perception"] in a for a in asked] == [True, True, False, False]
    assert asked[0].strip().endswith(examples[0].targets["perception"])
    assert asked[3].strip().endswith(examples[3].targets["grounding"])


def test_a_grounding_batch_shows_a_blank_image_to_the_unconditional_share(monkeypatch, examples):
    assert mini.blanked_rows("grounding", 8, 0.125) == 1
    assert mini.blanked_rows("grounding", 8, 0.0) == 0
    assert mini.blanked_rows("perception", 8, 0.5) == 0
    blank = np.asarray(Image.open(io.BytesIO(mini.blank_like(examples[0].image))))
    assert blank.shape[:2] == (TINY.image_height, TINY.image_width) and (blank == 255).all()
    tokenizer = mini.train_tokenizer([e.targets[p] for e in examples for p in mini.PHASES])
    processor = mini.image_processor(TINY)
    shown = []
    real_batch = mini.make_batch

    def batch(tokenizer, processor, pngs, instruction, targets=None):
        shown.append([np.asarray(Image.open(io.BytesIO(p))).min() for p in pngs])
        return real_batch(tokenizer, processor, pngs, instruction, targets)

    monkeypatch.setattr(mini, "make_batch", batch)
    config = dataclasses.replace(TINY, unconditional_share=0.5, grounding_steps=2)
    model = mini.build_model(tokenizer, config)
    mini.train_phase(model, tokenizer, processor, examples, "grounding", 2, config)
    for darkest in shown:  # the drawn traces are dark; a blank image has none
        assert [d == 255 for d in darkest] == [False, False, True, True]
    shown.clear()
    mini.train_phase(model, tokenizer, processor, examples, "perception", 1, config)
    assert not any(d == 255 for d in shown[0])
