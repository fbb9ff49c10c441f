"""Tests of the embedded chat-completions server and the local models it serves, ChatTS
time-series parts included."""

import subprocess
import sys
import time

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
