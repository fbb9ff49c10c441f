"""Errors of the model harness: bad configuration (a :class:`ModelError`, which is a
:class:`~sleepvlm.data.records.DataError`) and failures worth retrying (:class:`TransientError`)."""

from __future__ import annotations

from sleepvlm.data.records import DataError


class ModelError(DataError):
    """A model, registry entry, request or response that cannot be used; says what to do."""


class RegistryError(ModelError):
    """The model registry file is malformed or names an unknown model."""


class TransientError(ModelError):
    """A failure that may pass on retry (429, 5xx, timeout, dropped connection).

    ``retry_after`` holds the server's ``Retry-After`` in seconds when it sent one.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after
