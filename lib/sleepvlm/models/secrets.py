"""API keys: read only from the environment, and scrubbed from anything written or raised."""

from __future__ import annotations

import os
import re

from .errors import ModelError

#: Environment variables whose values are secrets (besides the ones named in the registry).
_SECRET_SUFFIXES = ("API_KEY", "_TOKEN", "_SECRET")
#: Looks like an OpenAI-style key (``sk-...``, ``sk-proj-...``) or a bearer token.
KEY_PATTERN = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}|(?i:bearer\s+)[A-Za-z0-9_\-\.=]{8,}")
REDACTED = "[REDACTED]"
#: Shorter values are not treated as secrets (they would redact ordinary words).
_MIN_SECRET_LEN = 8


def _secret_values() -> list[str]:
    values = [
        value
        for name, value in os.environ.items()
        if name.upper().endswith(_SECRET_SUFFIXES) and len(value) >= _MIN_SECRET_LEN
    ]
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with key-like strings and the values of secret environment variables replaced.

    Secret variables are those named ``*API_KEY``, ``*_TOKEN`` or ``*_SECRET``.
    """
    for value in _secret_values():
        text = text.replace(value, REDACTED)
    return KEY_PATTERN.sub(REDACTED, text)


def api_key_from_env(env_var: str) -> str:
    """The key held by ``env_var``; the error names the variable, never a value."""
    value = os.environ.get(env_var, "").strip()
    if not value:
        raise ModelError(
            f"environment variable {env_var} is not set: export it with your API key "
            "(keys are read only from the environment, never from files or arguments)"
        )
    return value
