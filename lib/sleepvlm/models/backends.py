"""Backends: one awaitable call that sends a chat request to a model and returns its answer.

- ``openai`` and ``openai_compatible`` share one code path (the OpenAI Python client; for the
  latter with the server's ``base_url``): OpenAI, vLLM, SGLang, llama.cpp, Ollama, ChatTS.
- ``transformers`` runs a local model folder in-process (imported only when used).
- ``local`` calls a registered Python callable (see :mod:`sleepvlm.models.local`).

Backends never retry: the engine does (see :mod:`sleepvlm.models.engine`). They raise
:class:`TransientError` for what a retry may cure and :class:`ModelError` otherwise.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib.util
import io
import time
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ModelError, TransientError
from .local import local_model
from .messages import Message, to_openai_messages, wire_images
from .registry import ModelSpec
from .secrets import api_key_from_env, redact

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


class TransformersBackend:
    """A local Hugging Face model folder (or hub id already in the local cache), greedy when
    temperature is 0. ``torch`` and ``transformers`` are imported on first use; generation runs
    one request at a time in a worker thread and cannot be interrupted, so the engine's
    per-request timeout does not apply to it. Vision-language models get every input their
    processor makes (pixel values, grid sizes, Qwen2-VL's ``mm_token_type_ids``...)."""

    def __init__(self, model_dir: str, device: str = "auto"):
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise ModelError(
                f"the transformers backend needs {' and '.join(missing)}: pip install "
                "'torch==2.13.0' transformers"
            )
        self.model_dir = model_dir
        self.device = device
        self._model = None
        self._processor = None
        self._lock = asyncio.Lock()

    def _load(self) -> None:
        import torch
        import transformers

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            model = _load_model(transformers, self.model_dir)
            processor = load_processor(self.model_dir)
        except (OSError, ValueError) as err:
            raise ModelError(
                f"{self.model_dir}: cannot load a model from it ({err}); give the folder of a "
                "saved model (config, weights, tokenizer or processor)"
            ) from err
        self._model = model.to(device).eval()
        self._processor = processor

    def _generate(self, messages: tuple[Message, ...], decoding: dict) -> Completion:
        import torch
        from PIL import Image

        if any(m.timeseries for m in messages):
            raise ModelError(
                f"{self.model_dir}: the transformers backend sends no time series; serve a "
                "time-series model (ChatTS) behind an OpenAI-compatible server instead"
            )
        if self._model is None:
            self._load()
        processor, model = self._processor, self._model
        images = [
            Image.open(io.BytesIO(b)).convert("RGB")
            for b in wire_images(to_openai_messages(messages))
        ]
        prompt = processor.apply_chat_template(
            to_hf_messages(messages, multimodal=bool(images)),
            add_generation_prompt=True,
            tokenize=False,
        )
        if images:
            inputs = processor(text=[prompt], images=images, return_tensors="pt")
        else:
            inputs = processor(text=[prompt], return_tensors="pt")
        inputs = inputs.to(model.device)
        temperature = decoding.get("temperature", 0)
        sampling = (
            {"do_sample": False}
            if temperature == 0
            else {"do_sample": True, "temperature": temperature}
        )
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=decoding.get("max_tokens", 512), **sampling
            )
        n_prompt = inputs["input_ids"].shape[1]
        new_tokens = output[0, n_prompt:]
        decode = getattr(processor, "decode", None) or processor.tokenizer.decode
        text = decode(new_tokens, skip_special_tokens=True)
        return Completion(
            text=text,
            prompt_tokens=int(n_prompt),
            completion_tokens=int(new_tokens.shape[0]),
            raw={"model": self.model_dir, "content": text},
        )

    async def complete(
        self, messages: tuple[Message, ...], decoding: dict, timeout_s: float
    ) -> Completion:
        async with self._lock:
            return await asyncio.to_thread(self._generate, messages, decoding)

    async def aclose(self) -> None:
        return None


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
        return TransformersBackend(spec.model_id, device=device)
    if spec.backend == "local":
        return LocalBackend(spec.model_id)
    raise ModelError(f"model {spec.name!r}: no backend {spec.backend!r}")
