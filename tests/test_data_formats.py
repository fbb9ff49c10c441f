"""Round trips through every dataset format (write a generated night, discover it, load it back)
and the dispatcher/registries of sleepvlm.data.formats."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sleepvlm.data import formats
from sleepvlm.data.records import DataError, Recording

#: dataset → (role → (channel, rate), subject, night, labels the format can hold); the second
#: eye (eog2) where the dataset records one
SPECS = {
    "sleepedf": (
        {"eeg": ("EEG Fpz-Cz", 100.0), "eog": ("EOG horizontal", 100.0),
         "emg": ("EMG submental", 1.0)},
        "SC412", "2", ["W", "N1", "N2", "N3", "REM", "MOVE", "UNKNOWN"],
    ),
    "dcsm": (
        {"eeg": ("F4-M1", 256.0), "eog": ("E1-M2", 256.0), "eog2": ("E2-M2", 256.0),
         "emg": ("CHIN", 256.0)},
        "tp0a1b2c3d", "1", ["W", "N1", "N2", "N3", "REM", "UNKNOWN"],
    ),
    "isruc": (
        {"eeg": ("C4-A1", 200.0), "eog": ("LOC-A2", 200.0), "eog2": ("ROC-A1", 200.0),
         "emg": ("X1", 200.0)},
        "7", "1", ["W", "N1", "N2", "N3", "REM"],
    ),
    "shhs": (
        {"eeg": ("EEG", 125.0), "eog": ("EOG(L)", 50.0), "eog2": ("EOG(R)", 50.0),
         "emg": ("EMG", 125.0)},
        "200077", "shhs1", ["W", "N1", "N2", "N3", "REM", "MOVE", "UNKNOWN"],
    ),
    "mass": (
        {"eeg": ("EEG C4-CLE", 256.0), "eog": ("EOG Left Horiz", 256.0),
         "eog2": ("EOG Right Horiz", 256.0), "emg": ("EMG Chin1", 256.0)},
        "01-03-0007", "1", ["W", "N1", "N2", "N3", "REM", "UNKNOWN"],
    ),
}  # fmt: skip


def make_recording(dataset: str, minutes: float = 4.0, seed: int = 0, **kw) -> Recording:
    roles, subject, night, labels = SPECS[dataset]
    rng = np.random.default_rng(seed)
    duration = minutes * 60
    signals = {name: rng.normal(0, 40, round(duration * fs)) for name, fs in roles.values()}
    n_epochs = int(duration // 30)
    stages = np.array(labels)[np.arange(n_epochs) % len(labels)]
    return Recording(
        dataset=dataset,
        subject=subject,
        night=night,
        signals=signals,
        sfreq={name: fs for name, fs in roles.values()},
        stages=stages,
        roles={role: name for role, (name, _) in roles.items()},
        **kw,
    )


def quantisation_step(x: np.ndarray) -> float:
    """Largest rounding error of 16-bit EDF over the writer's whole-µV range."""
    return (np.ceil(x.max()) - np.floor(x.min())) / 65535


@pytest.mark.parametrize("dataset", list(SPECS))
def test_round_trip_keeps_signals_rates_labels_and_roles(dataset, tmp_path):
    rec = make_recording(dataset)
    paths = formats.WRITERS[dataset](rec, tmp_path)
    assert all(Path(p).is_file() for p in paths)
    entries = formats.discover(dataset, tmp_path)
    assert len(entries) == 1
    entry = entries[0]
    assert (entry["subject"], entry["night"]) == (rec.subject, rec.night)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean night loads without any warning
        back = formats.load_recording(dataset, **entry["paths"])
    assert (back.dataset, back.subject, back.night) == (dataset, rec.subject, rec.night)
    assert back.roles == rec.roles
    assert back.sfreq == rec.sfreq
    for name, x in rec.signals.items():
        assert back.signals[name].dtype == np.float32
        assert len(back.signals[name]) == len(x)
        assert np.abs(back.signals[name] - x).max() <= quantisation_step(x) / 2 + 1e-4
    assert list(back.stages) == list(rec.stages)
    assert back.hypnogram_offset == 0
    assert back.unknown_codes == {}
    assert not back.simulated
    assert len(back.source_hash) == 64
    assert (
        back.line_freq == {"sleepedf": 50, "dcsm": 50, "isruc": 50, "shhs": 60, "mass": 60}[dataset]
    )


@pytest.mark.parametrize("dataset", ["sleepedf", "dcsm", "shhs", "mass"])
def test_round_trip_keeps_a_hypnogram_offset(dataset, tmp_path):
    rec = make_recording(dataset)
    rec.stages = rec.stages[:-1]
    rec.hypnogram_offset = 30.0 if dataset == "shhs" else 12.5
    formats.WRITERS[dataset](rec, tmp_path)
    entry = formats.discover(dataset, tmp_path)[0]
    back = formats.load_recording(dataset, **entry["paths"])
    assert back.hypnogram_offset == rec.hypnogram_offset
    assert list(back.stages) == list(rec.stages)


@pytest.mark.parametrize("dataset", list(SPECS))
def test_simulated_night_brings_its_sidecars_back(dataset, tmp_path):
    events = pd.DataFrame(
        {"kind": ["spindle", "blink"], "channel": ["x", "y"], "onset": [31.5, 62.0],
         "duration": [0.8, 0.4], "amplitude": [25.0, 180.0]}
    )  # fmt: skip
    rec = make_recording(dataset, simulated=True, events=events)
    truth = rec.stages.copy()
    truth[0] = "N1" if truth[0] != "N1" else "W"
    rec.other_scorers = {"truth": truth, "scorer2": np.roll(rec.stages, 1)}
    formats.WRITERS[dataset](rec, tmp_path)
    back = formats.load_recording(dataset, **formats.discover(dataset, tmp_path)[0]["paths"])
    assert back.simulated
    pd.testing.assert_frame_equal(back.events, events)
    assert list(back.other_scorers["truth"]) == list(truth)
    assert list(back.other_scorers["scorer2"]) == list(rec.other_scorers["scorer2"])


def test_discover_lists_every_night_and_skips_unpaired_files(tmp_path):
    for subject in ("200001", "200002"):
        rec = make_recording("shhs")
        rec.subject = subject
        formats.write_recording(rec, tmp_path)
    orphan = tmp_path / "polysomnography/edfs/shhs1/shhs1-200003.edf"
    orphan.write_bytes((tmp_path / "polysomnography/edfs/shhs1/shhs1-200001.edf").read_bytes())
    with pytest.warns(UserWarning, match="shhs1-200003.edf: no NSRR or Profusion"):
        entries = formats.discover("shhs", tmp_path)
    assert [e["subject"] for e in entries] == ["200001", "200002"]
    assert entries[0]["paths"]["xml_path"].name == "shhs1-200001-nsrr.xml"


def test_discover_pairs_sleepedf_hypnograms_whose_letters_differ(tmp_path):
    formats.write_recording(make_recording("sleepedf"), tmp_path)
    (entry,) = formats.discover("sleepedf", tmp_path)
    assert entry["paths"]["psg_path"].name == "SC4122E0-PSG.edf"
    assert entry["paths"]["hypnogram_path"].name == "SC4122EC-Hypnogram.edf"


def test_discover_finds_isruc_subgroup_two_sessions(tmp_path):
    for night in ("1", "2"):
        rec = make_recording("isruc")
        rec.subject, rec.night = "3", night
        formats.write_recording(rec, tmp_path)
    entries = formats.discover("isruc", tmp_path)
    assert sorted((e["subject"], e["night"]) for e in entries) == [("3", "1"), ("3", "2")]


def test_unknown_dataset_and_missing_root_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'edfx'"):
        formats.load_recording("edfx", tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        formats.discover("dcsm", tmp_path / "nowhere")


def test_registries_cover_the_same_datasets():
    assert set(formats.LOADERS) == set(formats.WRITERS) == set(SPECS)
