"""Speed benchmarks: ours against the obvious reference, both run in the same process.

Preprocessing: a synthetic three-channel night (1/f noise plus mains hum) goes through the
benchmark's steps (notch, resampling to 100 Hz, per-role band-pass) twice in the same run: with
:func:`sleepvlm.signal.preprocess_channel` (zero-phase IIR) and with MNE's FIR defaults
(``notch_filter``, ``resample``, ``filter_data`` with ``method='fir', phase='zero'``).
Speed is reported as times real time (night duration / wall time).

Images: the same simulated epochs are drawn to PNG by :func:`sleepvlm.render.render_png`
(direct rasterisation) and :func:`sleepvlm.render.reference_png` (a matplotlib figure);
speed is milliseconds per image, and the parity score checks that both draw the same traces.

Requests: the model request engine sends the same requests to a local fake OpenAI-compatible
server with fixed latency, with bounded concurrency and one at a time; speed is requests/s.
"""

from __future__ import annotations

import time
import tracemalloc
import warnings
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


def bench_epochs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` preprocessed epochs (n, 3, 3000) of a simulated DCSM night and their stages,
    spread evenly over the night so that every stage it holds is represented."""
    from sleepvlm.data.simulate import simulate_night
    from sleepvlm.signal import QualityWarning, epoch_recording

    hours = float(np.clip(n * 30 / 3600 * 1.25, 1.0, 14.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QualityWarning)
        epochs = epoch_recording(simulate_night("dcsm", 0, seed=seed, hours=hours))
    rows = np.linspace(0, len(epochs) - 1, n).round().astype(int)
    return epochs.data[rows], epochs.manifest["stage"].to_numpy()[rows]


def _timed_drawing(
    draw: Callable[[np.ndarray], bytes], epochs: np.ndarray
) -> tuple[float, list[bytes]]:
    """Wall time per epoch of ``draw``, and what it drew."""
    start = time.perf_counter()
    pngs = [draw(epoch) for epoch in epochs]
    return (time.perf_counter() - start) / len(epochs), pngs


def run_render_bench(n: int = 200, seed: int = 0, **options) -> dict[str, float]:
    """Draw the same ``n`` epochs with the fast and the matplotlib renderer, one after the other.

    ``fast_ms``/``reference_ms`` are wall time per PNG (drawing and encoding), after one
    warm-up image each (the fast renderer's cached layout, matplotlib's font cache). ``ratio``
    is reference time over fast time; ``parity`` the mean (and ``parity_min`` the lowest)
    :func:`sleepvlm.render.parity_score` between the two PNGs of each epoch. ``options`` go to
    both renderers.
    """
    from sleepvlm import render

    opts = render.ImageOptions(**options)
    epochs, stages = bench_epochs(n, seed)
    render.render_png(epochs[0], options=opts)
    render.reference_png(epochs[0], options=opts)
    fast_s, fast_pngs = _timed_drawing(lambda e: render.render_png(e, options=opts), epochs)
    reference_s, reference_pngs = _timed_drawing(
        lambda e: render.reference_png(e, options=opts), epochs
    )
    parities = [
        render.parity_score(
            render.decode_png(fast, opts.grayscale),
            render.decode_png(reference, opts.grayscale),
            opts,
        )
        for fast, reference in zip(fast_pngs, reference_pngs, strict=True)
    ]
    return {
        "n": n,
        "stages": len(set(stages)),
        "width": opts.width,
        "height": opts.height,
        "fast_ms": 1e3 * fast_s,
        "reference_ms": 1e3 * reference_s,
        "fast_png_kib": float(np.mean([len(png) for png in fast_pngs])) / 1024,
        "ratio": reference_s / fast_s,
        "parity": float(np.mean(parities)),
        "parity_min": float(np.min(parities)),
    }


def print_render_bench(**kwargs) -> dict[str, float]:
    """Run :func:`run_render_bench`, print a short report ending in ``ratio=<x>x``."""
    result = run_render_bench(**kwargs)
    print(
        f"{result['n']} simulated epochs ({result['stages']} stages), "
        f"{result['width']}x{result['height']} px PNG"
    )
    print(f"{'sleepvlm rasteriser':<24} {result['fast_ms']:8.2f} ms/image")
    print(f"{'matplotlib reference':<24} {result['reference_ms']:8.2f} ms/image")
    print(f"parity (mean, min): {result['parity']:.3f}, {result['parity_min']:.3f}")
    print(f"ratio={result['ratio']:.1f}x")
    return result


def _timed_engine_run(spec, store, requests: list, concurrency: int) -> float:
    from sleepvlm.models import Engine

    engine = Engine(spec, store, concurrency=concurrency, progress=False)
    start = time.perf_counter()
    responses = engine.run(requests)
    elapsed = time.perf_counter() - start
    failed = [r for r in responses if not r.ok or r.cached]
    if failed:
        raise RuntimeError(f"{len(failed)} bench requests failed or were cached: {failed[0]}")
    return elapsed


def run_requests_bench(
    n_requests: int = 300,
    latency_s: float = 0.1,
    concurrency: int = 32,
    sequential_requests: int | None = None,
    repeats: int = 3,
) -> dict[str, float]:
    """Send ``n_requests`` distinct requests through the engine to a local fake
    OpenAI-compatible server that answers after ``latency_s``: with ``concurrency`` requests
    in flight (best of ``repeats`` runs: a run takes about a second, so other load on the
    machine shows), and once sequentially (on ``sequential_requests`` of them, all by default;
    fewer makes the sequential rate an extrapolation, flagged in the result).

    Every run goes over real HTTP with the OpenAI client and writes every answer to a fresh
    response store, as a real run does. ``ratio`` is concurrent over sequential throughput.
    """
    import tempfile
    from pathlib import Path

    from sleepvlm.models import Faults, ModelSpec, running_server, user_request

    n_sequential = sequential_requests or n_requests
    requests = [
        user_request(f"bench epoch {i}: which stage?", id=str(i)) for i in range(n_requests)
    ]
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server(faults=Faults(latency_s=latency_s)) as server,
    ):
        spec = ModelSpec(
            name="bench", backend="openai_compatible", model_id="chance", base_url=server.url
        )
        # Warm-up outside the timings: imports the client, opens the first connection.
        warm_up = [user_request("warm-up")]
        _timed_engine_run(spec, Path(tmp) / "warm.jsonl", warm_up, 1)
        concurrent_s = min(
            _timed_engine_run(spec, Path(tmp) / f"c{i}.jsonl", requests, concurrency)
            for i in range(repeats)
        )
        sequential_s = _timed_engine_run(spec, Path(tmp) / "s.jsonl", requests[:n_sequential], 1)
        hits = server.hits
    concurrent_rps = n_requests / concurrent_s
    sequential_rps = n_sequential / sequential_s
    return {
        "n_requests": n_requests,
        "n_sequential": n_sequential,
        "extrapolated": n_sequential < n_requests,
        "latency_s": latency_s,
        "concurrency": concurrency,
        "repeats": repeats,
        "server_hits": hits - len(warm_up),
        "concurrent_s": concurrent_s,
        "concurrent_rps": concurrent_rps,
        "sequential_s": sequential_s,
        "sequential_rps": sequential_rps,
        "ratio": concurrent_rps / sequential_rps,
    }


def print_requests_bench(**kwargs) -> dict[str, float]:
    """Run :func:`run_requests_bench`, print both throughputs and end with ``ratio=<x>x``."""
    result = run_requests_bench(**kwargs)
    print(
        f"fake OpenAI-compatible server, {result['latency_s'] * 1000:g} ms per answer, "
        f"{result['server_hits']} calls over HTTP"
    )
    print(
        f"concurrency {result['concurrency']:<3}  {result['n_requests']:5d} requests "
        f"{result['concurrent_s']:7.2f} s  {result['concurrent_rps']:7.1f} req/s "
        f"(best of {result['repeats']})"
    )
    extrapolated = " (rate extrapolated to all requests)" if result["extrapolated"] else ""
    print(
        f"sequential       {result['n_sequential']:5d} requests {result['sequential_s']:7.2f} s  "
        f"{result['sequential_rps']:7.1f} req/s{extrapolated}"
    )
    print(f"ratio={result['ratio']:.2f}x")
    return result
