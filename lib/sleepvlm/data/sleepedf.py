"""Sleep-EDF Expanded (PhysioNet): ``SC4ssNE0-PSG.edf`` signals with an EDF+ hypnogram
``SC4ssNEC-Hypnogram.edf`` (R&K annotations "Sleep stage W/1/2/3/4/R/?", "Movement time")."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .edf import edf_annotations, hypnogram_shift, open_edf, read_roles, write_edf
from .hypnogram import align_hypnogram, annotations_to_epochs, encode_stages, map_stages, runs
from .records import EPOCH_S, DataError, Recording
from .sidecar import loaded_recording, write_sidecars

DATASET = "sleepedf"
LINE_FREQ = 50.0
#: Sleep-EDF PSG files use 30-s data records.
RECORD_S = 30.0
#: Study prefix, subject (2 digits), night (1 digit) of names like SC4001E0 / ST7011J0.
_NAME = re.compile(r"(?P<study>S[CT]\d)(?P<subject>\d\d)(?P<night>\d)")
#: Folder of the cassette study in the PhysioNet distribution.
SUBFOLDER = "sleep-cassette"


def subject_and_night(path: str | Path) -> tuple[str, str]:
    """('SC400', '1') for SC4001E0-PSG.edf; the file stem and '1' if the name is not standard."""
    match = _NAME.search(Path(path).name)
    if not match:
        return Path(path).stem, "1"
    return match["study"] + match["subject"], match["night"]


def load_sleepedf(
    psg_path: str | Path,
    hypnogram_path: str | Path,
    channels: Mapping[str, str | Sequence[str]] | None = None,
) -> Recording:
    """One Sleep-EDF night: role channels in µV at native rates, hypnogram aligned to them."""
    psg, hypnogram = open_edf(psg_path), open_edf(hypnogram_path)
    roles, signals, sfreq = read_roles(psg, psg_path, DATASET, channels)
    offset, codes = annotations_to_epochs(edf_annotations(hypnogram), str(hypnogram_path))
    labels, unknown = map_stages(codes, DATASET, str(hypnogram_path))
    duration = min(len(signals[c]) / sfreq[c] for c in signals)
    offset += hypnogram_shift(psg, hypnogram)
    labels, offset = align_hypnogram(labels, duration, offset, str(hypnogram_path))
    subject, night = subject_and_night(psg_path)
    return loaded_recording(
        psg_path,
        dataset=DATASET,
        subject=subject,
        night=night,
        signals=signals,
        sfreq=sfreq,
        stages=labels,
        roles=roles,
        hypnogram_offset=offset,
        line_freq=LINE_FREQ,
        unknown_codes=unknown,
    )


def file_stem(rec: Recording) -> str:
    """'SC4ssN' of a recording whose subject is 'SC4ss' (or just 'ss') and night one digit."""
    subject, night = str(rec.subject), str(rec.night)
    if subject.isdigit() and len(subject) <= 2:
        subject = f"SC4{int(subject):02d}"
    if not (_NAME.fullmatch(subject + night)):
        raise DataError(
            f"{rec.label}: Sleep-EDF names need subject 'SC4ss' or 'ss' (two digits) and a "
            f"one-digit night, not subject={subject!r} night={night!r}"
        )
    return subject + night


def write_sleepedf(rec: Recording, root: str | Path) -> list[Path]:
    """Write ``root/sleep-cassette/SC4ssNE0-PSG.edf`` and ``SC4ssNEC-Hypnogram.edf``."""
    stem = file_stem(rec)
    folder = Path(root) / SUBFOLDER
    psg_path = folder / f"{stem}E0-PSG.edf"
    hypnogram_path = folder / f"{stem}EC-Hypnogram.edf"
    write_edf(psg_path, rec.signals, rec.sfreq, record_s=RECORD_S)
    codes = encode_stages(rec.stages, DATASET, rec.label)
    annotations = [
        (rec.hypnogram_offset + first * EPOCH_S, n * EPOCH_S, code)
        for first, n, code in runs(codes)
    ]
    write_edf(hypnogram_path, {}, {}, annotations=annotations)
    return [psg_path, hypnogram_path, *write_sidecars(rec, psg_path)]
