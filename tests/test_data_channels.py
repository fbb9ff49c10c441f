"""Role picking: dataset channel tables, user aliases first, clear errors for missing channels."""

from __future__ import annotations

import pytest

from sleepvlm.data.channels import BENCHMARK_CHANNELS, pick_roles
from sleepvlm.data.records import ROLES, SECOND_EYE, ChannelNotFoundError, DataError

SHHS_FILE = ["SaO2", "H.R.", "EEG(sec)", "ECG", "EMG", "EOG(L)", "EOG(R)", "EEG", "AIRFLOW"]


def test_every_dataset_names_every_role():
    for dataset, roles in BENCHMARK_CHANNELS.items():
        assert set(ROLES) <= set(roles) <= {*ROLES, SECOND_EYE}, dataset
        assert all(roles.values()), dataset


def test_defaults_pick_the_benchmark_channels():
    roles = pick_roles(SHHS_FILE, "shhs")
    assert roles == {"eeg": "EEG", "eog": "EOG(L)", "eog2": "EOG(R)", "emg": "EMG"}


def test_user_aliases_come_first():
    roles = pick_roles(SHHS_FILE, "shhs", channels={"eeg": ["EEG(sec)"], "eog": "EOG(R)"})
    # the second eye is never the channel read as the first
    assert roles == {"eeg": "EEG(sec)", "eog": "EOG(R)", "emg": "EMG"}
    roles = pick_roles(SHHS_FILE, "shhs", channels={"eog": "EOG(R)", "eog2": "EOG(L)"})
    assert (roles["eog"], roles["eog2"]) == ("EOG(R)", "EOG(L)")


def test_a_second_eye_is_read_only_beside_a_first():
    assert SECOND_EYE not in pick_roles(["F4-M1", "E2-M2", "CHIN"], "dcsm")
    with pytest.raises(ChannelNotFoundError, match="second eye .* no first EOG"):
        pick_roles(["F4-M1", "E2-M2"], "dcsm", channels={"eog2": "E2-M2"})
    assert SECOND_EYE not in pick_roles(["EEG Fpz-Cz", "EOG horizontal"], "sleepedf")


def test_alternative_spelling_of_the_same_derivation_is_found():
    isruc_m = ["E1-M2", "E2-M1", "F3-M2", "C3-M2", "O1-M2", "F4-M1", "C4-M1", "O2-M1", "X1"]
    assert pick_roles(isruc_m, "isruc") == {
        "eeg": "C4-M1",
        "eog": "E1-M2",
        "eog2": "E2-M1",
        "emg": "X1",
    }
    assert pick_roles(["EEG C4-LER", "EMG Chin2"], "mass") == {
        "eeg": "EEG C4-LER",
        "emg": "EMG Chin2",
    }


def test_matching_ignores_case_and_repeated_blanks():
    assert pick_roles(["eeg  fpz-cz"], "sleepedf") == {"eeg": "eeg  fpz-cz"}


def test_missing_eog_and_emg_leave_their_roles_out():
    assert pick_roles(["F4-M1", "SPO2"], "dcsm") == {"eeg": "F4-M1"}


def test_missing_eeg_lists_the_channels_and_the_alias_option():
    with pytest.raises(ChannelNotFoundError) as err:
        pick_roles(["E1-M2", "CHIN"], "dcsm", source="x/psg.h5")
    message = str(err.value)
    assert "x/psg.h5" in message and "channels present: E1-M2, CHIN" in message
    assert "channels={'eeg': ['MY-NAME']}" in message


def test_a_missing_channel_the_user_asked_for_raises():
    with pytest.raises(ChannelNotFoundError, match="no EMG channel among \\['Chin L'"):
        pick_roles(["F4-M1", "E1-M2"], "dcsm", channels={"emg": ["Chin L"]})


def test_unknown_role_and_dataset_are_refused():
    with pytest.raises(DataError, match="unknown channel roles \\['ecg'\\]"):
        pick_roles(SHHS_FILE, "shhs", channels={"ecg": "ECG"})
    with pytest.raises(DataError, match="no channel table for dataset 'hmc'"):
        pick_roles(SHHS_FILE, "hmc")
