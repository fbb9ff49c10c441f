"""Failure analysis: cue strengths and accuracy per cue bin on hand-made tables with known
accuracies, confusion pairs and answer distributions, prompt variants (label order, leading
example) with their own hashes, and the anchoring experiment end to end on a tiny simulated
cohort: a model answering the first label it reads is fully anchored, majority and the rule
reader are not at all, chance only by noise."""

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from sleepvlm import experiment, failures
from sleepvlm.data.cohort import COHORT_SIZES, CohortSize
from sleepvlm.data.records import STAGES
from sleepvlm.experiment import RunSpec
from sleepvlm.metrics import INVALID, PRED_LABELS
from sleepvlm.models import ModelSpec, load_registry, register_local_model, wire_text
from sleepvlm.prepare import prepare_dataset
from sleepvlm.text import load_prompt, render_prompt

DATASET = "dcsm"


def _epochs(stages, predictions, subjects=None):
    n = len(stages)
    return pd.DataFrame(
        {
            "subject": subjects if subjects is not None else ["s1"] * n,
            "night": ["1"] * n,
            "epoch": np.arange(n),
            "stage": stages,
            "prediction": predictions,
        }
    )


# --- weak visual cues --------------------------------------------------------------------------


def test_cue_strength_converts_detector_features():
    features = pd.DataFrame(
        {
            "subject": ["s1", "s1"],
            "night": ["1", "1"],
            "n_spindle": [3.0, np.nan],
            "sw_fraction": [0.25, 0.0],
            "emg_rel": [0.25, 2.0],
            "alpha_fraction": [0.5, 0.1],
        },
        index=pd.Index([7, 8], name="epoch"),
    )
    cues = failures.cue_strength(features)
    assert cues["epoch"].tolist() == [7, 8]
    assert cues["spindle_density"].iloc[0] == pytest.approx(6.0)  # 3 spindles in half a minute
    assert np.isnan(cues["spindle_density"].iloc[1])
    assert cues["slow_wave_pct"].tolist() == pytest.approx([25.0, 0.0])
    assert cues["emg_contrast"].tolist() == pytest.approx([2.0, -1.0])  # quarter tone: 2 halvings
    assert cues["alpha_pct"].tolist() == pytest.approx([50.0, 10.0])
    detector_style = features.rename(columns={"sw_fraction": "sw_coverage"})
    assert failures.cue_strength(detector_style)["slow_wave_pct"].iloc[0] == pytest.approx(25.0)
    with pytest.raises(failures.FailureAnalysisError, match="emg_rel"):
        failures.cue_strength(features.drop(columns="emg_rel"))
    with pytest.raises(failures.FailureAnalysisError, match="subject"):
        failures.cue_strength(features.drop(columns="subject"))


def _cue_case():
    """40 N3 epochs whose slow-wave % is 0..39, right only from 20 on; 10 N2 epochs, all
    wrong, with strong cues (they must not count when only N3 is asked for)."""
    n3 = _epochs(["N3"] * 40, ["N2"] * 20 + ["N3"] * 20)
    n2 = _epochs(["N2"] * 10, ["W"] * 10).assign(epoch=np.arange(40, 50))
    epochs = pd.concat([n3, n2], ignore_index=True)
    cues = epochs[["subject", "night", "epoch"]].assign(slow_wave_pct=np.arange(50.0))
    return epochs, cues


def test_accuracy_by_cue_has_the_known_accuracy_per_quantile_bin():
    epochs, cues = _cue_case()
    table = failures.accuracy_by_cue(epochs, cues, "slow_wave_pct", bins=4, stage="N3")
    assert table["n"].tolist() == [10, 10, 10, 10]
    assert table["accuracy"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert table["cue_min"].tolist() == [0, 10, 20, 30] and (table["stage"] == "N3").all()
    # Wilson interval of 10/10 at 95 %: [0.722, 1]
    assert table["ci_low"].iloc[-1] == pytest.approx(0.7225, abs=1e-3)
    assert table["ci_high"].iloc[-1] == pytest.approx(1.0)
    assert (table["ci_low"] <= table["accuracy"]).all()
    assert (table["accuracy"] <= table["ci_high"]).all()
    everything = failures.accuracy_by_cue(epochs, cues, "slow_wave_pct", bins=[0, 19.5, 60])
    assert everything["n"].tolist() == [20, 30]
    assert everything["accuracy"].tolist() == pytest.approx([0.0, 20 / 30])


def test_a_cue_with_few_values_gets_one_bin_per_value():
    epochs = _epochs(["N2"] * 6, ["N2", "N1", "N2", "N2", "N1", "N1"])
    cues = epochs[["subject", "night", "epoch"]].assign(spindle_density=[0, 0, 2, 2, 4, 4.0])
    table = failures.accuracy_by_cue(epochs, cues, "spindle_density", bins=4)
    assert table["cue_median"].tolist() == [0, 2, 4]
    assert table["accuracy"].tolist() == [0.5, 1.0, 0.0]


def test_accuracy_by_cue_explains_what_it_cannot_use():
    epochs, cues = _cue_case()
    with pytest.raises(failures.FailureAnalysisError, match="no cue 'spindles'"):
        failures.accuracy_by_cue(epochs, cues, "spindles")
    with pytest.raises(failures.FailureAnalysisError, match="is in the cue table"):
        failures.accuracy_by_cue(epochs, cues.assign(night="2"), "slow_wave_pct")
    with pytest.raises(failures.FailureAnalysisError, match="scored REM"):
        failures.accuracy_by_cue(epochs, cues, "slow_wave_pct", stage="REM")
    with pytest.raises(failures.FailureAnalysisError, match="prediction"):
        failures.accuracy_by_cue(epochs.drop(columns="prediction"), cues, "slow_wave_pct")


def test_weak_cue_table_reads_each_cue_within_its_stage():
    epochs, cues = _cue_case()
    cues = cues.assign(spindle_density=np.where(epochs["stage"] == "N2", 2.0, 0.0))
    cues = cues.assign(emg_contrast=np.nan, alpha_pct=0.0)
    table = failures.weak_cue_table(epochs, cues)
    # no REM or W epochs, no EMG values: only the N3 and N2 cues
    assert set(zip(table["cue"], table["stage"], strict=True)) == {
        ("slow_wave_pct", "N3"),
        ("spindle_density", "N2"),
    }
    assert table.loc[table["cue"] == "spindle_density", "n"].sum() == 10


# --- confusions --------------------------------------------------------------------------------


def test_confusion_pairs_rank_errors_and_flag_n1_n2():
    stages = ["N1"] * 10 + ["N2"] * 10 + ["W"] * 5
    predicted = ["N2"] * 6 + ["W"] * 2 + ["N1"] * 2 + ["N1"] * 3 + ["N2"] * 7 + ["W"] * 4
    predicted += [INVALID]
    pairs = failures.confusion_pairs(_epochs(stages, predicted))
    assert pairs[["true", "predicted", "count"]].values.tolist() == [
        ["N1", "N2", 6],
        ["N2", "N1", 3],
        ["N1", "W", 2],
        ["W", INVALID, 1],
    ]
    assert pairs["share_of_true"].tolist() == pytest.approx([0.6, 0.3, 0.2, 0.2])
    assert pairs["share_of_errors"].sum() == pytest.approx(1.0)
    assert pairs["n1_n2"].tolist() == [True, True, False, False]


def test_commonest_confusions_text_counts_the_models_with_n1_n2_on_top():
    stages = ["N1"] * 4 + ["N2"] * 4 + ["W"] * 4
    n1n2 = _epochs(stages, ["N2"] * 3 + ["N1"] * 5 + ["W"] * 4)
    w_to_n1 = _epochs(stages, ["N1"] * 4 + ["N2"] * 4 + ["N1"] * 3 + ["W"])
    text = failures.commonest_confusions_text({"a · text": n1n2, "b · text": w_to_n1})
    assert text == (
        "N1↔N2 is the commonest confusion of 1 of the 2 models; the commonest is W→N1 for b · text"
    )
    assert failures.commonest_confusions_text({"a · text": n1n2}).endswith("of 1 of the 1 models")
    assert failures.commonest_confusions_text({}) == "none was run"


def test_floors_are_told_apart_by_their_role_in_the_registry():
    runs = {"rule-reader · text": 1, "chance · text": 2, "majority · image": 3, "my-vlm · image": 4}
    readers, floors = failures.split_floors(runs)
    assert set(floors) == {"chance · text", "majority · image"}
    assert set(readers) == {"rule-reader · text", "my-vlm · image"}  # unknown: it reads


def test_cue_trend_text_and_spread_follow_the_numbers():
    def block(accuracy):
        return pd.DataFrame({"cue": ["slow_wave_pct"] * len(accuracy), "accuracy": accuracy})

    weak = pd.concat(
        {"reader": block([0.2, 0.5, 0.9]), "chance": block([0.3, 0.1, 0.2])}, names=["model"]
    )
    rising = failures.cue_trend_text(weak, "reader")
    assert rising.startswith("For reader, N3 accuracy goes from 20 % in the weakest")
    assert "to 90 % in the strongest: a model that reads the cue fails" in rising
    assert failures.cue_trend_text(weak, "chance").endswith(
        "does not do better where the cue is strong"
    )
    assert failures.quartile_spread(weak, ["chance"]) == pytest.approx(20.0)
    assert np.isnan(failures.quartile_spread(weak, ["nobody"]))


def test_prediction_distribution_counts_invalid_answers_and_finds_anchoring():
    stages = list(STAGES) * 2
    anchored = failures.prediction_distribution(_epochs(stages, ["N2"] * 10))
    assert anchored.index.tolist() == [*STAGES, INVALID]
    assert anchored.loc["N2", "share"] == 1.0 and anchored.loc["N2", "true_share"] == 0.2
    mixed = _epochs(stages, ["W", INVALID] * 5)
    assert failures.prediction_distribution(mixed).loc[INVALID, "count"] == 5
    assert failures.dominant_answer(_epochs(stages, ["N2"] * 10)) == ("N2", 1.0)
    with pytest.raises(failures.FailureAnalysisError, match="parse answers"):
        failures.prediction_distribution(_epochs(stages, ["stage two"] * 10))


# --- ungrounded explanations ------------------------------------------------------------------


def test_ungrounded_explanations_count_cited_events_missing_from_the_epoch():
    from sleepvlm.explain.annotations import EpochAnnotation, Evidence

    spindle = Evidence("spindle", "eeg", 12.2, 13.1)
    annotations = [
        EpochAnnotation("d", "s1", "1", e, "N2", ["N2.spindle"], [spindle], "truth")
        for e in range(3)
    ]
    epochs = _epochs(["N2"] * 3, ["N2"] * 3).assign(
        dataset="d",
        answer=[
            "Stage: N2. Evidence: spindle on EEG at 12-13 s.",
            "Stage: N2. Evidence: spindle on EEG at 25 s; spindle on EEG at 12.5 s.",
            "N2",
        ],
    )
    table = failures.ungrounded_explanations(epochs, annotations)
    assert table["n_claims"].tolist() == [1, 2, 0]
    assert table["n_ungrounded"].tolist() == [0, 1, 0]
    (described,) = table["ungrounded"].iloc[1]
    assert "spindle" in described and "25 s" in described
    with pytest.raises(failures.FailureAnalysisError, match="answer"):
        failures.ungrounded_explanations(epochs.drop(columns="answer"), annotations)


# --- prompt variants ---------------------------------------------------------------------------

ORDER = ("REM", "N3", "W", "N2", "N1")


@pytest.mark.parametrize("modality", ["image", "text", "sequence"])
@pytest.mark.parametrize("variant", ["plain", "expert"])
def test_a_permuted_label_list_changes_only_the_list(modality, variant):
    prompt = load_prompt(modality, variant)
    assert failures.label_order(prompt) == STAGES
    permuted = failures.permute_label_order(prompt, ORDER)
    assert failures.label_order(permuted) == ORDER
    assert permuted.sha256 != prompt.sha256 and permuted.system == prompt.system
    assert "exactly one of REM, N3, W, N2, N1 and nothing else" in permuted.user
    assert permuted.user.replace(", ".join(ORDER), ", ".join(STAGES)) == prompt.user
    assert failures.permute_label_order(prompt, STAGES).sha256 == prompt.sha256
    assert permuted.fields == prompt.fields


def test_label_orders_must_be_permutations_of_the_stages():
    prompt = load_prompt("text", "plain")
    for bad in (
        ("W", "N1", "N2", "N3"),
        ("W", "W", "N2", "N3", "REM"),
        ("W", "N1", "N2", "N3", "R"),
    ):
        with pytest.raises(failures.FailureAnalysisError, match="not a permutation"):
            failures.permute_label_order(prompt, bad)
    unlisted = prompt.__class__("text", "plain", 1, prompt.system, "Stage? {{features}}")
    with pytest.raises(failures.FailureAnalysisError, match="found 0"):
        failures.permute_label_order(unlisted, ORDER)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_a_leading_example_goes_just_before_the_question(modality):
    prompt = load_prompt(modality, "plain")
    hashes = {prompt.sha256}
    for stage in STAGES:
        example = failures.with_leading_example(prompt, stage)
        hashes.add(example.sha256)
        paragraphs = example.user.split("\n\n")
        assert paragraphs[-2] == f"Example answer: {stage}"
        assert paragraphs[-3].endswith("}}")  # after the epoch's input
        assert failures.label_order(example) == STAGES
        assert example.user.replace(f"Example answer: {stage}\n\n", "") == prompt.user
    assert len(hashes) == len(STAGES) + 1
    wire = render_prompt(
        failures.with_leading_example(prompt, "N3"),
        **({"features": "[N2.spindle] 1 sleep spindle"} if modality == "text" else {}),
        **({"image": b"\x89PNG\r\n\x1a\n"} if modality == "image" else {}),
    )
    assert "Example answer: N3" in wire_text(wire)
    with pytest.raises(failures.FailureAnalysisError, match="not one of"):
        failures.with_leading_example(prompt, "S2")


def test_prompt_variants_cover_every_first_label_and_example():
    variants, prompts = failures.prompt_variants(load_prompt("text", "plain"))
    orders = variants[variants["kind"] == "order"]
    assert orders["name"].iloc[0] == "base" and sorted(orders["anchor"]) == sorted(STAGES)
    assert variants["prompt_hash"].is_unique and len(variants) == 2 * len(STAGES)
    assert prompts["base"].sha256 == load_prompt("text", "plain").sha256
    only = failures.prompt_variants(load_prompt("text", "plain"), orders=[ORDER], examples=())[0]
    assert only["name"].tolist() == ["base", "order=REM,N3,W,N2,N1"]


# --- anchoring index on hand-made answers ------------------------------------------------------


def _result(answer_of):
    """Answers of a model ``answer_of(first_label, example)`` on 10 balanced epochs under the
    default variants."""
    variants, _ = failures.prompt_variants(load_prompt("text", "plain"))
    stages = list(STAGES) * 2
    frames = {}
    for row in variants.itertuples():
        example = row.anchor if row.kind == "example" else None
        answers = [answer_of(truth, row.order[0], example) for truth in stages]
        frames[row.name] = _epochs(stages, answers)
    return failures.AnchoringResult(variants, frames)


def test_anchoring_index_separates_anchored_from_invariant_answers():
    first = failures.anchoring_index(_result(lambda truth, first, example: example or first))
    assert first == pytest.approx(
        {"order_tv": 1.0, "order_anchoring": 1.0, "example_anchoring": 1.0}
    )
    constant = failures.anchoring_index(_result(lambda truth, first, example: "N2"))
    assert constant == pytest.approx(
        {"order_tv": 0.0, "order_anchoring": 0.0, "example_anchoring": 0.0}
    )
    perfect = failures.anchoring_index(_result(lambda truth, first, example: truth))
    assert perfect == pytest.approx(
        {"order_tv": 0.0, "order_anchoring": 0.0, "example_anchoring": 0.0}
    )
    # The example instead of W and N1 epochs: example N2, N3 or REM is answered on 60 % of
    # the epochs (base rate 20 %: lift 0.5), example W or N1 on 40 % (lift 0.25).
    partly = _result(
        lambda truth, first, example: example if example and truth in ("W", "N1") else truth
    )
    assert failures.anchoring_index(partly)["example_anchoring"] == pytest.approx(0.4)


def test_an_anchoring_result_needs_every_variant_and_the_base():
    result = _result(lambda truth, first, example: truth)
    with pytest.raises(failures.FailureAnalysisError, match="no per-epoch table"):
        failures.AnchoringResult(result.variants, {"base": result.frames["base"]})
    without_base = result.variants[result.variants["name"] != "base"]
    frames = {k: v for k, v in result.frames.items() if k != "base"}
    with pytest.raises(failures.FailureAnalysisError, match="'base' variant"):
        failures.AnchoringResult(without_base, frames)


# --- remedies ----------------------------------------------------------------------------------


def test_remedy_comparison_pairs_conditions_on_common_epochs():
    subjects = [f"s{i // 4}" for i in range(40)]
    stages = (list(STAGES) * 8)[:40]
    fixed = _epochs(stages, [s if i % 2 else "N2" for i, s in enumerate(stages)], subjects)
    auto = _epochs(stages, [s if i % 4 else "N2" for i, s in enumerate(stages)], subjects)
    extra = pd.concat([auto, auto.iloc[:1].assign(subject="s99")], ignore_index=True)
    table = failures.remedy_comparison({"autoscale": fixed, "fixed scale": extra})
    assert table["n"].tolist() == [40, 40]  # the extra epoch is not in both
    acc_fixed = (fixed["prediction"] == fixed["stage"]).mean()
    acc_auto = (auto["prediction"] == auto["stage"]).mean()
    assert table["accuracy"].tolist() == pytest.approx([acc_fixed, acc_auto])
    assert table.loc["fixed scale", "delta"] == pytest.approx(acc_auto - acc_fixed)
    assert np.isnan(table.loc["autoscale", "delta_low"])
    low, high = table.loc["fixed scale", ["delta_low", "delta_high"]]
    assert low <= acc_auto - acc_fixed <= high and high - low < 0.5
    kappa = failures.remedy_comparison({"a": fixed, "b": auto}, metric="kappa", reference="b")
    assert kappa.loc["b", "delta"] == 0.0
    with pytest.raises(failures.FailureAnalysisError, match="not one of"):
        failures.remedy_comparison({"a": fixed}, metric="f1")
    with pytest.raises(failures.FailureAnalysisError, match="share no epoch"):
        failures.remedy_comparison({"a": fixed, "b": fixed.assign(night="2")})


# --- end to end on a tiny cohort ---------------------------------------------------------------

_FIRST_READ = re.compile(r"(?:Example answer: |exactly one of )(W|N1|N2|N3|REM)\b")


def first_label(messages):
    """A model that answers the first label it reads after the epoch: the example, or the
    first of the list."""
    users = [m for m in messages if m.get("role") == "user"]
    return _FIRST_READ.search(wire_text(users))[1]


def sees_image(messages):
    """W when the user turn holds an image and its text an example, N1 for an image alone."""
    parts = [p for m in messages if m.get("role") == "user" for p in m["content"]]
    if not any(p.get("type") == "image_url" for p in parts):
        return "no image"
    return "W" if "Example answer" in wire_text(messages) else "N1"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("failures")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEEPVLM_CACHE", str(root / "cache"))
        mp.setitem(COHORT_SIZES, "tiny", CohortSize(subjects=3, hours=0.75))
        prepared = prepare_dataset(DATASET, cohort_size="tiny")
        available = prepared.manifest.query("split == 'test'")["stage"].value_counts()
        counts = {s: int(min(4, available.get(s, 0))) for s in STAGES}
        register_local_model("first-label", first_label, replace=True)
        register_local_model("sees-image", sees_image, replace=True)
        registry = load_registry() | {
            "first-label": ModelSpec(
                "first-label", "local", "first-label", ("text",), role="floor"
            ),
            "sees-image": ModelSpec("sees-image", "local", "sees-image", ("image",), role="floor"),
        }
        yield {"root": root, "counts": counts, "registry": registry}


def _anchoring(cohort, model, **variants):
    return failures.anchoring_experiment(
        RunSpec(DATASET, "text", "plain", model, cohort_size="tiny", counts=cohort["counts"]),
        registry=cohort["registry"],
        store_dir=cohort["root"] / "responses",
        **variants,
    )


def test_anchoring_experiment_tells_anchored_models_from_invariant_ones(cohort):
    index = {
        m: failures.anchoring_index(_anchoring(cohort, m)) for m in ("first-label", "majority")
    }
    assert index["first-label"] == pytest.approx(
        {"order_tv": 1.0, "order_anchoring": 1.0, "example_anchoring": 1.0}
    )
    assert index["majority"] == pytest.approx(
        {"order_tv": 0.0, "order_anchoring": 0.0, "example_anchoring": 0.0}
    )
    reader = _anchoring(cohort, "rule-reader", orders=[ORDER], examples=["N3"])
    answers = {name: frame["answer"].tolist() for name, frame in reader.frames.items()}
    assert len(answers) == 3 and all(a == answers["base"] for a in answers.values())
    assert failures.anchoring_index(reader) == pytest.approx(
        {"order_tv": 0.0, "order_anchoring": 0.0, "example_anchoring": 0.0}
    )
    chance = _anchoring(cohort, "chance", examples=["N3", "REM"])
    assert chance.distributions()["W"].nunique() > 1  # other text, other draws
    assert abs(failures.anchoring_index(chance)["order_anchoring"]) < 0.35


def test_a_prompt_variant_is_stored_and_recorded_apart(cohort):
    run = RunSpec(
        DATASET, "text", "plain", "first-label", cohort_size="tiny", counts=cohort["counts"]
    )
    options = {
        "registry": cohort["registry"],
        "store_dir": cohort["root"] / "variant-responses",
        "results_dir": cohort["root"] / "results",
    }
    variant = failures.permute_label_order(load_prompt("text", "plain"), ORDER)
    record, frame = experiment.run_experiment(replace(run, prompt=variant), **options)
    assert (frame["prediction"] == "REM").all() and record["run"]["called"] == len(frame)
    assert (
        record["prompt_hash"] == variant.sha256
        and record["prompt"] == f"plain-{variant.sha256[:8]}"
    )
    base_record, base = experiment.run_experiment(run, **options)
    assert (base["prediction"] == "W").all() and base_record["run"]["called"] == len(base)
    assert base_record["prompt"] == "plain"
    assert len(list((cohort["root"] / "results").glob("*.json"))) == 2
    with pytest.raises(experiment.ExperimentError, match="not a variant of text_plain"):
        experiment.run_experiment(replace(run, prompt=load_prompt("text", "expert")), **options)


def test_an_image_prompt_variant_still_sends_the_image(cohort):
    run = RunSpec(
        DATASET, "image", "plain", "sees-image", cohort_size="tiny", counts=cohort["counts"]
    )
    options = {"registry": cohort["registry"], "store_dir": cohort["root"] / "image-responses"}
    variant = failures.with_leading_example(load_prompt("image", "plain"), "N3")
    _, frame = experiment.run_experiment(replace(run, prompt=variant), **options)
    assert (frame["answer"] == "W").all()
    _, base = experiment.run_experiment(run, **options)
    assert (base["answer"] == "N1").all()


def test_ungrounded_in_run_annotates_the_chosen_nights(cohort):
    from sleepvlm.explain.annotations import annotate_store, answer_text, select

    prepared = prepare_dataset(DATASET, cohort_size="tiny")
    epochs = prepared.manifest.query("split == 'test'").head(12)
    truth = select(
        annotate_store(prepared, {(s, n) for s, n in epochs[["subject", "night"]].values}), epochs
    )
    answers = [answer_text(a) for a in truth]
    answers[0] += " Also a spindle on EEG at 29 s."
    table = failures.ungrounded_in_run(
        prepared, epochs.assign(prediction=epochs["stage"], answer=answers)
    )
    assert len(table) == 12
    summary = failures.ungrounded_summary(table)
    assert summary["invented events"] >= 1 and summary["answers"] == 12
    assert summary["cited events"] == table["n_claims"].sum() > summary["invented events"]


def test_answer_distributions_and_dominant_answers_per_run():
    key = {"subject": ["s1"] * 4, "night": ["1"] * 4, "epoch": range(4)}
    stages = ["W", "N1", "N2", "N3"]
    runs = {
        "plain": pd.DataFrame({**key, "stage": stages, "prediction": ["REM"] * 4}),
        "expert": pd.DataFrame(
            {**key, "stage": stages, "prediction": ["W", INVALID, INVALID, "N3"]}
        ),
    }
    table = failures.answer_distributions(runs)
    assert list(table.columns) == ["plain", "expert"] and list(table.index) == list(PRED_LABELS)
    assert table.loc["REM", "plain"] == 1.0 and table["plain"].sum() == pytest.approx(1.0)
    assert table.loc["invalid", "expert"] == 0.5 and table.loc["W", "expert"] == 0.25
    assert failures.dominant_answers_text(runs) == "plain: REM 100 %, expert: invalid 50 %"
    assert failures.dominant_answers_text({}) == "not run"
    empty = failures.answer_distributions({})
    assert empty.empty and list(empty.index) == list(PRED_LABELS)
