"""Tests of the local transformers backend on tiny random models built on disk (no download):
a text-only Llama and a Qwen2-VL / Qwen2.5-VL that reads an epoch image, through the engine
on the CPU."""

import importlib.util
import json

import numpy as np
import pytest

from sleepvlm.models import Engine, ModelError, ModelSpec, user_request
from sleepvlm.models.backends import TransformersBackend, load_processor, to_hf_messages
from sleepvlm.models.tiny import TINY_MAX_PIXELS, build_tiny_text_model, build_tiny_vlm
from sleepvlm.render import render_png

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return build_tiny_text_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture(scope="module")
def epoch_png():
    """A 448 x 224 epoch image of random signals, as the image experiments send."""
    epoch = np.random.default_rng(0).normal(0, 20, (3, 3000))
    return render_png(epoch)


def _spec(folder, max_tokens=4):
    return ModelSpec(
        name="tiny",
        backend="transformers",
        model_id=str(folder),
        modalities=("image", "text"),
        decoding={"temperature": 0, "max_tokens": max_tokens},
    )


def test_hf_messages_put_one_image_placeholder_per_image_before_the_text():
    request = user_request("Stage?", images=(PNG, PNG), system="Score sleep.")
    hf = to_hf_messages(request.messages, multimodal=True)
    assert hf[0] == {"role": "system", "content": [{"type": "text", "text": "Score sleep."}]}
    assert hf[1]["content"] == [
        {"type": "image"},
        {"type": "image"},
        {"type": "text", "text": "Stage?"},
    ]
    text_only = to_hf_messages(user_request("Stage?").messages, multimodal=False)
    assert text_only == [{"role": "user", "content": "Stage?"}]


def test_missing_transformers_is_a_clear_error(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec

    def without_transformers(name, *args, **kwargs):
        return None if name == "transformers" else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_transformers)
    spec = ModelSpec(name="local-vlm", backend="transformers", model_id=str(tmp_path))
    responses = Engine(spec, tmp_path / "r.jsonl", progress=False)
    with pytest.raises(ModelError, match="needs transformers: pip install"):
        responses.run([user_request("x")])
    with pytest.raises(ModelError, match="needs transformers"):
        TransformersBackend(str(tmp_path))


def test_transformers_backend_generates_greedily_on_cpu(text_model, tmp_path):
    requests = [user_request("Stage?", system="N2"), user_request("Stage? W")]
    first = Engine(_spec(text_model), tmp_path / "a.jsonl", device="cpu", progress=False)
    again = Engine(_spec(text_model), tmp_path / "b.jsonl", device="cpu", progress=False)
    first, again = first.run(requests), again.run(requests)
    assert all(r.ok and isinstance(r.text, str) for r in first)
    assert [r.text for r in first] == [r.text for r in again]  # greedy: deterministic
    assert all(0 < r.completion_tokens <= 4 and r.prompt_tokens > 0 for r in first)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_tiny_vlm_folder_loads_like_a_checkpoint(tmp_path, family):
    folder = build_tiny_vlm(tmp_path / family, family=family)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == family and config["vision_config"]["depth"] == 1
    processor = load_processor(str(folder))
    assert processor.image_processor.size["longest_edge"] == TINY_MAX_PIXELS
    prompt = processor.apply_chat_template(
        to_hf_messages(user_request("Stage?", images=(PNG,)).messages, multimodal=True),
        add_generation_prompt=True,
        tokenize=False,
    )
    assert prompt == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Stage?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_vlm_reads_an_epoch_image_and_answers_deterministically(vlm, epoch_png, tmp_path):
    request = user_request("Stage?", images=(epoch_png,), system="Score sleep.")
    answers = [
        Engine(_spec(vlm, 5), tmp_path / f"{i}.jsonl", device="cpu", progress=False).run([request])[
            0
        ]
        for i in range(2)
    ]
    assert all(a.ok and a.error is None for a in answers)
    assert answers[0].text == answers[1].text and answers[0].text.strip()
    # The 448 x 224 image shrinks to 112 x 56 pixels: 8 x 4 patches, 8 tokens after the merge.
    text_only = Engine(_spec(vlm, 5), tmp_path / "t.jsonl", device="cpu", progress=False)
    no_image = text_only.run([user_request("Stage?", system="Score sleep.")])[0]
    assert answers[0].prompt_tokens - no_image.prompt_tokens == 8 + 2  # + vision start/end
    assert 0 < answers[0].completion_tokens <= 5


def test_vlm_answer_depends_on_the_image(vlm, epoch_png):
    import asyncio

    backend = TransformersBackend(str(vlm), device="cpu")
    flat = render_png(np.zeros((3, 3000)))
    decoding = {"temperature": 0, "max_tokens": 6}

    async def answer(png):
        completion = await backend.complete(
            user_request("Stage?", images=(png,)).messages, decoding, 60
        )
        return completion.text

    assert asyncio.run(answer(epoch_png)) != asyncio.run(answer(flat))


def test_time_series_are_refused_with_advice(text_model):
    import asyncio

    backend = TransformersBackend(str(text_model), device="cpu")
    messages = user_request("EEG: <ts><ts/>", timeseries=[[1.0, 2.0]]).messages
    with pytest.raises(ModelError, match="sends no time series"):
        asyncio.run(backend.complete(messages, {"temperature": 0}, 60))


def test_a_missing_model_folder_is_a_clear_error(tmp_path):
    import asyncio

    backend = TransformersBackend(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(ModelError, match="cannot load a model"):
        asyncio.run(backend.complete(user_request("x").messages, {"temperature": 0}, 60))


def test_unknown_tiny_family_is_refused(tmp_path):
    with pytest.raises(ModelError, match="not one of"):
        build_tiny_vlm(tmp_path, family="llava")


def test_batched_generation_equals_one_by_one(text_model):
    """Left-padded batches answer each prompt as it is answered alone (greedy)."""
    import asyncio

    prompts = ["Stage?", "Stage? W N1", "Score this epoch: N2 N3 REM W W", "N1"]
    requests = [user_request(p, system="Answer with one stage.") for p in prompts]
    decoding = {"temperature": 0, "max_tokens": 6}
    alone = TransformersBackend(str(text_model), device="cpu", max_batch=1)
    batched = TransformersBackend(str(text_model), device="cpu", max_batch=len(prompts), wait_s=1)

    async def answers(backend):
        done = await asyncio.gather(*(backend.complete(r.messages, decoding, 60) for r in requests))
        await backend.aclose()
        return done

    one_by_one, together = asyncio.run(answers(alone)), asyncio.run(answers(batched))
    assert [c.text for c in together] == [c.text for c in one_by_one]
    assert [c.prompt_tokens for c in together] == [c.prompt_tokens for c in one_by_one]
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in one_by_one]
    assert len({c.prompt_tokens for c in together}) > 1  # the batch really needed padding


def test_prompts_sharing_a_long_opening_answer_as_with_a_full_prefill(text_model):
    """The shared opening's cache is computed once and reused, alone and in batches, and the
    answers are those of prompts prefilled whole."""
    import asyncio

    shared_tokens = 64  # the tiny model's context is 256 tokens
    criteria = " ".join(f"Rule {i}: N{i % 3 + 1} if feature {i}." for i in range(12))
    inputs = [
        "spindle at 3 s",
        "K complex at 12 s, spindle",
        "alpha 9 Hz",
        "slow waves 40 %",
        "REMs",
    ]
    requests = [user_request(f"Epoch: {x}. Stage?", system=criteria) for x in inputs]
    decoding = {"temperature": 0, "max_tokens": 6}

    async def answers(backend, batch):
        done = []
        for start in range(0, len(requests), batch):
            group = requests[start : start + batch]
            done += await asyncio.gather(
                *(backend.complete(r.messages, decoding, 60) for r in group)
            )
        await backend.aclose()
        return done

    def backend(max_batch, shared_prefix_tokens=shared_tokens):
        return TransformersBackend(
            str(text_model),
            "cpu",
            max_batch=max_batch,
            wait_s=1,
            shared_prefix_tokens=shared_prefix_tokens,
        )

    whole = asyncio.run(answers(backend(1, shared_prefix_tokens=10**9), 1))
    alone, together = backend(1), backend(2)
    for reused in (asyncio.run(answers(alone, 1)), asyncio.run(answers(together, 2))):
        assert [c.text for c in reused] == [c.text for c in whole]
        assert [c.prompt_tokens for c in reused] == [c.prompt_tokens for c in whole]
    assert len(alone._prefix.tokens) >= shared_tokens  # the opening was really reused
    assert len(together._prefix.tokens) >= shared_tokens


def test_batch_queue_groups_by_key_and_hands_errors_to_their_callers():
    from sleepvlm.models.backends import BatchQueue

    calls = []

    def run(items):
        calls.append(list(items))
        return [ValueError(i) if i < 0 else i * 10 for i in items]

    batches = BatchQueue(run, max_batch=8, wait_s=0.5)
    futures = [batches.submit(i, key="a" if i >= 0 else "b") for i in (1, 2, -1, 3)]
    results = [f.result(timeout=10) for f in futures]
    batches.close()
    assert results[:2] == [10, 20] and results[3] == 30 and isinstance(results[2], ValueError)
    assert sorted(map(sorted, calls)) == [[-1], [1, 2, 3]]


def test_a_prompt_longer_than_the_context_is_refused_alone(text_model):
    import asyncio

    backend = TransformersBackend(str(text_model), device="cpu", max_batch=4, wait_s=1)
    assert backend.context_tokens == 256
    long = user_request(" ".join(["W"] * 300))
    short = user_request("Stage?")
    assert backend.prompt_tokens(long.messages) > 256

    async def both():
        return await asyncio.gather(
            *(
                backend.complete(r.messages, {"temperature": 0, "max_tokens": 4}, 60)
                for r in (long, short)
            ),
            return_exceptions=True,
        )

    refused, answered = asyncio.run(both())
    assert isinstance(refused, ModelError) and "exceed the model's context" in str(refused)
    assert isinstance(answered.text, str)


def test_a_gguf_file_is_loaded_with_its_tokenizer_and_chat_template(tmp_path, monkeypatch):
    """A tiny GGUF written here, placed where fetched weights go, answers through the backend
    with the weights written (not a random initialisation) and the file's chat template."""
    import asyncio
    import hashlib

    from sleepvlm.models.backends import _loaded_model
    from sleepvlm.models.tiny import write_tiny_gguf
    from sleepvlm.models.weights import WheelWeights

    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "tiny.gguf"
    tensors = write_tiny_gguf(source)
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    weights = WheelWeights("tiny-gguf", "0.1", "tiny.gguf", sha256)
    weights.path.write_bytes(source.read_bytes())  # as if fetched
    backend = TransformersBackend("unused", device="cpu", weights=weights, max_batch=2)
    model, tokenizer = _loaded_model("unused", "cpu", weights)
    embedding = model.get_input_embeddings().weight.detach().numpy()
    assert np.array_equal(embedding, tensors["token_embd.weight"])
    request = user_request("Stage?", system="Answer with one stage.")
    expected = (
        "<|im_start|>system\nAnswer with one stage.<|im_end|>\n<|im_start|>user\nStage?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert backend.prompt_tokens(request.messages) == len(tokenizer(expected)["input_ids"])
    completion = asyncio.run(
        backend.complete(request.messages, {"temperature": 0, "max_tokens": 3}, 60)
    )
    assert isinstance(completion.text, str) and 0 < completion.completion_tokens <= 3


def test_loading_a_gguf_file_draws_no_progress_bar_or_widget_notice(tmp_path, capfd):
    """In an executed chapter a progress bar or tqdm's widget notice is stray output, with the
    builder's paths in it."""
    import transformers

    from sleepvlm.models.backends import _load_gguf
    from sleepvlm.models.tiny import write_tiny_gguf

    source = tmp_path / "tiny.gguf"
    write_tiny_gguf(source)
    bars = transformers.utils.logging
    was_enabled = bars.is_progress_bar_enabled()  # as an earlier test or the env left it
    bars.enable_progress_bar()
    try:
        capfd.readouterr()
        model, _ = _load_gguf(transformers, source)
        out, err = capfd.readouterr()
        assert model is not None and "GGUF" not in err + out and "%|" not in err + out
        assert bars.is_progress_bar_enabled()  # switched back on after
        bars.disable_progress_bar()
        _load_gguf(transformers, source)
        assert not bars.is_progress_bar_enabled()  # a reader's own choice is left as it was
    finally:
        (bars.enable_progress_bar if was_enabled else bars.disable_progress_bar)()
