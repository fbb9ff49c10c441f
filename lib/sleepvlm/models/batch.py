"""The OpenAI Batch API path: write the requests as a batch input file, and read the batch's
output file back into the response store, after which :meth:`Engine.run` replays every answer
without a call. Uploading the file and polling the batch need a key and are left to the
OpenAI client (``client.files.create(purpose="batch")``, ``client.batches.create``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .backends import Completion, completion_from_openai
from .engine import Engine, Response
from .errors import ModelError
from .messages import ChatRequest, to_openai_messages

ENDPOINT = "/v1/chat/completions"
#: The Batch API's limit on requests per input file.
MAX_BATCH_REQUESTS = 50_000
#: The Batch API bills half the synchronous price.
BATCH_PRICE_FACTOR = 0.5


def build_batch_file(engine: Engine, requests: Sequence[ChatRequest], path: str | Path) -> Path:
    """Write one line per request not yet in the engine's store (``custom_id`` = its key)."""
    lines = {}
    for request in requests:
        key = engine.key(request)
        if key in engine.store or key in lines:
            continue
        body = {
            "model": engine.spec.model_id,
            "messages": to_openai_messages(request.messages),
            **engine.decoding,
        }
        lines[key] = {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}
    if len(lines) > MAX_BATCH_REQUESTS:
        raise ModelError(
            f"{len(lines)} requests exceed the Batch API's {MAX_BATCH_REQUESTS} per file: "
            "split the requests and build several files"
        )
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for line in lines.values():
            fh.write(json.dumps(line) + "\n")
    return path


def read_batch_results(path: str | Path) -> dict[str, Completion | str]:
    """The batch output file by ``custom_id``: a :class:`Completion`, or an error message."""
    path = Path(path)
    results: dict[str, Completion | str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            custom_id = item["custom_id"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ModelError(f"{path} line {number} is not a batch result: {err}") from err
        response = item.get("response") or {}
        if item.get("error") or response.get("status_code") != 200:
            error = item.get("error") or response.get("body", {}).get("error") or {}
            status = response.get("status_code")
            results[custom_id] = f"HTTP {status}: {error.get('message', 'no message')}"
        else:
            results[custom_id] = completion_from_openai(response.get("body") or {})
    return results


def ingest_batch_results(
    engine: Engine, requests: Sequence[ChatRequest], path: str | Path
) -> list[Response]:
    """Store the batch's answers for ``requests`` (failed ones are left for a later run)."""
    results = read_batch_results(path)
    stored = []
    for request in requests:
        key = engine.key(request)
        result = results.get(key)
        if key in engine.store or not isinstance(result, Completion):
            continue
        stored.append(engine.record(request, key, result, 1, 0.0, BATCH_PRICE_FACTOR))
    return stored
