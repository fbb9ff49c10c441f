"""An embedded chat-completions server (``sleepvlm serve``) for the local models of
:mod:`sleepvlm.models.local` and the registry's real pretrained models whose weights are
fetched into the cache (:mod:`sleepvlm.models.weights`; run with the transformers backend):
``POST /v1/chat/completions`` and ``GET /v1/models``, so the OpenAI client, vLLM-style tooling
and the engine reach them like any hosted model. Messages may carry images and ChatTS
time-series parts; the models get them as sent. A model that cannot answer yet (weights not
fetched, SleepVLM-mini not trained) is answered with HTTP 503 saying how to get it, and the
model list says which models are ready.

It can also misbehave on purpose (:class:`Faults`: latency, 429 with ``Retry-After``, 500s,
stalls past the client's timeout, malformed answers), which is how the engine's retries and
resumption are tested and benchmarked against real HTTP.
"""

from __future__ import annotations

import argparse
import functools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .backends import TransformersBackend, make_backend
from .errors import ModelError
from .local import local_model, local_model_names, majority_model, register_local_model
from .messages import from_openai_messages, hash_wire_messages, wire_timeseries
from .registry import ModelSpec, load_registry
from .weights import how_to_get, weights_ready

#: What a hit can be made to do: answer, or fail in one of the ways real servers fail.
FAULT_KINDS = ("ok", "429", "500", "timeout", "malformed", "empty")
#: Answer sent for a "malformed" fault: prose with no stage label in it.
MALFORMED_ANSWER = "I cannot tell from this picture, sorry."


@dataclass
class Faults:
    """Misbehaviour to inject: every hit waits ``latency_s``; the i-th hit does ``script[i]``
    (one of :data:`FAULT_KINDS`), hits past the script's end answer normally. A "timeout"
    hit stalls ``stall_s`` before answering (longer than the client's timeout)."""

    latency_s: float = 0.0
    script: list[str] = field(default_factory=list)
    retry_after_s: float = 0.05
    stall_s: float = 2.0

    def __post_init__(self):
        unknown = set(self.script) - set(FAULT_KINDS)
        if unknown:
            raise ModelError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")


def pretrained_models(registry: dict[str, ModelSpec] | None = None) -> dict[str, ModelSpec]:
    """The registry's models with weights of their own, which the server runs in-process."""
    if registry is None:
        return _packaged_pretrained()
    return {name: spec for name, spec in registry.items() if spec.weights is not None}


@functools.cache
def _packaged_pretrained() -> dict[str, ModelSpec]:
    # Read once: every request asks which models are served.
    return pretrained_models(load_registry())


def served_model_names() -> list[str]:
    return sorted({*local_model_names(), *pretrained_models()})


def unavailable(name: str) -> str | None:
    """Why the served model ``name`` cannot answer yet, and how to make it; None when it can."""
    pretrained = pretrained_models()
    if name in pretrained:
        weights = pretrained[name].wheel_weights
        if weights_ready(weights):
            return None
        return f"the weights of {name!r} are not here yet; {how_to_get(weights)}"
    check = getattr(local_model(name), "unavailable", None)
    return check() if check else None


class ChatServer(ThreadingHTTPServer):
    """The server; ``hits`` counts POSTs and ``seen`` counts them by message hash."""

    daemon_threads = True
    # socketserver's default backlog of 5 drops connections when many clients open at once.
    request_queue_size = 128

    def __init__(self, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None):
        super().__init__((host, port), _Handler)
        self.faults = faults or Faults()
        self.hits = 0
        self.seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._backends: dict[str, TransformersBackend] = {}

    def answer_pretrained(self, name: str, messages: list[dict], body: dict) -> str | None:
        """A real pretrained model's answer, with the registry's decoding and the request's
        temperature and max_tokens; concurrent requests share its batches."""
        spec = pretrained_models()[name]
        with self._lock:
            if name not in self._backends:
                self._backends[name] = make_backend(spec)
        asked = {k: body[k] for k in ("temperature", "max_tokens") if body.get(k) is not None}
        decoding = {**spec.decoding, **asked}
        return self._backends[name].answer(from_openai_messages(messages), decoding).text

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def next_fault(self, messages: list[dict]) -> str:
        with self._lock:
            index = self.hits
            self.hits += 1
            self.seen[hash_wire_messages(messages)] += 1
        script = self.faults.script
        return script[index] if index < len(script) else "ok"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm the body would wait
    # for the client's delayed ACK (~40 ms per answer).
    disable_nagle_algorithm = True
    server: ChatServer

    def log_message(self, format, *args):  # quiet: tests and benches hit it thousands of times
        return

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout); nothing left to answer.
            self.close_connection = True

    def _error(self, status: int, message: str, kind: str, headers: dict | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def do_GET(self):
        if self.path.rstrip("/") != "/v1/models":
            self._error(404, f"no route {self.path}", "not_found")
            return
        data = []
        for name in served_model_names():
            reason = unavailable(name)
            entry = {"id": name, "object": "model", "created": 0, "owned_by": "sleepvlm"}
            data.append(
                {**entry, "ready": reason is None, **({"how_to_get": reason} if reason else {})}
            )
        self._send(200, {"object": "list", "data": data})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}", "not_found")
            return
        try:
            body = json.loads(raw)
            name, messages = body["model"], body["messages"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            self._error(400, f"expected JSON with 'model' and 'messages': {err}", "invalid_request")
            return
        try:
            # Time series (ChatTS's content parts) reach the model inline, as sent; a malformed
            # part is the client's error, as on ChatTS's own server.
            wire_timeseries(messages)
        except (ModelError, AttributeError, TypeError) as err:
            self._error(400, f"bad content part: {err}", "invalid_request")
            return
        if name not in served_model_names():
            self._error(404, f"model {name!r} not served; see GET /v1/models", "model_not_found")
            return
        reason = unavailable(name)
        if reason is not None:
            self._error(503, f"model {name!r} is not ready: {reason}", "model_not_ready")
            return
        faults = self.server.faults
        fault = self.server.next_fault(messages)
        time.sleep(faults.latency_s)
        if fault == "429":
            self._error(
                429, "rate limited", "rate_limit", {"Retry-After": f"{faults.retry_after_s:g}"}
            )
            return
        if fault == "500":
            self._error(500, "injected server error", "server_error")
            return
        if fault == "timeout":
            time.sleep(faults.stall_s)
        if fault == "malformed":
            text = MALFORMED_ANSWER
        elif fault == "empty":
            text = None
        else:
            try:
                if name in local_model_names():
                    text = local_model(name)(messages)
                else:
                    text = self.server.answer_pretrained(name, messages, body)
            except Exception as err:  # a model's bug must reach the client, not kill the server
                self._error(500, f"model {name!r} failed: {type(err).__name__}: {err}", "model")
                return
        self._send(200, _completion(name, text))


def _completion(model: str, text: str | None) -> dict:
    return {
        "id": f"chatcmpl-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }


@contextmanager
def running_server(
    host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None
) -> Iterator[ChatServer]:
    """A :class:`ChatServer` serving in a background thread (port 0: a free port)."""
    server = ChatServer(host, port, faults)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--majority-stage", help="class answered by the 'majority' model")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted; the first line printed is the base URL."""
    if args.majority_stage:
        register_local_model("majority", majority_model(args.majority_stage), replace=True)
    server = ChatServer(args.host, args.port, Faults(latency_s=args.latency_ms / 1000))
    print(server.url, flush=True)
    for name in served_model_names():
        reason = unavailable(name)
        print(
            f"model {name}: " + ("ready" if reason is None else f"not ready ({reason})"), flush=True
        )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sleepvlm serve", description=__doc__)
    add_serve_arguments(parser)
    return cmd_serve(parser.parse_args(argv))
