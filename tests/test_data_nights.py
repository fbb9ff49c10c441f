"""Whole-night statistics checked on hand-made hypnograms whose answers are counted by hand,
and scorer agreement on constructed labels and on the five-scorer Dreem Open Datasets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from sleepvlm.data.nights import (
    DOD_FILES,
    DOD_SCORERS,
    disagreement_near_transitions,
    dod_hypnograms,
    dod_scorers,
    each_vs_rest_kappa,
    majority_consensus,
    night_statistics,
    pairwise_kappa,
    quantile_summary,
    read_dod_scorers,
    scorer_confusion,
    stage_share_by_part,
    statistics_table,
)
from sleepvlm.data.records import STAGES, UNKNOWN, CorruptFileError, DataError
from sleepvlm.data.registry import real_data_dirs

# index:  0          1    2    3     4     5     6    7       8     9     10    11    12
TOY = ["UNKNOWN", "W", "W", "N1", "N2", "N2", "W", "MOVE", "N2", "N3", "N3", "N2", "REM"]
TOY += ["REM", "W", "W"]  # 13, 14, 15
# Scored record 1..15 (15 epochs), sleep epochs 3,4,5,8,9,10,11,12,13 (9), sleep period 3..13.


def test_toy_night_durations_and_latencies():
    stats = night_statistics(TOY)
    assert stats["tib_min"] == 7.5  # unscored epoch 0 is outside, MOVE at 7 inside
    assert stats["tst_min"] == 4.5
    assert stats["sleep_efficiency"] == pytest.approx(9 / 15)
    assert stats["sleep_onset_latency_min"] == 1.0  # epochs 1, 2
    assert stats["rem_latency_min"] == 4.5  # epoch 3 → epoch 12
    assert stats["waso_min"] == 0.5  # epoch 6; the final wake (14, 15) is not counted


def test_toy_night_shares_changes_and_awakenings():
    stats = night_statistics(TOY)
    assert [stats[f"share_{s}"] for s in STAGES[1:]] == pytest.approx([1 / 9, 4 / 9, 2 / 9, 2 / 9])
    # N1→N2, N2→W, N2→N3, N3→N2, N2→REM (W→MOVE→N2 is not an adjacent scored pair) in 0.075 h
    assert stats["stage_changes_per_h"] == pytest.approx(5 / 0.075)
    assert stats["awakenings_per_h"] == pytest.approx(1 / 0.075)  # N2→W; REM→W (13→14) is after


def test_toy_night_thirds_bouts_and_transitions():
    stats = night_statistics(TOY)
    # sleep period of 11 epochs: offsets 0-3 | 4-7 | 8-10; N3 at offsets 6, 7; REM at 9, 10
    assert [stats[f"n3_third_{k}"] for k in (1, 2, 3)] == [0.0, 1.0, 0.0]
    assert [stats[f"rem_third_{k}"] for k in (1, 2, 3)] == [0.0, 0.0, 1.0]
    # N2 runs in the sleep period: 4-5, 8, 11 → 4/3 epochs; the W run is the one at 6
    assert stats["mean_bout_N2_min"] == pytest.approx(2 / 3)
    assert stats["mean_bout_W_min"] == 0.5
    assert stats["mean_bout_N3_min"] == stats["mean_bout_REM_min"] == 1.0
    trans = stats["transitions"]
    assert list(trans.loc["W"]) == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0, 0.0])
    assert list(trans.loc["N2"]) == pytest.approx([0.25, 0.0, 0.25, 0.25, 0.25])


def test_epoch_length_scales_every_duration():
    thirty, sixty = night_statistics(TOY), night_statistics(TOY, epoch_s=60.0)
    for key in ("tib_min", "tst_min", "rem_latency_min", "waso_min", "mean_bout_N2_min"):
        assert sixty[key] == 2 * thirty[key]
    assert sixty["stage_changes_per_h"] == thirty["stage_changes_per_h"] / 2
    assert sixty["sleep_efficiency"] == thirty["sleep_efficiency"]


def test_a_night_without_rem_or_n3_has_missing_latency_thirds_and_bouts():
    stats = night_statistics(["W", "N1", "N2", "N2", "W"])
    assert stats["rem_latency_min"] is None
    assert stats["rem_third_1"] is None and stats["n3_third_2"] is None
    assert stats["mean_bout_REM_min"] is None and stats["mean_bout_W_min"] is None


def test_parts_of_the_sleep_period_differ_by_at_most_one_epoch():
    labels = ["N2"] * 10
    assert stage_share_by_part(labels, "N2", (0, 9), 3) == pytest.approx((0.4, 0.3, 0.3))
    assert stage_share_by_part(labels, "REM", (0, 9), 3) is None


def test_bad_hypnograms_are_refused_naming_the_night():
    with pytest.raises(DataError, match=r"night7.csv: unknown stage labels \['S4'\]"):
        night_statistics(["W", "S4"], source="night7.csv")
    with pytest.raises(DataError, match="no sleep epoch"):
        night_statistics(["W", "W", "MOVE"])
    with pytest.raises(DataError, match="awake: no sleep epoch"):
        statistics_table({"toy": TOY, "awake": ["W", "W"]})


def test_statistics_table_has_one_row_per_night_and_nan_for_missing():
    table = statistics_table({"toy": TOY, "no rem": ["W", "N2", "N3", "N2"]})
    assert list(table.index) == ["toy", "no rem"] and table.index.name == "night"
    assert table.loc["toy", "tst_min"] == 4.5
    assert np.isnan(table.loc["no rem", "rem_latency_min"])
    assert "transitions" not in table.columns and {"share_N3", "n3_third_1"} <= set(table)


def test_quantile_summary_overall_and_by_group():
    table = pd.DataFrame({"x": np.arange(11.0), "group": ["a"] * 6 + ["b"] * 5})
    table.loc[0, "x"] = np.nan
    overall = quantile_summary(table)
    assert list(overall.columns) == ["n", "10%", "25%", "50%", "75%", "90%"]
    assert overall.loc["x", "n"] == 10 and overall.loc["x", "50%"] == 5.5
    grouped = quantile_summary(table, by="group")
    assert grouped.loc[("b", "x"), "50%"] == 8.0 and grouped.loc[("a", "x"), "n"] == 5
    with pytest.raises(DataError, match="no column 'dataset' to group by"):
        quantile_summary(table, by="dataset")


# --- scorers on constructed labels ------------------------------------------------------------


def test_majority_consensus_and_its_tie_rule():
    scorers = {
        "s1": ["W", "N1", "N2", "N1", UNKNOWN, UNKNOWN, "N1", "W"],
        "s2": ["W", "N2", "N2", "N2", "N3", UNKNOWN, "N2", "N2"],
        "s3": ["N1", "N2", "N3", "N1", UNKNOWN, UNKNOWN, "REM", "N1"],
    }
    expected = ["W", "N2", "N2", "N1", "N3", UNKNOWN, "N1", "W"]
    assert list(majority_consensus(scorers)) == expected
    # in the three-way ties (epochs 6, 7) the first column wins: put s2 first
    reordered = {name: scorers[name] for name in ("s2", "s1", "s3")}
    assert list(majority_consensus(reordered))[6:] == ["N2", "N2"]


def test_kappa_of_a_hand_counted_pair_and_against_sklearn():
    pair = {"a": ["W", "W", "N2", "N2"], "b": ["W", "N2", "N2", "N2"]}
    # p_o = 3/4, p_e = (2·1 + 2·3)/16 = 1/2 → κ = 0.5
    assert pairwise_kappa(pair)["kappa"].item() == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    a, b, c = (rng.choice(STAGES, 500) for _ in range(3))
    b[:300] = a[:300]
    table = pairwise_kappa({"a": a, "b": b, "c": c}).set_index(["scorer_a", "scorer_b"])
    assert len(table) == 3
    assert table.loc[("a", "b"), "kappa"] == pytest.approx(cohen_kappa_score(a, b))
    assert table.loc[("b", "c"), "kappa"] == pytest.approx(cohen_kappa_score(b, c))


def test_pairwise_kappa_counts_only_epochs_scored_by_all():
    scorers = {"a": ["W", "N2", "MOVE"], "b": ["W", "N2", "N3"], "c": ["W", "N2", "N2"]}
    table = pairwise_kappa(scorers)
    assert (table["epochs"] == 2).all() and (table["kappa"] == 1.0).all()


def test_each_vs_rest_kappa_against_the_others_majority():
    s1 = ["W", "N2", "N2", "REM", "N3", "N3"]
    s3 = ["W", "N2", "N2", "REM", "N2", "N2"]
    table = each_vs_rest_kappa({"s1": s1, "s2": s1, "s3": s3})
    # s1's rest (s2, s3) ties where they differ and s2 (first) wins: the rest is s1 itself
    assert table.loc["s1", "kappa"] == 1.0
    # s3 against s1: p_o = 4/6, p_e = (1·1 + 2·4 + 1·1)/36 → κ = 14/26
    assert table.loc["s3", "kappa"] == pytest.approx(14 / 26)
    assert (table["epochs"] == 6).all()


def test_scorer_confusion_is_row_normalised_on_the_reference():
    reference = ["N1", "N1", "N1", "N1", "N2", UNKNOWN]
    compared = ["N1", "N2", "N2", "W", "N2", "N2"]
    confusion = scorer_confusion(reference, compared)
    assert confusion.index.name == "reference" and list(confusion.columns) == list(STAGES)
    assert list(confusion.loc["N1"]) == [0.25, 0.25, 0.5, 0.0, 0.0]
    assert confusion.loc["N2", "N2"] == 1.0 and confusion.loc["W"].isna().all()


NEAR = {
    "s1": ["W", "W", "W", "W", "N2", "N2", "N2", "N2"],
    "s2": ["W", "W", "W", "N2", "N2", "N2", "N2", "N2"],  # disagrees at 3, next to the change
    "s3": ["W", "N1", "W", "W", "N2", "N2", "N2", "N2"],  # disagrees at 1, away from it
}


def test_disagreement_near_a_consensus_change():
    # consensus W W W W | N2 N2 N2 N2: one change, flanked by epochs 3 and 4
    out = disagreement_near_transitions(NEAR)
    assert out["epochs"] == 8 and out["disagreeing"] == 2
    assert out["share_of_epochs_near"] == 0.25
    assert out["share_of_disagreement_near"] == 0.5
    assert out["rate_near"] == 0.5 and out["rate_away"] == pytest.approx(1 / 6)
    wider = disagreement_near_transitions(NEAR, window=2)  # epochs 2-5
    assert wider["share_of_epochs_near"] == 0.5 and wider["rate_away"] == 0.25


def test_stacked_nights_do_not_make_a_change_at_their_seam():
    stacked = {name: labels * 2 for name, labels in NEAR.items()}
    nights = [0] * 8 + [1] * 8
    assert disagreement_near_transitions(stacked, nights=nights)["share_of_epochs_near"] == 0.25
    # without night ids the N2 → W seam counts as a change and epochs 7, 8 become "near"
    assert disagreement_near_transitions(stacked)["share_of_epochs_near"] == 6 / 16


def test_scorer_functions_refuse_bad_input():
    with pytest.raises(DataError, match="one length"):
        pairwise_kappa({"a": ["W", "N2"], "b": ["W"]})
    with pytest.raises(DataError, match="1 scorer column"):
        each_vs_rest_kappa({"a": ["W", "N2"]})
    with pytest.raises(DataError, match=r"scorer compared: unknown stage labels \['R'\]"):
        scorer_confusion(["W", "REM"], ["W", "R"])
    with pytest.raises(DataError, match="no epoch is scored by all"):
        pairwise_kappa({"a": ["W", UNKNOWN], "b": [UNKNOWN, "N2"]})
    with pytest.raises(DataError, match="window must be 1 or more"):
        disagreement_near_transitions(NEAR, window=0)
    with pytest.raises(DataError, match="3 night ids for 8 epochs"):
        disagreement_near_transitions(NEAR, nights=[0, 0, 1])


# --- DOD files --------------------------------------------------------------------------------

DOD_HEADER = "record,epoch," + ",".join(DOD_SCORERS)


def write(tmp_path, lines: list[str]):
    path = tmp_path / "dod.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_dod_scorers_turns_codes_into_labels(tmp_path):
    path = write(tmp_path, [DOD_HEADER, "r1,0,0,1,2,3,4", "r1,1,-1,0,0,0,0", "r2,0,2,2,2,2,2"])
    table = read_dod_scorers(path)
    assert list(table.iloc[0][list(DOD_SCORERS)]) == list(STAGES)
    assert table.loc[1, "scorer_1"] == UNKNOWN and list(table["record"]) == ["r1", "r1", "r2"]


def test_read_dod_scorers_names_the_file_and_the_fault(tmp_path):
    path = write(tmp_path, ["record,epoch,scorer_1,scorer_2,scorer_3,scorer_4", "r1,0,0,0,0,0"])
    with pytest.raises(CorruptFileError, match=r"dod.csv: missing columns \['scorer_5'\]"):
        read_dod_scorers(path)
    path = write(tmp_path, [DOD_HEADER, "r1,0,0,0,0,0,0", "r1,1,0,0,7,0,0"])
    with pytest.raises(CorruptFileError, match="dod.csv: column scorer_3 holds 1 codes outside"):
        read_dod_scorers(path)
    path = write(tmp_path, [DOD_HEADER, "r1,0,0,0,0,0,0", "r1,2,0,0,0,0,0"])
    with pytest.raises(CorruptFileError, match="dod.csv: record r1 has epoch 2 where epoch 1"):
        read_dod_scorers(path)
    path = write(tmp_path, [])
    with pytest.raises(CorruptFileError, match="dod.csv: cannot be read as a CSV table"):
        read_dod_scorers(path)


def test_dod_readers_refuse_unknown_datasets_and_scorers():
    with pytest.raises(DataError, match="unknown DOD dataset 'x'"):
        dod_scorers("x")
    with pytest.raises(DataError, match="unknown DOD scorer 6"):
        dod_hypnograms("h", scorer=6)


@pytest.fixture(scope="module")
def dod():
    """DOD-H and DOD-O scorer tables (skipped where the real excerpts are not kept)."""
    for name in DOD_FILES.values():
        if not any((folder / name).is_file() for folder in real_data_dirs()):
            pytest.skip(f"real excerpt {name} not available (see shared/data/real/SOURCES.md)")
    return {which: dod_scorers(which) for which in DOD_FILES}


def test_dod_tables_hold_the_published_cohorts(dod):
    assert dod["h"]["record"].nunique() == 25 and dod["o"]["record"].nunique() == 55
    for which, scored_by_all in (("h", 24_896), ("o", 53_115)):
        assert dod[which][list(DOD_SCORERS)].isin(STAGES).all(axis=1).sum() == scored_by_all


def test_dod_nights_are_cut_to_the_span_every_scorer_scored(dod):
    consensus = dod_hypnograms("h")
    assert len(consensus) == 25
    # scorer 1 stopped at epoch 931 of this 987-epoch night
    assert len(consensus["119f9726-eb4c-5a0e-a7bb-9e15256149a1"]) == 932
    # DOD-O: scorer 5 began at epoch 150, scorer 5 ended at 1010 of 1012
    night = dod_hypnograms("o", scorer=5)["02fb158a-a658-51ee-89cf-1e1dc2ebfde1"]
    assert len(night) == 861 and UNKNOWN not in night


def test_dod_pairwise_kappa_ranges(dod):
    healthy = pairwise_kappa(dod["h"][list(DOD_SCORERS)])["kappa"]
    apnea = pairwise_kappa(dod["o"][list(DOD_SCORERS)])["kappa"]
    assert (round(healthy.min(), 3), round(healthy.max(), 3)) == (0.632, 0.772)
    assert (round(apnea.min(), 3), round(apnea.max(), 3)) == (0.635, 0.733)
    assert round(healthy.mean(), 2) == 0.70 and round(apnea.mean(), 2) == 0.68


def test_dod_each_scorer_against_the_other_four(dod):
    healthy = each_vs_rest_kappa(dod["h"][list(DOD_SCORERS)])["kappa"]
    apnea = each_vs_rest_kappa(dod["o"][list(DOD_SCORERS)])["kappa"]
    assert round(healthy.mean(), 3) == 0.760 and round(apnea.mean(), 3) == 0.715
    # each scorer agrees better with the majority of the other four than with them one by one
    pairs = pairwise_kappa(dod["h"][list(DOD_SCORERS)])
    for scorer in DOD_SCORERS:
        with_one = pairs[(pairs["scorer_a"] == scorer) | (pairs["scorer_b"] == scorer)]
        assert healthy[scorer] > with_one["kappa"].mean()


def test_dod_healthy_n1_is_mostly_called_n2_by_another_scorer(dod):
    table = dod["h"]
    confusion = scorer_confusion(table["scorer_1"], table["scorer_2"])
    assert round(confusion.loc["N1", "N1"], 2) == 0.37
    assert round(confusion.loc["N1", "N2"], 2) == 0.43
    assert round(confusion.loc["W", "N1"], 2) == 0.11
    assert round(confusion.loc["N3", "N2"], 2) == 0.14


def test_dod_disagreement_concentrates_at_transitions(dod):
    for which, near, of_disagreement in (("h", 0.172, 0.321), ("o", 0.194, 0.337)):
        table = dod[which]
        out = disagreement_near_transitions(table[list(DOD_SCORERS)], nights=table["record"])
        assert round(out["share_of_epochs_near"], 3) == near
        assert round(out["share_of_disagreement_near"], 3) == of_disagreement
        assert out["rate_near"] > 2 * out["rate_away"]


def test_dod_night_structure_healthy_against_apnea(dod):
    summary = quantile_summary(
        pd.concat(
            {which: statistics_table(dod_hypnograms(which)) for which in DOD_FILES},
            names=["dataset", "night"],
        ).reset_index(level="dataset"),
        by="dataset",
    )
    median = summary["50%"].unstack("statistic")
    # apnea patients sleep less, wake more often and for longer, and reach REM later
    assert list(median["tst_min"]) == [436.5, 399.5]
    assert list(median["waso_min"]) == [29.5, 59.0]
    assert list(median["rem_latency_min"]) == [109.5, 149.5]
    assert list(median["awakenings_per_h"].round(2)) == [2.69, 3.77]
    # healthy nights: N3 early, REM late
    assert median.loc["h", "n3_third_1"] > 0.6 and median.loc["h", "rem_third_1"] < 0.1
