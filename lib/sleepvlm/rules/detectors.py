"""Vectorized waveform detectors for the AASM rules: spindles, K complexes, slow waves, vertex
sharp waves, alpha, low-amplitude mixed-frequency EEG, EEG that is not slowed, eye movements,
chin tone, sawtooth waves, arousals and body movements.

Every detector takes one channel in µV at its own sampling rate and returns an events table
(:data:`~sleepvlm.data.records.EVENT_COLUMNS`, onsets in s from the first sample) or per-second
values; filters are designed for the given rate, so the same detector runs on 50, 100, 128,
200 or 256 Hz signals. A detector needs the rate that holds the highest frequency of its
criterion (its ``min_sfreq``, :func:`rate_shortfall`); a filter edge or band above what the
recording holds (sfreq / :data:`~sleepvlm.rules.table.NYQUIST_MARGIN`) is read up to there,
since a recording holds nothing above its anti-aliasing filter. Thresholds and settings come
in as ``rules`` (a :class:`~sleepvlm.rules.table.RuleSet`, by default the rule table's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import fft as sp_fft
from scipy import ndimage
from scipy import signal as sps

from sleepvlm.data.records import EVENT_COLUMNS, DataError, empty_events
from sleepvlm.rules.table import BANDS, DEFAULT_RULES, NYQUIST_MARGIN, RuleSet

# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def rate_shortfall(
    detector: str, channel: str, sfreq: float, rules: RuleSet = DEFAULT_RULES
) -> str | None:
    """Why ``detector`` cannot read ``channel`` at ``sfreq`` Hz (None when it can): the rate is
    below its ``min_sfreq``, the rate that holds the highest frequency its criterion needs."""
    needed = rules.setting(detector, "min_sfreq")
    if np.isfinite(sfreq) and sfreq >= needed:
        return None
    return (
        f"{detector} detector: channel {channel!r} is sampled at {sfreq:g} Hz, below the "
        f"{needed:g} Hz it needs ({NYQUIST_MARGIN:g} x the highest frequency of its criterion)"
    )


def check_rate(detector: str, channel: str, sfreq: float, rules: RuleSet = DEFAULT_RULES) -> None:
    """Raise :class:`DataError` when ``sfreq`` is below what ``detector`` needs."""
    shortfall = rate_shortfall(detector, channel, sfreq, rules=rules)
    if shortfall:
        raise DataError(
            f"{shortfall}; use a recording sampled at >= "
            f"{rules.setting(detector, 'min_sfreq'):g} Hz or leave this detector out"
        )


def held_limit(sfreq: float) -> float:
    """Highest frequency (Hz) a recording sampled at ``sfreq`` holds."""
    return sfreq / NYQUIST_MARGIN


def _as_signal(x: np.ndarray, channel: str, min_s: float, sfreq: float) -> np.ndarray:
    y = np.asarray(x, dtype=np.float64)
    if y.ndim != 1:
        raise DataError(f"channel {channel!r}: expected a 1-D signal, got shape {y.shape}")
    if len(y) < min_s * sfreq:
        raise DataError(
            f"channel {channel!r}: {len(y) / sfreq:.2f} s of signal, detectors need at least "
            f"{min_s:g} s"
        )
    if not np.isfinite(y).all():
        raise DataError(f"channel {channel!r} holds NaN or infinite samples; bridge them first")
    return y


def bandpass(
    x: np.ndarray, sfreq: float, band: tuple[float | None, float | None], order: int
) -> np.ndarray:
    """Zero-phase Butterworth filter; ``None`` for an open edge (low- or high-pass). An upper
    edge above what the recording holds (:func:`held_limit`) is moved down to it: there is
    nothing above it to pass, and a Butterworth edge cannot lie at or beyond Nyquist."""
    low, high = band
    if high is not None:
        high = min(high, held_limit(sfreq))
    if low is None:
        sos = sps.butter(order, high, "lowpass", fs=sfreq, output="sos")
    elif high is None:
        sos = sps.butter(order, low, "highpass", fs=sfreq, output="sos")
    else:
        sos = sps.butter(order, [low, high], "bandpass", fs=sfreq, output="sos")
    return sps.sosfiltfilt(sos, x)


def envelope(x: np.ndarray) -> np.ndarray:
    """Hilbert amplitude envelope (FFT length padded to a fast size)."""
    n = len(x)
    return np.abs(sps.hilbert(x, N=sp_fft.next_fast_len(n))[:n])


def moving_mean(x: np.ndarray, sfreq: float, seconds: float) -> np.ndarray:
    return ndimage.uniform_filter1d(x, size=max(int(round(seconds * sfreq)), 1), mode="nearest")


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop (exclusive) indices of the runs of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def close_gaps(mask: np.ndarray, gap: int) -> np.ndarray:
    """Join runs of True separated by fewer than ``gap`` False samples."""
    if gap < 1 or not mask.any():
        return mask
    starts, stops = runs(mask)
    out = mask.copy()
    short = (starts[1:] - stops[:-1]) < gap
    fill = np.zeros(len(mask) + 1, dtype=np.int64)
    np.add.at(fill, stops[:-1][short], 1)
    np.add.at(fill, starts[1:][short], -1)
    out |= np.cumsum(fill)[:-1] > 0
    return out


def segment_reduce(
    x: np.ndarray, starts: np.ndarray, stops: np.ndarray, ufunc: np.ufunc
) -> np.ndarray:
    """``ufunc`` (np.maximum, np.minimum...) over each [start, stop) segment of ``x``; an empty
    segment gives the sample at its start."""
    if len(starts) == 0:
        return np.zeros(0)
    padded = np.append(x, x[-1])  # lets a segment end at len(x)
    bounds = np.stack([starts, stops], axis=1).ravel()
    return ufunc.reduceat(padded, bounds)[::2]


def segment_ptp(x: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Peak-to-peak of ``x`` in each [start, stop) segment."""
    return segment_reduce(x, starts, stops, np.maximum) - segment_reduce(
        x, starts, stops, np.minimum
    )


def events_frame(kind: str, channel: str, onset, duration, amplitude) -> pd.DataFrame:
    if len(onset) == 0:
        return empty_events()
    return pd.DataFrame(
        {
            "kind": kind,
            "channel": channel,
            "onset": np.asarray(onset, float),
            "duration": np.asarray(duration, float),
            "amplitude": np.asarray(amplitude, float),
        },
        columns=list(EVENT_COLUMNS),
    )


def local_median(x: np.ndarray, sfreq: float, seconds: float) -> np.ndarray:
    """Moving median of ``x`` over ``seconds``, on a 10-Hz decimated copy (robust to the short
    waveform being judged), brought back to the full rate."""
    step = max(int(sfreq // 10), 1)
    coarse = x[::step]
    med = ndimage.median_filter(coarse, size=max(int(seconds * sfreq / step), 1), mode="nearest")
    return np.repeat(med, step)[: len(x)]


def robust_background_ptp(y: np.ndarray, sfreq: float, seconds: float) -> np.ndarray:
    """Local peak-to-peak scale of ``y``: that of a sine with the MAD-estimated SD of the
    surrounding ``seconds``."""
    return 2 * np.sqrt(2) * 1.4826 * local_median(np.abs(y), sfreq, seconds)


# --------------------------------------------------------------------------------------------
# Spectra: per-second band powers, alpha, low-amplitude mixed frequency, arousals, movements
# --------------------------------------------------------------------------------------------


def band_powers(
    x: np.ndarray, sfreq: float, channel: str = "EEG", rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """Power (µV²) per band of :data:`~sleepvlm.rules.table.BANDS` in each second.

    Row ``k`` describes second [k, k+1), estimated from a Hann-windowed periodogram of the
    ``window_s`` centered on it. Also returns ``total`` (0.5-30 Hz), ``rms`` (its square root),
    ``fast`` (2-30 Hz, the reference of relative alpha) and ``max_abs`` (largest deviation from
    the second's median, in µV). At a rate below :func:`~sleepvlm.rules.table.rate_for` 30 Hz
    (66 Hz) beta, ``total`` and ``fast`` end where the recording does (sfreq / 2.2).
    """
    check_rate("band_power", channel, sfreq, rules=rules)
    y = _as_signal(x, channel, 1.0, sfreq)
    window = int(round(rules.setting("band_power", "window_s") * sfreq))
    step_s = rules.setting("band_power", "step_s")
    n_sec = int(len(y) / sfreq / step_s)
    centers = np.round((np.arange(n_sec) + 0.5) * step_s * sfreq).astype(np.int64)
    starts = np.clip(centers - window // 2, 0, len(y) - window)
    segs = y[starts[:, None] + np.arange(window)]
    segs = segs - segs.mean(axis=1, keepdims=True)
    taper = np.hanning(window)
    spec = np.abs(np.fft.rfft(segs * taper, axis=1)) ** 2 * (2 / (sfreq * np.sum(taper**2)))
    freqs = np.fft.rfftfreq(window, 1 / sfreq)
    df = freqs[1] - freqs[0]

    top = held_limit(sfreq)

    def power(lo: float, hi: float) -> np.ndarray:
        # a band reaching above what the recording holds is summed up to there
        return spec[:, (freqs >= lo) & (freqs < min(hi, top))].sum(axis=1) * df

    out = {name: power(*band) for name, band in BANDS.items()}
    out["total"] = power(0.5, 30.0)
    out["fast"] = power(2.0, 30.0)
    out["rms"] = np.sqrt(out["total"])
    own = y[: n_sec * int(round(step_s * sfreq))]
    per_sec = own.reshape(n_sec, -1) if n_sec else own.reshape(0, 1)
    out["max_abs"] = np.abs(per_sec - np.median(per_sec, axis=1, keepdims=True)).max(axis=1)
    frame = pd.DataFrame(out)
    frame.insert(0, "time", np.arange(n_sec) * step_s)
    return frame


def _second_runs(
    mask: np.ndarray, min_run: int, step_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    starts, stops = runs(mask)
    keep = (stops - starts) >= min_run
    return starts[keep], stops[keep], (starts[keep] * step_s)


def alpha_seconds(powers: pd.DataFrame, rules: RuleSet = DEFAULT_RULES) -> np.ndarray:
    """Seconds dominated by alpha: alpha holds ``min_relative_power`` of 2-30 Hz and beats
    theta."""
    share = powers["alpha"] / np.maximum(powers["fast"], 1e-12)
    dominant = (share >= rules.setting("alpha", "min_relative_power")) & (
        powers["alpha"] > powers["theta"]
    )
    return dominant.to_numpy()


def detect_alpha(
    x: np.ndarray, sfreq: float, channel: str = "EEG", rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """Alpha-rhythm stretches: runs of alpha-dominated seconds of at least ``min_run_s``."""
    check_rate("alpha", channel, sfreq, rules=rules)
    powers = band_powers(x, sfreq, channel, rules=rules)
    step_s = rules.setting("band_power", "step_s")
    min_run = int(np.ceil(rules.setting("alpha", "min_run_s") / step_s))
    starts, stops, onset = _second_runs(alpha_seconds(powers, rules=rules), min_run, step_s)
    alpha = powers["alpha"].to_numpy()
    mean_power = np.array([alpha[a:b].mean() for a, b in zip(starts, stops, strict=True)])
    # p2p of a sine carrying the run's mean alpha power
    amplitude = 2 * np.sqrt(2 * mean_power) if len(mean_power) else mean_power
    return events_frame("alpha", channel, onset, (stops - starts) * step_s, amplitude)


def lamf_seconds(powers: pd.DataFrame, rules: RuleSet = DEFAULT_RULES) -> np.ndarray:
    """Seconds of low-amplitude mixed-frequency EEG (theta the strongest of theta, alpha, sigma
    and beta, low RMS, delta not dominant)."""
    faster = powers[["alpha", "sigma", "beta"]].max(axis=1)
    delta_share = powers["delta"] / np.maximum(powers["total"], 1e-12)
    return (
        (powers["rms"] <= rules.setting("lamf", "max_rms_uv"))
        & (powers["theta"] >= faster)
        & (delta_share <= rules.setting("lamf", "max_delta_share"))
    ).to_numpy()


def fast_seconds(powers: pd.DataFrame) -> np.ndarray:
    """Seconds whose EEG is not slowed: alpha and beta together hold at least theta's power
    (eyes-open wake; the slowing of N1 moves the power into theta)."""
    return (powers["alpha"] + powers["beta"] >= powers["theta"]).to_numpy()


def arousal_seconds(powers: pd.DataFrame, rules: RuleSet = DEFAULT_RULES) -> np.ndarray:
    """Seconds whose fast share (theta, alpha, beta) rose ``min_rise``-fold over the median of
    the preceding ``baseline_s``."""
    fast = (powers["theta"] + powers["alpha"] + powers["beta"]) / np.maximum(powers["total"], 1e-12)
    fast = fast.to_numpy()
    base_n = int(
        round(rules.setting("arousal", "baseline_s") / rules.setting("band_power", "step_s"))
    )
    if len(fast) <= base_n:
        return np.zeros(len(fast), dtype=bool)
    baseline = np.median(np.lib.stride_tricks.sliding_window_view(fast, base_n)[:-1], axis=1)
    rise = np.zeros(len(fast), dtype=bool)
    rise[base_n:] = fast[base_n:] >= rules.setting("arousal", "min_rise") * baseline
    return rise


def detect_arousals(
    x: np.ndarray, sfreq: float, channel: str = "EEG", rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """EEG arousals: rises of the fast share lasting at least the arousal rule's 3 s.

    Only the EEG part of the rule is checked (the 10 s of prior sleep and the chin-EMG rise in
    R need the hypnogram and EMG; the stager applies them)."""
    check_rate("arousal", channel, sfreq, rules=rules)
    powers = band_powers(x, sfreq, channel, rules=rules)
    step_s = rules.setting("band_power", "step_s")
    min_run = int(np.ceil(rules.threshold("arousal", "min_duration_s") / step_s))
    starts, stops, onset = _second_runs(arousal_seconds(powers, rules=rules), min_run, step_s)
    rms = powers["rms"].to_numpy()
    amplitude = np.array(
        [2 * np.sqrt(2) * rms[a:b].mean() for a, b in zip(starts, stops, strict=True)]
    )
    return events_frame("arousal", channel, onset, (stops - starts) * step_s, amplitude)


def movement_seconds(powers: pd.DataFrame, rules: RuleSet = DEFAULT_RULES) -> np.ndarray:
    """Seconds hidden by movement or muscle artifact (huge excursions or strong beta)."""
    return (
        (powers["max_abs"] >= rules.setting("movement", "max_abs_uv"))
        | (np.sqrt(powers["beta"]) >= rules.setting("movement", "min_beta_rms_uv"))
    ).to_numpy()


def detect_movements(
    x: np.ndarray, sfreq: float, channel: str = "EEG", rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """Movement / muscle artifact stretches on one channel (kind ``artifact``)."""
    check_rate("movement", channel, sfreq, rules=rules)
    powers = band_powers(x, sfreq, channel, rules=rules)
    step_s = rules.setting("band_power", "step_s")
    starts, stops, onset = _second_runs(movement_seconds(powers, rules=rules), 1, step_s)
    peak = powers["max_abs"].to_numpy()
    amplitude = np.array([2 * peak[a:b].max() for a, b in zip(starts, stops, strict=True)])
    return events_frame("artifact", channel, onset, (stops - starts) * step_s, amplitude)


# --------------------------------------------------------------------------------------------
# Transients on the EEG
# --------------------------------------------------------------------------------------------


def detect_spindles(
    x: np.ndarray, sfreq: float, channel: str = "EEG", rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """Sleep spindles: stretches where the spindle-band envelope exceeds ``lower_factor`` x the
    envelope's moving median (over ``reference_s``) and somewhere ``upper_factor`` x it while
    the band holds at least ``min_relative_power`` of the ``broad_band_hz`` power. A spindle's
    extent is its body, where the envelope reaches ``peak_fraction`` of the spindle's own peak;
    it must last within the rule's duration and reach ``min_ptp_uv`` p2p (spindle band).

    A recording sampled too slowly to hold the whole broad band (below 2.2 x its upper edge:
    older archives at 50 Hz) holds nothing above its anti-aliasing filter anyway, so the broad
    band ends where the recording does (:func:`bandpass`); the spindle band itself must fit
    (``min_sfreq``)."""
    check_rate("spindle", channel, sfreq, rules=rules)
    y = _as_signal(x, channel, 1.0, sfreq)
    order = rules.setting("spindle", "filter_order")
    sigma = bandpass(y, sfreq, rules.threshold("N2.spindle", "band_hz"), order)
    broad = bandpass(y, sfreq, rules.setting("spindle", "broad_band_hz"), order)
    env = moving_mean(envelope(sigma), sfreq, rules.setting("spindle", "smooth_s"))
    win = rules.setting("spindle", "relative_window_s")
    rel = moving_mean(sigma**2, sfreq, win) / np.maximum(moving_mean(broad**2, sfreq, win), 1e-12)
    ref = local_median(env, sfreq, rules.setting("spindle", "reference_s"))
    core = (env >= rules.setting("spindle", "upper_factor") * ref) & (
        rel >= rules.setting("spindle", "min_relative_power")
    )
    extent = close_gaps(
        env >= rules.setting("spindle", "lower_factor") * ref,
        int(round(rules.setting("spindle", "merge_gap_s") * sfreq)),
    )
    starts, stops = runs(extent)
    core_cum = np.concatenate([[0], np.cumsum(core)])
    with_core = (core_cum[stops] - core_cum[starts]) > 0
    starts, stops = _above_fraction_of_peak(
        env, starts[with_core], stops[with_core], rules.setting("spindle", "peak_fraction")
    )
    dur = (stops - starts) / sfreq
    keep = (dur >= rules.threshold("N2.spindle", "min_duration_s")) & (
        dur <= rules.threshold("N2.spindle", "max_duration_s")
    )
    starts, stops = starts[keep], stops[keep]
    amp = segment_ptp(sigma, starts, stops)
    big = amp >= rules.setting("spindle", "min_ptp_uv")
    starts, stops, amp = starts[big], stops[big], amp[big]
    return events_frame("spindle", channel, starts / sfreq, (stops - starts) / sfreq, amp)


def _above_fraction_of_peak(
    env: np.ndarray, starts: np.ndarray, stops: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Narrow each non-empty [start, stop) run to the part where ``env`` reaches ``fraction``
    of the run's own peak (the visible body of a waxing-waning burst, whatever its size)."""
    if len(starts) == 0:
        return starts, stops
    lengths = stops - starts
    first_of_run = np.cumsum(lengths) - lengths
    index = np.arange(lengths.sum()) - np.repeat(first_of_run - starts, lengths)
    values = env[index]
    peak = np.maximum.reduceat(values, first_of_run)
    above = values >= fraction * np.repeat(peak, lengths)
    first = np.minimum.reduceat(np.where(above, index, len(env)), first_of_run)
    last = np.maximum.reduceat(np.where(above, index, -1), first_of_run)
    return first, last + 1


def slow_cycles(
    x: np.ndarray, sfreq: float, rules: RuleSet = DEFAULT_RULES
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Negative-then-positive cycles of the slow EEG: from one downward zero crossing of the
    ``highpass_hz``-``lowpass_hz`` signal to the next. Returns start, stop (samples), p2p (µV)
    and the duration of the negative half-wave (s)."""
    order = rules.setting("slow_wave", "filter_order")
    y = bandpass(
        x,
        sfreq,
        (rules.setting("slow_wave", "highpass_hz"), rules.setting("slow_wave", "lowpass_hz")),
        order,
    )
    sign = np.signbit(y)
    down = np.flatnonzero(~sign[:-1] & sign[1:]) + 1
    up = np.flatnonzero(sign[:-1] & ~sign[1:]) + 1
    if len(down) < 2:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0), np.zeros(0)
    starts, stops = down[:-1], down[1:]
    ptp = segment_ptp(y, starts, stops)
    first_up = up[np.searchsorted(up, starts)]
    neg = (np.minimum(first_up, stops) - starts) / sfreq
    return starts, stops, ptp, neg


def is_slow_wave(
    ptp: np.ndarray, duration: np.ndarray, rules: RuleSet = DEFAULT_RULES
) -> np.ndarray:
    """The N3 rule's slow-wave definition: a cycle of 0.5-2 Hz (duration 0.5-2 s) with a p2p
    of at least 75 µV (both limits inclusive)."""
    lo_hz, hi_hz = rules.threshold("N3.sw20", "band_hz")
    duration = np.asarray(duration, dtype=float)
    return (
        (duration >= 1 / hi_hz)
        & (duration <= 1 / lo_hz)
        & (np.asarray(ptp, dtype=float) >= rules.threshold("N3.sw20", "min_ptp_uv"))
    )


def detect_slow_waves(
    x: np.ndarray, sfreq: float, channel: str = "EEG", rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """Slow waves of the N3 rule: cycles lasting 1/2 to 1/0.5 s (0.5-2 Hz) whose p2p reaches
    ``min_ptp_uv`` (75 µV, inclusive)."""
    check_rate("slow_wave", channel, sfreq, rules=rules)
    y = _as_signal(x, channel, 2.0, sfreq)
    starts, stops, ptp, _ = slow_cycles(y, sfreq, rules=rules)
    dur = (stops - starts) / sfreq
    keep = is_slow_wave(ptp, dur, rules=rules)
    return events_frame("slow_wave", channel, starts[keep] / sfreq, dur[keep], ptp[keep])


def detect_kcomplexes(
    x: np.ndarray, sfreq: float, channel: str = "EEG", rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """K complexes: slow cycles lasting within the rule's duration, with a sharp negative
    half-wave (under ``max_neg_duration_s``), p2p of at least ``min_ptp_uv`` and
    ``min_contrast`` times the local background p2p."""
    check_rate("kcomplex", channel, sfreq, rules=rules)
    y = _as_signal(x, channel, 2.0, sfreq)
    starts, stops, ptp, neg = slow_cycles(y, sfreq, rules=rules)
    slow = bandpass(
        y,
        sfreq,
        (rules.setting("slow_wave", "highpass_hz"), rules.setting("slow_wave", "lowpass_hz")),
        rules.setting("slow_wave", "filter_order"),
    )
    background = robust_background_ptp(slow, sfreq, rules.setting("kcomplex", "background_s"))
    dur = (stops - starts) / sfreq
    keep = (
        (dur >= rules.threshold("N2.kcomplex", "min_duration_s"))
        & (dur <= rules.threshold("N2.kcomplex", "max_duration_s"))
        & (neg <= rules.setting("kcomplex", "max_neg_duration_s"))
        & (ptp >= rules.setting("kcomplex", "min_ptp_uv"))
        & (ptp >= rules.setting("kcomplex", "min_contrast") * background[starts])
        & ~_amid_slow_wave_activity(
            starts, stops, is_slow_wave(ptp, dur, rules=rules), sfreq, len(y), rules=rules
        )
    )
    return events_frame("kcomplex", channel, starts[keep] / sfreq, dur[keep], ptp[keep])


def _amid_slow_wave_activity(
    starts: np.ndarray,
    stops: np.ndarray,
    slow: np.ndarray,
    sfreq: float,
    n: int,
    *,
    rules: RuleSet,
) -> np.ndarray:
    """Whether each cycle lies in N3-like EEG: the other slow waves (``slow``) fill at least
    the N3 rule's fraction of the ``context_s`` around it. There a K-complex-shaped wave is
    one more slow wave (the K complex rule holds only when N3 criteria are not met)."""
    covered = np.zeros(n + 1)
    np.add.at(covered, starts[slow], 1.0)
    np.add.at(covered, stops[slow], -1.0)
    filled = np.cumsum(covered[:-1]) > 0
    fill_cum = np.concatenate([[0], np.cumsum(filled)])
    half = int(round(rules.setting("kcomplex", "context_s") * sfreq / 2))
    center = (starts + stops) // 2
    lo, hi = np.clip(center - half, 0, n), np.clip(center + half, 0, n)
    own = np.where(slow, stops - starts, 0)
    others = fill_cum[hi] - fill_cum[lo] - own
    return others >= rules.threshold("N3.sw20", "min_epoch_fraction") * np.maximum(hi - lo, 1)


def detect_vertex_waves(
    x: np.ndarray, sfreq: float, channel: str = "EEG", rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """Vertex sharp waves: negative half-waves of the ``band_hz`` EEG shorter than
    ``max_half_wave_s`` whose wave (negative peak to following positive peak, within the rule's
    0.5 s) reaches ``min_ptp_uv`` and ``min_contrast`` x the local background; of candidates
    closer than 0.5 s only the largest is kept."""
    check_rate("vertex", channel, sfreq, rules=rules)
    y = _as_signal(x, channel, 2.0, sfreq)
    z = bandpass(
        y, sfreq, rules.setting("vertex", "band_hz"), rules.setting("vertex", "filter_order")
    )
    sign = np.signbit(z)
    down = np.flatnonzero(~sign[:-1] & sign[1:]) + 1
    up = np.flatnonzero(sign[:-1] & ~sign[1:]) + 1
    if len(down) < 2 or len(up) < 2:
        return empty_events()
    down = down[down < up[-1]]
    up_after = up[np.searchsorted(up, down)]
    half = (up_after - down) / sfreq
    max_s = rules.threshold("N1.vertex", "max_duration_s")
    stop = np.minimum(down + int(round(max_s * sfreq)), len(z))
    ptp = segment_ptp(z, down, stop)
    background = robust_background_ptp(z, sfreq, rules.setting("vertex", "background_s"))
    keep = (
        (half <= rules.setting("vertex", "max_half_wave_s"))
        & (ptp >= rules.setting("vertex", "min_ptp_uv"))
        & (ptp >= rules.setting("vertex", "min_contrast") * background[down])
    )
    down, stop, ptp = down[keep], stop[keep], ptp[keep]
    # the ringing half-waves around a vertex wave pass too: keep the largest within max_s
    close = np.diff(down) < max_s * sfreq
    beaten = np.zeros(len(down), dtype=bool)
    beaten[1:] |= close & (ptp[:-1] > ptp[1:])
    beaten[:-1] |= close & (ptp[1:] >= ptp[:-1])
    keep = ~beaten
    return events_frame(
        "vertex", channel, down[keep] / sfreq, (stop - down)[keep] / sfreq, ptp[keep]
    )


def detect_sawtooth(
    x: np.ndarray, sfreq: float, channel: str = "EEG", rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """Sawtooth waves: stretches of at least ``min_duration_s`` where the 2-6 Hz envelope
    reaches ``min_ptp_uv`` (p2p) and the slope of the waves is lopsided (moving skewness of the
    derivative beyond ``min_slope_skew``: a fast rise and a slow fall, or the reverse)."""
    check_rate("sawtooth", channel, sfreq, rules=rules)
    y = _as_signal(x, channel, 2.0, sfreq)
    order = rules.setting("sawtooth", "filter_order")
    lo, hi = rules.threshold("R.sawtooth", "band_hz")
    z = bandpass(y, sfreq, (lo, hi), order)
    shape = bandpass(y, sfreq, (lo, 2.5 * hi), order)
    smooth = rules.setting("sawtooth", "smooth_s")
    p2p = 2 * moving_mean(envelope(z), sfreq, smooth)
    d = np.gradient(shape)
    m2 = moving_mean(d**2, sfreq, smooth)
    skew = moving_mean(d**3, sfreq, smooth) / np.maximum(m2, 1e-12) ** 1.5
    mask = (p2p >= rules.setting("sawtooth", "min_ptp_uv")) & (
        np.abs(skew) >= rules.setting("sawtooth", "min_slope_skew")
    )
    starts, stops = runs(mask)
    keep = (stops - starts) / sfreq >= rules.setting("sawtooth", "min_duration_s")
    starts, stops = starts[keep], stops[keep]
    amp = segment_ptp(z, starts, stops)
    return events_frame("sawtooth", channel, starts / sfreq, (stops - starts) / sfreq, amp)


# --------------------------------------------------------------------------------------------
# Eye movements on the EOG
# --------------------------------------------------------------------------------------------


def _at_times(x: np.ndarray, sfreq: float, times: np.ndarray) -> np.ndarray:
    idx = np.clip(np.round(times * sfreq).astype(np.int64), 0, len(x) - 1)
    return x[idx]


def _deflection_edges(
    slope: np.ndarray,
    peaks: np.ndarray,
    sign: np.ndarray,
    span: int,
    *,
    rules: RuleSet,
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (samples) of the deflection around each slope peak: the nearest samples,
    within ``span`` either side, where the slope (in the peak's direction) has fallen under
    ``edge_fraction`` of the peak's, i.e. where the movement begins and stops."""
    offsets = np.arange(1, span + 1)
    level = rules.setting("eye_movements", "edge_fraction") * sign * slope[peaks]
    edges = []
    for direction in (-1, 1):
        idx = np.clip(peaks[:, None] + direction * offsets, 0, len(slope) - 1)
        still = sign[:, None] * slope[idx] >= level[:, None]
        steps = np.where(still.all(axis=1), span, np.argmin(still, axis=1) + 1)
        edges.append(np.clip(peaks + direction * steps, 0, len(slope) - 1))
    return edges[0], edges[1]


@dataclass
class _Deflections:
    """Rapid deflections of one band-passed signal (sample indices, see
    :func:`_find_deflections`)."""

    peaks: np.ndarray  # steepest sample of each
    sign: np.ndarray  # +1 rising, -1 falling
    base: np.ndarray  # where the movement begins
    top: np.ndarray  # where it stops
    height: np.ndarray  # µV covered, in the deflection's direction
    is_return: np.ndarray  # the previous deflection's way back
    fast_back: np.ndarray  # comes straight back as a blink does


def _find_deflections(z: np.ndarray, sfreq: float, *, rules: RuleSet) -> _Deflections:
    """Slope peaks of ``z`` of at least ``min_slope_uv_s``, each with the deflection around it:
    from where the movement begins to where it stops (the slope under ``edge_fraction`` of its
    peak, searched within the rule's 0.5 s). A deflection of opposite sign that starts where
    the previous one stopped is that one's return; a return covering ``return_fraction`` of the
    height, at its steepest within ``blink_return_s`` of the top, is fast (a blink's)."""
    slope = np.gradient(z) * sfreq
    refractory = max(int(round(rules.setting("eye_movements", "refractory_s") * sfreq)), 1)
    min_slope = rules.setting("eye_movements", "min_slope_uv_s")
    rising, _ = sps.find_peaks(slope, height=min_slope, distance=refractory)
    falling, _ = sps.find_peaks(-slope, height=min_slope, distance=refractory)
    peaks = np.sort(np.concatenate([rising, falling]))
    sign = np.sign(slope[peaks])
    span = int(round(rules.threshold("R.rem", "max_deflection_s") * sfreq))
    base, top = (
        _deflection_edges(slope, peaks, sign, span, rules=rules) if len(peaks) else (peaks, peaks)
    )
    height = sign * (z[top] - z[base])
    # a movement whose course pauses has two slope peaks that find the same start: it is one
    # deflection, the one that covers most
    order = np.lexsort((-height, sign, base))
    first = np.ones(len(order), dtype=bool)
    first[1:] = (np.diff(base[order]) != 0) | (np.diff(sign[order]) != 0)
    one = np.sort(order[first])
    peaks, sign, base, top, height = peaks[one], sign[one], base[one], top[one], height[one]
    returns = np.zeros(len(peaks), dtype=bool)
    returns[:-1] = (sign[1:] != sign[:-1]) & (base[1:] <= top[:-1] + refractory)
    fast_back = np.zeros(len(peaks), dtype=bool)
    fast_back[:-1] = (
        returns[:-1]
        & (height[1:] >= rules.setting("eye_movements", "return_fraction") * height[:-1])
        & (peaks[1:] - top[:-1] <= rules.setting("eye_movements", "blink_return_s") * sfreq)
    )
    return _Deflections(peaks, sign, base, top, height, np.r_[False, returns[:-1]], fast_back)


def _eye_events(
    channel: str, sfreq: float, found: _Deflections, rem: np.ndarray, blink: np.ndarray
) -> pd.DataFrame:
    """Events of the deflections marked ``rem`` and ``blink`` (a blink lasts its way up and
    back)."""
    onset = found.base / sfreq
    duration = np.maximum(found.top - found.base, 1) / sfreq
    return pd.concat(
        [
            events_frame("rem", channel, onset[rem], duration[rem], found.height[rem]),
            events_frame("blink", channel, onset[blink], 2 * duration[blink], found.height[blink]),
        ],
        ignore_index=True,
    )


def _larger_than_eeg(
    found: _Deflections,
    sfreq: float,
    eeg: np.ndarray | None,
    eeg_sfreq: float | None,
    *,
    rules: RuleSet,
) -> np.ndarray:
    """Whether each deflection is larger than the EEG's over the same span (same filter):
    what the EEG shows as large is cerebral activity reaching the EOG. All True without EEG."""
    if eeg is None:
        return np.ones(len(found.peaks), dtype=bool)
    band, order = (
        rules.setting("eye_movements", "band_hz"),
        rules.setting("eye_movements", "filter_order"),
    )
    eeg_z = bandpass(_as_signal(eeg, "EEG", 2.0, eeg_sfreq), eeg_sfreq, band, order)
    eeg_height = np.abs(
        _at_times(eeg_z, eeg_sfreq, found.top / sfreq)
        - _at_times(eeg_z, eeg_sfreq, found.base / sfreq)
    )
    return found.height > eeg_height


def _second_eye_signal(other: np.ndarray, channel: str, sfreq: float, length: int) -> np.ndarray:
    """The second eye's EOG, checked to match the first's ``length`` samples."""
    y2 = _as_signal(other, f"{channel} (second eye)", 2.0, sfreq)
    if len(y2) != length:
        raise DataError(
            f"eye channels {channel!r} and its second eye differ in length ({length} vs "
            f"{len(y2)} samples); give both eyes at one rate"
        )
    return y2


def detect_eye_movements(
    x: np.ndarray,
    sfreq: float,
    channel: str = "EOG",
    eeg: np.ndarray | None = None,
    eeg_sfreq: float | None = None,
    other: np.ndarray | None = None,
    rules: RuleSet = DEFAULT_RULES,
) -> pd.DataFrame:
    """Rapid eye movements (kind ``rem``) and blinks (kind ``blink``) on the EOG: one eye
    (``x``, e.g. LOC), or both when ``other`` holds the second eye (ROC, same rate).

    A deflection is a steep stretch of the ``band_hz`` EOG (slope of at least
    ``min_slope_uv_s``) from where the movement begins to where it stops (each searched within
    the rule's 0.5 s) that covers at least ``min_ptp_uv``; one that starts where the previous
    one stopped, in the other direction, is that movement's return and is not reported.

    Both eyes: the AASM's rapid eye movements are conjugate, so the two eye channels deflect in
    opposite directions, while blinks and the frontal EEG reach both in the same direction.
    Each eye's signal splits into its conjugate part, (LOC - ROC) / 2, and its common part,
    (LOC + ROC) / 2. A rapid eye movement is a deflection of the conjugate part in which the
    two eyes move their own ways, the common part at most ``max_common_share`` of the
    conjugate one (both eyes then move by similar amounts, inter-eye differences allowed); it
    is reported on ``channel`` with the conjugate part's height. A blink is a deflection of the
    first eye that comes straight back (its return covers ``return_fraction`` of its height,
    steepest within ``blink_return_s`` of its top) and that the second eye shares: the
    conjugate part changes by at most ``max_common_share`` of the common part over it. The
    eyes' phase tells the two apart, whatever the return.

    One eye (the fallback): the phase cannot be read. A blink is a deflection that comes
    straight back; any other is a rapid eye movement (it drifts back slowly). With ``eeg``, a
    deflection that the EEG shows as large (same filter, same span) is taken as cerebral
    (frontal EEG reaching the EOG) and dropped; with both eyes this applies to blinks only,
    since what the EEG brings to both eyes cancels in the conjugate part.
    """
    check_rate("eye_movements", channel, sfreq, rules=rules)
    y = _as_signal(x, channel, 2.0, sfreq)
    band, order = (
        rules.setting("eye_movements", "band_hz"),
        rules.setting("eye_movements", "filter_order"),
    )
    z = bandpass(y, sfreq, band, order)
    min_ptp = rules.setting("eye_movements", "min_ptp_uv")
    if other is None:
        found = _find_deflections(z, sfreq, rules=rules)
        keep = (found.height >= min_ptp) & ~found.is_return
        keep &= _larger_than_eeg(found, sfreq, eeg, eeg_sfreq, rules=rules)
        events = _eye_events(channel, sfreq, found, keep & ~found.fast_back, keep & found.fast_back)
        return events.sort_values("onset", ignore_index=True)

    z2 = bandpass(_second_eye_signal(other, channel, sfreq, len(y)), sfreq, band, order)
    conjugate, common = (z - z2) / 2, (z + z2) / 2
    share = rules.setting("eye_movements", "max_common_share")

    def across(found: _Deflections, part: np.ndarray) -> np.ndarray:
        # the other part's change over each deflection, in µV
        return np.abs(part[found.top] - part[found.base])

    moves = _find_deflections(conjugate, sfreq, rules=rules)
    rem = (
        (moves.height >= min_ptp)
        & ~moves.is_return
        & (across(moves, common) <= share * moves.height)
    )
    lids = _find_deflections(z, sfreq, rules=rules)
    blink = (
        (lids.height >= min_ptp)
        & ~lids.is_return
        & lids.fast_back
        & (across(lids, conjugate) <= share * across(lids, common))
        & _larger_than_eeg(lids, sfreq, eeg, eeg_sfreq, rules=rules)
    )
    events = pd.concat(
        [
            _eye_events(channel, sfreq, moves, rem, np.zeros(len(rem), dtype=bool)),
            _eye_events(channel, sfreq, lids, np.zeros(len(blink), dtype=bool), blink),
        ],
        ignore_index=True,
    )
    return events.sort_values("onset", ignore_index=True)


def detect_slow_eye_movements(
    x: np.ndarray,
    sfreq: float,
    channel: str = "EOG",
    eeg: np.ndarray | None = None,
    eeg_sfreq: float | None = None,
    other: np.ndarray | None = None,
    rules: RuleSet = DEFAULT_RULES,
) -> pd.DataFrame:
    """Slow eye movements: runs of half-waves of the ``band_hz`` EOG lasting from the rule's
    0.5 s to ``max_half_wave_s`` and reaching ``min_ptp_uv`` / 2 from zero; with ``eeg``, runs
    that the EEG shows as large are dropped (cerebral, see :func:`detect_eye_movements`).

    Both eyes (``other``: the second eye, same rate): slow eye movements are conjugate like the
    rapid ones, so the runs are looked for in the conjugate part, (LOC - ROC) / 2, where what
    reaches both eyes alike (the frontal EEG, slow vertical drifts) cancels; the EEG is then
    not needed to tell them apart."""
    check_rate("sem", channel, sfreq, rules=rules)
    y = _as_signal(x, channel, 2.0, sfreq)
    if other is not None:
        y, eeg = (y - _second_eye_signal(other, channel, sfreq, len(y))) / 2, None
    order = rules.setting("sem", "filter_order")
    band = rules.setting("sem", "band_hz")
    z = bandpass(y, sfreq, band, order)
    sign = np.signbit(z)
    cross = np.flatnonzero(sign[:-1] != sign[1:]) + 1
    if len(cross) < 2:
        return empty_events()
    starts, stops = cross[:-1], cross[1:]
    half = (stops - starts) / sfreq
    peak = segment_reduce(np.abs(z), starts, stops, np.maximum)
    min_ptp = rules.setting("sem", "min_ptp_uv")
    good = (
        (half >= rules.threshold("N1.sem", "min_deflection_s"))
        & (half <= rules.setting("sem", "max_half_wave_s"))
        & (peak >= min_ptp / 2)
    )
    edges = np.zeros(len(z) + 1, dtype=np.int64)
    np.add.at(edges, starts[good], 1)
    np.add.at(edges, stops[good], -1)
    mask = np.cumsum(edges)[:-1] > 0
    ev_start, ev_stop = runs(mask)
    amp = segment_ptp(z, ev_start, ev_stop)
    keep = amp >= min_ptp
    if eeg is not None and len(ev_start):
        eeg_z = bandpass(_as_signal(eeg, "EEG", 2.0, eeg_sfreq), eeg_sfreq, band, order)
        idx_start = np.round(ev_start / sfreq * eeg_sfreq).astype(np.int64)
        idx_stop = np.maximum(np.round(ev_stop / sfreq * eeg_sfreq).astype(np.int64), idx_start + 1)
        idx_stop = np.minimum(idx_stop, len(eeg_z))
        keep &= amp > segment_ptp(eeg_z, np.minimum(idx_start, len(eeg_z) - 1), idx_stop)
    ev_start, ev_stop, amp = ev_start[keep], ev_stop[keep], amp[keep]
    return events_frame("sem", channel, ev_start / sfreq, (ev_stop - ev_start) / sfreq, amp)


# --------------------------------------------------------------------------------------------
# Chin EMG
# --------------------------------------------------------------------------------------------


def emg_seconds_rms(
    x: np.ndarray, sfreq: float, channel: str = "EMG", rules: RuleSet = DEFAULT_RULES
) -> np.ndarray:
    """RMS (µV) of the chin EMG in the atonia rule's band (10-45 Hz), per second; a recording
    that holds less (below 99 Hz) gives the RMS of the band up to where it ends (10-22.7 Hz at
    50 Hz), which ranks the night's epochs as the whole band does (muscle tone is broadband)."""
    check_rate("emg_tone", channel, sfreq, rules=rules)
    y = _as_signal(x, channel, 1.0, sfreq)
    z = bandpass(
        y, sfreq, rules.threshold("R.atonia", "band_hz"), rules.setting("emg_tone", "filter_order")
    )
    per = int(round(sfreq))
    n_sec = len(z) // per
    return np.sqrt(np.mean(z[: n_sec * per].reshape(n_sec, per) ** 2, axis=1))


def emg_tone(epoch_rms: np.ndarray, rules: RuleSet = DEFAULT_RULES) -> pd.DataFrame:
    """Chin tone of each epoch relative to the night.

    ``emg_rel``: epoch RMS over the night's median; ``emg_quantile``: rank of the epoch among
    the night's epochs (0 lowest, 1 highest); ``emg_low``: at most ``low_factor`` x the night's
    ``low_quantile`` epoch value (atonia, the lowest tone of the recording)."""
    rms = np.asarray(epoch_rms, dtype=float)
    ok = np.isfinite(rms)
    if not ok.any():
        nan = np.full(len(rms), np.nan)
        return pd.DataFrame({"emg_rms": rms, "emg_rel": nan, "emg_quantile": nan, "emg_low": nan})
    ranks = pd.Series(rms).rank(pct=True).to_numpy()
    low_level = np.quantile(rms[ok], rules.setting("emg_tone", "low_quantile"))
    low = np.where(ok, rms <= rules.setting("emg_tone", "low_factor") * low_level, np.nan)
    return pd.DataFrame(
        {
            "emg_rms": rms,
            "emg_rel": rms / np.median(rms[ok]),
            "emg_quantile": ranks,
            "emg_low": low,
        }
    )
