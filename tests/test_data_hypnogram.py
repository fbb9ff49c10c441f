"""Stage-code tables, annotations → 30-s epochs, and the hypnogram/signal alignment rule,
checked on the real Sleep-EDF hypnogram of SC4001."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sleepvlm.data.edf import edf_annotations, open_edf
from sleepvlm.data.hypnogram import (
    GAP,
    STAGE_TABLES,
    WRITE_CODES,
    align_hypnogram,
    annotations_to_epochs,
    encode_stages,
    map_stages,
    runs,
)
from sleepvlm.data.records import EXCLUDED_LABELS, STAGES, DataError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def real_file(name: str) -> Path:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"real excerpt {name} not available")
    return path


def test_tables_only_produce_known_labels():
    for table in STAGE_TABLES.values():
        assert set(table.values()) <= set(STAGES) | set(EXCLUDED_LABELS)


def test_written_codes_read_back_as_the_same_label():
    for fmt, codes in WRITE_CODES.items():
        for label, code in codes.items():
            if label in STAGES:
                assert STAGE_TABLES[fmt][code] == label, (fmt, label)


def test_rk_stages_three_and_four_become_n3_and_movement_is_kept():
    labels, unknown = map_stages(
        ["Sleep stage 3", "Sleep stage 4", "Movement time", "Sleep stage ?"], "sleepedf"
    )
    assert list(labels) == ["N3", "N3", "MOVE", "UNKNOWN"]
    assert unknown == {}


def test_unknown_codes_are_excluded_counted_and_warned():
    with pytest.warns(UserWarning, match=r"a_1.txt: unrecognised stage codes '4' ×2, '7' ×1"):
        labels, unknown = map_stages(["0", "4", "4", "7", "5", GAP], "isruc", "a_1.txt")
    assert list(labels) == ["W", "UNKNOWN", "UNKNOWN", "UNKNOWN", "REM", "UNKNOWN"]
    assert unknown == {"4": 2, "7": 1}


def test_annotations_become_epochs_with_gaps_marked():
    offset, epochs = annotations_to_epochs(
        [(10.0, 60.0, "W"), (70.0, 0.0, "Lights on"), (100.0, 30.0, "N2")], "x.ids"
    )
    assert offset == 10.0
    assert list(epochs) == ["W", "W", GAP, "N2"]


def test_annotations_off_the_30_s_grid_are_refused():
    with pytest.raises(DataError, match="x.edf: stage annotation 'W' at 0.0 s lasting 20.0 s"):
        annotations_to_epochs([(0.0, 20.0, "W"), (20.0, 20.0, "N1")], "x.edf")


def test_no_stage_annotation_is_refused():
    with pytest.raises(DataError, match="no sleep-stage annotations"):
        annotations_to_epochs([], "x.edf")


def test_hypnogram_longer_than_signal_is_truncated_with_a_warning():
    with pytest.warns(UserWarning, match="hypnogram has 10 epochs .* holds 3; .*7 epochs dropped"):
        labels, offset = align_hypnogram(["W"] * 10, 100.0, 0.0, "h.edf")
    assert len(labels) == 3 and offset == 0.0  # 90 s of whole epochs; the last 10 s are partial


def test_hypnogram_shorter_than_signal_leaves_the_tail_unscored():
    with pytest.warns(UserWarning, match="ends 60 s before the signal"):
        labels, _ = align_hypnogram(["W", "N1"], 120.0, 0.0, "h.edf")
    assert list(labels) == ["W", "N1"]


def test_epochs_before_the_signal_start_are_dropped():
    with pytest.warns(UserWarning, match="1 epochs start before the signal"):
        labels, offset = align_hypnogram(["W", "N1", "N2"], 70.0, -20.0, "h.edf")
    assert list(labels) == ["N1", "N2"] and offset == 10.0


def test_exact_fit_gives_no_warning(recwarn):
    labels, _ = align_hypnogram(["W"] * 4, 130.0, 10.0, "h.edf")
    assert len(labels) == 4 and not recwarn.list


def test_writer_refuses_labels_the_format_cannot_hold():
    with pytest.raises(DataError, match=r"isruc format has no stage code for \['MOVE'\]"):
        encode_stages(["W", "MOVE"], "isruc", "sim/1")


def test_runs_merge_consecutive_labels():
    assert runs(["W", "W", "N1", "W"]) == [(0, 2, "W"), (2, 1, "N1"), (3, 1, "W")]


def test_real_sleepedf_hypnogram_gives_the_published_stage_durations():
    path = real_file("sleepedf_SC4001EC-Hypnogram.edf")
    offset, codes = annotations_to_epochs(edf_annotations(open_edf(path)), str(path))
    labels, unknown = map_stages(codes, "sleepedf", str(path))
    with pytest.warns(UserWarning, match="truncated the hypnogram"):
        labels, offset = align_hypnogram(labels, 79500.0, offset, str(path))  # the PSG length
    seconds = {k: 30 * n for k, n in Counter(labels).items()}
    assert offset == 0 and unknown == {}
    assert seconds == {"W": 59910, "N1": 1740, "N2": 7500, "N3": 3030 + 3570, "REM": 3750}


def test_real_hypnogram_runs_match_the_published_csv():
    edf_path = real_file("sleepedf_SC4001EC-Hypnogram.edf")
    rows = np.genfromtxt(
        real_file("sleepedf_SC4001EC-Hypnogram.csv"),
        delimiter=",",
        names=True,
        dtype=None,
        encoding="utf-8",
    )
    annotations = edf_annotations(open_edf(edf_path))
    assert [a[2] for a in annotations] == list(rows["stage"])
    assert np.allclose([a[0] for a in annotations], rows["onset_s"])
