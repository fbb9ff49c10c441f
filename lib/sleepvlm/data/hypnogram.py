"""Stage codes of each dataset mapped to AASM labels (one table), annotation lists turned into
30-s epochs, and the explicit rule that aligns a hypnogram with the signal it scores."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .records import EPOCH_S, MOVEMENT, UNKNOWN, DataError

_RK_EDF = {
    "Sleep stage W": "W",
    "Sleep stage 1": "N1",
    "Sleep stage 2": "N2",
    "Sleep stage 3": "N3",
    "Sleep stage 4": "N3",
    "Sleep stage R": "REM",
    "Sleep stage ?": UNKNOWN,
    "Movement time": MOVEMENT,
}
_PROFUSION = {
    "0": "W",
    "1": "N1",
    "2": "N2",
    "3": "N3",
    "4": "N3",
    "5": "REM",
    "6": MOVEMENT,
    "9": UNKNOWN,
}

#: Stage code as written in each format → label (R&K stages 3 and 4 both become N3).
STAGE_TABLES: dict[str, dict[str, str]] = {
    # Sleep-EDF Expanded hypnogram EDF+ annotations (R&K).
    "sleepedf": dict(_RK_EDF),
    # MASS Base.edf annotations: R&K in SS1/SS2, AASM in SS3 (same strings, no stage 4).
    "mass": {**_RK_EDF, "Sleep stage N1": "N1", "Sleep stage N2": "N2", "Sleep stage N3": "N3"},
    # DCSM hypnogram.ids (psg-utils start,duration,stage), psg-utils's own UNKNOWN included.
    "dcsm": {"W": "W", "N1": "N1", "N2": "N2", "N3": "N3", "REM": "REM", "UNKNOWN": UNKNOWN},
    # ISRUC-Sleep scorer files, one AASM code per line (4 is not used; 5 is REM).
    "isruc": {"0": "W", "1": "N1", "2": "N2", "3": "N3", "5": "REM"},
    # SHHS NSRR XML EventConcept of "Stages|Stages" events.
    "shhs_nsrr": {
        "Wake|0": "W",
        "Stage 1 sleep|1": "N1",
        "Stage 2 sleep|2": "N2",
        "Stage 3 sleep|3": "N3",
        "Stage 4 sleep|4": "N3",
        "REM sleep|5": "REM",
        "Movement|6": MOVEMENT,
        "Unscored|9": UNKNOWN,
    },
    # SHHS Compumedics Profusion XML <SleepStage> integers.
    "shhs_profusion": _PROFUSION,
}

_RK_EDF_WRITE = {
    "W": "Sleep stage W",
    "N1": "Sleep stage 1",
    "N2": "Sleep stage 2",
    "N3": "Sleep stage 3",
    "REM": "Sleep stage R",
    UNKNOWN: "Sleep stage ?",
}

#: Label → code each writer uses (N3 as R&K stage 3 where the format is R&K).
WRITE_CODES: dict[str, dict[str, str]] = {
    "sleepedf": {**_RK_EDF_WRITE, MOVEMENT: "Movement time"},
    # MASS has no movement code; movement is written as unscored.
    "mass": {**_RK_EDF_WRITE, MOVEMENT: "Sleep stage ?"},
    # DCSM has no movement code; movement is written as UNKNOWN.
    "dcsm": {
        "W": "W",
        "N1": "N1",
        "N2": "N2",
        "N3": "N3",
        "REM": "REM",
        UNKNOWN: "UNKNOWN",
        MOVEMENT: "UNKNOWN",
    },
    # ISRUC files have no code for unscored or movement epochs.
    "isruc": {"W": "0", "N1": "1", "N2": "2", "N3": "3", "REM": "5"},
    "shhs_nsrr": {
        "W": "Wake|0",
        "N1": "Stage 1 sleep|1",
        "N2": "Stage 2 sleep|2",
        "N3": "Stage 3 sleep|3",
        "REM": "REM sleep|5",
        MOVEMENT: "Movement|6",
        UNKNOWN: "Unscored|9",
    },
    "shhs_profusion": {
        "W": "0",
        "N1": "1",
        "N2": "2",
        "N3": "3",
        "REM": "5",
        MOVEMENT: "6",
        UNKNOWN: "9",
    },
}

#: Epoch code standing for "no annotation covers this epoch" (mapped to UNKNOWN, not counted).
GAP = None


def map_stages(
    codes: Iterable[object], table: Mapping[str, str] | str, source: str = ""
) -> tuple[np.ndarray, dict[str, int]]:
    """Labels for per-epoch codes; codes missing from ``table`` (a mapping or a key of
    :data:`STAGE_TABLES`) become UNKNOWN and are counted.

    Returns the labels and ``{code: epochs}`` of the unrecognised codes (warned, naming the file).
    """
    if isinstance(table, str):
        table = STAGE_TABLES[table]
    labels: list[str] = []
    unknown: Counter[str] = Counter()
    for code in codes:
        if code is GAP:
            labels.append(UNKNOWN)
            continue
        key = str(code).strip()
        label = table.get(key)
        if label is None:
            unknown[key] += 1
            label = UNKNOWN
        labels.append(label)
    if unknown:
        listed = ", ".join(f"{code!r} ×{n}" for code, n in sorted(unknown.items()))
        warnings.warn(
            f"{source}: unrecognised stage codes {listed}; those epochs are marked UNKNOWN "
            "and excluded from scoring",
            stacklevel=2,
        )
    return np.asarray(labels, dtype=object), dict(unknown)


def encode_stages(labels: Sequence[str], fmt: str, source: str = "") -> list[str]:
    """Codes of ``labels`` in format ``fmt``; DataError if the format cannot express one."""
    table = WRITE_CODES[fmt]
    missing = sorted({str(label) for label in labels} - set(table))
    if missing:
        raise DataError(
            f"{source}: the {fmt} format has no stage code for {missing}; relabel those epochs "
            f"(codes available: {sorted(table)})"
        )
    return [table[str(label)] for label in labels]


def runs(labels: Sequence[str]) -> list[tuple[int, int, str]]:
    """Run-length encoding as (first epoch, number of epochs, label)."""
    out: list[tuple[int, int, str]] = []
    for i, label in enumerate(labels):
        if out and out[-1][2] == label and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1, label)
        else:
            out.append((i, 1, label))
    return out


def annotations_to_epochs(
    annotations: Sequence[tuple[float, float, str]],
    source: str = "",
    epoch_s: float = EPOCH_S,
    tolerance_s: float = 0.5,
) -> tuple[float, np.ndarray]:
    """(onset s, duration s, code) annotations → (offset of the first epoch, one code per epoch).

    The epoch grid starts at the first annotation; epochs no annotation covers hold :data:`GAP`.
    Zero-length annotations (markers, not scored spans) are ignored. A duration or onset that
    is not a whole number of epochs raises DataError.
    """
    ordered = sorted((a for a in annotations if a[1] > 0), key=lambda a: a[0])
    if not ordered:
        raise DataError(f"{source}: no sleep-stage annotations found")
    offset = float(ordered[0][0])
    placed: list[tuple[int, int, str]] = []
    for onset, duration, code in ordered:
        first, n = (onset - offset) / epoch_s, duration / epoch_s
        if abs(first - round(first)) * epoch_s > tolerance_s or (
            abs(n - round(n)) * epoch_s > tolerance_s
        ):
            raise DataError(
                f"{source}: stage annotation {code!r} at {onset} s lasting {duration} s is not "
                f"on the {epoch_s:g}-s epoch grid; this loader needs {epoch_s:g}-s scoring"
            )
        placed.append((round(first), round(n), code))
    n_epochs = max(first + n for first, n, _ in placed)
    epochs = np.full(n_epochs, GAP, dtype=object)
    for first, n, code in placed:
        epochs[first : first + n] = code
    return offset, epochs


def align_hypnogram(
    labels: Sequence[str], signal_duration_s: float, offset_s: float, source: str = ""
) -> tuple[np.ndarray, float]:
    """Keep the epochs that lie wholly inside the signal; returns (labels, offset).

    Rule: epochs that start before the signal or end after it (including a final partial
    epoch) are dropped, with a warning giving how many; a hypnogram that ends before the
    signal leaves the tail unscored (warning). Labels are never shifted or stretched.
    """
    labels = np.asarray(labels, dtype=object)
    skip = max(0, math.ceil(-offset_s / EPOCH_S - 1e-9))
    if skip:
        warnings.warn(
            f"{source}: {skip} epochs start before the signal and were dropped", stacklevel=2
        )
        labels, offset_s = labels[skip:], offset_s + skip * EPOCH_S
    fits = max(0, math.floor((signal_duration_s - offset_s) / EPOCH_S + 1e-9))
    if len(labels) > fits:
        warnings.warn(
            f"{source}: hypnogram has {len(labels)} epochs but the signal "
            f"({signal_duration_s:g} s) holds {fits}; truncated the hypnogram to the signal "
            f"({len(labels) - fits} epochs dropped)",
            stacklevel=2,
        )
        labels = labels[:fits]
    elif len(labels) < fits:
        warnings.warn(
            f"{source}: hypnogram ends {(fits - len(labels)) * EPOCH_S:g} s before the signal; "
            f"the last {fits - len(labels)} epochs of the signal are unscored",
            stacklevel=2,
        )
    return labels, offset_s
