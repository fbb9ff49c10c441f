"""Ground truth that travels beside a simulated night's files: ``<stem>.events.csv`` (the events
drawn into the signals) and ``<stem>.truth.txt`` (the true stage of every epoch, plus any extra
scorer the dataset's own format cannot hold). Real nights have neither file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .records import EVENT_COLUMNS, CorruptFileError, Recording, file_sha256

#: Column of the truth file with the true stage; loaders put it in ``other_scorers["truth"]``.
TRUTH = "truth"


def sidecar_paths(signal_path: str | Path) -> tuple[Path, Path]:
    """(events file, truth file) beside ``signal_path`` (its name without the extension)."""
    stem = Path(signal_path).with_suffix("")
    return stem.parent / f"{stem.name}.events.csv", stem.parent / f"{stem.name}.truth.txt"


def truth_table(rec: Recording, native_scorers: Iterable[str] = ()) -> pd.DataFrame:
    """True stages (``other_scorers['truth']`` if set, else ``stages``) + non-native scorers."""
    columns = {TRUTH: rec.other_scorers.get(TRUTH, rec.stages)}
    skip = {TRUTH, *native_scorers}
    columns.update({k: v for k, v in rec.other_scorers.items() if k not in skip})
    return pd.DataFrame({k: pd.Series(np.asarray(v, dtype=str)) for k, v in columns.items()})


def write_sidecars(
    rec: Recording, signal_path: str | Path, native_scorers: Iterable[str] = ()
) -> list[Path]:
    """Write both sidecars of a simulated night; nothing for a real one."""
    if not rec.simulated:
        return []
    events_path, truth_path = sidecar_paths(signal_path)
    rec.events.loc[:, list(EVENT_COLUMNS)].to_csv(events_path, index=False)
    truth_table(rec, native_scorers).to_csv(truth_path, sep="\t", index=False)
    return [events_path, truth_path]


def read_events(path: Path) -> pd.DataFrame:
    events = pd.read_csv(path, dtype={"kind": str, "channel": str})
    missing = sorted(set(EVENT_COLUMNS) - set(events.columns))
    if missing:
        raise CorruptFileError(f"{path}: events table lacks columns {missing}")
    events = events.loc[:, list(EVENT_COLUMNS)]
    for column in ("onset", "duration", "amplitude"):
        events[column] = events[column].astype(float)
    return events


def read_truth(path: Path) -> dict[str, np.ndarray]:
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if TRUTH not in table.columns:
        raise CorruptFileError(f"{path}: truth file lacks its {TRUTH!r} column")
    # Shorter scorers were padded with empty cells by the writer.
    return {col: np.asarray([v for v in table[col] if v], dtype=object) for col in table.columns}


def attach_sidecars(rec: Recording, signal_path: str | Path) -> Recording:
    """Add the sidecars found beside ``signal_path`` to ``rec`` (marking it simulated)."""
    events_path, truth_path = sidecar_paths(signal_path)
    if events_path.is_file():
        rec.events = read_events(events_path)
        rec.simulated = True
    if truth_path.is_file():
        rec.other_scorers.update(read_truth(truth_path))
        rec.simulated = True
    return rec


def loaded_recording(signal_path: str | Path, **fields) -> Recording:
    """The :class:`Recording` a loader read from ``signal_path``: the file and its SHA-256 as
    source, and the ground-truth sidecars beside it attached when there are any."""
    rec = Recording(source=str(signal_path), source_hash=file_sha256(signal_path), **fields)
    return attach_sidecars(rec, signal_path)
