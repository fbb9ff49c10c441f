import numpy as np
import pytest

from sleepvlm.cardiac import beat_locked_ptp, heartbeats, remove_cardiac_field
from sleepvlm.data.records import DataError

SFREQ = 100.0


def heart(seconds=300.0, bpm=70.0, seed=0):
    """R-peak times (s) with beat-to-beat jitter, and an ECG (µV) of narrow R waves on noise."""
    rng = np.random.default_rng(seed)
    intervals = 60 / bpm * (1 + 0.05 * rng.standard_normal(int(seconds * bpm / 60)))
    beats = 1.0 + np.cumsum(intervals)
    beats = beats[beats < seconds - 1]
    t = np.arange(int(seconds * SFREQ)) / SFREQ
    ecg = 20 * rng.standard_normal(t.size)
    for b in beats:
        ecg += 1000 * np.exp(-0.5 * ((t - b) / 0.012) ** 2)
    return t, beats, ecg


def field(t, beats, amplitude=60.0):
    """The heart's field in an ear-referenced EOG: a sharp biphasic deflection at each beat."""
    out = np.zeros_like(t)
    for b in beats:
        out += amplitude * np.exp(-0.5 * ((t - b - 0.02) / 0.02) ** 2)
        out -= 0.5 * amplitude * np.exp(-0.5 * ((t - b - 0.08) / 0.03) ** 2)
    return out


def locked(x, beats):
    return beat_locked_ptp(x, SFREQ, beats)


def test_the_heartbeats_of_an_ecg_are_found_within_a_sample_or_two():
    _, beats, ecg = heart()
    found = heartbeats(ecg, SFREQ)
    assert abs(len(found) - len(beats)) <= 0.01 * len(beats)
    nearest = np.abs(found[:, None] - beats[None, :]).min(axis=1)
    assert np.median(nearest) <= 2 / SFREQ


def test_the_cardiac_field_is_removed_and_a_blink_is_kept():
    t, beats, ecg = heart()
    rng = np.random.default_rng(1)
    blink_at = 150.37  # not on a beat
    blink = 150 * np.exp(-0.5 * ((t - blink_at) / 0.08) ** 2)
    eog = field(t, beats) + blink + 5 * rng.standard_normal(t.size)
    cleaned = remove_cardiac_field(eog, SFREQ, heartbeats(ecg, SFREQ))
    assert locked(eog, beats) > 50
    assert locked(cleaned, beats) < 0.1 * locked(eog, beats)
    around = np.abs(t - blink_at) < 0.3
    assert np.ptp(cleaned[around]) == pytest.approx(150, rel=0.15)


def test_a_fast_heart_corrects_each_sample_once():
    # at 120 beats per minute the spans of neighbouring beats overlap: a doubly corrected sample
    # would leave the field inverted rather than gone
    t, beats, ecg = heart(bpm=120.0)
    eog = field(t, beats)
    cleaned = remove_cardiac_field(eog, SFREQ, heartbeats(ecg, SFREQ))
    assert locked(cleaned, beats) < 0.1 * locked(eog, beats)


def test_a_channel_without_heartbeats_is_named_in_the_error():
    rng = np.random.default_rng(2)
    with pytest.raises(DataError, match="night.edf: ECG 'EMG1'.*no QRS complexes stand out"):
        heartbeats(5 * rng.standard_normal(30_000), SFREQ, "night.edf: ECG 'EMG1'")
    # R waves that stand out but come at random: not a heart rhythm
    t, _, _ = heart()
    random_peaks = np.sort(rng.uniform(1, 299, 350))
    spiky = rng.standard_normal(t.size)
    for b in random_peaks:
        spiky += 200 * np.exp(-0.5 * ((t - b) / 0.012) ** 2)
    with pytest.raises(DataError, match="not a heartbeat"):
        heartbeats(spiky, SFREQ, "night.edf: ECG 'ECG'")
    with pytest.raises(DataError, match="flat"):
        heartbeats(np.zeros(30_000), SFREQ, "night.edf: ECG 'ECG'")


def test_peaks_too_far_apart_for_a_heart_are_named():
    t, _, _ = heart()
    rng = np.random.default_rng(3)
    slow = rng.standard_normal(t.size)
    for b in np.arange(2.0, 299.0, 4.0):  # 15 a minute
        slow += 500 * np.exp(-0.5 * ((t - b) / 0.012) ** 2)
    with pytest.raises(DataError, match="15 beats per minute, not a heart rate"):
        heartbeats(slow, SFREQ, "night.edf: ECG 'ECG'")
