"""Tests of the embedded chat-completions server and the local models it serves, ChatTS
time-series parts included."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest

from sleepvlm.data.records import STAGES
from sleepvlm.models import (
    Engine,
    Faults,
    ModelError,
    ModelSpec,
    get_model,
    local_model_names,
    majority_model,
    register_local_model,
    running_server,
    user_request,
)
from sleepvlm.models.local import chance
from sleepvlm.models.messages import to_openai_messages, wire_timeseries


@pytest.fixture(scope="module")
def served():
    """``sleepvlm serve`` in its own process, on a free port, majority class REM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sleepvlm.models", "--port", "0", "--majority-stage", "REM"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        yield openai.OpenAI(api_key="unused", base_url=url, max_retries=0)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_serve_round_trip_through_the_openai_client(served):
    assert {"chance", "majority"} <= {m.id for m in served.models.list()}
    answer = served.chat.completions.create(
        model="majority", messages=[{"role": "user", "content": "Stage?"}], temperature=0
    )
    assert answer.choices[0].message.content == "REM"
    assert answer.choices[0].message.role == "assistant"


def test_served_chance_matches_in_process_chance_and_is_stable(served):
    request = user_request("Epoch 17: stage?", system="Answer with one stage.")
    wire = to_openai_messages(request.messages)
    answers = {
        served.chat.completions.create(model="chance", messages=wire).choices[0].message.content
        for _ in range(3)
    }
    assert answers == {chance(wire)}


def test_unknown_model_and_route_are_404(served):
    with pytest.raises(openai.NotFoundError, match="not served"):
        served.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])


def test_chance_is_uniform_and_majority_constant():
    draws = [chance([{"role": "user", "content": f"epoch {i}"}]) for i in range(2000)]
    counts = {stage: draws.count(stage) for stage in STAGES}
    assert set(draws) == set(STAGES)
    assert all(abs(c / 2000 - 0.2) < 0.04 for c in counts.values())
    assert majority_model("N3")([]) == "N3"
    with pytest.raises(ModelError, match="not one of"):
        majority_model("N4")


def test_registered_callables_are_served_and_run_in_process(tmp_path):
    register_local_model(
        "first-word", lambda messages: messages[-1]["content"].split()[0], replace=True
    )
    with pytest.raises(ModelError, match="already registered"):
        register_local_model("first-word", len)
    with pytest.raises(ModelError, match="must be callable"):
        register_local_model("broken", "N2")
    assert "first-word" in local_model_names()
    request = user_request("N3 obviously")
    with running_server() as server:
        client = openai.OpenAI(api_key="unused", base_url=server.url, max_retries=0)
        reply = client.chat.completions.create(
            model="first-word", messages=to_openai_messages(request.messages)
        )
    assert reply.choices[0].message.content == "N3"
    spec = get_model("majority").replace(model_id="first-word")
    [local] = Engine(spec, tmp_path / "r.jsonl", progress=False).run([request])
    assert local.text == "N3" and local.ok


def test_a_failing_model_answers_500_and_the_server_survives():
    def broken(messages):
        raise RuntimeError("model bug")

    register_local_model("broken-model", broken, replace=True)
    with running_server() as server:
        client = openai.OpenAI(api_key="unused", base_url=server.url, max_retries=0)
        with pytest.raises(openai.InternalServerError, match="model bug"):
            client.chat.completions.create(model="broken-model", messages=[])
        reply = client.chat.completions.create(model="majority", messages=[])
        assert reply.choices[0].message.content in STAGES


def test_fault_script_is_validated_and_latency_applied():
    with pytest.raises(ModelError, match="unknown fault kinds"):
        Faults(script=["ok", "teapot"])
    with running_server(faults=Faults(latency_s=0.2, script=["429"])) as server:
        client = openai.OpenAI(api_key="unused", base_url=server.url, max_retries=0)
        start = time.perf_counter()
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="chance", messages=[])
        waited = time.perf_counter() - start
        assert info.value.status_code == 429
        assert info.value.response.headers["retry-after"] == "0.05"
        assert waited >= 0.2  # the delay measured by our clock, not read from the response
        assert server.hits == 1


def test_chatts_series_reach_a_served_model_intact_over_http(tmp_path):
    received = []

    def series_reader(messages):
        received.append(wire_timeseries(messages))
        return "N2"

    register_local_model("series-reader", series_reader, replace=True)
    series = np.random.default_rng(3).normal(0, 40, (3, 1000)) / 7  # long decimals
    text = "EEG: <ts><ts/>; EOG: <ts><ts/>; EMG: <ts><ts/>. Stage?"
    request = user_request(text, system="Score sleep.", timeseries=series, id="e1")
    with running_server() as server:
        spec = ModelSpec(
            name="chatts-like",
            backend="openai_compatible",
            model_id="series-reader",
            base_url=server.url,
            modalities=("sequence",),
            role="ts-llm",
        )
        [response] = Engine(spec, tmp_path / "r.jsonl", progress=False).run([request])
        assert response.ok and response.text == "N2" and server.hits == 1
        # in-process, the same callable sees the same series
        local = spec.replace(backend="local", base_url=None)
        [in_process] = Engine(local, tmp_path / "l.jsonl", progress=False).run([request])
    assert in_process.text == "N2" and len(received) == 2
    for seen in received:
        assert np.array_equal(np.array(seen), series)  # every float, bit for bit


def test_a_malformed_timeseries_part_is_a_400_not_a_model_call():
    register_local_model("series-counter", lambda m: str(len(wire_timeseries(m))), replace=True)
    bad = {"type": "timeseries", "timeseries": {"data": "file:///etc/passwd"}}
    with running_server() as server:
        client = openai.OpenAI(api_key="unused", base_url=server.url, max_retries=0)
        with pytest.raises(
            openai.BadRequestError, match="timeseries part must hold its values inline"
        ):
            client.chat.completions.create(
                model="series-counter", messages=[{"role": "user", "content": [bad]}]
            )
        good = {"type": "timeseries", "timeseries": {"data": [1, 2.5]}}
        reply = client.chat.completions.create(
            model="series-counter", messages=[{"role": "user", "content": [good, good]}]
        )
    assert reply.choices[0].message.content == "2"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_models_without_weights_answer_503_saying_how_to_get_them(tmp_path, monkeypatch):
    """Before SleepVLM-mini is trained and before the real model's weights are fetched, both
    are listed as not ready and answered with 503 and what to do; the floors stay ready."""
    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SLEEPVLM_MINI_DIR", raising=False)
    with running_server() as server:
        listed = {m["id"]: m for m in _get(f"{server.url}/models")["data"]}
        assert listed["chance"]["ready"] and "how_to_get" not in listed["chance"]
        for name, advice in (
            ("sleepvlm-mini", "run chapter 11"),
            ("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ):
            assert listed[name]["ready"] is False and advice in listed[name]["how_to_get"]
            status, body = _post(
                f"{server.url}/chat/completions",
                {"model": name, "messages": [{"role": "user", "content": "Stage?"}]},
            )
            assert status == 503
            error = body["error"]
            assert error["type"] == "model_not_ready" and advice in error["message"]
        # Asking did not fetch anything: the server never downloads on a request.
        assert not any((tmp_path / "cache").rglob("*.gguf"))


def test_served_pretrained_model_answers_with_its_weights(tmp_path, monkeypatch):
    """A registry model with weights in the cache is ready and answers over HTTP (a tiny GGUF
    written here stands for the real one)."""
    import hashlib

    from sleepvlm.models import server as server_module
    from sleepvlm.models.tiny import write_tiny_gguf

    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "tiny.gguf"
    write_tiny_gguf(source)
    entry = {
        "package": "tiny-gguf",
        "version": "0.1",
        "file": "tiny.gguf",
        "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
    }
    spec = ModelSpec(
        name="tiny-gguf",
        backend="transformers",
        model_id="tiny",
        weights=entry,
        decoding={"temperature": 0, "max_tokens": 3},
        role="text-llm",
    )
    spec.wheel_weights.path.write_bytes(source.read_bytes())
    monkeypatch.setattr(
        server_module, "pretrained_models", lambda registry=None: {"tiny-gguf": spec}
    )
    with running_server() as server:
        listed = {m["id"]: m for m in _get(f"{server.url}/models")["data"]}
        assert listed["tiny-gguf"]["ready"] is True
        client = openai.OpenAI(api_key="unused", base_url=server.url, max_retries=0)
        answer = client.chat.completions.create(
            model="tiny-gguf", messages=[{"role": "user", "content": "Stage?"}], temperature=0
        )
        assert isinstance(answer.choices[0].message.content, str)
