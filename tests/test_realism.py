import numpy as np
import pandas as pd
import pytest

from sleepvlm.data.cohort import COHORT_SIZES
from sleepvlm.data.realism import (
    NIGHT_IQR_STATISTICS,
    NIGHT_RANGE_STATISTICS,
    NOT_MEASURED,
    REAL_NIGHT_GROUPS,
    REAL_SCORER_KAPPA,
    agreement_table,
    hypnogram_stats,
    night_goal_texts,
    night_structure_goals,
    night_structure_table,
    real_excerpt_spectra,
    real_hypnograms,
    real_scorer_panel,
    real_single_scorer_nights,
    scorer_agreement_summary,
    scorer_kappa_texts,
    simulated_scored_nights,
    simulated_scorer_panel,
    stage_spectra,
    yasa_goal_texts,
    yasa_staging_agreement,
)
from sleepvlm.data.records import STAGES, DataError
from sleepvlm.data.simulate import CENTERS, simulate_night


@pytest.fixture(scope="module")
def night():
    return simulate_night("shhs", 2, hours=3.0)


def test_hypnogram_stats_on_a_known_sequence():
    labels = ["W", "W", "N1", "N2", "N3", "N3", "N2", "REM", "MOVE", "REM", "W"]
    stats = hypnogram_stats(labels)
    assert stats["n_epochs"] == 10
    assert stats["shares"]["N3"] == pytest.approx(0.2)
    assert sum(stats["shares"].values()) == pytest.approx(1.0)
    trans = stats["transitions"]
    assert trans.loc["N3", "N3"] == pytest.approx(0.5)
    assert trans.loc["W", "N1"] == pytest.approx(0.5)
    assert np.allclose(trans.sum(axis=1).dropna(), 1.0)
    assert stats["sleep_onset"] == 2
    assert stats["n3_first_half"] == 1.0 and stats["rem_first_half"] == 0.0


def test_hypnogram_stats_rejects_bad_labels():
    with pytest.raises(DataError, match="unknown stage labels"):
        hypnogram_stats(["W", "S4"])
    with pytest.raises(DataError, match="no scored"):
        hypnogram_stats(["UNKNOWN", "MOVE"])


def test_real_hypnograms_load_and_look_like_nights():
    hyps = real_hypnograms()
    assert set(hyps) == {"yasa_full_6hrs", "yasa_sub-02", "sleepedf_SC4001"}
    assert len(hyps["yasa_full_6hrs"]) == 720
    assert len(hyps["yasa_sub-02"]) == 98
    sedf = hyps["sleepedf_SC4001"]
    assert sedf[0] == "W" and sedf[-1] in ("W", "UNKNOWN")
    for hyp in hyps.values():
        assert set(hyp) <= set(STAGES) | {"UNKNOWN", "MOVE"}
    stats = hypnogram_stats(hyps["yasa_full_6hrs"])
    assert stats["n3_first_half"] > 0.5 and stats["rem_first_half"] < 0.5


def test_real_excerpt_spectra_show_known_features():
    spec = real_excerpt_spectra()
    assert set(spec.columns) == {"source", "stage", "channel", "freq", "psd"}
    assert set(spec["stage"]) == {"W", "N2", "N3"}
    assert (spec["psd"] >= 0).all() and spec["freq"].max() <= 40

    def at(df, f):
        return float(np.interp(f, df["freq"], df["psd"]))

    n2 = spec[spec["stage"] == "N2"]
    assert at(n2, 13.0) > 3 * at(n2, 10.0)  # the spindle bump
    pz = spec[spec["channel"] == "EEG Pz-Oz"]
    assert at(pz, 9.0) > 2 * at(pz, 13.0)  # wake alpha


def test_a_corrupt_real_excerpt_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SLEEPVLM_REAL_DATA", str(tmp_path))
    (tmp_path / "yasa_data_N2_spindles_15sec_200Hz.txt").write_text("not numbers\n")
    with pytest.raises(DataError, match="yasa_data_N2.*SHA-256 differs"):
        real_excerpt_spectra()


def test_stage_spectra_of_a_simulated_night(night):
    spec = stage_spectra(night, "eeg")
    assert {"stage", "channel", "freq", "psd", "n_epochs"} <= set(spec.columns)
    assert set(spec["stage"]) <= set(STAGES) and {"W", "N2", "N3"} <= set(spec["stage"])
    psd = spec.pivot(index="freq", columns="stage", values="psd")
    delta = psd.loc[0.5:2].mean()
    assert delta["N3"] > 1.5 * delta["N2"] > 1.5 * delta["W"]
    assert spec.groupby("stage")["n_epochs"].first().sum() == len(night.stages)
    emg = stage_spectra(night, "emg")
    assert (emg["channel"] == night.role("emg")).all()


@pytest.mark.slow
def test_yasa_agreement_structure(night):
    out = yasa_staging_agreement(night)
    assert set(out) >= {"kappa", "accuracy", "f1", "confusion", "n_epochs", "predicted"}
    assert -1 <= out["kappa"] <= 1 and 0 <= out["accuracy"] <= 1
    assert isinstance(out["confusion"], pd.DataFrame)
    assert out["confusion"].to_numpy().sum() == out["n_epochs"] == len(night.stages)
    assert set(out["f1"]) == set(STAGES)
    assert set(out["predicted"]) <= set(STAGES)
    assert out["kappa"] > 0.4  # a real stager must recognise the simulated stages


def test_yasa_agreement_rejects_short_recordings():
    short = simulate_night("dcsm", 0, hours=0.25)
    short.stages = short.stages[:5]
    with pytest.raises(DataError, match="at least 10 epochs"):
        yasa_staging_agreement(short)


def test_night_structure_goals_read_the_real_quantiles():
    real = {f"r{i}": i for i in range(1, 11)}  # statistic values 1 ... 10
    rows = [{"group": "DOD-H", **dict.fromkeys(NIGHT_RANGE_STATISTICS, v)} for v in real.values()]
    rows += [{"group": "inside", **dict.fromkeys(NIGHT_RANGE_STATISTICS, 5.0)}]
    rows += [{"group": "edge", **dict.fromkeys(NIGHT_RANGE_STATISTICS, 2.5)}]
    table = pd.DataFrame(rows)
    goals = night_structure_goals(table, ["inside", "edge"], real=["DOD-H"])
    assert goals.loc["inside", "met"].all()
    edge = goals.loc["edge"]
    # 2.5 lies inside the 10-90 % range (1.9-9.1) but below the 25 % quantile (3.25)
    assert not edge.loc[list(NIGHT_IQR_STATISTICS), "met"].any()
    assert edge.drop(index=list(NIGHT_IQR_STATISTICS))["met"].all()


@pytest.fixture(scope="module")
def cohort_night_table():
    size = COHORT_SIZES["full"]
    groups = {c: simulated_scored_nights(c, size.subjects, size.hours) for c in CENTERS}
    groups.update({g: real_single_scorer_nights(w) for g, w in REAL_NIGHT_GROUPS.items()})
    return night_structure_table(groups)


def test_the_cohort_nights_are_structured_like_real_dod_nights(cohort_night_table):
    assert (cohort_night_table["group"] == "DOD-H").sum() == 25 * 5
    goals = night_structure_goals(cohort_night_table, list(CENTERS))
    assert goals["met"].all(), goals[~goals["met"]]
    # centers differ as populations do: ISRUC's patients sleep the most fragmented nights
    medians = cohort_night_table.groupby("group")["stage_changes_per_h"].median()
    assert medians["isruc"] > max(medians["dcsm"], medians["shhs"])


def test_simulated_scorers_sit_in_the_real_scorers_range():
    panels = {c: simulated_scorer_panel(c, 6, 8.0) for c in CENTERS}
    panels["DOD-H"] = real_scorer_panel("h")
    summary = scorer_agreement_summary(panels)
    assert summary.loc["DOD-H", "pairwise κ mean"] == pytest.approx(0.703, abs=0.001)
    low, high = REAL_SCORER_KAPPA
    for center in CENTERS:
        assert low <= summary.loc[center, "pairwise κ mean"] <= high, center
        near, away = summary.loc[
            center, ["disagreement near a change", "disagreement away from one"]
        ]
        assert near > 2 * away, center


def test_goal_sentences_follow_the_numbers_and_say_when_nothing_was_measured():
    empty = agreement_table({})
    assert empty.empty and empty.index.names == ["center", "subject"]
    assert yasa_goal_texts(empty)["kappa_goal"] == NOT_MEASURED
    result = {"kappa": 0.65, "accuracy": 0.7, "f1": {s: 0.7 for s in STAGES} | {"N1": 0.4}}
    texts = yasa_goal_texts(agreement_table({("dcsm", "s0"): result}))
    assert texts == {
        "yasa_kappa": "0.65",
        "kappa_goal": "is missed on dcsm (0.65)",
        "f1_goal": "not every stage reaches it: N1 0.40",
        "kappa_goal_value": "0.7",
        "f1_goal_value": "0.6 (N1: 0.45)",
    }
    n1_reaches_its_own = {**result, "f1": {s: 0.7 for s in STAGES} | {"N1": 0.5, "N3": 0.55}}
    texts = yasa_goal_texts(agreement_table({("dcsm", "s0"): n1_reaches_its_own}))
    assert texts["f1_goal"] == "not every stage reaches it: N3 0.55"
    good = {**result, "kappa": 0.8}
    both = agreement_table({("dcsm", "s0"): good, ("shhs", "s0"): good, ("shhs", "s1"): result})
    assert yasa_goal_texts(both)["kappa_goal"] == "is met on every center"  # shhs mean 0.725
    goals = pd.DataFrame(
        {"met": [True, False]}, index=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")])
    )
    assert night_goal_texts(goals) == {
        "night_goals_met": "1 of 2",
        "night_goals_verdict": "the rows below are not met",
    }
    no_nights = pd.DataFrame(columns=["group", *NIGHT_RANGE_STATISTICS], dtype=float)
    no_goals = night_structure_goals(no_nights, [])
    assert night_goal_texts(no_goals)["night_goals_verdict"] == NOT_MEASURED
    summary = pd.DataFrame({"pairwise κ mean": [0.70, 0.80]}, index=["dcsm", "isruc"])
    assert scorer_kappa_texts(summary, ["dcsm", "isruc"]) == {
        "scorer_kappa_range": "dcsm 0.70, isruc 0.80",
        "scorer_kappa_verdict": "outside (for isruc)",
    }
    assert scorer_kappa_texts(summary, [])["scorer_kappa_verdict"] == NOT_MEASURED
