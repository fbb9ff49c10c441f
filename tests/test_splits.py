import numpy as np
import pandas as pd
import pytest

from sleepvlm import splits
from sleepvlm.data.records import STAGES, DataError
from sleepvlm.paper import BALANCED_COUNTS
from sleepvlm.splits import (
    assign_splits,
    balanced_sample,
    manifest_hash,
    read_manifest,
    split_subjects,
    stage_table,
    write_manifest,
)


def make_manifest(n_subjects=20, epochs=200, datasets=("dcsm", "shhs"), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for ds in datasets:
        for s in range(n_subjects):
            stages = rng.choice(STAGES, size=epochs, p=[0.15, 0.1, 0.45, 0.12, 0.18])
            for e, st in enumerate(stages):
                rows.append((ds, f"{ds}-s{s:02d}", "n1", e, st, f"hash{s}"))
    cols = ["dataset", "subject", "night", "epoch", "stage", "source_hash"]
    return pd.DataFrame(rows, columns=cols)


def test_split_fractions_and_determinism():
    subjects = [f"s{i:02d}" for i in range(40)]
    a = split_subjects(subjects, seed=3)
    assert a == split_subjects(list(reversed(subjects)), seed=3)
    counts = pd.Series(a).value_counts()
    assert counts.to_dict() == {"train": 28, "test": 8, "val": 4}
    assert a != split_subjects(subjects, seed=4)


def test_split_needs_a_subject_per_split():
    with pytest.raises(DataError, match="2 subject"):
        split_subjects(["a", "b"])


def test_no_subject_in_two_splits_and_datasets_split_separately():
    m = assign_splits(make_manifest())
    assert (m.groupby("subject")["split"].nunique() == 1).all()
    for _, rows in m.groupby("dataset"):
        assert set(rows["split"]) == {"train", "val", "test"}


def test_balanced_sample_is_exact_seeded_and_from_test_subjects_only():
    m = assign_splits(make_manifest(n_subjects=30))
    counts = {"W": 40, "N1": 30, "N2": 50, "N3": 35, "REM": 45}
    a = balanced_sample(m[m.dataset == "dcsm"], counts, seed=1)
    b = balanced_sample(m[m.dataset == "dcsm"], counts, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert manifest_hash(a) == manifest_hash(b)
    assert a["stage"].value_counts().to_dict() == counts
    assert set(a["split"]) == {"test"}
    assert not a.duplicated(["subject", "night", "epoch"]).any()
    c = balanced_sample(m[m.dataset == "dcsm"], counts, seed=2)
    assert manifest_hash(a) != manifest_hash(c)


def test_balanced_sample_names_the_shortfall():
    m = assign_splits(make_manifest(n_subjects=5, epochs=50))
    with pytest.raises(DataError, match=r"dcsm: the test split holds \d+ N1 epochs but 585"):
        balanced_sample(m[m.dataset == "dcsm"], {"N1": BALANCED_COUNTS["dcsm"]["N1"]})


def test_stage_table_and_manifest_round_trip(tmp_path):
    m = assign_splits(make_manifest(n_subjects=10, epochs=30))
    table = stage_table(m)
    assert list(table.columns) == [*STAGES, "Total"]
    assert table["Total"].sum() == len(m)
    path = write_manifest(m, tmp_path / "sub" / "m.csv")
    back = read_manifest(path)
    assert manifest_hash(back) == manifest_hash(m)


def test_missing_manifest_says_which_chapter_makes_it(tmp_path):
    with pytest.raises(DataError, match="chapter 01"):
        read_manifest(tmp_path / "nope.csv")


def test_paper_counts_sum_to_the_paper_totals():
    totals = {ds: sum(c.values()) for ds, c in BALANCED_COUNTS.items()}
    assert totals == {"dcsm": 2702, "shhs": 2390, "isruc": 2249}


def test_nights_of_chooses_a_seeded_subset_and_night_keys_follow_rows():
    frame = pd.DataFrame({"subject": ["a", "a", "b", "c", "d"], "night": ["1", "1", "1", "2", "1"]})
    assert splits.nights_of(frame) == [("a", "1"), ("b", "1"), ("c", "2"), ("d", "1")]
    two = splits.nights_of(frame, max_nights=2, seed=3)
    assert len(two) == 2 and two == splits.nights_of(frame, max_nights=2, seed=3)
    assert set(two) <= set(splits.nights_of(frame))
    kept = frame[splits.night_keys(frame).isin([("a", "1")])]
    assert kept.index.tolist() == [0, 1]
