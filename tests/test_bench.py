"""Tests of the preprocessing speed benchmark (sanity of its numbers, never timing thresholds)."""

import re

import numpy as np
import pytest

from sleepvlm.bench import (
    bench_epochs,
    print_preprocess_bench,
    print_render_bench,
    run_preprocess_bench,
    run_render_bench,
    synthetic_night,
)


@pytest.fixture(scope="module")
def short_bench():
    return run_preprocess_bench(hours=0.05, sfreq=256, repeats=1)


def test_bench_reports_sane_numbers(short_bench):
    result = short_bench
    for key in ("ours_s", "reference_s", "ours_peak_mib", "reference_peak_mib"):
        assert result[key] > 0
    assert result["ours_x_realtime"] == pytest.approx(0.05 * 3600 / result["ours_s"])
    assert result["reference_x_realtime"] == pytest.approx(0.05 * 3600 / result["reference_s"])
    assert result["ratio"] == pytest.approx(result["reference_s"] / result["ours_s"])
    # Both paths implement the same pass bands, so their outputs must largely agree.
    assert 0.8 < result["agreement"] <= 1.0


def test_synthetic_night_has_mains_and_three_roles():
    night = synthetic_night(hours=0.01, sfreq=256, line_freq=50.0, seed=0)
    assert set(night) == {"eeg", "eog", "emg"}
    eeg = night["eeg"]
    assert eeg.dtype == np.float32 and len(eeg) == round(0.01 * 3600 * 256)
    freqs = np.fft.rfftfreq(len(eeg), 1 / 256)
    above_20_hz = freqs > 20
    spectrum = np.abs(np.fft.rfft(eeg))[above_20_hz]
    assert freqs[above_20_hz][np.argmax(spectrum)] == pytest.approx(50, abs=0.1)


def test_printed_report_ends_with_ratio(capsys):
    print_preprocess_bench(hours=0.02, repeats=1)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"ratio=\d+(\.\d+)?x", last)


@pytest.fixture(scope="module")
def render_bench():
    return run_render_bench(n=6)


def test_render_bench_reports_sane_numbers(render_bench):
    result = render_bench
    assert result["n"] == 6 and result["stages"] >= 2
    assert result["fast_ms"] > 0 and result["reference_ms"] > 0
    assert result["ratio"] == pytest.approx(result["reference_ms"] / result["fast_ms"])
    # Both renderers draw the same traces at the same scales (another scale or other data
    # scores far lower); on a busy wake epoch with high-frequency EEG the column envelopes of
    # the two differ by 3-5 px in a tenth of the columns (measured 0.885).
    assert 0.85 < result["parity_min"] <= result["parity"] <= 1.0
    assert result["parity"] > 0.9


def test_bench_epochs_are_preprocessed_epochs_across_the_night():
    epochs, stages = bench_epochs(12, seed=0)
    assert epochs.shape == (12, 3, 3000) and epochs.dtype == np.float32
    assert len(set(stages)) >= 3


def test_printed_render_report_ends_with_ratio(capsys):
    print_render_bench(n=3)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"ratio=\d+(\.\d+)?x", last)


def test_requests_bench_counts_every_call_and_reports_the_ratio(capsys):
    from sleepvlm.bench import print_requests_bench

    result = print_requests_bench(n_requests=24, latency_s=0.05, concurrency=8, repeats=2)
    assert result["server_hits"] == 2 * 24 + 24  # two concurrent runs + sequential, no retries
    assert result["concurrent_rps"] == pytest.approx(24 / result["concurrent_s"])
    assert result["sequential_rps"] == pytest.approx(24 / result["sequential_s"])
    assert result["ratio"] == pytest.approx(result["concurrent_rps"] / result["sequential_rps"])
    # Sequentially every answer waits its latency: the run cannot beat 24 x 50 ms.
    assert result["sequential_s"] >= 24 * 0.05
    assert not result["extrapolated"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"ratio=\d+(\.\d+)?x", last)
