"""Reading and writing EDF/EDF+ files (also ISRUC's ``.rec``) with edfio: selected channels at
their native rates, converted to µV from the header's physical dimension, with checks that
catch a dimension not spelled as SI (DREAMS' "UV"), volts stored under a µV label and µV
stored under a volt label; corrupt or truncated files raise CorruptFileError."""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import edfio
import numpy as np

from .channels import pick_roles
from .records import CorruptFileError, DataError

#: Physical dimension (case-folded, blanks removed) → factor to µV.
UNIT_TO_MICROVOLT: dict[str, float] = {
    "uv": 1.0,
    "µv": 1.0,
    "μv": 1.0,
    "microvolt": 1.0,
    "microvolts": 1.0,
    "mv": 1e3,
    "millivolt": 1e3,
    "v": 1e6,
    "volt": 1e6,
    "volts": 1e6,
    "nv": 1e-3,
}
#: The SI spelling of each prefixed unit above (EDF physical dimensions are case-sensitive
#: SI: "MV" would be megavolts). Other cases are read by meaning, with a warning, since other
#: readers differ: MNE reads DREAMS' "UV" as volts, giving EEG values around 20 "V".
SI_SPELLING: dict[str, str] = {"uv": "uV", "µv": "µV", "μv": "μV", "mv": "mV", "v": "V", "nv": "nV"}
#: Below this robust amplitude (µV) no physiological signal exists: the values are volts.
VOLT_AMPLITUDE_LIMIT_UV = 1e-3
#: Above this robust amplitude (µV, i.e. 10 mV) no EEG, EOG or EMG exists: the values are µV
#: under a larger unit (µV numbers labelled volts, as a file re-exported from MNE's reading of
#: a "UV" header has them).
MICROVOLT_AMPLITUDE_LIMIT_UV = 1e4
#: Samples used to estimate a channel's robust amplitude (a regular subsample is enough).
_AMPLITUDE_SAMPLES = 200_000
#: Messages of edfio's warnings that mean the file was cut short.
_TRUNCATION_HINTS = ("incomplete data record", "data records, but file contains")


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; check the path and the dataset layout")
    return path


def open_edf(path: str | Path) -> edfio.Edf:
    """Open an EDF/EDF+ file (any extension) lazily; CorruptFileError if it cannot be used."""
    path = require_file(path, "EDF file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            edf = edfio.read_edf(path, header_encoding="latin-1")
        except Exception as exc:  # edfio raises ValueError, IndexError, ... on malformed headers
            raise CorruptFileError(
                f"{path}: not a readable EDF file ({type(exc).__name__}: {exc}); "
                "re-download or re-export it"
            ) from exc
    for warning in caught:
        message = str(warning.message)
        if any(hint in message.lower() for hint in _TRUNCATION_HINTS):
            raise CorruptFileError(
                f"{path}: file is truncated ({message}); re-download or re-export it"
            )
        warnings.warn(f"{path}: {message}", stacklevel=2)
    return edf


def edf_labels(edf: edfio.Edf) -> list[str]:
    return [signal.label for signal in edf.signals]


def edf_start(edf: edfio.Edf) -> dt.datetime | None:
    """Start of the recording from the header, or None if the date is anonymised."""
    try:
        return dt.datetime.combine(edf.startdate, edf.starttime)
    except (edfio.AnonymizedDateError, ValueError):
        return None


def edf_annotations(edf: edfio.Edf) -> list[tuple[float, float, str]]:
    """EDF+ annotations as (onset s, duration s, text); a missing duration counts as 0."""
    return [(a.onset, a.duration or 0.0, a.text) for a in edf.annotations]


def unit_factor(dimension: str, path: Path | str, label: str) -> float:
    """Factor that turns values in ``dimension`` into µV (an empty dimension is taken as µV)."""
    key = "".join(dimension.split()).casefold()
    if not key:
        warnings.warn(
            f"{path}: channel {label!r} has no physical dimension; assuming µV", stacklevel=3
        )
        return 1.0
    if key not in UNIT_TO_MICROVOLT:
        raise DataError(
            f"{path}: channel {label!r} is in {dimension!r}, not a voltage; pick a voltage "
            "channel with channels={'<role>': ['NAME']}"
        )
    spelled = "".join(dimension.split())
    if key in SI_SPELLING and spelled != SI_SPELLING[key]:
        warnings.warn(
            f"{path}: channel {label!r} has the physical dimension {dimension.strip()!r}, not "
            f"the SI spelling {SI_SPELLING[key]!r}; read as {SI_SPELLING[key]} (other readers "
            "may differ: MNE reads DREAMS' 'UV' as volts); its amplitude is checked",
            stacklevel=3,
        )
    return UNIT_TO_MICROVOLT[key]


def robust_amplitude(x: np.ndarray) -> float:
    """Median absolute deviation of a (regular subsample of a) signal."""
    step = max(1, len(x) // _AMPLITUDE_SAMPLES)
    sample = np.asarray(x[::step], dtype=np.float64)
    if sample.size == 0:
        return 0.0
    return float(np.median(np.abs(sample - np.median(sample))))


def looks_like_volts(x_uv: np.ndarray) -> bool:
    """True if a signal said to be in µV is far too small to be one (it is really in V)."""
    amplitude = robust_amplitude(x_uv)
    return 0.0 < amplitude < VOLT_AMPLITUDE_LIMIT_UV


def looks_like_microvolts(x_uv: np.ndarray) -> bool:
    """True if a signal scaled to µV from a larger unit is far too large to be one (its
    numbers were µV already)."""
    return robust_amplitude(x_uv) > MICROVOLT_AMPLITUDE_LIMIT_UV


def microvolts(x: np.ndarray, factor: float, path: Path | str, label: str) -> np.ndarray:
    """Scale to µV, checking the amplitude against the unit, with a warning when it is not that
    unit's: a µV-labelled channel whose values are volts is rescaled (×1e6); a channel
    labelled mV or V whose values are µV-sized (robust amplitude of tens) is kept as µV."""
    raw = np.asarray(x, dtype=np.float64)
    x_uv = raw * factor
    if factor == 1.0 and looks_like_volts(x_uv):
        warnings.warn(
            f"{path}: channel {label!r} is labelled µV but its amplitude "
            f"({robust_amplitude(x_uv):.2g}) is that of volts; converted V → µV (×1e6)",
            stacklevel=3,
        )
        x_uv = x_uv * 1e6
    elif factor > 1.0 and looks_like_microvolts(x_uv):
        warnings.warn(
            f"{path}: channel {label!r} is labelled in volts or millivolts (×{factor:g} to µV) "
            f"but its amplitude ({robust_amplitude(raw):.3g}) is that of µV; read as µV (check the "
            "header's physical dimension)",
            stacklevel=3,
        )
        x_uv = raw
    return x_uv.astype(np.float32)


def read_channels(
    edf: edfio.Edf, names: Iterable[str], path: Path | str
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Signals (µV, float32) and native rates of the named channels."""
    by_label: dict[str, edfio.EdfSignal] = {}
    for signal in edf.signals:
        by_label.setdefault(signal.label, signal)  # a duplicated label means its first channel
    signals: dict[str, np.ndarray] = {}
    sfreq: dict[str, float] = {}
    for name in names:
        if name not in by_label:
            raise DataError(f"{path}: no channel {name!r} (present: {', '.join(by_label)})")
        signal = by_label[name]
        factor = unit_factor(signal.physical_dimension, path, name)
        try:
            data = signal.data
        except Exception as exc:
            raise CorruptFileError(f"{path}: cannot decode channel {name!r} ({exc})") from exc
        signals[name] = microvolts(data, factor, path, name)
        sfreq[name] = float(signal.sampling_frequency)
    return signals, sfreq


def physical_range(x: np.ndarray) -> tuple[float, float]:
    """Whole-µV range covering the signal (short enough for the 8-character header fields)."""
    if x.size == 0:
        return -1.0, 1.0
    lo, hi = math.floor(float(np.min(x))), math.ceil(float(np.max(x)))
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    return float(lo), float(hi)


def whole_records(
    signals: Mapping[str, np.ndarray], sfreq: Mapping[str, float], record_s: float, path: Path
) -> int:
    """Number of complete data records all channels fill; a shorter tail is dropped (warned)."""
    per_record = {ch: sfreq[ch] * record_s for ch in signals}
    for ch, n in per_record.items():
        if not math.isclose(n, round(n)):
            raise DataError(f"{path}: {sfreq[ch]} Hz × {record_s} s records is not whole samples")
    n_records = min(len(signals[ch]) // round(per_record[ch]) for ch in signals)
    longest = max(len(signals[ch]) / sfreq[ch] for ch in signals)
    if longest - n_records * record_s > 1e-9:
        warnings.warn(
            f"{path}: {longest - n_records * record_s:.3f} s at the end do not fill a "
            f"{record_s:g}-s data record and were not written",
            stacklevel=3,
        )
    return n_records


def write_edf(
    path: str | Path,
    signals: Mapping[str, np.ndarray],
    sfreq: Mapping[str, float],
    *,
    annotations: Sequence[tuple[float, float, str]] | None = None,
    start: dt.datetime | None = None,
    record_s: float = 1.0,
    dimension: str = "uV",
    patient: str = "X",
) -> Path:
    """Write µV signals as 16-bit EDF (EDF+C when ``annotations`` is given, even empty).

    With no signals, an annotation-only EDF+ file (like Sleep-EDF's hypnograms) is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = start or dt.datetime(2000, 1, 1, 22, 0, 0)
    edf_signals = []
    if signals:
        n_records = whole_records(signals, sfreq, record_s, path)
        for name, x in signals.items():
            n = n_records * round(sfreq[name] * record_s)
            data = np.asarray(x[:n], dtype=np.float64)
            edf_signals.append(
                edfio.EdfSignal(
                    data,
                    sfreq[name],
                    label=name,
                    physical_dimension=dimension,
                    physical_range=physical_range(data),
                )
            )
    edf_annotations_ = None
    if annotations is not None:
        edf_annotations_ = [edfio.EdfAnnotation(on, dur, text) for on, dur, text in annotations]
    edf = edfio.Edf(
        edf_signals,
        patient=edfio.Patient(code=patient),
        recording=edfio.Recording(startdate=start.date()),
        starttime=start.time(),
        data_record_duration=record_s if edf_signals else None,
        annotations=edf_annotations_,
    )
    edf.write(path)
    return path


def read_roles(
    edf: edfio.Edf,
    path: str | Path,
    dataset: str,
    channels: Mapping[str, str | Sequence[str]] | None = None,
) -> tuple[dict[str, str], dict[str, np.ndarray], dict[str, float]]:
    """Pick the role channels of ``dataset`` in an open EDF and read them (µV, native rates)."""
    roles = pick_roles(edf_labels(edf), dataset, channels, source=str(path))
    signals, sfreq = read_channels(edf, dict.fromkeys(roles.values()), path)
    return roles, signals, sfreq


def hypnogram_shift(signal_edf: edfio.Edf, hypnogram_edf: edfio.Edf) -> float:
    """Seconds from the signal file's start to the hypnogram file's start (0 if unknown)."""
    signal_start, hypnogram_start = edf_start(signal_edf), edf_start(hypnogram_edf)
    if signal_start is None or hypnogram_start is None:
        return 0.0
    return (hypnogram_start - signal_start).total_seconds()
