"""Tests of rule-based quality control: contradiction flags on hand-made evidence, signal
flags, the per-dataset report, and exclusion only on request."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sleepvlm.data.records import DataError
from sleepvlm.data.simulate import simulate_night
from sleepvlm.rules.evidence import Detection
from sleepvlm.rules.quality import (
    QUALITY_FLAGS,
    exclude_flagged,
    flags_frame,
    quality_flags,
    quality_report,
    quality_table,
)
from sleepvlm.rules.table import RULES
from sleepvlm.signal import QualityWarning, epoch_recording
from sleepvlm.splits import assign_splits

#: (scored stage, rules met, slow waves found, unknown rules, EEG usable, EMG usable)
CASES = [
    ("N3", set(), 0, (), True, True),  # 0: N3 without a single slow wave
    ("N3", set(), 3, (), True, True),  # 1: N3 with too few slow waves: not a contradiction
    ("W", {"R.rem", "R.atonia"}, 0, (), True, True),  # 2: W with REMs over atonia
    ("W", {"R.rem"}, 0, (), True, True),  # 3: W with REMs but high chin: fine
    ("N2", {"W.alpha"}, 0, (), True, True),  # 4: N2 with alpha > 50 %
    ("N3", set(), 0, ("N3.sw20",), True, True),  # 5: slow waves not evaluable: no flag
    ("N2", {"N2.spindle"}, 0, (), False, True),  # 6: flat EEG
    ("REM", {"major_body_movement", "N3.sw20"}, 9, (), True, False),  # 7: artifact, N3 signs
]


def detection(cases=CASES) -> Detection:
    n = len(cases)
    criteria = pd.DataFrame(
        {r: pd.array([r in c[1] for c in cases], dtype="boolean") for r in RULES}
    )
    for k, case in enumerate(cases):
        for rule in case[3]:
            criteria.loc[k, rule] = pd.NA
    epochs = pd.DataFrame(
        {
            "onset": 30.0 * np.arange(n),
            "n_slow_wave": [c[2] for c in cases],
            "eeg_ok": [c[4] for c in cases],
            "eog_ok": False,  # absent all night
            "emg_ok": [c[5] for c in cases],
        }
    )
    events = pd.DataFrame(columns=["kind", "channel", "onset", "duration", "amplitude", "epoch"])
    return Detection("test/s/n", epochs, events, criteria)


def test_contradictions_and_signal_flags():
    table = quality_flags(detection(), [c[0] for c in CASES])
    assert table["flags"].tolist() == [
        "N3_without_slow_waves",
        "",
        "W_with_rem_signs",
        "",
        "N2_with_alpha",
        "",
        "unusable_eeg",
        "REM_with_slow_waves;unusable_emg;artifact",
    ]
    assert not table["unusable_eog"].any()  # a channel absent all night is no per-epoch flag
    assert list(table.columns) == ["epoch", "onset", "stage", *QUALITY_FLAGS, "flags"]


def test_flags_need_labels_for_every_epoch():
    with pytest.raises(DataError, match="8 epochs"):
        quality_flags(detection(), ["W"] * 3)


def test_flags_frame_names_the_rules_of_each_contradiction():
    frame = flags_frame().set_index("flag")
    assert frame.loc["W_with_rem_signs", "rules met"] == "R.rem, R.atonia"
    assert frame.loc["N3_without_slow_waves", "no evidence of"] == "N3.sw20"
    assert set(frame.index) == set(QUALITY_FLAGS)


def quality_rows() -> pd.DataFrame:
    table = quality_flags(detection(), [c[0] for c in CASES])
    table.insert(0, "night", "1")
    table.insert(0, "subject", "s")
    table.insert(0, "dataset", "d")
    return table


def test_report_counts_flags_per_dataset_and_stage():
    report = quality_report(quality_rows())
    assert report.loc[("d", "N3"), "epochs"] == 3
    assert report.loc[("d", "N3"), "N3_without_slow_waves"] == 1
    assert report.loc[("d", "W"), "any flag"] == 1
    assert report.index.get_level_values("stage").tolist() == ["W", "N2", "N3", "REM"]


def test_nothing_is_excluded_unless_asked_and_exclusions_are_reported():
    quality = quality_rows()
    manifest = quality[["dataset", "subject", "night", "epoch", "stage"]]
    assert exclude_flagged(manifest, quality).equals(manifest)
    with pytest.warns(QualityWarning, match="excluded 2 of 8 epochs"):
        kept = exclude_flagged(manifest, quality, exclude_flags=["artifact", "unusable_eeg"])
    assert kept["epoch"].tolist() == [0, 1, 2, 3, 4, 5]


def test_exclusion_refuses_unknown_flags_and_unchecked_epochs():
    quality = quality_rows()
    manifest = quality[["dataset", "subject", "night", "epoch", "stage"]]
    with pytest.raises(DataError, match="unknown quality flags"):
        exclude_flagged(manifest, quality, exclude_flags=["noisy"])
    extra = pd.concat([manifest, manifest.tail(1).assign(epoch=99)], ignore_index=True)
    with pytest.raises(DataError, match="1 manifest epochs have no quality row"):
        exclude_flagged(extra, quality, exclude_flags=["artifact"])


def test_quality_table_sits_beside_the_manifest():
    epochs = {}
    for subject in ("a", "b", "c"):
        rec = simulate_night("shhs", 0, seed=2, hours=0.5)
        rec.subject = subject
        epochs[subject] = epoch_recording(rec)
    manifest = assign_splits(pd.concat([e.manifest for e in epochs.values()], ignore_index=True))
    store = SimpleNamespace(read_record=lambda subject, night: epochs[subject])
    prepared = SimpleNamespace(dataset="shhs", manifest=manifest, store=store)
    table = quality_table(prepared, records=[("a", manifest["night"][0])])
    assert len(table) == len(epochs["a"])
    assert table[["dataset", "subject", "epoch"]].equals(
        manifest.loc[manifest["subject"] == "a", ["dataset", "subject", "epoch"]]
    )
    assert table["split"].eq(manifest.loc[manifest["subject"] == "a", "split"]).all()
    assert table["stage"].tolist() == epochs["a"].manifest["stage"].tolist()
