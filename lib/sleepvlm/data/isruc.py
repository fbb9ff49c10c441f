"""ISRUC-Sleep: ``<n>/<n>.rec`` (an EDF file with a .rec extension) scored by two experts in
``<n>_1.txt`` and ``<n>_2.txt``, one AASM code per 30-s epoch (0 W, 1 N1, 2 N2, 3 N3, 5 REM).
Subgroup II keeps two sessions per subject as ``<subject>/<session>/<session>.rec``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .edf import open_edf, read_roles, require_file, write_edf
from .hypnogram import align_hypnogram, encode_stages, map_stages
from .records import DataError, Recording
from .sidecar import loaded_recording, write_sidecars

DATASET = "isruc"
LINE_FREQ = 50.0
#: Name of the second expert's hypnogram in ``Recording.other_scorers``.
SECOND_SCORER = "scorer2"


def scorer_files(rec_path: str | Path) -> list[Path]:
    """The ``<stem>_1.txt``, ``<stem>_2.txt`` files found beside a .rec file."""
    rec_path = Path(rec_path)
    candidates = [rec_path.with_name(f"{rec_path.stem}_{i}.txt") for i in (1, 2)]
    return [p for p in candidates if p.is_file()]


def subject_and_night(rec_path: str | Path) -> tuple[str, str]:
    """('7', '1') for 7/7.rec; ('3', '2') for subgroup II's 3/2/2.rec (subject folders of real
    ISRUC are numbers, which is how a session folder is told from a subject folder)."""
    rec_path = Path(rec_path)
    parent = rec_path.parent
    if parent.name == rec_path.stem and parent.parent.name.isdigit():
        return parent.parent.name, rec_path.stem
    return rec_path.stem, "1"


def session_number(night: str) -> int:
    """1 for '1', 'n1'; k for a night name ending in the number k."""
    match = re.search(r"(\d+)$", str(night))
    return int(match[1]) if match else 1


def read_scorer(path: Path) -> list[str]:
    codes = [
        line.strip()
        for line in require_file(path, "ISRUC scorer file")
        .read_text(encoding="latin-1")
        .splitlines()
    ]
    codes = [c for c in codes if c]
    if not codes:
        raise DataError(f"{path}: scorer file holds no stage codes")
    return codes


def load_isruc(
    rec_path: str | Path,
    scorer_paths: Sequence[str | Path] | None = None,
    channels: Mapping[str, str | Sequence[str]] | None = None,
) -> Recording:
    """One ISRUC night; scorer 1 gives ``stages``, scorer 2 ``other_scorers['scorer2']``."""
    scorers = (
        [Path(p) for p in scorer_paths] if scorer_paths is not None else scorer_files(rec_path)
    )
    if not scorers:
        raise DataError(f"{rec_path}: no scorer file <stem>_1.txt beside it; pass scorer_paths")
    edf = open_edf(rec_path)
    roles, signals, sfreq = read_roles(edf, rec_path, DATASET, channels)
    duration = min(len(signals[c]) / sfreq[c] for c in signals)
    hypnograms, unknown = [], []
    for path in scorers:
        labels, counts = map_stages(read_scorer(path), DATASET, str(path))
        hypnograms.append(align_hypnogram(labels, duration, 0.0, str(path))[0])
        unknown.append(counts)
    subject, night = subject_and_night(rec_path)
    return loaded_recording(
        rec_path,
        dataset=DATASET,
        subject=subject,
        night=night,
        signals=signals,
        sfreq=sfreq,
        stages=hypnograms[0],
        roles=roles,
        line_freq=LINE_FREQ,
        other_scorers={f"scorer{i}": h for i, h in enumerate(hypnograms[1:], start=2)},
        unknown_codes=unknown[0],
    )


def write_scorer(path: Path, labels: np.ndarray, source: str) -> Path:
    path.write_text("".join(f"{code}\n" for code in encode_stages(labels, DATASET, source)))
    return path


def write_isruc(rec: Recording, root: str | Path) -> list[Path]:
    """Write ``root/<subject>/<subject>.rec`` (subgroup II's ``<subject>/<k>/<k>.rec`` for a
    night numbered k > 1) with ``_1.txt`` and, if the night has a second scorer, ``_2.txt``."""
    if rec.hypnogram_offset != 0:
        raise DataError(
            f"{rec.label}: ISRUC scorer files cannot hold a hypnogram offset "
            f"({rec.hypnogram_offset} s); crop the signal to start at the first epoch"
        )
    folder = Path(root) / str(rec.subject)
    stem = str(rec.subject)
    session = session_number(rec.night)
    if session > 1:
        folder, stem = folder / str(session), str(session)
    rec_path = write_edf(folder / f"{stem}.rec", rec.signals, rec.sfreq)
    paths = [rec_path, write_scorer(folder / f"{stem}_1.txt", rec.stages, rec.label)]
    if SECOND_SCORER in rec.other_scorers:
        paths.append(
            write_scorer(folder / f"{stem}_2.txt", rec.other_scorers[SECOND_SCORER], rec.label)
        )
    return paths + write_sidecars(rec, rec_path, native_scorers=[SECOND_SCORER])
