"""The paper's tables rebuilt from results records.

Every chapter that runs a model writes one JSON record per run (:func:`sleepvlm.metrics.
write_result`). This module reads whatever records a folder holds — written on any machine, by
any version of the library — and sets them beside the published numbers of
:mod:`sleepvlm.paper`: the class-balanced sample sizes, the benchmark's main table (every model
of the registry on each dataset and input form, the supervised baselines, the embedded models
and the floors), and SleepVLM's within-center and external agreement. A row without a record
says "not run" and gives the command that fills it. Each measured cell names its record, whose
provenance (backend, model id, simulated or real data, prompt and sample hashes, date, library
version) is one click away, and each row that differs from the paper lists the reasons its
record gives for the difference. No number here is typed in: measured ones come from records,
published ones from :mod:`sleepvlm.paper`.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import sleepvlm
from sleepvlm import paper, params
from sleepvlm.data.records import STAGES, DataError
from sleepvlm.environment import lock_hash
from sleepvlm.experiment import EMBEDDED_MODELS, PROMPT_VARIANTS, rerun_command
from sleepvlm.metrics import (
    SUMMARY_FIELD,
    SUMMARY_METRICS,
    is_summary,
    point_value,
)
from sleepvlm.models import load_registry

#: The paper's time-series LLM (its registry name), whose rows :data:`paper.CHATTS_14B` holds.
CHATTS = "chatts-14b"
#: The small rule-grounded VLM this project trains (chapter 11), and the command that runs it.
SLEEPVLM_MINI = "sleepvlm-mini"
SLEEPVLM_MINI_COMMAND = "sleepvlm book --only 11"
#: The supervised baselines of the paper (their records: modality ``signal``).
BASELINES: tuple[str, ...] = tuple(paper.BASELINE_RESULTS)
EXPERT_PROMPT = "expert"
TRAINED_ON = re.compile(r"^trained-on-(?P<dataset>.+)$")

BALANCED = "class-balanced"
NOT_BALANCED = "not class-balanced"
UNKNOWN_SAMPLE = "unknown"
#: Largest total-variation distance between a sample's stage shares and the paper's for the
#: sample to count as the paper's class-balanced one (a scaled-down draw rounds its counts;
#: whole test nights, about half N2, are far beyond it).
BALANCED_TOLERANCE = 0.05
#: The epochs the SleepVLM paper scored (every epoch of its test recordings).
WHOLE_NIGHTS = "whole test nights"

#: Groups of the main table, in order.
GROUPS: tuple[str, ...] = (
    "vision-language models",
    "text LLMs",
    "real pretrained model (run here)",
    "time-series LLMs",
    "supervised baselines",
    "embedded models",
    "SleepVLM-mini",
    "floors",
    "other models",
)
#: Group of the registry's real pretrained models, whose weights are fetched and run here.
PRETRAINED_GROUP = GROUPS[2]
_ROLE_GROUP = {
    "vlm": "vision-language models",
    "text-llm": "text LLMs",
    "ts-llm": "time-series LLMs",
    "floor": "floors",
}
#: Metrics of the main table: column label, record field, scale (percent or as is).
METRICS: tuple[tuple[str, str, int], ...] = (
    ("ACC", "accuracy", 100),
    ("macro-F1", "macro_f1", 100),
    ("recall", "macro_recall", 100),
    ("κ", "kappa", 1),
)
#: A measured value this close to the paper's counts as the same when it has no interval.
SAME_WITHOUT_CI = {"accuracy": 1.0, "macro_f1": 1.0, "macro_recall": 1.0, "kappa": 0.01}
NOT_PUBLISHED = "—"
REQUIRED_FIELDS = ("dataset", "modality", "model", "n", "metrics")
RECORD_COLUMNS: tuple[str, ...] = (
    "record_id",
    "file",
    "dataset",
    "modality",
    "model",
    "prompt",
    "data",
    "sample",
    "train_dataset",
    "n",
    "invalid",
    *SUMMARY_METRICS,
    *(f"{m}_{end}" for m in SUMMARY_METRICS for end in ("lo", "hi")),
    "support",
    "created",
    "library_version",
    "record",
)


class ReportError(DataError):
    """A results record that cannot be read into the tables."""


class SkippedRecordWarning(UserWarning):
    """Results records left out of the tables because they are malformed."""


# --- reading records ---------------------------------------------------------------------------


def _number(value, low: float, high: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low - 1e-9 <= value <= high + 1e-9
    )


def _problem(record) -> str | None:
    """What makes ``record`` unreadable, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(record["n"], int) or isinstance(record["n"], bool) or record["n"] < 1:
        return f"n is {record['n']!r}, not a positive count of epochs"
    metrics = record["metrics"]
    if not isinstance(metrics, dict) or not _number(metrics.get("accuracy"), 0, 1):
        return "metrics hold no accuracy between 0 and 1"
    for name in SUMMARY_METRICS:
        value = metrics.get(name)
        if value is not None and not _number(value, -1 if name == "kappa" else 0, 1):
            return f"metrics {name} is {value!r}, outside its range"
    confusion = metrics.get("confusion")
    if confusion is not None and _support(confusion) is None:
        return f"the confusion matrix is not {len(STAGES)} rows of counts (one per stage)"
    return None


def _support(confusion) -> tuple[int, ...] | None:
    """Epochs per scored stage: the row sums of a confusion matrix (None if it is not one)."""
    try:
        matrix = np.asarray(confusion, dtype=float)
    except (TypeError, ValueError):
        return None
    if matrix.ndim != 2 or matrix.shape[0] != len(STAGES):
        return None
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        return None
    return tuple(int(v) for v in matrix.sum(axis=1))


def paper_shares(dataset: str) -> np.ndarray | None:
    """Stage shares of the paper's class-balanced sample of ``dataset`` (None if it has none)."""
    counts = paper.BALANCED_COUNTS.get(dataset)
    if counts is None:
        return None
    values = np.array([counts[s] for s in STAGES], dtype=float)
    return values / values.sum()


def sample_kind(record: dict, support: tuple[int, ...] | None) -> str:
    """:data:`BALANCED` when the record's epochs are the paper's class-balanced sample (or a
    scaled draw of it), :data:`NOT_BALANCED` when they are not (e.g. whole test nights), and
    :data:`UNKNOWN_SAMPLE` when the record cannot tell."""
    if isinstance(record.get("counts"), dict):
        return BALANCED  # run_experiment draws exactly these counts per stage
    shares = paper_shares(record["dataset"])
    if shares is None or support is None or sum(support) == 0:
        return UNKNOWN_SAMPLE
    distance = 0.5 * np.abs(np.asarray(support) / sum(support) - shares).sum()
    return BALANCED if distance <= BALANCED_TOLERANCE else NOT_BALANCED


def train_dataset(record: dict) -> str | None:
    """The center a trained model learned from: the record's ``train_dataset``, or the
    ``trained-on-<dataset>`` of its prompt field (the baselines' records); None for zero-shot
    models."""
    if record.get("train_dataset"):
        return str(record["train_dataset"])
    match = TRAINED_ON.match(str(record.get("prompt", "")))
    return match["dataset"] if match else None


def record_id(text: bytes) -> str:
    """A short id of a record file's content (it changes when the record does)."""
    return hashlib.sha256(text).hexdigest()[:8]


def _row(path: Path, text: bytes, record: dict) -> dict:
    metrics = record["metrics"]
    confusion = metrics.get("confusion")
    support = _support(confusion) if confusion is not None else None
    if support is None and isinstance(record.get("counts"), dict):
        support = tuple(int(record["counts"].get(s, 0)) for s in STAGES)
    row = {
        "record_id": record_id(text),
        "file": path.name,
        "dataset": str(record["dataset"]),
        "modality": str(record["modality"]),
        "model": str(record["model"]),
        "prompt": str(record.get("prompt") or NOT_PUBLISHED),
        "data": str(record.get("data") or "unknown"),
        "sample": sample_kind(record, support),
        "train_dataset": train_dataset(record),
        "n": record["n"],
        "invalid": record.get("invalid", 0),
        "support": support,
        "created": record.get("created"),
        "library_version": record.get("library_version"),
        "record": record,
    }
    intervals = metrics.get("ci95") if isinstance(metrics.get("ci95"), dict) else {}
    for name in SUMMARY_METRICS:
        row[name] = np.nan if metrics.get(name) is None else float(metrics[name])
        row[f"{name}_lo"], row[f"{name}_hi"] = _bounds(intervals.get(name))
    return row


def _bounds(interval) -> tuple[float, float]:
    """An interval's two bounds, NaN where a record has none (or not as two numbers)."""
    if isinstance(interval, list | tuple) and len(interval) == 2:
        if all(_number(v, -1, 1) for v in interval):
            return float(interval[0]), float(interval[1])
    return np.nan, np.nan


def read_record(path: str | Path) -> dict:
    """One record file as a row of :func:`load_records`; :class:`ReportError` naming the file
    when it is not a results record."""
    path = Path(path)
    return _run_row(path, *_read_json(path))


def _read_json(path: Path) -> tuple[bytes, object, str | None]:
    """The file's bytes, what they parse to (None if they do not) and why they do not."""
    text = path.read_bytes()
    try:
        return text, json.loads(text), None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return text, None, f"not JSON ({err})"


def _run_row(path: Path, text: bytes, record: object, problem: str | None) -> dict:
    problem = problem or _problem(record)
    if problem:
        raise ReportError(
            f"{path} is not a results record: {problem}; rewrite it with "
            "sleepvlm.metrics.write_result or move it out of the results folder"
        )
    return _row(path, text, record)


def _is_summary(record: object) -> bool:
    """Whether a parsed file is a summary record (read by its own loader, not a run's)."""
    return isinstance(record, dict) and is_summary(record)


def load_records(results_dir: str | Path = "results", strict: bool = False) -> pd.DataFrame:
    """Every results record in ``results_dir`` as one row: its id, file, dataset, modality,
    model, prompt, data (simulated or real), sample kind, training center, size, the summary
    metrics (fractions, κ as is) with their interval bounds ``<metric>_lo/_hi``, the epochs
    per stage (``support``), and the record itself (``record``). Summary records (e.g. a
    run's rationale faithfulness) are not runs: :func:`load_summaries` reads them.

    Fields that later or earlier versions add or lack are tolerated. A malformed file is left
    out with a :class:`SkippedRecordWarning` naming it (``strict``: :class:`ReportError`); the
    skipped files and their problems are kept in ``frame.attrs["skipped"]``. A missing folder
    gives an empty table (nothing has been run yet)."""
    folder = Path(results_dir)
    rows, skipped = [], []
    if not folder.is_dir():
        if strict:
            raise ReportError(f"no results folder {folder}: run a chapter that writes records")
        warnings.warn(f"no results folder {folder}: every row is 'not run'", stacklevel=2)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        text, record, problem = _read_json(path)
        if _is_summary(record):
            continue
        try:
            rows.append(_run_row(path, text, record, problem))
        except ReportError as err:
            if strict:
                raise
            skipped.append((path.name, str(err)))
    if skipped:
        names = ", ".join(name for name, _ in skipped)
        warnings.warn(
            f"left out {len(skipped)} malformed results record(s) in {folder}: {names}",
            SkippedRecordWarning,
            stacklevel=2,
        )
    frame = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    frame.attrs["skipped"] = skipped
    return frame


# --- provenance and differences ----------------------------------------------------------------


def load_summaries(results_dir: str | Path, summary: str) -> pd.DataFrame:
    """The summary records of kind ``summary`` (their :data:`~sleepvlm.metrics.SUMMARY_FIELD`)
    in ``results_dir``, one row each: the record's top-level fields, its ``metrics`` flattened
    (a nested entry ``{"mean": ...}`` as its mean), the file and the record itself. Empty when
    there are none; a summary record that is not a JSON object with ``metrics`` is named in a
    :class:`ReportError`."""
    rows = []
    folder = Path(results_dir)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        _, record, _ = _read_json(path)
        if not _is_summary(record) or record[SUMMARY_FIELD] != summary:
            continue
        if not isinstance(record.get("metrics"), dict):
            raise ReportError(
                f"{path} is a {summary} summary without metrics; rewrite it with the function "
                "that made it (e.g. sleepvlm.explain.faithfulness.write_faithfulness)"
            )
        top = {k: v for k, v in record.items() if k != "metrics"}
        metrics = {k: point_value(v) for k, v in record["metrics"].items()}
        rows.append({**top, **metrics, "file": path.name, "record": record})
    return pd.DataFrame(rows)


def _short(value, length: int = 16):
    return value[:length] if isinstance(value, str) else value


PROVENANCE_FIELDS: tuple[str, ...] = (
    "model",
    "backend",
    "model_id",
    "base_url",
    "data",
    "dataset",
    "source",
    "trained_on",
    "modality",
    "prompt",
    "prompt_version",
    "prompt_hash",
    "manifest_hash",
    "n",
    "seed",
    "decoding",
    "created",
    "library_version",
    "lock",
)


def provenance(record: dict) -> dict:
    """Where a record's numbers come from: backend, model id, simulated or real data, prompt
    and sample (manifest) hashes, date, library version and the settings that change answers."""
    decoding = record.get("decoding")
    values = {k: record.get(k) for k in PROVENANCE_FIELDS}
    values.update(
        trained_on=train_dataset(record),
        prompt_hash=_short(record.get("prompt_hash")),
        manifest_hash=_short(record.get("manifest_hash")),
        lock=_short(record.get("lock")),
        decoding=json.dumps(decoding, sort_keys=True) if decoding is not None else None,
    )
    return values


def _by_id(records: pd.DataFrame) -> dict[str, dict]:
    return dict(zip(records["record_id"], records["record"], strict=True))


def provenance_table(records: pd.DataFrame, ids=None) -> pd.DataFrame:
    """:func:`provenance` of each record (those of ``ids`` only, when given), keyed by id."""
    chosen = records if ids is None else records[records["record_id"].isin(list(ids))]
    rows = [provenance(r) for r in chosen["record"]]
    # Column by column as objects, so that a missing seed does not turn the others to floats.
    table = pd.DataFrame(
        {k: pd.Series([row[k] for row in rows], dtype=object) for k in PROVENANCE_FIELDS}
    ).set_axis(pd.Index(chosen["record_id"], name="record"))
    table.insert(0, "file", chosen["file"].to_numpy())
    return table


def provenance_html(record_id_: str, record: dict) -> str:
    """A record id that opens, on one click, into the record's provenance (an HTML
    ``<details>`` element, for a table cell)."""
    lines = "".join(
        f"<br><b>{html.escape(k)}</b>: {html.escape(str(v))}"
        for k, v in provenance(record).items()
        if v is not None
    )
    return (
        f"<details><summary><code>{html.escape(record_id_)}</code></summary>"
        f"<small>{lines[4:]}</small></details>"
    )


def differences(record: dict, registry=None) -> list[str]:
    """Reasons, read from the record's fields, why its numbers may differ from the paper's:
    simulated data, another sample, answers without a label, another model version or input
    form, another library version."""
    registry = load_registry() if registry is None else registry
    reasons = []
    dataset = record.get("dataset")
    data = record.get("data")
    if data == "simulated":
        reasons.append(f"simulated cohort, not the real {dataset} recordings")
    elif data != "real":
        reasons.append("the record does not say whether its data were real")
    support = _support(record.get("metrics", {}).get("confusion"))
    kind = sample_kind(record, support)
    paper_counts = paper.BALANCED_COUNTS.get(dataset)
    if kind != BALANCED:
        reasons.append(f"{kind} sample, not the paper's class-balanced one")
    elif paper_counts and support and tuple(paper_counts[s] for s in STAGES) != support:
        total = sum(paper_counts.values())
        per_stage = ", ".join(f"{s} {c}" for s, c in zip(STAGES, support, strict=True))
        reasons.append(f"{sum(support)} epochs ({per_stage}), the paper's sample has {total}")
    invalid = record.get("invalid") or 0
    if invalid:
        reasons.append(f"{invalid} of {record.get('n')} answers hold no stage label (wrong here)")
    spec = registry.get(record.get("model"))
    if spec is not None and record.get("model_id") not in (None, spec.model_id):
        if record.get("backend") != "local":
            reasons.append(f"model {record['model_id']}, not the registry's {spec.model_id}")
    trained_on = train_dataset(record)
    if trained_on and trained_on != dataset:
        reasons.append(f"trained on {trained_on}, tested on {dataset}")
    decoding = record.get("decoding") or {}
    if record.get("modality") == "signal" and "width" in decoding:
        channels = "+".join(decoding.get("channels", [])) or "?"
        reasons.append(
            f"network trained here: first-layer width {decoding['width']}, channels {channels}"
        )
    if record.get("role") == "ts-llm" and (record.get("inputs") or {}).get("format") == "text":
        reasons.append("sequence sent as text with numbers inline, not as ChatTS arrays")
    version = record.get("library_version")
    if version and version != sleepvlm.__version__:
        reasons.append(f"written by sleepvlm {version} (this is {sleepvlm.__version__})")
    lock = record.get("lock")
    if lock and lock_hash() and lock != lock_hash():
        reasons.append(
            f"made with another dependency lock ({_short(lock)}, this is {_short(lock_hash())})"
        )
    return reasons


# --- the dataset table -------------------------------------------------------------------------


def dataset_table(records: pd.DataFrame) -> pd.DataFrame:
    """Class-balanced test epochs per dataset and stage: the paper's counts, and beside them
    each class-balanced sample the records were scored on (its stage counts read from the
    confusion matrices' row sums), with its manifest hash, data kind and number of records."""
    measured = records[(records["sample"] == BALANCED) & records["support"].notna()]
    datasets = [*paper.BALANCED_COUNTS]
    datasets += sorted(set(measured["dataset"]) - set(datasets))
    rows = []
    for dataset in datasets:
        paper_counts = paper.BALANCED_COUNTS.get(dataset)
        if paper_counts:
            rows.append({"dataset": dataset, "source": "paper", **paper_counts})
        here = measured[measured["dataset"] == dataset]
        for support, group in here.groupby("support", sort=False):
            hashes = {_short(r.get("manifest_hash"), 8) or "?" for r in group["record"]}
            rows.append(
                {
                    "dataset": dataset,
                    "source": "measured",
                    **dict(zip(STAGES, support, strict=True)),
                    "manifest": ", ".join(sorted(hashes)),
                    "data": ", ".join(sorted(group["data"].unique())),
                    "records": len(group),
                    "same as paper": None
                    if paper_counts is None
                    else tuple(paper_counts[s] for s in STAGES) == support,
                }
            )
    columns = ["dataset", "source", *STAGES, "total", "manifest", "data", "records"]
    table = pd.DataFrame(rows).reindex(columns=[*columns, "same as paper"])
    table["total"] = table[list(STAGES)].sum(axis=1).astype(int)
    return table.set_index(["dataset", "source"])


# --- the main table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSpec:
    """One row the main table expects for a dataset."""

    group: str
    model: str
    modality: str
    prompt: str


def expected_rows(dataset: str, registry=None) -> list[RowSpec]:
    """The rows of the paper's main table for ``dataset``: each VLM of the registry on images
    with each prompt, text LLMs on expert text, the time-series LLM on sequences, the
    supervised baselines trained on ``dataset``, the embedded models on their inputs,
    SleepVLM-mini, and the floors on each input with the expert prompt."""
    registry = load_registry() if registry is None else registry
    special = {*EMBEDDED_MODELS, SLEEPVLM_MINI}
    rows: list[RowSpec] = []
    for name, spec in registry.items():
        group = _ROLE_GROUP.get(spec.role)
        if name in special or group is None:
            continue
        if spec.weights is not None:  # run here zero-shot on every input it reads, both prompts
            rows += [
                RowSpec(PRETRAINED_GROUP, name, m, v)
                for m in spec.modalities
                for v in PROMPT_VARIANTS
            ]
            continue
        if spec.role == "vlm" and "image" in spec.modalities:
            rows += [RowSpec(group, name, "image", v) for v in PROMPT_VARIANTS]
        elif spec.role == "text-llm" and "text" in spec.modalities:
            rows.append(RowSpec(group, name, "text", EXPERT_PROMPT))
        elif spec.role == "ts-llm" and "sequence" in spec.modalities:
            rows += [RowSpec(group, name, "sequence", v) for v in PROMPT_VARIANTS]
        elif spec.role == "floor":
            rows += [RowSpec(group, name, m, EXPERT_PROMPT) for m in spec.modalities]
    rows += [
        RowSpec("supervised baselines", m, "signal", f"trained-on-{dataset}") for m in BASELINES
    ]
    for name in EMBEDDED_MODELS:
        if name == SLEEPVLM_MINI or name not in registry:
            continue
        rows += [
            RowSpec("embedded models", name, m, v)
            for m in registry[name].modalities
            for v in PROMPT_VARIANTS
        ]
    return _ordered(rows)


def _group_of(model: str, registry) -> str:
    if model in BASELINES:
        return "supervised baselines"
    if model == SLEEPVLM_MINI:
        return "SleepVLM-mini"
    if model in EMBEDDED_MODELS:
        return "embedded models"
    spec = registry.get(model)
    if spec is not None and spec.weights is not None:
        return PRETRAINED_GROUP
    return _ROLE_GROUP.get(spec.role, "other models") if spec is not None else "other models"


def _paper_cells(spec: RowSpec, dataset: str, registry) -> tuple[dict[str, str], str]:
    """The paper's value of each metric for this row (text: a number or a range) and where it
    comes from; empty when the paper has no such row."""
    role = registry[spec.model].role if spec.model in registry else None
    if role == "vlm" and spec.modality == "image":
        cells = {m: f"{lo:g}–{hi:g}" for m, (lo, hi) in paper.VLM_IMAGE_RANGE.items()}
        return cells, "range over all of the paper's VLMs"
    published = None
    if spec.model in BASELINES and _trained_center(spec) == dataset:
        published = paper.BASELINE_RESULTS[spec.model].get(dataset)
    elif spec.model == CHATTS and spec.modality == "sequence":
        published = paper.CHATTS_14B.get(dataset)
    if published is None:
        return {}, ""
    return {m: f"{v:.2f}" for m, v in published.items()}, "paper's row for this model"


def _trained_center(spec: RowSpec) -> str | None:
    match = TRAINED_ON.match(spec.prompt)
    return match["dataset"] if match else None


def _pick(candidates: pd.DataFrame) -> pd.Series:
    """The record a row shows: the class-balanced sample first, then real data, then the
    newest."""
    order = candidates.assign(
        _balanced=candidates["sample"] == BALANCED,
        _real=candidates["data"] == "real",
        _created=candidates["created"].fillna(""),
    ).sort_values(["_balanced", "_real", "_created"], ascending=False)
    return order.iloc[0]


def _command(spec: RowSpec, dataset: str, registry) -> str:
    if spec.model == SLEEPVLM_MINI:
        return SLEEPVLM_MINI_COMMAND
    if spec.modality == "signal":
        return rerun_command("signal", spec.model, _trained_center(spec) or dataset)
    model = registry.get(spec.model)
    open_model = model is not None and model.backend == "openai_compatible"
    pretrained = model is not None and model.weights is not None
    return rerun_command(spec.modality, spec.model, dataset, open_model, spec.prompt, pretrained)


def _within(records: pd.DataFrame, dataset: str) -> pd.Series:
    """Records of a zero-shot model, or of a trained one tested on its own center."""
    return records["train_dataset"].isna() | (records["train_dataset"] == dataset)


def _rows_for(dataset: str, records: pd.DataFrame, registry) -> list[RowSpec]:
    """Expected rows (for the paper's datasets), then a row for every other run on record;
    SleepVLM-mini tested across centers is left to :func:`sleepvlm_table`."""
    specs = []
    if dataset in paper.BALANCED_COUNTS:
        specs = expected_rows(dataset, registry)
        mini = records[(records["model"] == SLEEPVLM_MINI) & _within(records, dataset)]
        if mini.empty:
            specs.append(RowSpec("SleepVLM-mini", SLEEPVLM_MINI, "image", NOT_PUBLISHED))
    known = {(s.model, s.modality, s.prompt) for s in specs}
    others = records[(records["model"] != SLEEPVLM_MINI) | _within(records, dataset)]
    for model, modality, prompt in others[["model", "modality", "prompt"]].itertuples(index=False):
        if (model, modality, prompt) not in known:
            known.add((model, modality, prompt))
            specs.append(RowSpec(_group_of(model, registry), model, modality, prompt))
    return _ordered(specs)


def _ordered(specs: list[RowSpec]) -> list[RowSpec]:
    """Rows by group, then each model's rows together (models, inputs and prompts in the
    order they first appear)."""
    first: dict[tuple, int] = {}
    for spec in specs:
        for key in ((spec.model,), (spec.modality,), (spec.prompt,)):
            first.setdefault(key, len(first))
    return sorted(
        specs,
        key=lambda r: (
            GROUPS.index(r.group),
            first[(r.model,)],
            first[(r.modality,)],
            first[(r.prompt,)],
        ),
    )


def main_table(
    records: pd.DataFrame, datasets: list[str] | None = None, registry=None
) -> pd.DataFrame:
    """The benchmark's main table: one row per dataset and model, input form and prompt (see
    :func:`expected_rows`, plus every other run on record), with the measured accuracy,
    macro-F1 and macro recall (percent) and κ, their 95 % interval bounds, and the paper's
    values beside them as text (a number, the VLMs' range, or "—" where the paper holds none
    for the row). A row without a record has status "not run" and the command that fills it.
    ``datasets`` defaults to the paper's and every other dataset on record."""
    registry = load_registry() if registry is None else registry
    if datasets is None:
        datasets = [*paper.BALANCED_COUNTS]
        datasets += sorted(set(records["dataset"]) - set(datasets))
    rows = []
    for dataset in datasets:
        here = records[records["dataset"] == dataset]
        for spec in _rows_for(dataset, here, registry):
            match = here[
                (here["model"] == spec.model)
                & (here["modality"] == spec.modality)
                & (here["prompt"] == spec.prompt)
                & ((here["model"] != SLEEPVLM_MINI) | _within(here, dataset))
            ]
            published, source = _paper_cells(spec, dataset, registry)
            row = {
                "dataset": dataset,
                "group": spec.group,
                "model": spec.model,
                "input": spec.modality,
                "prompt": spec.prompt,
                "status": "measured" if len(match) else "not run",
                "records": len(match),
                "paper source": source,
            }
            if len(match):
                chosen = _pick(match)
                row.update(
                    {
                        "data": chosen["data"],
                        "sample": chosen["sample"],
                        "n": chosen["n"],
                        "record_id": chosen["record_id"],
                    }
                )
                for _, name, scale in METRICS:
                    for suffix in ("", "_lo", "_hi"):
                        row[name + suffix] = chosen[name + suffix] * scale
            else:
                row["command"] = _command(spec, dataset, registry)
            for _, name, _scale in METRICS:
                row[f"paper_{name}"] = published.get(name, NOT_PUBLISHED)
            rows.append(row)
    columns = [
        "dataset",
        "group",
        "model",
        "input",
        "prompt",
        "status",
        "data",
        "sample",
        "n",
        "records",
        *(name + suffix for _, name, _s in METRICS for suffix in ("", "_lo", "_hi")),
        *(f"paper_{name}" for _, name, _s in METRICS),
        "paper source",
        "record_id",
        "command",
    ]
    return pd.DataFrame(rows).reindex(columns=columns)


def _format(value: float, scale: int) -> str:
    return f"{value:.1f}" if scale == 100 else f"{value:.2f}"


def _cell(measured: float, published: str, scale: int, run: bool) -> str:
    if not run:
        mine = "not run"
    else:
        mine = _format(measured, scale) if pd.notna(measured) else NOT_PUBLISHED
    return mine if published == NOT_PUBLISHED else f"{mine} ({published})"


def _source_cell(rid, command, links: dict) -> str:
    if isinstance(rid, str):
        return provenance_html(rid, links[rid]) if rid in links else rid
    return f"<code>{html.escape(command)}</code>" if links else command


def cells(table: pd.DataFrame, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """The main table as it is read: each metric "measured (paper)" ("not run (paper)" where
    no record exists), the data kind, and the row's record id or the command that fills it.
    With ``records`` the cells are HTML: a record id opens, on one click, into its
    provenance."""
    links = {} if records is None else _by_id(records)
    key = ["dataset", "group", "model", "input", "prompt"]
    shown = table[key].copy()
    run = table["status"] == "measured"
    for label, name, scale in METRICS:
        shown[label] = [
            _cell(m, p, scale, r)
            for m, p, r in zip(table[name], table[f"paper_{name}"], run, strict=True)
        ]
    shown["data"] = table["data"].fillna("")
    shown["record or command"] = [
        _source_cell(rid, command, links)
        for rid, command in zip(table["record_id"], table["command"], strict=True)
    ]
    return shown.set_index(key)


def _differing(row: pd.Series) -> list[str]:
    """The metrics of a measured row outside the paper's value (beyond its interval), as
    "metric measured vs paper"."""
    out = []
    for label, name, _scale in METRICS:
        published, measured = row[f"paper_{name}"], row[name]
        if published == NOT_PUBLISHED or pd.isna(measured):
            continue
        if "–" in published:
            low, high = (float(v) for v in published.split("–"))
        else:
            low = high = float(published)
        lo, hi = row[f"{name}_lo"], row[f"{name}_hi"]
        if pd.isna(lo) or pd.isna(hi):
            lo, hi = measured - SAME_WITHOUT_CI[name], measured + SAME_WITHOUT_CI[name]
        if hi < low or lo > high:
            out.append(f"{label} {_format(measured, _scale)} vs {published}")
    return out


def differences_table(table: pd.DataFrame, records: pd.DataFrame, registry=None) -> pd.DataFrame:
    """Each measured row of the main table that differs from the paper (the paper's value
    outside the measured 95 % interval, or outside a range), with the metrics that differ and
    the reasons its record gives (:func:`differences`), plus the row's own: a paper value that
    is the range of all VLMs, or a ChatTS row whose prompt the paper does not name."""
    registry = load_registry() if registry is None else registry
    by_id = _by_id(records)
    rows = []
    for _, row in table[table["status"] == "measured"].iterrows():
        differ = _differing(row)
        if not differ:
            continue
        reasons = differences(by_id[row["record_id"]], registry)
        if row["paper source"].startswith("range"):
            reasons.append("the paper gives only the range of all its VLMs, not this model's row")
        if row["model"] == CHATTS:
            reasons.append("the paper's ChatTS row does not say which prompt it used")
        rows.append(
            {
                "dataset": row["dataset"],
                "model": row["model"],
                "input": row["input"],
                "prompt": row["prompt"],
                "differs": "; ".join(differ),
                "reasons": reasons,
                "record_id": row["record_id"],
            }
        )
    return pd.DataFrame(
        rows, columns=["dataset", "model", "input", "prompt", "differs", "reasons", "record_id"]
    )


# --- SleepVLM ----------------------------------------------------------------------------------


def _setting(trained: str | None, tested: str) -> str:
    if trained is None or pd.isna(trained):
        return "unknown center"
    return params.evaluation_setting(trained, tested)


def _epochs(sample: str) -> str:
    return {BALANCED: "class-balanced sample", NOT_BALANCED: WHOLE_NIGHTS}.get(sample, sample)


def _merge_prompts(rows: list[dict]) -> list[dict]:
    """One row per run that differs from another only in its prompt, with equal scores."""
    same = (
        "setting",
        "epochs",
        "trained on",
        "tested on",
        "input",
        "data",
        "n",
        "kappa",
        "accuracy",
        "macro_f1",
    )
    merged: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row.get(k) for k in same)
        if key in merged:
            first = merged[key]
            first["prompt"] = ", ".join(sorted({*first["prompt"].split(", "), row["prompt"]}))
            first["record_id"] = f"{first['record_id']}, {row['record_id']}"
        else:
            merged[key] = dict(row)
    return list(merged.values())


def sleepvlm_table(records: pd.DataFrame) -> pd.DataFrame:
    """SleepVLM's agreement within its training center and on an external cohort (the
    paper's κ), beside SleepVLM-mini's measured κ, accuracy and macro-F1 on every center it was
    tested on (records of model :data:`SLEEPVLM_MINI`; the training center from the record's
    ``train_dataset``), on the class-balanced sample or on whole test nights (``epochs``; the
    paper scored whole recordings). Runs on the same data that differ only in the prompt and
    score the same (SleepVLM-mini reads the image, not the instruction) share one row listing
    their prompts. A setting without a record is "not run", with the command."""
    rows = [
        {
            "setting": _setting(paper.SLEEPVLM_TRAINED_ON, cohort),
            "model": "SleepVLM (paper)",
            "trained on": paper.SLEEPVLM_TRAINED_ON,
            "tested on": cohort,
            "epochs": WHOLE_NIGHTS,
            "status": "paper",
            "kappa": kappa,
        }
        for cohort, kappa in paper.SLEEPVLM_KAPPA.items()
    ]
    mini = records[records["model"] == SLEEPVLM_MINI]
    measured_rows = []
    for _, r in mini.iterrows():
        measured_rows.append(
            {
                "setting": _setting(r["train_dataset"], r["dataset"]),
                "model": SLEEPVLM_MINI,
                "trained on": r["train_dataset"],
                "tested on": r["dataset"],
                "epochs": _epochs(r["sample"]),
                "input": r["modality"],
                "prompt": r["prompt"],
                "status": "measured",
                "kappa": r["kappa"],
                "accuracy": 100 * r["accuracy"],
                "macro_f1": 100 * r["macro_f1"],
                "kappa_lo": r["kappa_lo"],
                "kappa_hi": r["kappa_hi"],
                "data": r["data"],
                "n": r["n"],
                "record_id": r["record_id"],
            }
        )
    rows += _merge_prompts(measured_rows)
    measured = {row["setting"] for row in rows if row["status"] == "measured"}
    for setting in (params.WITHIN, params.EXTERNAL):
        if setting not in measured:
            rows.append(
                {
                    "setting": setting,
                    "model": SLEEPVLM_MINI,
                    "status": "not run",
                    "command": SLEEPVLM_MINI_COMMAND,
                }
            )
    columns = [
        "setting",
        "model",
        "trained on",
        "tested on",
        "epochs",
        "input",
        "prompt",
        "status",
        "kappa",
        "kappa_lo",
        "kappa_hi",
        "accuracy",
        "macro_f1",
        "data",
        "n",
        "record_id",
        "command",
    ]
    order = {params.WITHIN: 0, params.EXTERNAL: 1}
    table = pd.DataFrame(rows).reindex(columns=columns)
    return table.sort_values(
        "setting", key=lambda s: s.map(order).fillna(2), kind="stable"
    ).reset_index(drop=True)


def mini_kappa(sleep: pd.DataFrame) -> tuple[pd.Series, str]:
    """Mean κ of SleepVLM-mini per setting (within center, external) in a
    :func:`sleepvlm_table`, and which epochs it is on: the whole-night runs where there are any
    (the paper scored whole recordings), else the class-balanced ones."""
    measured = sleep[sleep["status"] == "measured"]
    on_nights = measured[measured["epochs"] == WHOLE_NIGHTS]
    runs, epochs = (on_nights, WHOLE_NIGHTS) if len(on_nights) else (measured, _epochs(BALANCED))
    return runs.groupby("setting")["kappa"].mean(), epochs


__all__ = [
    "BALANCED",
    "GROUPS",
    "METRICS",
    "NOT_BALANCED",
    "ReportError",
    "RowSpec",
    "SLEEPVLM_MINI",
    "SLEEPVLM_MINI_COMMAND",
    "SkippedRecordWarning",
    "cells",
    "dataset_table",
    "differences",
    "differences_table",
    "expected_rows",
    "load_records",
    "mini_kappa",
    "main_table",
    "paper_shares",
    "provenance",
    "provenance_html",
    "provenance_table",
    "read_record",
    "record_id",
    "sample_kind",
    "sleepvlm_table",
    "train_dataset",
]


#: Rows of :func:`rationale_table`: a faithfulness metric and the expert rating it stands in for.
RATIONALE_ROWS: tuple[tuple[str, str], ...] = (
    ("precision", "factual accuracy"),
    ("comprehensiveness", "evidence comprehensiveness"),
    ("coherence", "logical coherence"),
)


def rationale_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """The paper's expert ratings of SleepVLM's rationales beside the automatic proxies of
    each faithfulness summary on record (rows of :func:`load_summaries`): one row per criterion
    on the 1-5 scale (a proxy ``s`` as ``1 + 4 s``), and the share of answers citing an event
    that is not there; one column for the paper, one per summary, named by model, test center
    and whether it is the model's own center."""
    from sleepvlm.explain.faithfulness import answers_label, summary_label
    from sleepvlm.params import evaluation_setting

    names = [f"{rating} (1–5)" for _, rating in RATIONALE_ROWS]
    index = [*names, "answers citing an event that is not there"]
    columns = {
        "SleepVLM (paper: expert rating)": [
            f"> {paper.SLEEPVLM_RATING_ABOVE:g}" for _ in RATIONALE_ROWS
        ]
        + [NOT_PUBLISHED]
    }
    for _, row in summaries.iterrows():
        trained = row.get("train_dataset")
        setting = evaluation_setting(trained, row["dataset"]) if trained else "zero-shot"
        values = [
            NOT_PUBLISHED if pd.isna(row.get(m)) else f"{1 + 4 * row[m]:.1f}"
            for m, _ in RATIONALE_ROWS
        ]
        values.append(f"{row['ungrounded_share']:.0%}")
        label = summary_label(row)
        answers = "" if label == answers_label(None) else f", {label}"
        columns[f"{row['model']}, {str(row['dataset']).upper()} ({setting}){answers}"] = values
    return pd.DataFrame(columns, index=index)
