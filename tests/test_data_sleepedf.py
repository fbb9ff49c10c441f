"""Sleep-EDF Expanded loader on the real SC4001 excerpts, and its writer's file names."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sleepvlm.data.records import ChannelNotFoundError, DataError, Recording
from sleepvlm.data.sleepedf import load_sleepedf, subject_and_night, write_sleepedf

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
PSG_300S = "sleepedf_SC4001E0-PSG_first300s.edf"
HYPNOGRAM = "sleepedf_SC4001EC-Hypnogram.edf"
FULL_1HZ = "sleepedf_SC4001E0_fullnight_1Hz.edf"


def real_file(name: str) -> Path:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"real excerpt {name} not available")
    return path


def test_real_excerpt_loads_with_its_hypnogram_truncated_to_the_signal():
    with pytest.warns(UserWarning, match="holds 10; truncated the hypnogram to the signal"):
        rec = load_sleepedf(real_file(PSG_300S), real_file(HYPNOGRAM))
    assert (rec.dataset, rec.subject, rec.night) == ("sleepedf", "SC400", "1")
    assert rec.roles == {"eeg": "EEG Fpz-Cz", "eog": "EOG horizontal", "emg": "EMG submental"}
    assert rec.sfreq == {"EEG Fpz-Cz": 100.0, "EOG horizontal": 100.0, "EMG submental": 1.0}
    assert list(rec.stages) == ["W"] * 10 and rec.hypnogram_offset == 0.0
    eeg = rec.signals["EEG Fpz-Cz"]
    assert len(eeg) == 30000
    assert eeg.min() == pytest.approx(-121.6, abs=0.1) and eeg.max() == pytest.approx(
        156.6, abs=0.1
    )
    assert 3.2 <= rec.signals["EMG submental"].min() <= rec.signals["EMG submental"].max() <= 3.7
    assert rec.line_freq == 50 and rec.source_hash.startswith("ff05447a")
    assert not rec.simulated


def test_real_full_night_aligns_to_the_published_stage_durations():
    aliases = {"eeg": ["EEG Fpz-Cz mean"], "eog": ["EOG horiz mean"]}
    with pytest.warns(UserWarning, match="truncated the hypnogram"):
        rec = load_sleepedf(real_file(FULL_1HZ), real_file(HYPNOGRAM), channels=aliases)
    assert rec.duration() == 79500
    seconds = {k: 30 * n for k, n in Counter(rec.stages).items()}
    assert seconds == {"W": 59910, "N1": 1740, "N2": 7500, "N3": 6600, "REM": 3750}
    # REM atonia on the real chin EMG envelope (SOURCES.md: median 3.43 µV in W, 0.21 in REM).
    emg = rec.signals[rec.role("emg")]
    per_epoch = emg[: 30 * len(rec.stages)].reshape(-1, 30).mean(axis=1)
    assert np.median(per_epoch[rec.stages == "REM"]) < 0.5 < np.median(per_epoch[rec.stages == "W"])


def test_a_missing_channel_lists_the_real_channels_and_the_alias_option():
    # The 1-Hz conversion renamed the EEG to "EEG Fpz-Cz mean": the default name is absent.
    with pytest.raises(ChannelNotFoundError) as err:
        load_sleepedf(real_file(FULL_1HZ), real_file(HYPNOGRAM))
    assert "channels present: EEG Fpz-Cz mean, EEG Pz-Oz mean, EOG horiz mean" in str(err.value)
    assert "channels={'eeg': ['MY-NAME']}" in str(err.value)


def test_names_give_subject_and_night():
    assert subject_and_night("SC4122E0-PSG.edf") == ("SC412", "2")
    assert subject_and_night("ST7011J0-PSG.edf") == ("ST701", "1")
    assert subject_and_night("night.edf") == ("night", "1")


def test_writer_needs_a_sleepedf_style_subject(tmp_path):
    rec = Recording(
        dataset="sleepedf",
        subject="tp-1",
        night="1",
        signals={"EEG Fpz-Cz": [0.0]},
        sfreq={"EEG Fpz-Cz": 1.0},
        stages=[],
    )
    with pytest.raises(DataError, match="subject 'SC4ss' or 'ss'"):
        write_sleepedf(rec, tmp_path)


def test_writer_uses_the_sleep_cassette_names(tmp_path):
    rec = Recording(
        dataset="sleepedf",
        subject="7",
        night="2",
        signals={"EEG Fpz-Cz": np.zeros(6000)},
        sfreq={"EEG Fpz-Cz": 100.0},
        stages=["W", "N1"],
    )
    paths = write_sleepedf(rec, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "sleep-cassette/SC4072E0-PSG.edf",
        "sleep-cassette/SC4072EC-Hypnogram.edf",
    ]
    back = load_sleepedf(*paths)
    assert list(back.stages) == ["W", "N1"] and back.roles == {"eeg": "EEG Fpz-Cz"}
