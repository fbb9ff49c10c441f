"""The model harness: chat requests (text and images) sent zero-shot to registered models
through one of four backends (OpenAI, OpenAI-compatible servers, local transformers, local
Python callables), with a resumable request engine and an embedded chat-completions server."""

from . import embedded  # noqa: F401  (registers the embedded models on import)
from .backends import Completion, make_backend
from .batch import build_batch_file, ingest_batch_results, read_batch_results
from .engine import Engine, Response, RetryPolicy, RunSummary, summarize
from .errors import ModelError, RegistryError, TransientError
from .local import chance, local_model_names, majority_model, register_local_model
from .messages import ChatRequest, Message, user_request, wire_images, wire_text
from .registry import USER_REGISTRY_ENV, ModelSpec, get_model, load_registry
from .secrets import redact
from .server import ChatServer, Faults, running_server
from .store import ResponseStore

__all__ = [
    "USER_REGISTRY_ENV",
    "ChatRequest",
    "ChatServer",
    "Completion",
    "Engine",
    "Faults",
    "Message",
    "ModelError",
    "ModelSpec",
    "RegistryError",
    "Response",
    "ResponseStore",
    "RetryPolicy",
    "RunSummary",
    "TransientError",
    "build_batch_file",
    "chance",
    "get_model",
    "ingest_batch_results",
    "load_registry",
    "local_model_names",
    "majority_model",
    "make_backend",
    "read_batch_results",
    "redact",
    "register_local_model",
    "running_server",
    "summarize",
    "user_request",
    "wire_images",
    "wire_text",
]
