"""The record types every loader returns: one PSG night in µV with its 30-s hypnogram,
and, for simulated nights, the ground-truth events drawn into the signals."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

#: The five AASM stages, in the order used by every table, confusion matrix and prompt.
STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "REM")
#: Labels kept in a hypnogram but never scored: counted, then excluded by preprocessing.
MOVEMENT = "MOVE"
UNKNOWN = "UNKNOWN"
EXCLUDED_LABELS: tuple[str, ...] = (MOVEMENT, UNKNOWN)
#: Scoring epoch length of the AASM manual (s).
EPOCH_S = 30.0
#: Channel roles used by the benchmark, top to bottom of every image.
ROLES: tuple[str, ...] = ("eeg", "eog", "emg")
#: Role of the second eye's EOG (ROC, E2) beside the EOG role's first eye (LOC, E1), when a
#: recording has both: the eye-movement detector reads the two eyes' phase. It is no benchmark
#: role (epoch arrays and images keep the three of ROLES).
SECOND_EYE = "eog2"

#: Columns of an events table (onset and duration in s from the signal start, amplitude in µV).
EVENT_COLUMNS: tuple[str, ...] = ("kind", "channel", "onset", "duration", "amplitude")
EVENT_KINDS: tuple[str, ...] = (
    "spindle",
    "kcomplex",
    "slow_wave",
    "vertex",
    "alpha",
    "theta",
    "sawtooth",
    "rem",
    "sem",
    "twitch",
    "blink",
    "artifact",
    "arousal",
)


class DataError(ValueError):
    """Input that cannot be used as it is; the message names the file/channel and the remedy."""


class ChannelNotFoundError(DataError):
    """A requested channel is not in the recording."""


class CorruptFileError(DataError):
    """A file is truncated, corrupt or not in the format its loader expects."""


def empty_events() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype=float if c not in ("kind", "channel") else str) for c in EVENT_COLUMNS}
    )


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Recording:
    """One night of PSG.

    ``signals`` hold µV as float32, keyed by the channel name in the source file; ``sfreq``
    gives each channel's own sampling rate (real datasets mix rates, e.g. SHHS EOG at 50 Hz).
    ``stages`` holds one label per 30-s epoch starting ``hypnogram_offset`` s after the signal
    start: one of :data:`STAGES`, or :data:`MOVEMENT` / :data:`UNKNOWN` (counted, not scored).
    ``roles`` maps the benchmark roles (eeg, eog, emg) to channel names that were picked.
    ``other_scorers`` keeps further scorers' hypnograms (e.g. ISRUC's second scorer).
    """

    dataset: str
    subject: str
    night: str
    signals: dict[str, np.ndarray]
    sfreq: dict[str, float]
    stages: np.ndarray
    roles: dict[str, str] = field(default_factory=dict)
    hypnogram_offset: float = 0.0
    source: str = ""
    source_hash: str = ""
    line_freq: float | None = None
    events: pd.DataFrame = field(default_factory=empty_events)
    other_scorers: dict[str, np.ndarray] = field(default_factory=dict)
    unknown_codes: dict[str, int] = field(default_factory=dict)
    simulated: bool = False

    def __post_init__(self) -> None:
        self.stages = np.asarray(self.stages, dtype=object)
        self.signals = {ch: np.asarray(x, dtype=np.float32) for ch, x in self.signals.items()}
        missing = set(self.signals) ^ set(self.sfreq)
        if missing:
            raise DataError(f"{self.label}: channels {sorted(missing)} lack a signal or a rate")

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.subject}/{self.night}"

    @property
    def channels(self) -> list[str]:
        return list(self.signals)

    def duration(self, channel: str | None = None) -> float:
        """Signal length in s (of one channel, or the shortest channel)."""
        names = [channel] if channel else self.channels
        return min(len(self.signals[c]) / self.sfreq[c] for c in names)

    def role(self, role: str) -> str:
        """Channel name that plays ``role`` (eeg/eog/emg) in this recording."""
        try:
            return self.roles[role]
        except KeyError:
            raise ChannelNotFoundError(
                f"{self.label}: no {role.upper()} channel was picked (channels present: "
                f"{', '.join(self.channels)}); pass an alias with channels={{'{role}': [...]}}"
            ) from None

    def stage_counts(self) -> dict[str, int]:
        labels, counts = np.unique(self.stages.astype(str), return_counts=True)
        return {str(k): int(v) for k, v in zip(labels, counts, strict=True)}
