"""Tests of ``sleepvlm stage`` on real EDF files: EEG-only resting wake, the Sleep-EDF wake
excerpt with its 1-Hz EMG envelope, and bad channel names or rates."""

import argparse
import json

import pandas as pd
import pytest

from sleepvlm.data.edf import write_edf
from sleepvlm.data.realism import yasa_predict
from sleepvlm.data.records import STAGES, ChannelNotFoundError, DataError
from sleepvlm.data.registry import real_excerpt
from sleepvlm.rules.stager import STAGED_COLUMNS
from sleepvlm.stage_cli import (
    add_stage_parser,
    dreams_cardiac_field,
    dreams_psg_agreement,
    load_for_staging,
    read_resting_wake,
    resting_wake,
    stage_edf,
    wake_epochs_table,
)

SLEEPEDF = "sleepedf_SC4001E0-PSG_first300s.edf"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sleepvlm")
    add_stage_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["stage", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def resting():
    """YASA's 6 min of eyes-open resting wake (FIF): signals in µV and their rates."""
    return read_resting_wake()


@pytest.fixture(scope="module")
def resting_edf(resting, tmp_path_factory):
    """The resting wake exported to EDF."""
    path = tmp_path_factory.mktemp("edf") / "resting.edf"
    write_edf(path, *resting)
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


@pytest.mark.parametrize("channel", ["F4-A1", "CZ-A2"])
def test_eyes_open_wake_on_one_eeg_is_w_at_least_as_often_as_yasa_finds(
    resting, resting_edf, tmp_path, channel
):
    # a frontal EEG without alpha (eyes open) once gave N2 and N1 only: eye movements there
    # looked like K complexes; W.fast reads the EEG that is not slowed
    out = tmp_path / "hyp.csv"
    assert run([str(resting_edf), "--eeg", channel, "-o", str(out)]) == 0
    ours = (pd.read_csv(out, keep_default_na=False)["stage"] == "W").mean()
    signals, rates = resting
    yasa = (yasa_predict(signals, rates, {"eeg": channel}) == "W").mean()
    assert ours >= yasa > 0.5


def test_the_real_wake_epochs_are_tabulated_and_drawn_with_what_each_detector_found():
    import matplotlib

    matplotlib.use("Agg")
    from sleepvlm.rules.plots import plot_staged_epochs

    result = resting_wake("F4-A1")
    table = wake_epochs_table(result)
    assert table.index.tolist() == list(range(12))
    assert table["stager"].tolist() == result["staged"]["stage"].tolist()
    assert table["YASA"].tolist() == list(result["yasa"])
    assert result["w_share"] == {
        "stager": (table["stager"] == "W").mean(),
        "yasa": (table["YASA"] == "W").mean(),
    }
    assert table["not slowed (%)"].between(0, 100).all()
    events = result["detection"].events
    for kind, n in events["kind"].value_counts().items():
        assert table[kind].sum() == n  # every detected event is counted in its epoch
    fig = plot_staged_epochs(
        result["recording"], result["detection"], result["staged"], other=result["yasa"]
    )
    assert len(fig.axes) == 12


def not_evaluable_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("rules not evaluable")]


def assert_cites_no_unread_rule_and_no_event_twice(table: pd.DataFrame, err: str) -> None:
    unread = {rule for line in not_evaluable_lines(err) for rule in line.split(":")[1].split(", ")}
    for rules, unknown, evidence in table[["rules", "not_evaluable", "evidence"]].itertuples(
        index=False
    ):
        cited = set(rules.split(";"))
        assert not cited & set(unknown.split(";")) and not cited & {r.strip() for r in unread}
        events = [
            (e["kind"], e["onset"], e["duration"], e["amplitude"]) for e in json.loads(evidence)
        ]
        assert len(events) == len(set(events))


def test_sleepedf_wake_with_its_1hz_emg_envelope(tmp_path, capsys):
    out = tmp_path / "hyp.csv"
    argv = [str(real_excerpt(SLEEPEDF)), "--eeg", "EEG Fpz-Cz", "--eog", "EOG horizontal"]
    assert run([*argv, "--emg", "EMG submental", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    # the one reason, with the rules it leaves out; W.eyes is read from blinks alone
    assert not_evaluable_lines(err) == [
        "rules not evaluable: R.atonia, R.cont, R.arousal_end: edf/"
        "sleepedf_SC4001E0-PSG_first300s/: EMG 'EMG submental' is sampled at 1 Hz, below the "
        "44 Hz any of its detectors needs (a derived signal such as an RMS envelope or 1-s "
        "means, not the raw signal?)"
    ]
    assert "rule read in part: W.eyes: blinks alone (" in err
    table = pd.read_csv(out, keep_default_na=False)
    assert_cites_no_unread_rule_and_no_event_twice(table, err)
    assert len(table) == 10
    assert (table["stage"] == "W").mean() >= 0.5  # the scorer's W for all 10 epochs
    assert table["not_evaluable"].str.contains("R.atonia").all()
    assert not table["not_evaluable"].str.contains("R.rem").any()  # the EOG is read
    evidence = [e for row in table["evidence"] for e in json.loads(row)]
    assert evidence and all(0 <= e["onset"] < 300 for e in evidence)
    assert {"rule", "kind", "channel", "onset", "duration", "amplitude"} == set(evidence[0])


def test_sleepedf_without_emg_names_the_missing_channel_and_cites_each_event_once(tmp_path, capsys):
    out = tmp_path / "hyp.csv"
    argv = [str(real_excerpt(SLEEPEDF)), "--eeg", "EEG Fpz-Cz", "--eog", "EOG horizontal"]
    assert run([*argv, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    lines = not_evaluable_lines(err)
    assert len(lines) == 1 and "W.eyes" not in lines[0]
    assert lines[0].startswith("rules not evaluable: R.atonia, R.cont, R.arousal_end: ")
    assert lines[0].endswith("no EMG channel in the recording")
    table = pd.read_csv(out, keep_default_na=False)
    assert (table["rules"] == "W.eyes").sum() >= 5  # wake by blinks, as the scorer's W
    assert_cites_no_unread_rule_and_no_event_twice(table, err)


def dreams_psg_or_skip():
    from sleepvlm.data import dreams

    try:
        return dreams.dreams_psg(3)
    except DataError:
        pytest.skip("the DREAMS excerpt 3 PSG is not on this machine")


def test_the_50_hz_dreams_psg_is_staged(tmp_path, capsys):
    path = dreams_psg_or_skip()
    out = tmp_path / "excerpt3.csv"
    argv = [str(path), "--eeg", "C3-A1", "--eog", "EOG1-A1", "--emg", "EMG1", "-o", str(out)]
    with pytest.warns(UserWarning, match="'UV', not the SI spelling"):
        assert run(argv) == 0
    err = capsys.readouterr().err
    assert not_evaluable_lines(err) == []  # every detector runs at 50 Hz
    table = pd.read_csv(out, keep_default_na=False)
    assert table["epoch"].tolist() == list(range(60))  # 30 min
    assert set(table["stage"]) <= set(STAGES)
    assert_cites_no_unread_rule_and_no_event_twice(table, err)


def test_the_dreams_psg_is_compared_with_its_own_hypnogram():
    dreams_psg_or_skip()
    with pytest.warns(UserWarning, match="'UV'"):
        result = dreams_psg_agreement(3, eog=None, emg=None)
    # 60 epochs, all scored (N2 39, N1 12, W 6, N3 3 by the file's 5-s hypnogram)
    assert result["n"] == 60 and len(result["reference"]) == 60
    assert set(result["staged"]["stage"]) <= set(STAGES)
    assert -1 <= result["kappa"] <= 1 and 0 <= result["accuracy"] <= 1
    assert result["events"].get("spindle", 0) > 0  # N2 of a real night holds spindles


def test_the_dreams_psg_reads_rapid_eye_movements_from_both_eyes(tmp_path, capsys):
    path = dreams_psg_or_skip()
    argv = [str(path), "--eeg", "C3-A1", "--eog", "EOG1-A1", "--emg", "EMG1"]
    lines = {}
    for eyes, extra in (("one", []), ("both", ["--eog2", "EOG2-A1"])):
        with pytest.warns(UserWarning, match="'UV'"):
            assert run([*argv, *extra, "-o", str(tmp_path / f"{eyes}.csv")]) == 0
        lines[eyes] = [x for x in capsys.readouterr().err.splitlines() if "R.rem" in x]
    assert lines == {
        "one": [
            "rule read in part: R.rem: one eye (EOG1-A1), blinks and EEG told from eye "
            "movements by their shape: no second EOG channel"
        ],
        "both": [],
    }
    with pytest.warns(UserWarning, match="'UV'"):
        one = dreams_psg_agreement(emg=None)
        both = dreams_psg_agreement(emg=None, eog2="EOG2-A1")
    # no REM sleep in these 30 min: one eye takes blinks and EEG for hundreds of rapid eye
    # movements; both eyes find a few, where the experts scored W or N1
    assert one["events"]["rem"] >= 10 * max(both["events"].get("rem", 0), 1)
    with pytest.warns(UserWarning, match="'UV'"):
        _, detection = stage_edf(path, "C3-A1", "EOG1-A1", eog2="EOG2-A1")
    rem_epochs = detection.events.loc[detection.events["kind"] == "rem", "epoch"]
    assert len(rem_epochs) and {both["reference"][e] for e in rem_epochs} <= {"W", "N1"}
    stage_rem = [(r["staged"]["stage"] == "REM").sum() for r in (one, both)]
    assert stage_rem[1] < stage_rem[0]


def test_the_ecg_takes_the_hearts_field_out_of_the_dreams_psg(tmp_path, capsys):
    # its ear-referenced EOGs show each QRS complex (50-80 µV, in phase on both eyes), which
    # the detectors read as a blink a second and the stager as wake (the scorers saw 6 W of 60)
    path = dreams_psg_or_skip()
    with pytest.warns(UserWarning, match="'UV'"):
        without = dreams_psg_agreement(eog2="EOG2-A1")
        with_ecg = dreams_psg_agreement(eog2="EOG2-A1", ecg="ECG")
    field = dreams_cardiac_field()
    size = field["heart's field (µV, peak to peak)"]
    assert size[["EOG1-A1", "EOG2-A1"]].min() > 30 > 10 > size["EMG1"]
    assert field.loc["EOG2-A1", "correlation with EOG1-A1"] > 0.9  # in phase: as a blink
    assert 40 < field.attrs["bpm"] < 90
    assert with_ecg["events"]["blink"] < 0.5 * without["events"]["blink"]
    w_count = [(r["staged"]["stage"] == "W").sum() for r in (without, with_ecg)]
    assert w_count[1] < w_count[0] and with_ecg["kappa"] > without["kappa"]
    argv = [str(path), "--eeg", "C3-A1", "--eog", "EOG1-A1", "--eog2", "EOG2-A1", "--emg", "EMG1"]
    with pytest.warns(UserWarning, match="'UV'"):
        assert run([*argv, "--ecg", "ECG", "-o", str(tmp_path / "ecg.csv")]) == 0
        assert run([*argv, "--ecg", "EMG1", "-o", str(tmp_path / "emg.csv")]) == 1
    err = capsys.readouterr().err
    assert "ECG 'EMG1': no QRS complexes stand out" in err and not (tmp_path / "emg.csv").exists()
    with pytest.raises(ChannelNotFoundError, match="no channel 'EKG' for the ECG.*--ecg"):
        load_for_staging(path, "C3-A1", ecg="EKG")


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
