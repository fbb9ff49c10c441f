"""Tests of the model registry, chat messages and secret handling (no network)."""

import base64

import pytest
import yaml

from sleepvlm.data.records import DataError
from sleepvlm.models import (
    USER_REGISTRY_ENV,
    ChatRequest,
    Message,
    ModelError,
    RegistryError,
    get_model,
    load_registry,
    redact,
    user_request,
    wire_images,
    wire_text,
)
from sleepvlm.models.messages import to_openai_messages
from sleepvlm.models.secrets import api_key_from_env

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 16

PAPER_MODELS = {
    "gpt-4o": "gpt-4o",
    "gemma-3-27b-it": "google/gemma-3-27b-it",
    "qwen2.5-vl-7b-instruct": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qvq-72b-preview": "Qwen/QVQ-72B-Preview",
    "llama-3.2-11b-vision-instruct": "meta-llama/Llama-3.2-11B-Vision-Instruct",
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "chatts-14b": "bytedance-research/ChatTS-14B",
}


def test_registry_lists_the_papers_models_at_temperature_zero():
    registry = load_registry()
    for name, model_id in PAPER_MODELS.items():
        assert registry[name].model_id.startswith(model_id)
    assert {s.role for s in registry.values()} >= {"vlm", "text-llm", "ts-llm", "floor"}
    assert all(s.decoding["temperature"] == 0 for s in registry.values())
    assert registry["gpt-4o"].backend == "openai"
    assert registry["gpt-4o"].api_key_env == "OPENAI_API_KEY"
    assert registry["chatts-14b"].modalities == ("sequence",)
    assert registry["chance"].backend == registry["majority"].backend == "local"


def test_cost_uses_the_price_table_and_is_none_when_unknown():
    registry = load_registry()
    assert registry["gpt-4o"].cost(1_000_000, 100_000) == pytest.approx(2.5 + 1.0)
    assert registry["gpt-4o"].cost(None, 10) is None
    assert registry["gemma-3-27b-it"].cost(1000, 10) is None
    assert registry["chance"].cost(1000, 10) == 0


def test_get_model_applies_changes_and_names_unknown_models():
    spec = get_model("gemma-3-27b-it", base_url="http://10.0.0.2:9000/v1")
    assert spec.base_url == "http://10.0.0.2:9000/v1" and spec.model_id == "google/gemma-3-27b-it"
    with pytest.raises(RegistryError, match="unknown model 'gpt-5'.*gpt-4o"):
        get_model("gpt-5")


def _write(tmp_path, entries):
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"backend": "grpc", "model_id": "m"}, "backend 'grpc'"),
        ({"backend": "local", "model_id": ""}, "model_id"),
        ({"backend": "local", "model_id": "m", "modalities": ["audio"]}, "modalities"),
        ({"backend": "openai_compatible", "model_id": "m"}, "needs base_url"),
        ({"backend": "local", "model_id": "m", "decoding": {"temperature": -1}}, "temperature"),
        ({"backend": "local", "model_id": "m", "price": {"input": 1}}, "price"),
        ({"backend": "openai", "model_id": "m", "api_key_env": "sk-abc123"}, "not hold a key"),
        ({"backend": "local", "model_id": "m", "api_key": "x"}, "unknown fields"),
        ({"backend": "local", "model_id": "m", "role": "oracle"}, "role"),
        ({"backend": "local", "model_id": "m", "image": {"dpi": 300}}, "image takes"),
        ({"backend": "local", "model_id": "m", "image": {"width": "wide"}}, "image takes"),
        ({"backend": "local", "model_id": "m", "concurrency": 0}, "concurrency must be"),
        ({"backend": "local", "model_id": "m", "context": "8k"}, "context must be"),
        ({"backend": "local", "model_id": "m", "context": 0}, "context must be"),
    ],
)
def test_bad_registry_entries_are_refused(tmp_path, entry, message):
    with pytest.raises(RegistryError, match=message) as info:
        load_registry(_write(tmp_path, {"bad": entry}))
    assert isinstance(info.value, DataError)


def test_unreadable_registry_names_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("models: [1, 2]")
    with pytest.raises(RegistryError, match="r.yaml"):
        load_registry(path)
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "missing.yaml")


def test_messages_become_openai_wire_form_with_data_urls():
    request = user_request("Stage?", images=(PNG, JPEG), system="You score sleep.")
    wire = to_openai_messages(request.messages)
    assert wire[0] == {"role": "system", "content": "You score sleep."}
    parts = wire[1]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert parts[2] == {"type": "text", "text": "Stage?"}
    assert wire_images(wire) == [PNG, JPEG]
    assert wire_text(wire) == "You score sleep.\n\nStage?"


def test_request_hashes_follow_content():
    a = user_request("Stage?", images=(PNG,))
    b = user_request("Stage?", images=(PNG + b"\x01",))
    assert a.input_hash != b.input_hash
    assert a.prompt_hash == b.prompt_hash  # same text, different picture
    assert user_request("Stage?", images=(PNG,)).input_hash == a.input_hash
    assert ChatRequest(a.messages, prompt_hash="v1").prompt_hash == "v1"


def test_bad_messages_are_refused():
    with pytest.raises(ModelError, match="neither PNG nor JPEG"):
        Message("user", "x", (b"GIF89a....",))
    with pytest.raises(ModelError, match="role 'bot'"):
        Message("bot", "x")
    with pytest.raises(ModelError, match="no messages"):
        ChatRequest(())
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]
    with pytest.raises(ModelError, match="not a base64 data URL"):
        wire_images(bad)
    assert base64.b64encode(PNG)  # the fixture itself is valid


# Fake keys are assembled so that no key-like literal sits in the repository.
PROJECT_KEY = "sk-" + "proj-ABCDEFGHIJKLMNOP1234"


def test_redact_removes_keys_and_secret_environment_values(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", PROJECT_KEY)
    monkeypatch.setenv("VLLM_API_KEY", "plainsecretvalue42")
    text = (
        f"key {PROJECT_KEY}, other {'sk-' + 'z' * 16}, "
        "Authorization: Bearer abcdefgh12345678, vllm plainsecretvalue42, stage N2"
    )
    cleaned = redact(text)
    for secret in ("sk-proj", "sk-zzz", "abcdefgh1234", "plainsecretvalue42"):
        assert secret not in cleaned
    assert cleaned.endswith("stage N2")


def test_missing_key_error_names_the_variable_only(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ModelError, match="OPENAI_API_KEY is not set"):
        api_key_from_env("OPENAI_API_KEY")


def test_a_user_registry_is_read_over_the_packaged_one(tmp_path, monkeypatch):
    user = tmp_path / "mine.yaml"
    user.write_text(
        "models:\n  gpt-4o:\n    backend: openai_compatible\n    model_id: my-gpt\n"
        "    base_url: http://localhost:9/v1\n  lab-vlm:\n    backend: openai_compatible\n"
        "    model_id: lab\n    base_url: http://localhost:9/v1\n    modalities: [image]\n"
    )
    packaged = load_registry()
    monkeypatch.setenv(USER_REGISTRY_ENV, str(user))
    merged = load_registry()
    assert set(merged) == set(packaged) | {"lab-vlm"}
    assert merged["gpt-4o"].model_id == "my-gpt" and merged["gpt-4o"].registry == str(user)
    assert merged["chance"].registry == "packaged"
    monkeypatch.setenv(USER_REGISTRY_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(RegistryError, match="missing.yaml"):
        load_registry()
