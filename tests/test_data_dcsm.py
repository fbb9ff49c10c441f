"""DCSM loader on hand-built psg.h5 / hypnogram.ids files in the psg-utils layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from sleepvlm.data.dcsm import load_dcsm
from sleepvlm.data.records import ChannelNotFoundError, CorruptFileError, DataError


def subject(tmp_path, scale=1.0, ids="0,90,W\n90,60,N2\n150,30,REM\n", per_dataset_rate=False):
    folder = tmp_path / "tpabc"
    folder.mkdir()
    rng = np.random.default_rng(5)
    data = {
        "F4-M1": rng.normal(0, 30, 256 * 180),
        "E1-M2": rng.normal(0, 50, 256 * 180),
        "CHIN": rng.normal(0, 5, 256 * 180),
        "SPO2": np.full(180, 97.0),
    }
    with h5py.File(folder / "psg.h5", "w") as h5:
        if not per_dataset_rate:
            h5.attrs["sample_rate"] = 256
        eeg = h5.create_group("channels/eeg")  # datasets may sit in nested groups
        for name in ("F4-M1", "E1-M2", "CHIN"):
            target = eeg if name == "F4-M1" else h5["channels"]
            ds = target.create_dataset(name, data=(data[name] * scale).astype(np.float32))
            if per_dataset_rate:
                ds.attrs["sample_rate"] = 256
        h5["channels"].create_dataset("SPO2", data=data["SPO2"]).attrs["sample_rate"] = 1
    (folder / "hypnogram.ids").write_text(ids)
    return folder, data


def test_loads_channels_and_run_length_hypnogram(tmp_path):
    folder, data = subject(tmp_path)
    rec = load_dcsm(folder)
    assert (rec.subject, rec.night, rec.line_freq) == ("tpabc", "1", 50)
    assert rec.roles == {"eeg": "F4-M1", "eog": "E1-M2", "emg": "CHIN"}
    assert rec.sfreq == {"F4-M1": 256.0, "E1-M2": 256.0, "CHIN": 256.0}
    assert np.allclose(rec.signals["F4-M1"], data["F4-M1"], atol=1e-4)
    assert list(rec.stages) == ["W", "W", "W", "N2", "N2", "REM"]


def test_volts_are_recognised_by_their_magnitude(tmp_path):
    folder, data = subject(tmp_path, scale=1e-6)
    rec = load_dcsm(folder)
    assert np.allclose(rec.signals["CHIN"], data["CHIN"], rtol=1e-5, atol=1e-4)


def test_per_dataset_sample_rates_are_read(tmp_path):
    folder, _ = subject(tmp_path, per_dataset_rate=True)
    assert load_dcsm(folder).sfreq["E1-M2"] == 256.0


def test_unknown_stage_strings_are_counted(tmp_path):
    folder, _ = subject(tmp_path, ids="0,60,W\n60,60,N4\n120,60,REM\n")
    with pytest.warns(UserWarning, match="unrecognised stage codes 'N4' ×2"):
        rec = load_dcsm(folder)
    assert rec.unknown_codes == {"N4": 2}
    assert list(rec.stages) == ["W", "W", "UNKNOWN", "UNKNOWN", "REM", "REM"]


def test_hypnogram_longer_than_the_signal_is_truncated(tmp_path):
    folder, _ = subject(tmp_path, ids="0,300,W\n")
    with pytest.warns(UserWarning, match="hypnogram has 10 epochs .* holds 6"):
        assert len(load_dcsm(folder).stages) == 6


def test_malformed_ids_is_corrupt(tmp_path):
    folder, _ = subject(tmp_path, ids="start;dur;stage\n0;30;W\n")
    with pytest.raises(CorruptFileError, match="hypnogram.ids: not 'onset,duration,stage'"):
        load_dcsm(folder)


def test_garbage_h5_is_corrupt(tmp_path):
    folder, _ = subject(tmp_path)
    (folder / "psg.h5").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CorruptFileError, match="psg.h5: not a readable HDF5 file"):
        load_dcsm(folder)


def test_h5_without_channels_group_is_corrupt(tmp_path):
    folder, _ = subject(tmp_path)
    with h5py.File(folder / "psg.h5", "w") as h5:
        h5["signals_x"] = np.zeros(10)
    with pytest.raises(CorruptFileError, match="no 'channels' group"):
        load_dcsm(folder)


def test_missing_files_and_channels_are_reported(tmp_path):
    with pytest.raises(DataError, match="DCSM signal file .*psg.h5 does not exist"):
        load_dcsm(tmp_path)
    folder, _ = subject(tmp_path)
    with h5py.File(folder / "psg.h5", "a") as h5:
        del h5["channels/eeg/F4-M1"]
    with pytest.raises(ChannelNotFoundError, match="channels present: CHIN, E1-M2, SPO2"):
        load_dcsm(folder, channels={"eeg": ["C3-M2"]})
