import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from sleepvlm import prepare
from sleepvlm.data.cohort import COHORT_SIZES, CohortSize
from sleepvlm.data.dcsm import write_dcsm
from sleepvlm.data.records import DataError
from sleepvlm.data.simulate import simulate_night
from sleepvlm.prepare import balanced_test_manifest, prepare_dataset, sample_counts
from sleepvlm.splits import read_manifest


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(COHORT_SIZES, "tiny", CohortSize(subjects=4, hours=1.0))
    return "tiny"


def test_prepare_splits_subjects_and_is_cached(tiny, monkeypatch):
    first = prepare_dataset("dcsm", cohort_size=tiny)
    m = first.manifest
    assert first.simulated and len(first.store) == len(m) > 0
    assert m.groupby("subject")["split"].nunique().max() == 1
    assert set(m["split"]) == {"train", "val", "test"}

    def no_rerun(*args, **kwargs):
        raise AssertionError("the store should have been reused")

    monkeypatch.setattr(prepare, "preprocess_dataset", no_rerun)
    again = prepare_dataset("dcsm", cohort_size=tiny)
    pd.testing.assert_frame_equal(again.manifest, m)


def test_balanced_manifest_is_saved_and_reproducible(tiny):
    prepared = prepare_dataset("isruc", cohort_size=tiny)
    available = prepared.manifest.query("split == 'test'")["stage"].value_counts()
    counts = {stage: min(2, int(n)) for stage, n in available.items()}
    a = balanced_test_manifest(prepared, counts, seed=5)
    b = balanced_test_manifest(prepared, counts, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert a["stage"].value_counts().to_dict() == counts
    saved = sorted((prepare.cache_dir("manifests")).glob("isruc-*.csv"))
    assert len(saved) == 1
    assert read_manifest(saved[0])[["subject", "epoch"]].equals(a[["subject", "epoch"]])


def test_a_user_folder_in_a_real_format_is_prepared_the_same_way(tiny, tmp_path):
    folder = tmp_path / "my_dcsm"
    for subject in range(3):
        write_dcsm(simulate_night("dcsm", subject, hours=0.5), folder)
    prepared = prepare_dataset("dcsm", data_dir=folder)
    assert not prepared.simulated and prepared.source == str(folder)
    assert prepared.manifest["subject"].nunique() == 3


def test_paper_counts_scale_for_smoke_builds_and_shortfall_is_explained(tiny):
    assert sample_counts("dcsm") == {"W": 453, "N1": 585, "N2": 606, "N3": 486, "REM": 572}
    assert sample_counts("dcsm", 0.01) == {"W": 5, "N1": 6, "N2": 6, "N3": 5, "REM": 6}
    prepared = prepare_dataset("shhs", cohort_size=tiny)
    with pytest.raises(DataError, match="use a larger cohort"):
        balanced_test_manifest(prepared, sample_counts("shhs"))


def test_generating_stages_are_the_simulators_and_bound_agreement(tiny):
    prepared = prepare_dataset("dcsm", cohort_size=tiny)
    sample = prepared.manifest.query("split == 'test'").reset_index(drop=True)
    truth = prepare.generating_stages(prepared, sample)
    assert len(truth) == len(sample) and set(truth) <= set(prepare.STAGES)
    # The scorer errs on some epochs (as humans do) but agrees on most.
    agreement = (truth == sample["stage"].to_numpy()).mean()
    assert 0.6 < agreement < 1.0
    night = sample.iloc[0]
    rec = simulate_night("dcsm", int(str(night["subject"]).split("-s")[-1]), hours=1.0)
    assert truth[0] == rec.other_scorers["truth"][int(night["epoch"])]
    ceiling = prepare.label_ceiling(prepared, sample)
    labels = sample["stage"].astype(str)
    assert ceiling == pytest.approx(cohen_kappa_score(labels, truth.astype(str)))
    assert 0.4 < ceiling < 1.0


def test_generating_stages_of_a_real_dataset_are_refused(tiny, tmp_path):
    folder = tmp_path / "my_dcsm"
    for subject in range(3):
        write_dcsm(simulate_night("dcsm", subject, hours=0.5), folder)
    prepared = prepare_dataset("dcsm", data_dir=folder)
    with pytest.raises(DataError, match="real dataset has no generating stage"):
        prepare.generating_stages(prepared, prepared.manifest)
    assert prepare.label_ceiling(prepared, prepared.manifest) is None


def test_a_dataset_the_paper_did_not_sample_gets_the_mean_of_its_counts():
    from sleepvlm.paper import BALANCED_COUNTS

    mean_n1 = round(sum(c["N1"] for c in BALANCED_COUNTS.values()) / len(BALANCED_COUNTS))
    assert prepare.paper_counts("mass")["N1"] == mean_n1 == 507
    assert prepare.paper_counts("dcsm") == BALANCED_COUNTS["dcsm"]
    assert sample_counts("sleepedf", 0.01) == {
        s: max(1, round(n * 0.01)) for s, n in prepare.paper_counts("sleepedf").items()
    }


def test_the_ceiling_note_follows_the_numbers_and_says_who_sets_it_on_real_data():
    note = prepare.ceiling_note({"dcsm": 0.81, "shhs": 0.779}, {})
    assert "κ 0.81 (DCSM) and 0.78 (SHHS)" in note and "real data" not in note
    real = prepare.ceiling_note({"isruc": None}, {"isruc": 0.64})
    assert "two scorers' agreement" in real and "κ 0.64 (ISRUC)" in real
    assert "not measured" in prepare.ceiling_note({"mass": None}, {"mass": None})


def test_a_real_dataset_with_two_scorers_has_their_agreement_as_its_ceiling(tiny, tmp_path):
    from sleepvlm.data.cohort import write_simulated_download

    folder = write_simulated_download("isruc", tmp_path / "my_isruc", "tiny")
    prepared = prepare_dataset("isruc", data_dir=folder)
    sample = prepared.manifest.query("split == 'test'")
    kappa = prepare.second_scorer_kappa(prepared, sample)
    # the simulated ISRUC scorers disagree as real ones do: well above chance, below 1
    assert 0.4 < kappa < 0.95
    assert prepare.label_ceiling(prepared, sample) is None
    one_scorer = prepare_dataset(
        "dcsm", data_dir=write_simulated_download("dcsm", tmp_path / "d", "tiny")
    )
    assert prepare.second_scorer_kappa(one_scorer, one_scorer.manifest) is None
    simulated = prepare_dataset("isruc", cohort_size=tiny)
    assert prepare.second_scorer_kappa(simulated, simulated.manifest) is None
