"""What SleepVLM-mini sees: its perception answers scored per 5-s segment against the true
events, after its perception phase and when finished."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from sleepvlm.explain import mini, perception
from sleepvlm.explain.annotations import EpochAnnotation, Evidence
from test_explain_mini import TINY, prepared  # noqa: F401 (a fixture)
from test_explain_snapshots import snapshotted  # noqa: F401 (a fixture)


def _epoch(*events: Evidence) -> EpochAnnotation:
    return EpochAnnotation("d", "s", "n", 0, "REM", ["R.rem"], list(events), "truth")


REM_EARLY = Evidence("rem", "eog", 2.0, 3.0)
BLINK_LATE = Evidence("blink", "eog", 21.0, 21.5)


def test_described_segments_reads_the_events_each_segment_names():
    text = "t0 theta eeg1 eog2 emg0 rem@EOG t5 theta eeg1 eog1 emg0 t20 alpha eeg1 blink@EOG"
    segments = perception.described_segments(text)
    assert segments == [{"rem@EOG"}, set(), set(), set(), {"blink@EOG"}, set()]
    assert perception.described_segments("Stage: REM. Rules: R.rem.") == [set()] * 6
    assert perception.described_segments("t45 rem@EOG t0 x@EEG") == [{"x@EEG"}, *[set()] * 5]


def test_perception_scores_count_events_per_segment():
    truth = _epoch(REM_EARLY, BLINK_LATE)
    right = "t0 rem@EOG t5 t10 t15 t20 blink@EOG t25"
    assert perception.perception_scores([right], [truth]) == {
        "precision": 1.0,
        "recall": 1.0,
        "same_every_segment": 0.0,
    }
    smeared = " ".join(f"t{5 * k} rem@EOG blink@EOG" for k in range(6))
    scores = perception.perception_scores([smeared], [truth])
    assert scores["precision"] == pytest.approx(2 / 12) and scores["recall"] == 1.0
    assert scores["same_every_segment"] == 1.0  # one description for the whole epoch
    quiet = perception.perception_scores(["t0 t5"], [_epoch()])
    assert np.isnan(quiet["precision"]) and np.isnan(quiet["recall"])
    assert np.isnan(quiet["same_every_segment"])  # the truth is the same everywhere
    with pytest.raises(ValueError):
        perception.perception_scores([right, right], [truth])


def test_perception_table_asks_the_model_before_and_after_grounding(
    snapshotted,  # noqa: F811
    tmp_path,
):
    folder, data = snapshotted
    table = perception.perception_table(folder, {"dcsm": data}, max_nights=1, max_epochs=4)
    assert table["model"].tolist() == ["after perception", "finished"]
    assert table["epochs"].tolist() == [4, 4]
    values = table[list(perception.PERCEPTION_METRICS)].stack().dropna()
    assert values.between(0, 1).all()
    unkept = shutil.copytree(folder, tmp_path / "model")
    settings = json.loads((unkept / mini.SETTINGS_FILE).read_text())
    settings["snapshot_steps"].remove(mini.PERCEPTION_SNAPSHOT)
    (unkept / mini.SETTINGS_FILE).write_text(json.dumps(settings))
    table = perception.perception_table(unkept, {"dcsm": data}, max_nights=1, max_epochs=4)
    assert table["model"].tolist() == ["finished"]  # a model that kept no perception snapshot


def test_perception_text_says_what_the_table_shows():
    rows = [
        ("after perception", "dcsm", 0.67, 0.22, 0.8),
        ("after perception", "isruc", 0.5, 0.12, 0.9),
        ("finished", "dcsm", np.nan, 0.0, np.nan),
        ("finished", "isruc", np.nan, 0.0, np.nan),
    ]
    table = pd.DataFrame(rows, columns=["model", "dataset", *perception.PERCEPTION_METRICS])
    text = perception.perception_text(table)
    assert text.startswith(
        "Events named per 5-s segment, after perception: DCSM precision 0.67, recall 0.22, "
        "one description for every segment 80%; ISRUC precision 0.50"
    )
    assert "finished: DCSM precision —, recall 0.00" in text
    assert "fewer than half of the events that are there" in text
    assert text.endswith(
        "keeps 0% of that recall: the grounding phase overwrote what the perception phase taught."
    )
    seeing = table.assign(recall=[0.8, 0.7, 0.75, 0.7])
    text = perception.perception_text(seeing)
    assert "names most of the events" in text and text.endswith("keeps 97% of that recall.")
    assert perception.perception_text(table.iloc[:0]).startswith("No held-out epoch")
