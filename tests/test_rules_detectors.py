"""Tests of the rule detectors: planted waveforms are found at several sampling rates, pure
noise stays quiet, thresholds come from the rule table, bad input raises DataError."""

import numpy as np
import pytest
from scipy import signal as sps

from sleepvlm.data.records import EVENT_COLUMNS, DataError
from sleepvlm.rules import detectors as det
from sleepvlm.rules import table

RATES = (100.0, 128.0, 200.0, 256.0)


def background(fs, seconds=60.0, sd=4.0, seed=0):
    """EEG-like Gaussian noise of ``sd`` µV: a 1/f power spectrum from 0.5 to 40 Hz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * fs)
    freqs = np.fft.rfftfreq(n, 1 / fs)
    shape = np.where((freqs >= 0.5) & (freqs <= 40.0), 1 / np.sqrt(np.maximum(freqs, 0.5)), 0)
    coef = (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))) * shape
    x = np.fft.irfft(coef, n)
    return x / x.std() * sd


def plant(x, fs, onset, wave):
    y = x.copy()
    i = int(round(onset * fs))
    y[i : i + len(wave)] += wave
    return y


def t_axis(fs, seconds):
    return np.arange(int(round(seconds * fs))) / fs


def spindle(fs, ptp=40.0, freq=13.0, dur=1.2):
    """A waxing-waning spindle whose envelope is above half its peak for ``dur`` s (a sine
    envelope over 1.5 x ``dur``, starting dur / 4 before that)."""
    t = t_axis(fs, 1.5 * dur)
    return ptp / 2 * np.sin(2 * np.pi * freq * t) * np.sin(np.pi * t / (1.5 * dur))


def slow_wave(fs, ptp, dur=1.0):
    t = t_axis(fs, dur)
    return -ptp / 2 * np.sin(2 * np.pi * t / dur)


def kcomplex(fs, ptp=150.0, dur=1.0):
    t = t_axis(fs, 1.5)
    w = -np.exp(-(((t - 0.3 * dur) / (0.11 * dur)) ** 2)) + 0.55 * np.exp(
        -(((t - 0.65 * dur) / (0.16 * dur)) ** 2)
    )
    return w * ptp / np.ptp(w)


def vertex(fs, ptp=80.0):
    t = t_axis(fs, 0.5)
    w = -np.exp(-(((t - 0.15) / 0.045) ** 2)) + 0.3 * np.exp(-(((t - 0.3) / 0.07) ** 2))
    return w * ptp / np.ptp(w)


def eye_step(fs, ptp=150.0, tau=1.0):
    t = t_axis(fs, 3.0)
    return ptp * (1 + np.tanh((t - 0.15) / 0.03)) / 2 * np.exp(-np.maximum(t - 0.15, 0) / tau)


def blink(fs, ptp=200.0):
    t = t_axis(fs, 0.6)
    return ptp * np.exp(-(((t - 0.18) / 0.07) ** 2))


def found_near(events, kind, onset, tol):
    hits = events[(events["kind"] == kind) & (np.abs(events["onset"] - onset) <= tol)]
    return len(hits)


@pytest.mark.parametrize("fs", RATES)
def test_spindle_found_at_its_time(fs):
    x = plant(background(fs), fs, 30.0, spindle(fs))
    ev = det.detect_spindles(x, fs, "C4")
    assert list(ev.columns) == list(EVENT_COLUMNS)
    near = ev[np.abs(ev["onset"] - 30.3) <= 0.35]
    assert len(near) == 1
    assert near["amplitude"].iloc[0] == pytest.approx(40.0, rel=0.2)
    assert len(ev) <= 2


def test_spindles_are_found_in_a_50_hz_recording():
    # an old archive's rate: the spindle band fits below Nyquist, the 30-Hz broad band does not
    fs = 50.0
    x = plant(background(fs), fs, 30.0, spindle(fs))
    ev = det.detect_spindles(x, fs, "C3-A1")
    assert len(ev[np.abs(ev["onset"] - 30.3) <= 0.35]) == 1 and len(ev) <= 2
    with pytest.raises(DataError, match="sampled at 30 Hz, below the 35.2 Hz it needs"):
        det.detect_spindles(background(30.0), 30.0, "C3-A1")


@pytest.mark.parametrize("fs", RATES)
@pytest.mark.parametrize("dur", [0.6, 1.6])
def test_spindle_extent_is_its_body_above_half_amplitude(fs, dur):
    x = plant(background(fs), fs, 30.0, spindle(fs, ptp=50.0, dur=dur))
    ev = det.detect_spindles(x, fs)
    assert len(ev) == 1
    assert ev["onset"].iloc[0] == pytest.approx(30.0 + dur / 4, abs=0.1)
    assert ev["duration"].iloc[0] == pytest.approx(dur, abs=0.15)


@pytest.mark.parametrize("fs", RATES)
def test_slow_wave_found_with_its_amplitude(fs):
    x = plant(background(fs, sd=2.0), fs, 20.0, slow_wave(fs, 150.0))
    ev = det.detect_slow_waves(x, fs)
    assert len(ev) == 1
    assert ev["onset"].iloc[0] == pytest.approx(20.0, abs=0.15)
    assert ev["amplitude"].iloc[0] == pytest.approx(150.0, rel=0.1)
    assert ev["duration"].iloc[0] == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("fs", RATES)
def test_kcomplex_found_and_small_waves_ignored(fs):
    x = plant(background(fs, sd=3.0), fs, 25.0, kcomplex(fs))
    x = plant(x, fs, 40.0, kcomplex(fs, ptp=40.0))
    ev = det.detect_kcomplexes(x, fs)
    assert len(ev) == 1
    assert ev["onset"].iloc[0] == pytest.approx(25.1, abs=0.25)


@pytest.mark.parametrize("fs", RATES)
def test_no_kcomplex_amid_slow_wave_activity(fs):
    """A K-complex-shaped wave among slow waves filling over 20 % of the surrounding 30 s is
    a slow wave (the K complex rule needs N3 criteria unmet); with fewer around it stays a KC."""
    train = np.concatenate([slow_wave(fs, 120.0)] * 8)  # 8 s of slow waves
    dense = plant(plant(background(fs, sd=3.0), fs, 20.0, train), fs, 29.0, kcomplex(fs))
    assert len(det.detect_kcomplexes(dense, fs)) == 0
    assert found_near(det.detect_slow_waves(dense, fs), "slow_wave", 29.1, 0.25) == 1
    sparse = plant(plant(background(fs, sd=3.0), fs, 20.0, train[: len(train) // 4]), fs, 29.0,
                   kcomplex(fs))  # fmt: skip
    assert found_near(det.detect_kcomplexes(sparse, fs), "kcomplex", 29.1, 0.25) == 1


@pytest.mark.parametrize("fs", RATES)
def test_vertex_wave_found(fs):
    x = plant(background(fs, sd=3.0), fs, 15.0, vertex(fs))
    ev = det.detect_vertex_waves(x, fs)
    assert found_near(ev, "vertex", 15.1, 0.2) == 1
    assert len(ev) <= 2


@pytest.mark.parametrize("fs", RATES)
def test_rapid_eye_movement_and_blink_told_apart(fs):
    x = plant(background(fs, sd=3.0), fs, 10.0, eye_step(fs))
    x = plant(x, fs, 30.0, blink(fs))
    ev = det.detect_eye_movements(x, fs, "E1-M2")
    assert found_near(ev, "rem", 10.1, 0.3) == 1
    assert found_near(ev, "blink", 30.1, 0.3) == 1
    assert len(ev) == 2


def two_eyes(fs, seconds=60.0):
    """LOC and ROC: their own noise, and the same (frontal) EEG reaching both."""
    common = background(fs, seconds, sd=3.0, seed=1)
    return common + background(fs, seconds, 2.0, 2), common + background(fs, seconds, 2.0, 3)


@pytest.mark.parametrize("fs", (50.0, *RATES))
def test_both_eyes_tell_conjugate_movements_from_blinks_and_eeg_by_their_phase(fs):
    loc, roc = two_eyes(fs)
    # a saccade: the eyes deflect in opposite directions, the right eye's electrode less so
    loc, roc = plant(loc, fs, 10.0, eye_step(fs)), plant(roc, fs, 10.0, -0.7 * eye_step(fs))
    # a quick glance and back: still a movement of both eyes
    glance = eye_step(fs, ptp=120.0, tau=0.05)
    loc, roc = plant(loc, fs, 20.0, glance), plant(roc, fs, 20.0, -glance)
    # a blink and a slow frontal wave reach both eyes the same way
    loc, roc = plant(loc, fs, 30.0, blink(fs)), plant(roc, fs, 30.0, 0.8 * blink(fs))
    wave = eye_step(fs, ptp=100.0, tau=0.5)
    loc, roc = plant(loc, fs, 45.0, wave), plant(roc, fs, 45.0, wave)
    both = det.detect_eye_movements(loc, fs, "LOC", other=roc)
    assert found_near(both, "rem", 10.1, 0.3) == 1 and found_near(both, "rem", 20.1, 0.3) == 1
    assert found_near(both, "blink", 30.1, 0.3) == 1
    assert len(both) == 3  # the wave both eyes share is no eye movement
    one = det.detect_eye_movements(loc, fs, "LOC")  # one eye cannot read the phase
    assert found_near(one, "rem", 45.1, 0.3) == 1


def test_the_second_eye_must_match_the_first():
    fs = 100.0
    loc, roc = two_eyes(fs)
    with pytest.raises(DataError, match="differ in length"):
        det.detect_eye_movements(loc, fs, "LOC", other=roc[: len(roc) // 2])


@pytest.mark.parametrize("fs", RATES)
def test_eye_movement_onset_is_where_the_step_starts(fs):
    """A slow dip just before a saccade is not part of it: the deflection starts where the
    fast movement does, not at the lowest point of the preceding half-second."""
    t = t_axis(fs, 0.8)
    dip = -40.0 * np.sin(np.pi * t / 0.8)
    x = plant(plant(background(fs, sd=2.0), fs, 9.3, dip), fs, 10.0, eye_step(fs))
    ev = det.detect_eye_movements(x, fs)
    rem = ev[ev["kind"] == "rem"]
    assert len(rem) == 1
    assert rem["onset"].iloc[0] == pytest.approx(10.15 - 0.06, abs=0.05)
    assert rem["duration"].iloc[0] < 0.25


@pytest.mark.parametrize("fs", RATES)
def test_slow_eye_movement_found(fs):
    t = t_axis(fs, 4.0)
    sem = -50.0 * np.sin(2 * np.pi * t / 4.0)
    ev = det.detect_slow_eye_movements(plant(background(fs, sd=3.0), fs, 20.0, sem), fs)
    assert len(ev) == 1
    assert 19.0 <= ev["onset"].iloc[0] <= 21.0
    assert ev["amplitude"].iloc[0] > 60.0


@pytest.mark.parametrize("fs", RATES)
def test_both_eyes_keep_a_conjugate_slow_movement_and_drop_a_slow_wave_both_share(fs):
    t = t_axis(fs, 4.0)
    sem = -50.0 * np.sin(2 * np.pi * t / 4.0)
    loc, roc = two_eyes(fs)
    loc, roc = plant(loc, fs, 20.0, sem), plant(roc, fs, 20.0, -0.8 * sem)
    # a slow frontal wave, e.g. delta, reaches both eyes alike
    loc, roc = plant(loc, fs, 40.0, sem), plant(roc, fs, 40.0, sem)
    both = det.detect_slow_eye_movements(loc, fs, "LOC", other=roc)
    assert len(both) == 1 and 19.0 <= both["onset"].iloc[0] <= 21.0
    assert both["amplitude"].iloc[0] > 60.0  # the conjugate part: both eyes' mean excursion
    one = det.detect_slow_eye_movements(loc, fs, "LOC")
    assert found_near(one, "sem", 41.0, 1.5) == 1  # one eye cannot tell it from an eye movement
    with pytest.raises(DataError, match="differ in length"):
        det.detect_slow_eye_movements(loc, fs, "LOC", other=roc[: len(roc) // 2])


@pytest.mark.parametrize("fs", RATES)
def test_sawtooth_train_found(fs):
    t = t_axis(fs, 3.0)
    saw = 30.0 * sps.sawtooth(2 * np.pi * 3.0 * t, width=0.15)
    ev = det.detect_sawtooth(plant(background(fs, sd=3.0), fs, 20.0, saw), fs)
    assert found_near(ev, "sawtooth", 20.5, 1.0) >= 1
    assert ev["onset"].between(19.0, 23.0).all()


@pytest.mark.parametrize("fs", (50.0, *RATES))
def test_alpha_stretch_found(fs):
    t = t_axis(fs, 12.0)
    x = plant(background(fs, sd=3.0), fs, 20.0, 20.0 * np.sin(2 * np.pi * 10.0 * t))
    ev = det.detect_alpha(x, fs)
    assert len(ev) == 1
    assert ev["onset"].iloc[0] == pytest.approx(20.0, abs=1.5)
    assert ev["duration"].iloc[0] == pytest.approx(12.0, abs=3.0)


@pytest.mark.parametrize("fs", RATES)
def test_band_powers_put_a_sine_in_its_band(fs):
    t = t_axis(fs, 20.0)
    powers = det.band_powers(20.0 * np.sin(2 * np.pi * 6.0 * t), fs)
    assert len(powers) == 20
    middle = powers.iloc[2:-2]
    assert np.allclose(middle["theta"], 200.0, rtol=0.1)  # a sine of amplitude A has A²/2
    assert (middle["theta"] > 50 * middle[["delta", "alpha", "beta"]].max(axis=1)).all()


@pytest.mark.parametrize("fs", (50.0, *RATES))
def test_fast_seconds_tell_an_unslowed_eeg_from_a_slowed_one(fs):
    t = t_axis(fs, 20.0)
    awake = 10.0 * np.sin(2 * np.pi * 10.0 * t) + 6.0 * np.sin(2 * np.pi * 20.0 * t)
    slowed = awake + 20.0 * np.sin(2 * np.pi * 6.0 * t)
    assert det.fast_seconds(det.band_powers(awake, fs)).all()
    assert not det.fast_seconds(det.band_powers(slowed, fs)).any()


@pytest.mark.parametrize("fs", RATES)
def test_noise_gives_few_events(fs):
    x = background(fs, seconds=300.0, sd=8.0, seed=3)
    per_min = 60.0 / 300.0
    assert len(det.detect_spindles(x, fs)) * per_min <= 0.5
    assert len(det.detect_slow_waves(x, fs)) == 0
    assert len(det.detect_kcomplexes(x, fs)) == 0
    assert len(det.detect_eye_movements(x, fs)) * per_min <= 0.5
    assert len(det.detect_sawtooth(x, fs)) * per_min <= 0.5


def test_slow_wave_amplitude_boundary_is_inclusive():
    assert det.is_slow_wave([75.0, 74.999, 200.0], [1.0, 1.0, 1.0]).tolist() == [
        True,
        False,
        True,
    ]
    # 0.5-2 Hz: durations 0.5 and 2 s are in, just outside is out
    assert det.is_slow_wave([100.0] * 4, [0.5, 2.0, 0.49, 2.01]).tolist() == [
        True,
        True,
        False,
        False,
    ]


def test_slow_wave_detector_respects_75_uv_on_signals():
    fs = 100.0
    x = np.zeros(int(30 * fs))
    x = plant(x, fs, 5.0, slow_wave(fs, 85.0))
    x = plant(x, fs, 15.0, slow_wave(fs, 65.0))
    ev = det.detect_slow_waves(x, fs)
    assert ev["onset"].round().tolist() == [5.0]


def test_thresholds_come_from_the_rules_passed():
    fs = 128.0
    x = plant(background(fs, sd=2.0), fs, 20.0, slow_wave(fs, 150.0))
    assert len(det.detect_slow_waves(x, fs)) == 1
    higher = table.DEFAULT_RULES.with_thresholds("N3.sw20", min_ptp_uv=200.0)
    assert len(det.detect_slow_waves(x, fs, rules=higher)) == 0

    y = plant(background(fs), fs, 30.0, spindle(fs, freq=13.0))
    assert len(det.detect_spindles(y, fs)) == 1
    faster = table.DEFAULT_RULES.with_thresholds("N2.spindle", band_hz=(14.5, 16.0))
    assert len(det.detect_spindles(y, fs, rules=faster)) == 0
    assert len(det.detect_spindles(y, fs)) == 1  # the default is untouched


def test_detector_setting_changes_output():
    fs = 200.0
    x = plant(background(fs, sd=3.0), fs, 10.0, eye_step(fs, ptp=60.0))
    assert found_near(det.detect_eye_movements(x, fs), "rem", 10.1, 0.3) == 1
    larger = table.DEFAULT_RULES.with_settings("eye_movements", min_ptp_uv=80.0)
    assert len(det.detect_eye_movements(x, fs, rules=larger)) == 0


def test_eeg_reference_drops_cerebral_deflections():
    fs = 200.0
    eeg = plant(background(fs, sd=3.0), fs, 10.0, eye_step(fs) * 2)
    eog = 0.55 * eeg  # frontal EEG leaking into the EOG, no eye movement
    assert len(det.detect_eye_movements(eog, fs)) == 1
    assert len(det.detect_eye_movements(eog, fs, eeg=eeg, eeg_sfreq=fs)) == 0


def test_emg_tone_marks_the_lowest_epochs():
    rms = np.r_[np.full(20, 5.0), np.full(5, 0.8), np.full(5, 12.0)]
    tone = det.emg_tone(rms)
    assert tone["emg_low"].tolist() == [0.0] * 20 + [1.0] * 5 + [0.0] * 5
    assert tone["emg_quantile"].iloc[-1] > tone["emg_quantile"].iloc[0]
    assert tone["emg_rel"].iloc[0] == pytest.approx(1.0)


def test_emg_seconds_rms_measures_band_limited_amplitude():
    fs = 256.0
    t = t_axis(fs, 10.0)
    x = 10.0 * np.sin(2 * np.pi * 25.0 * t) + 50.0 * np.sin(2 * np.pi * 1.0 * t)
    rms = det.emg_seconds_rms(x, fs, "CHIN")
    assert np.allclose(rms[1:-1], 10.0 / np.sqrt(2), rtol=0.05)  # 1 Hz is outside 10-45 Hz


def test_movement_detected_on_large_artifact():
    fs = 100.0
    rng = np.random.default_rng(1)
    x = plant(background(fs, sd=3.0), fs, 20.0, 100.0 * rng.standard_normal(int(5 * fs)))
    ev = det.detect_movements(x, fs)
    assert len(ev) == 1
    assert ev["onset"].iloc[0] == pytest.approx(20.0, abs=1.0)


@pytest.mark.parametrize(
    ("fn", "fs", "minimum"),
    [
        (det.detect_spindles, 30.0, "35.2"),
        (det.emg_seconds_rms, 40.0, "44"),
        (det.band_powers, 30.0, "35.2"),
        (det.detect_movements, 40.0, "44"),
    ],
)
def test_low_sampling_rate_raises_naming_channel_rate_and_minimum(fn, fs, minimum):
    with pytest.raises(DataError, match=rf"'CH1'.*{fs:g} Hz.*{minimum} Hz"):
        fn(np.zeros(int(60 * fs)), fs, "CH1")


EVERY_DETECTOR = (
    det.band_powers,
    det.detect_alpha,
    det.detect_arousals,
    det.detect_movements,
    det.detect_spindles,
    det.detect_kcomplexes,
    det.detect_slow_waves,
    det.detect_vertex_waves,
    det.detect_sawtooth,
    det.detect_eye_movements,
    det.detect_slow_eye_movements,
    det.emg_seconds_rms,
)


@pytest.mark.parametrize("fn", EVERY_DETECTOR, ids=lambda fn: fn.__name__)
def test_every_detector_runs_at_50_hz(fn):
    # an old archive's rate: every band a criterion needs fits below 50 / 2.2 = 22.7 Hz
    out = fn(background(50.0), 50.0, "CH1")
    if fn in (det.band_powers, det.emg_seconds_rms):
        assert len(out) == 60  # one row per second
    else:
        assert list(out.columns) == list(EVENT_COLUMNS)


def test_band_powers_at_50_hz_end_where_the_recording_does():
    fs = 50.0
    t = t_axis(fs, 20.0)
    middle = det.band_powers(20.0 * np.sin(2 * np.pi * 20.0 * t), fs).iloc[2:-2]
    # 20 Hz lies in beta (16-30 Hz), which a 50-Hz recording holds up to 22.7 Hz
    assert np.allclose(middle["beta"], 200.0, rtol=0.1)
    assert np.allclose(middle["total"], middle["beta"], rtol=0.05)


def test_emg_rms_at_50_hz_reads_the_band_up_to_where_the_recording_ends():
    fs = 50.0
    t = t_axis(fs, 10.0)
    x = 10.0 * np.sin(2 * np.pi * 15.0 * t) + 50.0 * np.sin(2 * np.pi * 1.0 * t)
    rms = det.emg_seconds_rms(x, fs, "EMG1")
    assert np.allclose(rms[1:-1], 10.0 / np.sqrt(2), rtol=0.05)


def test_rate_shortfall_names_channel_rate_and_need():
    assert det.rate_shortfall("spindle", "C3", 50.0) is None
    why = det.rate_shortfall("emg_tone", "EMG submental", 1.0)
    assert "'EMG submental'" in why and "1 Hz" in why and "44 Hz" in why
    assert table.DEFAULT_RULES.setting("emg_tone", "min_sfreq") == table.rate_for(20.0)


def test_bad_signals_raise():
    with pytest.raises(DataError, match="NaN"):
        det.detect_slow_waves(np.full(1000, np.nan), 100.0, "EEG")
    with pytest.raises(DataError, match="at least"):
        det.detect_spindles(np.zeros(50), 100.0, "EEG")
    with pytest.raises(DataError, match="1-D"):
        det.detect_slow_waves(np.zeros((2, 1000)), 100.0, "EEG")
