"""Benchmark preprocessing: the one place that fixes how raw PSG becomes 30-s image-ready epochs.

Every channel goes through the same three steps, in this order:

1. **Notch** at the recording's mains frequency (``line_freq``), at the native rate, so that
   e.g. 60 Hz in a 125 Hz SHHS EEG is removed before resampling could alias it into the band.
   Skipped when the mains frequency is at or above the channel's Nyquist (SHHS EOG at 50 Hz).
2. **Resampling** to :data:`TARGET_SFREQ` with :func:`scipy.signal.resample_poly` (rational
   up/down; its Kaiser-windowed FIR is the anti-aliasing filter).
3. **Zero-phase band-pass** per role (:data:`BANDS`): a Butterworth IIR run forwards and
   backwards with :func:`scipy.signal.sosfiltfilt`.

Units stay µV, nothing is normalised across records, and the output is float32.

**Recordings that hold less than the target.** A channel sampled below :data:`TARGET_SFREQ`
(older archives and home devices at 50 Hz, SHHS's EOG) is upsampled: the resampler's FIR
removes the spectral images, so the 100-Hz signal holds exactly what the recording held, 0 Hz
to its Nyquist frequency, and nothing is invented above it. Where a role's band reaches above
that Nyquist frequency (the EEG's 35 Hz below 70 Hz, the EMG's 10-45 Hz below 90 Hz) the band
is read as far as the recording goes (a 50-Hz EMG gives 10-25 Hz), and a
:class:`LowRateWarning` names the channel; a band that starts above it comes out empty (a
1-Hz EMG RMS envelope). The detectors decide from the native rate what they can still read
(:func:`sleepvlm.rules.evidence.detect_all`). Upsampling alone (SHHS's 50-Hz EOG, whose
0.1-10 Hz band fits) is not warned about: it changes nothing in the band.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pandas as pd
from scipy import signal as sps

from sleepvlm.data.records import (
    EPOCH_S,
    MOVEMENT,
    ROLES,
    STAGES,
    UNKNOWN,
    DataError,
    Recording,
)

#: Pass bands (Hz) of each role, as in the AASM recommended filter settings.
BANDS: dict[str, tuple[float, float]] = {
    "eeg": (0.3, 35.0),
    "eog": (0.1, 10.0),
    "emg": (10.0, 45.0),
}
#: Sampling rate (Hz) of every preprocessed channel.
TARGET_SFREQ = 100
#: Samples in one 30-s epoch at :data:`TARGET_SFREQ`.
EPOCH_SAMPLES = int(EPOCH_S * TARGET_SFREQ)

#: Butterworth order of each band-pass edge (``scipy.signal.butter(N, ...)``).
#:
#: Why 4: run forwards and backwards, the applied response is ``|H|^2`` (-6 dB, not -3 dB, at
#: each cut-off; roll-off 2 x 6N dB/octave). With N = 4 the EEG band loses 0.14 dB at 0.5 Hz
#: (slow waves intact) and is 32 dB down at 40 Hz; EOG is 32 dB down at 15 Hz and EMG 53 dB
#: down at 5 Hz. N = 2 leaves 40 Hz in the EEG only 17 dB down and already takes 1 dB
#: (11 % of amplitude) off 0.5 Hz slow waves. N >= 6 sharpens edges that a 30-s image cannot
#: show, at the price of more resonant poles (Q of the sharpest pole pair 1.31 at N = 4,
#: 1.93 at N = 6), i.e. more ringing at the cut-off after K-complexes and movement artifacts.
#: Compare with ``filter_response(role, order=...)``.
FILTER_ORDER = 4
#: Quality factor of the mains notch: -3 dB width = line_freq / Q (1.7 Hz at 50 Hz).
NOTCH_Q = 30.0
#: Peak-to-peak amplitude (µV) under which a whole epoch counts as a flat (disconnected) channel.
FLAT_PTP_UV = 0.5
#: A run of exactly repeated samples this long (s) marks a dropout or a clipped/held signal.
FLAT_RUN_S = 5.0
#: Why an epoch can be left out; every :class:`Epochs` counts each reason (zeros included).
EXCLUSION_REASONS: tuple[str, ...] = ("outside_signal", "movement", "unknown", "nan", "flat")
#: Columns of an epoch manifest, one row per kept epoch.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "dataset",
    "subject",
    "night",
    "epoch",
    "onset",
    "stage",
    "source_hash",
    "has_eog",
    "has_emg",
    "simulated",
)


class QualityWarning(UserWarning):
    """Epochs of a record were dropped because a channel was missing (NaN) or flat."""


class LowRateWarning(UserWarning):
    """A channel is sampled too slowly to hold the whole band of its role."""


def bandpass_sos(role: str, sfreq: float = TARGET_SFREQ, order: int = FILTER_ORDER) -> np.ndarray:
    """Second-order sections of the Butterworth band-pass of ``role`` (one pass)."""
    if role not in BANDS:
        raise DataError(f"unknown channel role {role!r}; expected one of {', '.join(BANDS)}")
    return sps.butter(order, BANDS[role], btype="bandpass", fs=sfreq, output="sos")


def notch_sos(line_freq: float, sfreq: float, q: float = NOTCH_Q) -> np.ndarray:
    """Second-order section of the IIR notch at ``line_freq`` (one pass)."""
    b, a = sps.iirnotch(line_freq, q, fs=sfreq)
    return sps.tf2sos(b, a)


def notch_applies(line_freq: float | None, sfreq: float) -> bool:
    """Whether a channel sampled at ``sfreq`` gets the mains notch: only when the mains
    frequency lies below its Nyquist frequency (a channel that cannot carry it is left alone)."""
    return bool(line_freq) and line_freq < sfreq / 2


def _response_frame(sos: np.ndarray, sfreq: float, n: int) -> pd.DataFrame:
    freqs, h = sps.sosfreqz(sos, worN=n, fs=sfreq)
    # Floor avoids -inf dB at the exact zeros (DC of a band-pass, the notch center).
    magnitude = np.maximum(np.abs(h), 1e-12)
    phase = np.unwrap(np.angle(h))
    zero_phase = h * np.conj(h)  # forward-backward filtering: |H|^2, real and non-negative
    return pd.DataFrame(
        {
            "frequency": freqs,
            "gain_db": 20 * np.log10(np.maximum(zero_phase.real, 1e-24)),
            "phase": np.angle(zero_phase),
            "gain_db_single_pass": 20 * np.log10(magnitude),
            "phase_single_pass": phase,
            "group_delay_single_pass": -np.gradient(phase, 2 * np.pi * freqs),
        }
    )


def filter_response(
    role: str, sfreq: float = TARGET_SFREQ, n: int = 4096, order: int = FILTER_ORDER
) -> pd.DataFrame:
    """Frequency response of the band-pass of ``role`` at ``n`` frequencies from 0 to Nyquist.

    ``gain_db`` and ``phase`` are those of the zero-phase filter actually applied (|H|^2, phase
    identically 0, no group delay); the ``*_single_pass`` columns show the one-way Butterworth
    (gain, unwrapped phase in rad, group delay in s) that forward-backward filtering cancels.
    """
    return _response_frame(bandpass_sos(role, sfreq, order), sfreq, n)


def notch_response(
    line_freq: float = 50.0, sfreq: float = 256.0, n: int = 4096, q: float = NOTCH_Q
) -> pd.DataFrame:
    """Frequency response of the mains notch, same columns as :func:`filter_response`."""
    return _response_frame(notch_sos(line_freq, sfreq, q), sfreq, n)


def resampling_factors(sfreq: float) -> tuple[int, int]:
    """Smallest integers ``(up, down)`` with ``sfreq * up / down == TARGET_SFREQ``."""
    if not np.isfinite(sfreq) or sfreq <= 0:
        raise DataError(f"sampling rate {sfreq!r} Hz is not a positive number; check the header")
    ratio = Fraction(TARGET_SFREQ) / Fraction(sfreq).limit_denominator(1000)
    if ratio.numerator > 1000 or ratio.denominator > 1000:
        raise DataError(
            f"sampling rate {sfreq} Hz has no small rational ratio to {TARGET_SFREQ} Hz "
            f"({ratio}); round the rate in the file header"
        )
    return ratio.numerator, ratio.denominator


def bridge_nans(x: np.ndarray) -> np.ndarray:
    """Copy of ``x`` (float64) with NaN runs replaced by straight lines between their neighbours.

    IIR filters carry a NaN through every later sample, so one dropout would blank the rest of
    the night; a line is continuous at both ends and adds no step for the filters to ring on.
    """
    y = np.asarray(x, dtype=np.float64).copy()
    bad = np.isnan(y)
    if not bad.any():
        return y
    if bad.all():
        return np.zeros_like(y)
    idx = np.arange(len(y))
    y[bad] = np.interp(idx[bad], idx[~bad], y[~bad])
    return y


def warn_if_band_not_held(role: str, sfreq: float, source: str) -> None:
    """Warn (:class:`LowRateWarning`) when the band of ``role`` reaches above the Nyquist
    frequency of a channel sampled at ``sfreq``: it is read only as far as the channel goes."""
    low, high = BANDS[role]
    nyquist = sfreq / 2
    if high <= nyquist:
        return
    held = (
        f"read up to {nyquist:g} Hz"
        if low < nyquist
        else "empty (it starts above that; a derived signal, not the raw one?)"
    )
    warnings.warn(
        f"{source or role.upper()}: sampled at {sfreq:g} Hz, it holds nothing above "
        f"{nyquist:g} Hz; its {role.upper()} band {low:g}-{high:g} Hz is {held}",
        LowRateWarning,
        stacklevel=3,
    )


def preprocess_channel(
    x: np.ndarray, sfreq: float, role: str, line_freq: float | None = None, source: str = ""
) -> np.ndarray:
    """Notch, resample to :data:`TARGET_SFREQ` and band-pass one channel; returns float32 µV.

    NaN runs are bridged (:func:`bridge_nans`) so the output is finite everywhere;
    :func:`epoch_recording` finds the epochs they touched from the raw signal. A channel that
    holds less than the target rate or its band is handled as the module docstring says
    (:func:`warn_if_band_not_held`, naming ``source``: file and channel).
    """
    if role not in BANDS:
        raise DataError(f"unknown channel role {role!r}; expected one of {', '.join(BANDS)}")
    y = bridge_nans(x)
    if y.size < 2:
        raise DataError(f"{role.upper()} channel has {y.size} samples; nothing to filter")
    if notch_applies(line_freq, sfreq):
        y = sps.sosfiltfilt(notch_sos(line_freq, sfreq), y)
    up, down = resampling_factors(sfreq)
    warn_if_band_not_held(role, sfreq, source)
    if (up, down) != (1, 1):
        # 'line' padding: the DC offset of an electrode would otherwise step to zero at the edges.
        y = sps.resample_poly(y, up, down, padtype="line")
    y = sps.sosfiltfilt(bandpass_sos(role), y)
    return y.astype(np.float32)


@dataclass
class Epochs:
    """Preprocessed 30-s epochs of one recording.

    ``data`` is (n_epochs, 3, :data:`EPOCH_SAMPLES`) float32 µV in :data:`ROLES` order. The
    layout is fixed: a role the recording lacks is a channel of zeros and ``has_eog`` /
    ``has_emg`` are False in the manifest (zeros, not NaN, so that images and models need no
    special case and stacked arrays stay finite; the flag says the channel is not real).
    ``exclusions`` counts the left-out epochs by reason (:data:`EXCLUSION_REASONS`).
    """

    data: np.ndarray
    manifest: pd.DataFrame
    exclusions: dict[str, int] = field(default_factory=dict)
    dataset: str = ""
    subject: str = ""
    night: str = ""
    source_hash: str = ""

    def __len__(self) -> int:
        return len(self.data)

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.subject}/{self.night}"

    @property
    def key(self) -> str:
        """Identity of the source recording: its file hash, else its label."""
        return self.source_hash or self.label


def _epoch_bounds(n_epochs: int, offset: float, sfreq: float) -> tuple[np.ndarray, np.ndarray]:
    starts = np.round((offset + EPOCH_S * np.arange(n_epochs)) * sfreq).astype(np.int64)
    return starts, starts + int(round(EPOCH_S * sfreq))


def _windowed_counts(mask: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    cum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    return cum[np.clip(stops, 0, len(mask))] - cum[np.clip(starts, 0, len(mask))]


def constant_run_mask(x: np.ndarray, min_samples: int) -> np.ndarray:
    """True on samples that belong to a run of at least ``min_samples`` identical values."""
    same = np.concatenate([[False], x[1:] == x[:-1], [False]])
    edges = np.flatnonzero(np.diff(same.astype(np.int8)))
    mask = np.zeros(len(x), dtype=bool)
    # Each rise/fall pair brackets one run: samples first..last inclusive hold the same value.
    for first, last in zip(edges[::2], edges[1::2], strict=True):
        if last - first + 1 >= min_samples:
            mask[first : last + 1] = True
    return mask


def _quality_flags(
    x: np.ndarray, sfreq: float, starts: np.ndarray, stops: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per epoch: any NaN, and flat (tiny peak-to-peak, or a long run of a held value)."""
    has_nan = _windowed_counts(np.isnan(x), starts, stops) > 0
    held = _windowed_counts(constant_run_mask(x, int(round(FLAT_RUN_S * sfreq))), starts, stops)
    flat = held > 0
    inside = (starts >= 0) & (stops <= len(x))
    for k in np.flatnonzero(inside & ~has_nan & ~flat):
        flat[k] = np.ptp(x[starts[k] : stops[k]]) < FLAT_PTP_UV
    return has_nan, flat & ~has_nan


def _label_reasons(rec: Recording) -> np.ndarray:
    labels = rec.stages.astype(str)
    unexpected = sorted(set(labels) - set(STAGES) - {MOVEMENT, UNKNOWN})
    if unexpected:
        raise DataError(
            f"{rec.label}: hypnogram labels {unexpected} are not AASM stages nor "
            f"{MOVEMENT}/{UNKNOWN}; map them in the loader"
        )
    reasons = np.full(len(labels), "", dtype=object)
    reasons[labels == MOVEMENT] = "movement"
    reasons[labels == UNKNOWN] = "unknown"
    return reasons


def epoch_recording(rec: Recording, roles: tuple[str, ...] = ROLES) -> Epochs:
    """Preprocess the ``roles`` present in ``rec`` and cut its scored 30-s epochs.

    Epoch ``k`` starts ``rec.hypnogram_offset + 30 k`` s after the signal start and carries
    ``rec.stages[k]``. Left out (and counted in ``exclusions``): epochs not fully inside every
    channel, MOVE/UNKNOWN labels, and epochs with NaN or a flat signal on any used channel
    (peak-to-peak < :data:`FLAT_PTP_UV` µV, or a run >= :data:`FLAT_RUN_S` s of one value).
    The EEG is required; a missing (or not asked for) EOG or EMG gives a zero channel flagged
    in the manifest.
    """
    if "eeg" not in roles or not set(roles) <= set(ROLES):
        raise DataError(
            f"{rec.label}: roles {roles} must include 'eeg' and come from {', '.join(ROLES)}"
        )
    used = {r: rec.role(r) for r in ROLES if r in roles and (r == "eeg" or r in rec.roles)}
    n = len(rec.stages)
    reasons = _label_reasons(rec)
    inside = np.ones(n, dtype=bool)
    has_nan = np.zeros(n, dtype=bool)
    flat = np.zeros(n, dtype=bool)
    for role, channel in used.items():
        if channel not in rec.signals:
            raise DataError(
                f"{rec.label}: {role.upper()} role points to channel {channel!r}, which is not "
                f"in the recording ({', '.join(rec.channels)}); fix the loader's channel pick"
            )
        x, sfreq = rec.signals[channel], rec.sfreq[channel]
        starts, stops = _epoch_bounds(n, rec.hypnogram_offset, sfreq)
        inside &= (starts >= 0) & (stops <= len(x))
        channel_nan, channel_flat = _quality_flags(x, sfreq, starts, stops)
        has_nan |= channel_nan
        flat |= channel_flat
    out_starts, out_stops = _epoch_bounds(n, rec.hypnogram_offset, TARGET_SFREQ)
    filtered = {
        role: preprocess_channel(
            rec.signals[ch], rec.sfreq[ch], role, rec.line_freq, f"{rec.label}: {ch!r}"
        )
        for role, ch in used.items()
    }
    for y in filtered.values():
        inside &= (out_starts >= 0) & (out_stops <= len(y))

    reasons[~inside] = "outside_signal"
    pending = reasons == ""
    reasons[pending & has_nan] = "nan"
    reasons[(reasons == "") & flat] = "flat"
    keep = np.flatnonzero(reasons == "")
    exclusions = {r: int(np.sum(reasons == r)) for r in EXCLUSION_REASONS}
    if exclusions["nan"] or exclusions["flat"]:
        warnings.warn(
            f"{rec.label}: dropped {exclusions['nan']} epochs with missing samples (NaN) and "
            f"{exclusions['flat']} flat epochs",
            QualityWarning,
            stacklevel=2,
        )

    data = np.zeros((len(keep), len(ROLES), EPOCH_SAMPLES), dtype=np.float32)
    windows = out_starts[keep, None] + np.arange(EPOCH_SAMPLES)
    for role, y in filtered.items():
        data[:, ROLES.index(role)] = y[windows]
    manifest = pd.DataFrame(
        {
            "dataset": rec.dataset,
            "subject": rec.subject,
            "night": rec.night,
            "epoch": keep.astype(np.int64),
            "onset": rec.hypnogram_offset + EPOCH_S * keep,
            "stage": rec.stages[keep].astype(str),
            "source_hash": rec.source_hash,
            "has_eog": "eog" in used,
            "has_emg": "emg" in used,
            "simulated": bool(rec.simulated),
        },
        columns=list(MANIFEST_COLUMNS),
    )
    return Epochs(
        data=data,
        manifest=manifest,
        exclusions=exclusions,
        dataset=rec.dataset,
        subject=rec.subject,
        night=rec.night,
        source_hash=rec.source_hash,
    )
