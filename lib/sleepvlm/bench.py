"""Speed benchmark of the preprocessing path against a plain MNE FIR reference.

A synthetic three-channel night (1/f noise plus mains hum) goes through the benchmark's
steps (notch, resampling to 100 Hz, per-role band-pass) twice in the same run: with
:func:`sleepvlm.signal.preprocess_channel` (zero-phase IIR) and with MNE's FIR defaults
(``notch_filter``, ``resample``, ``filter_data`` with ``method='fir', phase='zero'``).
Speed is reported as times real time (night duration / wall time).
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

import mne
import numpy as np

from sleepvlm.data.records import ROLES
from sleepvlm.signal import BANDS, TARGET_SFREQ, preprocess_channel, resampling_factors

#: Typical amplitude (µV) of each synthetic channel's broadband activity.
_AMPLITUDE_UV = {"eeg": 30.0, "eog": 50.0, "emg": 10.0}
#: Mains hum (µV) added to every synthetic channel.
_LINE_UV = 20.0
#: Seconds cut at both ends (at most a quarter each) before comparing the two outputs:
#: the filters' start-up differs.
_EDGE_S = 60.0


def synthetic_night(
    hours: float, sfreq: float, line_freq: float = 50.0, seed: int = 0
) -> dict[str, np.ndarray]:
    """One float32 µV signal per role: 1/f ("pink") noise plus a mains sine."""
    rng = np.random.default_rng(seed)
    n = int(round(hours * 3600 * sfreq))
    freqs = np.fft.rfftfreq(n, 1 / sfreq)
    shaping = np.zeros_like(freqs)
    shaping[1:] = 1 / np.sqrt(freqs[1:])
    hum = _LINE_UV * np.sin(2 * np.pi * line_freq * np.arange(n) / sfreq)
    night = {}
    for role in ROLES:
        pink = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * shaping, n)
        night[role] = (_AMPLITUDE_UV[role] * pink / pink.std() + hum).astype(np.float32)
    return night


def ours(night: dict[str, np.ndarray], sfreq: float, line_freq: float) -> dict[str, np.ndarray]:
    """The library's path: IIR notch, polyphase resampling, zero-phase IIR band-pass."""
    return {role: preprocess_channel(x, sfreq, role, line_freq) for role, x in night.items()}


def mne_reference(
    night: dict[str, np.ndarray], sfreq: float, line_freq: float
) -> dict[str, np.ndarray]:
    """The same steps with MNE's defaults: FIR notch, FFT resampling, zero-phase FIR band-pass."""
    up, down = resampling_factors(sfreq)
    out = {}
    for role, x in night.items():
        y = x.astype(np.float64)
        if line_freq < sfreq / 2:
            y = mne.filter.notch_filter(y, sfreq, line_freq, method="fir", verbose="error")
        y = mne.filter.resample(y, up=up, down=down, verbose="error")
        low, high = BANDS[role]
        y = mne.filter.filter_data(
            y, TARGET_SFREQ, low, high, method="fir", phase="zero", verbose="error"
        )
        out[role] = y.astype(np.float32)
    return out


def _best_wall_time(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _traced_run(run: Callable[[], dict]) -> tuple[dict, float]:
    """Result of ``run()`` and the peak memory (MiB) it allocated."""
    tracemalloc.start()
    try:
        result = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak / 2**20


def _agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Smallest correlation between the two outputs over the channels, edges left out."""
    length = min(len(x) for x in a.values())
    edge = min(int(_EDGE_S * TARGET_SFREQ), length // 4)
    correlations = []
    for role in a:
        x, y = a[role][edge:-edge], b[role][edge:-edge]
        correlations.append(float(np.corrcoef(x, y)[0, 1]))
    return min(correlations)


def run_preprocess_bench(
    hours: float = 8.0, sfreq: float = 256, seed: int = 0, line_freq: float = 50.0, repeats: int = 3
) -> dict[str, float]:
    """Time both paths on a synthetic night; wall times are the best of ``repeats`` runs.

    Peak memory comes from a separate traced run (tracemalloc slows the code it watches).
    ``ratio`` is our speed over the reference's; ``agreement`` is the lowest correlation
    between the two outputs across channels (both implement the same pass bands).
    """
    night = synthetic_night(hours, sfreq, line_freq, seed)
    warm_up = {role: x[: int(60 * sfreq)] for role, x in night.items()}
    ours(warm_up, sfreq, line_freq)
    mne_reference(warm_up, sfreq, line_freq)

    duration = hours * 3600
    ours_s = _best_wall_time(lambda: ours(night, sfreq, line_freq), repeats)
    ref_s = _best_wall_time(lambda: mne_reference(night, sfreq, line_freq), repeats)
    ours_out, ours_peak = _traced_run(lambda: ours(night, sfreq, line_freq))
    ref_out, ref_peak = _traced_run(lambda: mne_reference(night, sfreq, line_freq))
    return {
        "hours": hours,
        "sfreq": float(sfreq),
        "channels": len(night),
        "ours_s": ours_s,
        "ours_x_realtime": duration / ours_s,
        "ours_peak_mib": ours_peak,
        "reference_s": ref_s,
        "reference_x_realtime": duration / ref_s,
        "reference_peak_mib": ref_peak,
        "ratio": ref_s / ours_s,
        "agreement": _agreement(ours_out, ref_out),
    }


def print_preprocess_bench(**kwargs) -> dict[str, float]:
    """Run :func:`run_preprocess_bench`, print a short report ending in ``ratio=<x>x``."""
    result = run_preprocess_bench(**kwargs)
    print(
        f"synthetic night: {result['hours']:g} h, {result['channels']} channels at "
        f"{result['sfreq']:g} Hz -> {TARGET_SFREQ} Hz"
    )
    for name, key in (("sleepvlm zero-phase IIR", "ours"), ("MNE FIR reference", "reference")):
        print(
            f"{name:<24} {result[f'{key}_s']:8.2f} s  {result[f'{key}_x_realtime']:9,.0f}x real "
            f"time  peak {result[f'{key}_peak_mib']:7.1f} MiB"
        )
    print(f"output agreement (min correlation): {result['agreement']:.4f}")
    print(f"ratio={result['ratio']:.2f}x")
    return result
