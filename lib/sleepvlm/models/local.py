"""Local "models": Python callables that take chat-completions messages (text, image and ChatTS
time-series parts, as sent: see :mod:`sleepvlm.models.messages`) and return the answer
text. They run in-process (backend ``local``) or behind ``sleepvlm serve``; both paths call the
same function on the same messages, so they give the same answers.

Built-ins are the two floors of every benchmark table: ``chance`` (a uniform random stage, seeded
by the request so a replay gives the same answer) and ``majority`` (always one class).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from sleepvlm.data.records import STAGES

from .errors import ModelError
from .messages import hash_wire_messages

LocalModel = Callable[[list[dict]], str]

_LOCAL_MODELS: dict[str, LocalModel] = {}
#: Class answered by the built-in ``majority`` model: N2 fills about half of a typical night.
MAJORITY_STAGE = "N2"


def register_local_model(name: str, fn: LocalModel, *, replace: bool = False) -> None:
    """Make ``fn(messages) -> str`` available as model ``name`` (in-process and served)."""
    if not callable(fn):
        raise ModelError(f"local model {name!r} must be callable, got {type(fn).__name__}")
    if name in _LOCAL_MODELS and not replace:
        raise ModelError(f"local model {name!r} is already registered; pass replace=True")
    _LOCAL_MODELS[name] = fn


def local_model(name: str) -> LocalModel:
    try:
        return _LOCAL_MODELS[name]
    except KeyError:
        raise ModelError(
            f"no local model {name!r}; registered: {', '.join(sorted(_LOCAL_MODELS))} "
            "(add one with register_local_model)"
        ) from None


def local_model_names() -> list[str]:
    return sorted(_LOCAL_MODELS)


def chance(messages: list[dict]) -> str:
    """A uniformly drawn stage, seeded by the hash of the messages."""
    return random.Random(hash_wire_messages(messages)).choice(STAGES)


def majority_model(stage: str = MAJORITY_STAGE) -> LocalModel:
    """A model that always answers ``stage``."""
    if stage not in STAGES:
        raise ModelError(f"majority stage {stage!r} is not one of {STAGES}")

    def majority(messages: list[dict]) -> str:
        return stage

    return majority


register_local_model("chance", chance)
register_local_model("majority", majority_model())
