"""Ground-truth sidecars of simulated nights: written beside the signal file, read back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sleepvlm.data.records import CorruptFileError, Recording
from sleepvlm.data.sidecar import attach_sidecars, sidecar_paths, write_sidecars


def night(simulated: bool) -> Recording:
    events = pd.DataFrame(
        {
            "kind": ["kcomplex"],
            "channel": ["C4-A1"],
            "onset": [45.25],
            "duration": [0.9],
            "amplitude": [120.0],
        }
    )
    return Recording(dataset="isruc", subject="1", night="1", signals={"C4-A1": np.zeros(600)},
                     sfreq={"C4-A1": 10.0}, stages=["W", "N2"], events=events,
                     other_scorers={"scorer2": np.array(["W", "N1"]),
                                    "scorer3": np.array(["N1"])},
                     simulated=simulated)  # fmt: skip


def test_paths_sit_beside_the_signal_file(tmp_path):
    events, truth = sidecar_paths(tmp_path / "01-03-0001 PSG.edf")
    assert events == tmp_path / "01-03-0001 PSG.events.csv"
    assert truth == tmp_path / "01-03-0001 PSG.truth.txt"


def test_real_nights_get_no_sidecar(tmp_path):
    assert write_sidecars(night(simulated=False), tmp_path / "1.rec") == []
    assert list(tmp_path.iterdir()) == []


def test_sidecars_round_trip_without_native_scorers(tmp_path):
    rec = night(simulated=True)
    written = write_sidecars(rec, tmp_path / "1.rec", native_scorers=["scorer2"])
    assert [p.name for p in written] == ["1.events.csv", "1.truth.txt"]
    assert (tmp_path / "1.truth.txt").read_text().splitlines()[0] == "truth\tscorer3"
    loaded = night(simulated=False)
    loaded.events, loaded.other_scorers = loaded.events.iloc[:0], {}
    attach_sidecars(loaded, tmp_path / "1.rec")
    assert loaded.simulated
    pd.testing.assert_frame_equal(loaded.events, rec.events)
    assert {k: list(v) for k, v in loaded.other_scorers.items()} == {
        "truth": ["W", "N2"],
        "scorer3": ["N1"],
    }


def test_a_truth_file_without_its_column_is_corrupt(tmp_path):
    (tmp_path / "1.truth.txt").write_text("stage\nW\n")
    with pytest.raises(CorruptFileError, match="1.truth.txt: truth file lacks"):
        attach_sidecars(night(simulated=False), tmp_path / "1.rec")


def test_an_events_file_without_columns_is_corrupt(tmp_path):
    (tmp_path / "1.events.csv").write_text("kind,onset\nspindle,3\n")
    with pytest.raises(CorruptFileError, match=r"lacks columns \['amplitude', 'channel'"):
        attach_sidecars(night(simulated=False), tmp_path / "1.rec")
