"""Model-agnostic chat requests: messages of text with optional images or time series, their
OpenAI wire form, and the hashes that key every stored response."""

from __future__ import annotations

import array
import base64
import binascii
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import ModelError

ROLES = ("system", "user", "assistant")
#: File signatures of the image formats every backend accepts.
_IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
#: Where each series goes in the text of a ChatTS turn (one per series, in order).
TS_PLACEHOLDER = "<ts><ts/>"


@dataclass(frozen=True)
class Message:
    """One chat turn: text and, for vision models, encoded images (PNG or JPEG bytes) shown
    before the text; for time-series models (ChatTS), ``timeseries``: one sequence of floats
    per :data:`TS_PLACEHOLDER` in the text, in order (any iterables of numbers, e.g. numpy
    arrays, kept as tuples of floats so that a message stays hashable)."""

    role: str
    text: str
    images: tuple[bytes, ...] = ()
    timeseries: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self):
        if self.role not in ROLES:
            raise ModelError(f"message role {self.role!r} is not one of {ROLES}")
        object.__setattr__(self, "images", tuple(self.images))
        for image in self.images:
            image_mime(image)
        object.__setattr__(self, "timeseries", as_timeseries(self.timeseries))
        placeholders = self.text.count(TS_PLACEHOLDER)
        if self.timeseries and placeholders != len(self.timeseries):
            raise ModelError(
                f"{self.role} message has {len(self.timeseries)} time series but "
                f"{placeholders} {TS_PLACEHOLDER} placeholders: write one per series, in order"
            )


def as_timeseries(series: Iterable[Iterable[float]]) -> tuple[tuple[float, ...], ...]:
    """Series as tuples of finite floats; an empty or non-finite series is an error."""
    converted = []
    for i, values in enumerate(series):
        try:
            floats = tuple(float(v) for v in values)
        except (TypeError, ValueError) as err:
            raise ModelError(f"time series {i} is not a sequence of numbers: {err}") from err
        if not floats or not all(math.isfinite(v) for v in floats):
            raise ModelError(
                f"time series {i} is empty or holds NaN/inf values: fill or drop them first"
            )
        converted.append(floats)
    return tuple(converted)


@dataclass(frozen=True)
class ChatRequest:
    """The messages for one input (e.g. one epoch), with hashes naming its prompt and input.

    ``prompt_hash`` names the prompt template (the caller's; by default a hash of the
    texts); ``input_hash`` is always the hash of everything sent, so two requests with the
    same hash get the same stored answer. ``id`` is the caller's label (e.g. an epoch key).
    """

    messages: tuple[Message, ...]
    id: str = ""
    prompt_hash: str = ""
    input_hash: str = field(default="", init=False)

    def __post_init__(self):
        object.__setattr__(self, "messages", tuple(self.messages))
        if not self.messages:
            raise ModelError(f"request {self.id!r} has no messages")
        object.__setattr__(self, "input_hash", hash_messages(self.messages))
        if not self.prompt_hash:
            texts = [[m.role, m.text] for m in self.messages]
            object.__setattr__(self, "prompt_hash", _sha256(json.dumps(texts).encode()))


def user_request(
    text: str,
    images: tuple[bytes, ...] = (),
    system: str = "",
    id: str = "",
    prompt_hash="",
    timeseries: Iterable[Iterable[float]] = (),
) -> ChatRequest:
    """A request of one user turn, preceded by a system turn when ``system`` is given."""
    messages = [Message("system", system)] if system else []
    messages.append(Message("user", text, tuple(images), timeseries))
    return ChatRequest(tuple(messages), id=id, prompt_hash=prompt_hash)


def _sha256(data: bytes, length: int = 16) -> str:
    return hashlib.sha256(data).hexdigest()[:length]


def hash_messages(messages: tuple[Message, ...]) -> str:
    digest = hashlib.sha256()
    for message in messages:
        digest.update(json.dumps([message.role, message.text, len(message.images)]).encode())
        for image in message.images:
            digest.update(hashlib.sha256(image).digest())
        # Only turns with series add to the hash, so the keys of stored text and image
        # answers stay as they were.
        if message.timeseries:
            digest.update(json.dumps(["timeseries", len(message.timeseries)]).encode())
            for series in message.timeseries:
                digest.update(json.dumps(len(series)).encode())
                digest.update(array.array("d", series).tobytes())
    return digest.hexdigest()[:16]


def image_mime(image: bytes) -> str:
    for signature, mime in _IMAGE_SIGNATURES.items():
        if image.startswith(signature):
            return mime
    raise ModelError(
        f"image of {len(image)} bytes starting {image[:8]!r} is neither PNG nor JPEG: "
        "encode figures with savefig(format='png')"
    )


def to_openai_messages(messages: tuple[Message, ...]) -> list[dict]:
    """The chat-completions form: images as base64 data URLs before the turn's text, time
    series after it as ChatTS's server takes them (:func:`timeseries_part`)."""
    wire = []
    for message in messages:
        if not message.images and not message.timeseries:
            wire.append({"role": message.role, "content": message.text})
            continue
        parts = [
            {
                "type": "image_url",
                "image_url": {
                    "url": f"data:{image_mime(image)};base64,"
                    + base64.b64encode(image).decode("ascii")
                },
            }
            for image in message.images
        ]
        parts.append({"type": "text", "text": message.text})
        parts.extend(timeseries_part(series) for series in message.timeseries)
        wire.append({"role": message.role, "content": parts})
    return wire


def timeseries_part(series: tuple[float, ...]) -> dict:
    """One series as a content part of ChatTS's OpenAI-compatible vLLM server.

    ChatTS's README ("OpenAI API Compatible Server") points to NetManAIOps/ChatTS issue #11:
    serve with the ``timeseries`` branch of github.com/xiez22/vllm, whose
    ``vllm/entrypoints/chat_utils.py`` (``ChatCompletionContentPartTimeSeriesParam``) takes
    ``{"type": "timeseries", "timeseries": {"data": [floats]}}``, one part per series; each
    fills the next ``<ts><ts/>`` of the prompt, as ``multi_modal_data["timeseries"]`` does
    offline.
    """
    return {"type": "timeseries", "timeseries": {"data": list(series)}}


def wire_text(messages: list[dict]) -> str:
    """All text of chat-completions messages, turns separated by blank lines."""
    texts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(part.get("text", "") for part in content if part.get("type") == "text")
    return "\n\n".join(texts)


def wire_images(messages: list[dict]) -> list[bytes]:
    """The images of chat-completions messages, decoded from their data URLs."""
    images = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") != "image_url":
                continue
            url = part.get("image_url", {}).get("url", "")
            header, _, payload = url.partition(";base64,")
            if not header.startswith("data:") or not payload:
                raise ModelError(f"image URL {url[:40]!r} is not a base64 data URL")
            try:
                images.append(base64.b64decode(payload, validate=True))
            except binascii.Error as err:
                raise ModelError(f"image data URL is not valid base64: {err}") from err
    return images


def wire_timeseries(messages: list[dict]) -> list[list[float]]:
    """The time series of chat-completions messages (ChatTS parts), in order."""
    found = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") != "timeseries":
                continue
            data = (part.get("timeseries") or {}).get("data")
            if not isinstance(data, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in data
            ):
                raise ModelError(
                    "a timeseries part must hold its values inline as "
                    '{"timeseries": {"data": [numbers]}}; URLs and nested lists are not read'
                )
            found.append([float(v) for v in data])
    return found


def hash_wire_messages(messages: list[dict]) -> str:
    """Stable hash of chat-completions messages (the seed of the ``chance`` model)."""
    return _sha256(json.dumps(messages, sort_keys=True).encode())


def from_openai_messages(messages: list[dict]) -> tuple[Message, ...]:
    """Chat-completions messages as :class:`Message` turns (what a served model is sent)."""
    return tuple(
        Message(m.get("role", "user"), wire_text([m]), wire_images([m]), wire_timeseries([m]))
        for m in messages
    )
