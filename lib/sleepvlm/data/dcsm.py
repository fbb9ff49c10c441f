"""DCSM (Danish Center for Sleep Medicine, ERDA): one folder per subject holding ``psg.h5``
(psg-utils layout: one dataset per channel under the ``channels`` group, ``sample_rate`` as an
attribute inherited from the root or set per dataset; no units) and ``hypnogram.ids``
(``onset_s,duration_s,stage`` run-length lines, stages W/N1/N2/N3/REM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .channels import pick_roles
from .edf import looks_like_volts, require_file
from .hypnogram import align_hypnogram, annotations_to_epochs, encode_stages, map_stages, runs
from .records import EPOCH_S, CorruptFileError, DataError, Recording
from .sidecar import loaded_recording, write_sidecars

DATASET = "dcsm"
LINE_FREQ = 50.0
PSG_FILE = "psg.h5"
HYPNOGRAM_FILE = "hypnogram.ids"
CHANNEL_GROUP = "channels"


def h5_channels(h5: h5py.File, path: Path) -> dict[str, tuple[str, float]]:
    """Channel name → (dataset path, sampling rate), attributes inherited down the tree."""
    if CHANNEL_GROUP not in h5:
        raise CorruptFileError(f"{path}: no '{CHANNEL_GROUP}' group (groups: {list(h5)})")
    found: dict[str, tuple[str, float]] = {}

    def visit(node: h5py.Group | h5py.Dataset, rate: float | None) -> None:
        rate = node.attrs.get("sample_rate", rate)
        if isinstance(node, h5py.Dataset):
            if rate is None:
                raise CorruptFileError(f"{path}: channel {node.name} has no sample_rate attribute")
            found[node.name.rsplit("/", 1)[-1]] = (node.name, float(rate))
            return
        for child in node.values():
            visit(child, rate)

    visit(h5[CHANNEL_GROUP], h5.attrs.get("sample_rate"))
    return found


def read_h5_signals(
    path: Path, channels: Mapping[str, str | Sequence[str]] | None
) -> tuple[dict[str, str], dict[str, np.ndarray], dict[str, float]]:
    """Role channels of a psg.h5 in µV (volts recognised by their magnitude)."""
    try:
        with h5py.File(path, "r") as h5:
            available = h5_channels(h5, path)
            roles = pick_roles(available, DATASET, channels, source=str(path))
            signals, sfreq = {}, {}
            for name in dict.fromkeys(roles.values()):
                dataset_path, rate = available[name]
                x = np.asarray(h5[dataset_path][()], dtype=np.float64)
                signals[name] = (x * 1e6 if looks_like_volts(x) else x).astype(np.float32)
                sfreq[name] = rate
    except OSError as exc:
        raise CorruptFileError(f"{path}: not a readable HDF5 file ({exc})") from exc
    return roles, signals, sfreq


def read_ids(path: Path) -> list[tuple[float, float, str]]:
    """Stage annotations of a hypnogram.ids file."""
    try:
        table = pd.read_csv(
            path,
            header=None,
            names=["onset", "duration", "stage"],
            dtype={"stage": str},
            skipinitialspace=True,
        )
        return [(float(o), float(d), s) for o, d, s in table.itertuples(index=False)]
    except (ValueError, pd.errors.ParserError) as exc:
        raise CorruptFileError(
            f"{path}: not 'onset,duration,stage' lines ({exc}); re-export the hypnogram"
        ) from exc


def load_dcsm(
    subject_dir: str | Path, channels: Mapping[str, str | Sequence[str]] | None = None
) -> Recording:
    """One DCSM night from its subject folder."""
    folder = Path(subject_dir)
    psg_path = require_file(folder / PSG_FILE, "DCSM signal file")
    ids_path = require_file(folder / HYPNOGRAM_FILE, "DCSM hypnogram")
    roles, signals, sfreq = read_h5_signals(psg_path, channels)
    offset, codes = annotations_to_epochs(read_ids(ids_path), str(ids_path))
    labels, unknown = map_stages(codes, DATASET, str(ids_path))
    duration = min(len(signals[c]) / sfreq[c] for c in signals)
    labels, offset = align_hypnogram(labels, duration, offset, str(ids_path))
    return loaded_recording(
        psg_path,
        dataset=DATASET,
        subject=folder.name,
        night="1",
        signals=signals,
        sfreq=sfreq,
        stages=labels,
        roles=roles,
        hypnogram_offset=offset,
        line_freq=LINE_FREQ,
        unknown_codes=unknown,
    )


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def write_h5(path: Path, rec: Recording) -> None:
    """Signals as float32 volts under /channels (the real files carry no unit)."""
    rates = set(rec.sfreq.values())
    with h5py.File(path, "w") as h5:
        if len(rates) == 1:
            h5.attrs["sample_rate"] = rates.pop()
        group = h5.create_group(CHANNEL_GROUP)
        for name, x in rec.signals.items():
            if "/" in name:
                raise DataError(f"{rec.label}: channel name {name!r} cannot be an HDF5 dataset")
            dataset = group.create_dataset(
                name, data=(x.astype(np.float64) * 1e-6).astype(np.float32)
            )
            if "sample_rate" not in h5.attrs:
                dataset.attrs["sample_rate"] = rec.sfreq[name]


def write_dcsm(rec: Recording, root: str | Path) -> list[Path]:
    """Write ``root/<subject>/psg.h5`` and ``hypnogram.ids``."""
    folder = Path(root) / str(rec.subject)
    folder.mkdir(parents=True, exist_ok=True)
    psg_path, ids_path = folder / PSG_FILE, folder / HYPNOGRAM_FILE
    write_h5(psg_path, rec)
    codes = encode_stages(rec.stages, DATASET, rec.label)
    lines = [
        f"{_number(rec.hypnogram_offset + first * EPOCH_S)},{_number(n * EPOCH_S)},{code}\n"
        for first, n, code in runs(codes)
    ]
    ids_path.write_text("".join(lines))
    return [psg_path, ids_path, *write_sidecars(rec, psg_path)]
