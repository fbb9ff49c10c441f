"""EDF reading/writing: native rates, units → µV, volts under a µV label, corrupt files."""

from __future__ import annotations

import datetime as dt

import edfio
import numpy as np
import pytest

from sleepvlm.data.edf import (
    edf_annotations,
    edf_labels,
    edf_start,
    open_edf,
    read_channels,
    read_roles,
    write_edf,
)
from sleepvlm.data.records import ChannelNotFoundError, CorruptFileError, DataError


@pytest.fixture
def mixed_rate_edf(tmp_path):
    rng = np.random.default_rng(1)
    signals = {"EEG": rng.normal(0, 30, 125 * 60), "EOG(L)": rng.normal(0, 60, 50 * 60)}
    path = write_edf(tmp_path / "night.edf", signals, {"EEG": 125.0, "EOG(L)": 50.0})
    return path, signals


def raw_edf(path, x, dimension, physical_range):
    """An EDF written straight with edfio, to fake what other software stores."""
    signal = edfio.EdfSignal(
        x, 100.0, label="C4-A1", physical_dimension=dimension, physical_range=physical_range
    )
    edfio.Edf([signal]).write(path)
    return path


def test_channels_keep_their_native_rates(mixed_rate_edf):
    path, signals = mixed_rate_edf
    edf = open_edf(path)
    assert edf_labels(edf) == ["EEG", "EOG(L)"]
    data, sfreq = read_channels(edf, ["EOG(L)", "EEG"], path)
    assert sfreq == {"EOG(L)": 50.0, "EEG": 125.0}
    assert len(data["EOG(L)"]) == 50 * 60 and len(data["EEG"]) == 125 * 60
    assert np.abs(data["EEG"] - signals["EEG"]).max() < 0.01


def test_read_roles_reads_only_the_picked_channels(mixed_rate_edf):
    path, _ = mixed_rate_edf
    roles, data, sfreq = read_roles(open_edf(path), path, "shhs")
    assert roles == {"eeg": "EEG", "eog": "EOG(L)"}  # no EMG in this file: role left out
    assert set(data) == set(sfreq) == {"EEG", "EOG(L)"}


def test_millivolts_are_converted(tmp_path):
    x = np.sin(np.linspace(0, 20, 1000)) * 0.05  # 50 µV in mV
    path = raw_edf(tmp_path / "mv.edf", x, "mV", (-0.1, 0.1))
    data, _ = read_channels(open_edf(path), ["C4-A1"], path)
    assert np.allclose(data["C4-A1"], x * 1e3, atol=0.01)


def test_volts_labelled_microvolts_are_rescaled_with_a_warning(tmp_path):
    x = np.random.default_rng(2).normal(0, 30e-6, 3000)  # 30 µV stored as volts
    path = raw_edf(tmp_path / "volts.edf", x, "uV", (-0.0005, 0.0005))
    with pytest.warns(UserWarning, match=r"volts.edf: channel 'C4-A1' is labelled µV.*×1e6"):
        data, _ = read_channels(open_edf(path), ["C4-A1"], path)
    assert np.allclose(data["C4-A1"], x * 1e6, atol=0.05)
    assert 20 < np.std(data["C4-A1"]) < 40


def test_real_microvolts_are_left_alone(tmp_path):
    x = np.random.default_rng(3).normal(0, 30, 3000)
    path = raw_edf(tmp_path / "uv.edf", x, "uV", (-200.0, 200.0))
    data, _ = read_channels(open_edf(path), ["C4-A1"], path)
    assert np.allclose(data["C4-A1"], x, atol=0.01)


def test_an_upper_case_uv_header_is_read_as_microvolts_with_a_warning(tmp_path):
    # the DREAMS excerpt 3 header: µV numbers under 'UV', which MNE reads as volts (~20 "V")
    x = np.random.default_rng(4).normal(0, 20, 3000)
    path = raw_edf(tmp_path / "dreams.edf", x, "UV", (-204.0, 184.0))
    with pytest.warns(UserWarning, match=r"dreams.edf: channel 'C4-A1'.*'UV', not the SI.*'uV'"):
        data, _ = read_channels(open_edf(path), ["C4-A1"], path)
    assert np.allclose(data["C4-A1"], np.clip(x, -204.0, 184.0), atol=0.01)


def test_microvolts_labelled_volts_are_kept_with_a_warning(tmp_path):
    # what a file re-exported from MNE's reading of such a header holds: ~20 under 'V'
    x = np.random.default_rng(5).normal(0, 20, 3000)
    path = raw_edf(tmp_path / "as_volts.edf", x, "V", (-200.0, 200.0))
    with pytest.warns(UserWarning, match=r"as_volts.edf: channel 'C4-A1' is labelled in volts"):
        data, _ = read_channels(open_edf(path), ["C4-A1"], path)
    assert np.allclose(data["C4-A1"], x, atol=0.01)


def test_the_real_dreams_psg_is_read_in_microvolts_with_a_warning():
    from sleepvlm.data import dreams

    try:
        path = dreams.dreams_psg(3)
        txt = dreams.read_dreams_eeg(3)[0]
    except DataError:
        pytest.skip("the DREAMS excerpt 3 files are not on this machine")
    with pytest.warns(UserWarning, match="'UV', not the SI spelling"):
        data, rates = read_channels(open_edf(path), ["C3-A1", "EMG1"], path)
    assert rates == {"C3-A1": 50.0, "EMG1": 50.0}
    assert 10 < np.std(data["C3-A1"]) < 40  # µV, not 1e6 times more or less
    # the EDF's C3-A1 is the excerpt's text file (SOURCES.md), to the EDF's 0.01-µV step
    assert np.allclose(data["C3-A1"], txt, atol=0.02)


def test_a_non_voltage_channel_is_refused(tmp_path):
    path = raw_edf(tmp_path / "temp.edf", np.full(1000, 37.0), "DegC", (34.0, 40.0))
    with pytest.raises(DataError, match="'C4-A1' is in 'DegC', not a voltage"):
        read_channels(open_edf(path), ["C4-A1"], path)


def test_truncated_file_raises_corrupt_file_error(mixed_rate_edf, tmp_path):
    path, _ = mixed_rate_edf
    cut = tmp_path / "cut.edf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=r"cut.edf: file is truncated"):
        open_edf(cut)


def test_garbage_bytes_raise_corrupt_file_error(tmp_path):
    path = tmp_path / "garbage.edf"
    path.write_bytes(np.random.default_rng(4).bytes(4096))
    with pytest.raises(CorruptFileError, match="garbage.edf: not a readable EDF file"):
        open_edf(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_edf(tmp_path / "absent.edf")


def test_missing_eeg_lists_present_channels(mixed_rate_edf):
    path, _ = mixed_rate_edf
    with pytest.raises(ChannelNotFoundError, match=r"channels present: EEG, EOG\(L\)"):
        read_roles(open_edf(path), path, "dcsm")


def test_annotation_only_edf_plus_round_trip(tmp_path):
    start = dt.datetime(1989, 4, 24, 16, 13)
    annotations = [(0.0, 60.0, "Sleep stage W"), (60.0, 30.0, "Sleep stage 1")]
    path = write_edf(tmp_path / "hyp.edf", {}, {}, annotations=annotations, start=start)
    edf = open_edf(path)
    assert edf.num_signals == 0
    assert edf_annotations(edf) == annotations
    assert edf_start(edf) == start


def test_writer_drops_an_incomplete_last_record_with_a_warning(tmp_path):
    x = np.zeros(1050)
    with pytest.warns(UserWarning, match="0.500 s at the end"):
        path = write_edf(tmp_path / "tail.edf", {"EEG": x}, {"EEG": 100.0})
    assert open_edf(path).signals[0].data.size == 1000
