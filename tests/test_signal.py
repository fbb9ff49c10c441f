"""Tests of the benchmark preprocessing: filters, resampling, epoching and exclusions."""

import warnings

import numpy as np
import pytest
from scipy import signal as sps

from sleepvlm.data.records import ChannelNotFoundError, DataError, Recording
from sleepvlm.signal import (
    BANDS,
    EPOCH_SAMPLES,
    EXCLUSION_REASONS,
    MANIFEST_COLUMNS,
    TARGET_SFREQ,
    LowRateWarning,
    QualityWarning,
    constant_run_mask,
    epoch_recording,
    filter_response,
    notch_applies,
    notch_response,
    notch_sos,
    preprocess_channel,
    resampling_factors,
)

CHANNELS = {"eeg": "C4-A1", "eog": "LOC-A2", "emg": "X1"}


def make_recording(
    n_epochs=6, sfreq=200.0, offset=0.0, stages=None, roles=("eeg", "eog", "emg"), seed=0, **kw
):
    """A noise night of ``n_epochs`` scored epochs (the signal covers offset + all epochs)."""
    rng = np.random.default_rng(seed)
    rates = sfreq if isinstance(sfreq, dict) else {r: sfreq for r in roles}
    signals, rates_by_channel = {}, {}
    for role in roles:
        fs = rates[role]
        n = int(round((offset + 30 * n_epochs) * fs))
        signals[CHANNELS[role]] = 20 * rng.standard_normal(n)
        rates_by_channel[CHANNELS[role]] = fs
    if stages is None:
        stages = ["W", "N1", "N2", "N3", "REM"] * n_epochs
    return Recording(
        dataset="isruc",
        subject="s1",
        night="n1",
        signals=signals,
        sfreq=rates_by_channel,
        stages=np.asarray(stages[:n_epochs], dtype=object),
        roles={r: CHANNELS[r] for r in roles},
        hypnogram_offset=offset,
        source_hash="abc123",
        line_freq=50.0,
        **kw,
    )


def gain_at(response, freq):
    return float(np.interp(freq, response["frequency"], response["gain_db"]))


def sine(freq, sfreq, seconds, amplitude=100.0):
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * sfreq)) / sfreq)


def middle_amplitude(y, sfreq=TARGET_SFREQ, trim_s=20):
    core = y[int(trim_s * sfreq) : -int(trim_s * sfreq)]
    return np.sqrt(2) * core.std()


@pytest.mark.parametrize("role", list(BANDS))
def test_band_pass_gain_flat_in_band_and_attenuating_outside(role):
    low, high = BANDS[role]
    response = filter_response(role)
    assert abs(gain_at(response, np.sqrt(low * high))) < 0.5
    assert gain_at(response, low / 10) <= -20
    assert gain_at(response, min(2 * high, 49.5)) <= -20
    # Forward-backward filtering: -6 dB at the cut-offs and no phase shift at all.
    assert gain_at(response, low) == pytest.approx(-6.02, abs=0.3)
    assert np.allclose(response["phase"], 0)
    assert response["group_delay_single_pass"].iloc[1:].abs().max() > 0


def test_higher_order_falls_off_faster():
    gentle = gain_at(filter_response("eeg", order=2), 45)
    steep = gain_at(filter_response("eeg", order=4), 45)
    assert steep < gentle - 10


def test_notch_removes_mains_by_30_db_and_spares_neighbours():
    fs = 256
    assert gain_at(notch_response(50, fs), 50) <= -30
    removed = sps.sosfiltfilt(notch_sos(50, fs), sine(50, fs, 60))
    kept = sps.sosfiltfilt(notch_sos(50, fs), sine(40, fs, 60))
    assert 20 * np.log10(middle_amplitude(removed, fs) / 100) <= -30
    assert middle_amplitude(kept, fs) == pytest.approx(100, rel=0.01)


def test_60_hz_mains_removed_before_resampling_shhs_eeg():
    fs = 125
    y = preprocess_channel(sine(60, fs, 120), fs, "eeg", line_freq=60)
    assert middle_amplitude(y) < 100 * 10 ** (-30 / 20)


def test_preprocessing_applies_the_notch():
    # 60 Hz at 256 Hz lies above the new Nyquist; what the anti-aliasing filter lets through
    # folds to 40 Hz, inside the EMG band, unless the notch removed it first.
    x = sine(60, 256, 120)
    with_notch = middle_amplitude(preprocess_channel(x, 256, "emg", line_freq=60))
    without = middle_amplitude(preprocess_channel(x, 256, "emg", line_freq=None))
    assert with_notch < 0.1 * without


def test_the_notch_is_left_out_where_the_channel_cannot_carry_the_mains():
    assert notch_applies(60, 125) and notch_applies(50, 200)
    assert not notch_applies(60, 50) and not notch_applies(50, 100)  # Nyquist at or below mains
    assert not notch_applies(None, 256) and not notch_applies(0, 256)


@pytest.mark.parametrize("fs", [256, 200, 125, 50])
def test_eeg_10_hz_sine_keeps_its_amplitude(fs):
    y = preprocess_channel(sine(10, fs, 120), fs, "eeg", line_freq=50)
    assert y.dtype == np.float32
    assert middle_amplitude(y) == pytest.approx(100, rel=0.03)


def test_emg_band_removes_1_hz():
    y = preprocess_channel(sine(1, 200, 120), 200, "emg", line_freq=50)
    assert middle_amplitude(y) < 1.0


def test_notch_skipped_at_or_above_nyquist():
    x = np.random.default_rng(1).standard_normal(50 * 120)
    with_mains = preprocess_channel(x, 50, "eog", line_freq=50)
    np.testing.assert_array_equal(with_mains, preprocess_channel(x, 50, "eog", line_freq=None))


@pytest.mark.parametrize("fs", [256, 200, 125, 50])
def test_resampling_gives_3000_samples_per_epoch(fs):
    assert len(preprocess_channel(np.zeros(int(fs * 30 * 4)), fs, "eeg")) == 4 * EPOCH_SAMPLES
    rates = {"eeg": fs, "eog": 50.0, "emg": 125.0}
    epochs = epoch_recording(make_recording(n_epochs=3, sfreq=rates))
    assert epochs.data.shape == (3, 3, EPOCH_SAMPLES)


def test_resampling_factors():
    assert resampling_factors(256) == (25, 64)
    assert resampling_factors(200) == (1, 2)
    assert resampling_factors(50) == (2, 1)
    with pytest.raises(DataError, match="sampling rate"):
        resampling_factors(0)
    with pytest.raises(DataError, match="rational"):
        resampling_factors(np.pi * 100)


def test_unknown_role_rejected():
    with pytest.raises(DataError, match="role"):
        preprocess_channel(np.zeros(1000), 100, "ecg")


def test_epochs_follow_a_nonzero_hypnogram_offset():
    fs, offset, n_epochs = 200.0, 7.5, 6
    rec = make_recording(n_epochs=n_epochs, sfreq=fs, offset=offset)
    t = np.arange(len(rec.signals["C4-A1"])) / fs
    # Epoch k of the hypnogram carries a 10 Hz sine of amplitude 10 (k + 1) µV.
    amplitude = np.where(t >= offset, 10 * (np.floor((t - offset) / 30) + 1), 0)
    rec.signals["C4-A1"] = (amplitude * np.sin(2 * np.pi * 10 * t)).astype(np.float32)
    epochs = epoch_recording(rec)
    assert list(epochs.manifest["epoch"]) == list(range(n_epochs))
    np.testing.assert_allclose(epochs.manifest["onset"], offset + 30 * np.arange(n_epochs))
    for k, epoch in enumerate(epochs.data[:, 0]):
        assert middle_amplitude(epoch, trim_s=5) == pytest.approx(10 * (k + 1), rel=0.03)


def test_manifest_and_layout():
    epochs = epoch_recording(make_recording(n_epochs=5, simulated=True))
    assert list(epochs.manifest.columns) == list(MANIFEST_COLUMNS)
    assert epochs.data.dtype == np.float32
    row = epochs.manifest.iloc[2]
    assert (row["dataset"], row["subject"], row["night"], row["stage"]) == (
        "isruc",
        "s1",
        "n1",
        "N2",
    )
    assert row["source_hash"] == "abc123" and row["has_eog"] and row["has_emg"] and row["simulated"]
    assert set(epochs.exclusions) == set(EXCLUSION_REASONS)
    assert sum(epochs.exclusions.values()) == 0


def test_exclusions_counted_per_reason():
    fs = 200
    stages = ["W", "MOVE", "N2", "N2", "UNKNOWN", "N3", "N3", "REM", "REM", "W"]
    rec = make_recording(n_epochs=10, sfreq=fs, stages=stages)
    rec.stages = np.asarray(stages + ["W", "N1"], dtype=object)  # 2 epochs past the signal end
    eog = rec.signals["LOC-A2"]
    eog[2 * 30 * fs + 100 : 2 * 30 * fs + 400] = np.nan  # epoch 2: NaN on EOG
    rec.signals["X1"][5 * 30 * fs + 10 : 5 * 30 * fs + 10 + 6 * fs] = 3.25  # epoch 5: held 6 s
    rec.signals["C4-A1"][7 * 30 * fs : 8 * 30 * fs] *= 0.001  # epoch 7: peak-to-peak < 0.5 µV
    with pytest.warns(QualityWarning, match="isruc/s1/n1"):
        epochs = epoch_recording(rec)
    assert epochs.exclusions == {
        "outside_signal": 2,
        "movement": 1,
        "unknown": 1,
        "nan": 1,
        "flat": 2,
    }
    assert list(epochs.manifest["epoch"]) == [0, 3, 6, 8, 9]
    assert list(epochs.manifest["stage"]) == ["W", "N2", "N3", "REM", "W"]


def test_short_constant_runs_are_not_flat():
    x = np.arange(100.0)
    x[10:14] = 5.0
    assert not constant_run_mask(x, 5).any()
    x[10:15] = 5.0
    assert np.flatnonzero(constant_run_mask(x, 5)).tolist() == [10, 11, 12, 13, 14]


def test_nan_run_flags_its_epoch_without_poisoning_neighbours():
    fs = 200
    clean = make_recording(n_epochs=9, sfreq=fs)
    broken = make_recording(n_epochs=9, sfreq=fs)
    broken.signals["C4-A1"][4 * 30 * fs + 2000 : 4 * 30 * fs + 3000] = np.nan
    with pytest.warns(QualityWarning):
        kept = epoch_recording(broken)
    reference = epoch_recording(clean)
    assert kept.exclusions["nan"] == 1
    assert 4 not in set(kept.manifest["epoch"])
    assert np.isfinite(kept.data).all()
    by_epoch = dict(zip(kept.manifest["epoch"], kept.data, strict=True))
    scale = reference.data[:, 0].std()
    for k in (3, 5):  # next to the gap: bridged, so only a small disturbance
        assert np.abs(by_epoch[k][0] - reference.data[k, 0]).std() < 0.01 * scale
    for k in (0, 1, 7, 8):  # further away: the gap leaves no trace
        np.testing.assert_allclose(by_epoch[k][0], reference.data[k, 0], atol=1e-3 * scale)


def test_missing_eog_and_emg_give_flagged_zero_channels():
    epochs = epoch_recording(make_recording(n_epochs=3, roles=("eeg",)))
    assert epochs.data.shape == (3, 3, EPOCH_SAMPLES)
    assert np.abs(epochs.data[:, 0]).max() > 0
    assert not epochs.data[:, 1:].any()
    assert not epochs.manifest["has_eog"].any() and not epochs.manifest["has_emg"].any()


def test_roles_argument_restricts_channels_used():
    epochs = epoch_recording(make_recording(n_epochs=2), roles=("eeg", "emg"))
    assert not epochs.data[:, 1].any() and epochs.data[:, 2].any()
    assert epochs.manifest["has_emg"].all() and not epochs.manifest["has_eog"].any()


def test_roles_must_include_eeg():
    with pytest.raises(DataError, match="must include 'eeg'"):
        epoch_recording(make_recording(n_epochs=2), roles=("eog",))


def test_missing_eeg_is_an_error():
    with pytest.raises(ChannelNotFoundError, match="EEG"):
        epoch_recording(make_recording(n_epochs=2, roles=("eog", "emg")))


def test_role_pointing_to_absent_channel_is_an_error():
    rec = make_recording(n_epochs=2)
    rec.roles["emg"] = "Chin"
    with pytest.raises(DataError, match="'Chin'"):
        epoch_recording(rec)


def test_unexpected_stage_label_is_an_error():
    rec = make_recording(n_epochs=2, stages=["W", "S4"])
    with pytest.raises(DataError, match="S4"):
        epoch_recording(rec)


def test_all_epochs_excluded_gives_empty_epochs():
    rec = make_recording(n_epochs=2, stages=["MOVE", "UNKNOWN"])
    epochs = epoch_recording(rec)
    assert epochs.data.shape == (0, 3, EPOCH_SAMPLES)
    assert len(epochs.manifest) == 0 and list(epochs.manifest.columns) == list(MANIFEST_COLUMNS)
    assert epochs.exclusions["movement"] == 1 and epochs.exclusions["unknown"] == 1


def test_a_band_above_what_a_recording_holds_is_warned_about_naming_the_channel():
    rng = np.random.default_rng(0)
    with pytest.warns(LowRateWarning, match=r"x.edf: EMG1.*50 Hz.*band 10-45 Hz is read up to 25"):
        y = preprocess_channel(rng.normal(0, 5, 50 * 60), 50.0, "emg", source="x.edf: EMG1")
    assert len(y) == 100 * 60
    with pytest.warns(LowRateWarning, match=r"1 Hz.*band 10-45 Hz is empty"):
        preprocess_channel(rng.normal(0, 1, 60), 1.0, "emg", source="x.edf: EMG submental")


def test_upsampling_alone_is_not_warned_about():
    x = np.random.default_rng(1).normal(0, 20, 50 * 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowRateWarning)
        y = preprocess_channel(x, 50.0, "eog")  # SHHS's EOG: 0.1-10 Hz fits below 25 Hz
    # nothing is invented above the recording's Nyquist frequency
    freqs, psd = sps.welch(y, 100.0, nperseg=1000)
    assert psd[freqs > 30].max() < 1e-3 * psd[(freqs > 1) & (freqs < 8)].mean()
