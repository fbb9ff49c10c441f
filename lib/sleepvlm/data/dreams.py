"""DREAMS Sleep Spindles database (Devuyst et al. 2011): 30-min excerpts of one central EEG
channel, each scored for sleep spindles by two experts, with an R&K hypnogram in 5-s steps.

Every file is plain text: a header line in brackets, then one value (or one ``onset duration``
pair) per line. ``excerptN.txt`` holds µV samples but not the sampling rate: the rate is the
sample count over the excerpt's 1800 s, and must be one of the database's rates. Expert 2
marked most spindles with a nominal duration of 1 s (only the onset is that expert's judgement);
expert 1 marked each spindle's extent. Real files are read through
:func:`~sleepvlm.data.registry.real_excerpt`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .edf import require_file
from .records import EPOCH_S, EVENT_COLUMNS, UNKNOWN, CorruptFileError, DataError
from .registry import real_excerpt

#: Registry folder of the database.
FOLDER = "dreams_spindles"
#: The excerpts in the registry, and the two experts who scored them.
EXCERPTS: tuple[int, ...] = (1, 2, 3, 4)
EXPERTS: tuple[int, ...] = (1, 2)
#: Excerpts whose whole PSG (EEG, EOG, EMG...) is in the registry as EDF.
PSG_EXCERPTS: tuple[int, ...] = (3,)
#: Length of every excerpt (s).
EXCERPT_S = 1800.0
#: Sampling rates (Hz) the database uses; a sample count must be EXCERPT_S at one of them.
SFREQS: tuple[float, ...] = (50.0, 100.0, 200.0)
#: Step of the hypnogram files (s).
HYPNOGRAM_STEP_S = 5.0
#: R&K stage codes of the hypnogram files (stages 3 and 4 together are N3); negative codes
#: mark unscored steps.
STAGE_CODES: dict[int, str] = {5: "W", 4: "REM", 3: "N1", 2: "N2", 1: "N3", 0: "N3"}

#: First line of each kind of file: its pattern and an example for error messages.
_EEG_HEADER = (re.compile(r"\[(?P<channel>[^\[\]]+)\]"), "[C3-A1]")
_SPINDLE_HEADER = (
    re.compile(r"\[vis(?P<expert>\d+)_Spindles/(?P<channel>[^\[\]]+)\]"),
    "[vis1_Spindles/C3-A1]",
)
_HYPNOGRAM_HEADER = (re.compile(r"\[Hypnogram\]"), "[Hypnogram]")


def _check_choice(value: int, allowed: tuple[int, ...], what: str) -> None:
    if value not in allowed:
        raise DataError(
            f"DREAMS {what} {value!r} is not available; choose one of "
            f"{', '.join(map(str, allowed))}"
        )


def _read_lines(
    path: Path, header: tuple[re.Pattern, str], what: str
) -> tuple[re.Match, list[str]]:
    """The header match and the body lines of a DREAMS text file (trailing blank lines cut)."""
    lines = require_file(path, what).read_text(encoding="latin-1").rstrip().splitlines()
    pattern, example = header
    match = pattern.fullmatch(lines[0].strip()) if lines else None
    if match is None:
        found = repr(lines[0][:60]) if lines else "an empty file"
        raise CorruptFileError(
            f"{path}: expected a {what} whose first line looks like {example}, found "
            f"{found}; check that this is the right DREAMS file"
        )
    return match, lines[1:]


def _numbers(lines: list[str], path: Path) -> np.ndarray:
    """One finite number per line; CorruptFileError naming the first line that is not one."""
    values = pd.to_numeric(pd.Series(lines, dtype=str).str.strip(), errors="coerce")
    values = values.to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        line = bad[0] + 2  # 1-based, after the header
        raise CorruptFileError(
            f"{path}, line {line}: {lines[bad[0]]!r} is not a finite number "
            f"({len(bad)} such lines); the file is damaged, fetch a fresh copy"
        )
    return values


def sfreq_of(n_samples: int, path: Path) -> float:
    """The rate at which ``n_samples`` fill one excerpt; CorruptFileError if none does."""
    for sfreq in SFREQS:
        if n_samples == round(EXCERPT_S * sfreq):
            return sfreq
    expected = ", ".join(f"{round(EXCERPT_S * s)} ({s:g} Hz)" for s in SFREQS)
    raise CorruptFileError(
        f"{path}: {n_samples} samples do not fill {EXCERPT_S:g} s at a DREAMS rate (expected "
        f"{expected}); the file is truncated or not a DREAMS excerpt"
    )


def read_eeg_file(path: str | Path) -> tuple[np.ndarray, float, str]:
    """(µV samples as float64, sampling rate in Hz, channel name) of an ``excerptN.txt``."""
    path = Path(path)
    match, lines = _read_lines(path, _EEG_HEADER, "DREAMS EEG file")
    signal = _numbers(lines, path)
    return signal, sfreq_of(len(signal), path), match["channel"]


def read_spindle_file(path: str | Path, expert: int) -> pd.DataFrame:
    """An expert's spindles (``Visual_scoringK_excerptN.txt``) as an events table (kind
    ``spindle``, the header's channel, amplitude NaN: the experts give none)."""
    path = Path(path)
    match, lines = _read_lines(path, _SPINDLE_HEADER, "DREAMS spindle scoring file")
    if int(match["expert"]) != expert:
        raise CorruptFileError(
            f"{path}: header names expert {match['expert']} but expert {expert} was asked for; "
            "check which Visual_scoring file was given"
        )
    rows = [line.split() for line in lines]
    for k, row in enumerate(rows):
        if len(row) != 2:
            raise CorruptFileError(
                f"{path}, line {k + 2}: expected 'onset duration' (two numbers), found "
                f"{lines[k]!r}; the file is damaged, fetch a fresh copy"
            )
    onset = _numbers([r[0] for r in rows], path)
    duration = _numbers([r[1] for r in rows], path)
    bad = np.flatnonzero((onset < 0) | (duration <= 0))
    if len(bad):
        raise CorruptFileError(
            f"{path}, line {bad[0] + 2}: a spindle needs onset >= 0 and duration > 0 s, found "
            f"{lines[bad[0]]!r}; the file is damaged, fetch a fresh copy"
        )
    events = pd.DataFrame(
        {
            "kind": "spindle",
            "channel": match["channel"],
            "onset": onset,
            "duration": duration,
            "amplitude": np.nan,
        },
        columns=list(EVENT_COLUMNS),
    )
    return events.sort_values("onset", ignore_index=True)


def read_hypnogram_file(path: str | Path) -> np.ndarray:
    """One label of :data:`~sleepvlm.data.records.STAGES` (or UNKNOWN for unscored steps) per
    5 s of a ``Hypnogram_excerptN.txt``."""
    path = Path(path)
    _, lines = _read_lines(path, _HYPNOGRAM_HEADER, "DREAMS hypnogram file")
    codes = _numbers(lines, path)
    expected = round(EXCERPT_S / HYPNOGRAM_STEP_S)
    if len(codes) != expected:
        raise CorruptFileError(
            f"{path}: {len(codes)} stages, expected {expected} (one per {HYPNOGRAM_STEP_S:g} s "
            f"of {EXCERPT_S:g} s); the file is truncated or not a DREAMS hypnogram"
        )
    unknown = np.flatnonzero((codes >= 0) & ~np.isin(codes, list(STAGE_CODES)))
    if len(unknown):
        raise CorruptFileError(
            f"{path}, line {unknown[0] + 2}: stage code {lines[unknown[0]].strip()!r} is not an "
            f"R&K code of DREAMS ({', '.join(f'{c} {s}' for c, s in STAGE_CODES.items())}, "
            "negative unscored); fix or remove that line"
        )
    return np.array(
        [UNKNOWN if code < 0 else STAGE_CODES[int(code)] for code in codes], dtype=object
    )


def to_30s_epochs(labels_5s: np.ndarray) -> np.ndarray:
    """30-s labels from 5-s ones by majority of the six steps of each epoch.

    Tie rule (e.g. three N2 and three N3): the tied label whose first step comes earliest in
    the epoch, i.e. the stage in force when the tie began. UNKNOWN takes part like any label."""
    labels = np.asarray(labels_5s, dtype=object)
    per_epoch = round(EPOCH_S / HYPNOGRAM_STEP_S)
    if len(labels) % per_epoch:
        raise DataError(
            f"{len(labels)} steps of {HYPNOGRAM_STEP_S:g} s do not fill whole {EPOCH_S:g}-s "
            f"epochs; pass a multiple of {per_epoch} steps"
        )
    return np.array([_majority(epoch) for epoch in labels.reshape(-1, per_epoch)], dtype=object)


def _majority(steps: np.ndarray) -> str:
    labels, first, counts = np.unique(steps.astype(str), return_index=True, return_counts=True)
    # among the most frequent labels, the one that appears first
    best = np.flatnonzero(counts == counts.max())
    return str(labels[best[np.argmin(first[best])]])


def read_dreams_eeg(n: int) -> tuple[np.ndarray, float, str]:
    """Excerpt ``n``'s EEG: (µV samples, sampling rate in Hz, channel name)."""
    _check_choice(n, EXCERPTS, "excerpt")
    return read_eeg_file(real_excerpt(f"{FOLDER}/excerpt{n}.txt"))


def read_dreams_spindles(n: int, expert: int) -> pd.DataFrame:
    """Excerpt ``n``'s spindles as scored by ``expert`` (1 or 2)."""
    _check_choice(n, EXCERPTS, "excerpt")
    _check_choice(expert, EXPERTS, "expert")
    path = real_excerpt(f"{FOLDER}/Visual_scoring{expert}_excerpt{n}.txt")
    return read_spindle_file(path, expert)


def dreams_psg(n: int) -> Path:
    """Path of excerpt ``n``'s full PSG as EDF (only excerpt 3 has one: C3-A1, EOG1-A1,
    EOG2-A1, EMG1... at 50 Hz, dimension spelled 'UV')."""
    if n not in PSG_EXCERPTS:
        raise DataError(
            f"DREAMS excerpt {n} has no PSG file here; only excerpt(s) "
            f"{', '.join(map(str, PSG_EXCERPTS))} do"
        )
    return real_excerpt(f"{FOLDER}/excerpt{n}.edf")


def read_dreams_hypnogram(n: int) -> np.ndarray:
    """Excerpt ``n``'s hypnogram: one stage label per 5 s."""
    _check_choice(n, EXCERPTS, "excerpt")
    return read_hypnogram_file(real_excerpt(f"{FOLDER}/Hypnogram_excerpt{n}.txt"))
