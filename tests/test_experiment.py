"""End-to-end runs of the experiment runner on a tiny simulated cohort: every modality through
the real engine, response store and scoring; replay without calls; invalid answers kept in
the denominator; served and in-process answers identical; no key in anything written."""

import json

import numpy as np
import pytest

from sleepvlm import experiment
from sleepvlm.data.cohort import COHORT_SIZES, CohortSize
from sleepvlm.data.records import STAGES
from sleepvlm.metrics import INVALID, read_results
from sleepvlm.models import (
    USER_REGISTRY_ENV,
    ModelSpec,
    load_registry,
    register_local_model,
    running_server,
)
from sleepvlm.models.messages import TS_PLACEHOLDER, wire_timeseries
from sleepvlm.models.secrets import KEY_PATTERN
from sleepvlm.prepare import prepare_dataset
from sleepvlm.rules import table
from sleepvlm.sequence import SequenceConfig, encode_epoch
from sleepvlm.splits import nights_of

DATASET = "dcsm"
FAKE_KEY = "sk-" + "test-0123456789abcdefABCDEF"  # assembled: no key-like literal in git


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A tiny cohort in its own cache, and per-stage counts its test split can supply."""
    root = tmp_path_factory.mktemp("experiment")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEEPVLM_CACHE", str(root / "cache"))
        mp.setitem(COHORT_SIZES, "tiny", CohortSize(subjects=3, hours=0.75))
        prepared = prepare_dataset(DATASET, cohort_size="tiny")
        available = prepared.manifest.query("split == 'test'")["stage"].value_counts()
        counts = {s: int(min(3, available.get(s, 0))) for s in STAGES}
        yield {"root": root, "prepared": prepared, "counts": counts}


def _run(cohort, modality, model, **kwargs):
    kwargs.setdefault("results_dir", cohort["root"] / "results")
    return experiment.run_experiment(
        DATASET, modality, "plain", model, cohort_size="tiny", counts=cohort["counts"], **kwargs
    )


@pytest.mark.parametrize("modality", ["image", "text", "sequence"])
def test_each_modality_runs_end_to_end_and_writes_a_record(cohort, modality):
    record, frame = _run(cohort, modality, "chance")
    n = sum(cohort["counts"].values())
    assert record["n"] == len(frame) == n and record["modality"] == modality
    assert record["data"] == "simulated" and record["backend"] == "local"
    assert len(record["prompt_hash"]) == 64 and record["manifest_hash"]
    assert record["decoding"] == {"temperature": 0}
    assert frame["stage"].value_counts().to_dict() == {
        s: c for s, c in cohort["counts"].items() if c
    }
    assert record["metrics"]["accuracy"] == pytest.approx(frame["correct"].mean())
    written = read_results(cohort["root"] / "results")
    assert ((written["modality"] == modality) & (written["model"] == "chance")).sum() == 1


def test_whole_nights_score_every_epoch_of_the_chosen_test_nights(cohort):
    record, frame = _run(cohort, "text", "majority", whole_nights=1, results_dir=None)
    test = cohort["prepared"].manifest.query("split == 'test'")
    (subject, night), *more = frame[["subject", "night"]].drop_duplicates().itertuples(index=False)
    assert not more and record["whole_nights"] == 1 and record["counts"] is None
    night_epochs = test[(test["subject"] == subject) & (test["night"] == night)]["epoch"]
    assert frame["epoch"].tolist() == sorted(night_epochs.tolist())
    assert record["n"] == len(frame)
    every, _ = _run(cohort, "text", "majority", whole_nights=99, results_dir=None)
    assert every["n"] == len(test) and every["whole_nights"] == len(nights_of(test))


def test_a_rerun_replays_every_answer_without_a_call(cohort):
    first, a = _run(cohort, "text", "majority")
    again, b = _run(cohort, "text", "majority")
    assert again["run"]["called"] == 0 and again["run"]["cached"] == len(b)
    assert b["cached"].all() and a["answer"].tolist() == b["answer"].tolist()
    assert again["metrics"] == first["metrics"]


def test_answers_without_a_label_stay_in_the_denominator(cohort):
    def mumbling(messages):
        # a stage for every other request, prose without a label for the rest
        return "N2" if len(json.dumps(messages)) % 2 else "I would need more context."

    register_local_model("mumbling", mumbling, replace=True)
    registry = load_registry() | {
        "mumbling": ModelSpec("mumbling", "local", "mumbling", ("text",), role="floor")
    }
    record, frame = _run(cohort, "text", "mumbling", registry=registry, results_dir=None)
    invalid = (frame["prediction"] == INVALID).sum()
    assert 0 < invalid < len(frame)
    assert record["invalid"] == invalid and record["parse_rate"] == 1 - invalid / len(frame)
    n2 = ((frame["prediction"] == "N2") & (frame["stage"] == "N2")).sum()
    assert record["metrics"]["accuracy"] == pytest.approx(n2 / len(frame))


def test_served_answers_equal_in_process_answers(cohort):
    with running_server() as server:
        for model in ("chance", "rule-reader"):
            _, local = _run(cohort, "text", model, results_dir=None)
            record, served = _run(cohort, "text", model, base_url=server.url, results_dir=None)
            assert record["backend"] == "openai_compatible" and record["run"]["called"] > 0
            assert served["answer"].tolist() == local["answer"].tolist()
        assert server.hits > 0


def test_a_key_from_the_environment_is_never_written(cohort, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    with running_server() as server:
        record, _ = _run(
            cohort, "image", "chance", base_url=server.url, api_key_env="OPENAI_API_KEY"
        )
    assert record["run"]["called"] > 0
    written = [
        p for p in cohort["root"].rglob("*") if p.suffix in (".json", ".jsonl", ".csv", ".pkl")
    ]
    assert any(p.suffix == ".jsonl" for p in written)
    for path in written:
        content = path.read_bytes().decode("utf-8", errors="ignore")
        assert FAKE_KEY not in content and not KEY_PATTERN.search(content), path


def test_unknown_models_and_wrong_modalities_are_explained(cohort):
    with pytest.raises(experiment.ExperimentError, match="not in the registry"):
        _run(cohort, "text", "no-such-model")
    with pytest.raises(experiment.ExperimentError, match="not 'image'"):
        _run(cohort, "image", "rule-reader")


def test_chance_floor_of_a_balanced_set():
    floor = experiment.chance_floor({s: 100 for s in STAGES})
    assert floor.loc["uniform guess", "accuracy"] == pytest.approx(0.2)
    assert floor.loc["uniform guess", "macro_f1"] == pytest.approx(0.2)
    assert floor.loc["uniform guess", "kappa"] == pytest.approx(0.0)
    always = floor.loc["always W"]
    assert always["accuracy"] == pytest.approx(0.2)
    assert always["macro_f1"] == pytest.approx(2 * 0.2 / 1.2 / 5)
    uneven = experiment.chance_floor({"W": 10, "N1": 10, "N2": 30, "N3": 10, "REM": 40})
    assert uneven.loc["always REM", "accuracy"] == pytest.approx(0.4)


def test_store_rows_point_at_the_sampled_epochs(cohort):
    prepared = cohort["prepared"]
    sample = prepared.manifest.query("split == 'test'").sample(5, random_state=0)
    rows = experiment.store_rows(prepared, sample.reset_index(drop=True))
    stored = prepared.store.manifest().iloc[rows]
    assert np.array_equal(stored["epoch"].to_numpy(), sample["epoch"].to_numpy())


def test_chatts_inputs_send_their_arrays_beside_the_text():
    epochs = np.random.default_rng(1).normal(0, 25, (2, 3, 3000))
    config = SequenceConfig()
    encoded = [encode_epoch(e, config, "chatts") for e in epochs]
    requests, prompt = experiment.build_requests("sequence", "plain", encoded, ["a", "b"])
    for request, epoch in zip(requests, encoded, strict=True):
        system, user = request.messages
        assert system.timeseries == () and user.text.count(TS_PLACEHOLDER) == 3
        assert np.array_equal(np.array(user.timeseries), np.array(epoch.timeseries))
        assert request.prompt_hash == prompt.sha256[:16]
    assert requests[0].input_hash != requests[1].input_hash
    # same text, other arrays: another input, another stored answer
    assert requests[0].messages[1].text == requests[1].messages[1].text
    text_format = [encode_epoch(e, config, "text") for e in epochs]
    plain, _ = experiment.build_requests("sequence", "plain", text_format, ["a", "b"])
    assert all(m.timeseries == () for r in plain for m in r.messages)


def test_series_without_placeholders_in_the_prompt_are_refused():
    wire = [{"role": "user", "content": "Stage?"}]
    with pytest.raises(experiment.ExperimentError, match="no <ts><ts/> in the prompt"):
        experiment.chat_request(wire, "e1", "p", timeseries=[[1.0, 2.0]])


def test_a_ts_llm_runs_on_sequences_with_its_arrays_served(cohort):
    received = []

    def chatts_stand_in(messages):
        received.append(wire_timeseries(messages))
        return "N2"

    register_local_model("chatts-stand-in", chatts_stand_in, replace=True)
    with running_server() as server:
        record, frame = _run(
            cohort,
            "sequence",
            "chatts-14b",
            base_url=server.url,
            model_id="chatts-stand-in",
            results_dir=None,
        )
    assert record["role"] == "ts-llm" and record["inputs"]["format"] == "chatts"
    assert record["run"]["called"] == len(frame) == len(received)
    length = SequenceConfig().length
    assert all(len(series) == 3 and {len(s) for s in series} == {length} for series in received)
    assert (frame["prediction"] == "N2").all()


def test_kappa_summary_names_each_run_or_says_not_run():
    import pandas as pd

    from sleepvlm.experiment import kappa_summary

    table = pd.DataFrame(
        [
            {"dataset": "dcsm", "prompt": "plain", "kappa": 0.0123},
            {"dataset": "shhs", "prompt": "expert", "kappa": -0.05},
        ]
    )
    assert kappa_summary(table) == "dcsm plain 0.01, shhs expert -0.05"
    assert kappa_summary(table.iloc[:0]) == "not run"


def test_a_changed_threshold_changes_the_cached_features(cohort, monkeypatch):
    prepared = cohort["prepared"]
    manifest = prepared.manifest
    night = [tuple(manifest[["subject", "night"]].astype(str).iloc[0])]
    before = experiment.feature_table(prepared, night)
    assert before["n_spindle"].sum() > 0
    # a spindle must now stand out 100-fold from its background: none does
    monkeypatch.setitem(
        table.SETTINGS, "spindle", {**table.SETTINGS["spindle"], "upper_factor": 100.0}
    )
    after = experiment.feature_table(prepared, night)
    assert after["n_spindle"].sum() == 0
    monkeypatch.undo()
    assert experiment.feature_table(prepared, night)["n_spindle"].sum() == before["n_spindle"].sum()


def test_a_labs_own_model_runs_from_its_own_registry_file(cohort, monkeypatch, tmp_path):
    with running_server() as server:
        lab = tmp_path / "lab_models.yaml"
        lab.write_text(
            "models:\n  lab-stager:\n    backend: openai_compatible\n"
            f"    model_id: rule-reader\n    base_url: {server.url}\n    modalities: [text]\n"
        )
        monkeypatch.setenv(USER_REGISTRY_ENV, str(lab))
        record, served = _run(cohort, "text", "lab-stager", results_dir=None)
        _, local = _run(cohort, "text", "rule-reader", results_dir=None)
    assert record["registry"] == str(lab) and record["run"]["called"] > 0
    assert served["answer"].tolist() == local["answer"].tolist()
    monkeypatch.delenv(USER_REGISTRY_ENV)
    with pytest.raises(experiment.ExperimentError, match=USER_REGISTRY_ENV):
        _run(cohort, "text", "lab-stager", results_dir=None)
