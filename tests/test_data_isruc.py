"""ISRUC-Sleep loader on hand-built .rec/.txt files (both scorers, both montage namings)."""

from __future__ import annotations

import numpy as np
import pytest

from sleepvlm.data.edf import write_edf
from sleepvlm.data.isruc import load_isruc, subject_and_night, write_isruc
from sleepvlm.data.records import ChannelNotFoundError, CorruptFileError, DataError, Recording

M_NAMES = ["E1-M2", "E2-M1", "F3-M2", "C3-M2", "O1-M2", "F4-M1", "C4-M1", "O2-M1", "X1", "X2"]


def night(tmp_path, names=M_NAMES, scorer1="0\n1\n2\n3\n5\n\n", scorer2="0\n0\n2\n3\n5\n"):
    folder = tmp_path / "12"
    rng = np.random.default_rng(6)
    signals = {n: rng.normal(0, 20, 200 * 150) for n in names}
    path = write_edf(folder / "12.rec", signals, dict.fromkeys(names, 200.0))
    (folder / "12_1.txt").write_text(scorer1)
    if scorer2 is not None:
        (folder / "12_2.txt").write_text(scorer2)
    return path


def test_both_scorers_and_mastoid_channel_names(tmp_path):
    rec = load_isruc(night(tmp_path))
    assert (rec.subject, rec.night, rec.line_freq) == ("12", "1", 50)
    assert rec.roles == {"eeg": "C4-M1", "eog": "E1-M2", "eog2": "E2-M1", "emg": "X1"}
    assert set(rec.signals) == {"C4-M1", "E1-M2", "E2-M1", "X1"}
    assert list(rec.stages) == ["W", "N1", "N2", "N3", "REM"]
    assert list(rec.other_scorers["scorer2"]) == ["W", "W", "N2", "N3", "REM"]


def test_unknown_codes_are_counted_for_the_first_scorer(tmp_path):
    with pytest.warns(UserWarning, match=r"12_1.txt: unrecognised stage codes '4' ×1, '9' ×1"):
        rec = load_isruc(night(tmp_path, scorer1="0\n4\n2\n9\n5\n", scorer2=None))
    assert rec.unknown_codes == {"4": 1, "9": 1}
    assert list(rec.stages) == ["W", "UNKNOWN", "N2", "UNKNOWN", "REM"]
    assert rec.other_scorers == {}


def test_scorer_longer_than_the_signal_is_truncated(tmp_path):
    with pytest.warns(UserWarning, match="12_1.txt: hypnogram has 7 epochs"):
        rec = load_isruc(night(tmp_path, scorer1="0\n" * 7, scorer2=None))
    assert len(rec.stages) == 5


def test_explicit_scorer_paths_and_missing_scorers(tmp_path):
    path = night(tmp_path)
    rec = load_isruc(path, scorer_paths=[path.with_name("12_2.txt")])
    assert list(rec.stages) == ["W", "W", "N2", "N3", "REM"]
    path.with_name("12_1.txt").unlink()
    path.with_name("12_2.txt").unlink()
    with pytest.raises(DataError, match="no scorer file"):
        load_isruc(path)


def test_missing_eeg_and_corrupt_rec(tmp_path):
    path = night(tmp_path, names=["ROC", "LOC", "X1"])
    with pytest.raises(ChannelNotFoundError, match="channels present: ROC, LOC, X1"):
        load_isruc(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CorruptFileError, match="12.rec"):
        load_isruc(path)


def test_subgroup_paths_give_subject_and_night(tmp_path):
    assert subject_and_night(tmp_path / "subgroupI" / "12" / "12.rec") == ("12", "1")
    assert subject_and_night(tmp_path / "subgroupII" / "3" / "2" / "2.rec") == ("3", "2")


def test_a_second_session_is_written_as_in_subgroup_two(tmp_path):
    rec = Recording(
        dataset="isruc",
        subject="3",
        night="n2",
        signals={"C4-A1": np.zeros(6000)},
        sfreq={"C4-A1": 200.0},
        stages=["N2"],
    )
    paths = write_isruc(rec, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["3/2/2.rec", "3/2/2_1.txt"]
    back = load_isruc(paths[0])
    assert (back.subject, back.night, list(back.stages)) == ("3", "2", ["N2"])


def test_writer_refuses_what_isruc_files_cannot_hold(tmp_path):
    rec = Recording(
        dataset="isruc",
        subject="1",
        night="1",
        signals={"C4-A1": np.zeros(6000)},
        sfreq={"C4-A1": 200.0},
        stages=["W"],
        hypnogram_offset=0.0,
    )
    rec.stages = np.array(["UNKNOWN"], dtype=object)
    with pytest.raises(DataError, match=r"no stage code for \['UNKNOWN'\]"):
        write_isruc(rec, tmp_path)
    rec.stages, rec.hypnogram_offset = np.array(["W"], dtype=object), 15.0
    with pytest.raises(DataError, match="cannot hold a hypnogram offset"):
        write_isruc(rec, tmp_path)
