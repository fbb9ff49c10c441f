"""The heart's electrical field in the other channels, found from the ECG and subtracted.

Electrodes referenced to an ear or mastoid pick up the heart's field: on the real DREAMS PSG
(excerpt 3) each QRS complex reaches both ear-referenced EOGs as a sharp deflection of tens
of µV, in phase on the two eyes (chapter 03 measures it). To the eye-movement detector that
is a blink at every heartbeat, and the stager reads wake in sleep. The field is time-locked
to the R peaks and nothing cerebral or ocular is, so the usual remedy needs no threshold
fitted to a recording: find the R peaks on the ECG, average each channel around its
neighbouring beats (a moving mean, so the template follows slow changes of the field), and
subtract that template at each beat. A blink or a K complex lands at a random phase of the
heartbeat and averages out of the template.

R peaks are the peaks of the QRS-band ECG's magnitude above a share of its typical beat
height, at least the shortest possible beat interval apart (the approach of MNE's
``qrs_detector``, whose half-second search window loses every other beat of a heart faster
than about 110 per minute; checked on simulated ECG at 120 per minute).
"""

from __future__ import annotations

import numpy as np
from scipy import signal as sps

from sleepvlm.data.records import DataError

#: Span (s) around each R peak that the template covers: the QRS complex and the T wave.
BEFORE_R_S = 0.25
AFTER_R_S = 0.45
#: Beats averaged into each beat's template (centred on it).
TEMPLATE_BEATS = 60
#: Heart rates (beats per minute) an adult's ECG can show; outside them the R peaks found are
#: not a heartbeat (a flat or wrongly named channel).
PLAUSIBLE_BPM = (25.0, 200.0)
#: Beat-to-beat intervals within this share of their median count as regular; sinus rhythm
#: varies far less from one beat to the next, while peaks picked from noise come at random.
REGULAR_WITHIN = 0.3
#: Share of intervals that must be regular for the peaks to be taken as heartbeats.
MIN_REGULAR_SHARE = 0.7
#: The QRS band (Hz) the R peaks are found in (MNE's default, 5-35 Hz); its top is lowered to
#: below the Nyquist frequency of a slow recording.
QRS_BAND_HZ = (5.0, 35.0)
#: An R peak rises above this share of the typical beat height (the median of the largest
#: magnitude in each :data:`HEIGHT_WINDOW_S`; MNE's qrs_detector starts from 0.6 of it).
PEAK_SHARE = 0.5
HEIGHT_WINDOW_S = 2.0
#: A QRS complex stands far above the QRS-band signal between beats: the typical beat height
#: is at least this many times the band's median magnitude. Gaussian noise gives about 4 at
#: any rate and amplitude (the largest of 2 s of samples against their median); the DREAMS ECG
#: 44, simulated ECG 18-45, and an ear-referenced EOG, which holds the heart's field, 12.
MIN_PEAK_RATIO = 8.0


def heartbeats(ecg: np.ndarray, sfreq: float, source: str = "ECG") -> np.ndarray:
    """Times (s) of the R peaks of ``ecg`` (µV). A channel whose peaks give no plausible heart
    rate, or come at irregular intervals (not a heartbeat), is a :class:`DataError` naming
    ``source`` (file and channel)."""
    x = np.asarray(ecg, dtype=float)
    if x.size < 10 * sfreq or not np.isfinite(x).all() or np.ptp(x) == 0:
        raise DataError(
            f"{source}: not an ECG one can find heartbeats in (under 10 s, flat, or with "
            "gaps); name the ECG channel, or leave the ECG out"
        )
    low, high = QRS_BAND_HZ
    sos = sps.butter(4, (low, min(high, 0.45 * sfreq)), btype="bandpass", fs=sfreq, output="sos")
    magnitude = np.abs(sps.sosfiltfilt(sos, x))
    window = int(HEIGHT_WINDOW_S * sfreq)
    whole_windows = magnitude[: len(magnitude) // window * window].reshape(-1, window)
    typical = np.median(whole_windows.max(axis=1))
    if typical < MIN_PEAK_RATIO * np.median(magnitude):
        raise DataError(
            f"{source}: no QRS complexes stand out of the signal (its largest deflections are "
            f"{typical / np.median(magnitude):.1f} times its median, noise gives about 4), so it "
            "is not an ECG one can find heartbeats in; name the ECG channel, or leave the ECG out"
        )
    peaks, _ = sps.find_peaks(
        magnitude, height=PEAK_SHARE * typical, distance=max(int(60 / PLAUSIBLE_BPM[1] * sfreq), 1)
    )
    beats = peaks / sfreq
    bpm = 60 * len(beats) / (x.size / sfreq)
    if not PLAUSIBLE_BPM[0] <= bpm <= PLAUSIBLE_BPM[1]:
        raise DataError(
            f"{source}: the R peaks found give {bpm:.0f} beats per minute, not a heart rate "
            f"({PLAUSIBLE_BPM[0]:.0f}-{PLAUSIBLE_BPM[1]:.0f}); is it the ECG? Name the ECG "
            "channel, or leave the ECG out"
        )
    intervals = np.diff(beats)
    regular = np.mean(np.abs(intervals / np.median(intervals) - 1) <= REGULAR_WITHIN)
    if regular < MIN_REGULAR_SHARE:
        raise DataError(
            f"{source}: only {regular:.0%} of the intervals between the R peaks found are within "
            f"{REGULAR_WITHIN:.0%} of their median, so they are not a heartbeat; is it the ECG? "
            "Name the ECG channel, or leave the ECG out (also for a rhythm this irregular)"
        )
    return beats


def _span_offsets(sfreq: float) -> np.ndarray:
    return np.arange(-int(round(BEFORE_R_S * sfreq)), int(round(AFTER_R_S * sfreq)) + 1)


def _whole_spans(peaks: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
    return peaks[(peaks + offsets[0] >= 0) & (peaks + offsets[-1] < length)]


def _moving_templates(segments: np.ndarray, beats: int) -> np.ndarray:
    """Mean of each row's ``beats`` neighbouring rows (fewer at the ends)."""
    sums = np.cumsum(np.vstack([np.zeros(segments.shape[1]), segments]), axis=0)
    rows = np.arange(len(segments))
    low = np.clip(rows - beats // 2, 0, len(segments))
    high = np.clip(rows + beats // 2 + 1, 0, len(segments))
    return (sums[high] - sums[low]) / (high - low)[:, None]


def remove_cardiac_field(
    x: np.ndarray, sfreq: float, beats_s: np.ndarray, template_beats: int = TEMPLATE_BEATS
) -> np.ndarray:
    """``x`` (µV) less the field time-locked to the R peaks at ``beats_s`` (s): at each beat,
    the mean of the signal around its ``template_beats`` neighbouring beats. Where two beats'
    spans overlap (a fast heart), each sample is corrected by the nearer beat only. Samples
    outside every span, and beats too near the ends for a whole span, are left as they are."""
    y = np.asarray(x, dtype=float).copy()
    offsets = _span_offsets(sfreq)
    peaks = _whole_spans(np.round(np.asarray(beats_s) * sfreq).astype(np.int64), offsets, len(y))
    if len(peaks) == 0:
        return y
    segments = y[peaks[:, None] + offsets]
    templates = _moving_templates(segments, template_beats)
    # a sample belongs to the beat it is nearer to: half-way to the neighbours on either side
    gaps = np.diff(peaks)
    reach_back = np.r_[np.inf, gaps / 2][:, None]
    reach_on = np.r_[gaps / 2, np.inf][:, None]
    own = (-offsets[None, :] <= reach_back) & (offsets[None, :] < reach_on)
    rows, cols = np.nonzero(own)
    y[peaks[rows] + offsets[cols]] -= templates[rows, cols]
    return y


def beat_locked_average(x: np.ndarray, sfreq: float, beats_s: np.ndarray) -> np.ndarray:
    """``x`` (µV) averaged around the R peaks at ``beats_s`` (s), over the template's span:
    the heart's field in this channel (flat where nothing is time-locked to the heartbeat, up
    to the noise the averaging leaves)."""
    offsets = _span_offsets(sfreq)
    peaks = np.round(np.asarray(beats_s) * sfreq).astype(np.int64)
    peaks = _whole_spans(peaks, offsets, len(x))
    return np.asarray(x, dtype=float)[peaks[:, None] + offsets].mean(axis=0)


def beat_locked_ptp(x: np.ndarray, sfreq: float, beats_s: np.ndarray) -> float:
    """Peak-to-peak size (µV) of :func:`beat_locked_average`: how strongly the heart's field
    reaches this channel."""
    return float(np.ptp(beat_locked_average(x, sfreq, beats_s)))
