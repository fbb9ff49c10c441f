"""Tests of the local transformers backend. The generation test builds a tiny random model
and tokenizer on disk (no download) and is skipped while transformers is not installed."""

import importlib.util

import pytest

from sleepvlm.models import Engine, ModelError, ModelSpec, user_request
from sleepvlm.models.backends import TransformersBackend, to_hf_messages

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


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


@pytest.mark.skipif(HAS_TRANSFORMERS, reason="transformers is installed")
def test_missing_transformers_is_a_clear_error(tmp_path):
    spec = ModelSpec(name="local-vlm", backend="transformers", model_id=str(tmp_path))
    with pytest.raises(ModelError, match="needs .*transformers: pip install"):
        Engine(spec, tmp_path / "r.jsonl", progress=False).run([user_request("x")])
    with pytest.raises(ModelError, match="needs .*transformers"):
        TransformersBackend(str(tmp_path))


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A 2-layer random Llama with a word-level tokenizer and a chat template."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    words = ["<pad>", "<unk>", "<s>", "</s>", "user", "assistant", "system", "W", "N1", "N2"]
    words += ["N3", "REM", "Stage?", ":"]
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    config = transformers.LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    transformers.set_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    fast.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed")
def test_transformers_backend_generates_greedily_on_cpu(tiny_model_dir, tmp_path):
    spec = ModelSpec(
        name="tiny",
        backend="transformers",
        model_id=str(tiny_model_dir),
        decoding={"temperature": 0, "max_tokens": 4},
    )
    requests = [user_request("Stage?", system="N2"), user_request("Stage? W")]
    first = Engine(spec, tmp_path / "a.jsonl", device="cpu", progress=False).run(requests)
    again = Engine(spec, tmp_path / "b.jsonl", device="cpu", progress=False).run(requests)
    assert all(r.ok and isinstance(r.text, str) for r in first)
    assert [r.text for r in first] == [r.text for r in again]  # greedy: deterministic
    assert all(0 < r.completion_tokens <= 4 and r.prompt_tokens > 0 for r in first)
