"""Tests of the request engine against a real HTTP fake server that misbehaves on purpose
(latency, 429 with Retry-After, 500s, stalls past the timeout, malformed answers)."""

import asyncio
import json
import re
import time

import pytest

from sleepvlm.models import (
    Engine,
    Faults,
    ModelError,
    ModelSpec,
    ResponseStore,
    RetryPolicy,
    build_batch_file,
    ingest_batch_results,
    read_batch_results,
    register_local_model,
    running_server,
    summarize,
    user_request,
)
from sleepvlm.models.backends import parse_retry_after
from sleepvlm.models.messages import hash_wire_messages, to_openai_messages
from sleepvlm.models.server import MALFORMED_ANSWER

FAST_RETRY = RetryPolicy(max_attempts=5, base_s=0.01, max_s=0.05)


def spec_for(server, model_id="chance", **changes):
    return ModelSpec(
        name="fake", backend="openai_compatible", model_id=model_id, base_url=server.url, **changes
    )


def requests(n, tag="epoch"):
    return [user_request(f"{tag} {i}: which stage?", id=f"{tag}-{i}") for i in range(n)]


def make_engine(server, store, **kwargs):
    kwargs = {"concurrency": 4, "timeout_s": 0.5, "retry": FAST_RETRY, "progress": False, **kwargs}
    return Engine(spec_for(server), store, **kwargs)


def test_engine_retries_transient_failures_and_keeps_malformed_answers(tmp_path):
    faults = Faults(script=["429", "500", "timeout", "malformed", "empty"], stall_s=1.0)
    with running_server(faults=faults) as server:
        responses = make_engine(server, tmp_path / "r.jsonl", timeout_s=0.3).run(requests(8))
        hits = server.hits
    # 429, 500 and the stall each cost one extra call; malformed and empty answers are final.
    assert hits == 8 + 3
    assert all(r.ok for r in responses)
    texts = [r.text for r in responses]
    assert texts.count(MALFORMED_ANSWER) == 1 and texts.count(None) == 1
    assert sum(r.attempts for r in responses) == 11
    stored = ResponseStore(tmp_path / "r.jsonl")
    assert len(stored) == 8
    assert {rec["text"] for rec in stored.records()} >= {MALFORMED_ANSWER, None}


def test_retry_after_is_honoured(tmp_path):
    faults = Faults(script=["429"], retry_after_s=0.4)
    with running_server(faults=faults) as server:
        engine = make_engine(server, tmp_path / "r.jsonl", concurrency=1)
        start = time.perf_counter()
        [response] = engine.run(requests(1))
        elapsed = time.perf_counter() - start
    assert response.ok and response.attempts == 2
    # The backoff alone would wait at most 0.05 s.
    assert elapsed >= 0.4


def test_backoff_grows_exponentially_with_jitter_and_respects_retry_after():
    import random

    policy = RetryPolicy(base_s=1.0, max_s=8.0)
    rng = random.Random(0)
    for retry, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)]:
        delays = [policy.delay(retry, None, rng) for _ in range(50)]
        assert all(0.5 * full <= d <= full for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert policy.delay(1, 30.0, rng) == 30.0
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_exhausted_retries_fail_unstored_and_are_tried_again(tmp_path):
    faults = Faults(script=["500", "500", "500"])
    retry = RetryPolicy(max_attempts=3, base_s=0.01, max_s=0.02)
    with running_server(faults=faults) as server:
        engine = make_engine(server, tmp_path / "r.jsonl", retry=retry)
        [failed] = engine.run(requests(1))
        assert not failed.ok and failed.attempts == 3 and "HTTP 500" in failed.error
        assert len(engine.store) == 0
        [second] = engine.run(requests(1))
        assert second.ok and not second.cached and server.hits == 4


def test_client_errors_are_not_retried(tmp_path):
    with running_server() as server:
        engine = Engine(spec_for(server, "no-such-model"), tmp_path / "r.jsonl", progress=False)
        [response] = engine.run(requests(1))
        assert not response.ok and "HTTP 404" in response.error and server.hits == 0
        assert response.attempts == 1


def test_finished_run_replays_without_calls_and_duplicates_are_asked_once(tmp_path):
    batch = requests(6) + requests(2)  # the last two repeat the first two
    with running_server() as server:
        first = make_engine(server, tmp_path / "r.jsonl").run(batch)
        assert server.hits == 6
        replay = make_engine(server, tmp_path / "r.jsonl").run(batch)
        assert server.hits == 6
    assert [r.text for r in replay] == [r.text for r in first]
    assert all(r.cached for r in replay) and not any(r.cached for r in first)
    assert [r.request_id for r in first[-2:]] == ["epoch-0", "epoch-1"]
    summary = summarize(replay)
    assert (summary.n, summary.cached, summary.called, summary.failed) == (8, 8, 0, 0)


def test_decoding_settings_are_part_of_the_key_and_recorded(tmp_path):
    with running_server() as server:
        make_engine(server, tmp_path / "r.jsonl").run(requests(1))
        make_engine(server, tmp_path / "r.jsonl", decoding={"temperature": 0.7}).run(requests(1))
        assert server.hits == 2
    decodings = [rec["decoding"] for rec in ResponseStore(tmp_path / "r.jsonl").records()]
    assert sorted(d["temperature"] for d in decodings) == [0, 0.7]


def test_killed_run_resumes_without_repeating_a_stored_call(tmp_path):
    store_path = tmp_path / "r.jsonl"
    batch = requests(40)
    wire_hash = {r.id: hash_wire_messages(to_openai_messages(r.messages)) for r in batch}

    async def run_until_killed(engine):
        task = asyncio.create_task(engine.arun(batch))
        while len(engine.store) < 10 and not task.done():
            await asyncio.sleep(0.002)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with running_server(faults=Faults(latency_s=0.02)) as server:
        asyncio.run(run_until_killed(make_engine(server, store_path)))
        first_seen = server.seen.copy()
        stored = {rec["request_id"] for rec in ResponseStore(store_path).records()}
        assert 10 <= len(stored) < 40
        resumed = make_engine(server, store_path).run(batch)
        second_seen = server.seen - first_seen
    assert all(r.ok for r in resumed)
    assert sum(r.cached for r in resumed) == len(stored)
    # No stored answer is asked for again; everything else is asked exactly once more.
    assert not any(second_seen[wire_hash[i]] for i in stored)
    assert sum(second_seen.values()) == 40 - len(stored)


def test_store_drops_a_truncated_last_line_and_refuses_a_corrupt_one(tmp_path):
    path = tmp_path / "r.jsonl"
    with running_server() as server:
        make_engine(server, path).run(requests(3))
        with path.open("ab") as fh:
            fh.write(b'{"key": "half-writ')
        store = ResponseStore(path)
        assert store.dropped_tail and len(store) == 3
        assert path.read_bytes().endswith(b"\n")
        make_engine(server, path).run(requests(4))
        assert server.hits == 4
    assert len(ResponseStore(path)) == 4
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(ModelError, match="line 2 is not a stored response"):
        ResponseStore(path)


def test_secrets_never_reach_the_store_or_errors(tmp_path, monkeypatch):
    key = "sk-test-" + "Q" * 24
    monkeypatch.setenv("OPENAI_API_KEY", key)

    def leaky(messages):
        if "boom" in messages[-1]["content"]:
            raise RuntimeError(f"upstream refused key {key}")
        return f"N2 (used {key})"

    register_local_model("leaky", leaky, replace=True)
    retry = RetryPolicy(max_attempts=2, base_s=0.01, max_s=0.01)
    with running_server() as server:
        spec = ModelSpec(name="gpt", backend="openai", model_id="leaky", base_url=server.url)
        engine = Engine(spec, tmp_path / "r.jsonl", retry=retry, progress=False)
        ok, failed = engine.run([user_request("epoch"), user_request("boom")])
    assert ok.ok and not failed.ok and key not in failed.error and "[REDACTED]" in failed.error
    for path in tmp_path.rglob("*"):
        text = path.read_text()
        assert key not in text and not re.search(r"sk-[A-Za-z0-9_\-]{8,}", text)


def test_an_openai_model_without_key_fails_before_any_call(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with running_server() as server:
        spec = ModelSpec(name="gpt", backend="openai", model_id="chance", base_url=server.url)
        with pytest.raises(ModelError, match="OPENAI_API_KEY is not set"):
            Engine(spec, tmp_path / "r.jsonl", progress=False).run(requests(1))
        assert server.hits == 0


def test_batch_file_building_and_result_ingestion(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    spec = ModelSpec(
        name="gpt-4o",
        backend="openai",
        model_id="gpt-4o-2024-08-06",
        decoding={"temperature": 0, "max_tokens": 16},
        price={"input": 2.5, "output": 10.0},
    )
    engine = Engine(spec, tmp_path / "r.jsonl", progress=False)
    batch = requests(3)
    path = build_batch_file(engine, batch + batch[:1], tmp_path / "batch.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3
    assert lines[0]["url"] == "/v1/chat/completions" and lines[0]["method"] == "POST"
    assert lines[0]["body"]["model"] == "gpt-4o-2024-08-06"
    assert lines[0]["body"]["temperature"] == 0 and lines[0]["body"]["max_tokens"] == 16
    assert lines[0]["body"]["messages"][0]["content"] == "epoch 0: which stage?"

    def result(line, text, status=200):
        body = {
            "choices": [{"message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 10},
        }
        response = {"status_code": status, "body": body if status == 200 else {}}
        return {"id": "b", "custom_id": line["custom_id"], "response": response, "error": None}

    out = tmp_path / "out.jsonl"
    results = [result(lines[0], "N2"), result(lines[1], "garbled?"), result(lines[2], "", 500)]
    out.write_text("\n".join(json.dumps(x) for x in results))
    parsed = read_batch_results(out)
    assert parsed[lines[2]["custom_id"]].startswith("HTTP 500")
    stored = ingest_batch_results(engine, batch, out)
    assert [r.text for r in stored] == ["N2", "garbled?"]
    # Batch API price: half of (1000 * 2.5 + 10 * 10) / 1e6.
    assert stored[0].cost_usd == pytest.approx(0.5 * 2600 / 1e6)
    # The failed one is written to the next batch file; the others are replayed from the store.
    again = build_batch_file(engine, batch, tmp_path / "batch2.jsonl")
    assert len(again.read_text().splitlines()) == 1
    assert summarize(ingest_batch_results(engine, batch, out)).n == 0
    # Stored answers replay without a key and without a call.
    replay = engine.run(batch[:2])
    assert [r.text for r in replay] == ["N2", "garbled?"] and all(r.cached for r in replay)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    with pytest.raises(ModelError, match="line 1 is not a batch result"):
        read_batch_results(bad)


def test_summary_counts_tokens_and_cost():
    from sleepvlm.models.engine import Response

    rs = [
        Response("a", "k1", "N2", True, False, 1, 0.1, 100, 5, 0.001),
        Response("b", "k2", "W", True, True, 1, 0.1, 50, 5, 0.0005),
        Response("c", "k3", None, False, False, 6, error="HTTP 500"),
    ]
    summary = summarize(rs)
    assert (summary.called, summary.cached, summary.failed) == (1, 1, 1)
    assert (summary.prompt_tokens, summary.completion_tokens) == (150, 10)
    assert summary.cost_usd == pytest.approx(0.0015)
    assert summary.new_cost_usd == pytest.approx(0.001)
    rs[1].cost_usd = None
    assert summarize(rs).cost_usd is None


def test_blocking_run_works_inside_a_running_event_loop(tmp_path):
    """A notebook kernel already runs an event loop; the blocking call must still work there."""

    async def notebook_cell(server):
        return make_engine(server, tmp_path / "r.jsonl").run(requests(3))

    with running_server() as server:
        answers = asyncio.run(notebook_cell(server))
        assert server.hits == 3
    assert [r.request_id for r in answers] == ["epoch-0", "epoch-1", "epoch-2"]
    assert all(r.ok for r in answers)


def test_a_local_model_gets_as_many_calls_in_flight_as_the_concurrency(tmp_path):
    import threading

    in_flight = 12  # above asyncio's default thread count on a small machine (cores + 4)
    barrier = threading.Barrier(in_flight, timeout=10)

    def batching(messages):
        barrier.wait()  # returns only once `in_flight` calls are waiting together
        return "N2"

    register_local_model("batching", batching, replace=True)
    spec = ModelSpec(name="batching", backend="local", model_id="batching", concurrency=in_flight)
    engine = Engine(spec, tmp_path / "r.jsonl", concurrency=spec.concurrency, progress=False)
    answers = engine.run(requests(in_flight))
    assert all(r.ok and r.text == "N2" for r in answers)
