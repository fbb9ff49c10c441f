"""Tests of detect_all: per-epoch criteria and their evidence, on Recordings and Epochs, with
missing, flat, clipped or slowly sampled channels."""

import warnings

import numpy as np
import pandas as pd
import pytest

from sleepvlm.data.records import DataError, Recording
from sleepvlm.rules.evidence import Detection, detect_all, epoch_coverage
from sleepvlm.rules.stager import stage_detection
from sleepvlm.rules.table import DEFAULT_RULES, RuleSet
from sleepvlm.signal import epoch_recording

CHANNELS = {"eeg": "C4-A1", "eog": "LOC-A2", "emg": "X1"}


def pink(n, fs, sd, rng):
    freqs = np.fft.rfftfreq(n, 1 / fs)
    shape = np.where((freqs >= 0.5) & (freqs <= 40.0), 1 / np.sqrt(np.maximum(freqs, 0.5)), 0)
    x = np.fft.irfft(
        (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))) * shape, n
    )
    return x / x.std() * sd


def night(fs=200.0, emg_fs=None, roles=("eeg", "eog", "emg"), n_epochs=5, seed=0):
    """Epoch 0: a spindle at 5 s; epoch 1: 8 s of slow waves; epoch 2: 4 s of them;
    epoch 3: a rapid eye movement at 100 s and atonia; epoch 4: background only."""
    rng = np.random.default_rng(seed)
    n = int(30 * n_epochs * fs)
    t = np.arange(n) / fs
    eeg = pink(n, fs, 4.0, rng)
    spindle = (t >= 5) & (t < 6.2)
    eeg += spindle * 20 * np.sin(2 * np.pi * 13 * t) * np.sin(np.pi * (t - 5) / 1.2) ** 2
    eeg += ((t >= 40) & (t < 48)) * -75 * np.sin(2 * np.pi * (t - 40))
    eeg += ((t >= 70) & (t < 74)) * -75 * np.sin(2 * np.pi * (t - 70))
    eog = pink(n, fs, 3.0, rng)
    step = t - 100.0
    eog += 150 * (1 + np.tanh((step - 0.15) / 0.03)) / 2 * np.exp(-np.maximum(step - 0.15, 0))
    emg_rate = emg_fs or fs
    m = int(30 * n_epochs * emg_rate)
    emg = rng.standard_normal(m) * np.where(np.arange(m) / emg_rate // 30 == 3, 1.0, 10.0)
    signals = {"eeg": eeg, "eog": eog, "emg": emg}
    rates = {"eeg": fs, "eog": fs, "emg": emg_rate}
    return Recording(
        dataset="test",
        subject="s1",
        night="n1",
        signals={CHANNELS[r]: signals[r] for r in roles},
        sfreq={CHANNELS[r]: rates[r] for r in roles},
        stages=np.array(["N2"] * n_epochs, dtype=object),
        roles={r: CHANNELS[r] for r in roles},
        line_freq=50.0,
    )


@pytest.fixture(scope="module")
def full() -> Detection:
    return detect_all(night())


def test_criteria_follow_planted_events(full):
    c = full.criteria
    assert c["N2.spindle"].tolist() == [True, False, False, False, False]
    assert c["N3.sw20"].tolist() == [False, True, False, False, False]
    assert c["R.rem"].tolist() == [False, False, False, True, False]
    assert c["R.atonia"].tolist() == [False, False, False, True, False]
    assert full.epochs["sw_coverage"].iloc[1] == pytest.approx(8 / 30, abs=0.04)
    assert full.epochs["sw_coverage"].iloc[2] == pytest.approx(4 / 30, abs=0.04)
    assert full.not_evaluable == {}
    assert set(full.seconds) >= {"spindle", "slow_wave", "eye_movements", "emg_tone"}


def test_rules_met_and_their_evidence(full):
    assert {"N3.sw20"} <= set(full.rules_met(1))
    evidence = full.evidence(1, "N3.sw20")
    assert (evidence["kind"] == "slow_wave").all() and len(evidence) >= 7
    assert evidence["onset"].between(39.5, 48.5).all()
    spindles = full.evidence(1, "N2.spindle")  # the previous epoch's second half does not hold it
    assert len(spindles) == 0 and len(full.evidence(0, "N2.spindle")) == 1
    assert full.evidence(3, "R.rem")["onset"].iloc[0] == pytest.approx(100.1, abs=0.3)
    assert full.evidence(3, "R.atonia").empty


def test_coverage_rule_boundary():
    onsets = np.array([0.0, 30.0])
    six = epoch_coverage(onsets, np.arange(6.0), np.ones(6))
    assert six.tolist() == [pytest.approx(0.2), 0.0]
    spill = epoch_coverage(onsets, np.array([29.5]), np.array([1.0]))
    assert spill.tolist() == [pytest.approx(0.5 / 30), pytest.approx(0.5 / 30)]


def colored(n, fs, sd, exponent, rng):
    """Gaussian noise of ``sd`` µV whose power falls as 1/f**exponent from 0.5 to 40 Hz."""
    freqs = np.fft.rfftfreq(n, 1 / fs)
    band = (freqs >= 0.5) & (freqs <= 40.0)
    shape = np.where(band, np.maximum(freqs, 0.5) ** (-exponent / 2), 0)
    x = np.fft.irfft(
        (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))) * shape, n
    )
    return x / x.std() * sd


@pytest.mark.parametrize("exponent, awake", [(1.0, True), (2.5, False)])
def test_a_k_complex_counts_in_a_slowed_eeg_only(exponent, awake):
    # an awake EEG keeps its fast activity (a flat, 1/f spectrum); sleep slows it (steeper)
    fs = 100.0
    t = np.arange(int(90 * fs)) / fs
    eeg = colored(len(t), fs, 6.0, exponent, np.random.default_rng(1))
    kc = -np.exp(-(((t - 40.3) / 0.11) ** 2)) + 0.55 * np.exp(-(((t - 40.65) / 0.16) ** 2))
    eeg += 150 * kc / np.ptp(kc)
    rec = Recording(
        dataset="test",
        subject="s1",
        night="n1",
        signals={"F4-A1": eeg},
        sfreq={"F4-A1": fs},
        stages=np.array(["W"] * 3, dtype=object),
        roles={"eeg": "F4-A1"},
    )
    result = detect_all(rec)
    assert result.epochs["n_kcomplex"].tolist() == [0, 1, 0]  # the wave is found either way
    assert result.criteria["W.fast"].tolist() == [awake] * 3
    assert result.criteria["N2.kcomplex"].tolist()[1] is (not awake)


def test_both_eyes_are_read_when_the_recording_has_them_and_one_eye_is_reported():
    rec = night()
    loc = rec.signals["LOC-A2"]
    t = np.arange(len(loc)) / 200.0
    # the second eye: the first's movement at 100 s mirrored; at 20 s a slow frontal wave
    # reaches both eyes alike (one eye takes its steep edge for an eye movement)
    roc = -0.8 * loc + pink(len(loc), 200.0, 2.0, np.random.default_rng(5))
    wave = ((t >= 20) & (t < 22)) * 120 * np.exp(-np.maximum(t - 20.1, 0) / 0.5)
    wave *= (1 + np.tanh((t - 20.1) / 0.03)) / 2
    rec.signals["LOC-A2"], roc = loc + wave, roc + wave
    one = detect_all(rec)
    assert one.read_in_part["R.rem"] == (
        "one eye (LOC-A2), blinks and EEG told from eye movements by their shape: no second "
        "EOG channel"
    )
    rec.signals["ROC-A1"], rec.sfreq["ROC-A1"] = roc, 200.0
    rec.roles["eog2"] = "ROC-A1"
    both = detect_all(rec)
    assert "R.rem" not in both.read_in_part and both.not_evaluable == {}
    assert both.epochs["n_rem"].tolist() == [0, 0, 0, 1, 0]
    assert one.epochs["n_rem"].tolist()[:1] == [1]  # the shared wave, on one eye
    rec.sfreq["ROC-A1"] = 100.0
    assert "sampled at 100 Hz, not 200" in detect_all(rec).read_in_part["R.rem"]


def test_missing_eog_and_emg_leave_their_rules_not_evaluable():
    result = detect_all(night(roles=("eeg",)))
    for rule in ("R.rem", "R.atonia", "W.eyes", "N1.sem", "R.cont"):
        assert result.criteria[rule].isna().all()
        assert "no EOG" in result.not_evaluable[rule] or "no EMG" in result.not_evaluable[rule]
    assert result.criteria["N3.sw20"].tolist() == [False, True, False, False, False]


def test_flat_channel_reported_and_clipped_epochs_blanked():
    rec = night()
    rec.signals["LOC-A2"][:] = 0.0
    eeg = rec.signals["C4-A1"]
    fs = rec.sfreq["C4-A1"]
    eeg[int(120 * fs) : int(150 * fs)] = np.clip(eeg[int(120 * fs) : int(150 * fs)], -2.0, 2.0)
    eeg[int(121 * fs) : int(130 * fs) : 7] = eeg.max()  # epoch 4 often at the rail
    result = detect_all(rec)
    assert "flat" in result.not_evaluable["R.rem"]
    assert result.criteria["R.rem"].isna().all()
    assert result.criteria["N3.sw20"].isna().tolist() == [False, False, False, False, True]
    assert result.epochs["eeg_ok"].tolist() == [True, True, True, True, False]


def test_too_slow_emg_reported_or_raised():
    rec = night(emg_fs=20.0)
    result = detect_all(rec)
    assert result.criteria["R.atonia"].isna().all()
    assert "'X1' is sampled at 20 Hz, below the 44 Hz" in result.not_evaluable["R.atonia"]
    assert result.criteria["N2.spindle"].notna().all()
    with pytest.raises(DataError, match="'X1'.*20 Hz.*44 Hz"):
        detect_all(rec, strict=True)


def test_a_50_hz_night_evaluates_every_rule():
    result = detect_all(night(fs=50.0))
    assert result.not_evaluable == {}
    assert result.criteria["N2.spindle"].tolist()[0]
    assert result.criteria["N3.sw20"].tolist() == [False, True, False, False, False]
    assert result.criteria["R.rem"].tolist()[3] and result.criteria["R.atonia"].tolist()[3]


def test_the_native_rate_decides_what_a_resampled_channel_can_give():
    # a 30-Hz EEG brought to 200 Hz holds nothing above 15 Hz: no spindle band, no band powers
    result = detect_all(night(), native_sfreq={"eeg": 30.0})
    for name in ("spindle", "band_power", "alpha", "N2.spindle", "W.alpha", "N1.lamf"):
        assert "30 Hz" in result.not_evaluable[name], name
    assert "'C4-A1' is sampled at 30 Hz, below the 35.2 Hz" in result.not_evaluable["spindle"]
    assert "N3.sw20" not in result.not_evaluable  # slow waves fit
    assert result.criteria["N3.sw20"].tolist() == [False, True, False, False, False]
    with pytest.raises(DataError, match="30 Hz"):
        detect_all(night(), native_sfreq={"eeg": 30.0}, strict=True)


def test_a_channel_no_detector_can_read_is_left_out_with_its_rate():
    result = detect_all(night(), native_sfreq={"emg": 1.0})
    why = result.not_evaluable["R.atonia"]
    assert "EMG 'X1' is sampled at 1 Hz" in why and "RMS envelope" in why
    assert "emg_tone" not in result.not_evaluable  # left out as a channel, not run
    # W.eyes is read without its chin part: blinks alone, and says so
    assert "W.eyes" not in result.not_evaluable
    how = result.read_in_part["W.eyes"]
    assert how.startswith("blinks alone") and "1 Hz" in how
    assert result.criteria["W.eyes"].notna().all()


def test_an_event_reported_twice_is_counted_once(monkeypatch):
    from sleepvlm.rules import detectors as det

    one_rem = pd.DataFrame(
        {"kind": "rem", "channel": "LOC-A2", "onset": 100.1, "duration": 0.2, "amplitude": 80.0},
        index=[0],
    )
    twice = pd.concat([one_rem, one_rem], ignore_index=True)
    monkeypatch.setattr(det, "detect_eye_movements", lambda *args, **kwargs: twice)
    result = detect_all(night())
    assert (result.events["kind"] == "rem").sum() == 1
    assert result.epochs["n_rem"].tolist() == [0, 0, 0, 1, 0]


def test_recording_shorter_than_an_epoch_raises():
    rec = night()
    short = Recording(
        dataset="test", subject="s1", night="n1",
        signals={c: x[: int(20 * rec.sfreq[c])] for c, x in rec.signals.items()},
        sfreq=rec.sfreq, stages=np.array(["W"], dtype=object), roles=rec.roles,
    )  # fmt: skip
    with pytest.raises(DataError, match="no full 30-s epoch"):
        detect_all(short)


def test_epochs_input_matches_recording_and_drops_events_across_gaps():
    rec = night(fs=200.0)
    rec.stages[2] = "MOVE"  # leaves a gap between epochs 1 and 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        epochs = epoch_recording(rec)
    result = detect_all(epochs)
    assert result.criteria.index.tolist() == [0, 1, 3, 4]
    assert result.criteria.loc[[1, 3], ["N3.sw20", "R.rem"]].values.tolist() == [
        [True, False],
        [False, True],
    ]
    assert result.events["epoch"].isin([0, 1, 3, 4]).all()


def test_epochs_shorter_than_30_s_raise():
    rec = night()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        epochs = epoch_recording(rec)
    epochs.data = epochs.data[:, :, :2000]
    with pytest.raises(DataError, match="shorter than 30 s"):
        detect_all(epochs)


def test_evidence_frame_columns(full):
    assert list(full.events.columns) == [
        "kind",
        "channel",
        "onset",
        "duration",
        "amplitude",
        "epoch",
    ]
    assert isinstance(full.criteria["N3.sw20"].dtype, pd.BooleanDtype)


def test_detection_reads_only_the_rules_it_is_given(monkeypatch):
    # every threshold and setting of a run comes from the rule set passed to detect_all: a
    # detector reading the default instead would ignore a reader's variant without a word
    rec = night()
    loc = rec.signals["LOC-A2"]
    rec.signals["ROC-A1"], rec.sfreq["ROC-A1"] = -0.8 * loc, 200.0
    rec.roles["eog2"] = "ROC-A1"
    read_from_default = []
    for name in ("setting", "threshold"):
        original = getattr(RuleSet, name)

        def recording(self, *key, original=original):
            if self is DEFAULT_RULES:
                read_from_default.append(key)
            return original(self, *key)

        monkeypatch.setattr(RuleSet, name, recording)
    variant = DEFAULT_RULES.with_settings("spindle", upper_factor=2.5)
    detection = detect_all(rec, rules=variant)
    stage_detection(detection)
    assert read_from_default == []
    assert len(detection.events) > 0  # the detectors ran
    detect_all(rec)
    assert read_from_default  # the check sees reads of the default


def test_a_rules_example_epoch_is_drawn_with_its_evidence_shaded():
    import matplotlib

    matplotlib.use("Agg")
    from sleepvlm.rules.plots import plot_rule_example, rule_example_epoch

    rec = night()
    detection = detect_all(rec)
    staged = stage_detection(detection)
    rng = np.random.default_rng(0)
    epoch = rule_example_epoch("R.rem", detection, staged, rng)
    assert epoch == 3  # the one epoch with a rapid eye movement
    assert rule_example_epoch("R.sawtooth", detection, staged, rng) is None
    scored = pd.Series(rec.stages, index=range(len(rec.stages)))
    fig = plot_rule_example("R.rem", epoch, rec, detection, staged, scored)
    eog_axis = fig.axes[list(rec.roles).index("eog")]
    assert len(eog_axis.patches) == 1  # the movement at 100 s, 10 s into the epoch
    assert all(len(ax.patches) == 0 for ax in fig.axes if ax is not eog_axis)
    assert "R.rem: epoch 3, scored N2" in fig._suptitle.get_text()
