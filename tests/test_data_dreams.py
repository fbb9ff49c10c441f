"""DREAMS Sleep Spindles reader on the real excerpts and on small damaged copies."""

from __future__ import annotations

import numpy as np
import pytest

from sleepvlm.data.dreams import (
    EXCERPT_S,
    read_dreams_eeg,
    read_dreams_hypnogram,
    read_dreams_spindles,
    read_eeg_file,
    read_hypnogram_file,
    read_spindle_file,
    to_30s_epochs,
)
from sleepvlm.data.records import EVENT_COLUMNS, STAGES, UNKNOWN, CorruptFileError, DataError


def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_real_eeg_rates_channels_and_scale():
    read = {n: read_dreams_eeg(n) for n in (1, 2, 3, 4)}
    assert {n: (sfreq, ch) for n, (_, sfreq, ch) in read.items()} == {
        1: (100.0, "C3-A1"),
        2: (200.0, "CZ-A1"),
        3: (50.0, "C3-A1"),
        4: (200.0, "CZ-A1"),
    }
    for x, sfreq, _ in read.values():
        assert len(x) / sfreq == EXCERPT_S
        assert 15 < np.std(x) < 35  # µV, not volts or mV
    assert read[1][0][:2] == pytest.approx([-0.9562, -0.8962])


def test_real_spindle_scorings_as_events():
    counts = {(n, e): len(read_dreams_spindles(n, e)) for n in (1, 2, 3, 4) for e in (1, 2)}
    assert [counts[n, 1] for n in (1, 2, 3, 4)] == [52, 60, 5, 44]
    assert [counts[n, 2] for n in (1, 2, 3, 4)] == [115, 52, 44, 25]
    first = read_dreams_spindles(1, 1)
    assert list(first.columns) == list(EVENT_COLUMNS)
    assert (first["kind"] == "spindle").all() and (first["channel"] == "C3-A1").all()
    assert first[["onset", "duration"]].iloc[0].tolist() == [282.24, 0.72]
    assert first["onset"].is_monotonic_increasing and first["amplitude"].isna().all()
    # expert 2 gives a nominal 1-s extent to (nearly) every spindle
    assert (read_dreams_spindles(2, 2)["duration"] == 1.0).all()


def test_real_hypnograms_in_5s_steps_and_30s_epochs():
    labels = read_dreams_hypnogram(1)
    assert len(labels) == 360 and set(labels) <= set(STAGES)
    assert list(labels[:2]) == ["W", "W"]  # code 5
    assert dict(zip(*np.unique(labels, return_counts=True), strict=True)) == {
        "W": 56,
        "N1": 12,
        "N2": 220,
        "N3": 72,  # R&K stages 3 (12 steps) and 4 (60)
    }
    epochs = to_30s_epochs(labels)
    assert len(epochs) == 60 and epochs[0] == "W"


def test_30s_majority_and_tie_rule():
    steps = ["N2", "N3", "N3", "N2", "N2", "N3"]  # 3-3 tie: N2 came first
    steps += ["N3", "N3", "N2", "N2", "N2", "N3"]  # 3-3 tie: N3 came first
    steps += ["W", "N1", "N1", "N1", "N1", "W"]  # majority N1
    steps += [UNKNOWN] * 4 + ["N2"] * 2  # unscored steps outvote
    assert list(to_30s_epochs(np.array(steps))) == ["N2", "N3", "N1", UNKNOWN]
    with pytest.raises(DataError, match="multiple of 6"):
        to_30s_epochs(np.array(["W"] * 7))


def test_eeg_file_errors_name_the_file(tmp_path):
    no_header = write(tmp_path, "no_header.txt", ["1.0", "2.0"])
    with pytest.raises(CorruptFileError, match=r"no_header.txt: expected a DREAMS EEG file"):
        read_eeg_file(no_header)
    empty = write(tmp_path, "empty.txt", [""])
    with pytest.raises(CorruptFileError, match="empty.txt.*an empty file"):
        read_eeg_file(empty)
    text = write(tmp_path, "text.txt", ["[C3-A1]", "1.0", " abc", "2.0"])
    with pytest.raises(CorruptFileError, match=r"text.txt, line 3: ' abc' is not a finite"):
        read_eeg_file(text)
    short = write(tmp_path, "short.txt", ["[C3-A1]"] + ["1.0"] * 1000)
    with pytest.raises(CorruptFileError, match=r"short.txt: 1000 samples .*90000 \(50 Hz\)"):
        read_eeg_file(short)
    with pytest.raises(DataError, match="does not exist"):
        read_eeg_file(tmp_path / "missing.txt")


def test_eeg_file_rate_comes_from_the_sample_count(tmp_path):
    path = write(tmp_path, "x.txt", ["[FP1-A1]"] + ["  -1.5"] * int(EXCERPT_S * 50))
    x, sfreq, channel = read_eeg_file(path)
    assert (sfreq, channel, len(x), x[0]) == (50.0, "FP1-A1", 90000, -1.5)


def test_spindle_file_errors(tmp_path):
    header = "[vis1_Spindles/C3-A1]"
    good = write(tmp_path, "good.txt", [header, "  20.0\t 0.5", "  10.0\t 1.5"])
    assert read_spindle_file(good, 1)["onset"].tolist() == [10.0, 20.0]  # sorted
    with pytest.raises(CorruptFileError, match="good.txt: header names expert 1 but expert 2"):
        read_spindle_file(good, 2)
    with pytest.raises(CorruptFileError, match="eeg.txt: expected a DREAMS spindle scoring"):
        read_spindle_file(write(tmp_path, "eeg.txt", ["[C3-A1]", "1.0"]), 1)
    one = write(tmp_path, "one.txt", [header, "10.0 1.0", "12.0"])
    with pytest.raises(CorruptFileError, match=r"one.txt, line 3: expected 'onset duration'"):
        read_spindle_file(one, 1)
    text = write(tmp_path, "text.txt", [header, "10.0 x"])
    with pytest.raises(CorruptFileError, match=r"text.txt, line 2: 'x' is not a finite"):
        read_spindle_file(text, 1)
    zero = write(tmp_path, "zero.txt", [header, "10.0 1.0", "11.0 0.0"])
    with pytest.raises(CorruptFileError, match=r"zero.txt, line 3: a spindle needs"):
        read_spindle_file(zero, 1)


def test_hypnogram_file_codes_and_errors(tmp_path):
    codes = ["5", "4", "3", "2", "1", "0", "-1"] + ["2"] * 353
    labels = read_hypnogram_file(write(tmp_path, "h.txt", ["[Hypnogram]"] + codes))
    assert list(labels[:7]) == ["W", "REM", "N1", "N2", "N3", "N3", UNKNOWN]
    unknown = write(tmp_path, "bad_code.txt", ["[Hypnogram]", "2", "7"] + ["2"] * 358)
    with pytest.raises(CorruptFileError, match=r"bad_code.txt, line 3: stage code '7'"):
        read_hypnogram_file(unknown)
    short = write(tmp_path, "short.txt", ["[Hypnogram]"] + ["2"] * 359)
    with pytest.raises(CorruptFileError, match=r"short.txt: 359 stages, expected 360"):
        read_hypnogram_file(short)
    with pytest.raises(CorruptFileError, match="header.txt: expected a DREAMS hypnogram"):
        read_hypnogram_file(write(tmp_path, "header.txt", ["[Stages]"] + ["2"] * 360))


def test_unknown_excerpt_or_expert():
    with pytest.raises(DataError, match="excerpt 5 is not available; choose one of 1, 2, 3, 4"):
        read_dreams_eeg(5)
    with pytest.raises(DataError, match="expert 3 is not available"):
        read_dreams_spindles(1, 3)
