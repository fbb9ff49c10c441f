"""Tests of the results chapter's tables: records written by the real metrics code from small
hand-made confusion matrices, malformed files, not-run rows with their commands, and
SleepVLM-mini within and across centers."""

import json
import shlex
import warnings

import numpy as np
import pandas as pd
import pytest

from sleepvlm import paper, report
from sleepvlm.cache import project_root
from sleepvlm.data.records import STAGES, DataError, file_sha256
from sleepvlm.metrics import evaluate, result_record, write_result
from sleepvlm.models import ModelSpec
from sleepvlm.params import EXTERNAL, WITHIN, as_dict, as_list

REGISTRY = {
    "vlm-hosted": ModelSpec(
        name="vlm-hosted",
        backend="openai",
        model_id="vlm-hosted-2024",
        modalities=("image", "text"),
        api_key_env="SOME_KEY",
        role="vlm",
    ),
    "vlm-open": ModelSpec(
        name="vlm-open",
        backend="openai_compatible",
        model_id="org/vlm-open",
        modalities=("image",),
        base_url="http://127.0.0.1:8000/v1",
        role="vlm",
    ),
    "llm": ModelSpec(
        name="llm",
        backend="openai_compatible",
        model_id="org/llm",
        modalities=("text",),
        base_url="http://127.0.0.1:8000/v1",
        role="text-llm",
    ),
    report.CHATTS: ModelSpec(
        name=report.CHATTS,
        backend="openai_compatible",
        model_id="org/chatts",
        modalities=("sequence",),
        base_url="http://127.0.0.1:8000/v1",
        role="ts-llm",
    ),
    "chance": ModelSpec(
        name="chance", backend="local", model_id="chance", modalities=("image",), role="floor"
    ),
}


def confusion_to_answers(confusion):
    """Truth, answers and subjects whose confusion matrix is ``confusion`` (5 x 6, the last
    column answers without a label), spread over four subjects."""
    truth, answers = [], []
    for i, stage in enumerate(STAGES):
        for j, count in enumerate(confusion[i]):
            answer = STAGES[j] if j < len(STAGES) else "I cannot tell."
            truth += [stage] * count
            answers += [answer] * count
    subjects = [f"s{k % 4}" for k in range(len(truth))]
    return truth, answers, subjects


def diagonal(counts, correct=1.0):
    """A confusion matrix with ``counts`` epochs per stage, ``correct`` of each on the
    diagonal and the rest called the next stage."""
    matrix = np.zeros((len(STAGES), len(STAGES) + 1), dtype=int)
    for i, stage in enumerate(STAGES):
        right = round(counts[stage] * correct)
        matrix[i, i] = right
        matrix[i, (i + 1) % len(STAGES)] = counts[stage] - right
    return matrix


def write(
    folder,
    confusion,
    dataset="dcsm",
    modality="image",
    model="vlm-hosted",
    prompt="plain",
    data="simulated",
    manifest="m" * 16,
    **extra,
):
    truth, answers, subjects = confusion_to_answers(confusion)
    evaluation = evaluate(truth, answers, subjects=subjects, n_boot=200)
    record = result_record(
        dataset=dataset,
        modality=modality,
        prompt=prompt,
        model=model,
        backend=extra.pop("backend", "openai"),
        model_id=extra.pop("model_id", REGISTRY.get(model, REGISTRY["chance"]).model_id),
        data=data,
        evaluation=evaluation,
        manifest_hash=manifest,
        prompt_hash="p" * 64,
        decoding=extra.pop("decoding", {"temperature": 0}),
    )
    record.update(extra)
    return write_result(record, folder), record


SMALL = {s: 10 for s in STAGES}


def test_records_carry_the_metrics_of_their_confusion_matrices(tmp_path):
    matrix = diagonal(SMALL, correct=0.6)
    matrix[0, 0] -= 2
    matrix[0, -1] += 2  # two W answers hold no label: wrong, still counted
    write(tmp_path, matrix)
    records = report.load_records(tmp_path)
    row = records.iloc[0]
    assert row["accuracy"] == pytest.approx(np.trace(matrix[:, :5]) / matrix.sum())
    assert row["support"] == (10, 10, 10, 10, 10)
    assert row["invalid"] == 2
    assert row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"]
    again = report.load_records(tmp_path)
    assert again["record_id"][0] == row["record_id"] and len(row["record_id"]) == 8


def test_records_from_other_versions_load(tmp_path):
    path, record = write(tmp_path, diagonal(SMALL))
    for field in ("prompt", "created", "decoding", "library_version"):
        record.pop(field)
    record["metrics"]["ci95"] = {"accuracy": "narrow", "kappa": [0.1]}
    record["metrics"].pop("macro_recall")
    record["a_field_from_the_future"] = {"x": 1}
    path.write_text(json.dumps(record))
    row = report.load_records(tmp_path).iloc[0]
    assert row["prompt"] == report.NOT_PUBLISHED
    assert np.isnan(row["macro_recall"]) and np.isnan(row["accuracy_lo"])
    assert np.isnan(row["kappa_hi"])
    assert row["accuracy"] == 1.0


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not an object"),
        (json.dumps({"dataset": "dcsm", "modality": "image", "model": "m", "n": 3}), "no metrics"),
        (
            json.dumps(
                {"dataset": "d", "modality": "i", "model": "m", "n": 3, "metrics": {"accuracy": 75}}
            ),
            "accuracy between 0 and 1",
        ),
        (
            json.dumps(
                {
                    "dataset": "d",
                    "modality": "i",
                    "model": "m",
                    "n": 3,
                    "metrics": {"accuracy": 0.5, "confusion": [[1, 2]]},
                }
            ),
            "confusion matrix",
        ),
    ],
)
def test_a_malformed_file_is_skipped_with_a_warning_naming_it(tmp_path, content, problem):
    write(tmp_path, diagonal(SMALL))
    (tmp_path / "broken.json").write_text(content)
    with pytest.warns(report.SkippedRecordWarning, match="broken.json"):
        records = report.load_records(tmp_path)
    assert len(records) == 1
    ((name, reason),) = records.attrs["skipped"]
    assert name == "broken.json" and problem in reason
    with pytest.raises(report.ReportError, match=f"broken.json.*{problem}") as err:
        report.load_records(tmp_path, strict=True)
    assert isinstance(err.value, DataError)


def test_a_missing_folder_gives_an_empty_table_and_every_row_not_run(tmp_path):
    with pytest.warns(UserWarning, match="no results folder"):
        records = report.load_records(tmp_path / "absent")
    assert records.empty
    table = report.main_table(records, registry=REGISTRY)
    assert set(table["status"]) == {"not run"}
    assert table["command"].notna().all()
    assert set(table["dataset"]) == set(paper.BALANCED_COUNTS)
    with pytest.raises(report.ReportError, match="absent"):
        report.load_records(tmp_path / "absent", strict=True)


def test_sample_kind_tells_the_balanced_sample_from_whole_nights(tmp_path):
    scaled = {s: max(1, round(c * 0.05)) for s, c in paper.BALANCED_COUNTS["shhs"].items()}
    nights = {"W": 30, "N1": 10, "N2": 100, "N3": 30, "REM": 40}
    write(tmp_path, diagonal(scaled), dataset="shhs", manifest="a" * 16)
    write(tmp_path, diagonal(nights), dataset="shhs", manifest="b" * 16)
    write(tmp_path, diagonal(scaled), dataset="mass", manifest="c" * 16)
    kinds = report.load_records(tmp_path).set_index("file")["sample"]
    assert kinds.to_dict() == {
        "shhs__image__vlm-hosted__plain__aaaaaaaa.json": report.BALANCED,
        "shhs__image__vlm-hosted__plain__bbbbbbbb.json": report.NOT_BALANCED,
        "mass__image__vlm-hosted__plain__cccccccc.json": report.UNKNOWN_SAMPLE,
    }


def test_dataset_table_sets_measured_counts_beside_the_papers(tmp_path):
    write(tmp_path, diagonal(paper.BALANCED_COUNTS["dcsm"]), dataset="dcsm")
    write(tmp_path, diagonal(paper.BALANCED_COUNTS["dcsm"]), dataset="dcsm", prompt="expert")
    small = {s: max(1, round(c * 0.01)) for s, c in paper.BALANCED_COUNTS["isruc"].items()}
    write(tmp_path, diagonal(small), dataset="isruc")
    table = report.dataset_table(report.load_records(tmp_path))
    for dataset, counts in paper.BALANCED_COUNTS.items():
        assert table.loc[(dataset, "paper"), list(STAGES)].tolist() == [counts[s] for s in STAGES]
    dcsm = table.loc[("dcsm", "measured")]
    assert dcsm["records"] == 2 and dcsm["same as paper"] and dcsm["data"] == "simulated"
    assert dcsm["total"] == sum(paper.BALANCED_COUNTS["dcsm"].values())
    isruc = table.loc[("isruc", "measured")]
    assert not isruc["same as paper"] and isruc[list(STAGES)].tolist() == list(small.values())
    assert ("shhs", "measured") not in table.index


def test_main_table_shows_measured_beside_paper_and_commands_where_not_run(tmp_path):
    counts = paper.BALANCED_COUNTS["dcsm"]
    write(tmp_path, diagonal(counts, 0.22), model="vlm-hosted", prompt="plain")
    write(
        tmp_path,
        diagonal(counts, 0.6),
        modality="signal",
        model="deepsleepnet",
        prompt="trained-on-dcsm",
        backend="local",
    )
    records = report.load_records(tmp_path)
    table = report.main_table(records, registry=REGISTRY).set_index(
        ["dataset", "model", "input", "prompt"]
    )
    vlm = table.loc[("dcsm", "vlm-hosted", "image", "plain")]
    assert vlm["status"] == "measured"
    assert vlm["accuracy"] == pytest.approx(
        100 * records["accuracy"][records["model"] == "vlm-hosted"].iloc[0]
    )
    low, high = paper.VLM_IMAGE_RANGE["accuracy"]
    assert vlm["paper_accuracy"] == f"{low:g}–{high:g}" and vlm["paper_kappa"] == "—"
    baseline = table.loc[("dcsm", "deepsleepnet", "signal", "trained-on-dcsm")]
    published = paper.BASELINE_RESULTS["deepsleepnet"]["dcsm"]
    assert baseline["paper_macro_f1"] == f"{published['macro_f1']:.2f}"
    assert baseline["kappa"] == pytest.approx(
        records["kappa"][records["model"] == "deepsleepnet"].iloc[0]
    )

    missing = table.loc[("dcsm", "vlm-hosted", "image", "expert")]
    assert missing["status"] == "not run" and pd.isna(missing["accuracy"])
    assert "-p models vlm-hosted -p dataset dcsm" in missing["command"]
    assert (
        "-p prompt_variants expert" in missing["command"] and "base_url" not in missing["command"]
    )
    assert "base_url" in table.loc[("dcsm", "vlm-open", "image", "plain"), "command"]
    text = table.loc[("dcsm", "llm", "text", "expert"), "command"]
    assert text.startswith("papermill notebooks/08_text_experiment.ipynb")
    chatts = table.loc[("isruc", report.CHATTS, "sequence", "expert")]
    assert chatts["paper_accuracy"] == f"{paper.CHATTS_14B['isruc']['accuracy']:.2f}"
    signal = table.loc[("shhs", "attnsleep", "signal", "trained-on-shhs"), "command"]
    assert signal.startswith("papermill notebooks/10_baselines.ipynb")
    words = shlex.split(signal)
    given = {words[i + 1]: words[i + 2] for i, word in enumerate(words) if word == "-p"}
    assert as_list(given["datasets"], "datasets") == ["shhs"]
    assert as_dict(given["data_dirs"], "data_dirs") == {"shhs": "/path/to/shhs"}
    mini = table.xs(("dcsm", report.SLEEPVLM_MINI), level=["dataset", "model"])
    assert mini["command"].tolist() == [report.SLEEPVLM_MINI_COMMAND]

    shown = report.cells(table.reset_index(), records)
    assert shown.loc[
        ("dcsm", "vision-language models", "vlm-hosted", "image", "expert"), "ACC"
    ] == (f"not run ({low:g}–{high:g})")
    cell = shown.loc[("dcsm", "vision-language models", "vlm-hosted", "image", "plain")]
    assert cell["ACC"] == f"{vlm['accuracy']:.1f} ({low:g}–{high:g})"
    assert (
        "<details>" in cell["record or command"] and vlm["record_id"] in cell["record or command"]
    )


def test_the_balanced_record_is_shown_before_whole_nights_and_other_runs_get_rows(tmp_path):
    counts = paper.BALANCED_COUNTS["dcsm"]
    nights = {"W": 300, "N1": 100, "N2": 1000, "N3": 300, "REM": 400}
    common = dict(modality="signal", model="attnsleep", prompt="trained-on-dcsm", backend="local")
    write(tmp_path, diagonal(nights, 0.9), manifest="n" * 16, **common)
    write(tmp_path, diagonal(counts, 0.5), manifest="b" * 16, **common)
    write(tmp_path, diagonal(SMALL, 0.8), model="my-own-model", modality="text", prompt="expert")
    records = report.load_records(tmp_path)
    table = report.main_table(records, registry=REGISTRY)
    row = table[(table["model"] == "attnsleep") & (table["dataset"] == "dcsm")].iloc[0]
    assert row["records"] == 2 and row["sample"] == report.BALANCED
    assert row["accuracy"] == pytest.approx(50.0, abs=0.1)
    other = table[table["model"] == "my-own-model"].iloc[0]
    assert other["group"] == "other models" and other["status"] == "measured"


def test_differences_come_from_the_record_fields(tmp_path):
    counts = paper.BALANCED_COUNTS["isruc"]
    far = diagonal(counts, 0.4)
    far[0, 0] -= 3
    far[0, -1] += 3
    write(tmp_path, far, dataset="isruc", model="vlm-hosted", model_id="vlm-hosted-2099")
    write(tmp_path, diagonal(counts, 0.22), dataset="isruc", model="vlm-open", data="real")
    write(tmp_path, diagonal(counts, 0.5), dataset="isruc", model="llm", modality="text")
    write(
        tmp_path,
        diagonal(counts, 0.9),
        dataset="isruc",
        modality="signal",
        model="deepsleepnet",
        prompt="trained-on-isruc",
        backend="local",
        decoding={"width": 8, "channels": ["eeg"]},
        library_version="0.0.1",
        lock="0" * 64,
    )
    records = report.load_records(tmp_path)
    table = report.main_table(records, datasets=["isruc"], registry=REGISTRY)
    diffs = report.differences_table(table, records, registry=REGISTRY).set_index("model")
    assert "llm" not in diffs.index  # the paper holds no number for it
    # Accuracy inside the paper's VLM range (within the interval), macro-F1 above it:
    assert diffs.loc["vlm-open", "differs"].startswith("macro-F1 22.")
    vlm = diffs.loc["vlm-hosted"]
    acc_range, f1_range = (
        "{:g}–{:g}".format(*paper.VLM_IMAGE_RANGE[m]) for m in ("accuracy", "macro_f1")
    )
    assert vlm["differs"] == f"ACC 39.9 vs {acc_range}; macro-F1 39.9 vs {f1_range}"
    assert any("simulated cohort" in r for r in vlm["reasons"])
    assert any(r.startswith("3 of 2249 answers") for r in vlm["reasons"])
    assert any("vlm-hosted-2099, not the registry's vlm-hosted-2024" in r for r in vlm["reasons"])
    assert any("range of all its VLMs" in r for r in vlm["reasons"])
    baseline = diffs.loc["deepsleepnet"]["reasons"]
    assert any("width 8, channels eeg" in r for r in baseline)
    assert any("sleepvlm 0.0.1" in r for r in baseline)
    assert any(r.startswith(f"made with another dependency lock ({'0' * 16}") for r in baseline)
    assert not any("dependency lock" in r for r in vlm["reasons"])  # made with this lock

    scaled = {s: max(1, round(c * 0.01)) for s, c in counts.items()}
    _, small = write(tmp_path, diagonal(scaled), dataset="isruc", prompt="trained-on-dcsm")
    reasons = report.differences(small, REGISTRY)
    assert any(r.startswith(f"{sum(scaled.values())} epochs") for r in reasons)
    assert "trained on dcsm, tested on isruc" in reasons


def test_sleepvlm_table_without_records_is_paper_and_not_run(tmp_path):
    table = report.sleepvlm_table(report.load_records(tmp_path))
    published = table[table["status"] == "paper"].set_index("tested on")["kappa"]
    assert published.to_dict() == paper.SLEEPVLM_KAPPA
    missing = table[table["status"] == "not run"]
    assert sorted(missing["setting"]) == sorted([EXTERNAL, WITHIN])
    assert set(missing["command"]) == {report.SLEEPVLM_MINI_COMMAND}


def test_sleepvlm_mini_within_and_across_centers(tmp_path):
    mini = dict(model=report.SLEEPVLM_MINI, backend="local", prompt="expert", train_dataset="dcsm")
    counts = paper.BALANCED_COUNTS
    write(tmp_path, diagonal(counts["dcsm"], 0.8), dataset="dcsm", **mini)
    write(tmp_path, diagonal(counts["shhs"], 0.7), dataset="shhs", **mini)
    records = report.load_records(tmp_path)
    table = report.sleepvlm_table(records)
    measured = table[table["status"] == "measured"].set_index("setting")
    assert measured.loc[WITHIN, "tested on"] == "dcsm"
    assert measured.loc[EXTERNAL, "tested on"] == "shhs"
    kappa = records.set_index("dataset")["kappa"]
    assert measured.loc[WITHIN, "kappa"] == pytest.approx(kappa["dcsm"])
    assert measured.loc[EXTERNAL, "kappa"] == pytest.approx(kappa["shhs"])
    assert "not run" not in set(table["status"])

    main = report.main_table(records, registry=REGISTRY)
    rows = main[main["model"] == report.SLEEPVLM_MINI].set_index("dataset")["status"]
    assert rows["dcsm"] == "measured"  # within its center: a row of the main table
    assert rows["shhs"] == "not run"  # across centers: the SleepVLM table only


def test_sleepvlm_runs_that_differ_only_in_prompt_share_a_row(tmp_path):
    mini = dict(model=report.SLEEPVLM_MINI, backend="local", dataset="dcsm", train_dataset="dcsm")
    counts = paper.BALANCED_COUNTS["dcsm"]
    write(tmp_path, diagonal(counts, 0.8), prompt="plain", **mini)
    write(tmp_path, diagonal(counts, 0.8), prompt="expert", **mini)
    write(tmp_path, diagonal(counts, 0.6), prompt="anchored", **mini)
    table = report.sleepvlm_table(report.load_records(tmp_path))
    measured = table[table["status"] == "measured"].set_index("prompt")
    assert sorted(measured.index) == ["anchored", "expert, plain"]
    assert measured.loc["expert, plain", "kappa"] > measured.loc["anchored", "kappa"]
    assert measured.loc["expert, plain", "record_id"].count(",") == 1


def test_sleepvlm_table_keeps_whole_nights_apart_from_the_balanced_sample(tmp_path):
    mini = dict(model=report.SLEEPVLM_MINI, backend="local", dataset="dcsm", train_dataset="dcsm")
    write(tmp_path, diagonal(paper.BALANCED_COUNTS["dcsm"], 0.8), **mini)
    nights = {"W": 150, "N1": 60, "N2": 450, "N3": 120, "REM": 180}  # a night's stage shares
    write(tmp_path, diagonal(nights, 0.8), manifest="n" * 16, whole_nights=3, **mini)
    table = report.sleepvlm_table(report.load_records(tmp_path))
    measured = table[table["status"] == "measured"].set_index("epochs")
    assert sorted(measured.index) == ["class-balanced sample", report.WHOLE_NIGHTS]
    assert measured.loc[report.WHOLE_NIGHTS, "n"] == sum(nights.values())
    published = table[table["status"] == "paper"]
    assert set(published["epochs"]) == {report.WHOLE_NIGHTS}
    kappa, epochs = report.mini_kappa(table)
    assert epochs == report.WHOLE_NIGHTS
    assert kappa[WITHIN] == pytest.approx(measured.loc[report.WHOLE_NIGHTS, "kappa"])
    balanced_only = table[table["epochs"] != report.WHOLE_NIGHTS]
    assert report.mini_kappa(balanced_only)[1] == "class-balanced sample"


def test_provenance_names_where_a_number_comes_from(tmp_path):
    _, record = write(tmp_path, diagonal(SMALL), seed=3, base_url="http://127.0.0.1:8000/v1")
    facts = report.provenance(record)
    assert facts["backend"] == "openai" and facts["model_id"] == "vlm-hosted-2024"
    assert facts["data"] == "simulated" and facts["seed"] == 3
    assert facts["prompt_hash"] == "p" * 16 and facts["manifest_hash"] == "m" * 16
    assert facts["library_version"] == record["library_version"]
    assert record["lock"] == file_sha256(project_root() / "requirements.lock")
    assert facts["lock"] == record["lock"][:16]
    assert facts["created"] == record["created"]
    records = report.load_records(tmp_path)
    table = report.provenance_table(records)
    assert table.index.tolist() == records["record_id"].tolist()
    assert table.iloc[0]["seed"] == 3
    record["model_id"] = "<b>odd</b>"
    html_cell = report.provenance_html("abc", record)
    assert html_cell.startswith("<details><summary><code>abc</code>")
    assert "&lt;b&gt;odd&lt;/b&gt;" in html_cell


def test_warnings_list_every_skipped_file(tmp_path):
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text("[]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report.load_records(tmp_path)
    message = str(caught[0].message)
    assert "2 malformed" in message and "a.json" in message and "b.json" in message


def test_a_real_pretrained_models_rows_are_filled_by_its_chapters_real_llm(tmp_path):
    from sleepvlm.models import load_registry

    with pytest.warns(UserWarning, match="no results folder"):
        records = report.load_records(tmp_path / "absent")
    table = report.main_table(records, registry=load_registry())
    real = table[table["model"] == "smollm2-135m-instruct"]
    assert set(real["group"]) == {report.PRETRAINED_GROUP}
    assert set(real["input"]) == {"text", "sequence"} and set(real["status"]) == {"not run"}
    for row in real.itertuples(index=False):
        chapter = "08_text_experiment" if row.input == "text" else "09_sequence_experiment"
        assert row.command.startswith(f"papermill notebooks/{chapter}.ipynb")
        assert f"-p real_llm smollm2-135m-instruct -p dataset {row.dataset}" in row.command
        assert f"-p prompt_variants {row.prompt}" in row.command and "-p models" not in row.command


def test_a_summary_record_without_metrics_is_named(tmp_path):
    bad = tmp_path / "faithfulness__dcsm__image__m__expert__00000000.json"
    bad.write_text(json.dumps({"summary": "faithfulness", "dataset": "dcsm", "metrics": [1]}))
    with pytest.raises(report.ReportError, match="faithfulness__dcsm.*without metrics"):
        report.load_summaries(tmp_path, "faithfulness")
    assert report.load_summaries(tmp_path, "other").empty
    assert report.load_summaries(tmp_path / "missing", "faithfulness").empty
