"""MASS loader: Base.edf annotations that start after the signal (hypnogram offset), LER
reference naming, and the refusal of 20-s-epoch subsets."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from sleepvlm.data.edf import write_edf
from sleepvlm.data.mass import load_mass, mass_subject
from sleepvlm.data.records import DataError, Recording

START = dt.datetime(2003, 5, 1, 23, 0, 0)


def mass_night(
    tmp_path, annotations, names=("EEG C4-LER", "EOG Left Horiz", "EMG Chin2"), base_start=START
):
    rng = np.random.default_rng(8)
    signals = {n: rng.normal(0, 25, 256 * 200) for n in names}
    psg = write_edf(
        tmp_path / "01-03-0042 PSG.edf", signals, dict.fromkeys(names, 256.0), start=START
    )
    base = write_edf(
        tmp_path / "01-03-0042 Base.edf", {}, {}, annotations=annotations, start=base_start
    )
    return psg, base


def epochs(first_onset, codes, length=30.0):
    return [(first_onset + i * length, length, c) for i, c in enumerate(codes)]


def test_offset_and_ler_reference(tmp_path):
    codes = [
        "Sleep stage W",
        "Sleep stage 1",
        "Sleep stage 2",
        "Sleep stage 3",
        "Sleep stage R",
        "Sleep stage ?",
    ]
    rec = load_mass(*mass_night(tmp_path, epochs(4.2, codes)))
    assert (rec.subject, rec.night, rec.line_freq) == ("01-03-0042", "1", 60)
    assert rec.roles == {"eeg": "EEG C4-LER", "eog": "EOG Left Horiz", "emg": "EMG Chin2"}
    assert rec.hypnogram_offset == pytest.approx(4.2)
    assert list(rec.stages) == ["W", "N1", "N2", "N3", "REM", "UNKNOWN"]


def test_a_base_file_starting_later_shifts_the_offset(tmp_path):
    later = START + dt.timedelta(seconds=10)
    night = mass_night(tmp_path, epochs(0.0, ["Sleep stage W"] * 3), base_start=later)
    with pytest.warns(UserWarning, match="ends 90 s before the signal"):
        rec = load_mass(*night)
    assert rec.hypnogram_offset == 10.0


def test_hypnogram_running_past_the_signal_is_truncated(tmp_path):
    with pytest.warns(UserWarning, match="hypnogram has 7 epochs .* holds 6"):
        rec = load_mass(*mass_night(tmp_path, epochs(15.0, ["Sleep stage 2"] * 7)))
    assert len(rec.stages) == 6


def test_twenty_second_epochs_are_refused(tmp_path):
    psg, base = mass_night(tmp_path, epochs(0.0, ["Sleep stage 2"] * 6, length=20.0))
    with pytest.raises(DataError, match="scored in 20-s epochs \\(MASS SS1/SS2"):
        load_mass(psg, base)


def test_subject_names():
    rec = Recording(dataset="mass", subject="12", night="1", signals={}, sfreq={}, stages=[])
    assert mass_subject(rec) == "01-03-0012"
    rec.subject = "subject-a"
    with pytest.raises(DataError, match="'NN-NN-NNNN'"):
        mass_subject(rec)
