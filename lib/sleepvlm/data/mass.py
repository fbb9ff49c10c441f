"""MASS (Montreal Archive of Sleep Studies): ``NN-NN-NNNN PSG.edf`` signals with the stages in
``NN-NN-NNNN Base.edf`` (EDF+ annotations "Sleep stage W/1/2/3/4/R/?"). Stage annotations need
not start at the signal start (→ ``hypnogram_offset``). SS1/SS2 are scored in 20-s epochs,
which this 30-s benchmark does not convert: such nights raise DataError."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .edf import edf_annotations, hypnogram_shift, open_edf, read_roles, write_edf
from .hypnogram import align_hypnogram, annotations_to_epochs, encode_stages, map_stages
from .records import EPOCH_S, DataError, Recording
from .sidecar import loaded_recording, write_sidecars

DATASET = "mass"
LINE_FREQ = 60.0
PSG_SUFFIX, BASE_SUFFIX = " PSG.edf", " Base.edf"
_SUBJECT = re.compile(r"\d\d-(?P<subset>\d\d)-\d{4}")
#: Epoch length of the R&K subsets SS1 and SS2 (s).
SHORT_EPOCH_S = 20.0


def subject_of(psg_path: str | Path) -> str:
    name = Path(psg_path).name
    return name[: -len(PSG_SUFFIX)] if name.endswith(PSG_SUFFIX) else Path(psg_path).stem


def check_epoch_length(base_path: Path, annotations: list) -> list:
    """The annotations of a Base.edf; DataError for the 20-s epochs of SS1/SS2."""
    if any(math.isclose(d, SHORT_EPOCH_S, abs_tol=0.5) for _, d, _ in annotations):
        raise DataError(
            f"{base_path}: scored in {SHORT_EPOCH_S:g}-s epochs (MASS SS1/SS2, R&K); "
            f"the benchmark needs {EPOCH_S:g}-s epochs — use SS3 or rescore"
        )
    return annotations


def load_mass(
    psg_path: str | Path,
    base_path: str | Path,
    channels: Mapping[str, str | Sequence[str]] | None = None,
) -> Recording:
    """One MASS night with its Base.edf stages aligned to the signal."""
    psg, base = open_edf(psg_path), open_edf(base_path)
    roles, signals, sfreq = read_roles(psg, psg_path, DATASET, channels)
    annotations = check_epoch_length(Path(base_path), edf_annotations(base))
    offset, codes = annotations_to_epochs(annotations, str(base_path))
    labels, unknown = map_stages(codes, DATASET, str(base_path))
    duration = min(len(signals[c]) / sfreq[c] for c in signals)
    offset += hypnogram_shift(psg, base)
    labels, offset = align_hypnogram(labels, duration, offset, str(base_path))
    return loaded_recording(
        psg_path,
        dataset=DATASET,
        subject=subject_of(psg_path),
        night="1",
        signals=signals,
        sfreq=sfreq,
        stages=labels,
        roles=roles,
        hypnogram_offset=offset,
        line_freq=LINE_FREQ,
        unknown_codes=unknown,
    )


def mass_subject(rec: Recording) -> str:
    """'NN-NN-NNNN' of a recording (a bare number n becomes SS3's '01-03-000n')."""
    subject = str(rec.subject)
    if subject.isdigit() and len(subject) <= 4:
        subject = f"01-03-{int(subject):04d}"
    if not _SUBJECT.fullmatch(subject):
        raise DataError(f"{rec.label}: MASS subjects are named 'NN-NN-NNNN', not {subject!r}")
    return subject


def write_mass(rec: Recording, root: str | Path) -> list[Path]:
    """Write ``root/SSn/<subject> PSG.edf`` and ``<subject> Base.edf``."""
    subject = mass_subject(rec)
    folder = Path(root) / f"SS{int(_SUBJECT.fullmatch(subject)['subset'])}"
    psg_path = write_edf(folder / f"{subject}{PSG_SUFFIX}", rec.signals, rec.sfreq)
    codes = encode_stages(rec.stages, DATASET, rec.label)
    # MASS writes one annotation per epoch.
    annotations = [(rec.hypnogram_offset + i * EPOCH_S, EPOCH_S, c) for i, c in enumerate(codes)]
    base_path = write_edf(folder / f"{subject}{BASE_SUFFIX}", {}, {}, annotations=annotations)
    return [psg_path, base_path, *write_sidecars(rec, psg_path)]
