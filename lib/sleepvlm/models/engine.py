"""The request engine: sends many chat requests to one model with bounded concurrency,
retries what may pass (exponential backoff with jitter, honouring ``Retry-After``), and keeps
every answer in a :class:`~sleepvlm.models.store.ResponseStore` so that a killed run resumes
without repeating a call and a finished run replays for free.

Answers are kept exactly as returned, malformed ones included: scoring decides what they mean.
Requests that still fail after the last attempt come back with ``ok=False`` and are not stored,
so the next run tries them again.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

# The plain text bar: tqdm.auto picks the widget bar in notebooks, which warns
# "IProgress not found" where ipywidgets is absent (executed chapters).
from tqdm.std import tqdm

from ..cache import library_hash
from .backends import Backend, Completion, make_backend
from .errors import ModelError, TransientError
from .local import local_model
from .messages import ChatRequest
from .registry import ModelSpec
from .secrets import redact
from .store import ResponseStore, response_key

#: Requests in flight when neither the caller nor the model's registry entry says otherwise.
DEFAULT_CONCURRENCY = 8


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``max_attempts`` calls per request; before retry k (k = 1, 2, ...) wait a
    uniformly jittered ``[0.5, 1] * min(max_s, base_s * 2**(k-1))``, or the server's
    ``Retry-After`` when that is longer."""

    max_attempts: int = 6
    base_s: float = 1.0
    max_s: float = 60.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = min(self.max_s, self.base_s * 2 ** (retry - 1)) * rng.uniform(0.5, 1.0)
        return backoff if retry_after is None else max(retry_after, backoff)


@dataclass
class Response:
    """The outcome of one request: the answer text as returned (None when the model sent none
    or the request failed), its cost, and where it came from."""

    request_id: str
    key: str
    text: str | None
    ok: bool
    cached: bool
    attempts: int = 0
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    error: str | None = None


@dataclass
class RunSummary:
    """Counts, tokens and cost over a run's responses (cost None if any answer's is unknown)."""

    n: int
    cached: int
    called: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    new_cost_usd: float | None = field(default=None)


def summarize(responses: Sequence[Response]) -> RunSummary:
    answered = [r for r in responses if r.ok]
    new = [r for r in answered if not r.cached]

    def total_cost(rs):
        costs = [r.cost_usd for r in rs]
        return None if any(c is None for c in costs) else float(sum(costs))

    return RunSummary(
        n=len(responses),
        cached=sum(r.cached for r in responses),
        called=len(new),
        failed=sum(not r.ok for r in responses),
        prompt_tokens=sum(r.prompt_tokens or 0 for r in answered),
        completion_tokens=sum(r.completion_tokens or 0 for r in answered),
        cost_usd=total_cost(answered),
        new_cost_usd=total_cost(new),
    )


def _from_record(request: ChatRequest, record: dict) -> Response:
    return Response(
        request_id=request.id,
        key=record["key"],
        text=record["text"],
        ok=True,
        cached=True,
        attempts=record.get("attempts", 0),
        latency_s=record.get("latency_s", 0.0),
        prompt_tokens=record.get("prompt_tokens"),
        completion_tokens=record.get("completion_tokens"),
        cost_usd=record.get("cost_usd"),
    )


class Engine:
    """Runs requests against the model ``spec`` and records answers in ``store``.

    ``decoding`` overrides the registry's settings (temperature 0 unless changed); the
    effective settings are part of every response's key and stored with it.
    """

    def __init__(
        self,
        spec: ModelSpec,
        store: ResponseStore | str | Path,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout_s: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
        decoding: dict | None = None,
        progress: bool = True,
        device: str = "auto",
        seed: int | None = None,
    ):
        if concurrency < 1:
            raise ModelError(f"concurrency must be >= 1, got {concurrency}")
        self.spec = spec
        self.store = store if isinstance(store, ResponseStore) else ResponseStore(store)
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retry = retry
        self.decoding = {**spec.decoding, **(decoding or {})}
        self.progress = progress
        self.device = device
        self._rng = random.Random(seed)

    @functools.cached_property
    def model(self) -> str:
        """Identity of the answering model; a local model is code, so its version is the
        library's source hash (a changed rule table must not replay stale answers), plus the
        ``version()`` a trained local model reports (its weights). Found once per engine: every
        request's key uses it."""
        name = f"{self.spec.backend}:{self.spec.model_id}"
        if self.spec.weights is not None:  # the weights file is the model: named by its hash
            return f"{name}@{self.spec.weights['sha256'][:16]}"
        if self.spec.backend != "local":
            return name
        version = getattr(local_model(self.spec.model_id), "version", None)
        return f"{name}@{library_hash()}" + (f"+{version()}" if version else "")

    def key(self, request: ChatRequest) -> str:
        return response_key(self.model, request.prompt_hash, request.input_hash, self.decoding)

    def run(self, requests: Sequence[ChatRequest]) -> list[Response]:
        """Blocking :meth:`arun`, callable from plain scripts and from a notebook, whose kernel
        already runs an event loop in this thread (then the run gets a thread of its own)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(requests))
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.arun(requests)).result()

    async def arun(self, requests: Sequence[ChatRequest]) -> list[Response]:
        """One response per request, in order; stored answers are reused, not asked again."""
        keys = [self.key(r) for r in requests]
        todo = {}
        for key, request in zip(keys, requests, strict=True):
            if key not in self.store and key not in todo:
                todo[key] = request
        fresh: dict[str, Response] = {}
        if todo:
            await self._call_all(todo, fresh, n_unique=len(set(keys)))
        return [
            replace(fresh[key], request_id=request.id)
            if key in fresh
            else _from_record(request, self.store.get(key))
            for key, request in zip(keys, requests, strict=True)
        ]

    async def _call_all(self, todo: dict[str, ChatRequest], fresh: dict, n_unique: int) -> None:
        backend = make_backend(self.spec, device=self.device)
        semaphore = asyncio.Semaphore(self.concurrency)
        # Local models and fsync run in the loop's default threads: as many as requests in
        # flight (asyncio's own default is a few per core, which would cap a batching model).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=self.concurrency + 1)
        )
        bar = tqdm(
            total=n_unique,
            initial=n_unique - len(todo),
            desc=self.spec.name,
            unit="req",
            disable=not self.progress,
        )

        async def one(key: str, request: ChatRequest) -> None:
            async with semaphore:
                fresh[key] = await self._call(backend, key, request)
            bar.update()

        try:
            async with asyncio.TaskGroup() as group:
                for key, request in todo.items():
                    group.create_task(one(key, request))
        finally:
            bar.close()
            await backend.aclose()

    async def _call(self, backend: Backend, key: str, request: ChatRequest) -> Response:
        error = None
        for attempt in range(1, self.retry.max_attempts + 1):
            start = time.perf_counter()
            try:
                completion = await backend.complete(request.messages, self.decoding, self.timeout_s)
            except TransientError as err:
                error = err
                if attempt < self.retry.max_attempts:
                    await asyncio.sleep(self.retry.delay(attempt, err.retry_after, self._rng))
                continue
            except ModelError as err:
                return self._failed(request, key, attempt, err)
            latency = time.perf_counter() - start
            response = self.record(request, key, completion, attempt, latency, sync=False)
            # fsync blocks for milliseconds: off the event loop, before the answer counts as done.
            await asyncio.to_thread(self.store.sync)
            return response
        return self._failed(request, key, self.retry.max_attempts, error)

    def _failed(self, request: ChatRequest, key: str, attempts: int, err: Exception) -> Response:
        return Response(
            request_id=request.id,
            key=key,
            text=None,
            ok=False,
            cached=False,
            attempts=attempts,
            error=redact(f"{type(err).__name__}: {err}"),
        )

    def record(
        self,
        request: ChatRequest,
        key: str,
        completion: Completion,
        attempts: int,
        latency: float,
        price_factor: float = 1.0,
        sync: bool = True,
    ) -> Response:
        """Store an answer obtained for ``request`` (here or e.g. by the Batch API, which bills
        ``price_factor`` of the listed price) and return it as a :class:`Response`."""
        cost = self.spec.cost(completion.prompt_tokens, completion.completion_tokens)
        cost = None if cost is None else cost * price_factor
        self.store.append(
            {
                "key": key,
                "model": self.spec.name,
                "backend": self.spec.backend,
                "model_id": self.spec.model_id,
                "prompt_hash": request.prompt_hash,
                "input_hash": request.input_hash,
                "request_id": request.id,
                "decoding": self.decoding,
                "text": completion.text,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "cost_usd": cost,
                "attempts": attempts,
                "latency_s": round(latency, 4),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "raw": completion.raw,
            },
            sync=sync,
        )
        return Response(
            request_id=request.id,
            key=key,
            text=completion.text,
            ok=True,
            cached=False,
            attempts=attempts,
            latency_s=latency,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=cost,
        )
