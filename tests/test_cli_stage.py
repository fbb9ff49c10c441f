"""Tests of ``sleepvlm stage`` on real EDF files: EEG-only resting wake, the Sleep-EDF wake
excerpt with its 1-Hz EMG envelope, and bad channel names or rates."""

import argparse
import json

import mne
import pandas as pd
import pytest

from sleepvlm.data.edf import write_edf
from sleepvlm.data.records import ChannelNotFoundError, DataError
from sleepvlm.data.registry import real_excerpt
from sleepvlm.rules.stager import STAGED_COLUMNS
from sleepvlm.stage_cli import add_stage_parser, load_for_staging

SLEEPEDF = "sleepedf_SC4001E0-PSG_first300s.edf"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sleepvlm")
    add_stage_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["stage", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def resting_edf(tmp_path_factory):
    """YASA's 6 min of eyes-open resting wake (FIF), exported to EDF."""
    raw = mne.io.read_raw_fif(real_excerpt("yasa_data_resting_EO_200Hz_raw.fif"), verbose=False)
    data = raw.get_data(units="uV")
    rate = float(raw.info["sfreq"])
    path = tmp_path_factory.mktemp("edf") / "resting.edf"
    write_edf(path, dict(zip(raw.ch_names, data, strict=True)), dict.fromkeys(raw.ch_names, rate))
    return path


def test_eeg_only_resting_wake_is_mostly_w(resting_edf, tmp_path, capsys):
    out = tmp_path / "hyp.csv"
    assert run([str(resting_edf), "--eeg", "CZ-A2", "-o", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert table.columns.tolist() == list(STAGED_COLUMNS)
    assert table["epoch"].tolist() == list(range(12))  # 360 s from the signal start
    assert table["onset"].tolist() == [30.0 * k for k in range(12)]
    assert (table["stage"] == "W").mean() >= 0.75
    assert table["not_evaluable"].str.contains("R.rem").all()
    assert table["not_evaluable"].str.contains("R.atonia").all()
    assert "rules not evaluable" in capsys.readouterr().err


def test_sleepedf_wake_with_its_1hz_emg_envelope(tmp_path, capsys):
    out = tmp_path / "hyp.csv"
    argv = [str(real_excerpt(SLEEPEDF)), "--eeg", "EEG Fpz-Cz", "--eog", "EOG horizontal"]
    assert run([*argv, "--emg", "EMG submental", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "'EMG submental' is sampled at 1 Hz" in err and "staged without the EMG" in err
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 10
    assert (table["stage"] == "W").mean() >= 0.5  # the scorer's W for all 10 epochs
    assert table["not_evaluable"].str.contains("R.atonia").all()
    assert not table["not_evaluable"].str.contains("R.rem").any()  # the EOG is read
    evidence = [e for row in table["evidence"] for e in json.loads(row)]
    assert evidence and all(0 <= e["onset"] < 300 for e in evidence)
    assert {"rule", "kind", "channel", "onset", "duration", "amplitude"} == set(evidence[0])


def test_an_unknown_channel_lists_the_channels_present(tmp_path, capsys):
    path = real_excerpt(SLEEPEDF)
    with pytest.raises(ChannelNotFoundError, match="channels present: EEG Fpz-Cz, EEG Pz-Oz"):
        load_for_staging(path, "EEG Fpz-Cz", eog="EOG left")
    assert run([str(path), "--eeg", "C4-M1", "-o", str(tmp_path / "x.csv")]) == 1
    assert "no channel 'C4-M1' for the EEG" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_an_eeg_too_slow_for_the_detectors_is_refused():
    path = real_excerpt("sleepedf_SC4001E0_fullnight_1Hz.edf")
    with pytest.raises(DataError, match="sampled at 1 Hz, below"):
        load_for_staging(path, "EEG Fpz-Cz mean")
