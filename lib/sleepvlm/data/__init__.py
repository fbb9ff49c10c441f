"""Recordings in µV from files: the record types, the loaders and writers of each dataset's
on-disk format, the simulated multi-center cohort, and the registry of real excerpts."""

from .records import (
    EPOCH_S,
    ROLES,
    STAGES,
    ChannelNotFoundError,
    CorruptFileError,
    DataError,
    Recording,
)

__all__ = [
    "EPOCH_S",
    "ROLES",
    "STAGES",
    "ChannelNotFoundError",
    "CorruptFileError",
    "DataError",
    "Recording",
]
