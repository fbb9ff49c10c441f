"""End-to-end runs of the experiment runner on a tiny simulated cohort: every modality through
the real engine, response store and scoring; replay without calls; invalid answers kept in
the denominator; served and in-process answers identical; no key in anything written."""

import dataclasses
import itertools
from dataclasses import replace

import numpy as np
import pytest

from sleepvlm import experiment
from sleepvlm.data.cohort import COHORT_SIZES, CohortSize
from sleepvlm.data.records import STAGES
from sleepvlm.experiment import RunSpec
from sleepvlm.metrics import INVALID, read_results
from sleepvlm.models import (
    USER_REGISTRY_ENV,
    ModelSpec,
    load_registry,
    register_local_model,
    running_server,
)
from sleepvlm.models.messages import TS_PLACEHOLDER, Message, wire_timeseries
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


def _run(cohort, modality, model, results_dir="results", registry=None, **fields):
    run = RunSpec(DATASET, modality, "plain", model, cohort_size="tiny", counts=cohort["counts"])
    return experiment.run_experiment(
        replace(run, **fields),
        results_dir=results_dir and cohort["root"] / results_dir,
        registry=registry,
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
    calls = itertools.count()

    def mumbling(messages):
        # a stage for every other request, prose without a label for the rest
        return "N2" if next(calls) % 2 == 0 else "I would need more context."

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
    prompt, name = experiment.run_prompt("sequence", "plain")
    assert name == "plain"
    requests = experiment.build_requests(prompt, encoded, ["a", "b"])
    for request, epoch in zip(requests, encoded, strict=True):
        system, user = request.messages
        assert system.timeseries == () and user.text.count(TS_PLACEHOLDER) == 3
        assert np.array_equal(np.array(user.timeseries), np.array(epoch.timeseries))
        assert request.prompt_hash == prompt.sha256[:16]
    assert requests[0].input_hash != requests[1].input_hash
    # same text, other arrays: another input, another stored answer
    assert requests[0].messages[1].text == requests[1].messages[1].text
    text_format = [encode_epoch(e, config, "text") for e in epochs]
    plain = experiment.build_requests(prompt, text_format, ["a", "b"])
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


def test_a_changed_threshold_changes_the_cached_features(cohort):
    prepared = cohort["prepared"]
    manifest = prepared.manifest
    night = [tuple(manifest[["subject", "night"]].astype(str).iloc[0])]
    before = experiment.feature_table(prepared, night)
    assert before["n_spindle"].sum() > 0
    # a spindle must now stand out 100-fold from its background: none does
    strict = table.DEFAULT_RULES.with_settings("spindle", upper_factor=100.0)
    after = experiment.feature_table(prepared, night, rules=strict)
    assert after["n_spindle"].sum() == 0
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


def _fit(cohort, configs, count, context, answer_tokens=8):
    return experiment.context_fit(
        cohort["prepared"], _sample(cohort), configs, count, context, answer_tokens
    )


def _sample(cohort):
    from sleepvlm.prepare import balanced_test_manifest

    return balanced_test_manifest(cohort["prepared"], cohort["counts"], seed=0)


def test_context_fit_tells_which_encodings_fit_with_their_token_counts(cohort):
    rich, poor = SequenceConfig("raw", 100, 1), SequenceConfig("raw", 10, 0)
    count = experiment.estimated_tokens()
    tokens = {
        (c.name, v): experiment.sequence_prompt_tokens(
            cohort["prepared"], _sample(cohort), c, v, count
        )
        for c in (rich, poor)
        for v in experiment.PROMPT_VARIANTS
    }
    n = sum(cohort["counts"].values())
    assert all(len(t) == n for t in tokens.values())
    # The whole request counts: the prompt's text besides the encoding itself.
    epoch = cohort["prepared"].store.read(
        experiment.store_rows(cohort["prepared"], _sample(cohort))
    )
    alone = encode_epoch(epoch[0].astype(np.float64), poor).tokens["single_digit"]
    assert tokens[(poor.name, "plain")][0] > alone
    assert tokens[(poor.name, "expert")][0] > tokens[(poor.name, "plain")][0]
    # A context just large enough for the poorer encoding's longest request and the answer.
    longest = max(max(tokens[(poor.name, v)]) for v in experiment.PROMPT_VARIANTS)
    table = _fit(cohort, [rich, poor], count, longest + 8)
    assert table["encoding"].tolist() == [rich.name] * 2 + [poor.name] * 2
    assert table["prompt"].tolist() == list(experiment.PROMPT_VARIANTS) * 2
    for row in table.itertuples(index=False):
        assert row.tokens_max == max(tokens[(row.encoding, row.prompt)])
        assert row.room == longest and row.context == longest + 8 and row.epochs == n
    assert table.set_index("encoding")["fits"].groupby(level=0).all().to_dict() == {
        rich.name: False,
        poor.name: True,
    }
    assert (table[table["encoding"] == rich.name]["epochs_fitting"] == 0).all()
    assert experiment.fitting_configs(table, [rich, poor]) == [poor]
    # One token less and the longest request no longer fits beside the answer.
    tight = _fit(cohort, [poor], count, longest + 7)
    assert not tight["fits"].all() and experiment.fitting_configs(tight, [poor]) == []
    with pytest.raises(experiment.ExperimentError, match="no room"):
        _fit(cohort, [poor], count, 8)


def test_a_config_must_fit_every_prompt_and_dataset():
    import pandas as pd

    config = SequenceConfig("raw", 10, 0)
    table = pd.DataFrame(
        [
            {"encoding": config.name, "prompt": "plain", "fits": True},
            {"encoding": config.name, "prompt": "expert", "fits": False},
        ]
    )
    assert experiment.fitting_configs(table, [config]) == []
    assert experiment.fitting_configs(table.iloc[:1], [config]) == [config]
    assert experiment.fitting_configs(table.iloc[:0], [config]) == []


def test_the_model_tokenizer_counts_and_its_context_is_checked(cohort, tmp_path, monkeypatch):
    """A tiny GGUF (context 64, byte-level tokenizer) placed where fetched weights go: its
    tokenizer counts the sequence prompts (none fits), a registry context that disagrees with
    its config is refused, and without loading the estimate is used with the registry's."""
    import hashlib

    from sleepvlm.models.tiny import write_tiny_gguf
    from sleepvlm.models.weights import WheelWeights

    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "tiny.gguf"
    write_tiny_gguf(source)
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    weights = WheelWeights("tiny-gguf", "0.1", "tiny.gguf", sha256)
    weights.path.write_bytes(source.read_bytes())  # as if fetched
    entry = {"package": "tiny-gguf", "version": "0.1", "file": "tiny.gguf", "sha256": sha256}
    spec = ModelSpec(
        "tiny-gguf",
        "transformers",
        "unused",
        ("text", "sequence"),
        role="text-llm",
        weights=entry,
        context=64,
    )
    count, context, how = experiment.token_counter(spec, load=True)
    assert context == 64 and "tokenizer" in how
    config = SequenceConfig("raw", 10, 0)
    table = _fit(cohort, [config], count, context, answer_tokens=4)
    # Byte-level: at least one token per character of the inline numbers.
    assert (table["tokens_max"] > 3 * config.length).all() and not table["fits"].any()
    with pytest.raises(experiment.ExperimentError, match="context of 64 tokens, the registry 65"):
        experiment.model_token_counter(spec.replace(context=65))
    estimate, context, how = experiment.token_counter(spec.replace(context=99), load=False)
    assert context == 99 and "estimate" in how
    messages = (Message("user", "1,2,3"),)
    assert estimate(messages) == 5
    with pytest.raises(experiment.ExperimentError, match="no context"):
        experiment.token_counter(spec.replace(context=None), load=False)
    with pytest.raises(experiment.ExperimentError, match="not local"):
        experiment.model_token_counter(load_registry()["gpt-4o"])


def test_per_stage_counts_and_a_real_models_command_use_real_llm():
    assert experiment.per_stage_counts(2) == {s: 2 for s in STAGES}
    with pytest.raises(experiment.ExperimentError, match="at least one"):
        experiment.per_stage_counts(0)
    rows = experiment.not_run_rows("sequence", [], ["dcsm"])
    real = rows[rows["model"] == "smollm2-135m-instruct"]["command"].tolist()
    assert len(real) == 1 and real[0].startswith("papermill notebooks/09_sequence_experiment")
    assert "-p real_llm smollm2-135m-instruct -p dataset dcsm" in real[0]
    assert "-p models" not in real[0]
    others = rows[rows["model"] != "smollm2-135m-instruct"]["command"]
    assert others.str.contains("-p models ").all()


def test_a_registered_models_fit_is_counted_on_the_sample_it_would_get(cohort):
    rich, poor = SequenceConfig("raw", 100, 1), SequenceConfig("raw", 10, 0)
    direct = _fit(cohort, [rich, poor], experiment.estimated_tokens(), 10_000)
    spec = ModelSpec(
        "reader",
        "local",
        "chance",
        ("sequence",),
        role="text-llm",
        decoding={"temperature": 0, "max_tokens": 8},
        context=10_000,
    )
    table, how = experiment.sequence_context_fit(
        [DATASET],
        "reader",
        [rich, poor],
        load=False,
        counts=cohort["counts"],
        cohort_size="tiny",
        registry={"reader": spec},
    )
    assert "estimate" in how and (table["dataset"] == DATASET).all()
    assert table.drop(columns="dataset").equals(direct)
    summary = experiment.context_fit_summary(table)
    assert summary.index.tolist() == [rich.name, poor.name]
    assert summary.loc[poor.name, "fits"] and not summary.loc[rich.name, "fits"]
    assert (
        summary.loc[rich.name, "longest expert prompt (tokens)"]
        == direct.query("encoding == @rich.name and prompt == 'expert'")["tokens_max"].iloc[0]
    )
    assert summary.loc[poor.name, "requests"] == 2 * sum(cohort["counts"].values())
    assert summary.loc[poor.name, "requests_fitting"] == summary.loc[poor.name, "requests"]
    assert summary.loc[rich.name, "requests_fitting"] == 0
    no_budget = {"reader": spec.replace(decoding={"temperature": 0})}
    with pytest.raises(experiment.ExperimentError, match="no max_tokens"):
        experiment.sequence_context_fit([DATASET], "reader", [poor], load=False, registry=no_budget)


def test_a_run_spec_names_what_it_cannot_run_before_anything_runs():
    with pytest.raises(experiment.ExperimentError, match="modality 'audio' is not one of"):
        RunSpec(DATASET, "audio", "plain", "chance")
    with pytest.raises(experiment.ExperimentError, match="prompt variant 'terse' is not one of"):
        RunSpec(DATASET, "text", "terse", "chance")
    with pytest.raises(TypeError, match="count_scal"):
        experiment.run_grid([DATASET], "text", ["chance"], count_scal=0.5)


def test_a_run_names_its_prompt_by_variant_and_refuses_another_template():
    template, name = experiment.run_prompt("text", "plain")
    assert name == "plain"
    assert experiment.run_prompt("text", "plain", template) == (template, "plain")
    variant = dataclasses.replace(template, user="Answer carefully.\n" + template.user)
    assert experiment.run_prompt("text", "plain", variant) == (
        variant,
        f"plain-{variant.sha256[:8]}",
    )
    refused = "text_plain.v1 is not a variant of text_expert"
    with pytest.raises(experiment.ExperimentError, match=refused):
        experiment.run_prompt("text", "expert", variant)
