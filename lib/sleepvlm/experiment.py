"""One benchmark run: a model, a modality and a prompt variant on a dataset's class-balanced
test sample, from inputs to a results record.

:func:`run_experiment` draws the seeded class-balanced manifest of held-out subjects, builds
each epoch's input (a fixed-scale PNG for ``image``, the expert feature description for
``text``, the encoded signal for ``sequence``), fills the prompt, sends every request through
the :class:`~sleepvlm.models.Engine` with the persistent response store (a killed run resumes,
a finished one replays without a call), scores the first valid stage label of each answer
(answers without one stay in the denominator as wrong) with subject-bootstrap intervals, and
writes one results record naming the prompt, the sample, the model, its backend and decoding,
and whether the data were simulated.

A model is a registry name (:func:`sleepvlm.models.get_model`), or any OpenAI-compatible
server given by ``base_url`` and a model id; keys are read only from the environment variable
the registry (or ``api_key_env``) names.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sleepvlm import text as text_features
from sleepvlm.cache import cache_dir, content_hash, source_hash
from sleepvlm.data.records import STAGES, DataError
from sleepvlm.metrics import (
    MODALITIES,
    evaluate,
    metrics_from_confusion,
    predictions,
    result_record,
    write_result,
)
from sleepvlm.models import (
    USER_REGISTRY_ENV,
    ChatRequest,
    Engine,
    Message,
    ModelSpec,
    ResponseStore,
    load_registry,
    summarize,
    wire_images,
)
from sleepvlm.models import embedded as _embedded  # registers the embedded models
from sleepvlm.models.engine import DEFAULT_CONCURRENCY
from sleepvlm.models.local import local_model
from sleepvlm.models.messages import TS_PLACEHOLDER
from sleepvlm.prepare import (
    PreparedDataset,
    balanced_test_manifest,
    prepare_dataset,
    sample_counts,
    store_rows,
    test_night_manifest,
)
from sleepvlm.render import ImageOptions, render_dataset
from sleepvlm.rules import detectors, evidence, table
from sleepvlm.sequence import EncodedEpoch, SequenceConfig, count_tokens, encode_epoch
from sleepvlm.splits import MANIFEST_KEY, manifest_hash, nights_of

PROMPT_VARIANTS: tuple[str, ...] = ("plain", "expert")
#: Registry role of models that read ChatTS-style time-series inputs (arrays beside the text).
TS_ROLE = "ts-llm"
#: Columns of the per-epoch table returned by :func:`run_experiment`.
EPOCH_COLUMNS: tuple[str, ...] = (
    *MANIFEST_KEY,
    "stage",
    "request_id",
    "answer",
    "prediction",
    "correct",
    "cached",
)
EMBEDDED_MODELS = tuple(_embedded.EMBEDDED)


class ExperimentError(DataError):
    """A run that cannot be set up or completed as asked."""


# --- models ------------------------------------------------------------------------------------


def resolve_model(
    model: str,
    modality: str,
    base_url: str | None = None,
    model_id: str | None = None,
    api_key_env: str | None = None,
    registry: dict[str, ModelSpec] | None = None,
) -> ModelSpec:
    """The spec of ``model`` for ``modality``: a registry entry (sent to ``base_url`` when one
    is given: e.g. an embedded model behind ``sleepvlm serve``), or, for a name the registry
    lacks, the model ``model_id`` (default: ``model``) of the OpenAI-compatible server at
    ``base_url``."""
    registry = load_registry() if registry is None else registry
    if model in registry:
        spec = registry[model]
        if base_url:
            spec = spec.replace(
                backend="openai_compatible",
                base_url=base_url,
                model_id=model_id or spec.model_id,
                api_key_env=api_key_env or spec.api_key_env,
            )
    elif base_url:
        spec = ModelSpec(
            name=model,
            backend="openai_compatible",
            model_id=model_id or model,
            modalities=(modality,),
            base_url=base_url,
            api_key_env=api_key_env,
            registry="parameters",
        )
    else:
        raise ExperimentError(
            f"model {model!r} is not in the registry ({', '.join(sorted(registry))}); describe "
            f"it in a registry file of your own named by ${USER_REGISTRY_ENV}, or give base_url "
            "(and model_id) of an OpenAI-compatible server"
        )
    if modality not in spec.modalities:
        raise ExperimentError(
            f"model {model!r} takes {', '.join(spec.modalities)}, not {modality!r} inputs"
        )
    return spec


# --- the sample --------------------------------------------------------------------------------


def chance_floor(counts: dict[str, int]) -> pd.DataFrame:
    """What answering without looking scores on a sample of ``counts`` epochs per stage:
    uniform guessing (its expected confusion matrix) and always answering one stage (the most
    frequent), as accuracy, macro-F1, macro recall and κ."""
    n = np.array([counts.get(s, 0) for s in STAGES], dtype=float)
    k = len(STAGES)
    uniform = np.zeros((k, k + 1))
    uniform[:, :k] = n[:, None] / k
    best = int(np.argmax(n))
    single = np.zeros((k, k + 1))
    single[:, best] = n
    rows = {}
    for name, confusion in (("uniform guess", uniform), (f"always {STAGES[best]}", single)):
        values = metrics_from_confusion(confusion)
        rows[name] = {m: float(v) for m, v in values.items()}
    return pd.DataFrame(rows).T


# --- inputs ------------------------------------------------------------------------------------


def image_inputs(
    prepared: PreparedDataset, rows: np.ndarray, options: ImageOptions, executor=None
) -> list[bytes]:
    """PNG bytes of each epoch (drawn once into the image store, then read from it)."""
    drawn = render_dataset(prepared.store, rows, executor=executor, options=options)
    return [Path(p).read_bytes() for p in drawn["image"]]


def feature_table(
    prepared: PreparedDataset,
    nights: list[tuple[str, str]],
    executor=None,
    rules: table.RuleSet = table.DEFAULT_RULES,
):
    """Feature rows of whole nights (the detectors need the night around an epoch) found with
    ``rules``, cached by store, nights, the source of the feature code and the rules' values."""
    code = (source_hash(text_features, evidence, detectors, table), rules.values())
    key = content_hash(prepared.store.path.name, sorted(nights), code)
    path = cache_dir("features") / f"{prepared.dataset}-{key}.pkl"
    if path.is_file():
        return pd.read_pickle(path)
    features = text_features.store_features(prepared.store, nights, executor, rules)
    partial = path.with_suffix(".part")
    features.to_pickle(partial)
    partial.replace(path)
    return features


def text_inputs(prepared: PreparedDataset, sample: pd.DataFrame, executor=None) -> list[str]:
    """The expert feature description of each epoch of ``sample``."""
    pairs = zip(sample["subject"].astype(str), sample["night"].astype(str), strict=True)
    nights = sorted(set(pairs))
    features = feature_table(prepared, nights, executor)
    index = pd.MultiIndex.from_arrays(
        [features["subject"].astype(str), features["night"].astype(str), features["epoch"]]
    )
    by_key = features.set_axis(index)
    wanted = list(
        zip(
            sample["subject"].astype(str),
            sample["night"].astype(str),
            sample["epoch"].astype(int),
            strict=True,
        )
    )
    missing = [k for k in wanted if k not in by_key.index]
    if missing:
        raise ExperimentError(
            f"{prepared.dataset}: no features for epochs {missing[:3]} (subject, night, epoch); "
            "delete the cache's features folder and run again"
        )
    return [text_features.feature_text(by_key.loc[k]) for k in wanted]


def sequence_format(spec: ModelSpec) -> str:
    """``chatts`` (text with ``<ts><ts/>`` placeholders, arrays beside it) for time-series LLMs,
    ``text`` (numbers inline) for every other model."""
    return "chatts" if spec.role == TS_ROLE else "text"


def sequence_inputs(
    prepared: PreparedDataset, rows: np.ndarray, config: SequenceConfig, fmt: str
) -> list[EncodedEpoch]:
    """Each epoch encoded as ``config`` in format ``fmt``."""
    data = prepared.store.read(rows).astype(np.float64)
    return [encode_epoch(epoch, config, fmt) for epoch in data]


# --- what fits a model's context ---------------------------------------------------------------

#: Counts the tokens of a request's messages as a model reads them.
TokenCounter = Callable[[tuple[Message, ...]], int]


def estimated_tokens(family: str = "single_digit") -> TokenCounter:
    """A :data:`TokenCounter` from the rule-based estimate of :func:`sleepvlm.sequence.count_tokens`
    over every turn's text (no tokenizer, no chat-template tokens), for when the model's own
    tokenizer is not at hand (e.g. a smoke build that fetches no weights)."""

    def count(messages: tuple[Message, ...]) -> int:
        return sum(count_tokens(m.text, family) for m in messages)

    return count


def model_token_counter(spec: ModelSpec, device: str = "cpu") -> tuple[TokenCounter, int]:
    """The model's own tokenizer and chat template (its backend's ``prompt_tokens``: loads the
    model, once per process, and fetches its weights if needed) and the context it attends to
    in tokens (prompt and answer together), as its loaded config says; a registry ``context``
    that disagrees is an error, so the two never drift apart."""
    from sleepvlm.models.backends import make_backend

    if spec.backend != "transformers":
        raise ExperimentError(
            f"model {spec.name!r}: its tokenizer is not local (backend {spec.backend!r}); "
            "count with estimated_tokens() and its registry context"
        )
    backend = make_backend(spec, device)
    context = backend.context_tokens
    if context is None or (spec.context is not None and context != spec.context):
        raise ExperimentError(
            f"model {spec.name!r}: its config gives a context of {context} tokens, the "
            f"registry {spec.context}; correct the registry's context"
        )
    return backend.prompt_tokens, context


def token_counter(
    spec: ModelSpec, load: bool, device: str = "cpu", family: str = "single_digit"
) -> tuple[TokenCounter, int, str]:
    """How to count a model's prompts, its context, and how they were counted (for the text):
    with ``load``, the model's tokenizer (:func:`model_token_counter`); without, the rule-based
    estimate in ``family`` (:func:`estimated_tokens`) against the registry's ``context``."""
    if load:
        count, context = model_token_counter(spec, device)
        return count, context, f"{spec.name}'s tokenizer and chat template"
    if spec.context is None:
        raise ExperimentError(
            f"model {spec.name!r}: the registry gives no context; load it to read its config"
        )
    return estimated_tokens(family), spec.context, f"rule-based estimate ({family} digits)"


def sequence_prompt_tokens(
    prepared: PreparedDataset,
    sample: pd.DataFrame,
    config: SequenceConfig,
    prompt_variant: str,
    count: TokenCounter,
    fmt: str = "text",
) -> list[int]:
    """Tokens (by ``count``) of each sampled epoch's whole request: the sequence prompt
    ``prompt_variant`` holding the epoch encoded as ``config`` in format ``fmt``."""
    inputs = sequence_inputs(prepared, store_rows(prepared, sample), config, fmt)
    ids = [str(i) for i in range(len(inputs))]
    requests = build_requests(text_features.load_prompt("sequence", prompt_variant), inputs, ids)
    return [count(r.messages) for r in requests]


def context_fit(
    prepared: PreparedDataset,
    sample: pd.DataFrame,
    configs: Sequence[SequenceConfig],
    count: TokenCounter,
    context: int,
    answer_tokens: int,
    prompt_variants: Sequence[str] = PROMPT_VARIANTS,
    fmt: str = "text",
) -> pd.DataFrame:
    """Which sequence encodings of the sampled epochs fit a model's context: per encoding (in
    the order of ``configs``) and prompt, the tokens of the requests (mean and max by
    ``count``), the room (``context`` minus the ``answer_tokens`` the model may write), the
    epochs whose request fits, and ``fits`` when every one does (a longer request is refused
    by the model, or truncated by a server)."""
    if context <= answer_tokens:
        raise ExperimentError(
            f"a context of {context} tokens leaves no room beside {answer_tokens} answer tokens"
        )
    room = context - answer_tokens
    rows = []
    for config in configs:
        for variant in prompt_variants:
            tokens = np.asarray(
                sequence_prompt_tokens(prepared, sample, config, variant, count, fmt)
            )
            rows.append(
                {
                    "encoding": config.name,
                    "prompt": variant,
                    "epochs": len(tokens),
                    "tokens_mean": float(tokens.mean()) if len(tokens) else np.nan,
                    "tokens_max": int(tokens.max()) if len(tokens) else 0,
                    "context": context,
                    "room": room,
                    "epochs_fitting": int((tokens <= room).sum()),
                    "fits": bool((tokens <= room).all()),
                }
            )
    return pd.DataFrame(rows)


def fitting_configs(table: pd.DataFrame, configs: Sequence[SequenceConfig]) -> list[SequenceConfig]:
    """The ``configs`` (in their order) whose every row of a :func:`context_fit` table fits
    (every prompt; every dataset when the tables of several are stacked)."""
    fits = table.groupby("encoding")["fits"].all()
    return [c for c in configs if c.name in fits.index and fits[c.name]]


def sequence_context_fit(
    datasets: Sequence[str],
    model: str,
    configs: Sequence[SequenceConfig],
    load: bool = True,
    counts: dict[str, int] | None = None,
    count_scale: float = 1.0,
    prompt_variants: Sequence[str] = PROMPT_VARIANTS,
    data_dir: str | Path | None = None,
    cohort_size: str = "full",
    seed: int = 0,
    registry: dict[str, ModelSpec] | None = None,
) -> tuple[pd.DataFrame, str]:
    """:func:`context_fit` of a registered model on each dataset's seeded class-balanced sample
    (``counts`` per stage, or the paper's times ``count_scale``: the epochs
    :func:`run_experiment` would send with the same arguments), stacked with a ``dataset``
    column, counted by :func:`token_counter` (``load``: its own tokenizer) with room for its
    ``max_tokens``; and how the tokens were counted."""
    spec = resolve_model(model, "sequence", registry=registry)
    answer_tokens = spec.decoding.get("max_tokens")
    if answer_tokens is None:
        raise ExperimentError(
            f"model {spec.name!r}: no max_tokens in its decoding, so the room its answer needs "
            "is unknown; give it one in the registry"
        )
    count, context, how = token_counter(spec, load)
    tables = {}
    for dataset in datasets:
        prepared = prepare_dataset(dataset, data_dir, cohort_size=cohort_size)
        sample = balanced_test_manifest(
            prepared, counts or sample_counts(dataset, count_scale), seed=seed
        )
        tables[dataset] = context_fit(
            prepared, sample, configs, count, context, answer_tokens, prompt_variants
        )
    table = pd.concat(tables, names=["dataset", None]).reset_index(level=0).reset_index(drop=True)
    return table, how


def context_fit_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per encoding of a (stacked) :func:`context_fit` table, in its order: the longest
    request of each prompt (tokens, over every dataset), the room, the requests (one per
    sampled epoch and prompt) that fit, of how many, and whether the encoding fits throughout."""
    order = list(dict.fromkeys(table["encoding"]))
    longest = table.pivot_table(
        index="encoding", columns="prompt", values="tokens_max", aggfunc="max"
    )
    longest.columns = [f"longest {p} prompt (tokens)" for p in longest.columns]
    grouped = table.groupby("encoding")
    summary = longest.assign(
        room=grouped["room"].min(),
        requests_fitting=grouped["epochs_fitting"].sum(),
        requests=grouped["epochs"].sum(),
        fits=grouped["fits"].all(),
    )
    return summary.reindex(order)


# --- requests ----------------------------------------------------------------------------------


def _wire_text(content) -> str:
    if isinstance(content, str):
        return content
    return "\n\n".join(part["text"] for part in content if part.get("type") == "text")


def chat_request(
    wire: list[dict],
    request_id: str,
    prompt_hash: str,
    timeseries: Sequence[Sequence[float]] = (),
) -> ChatRequest:
    """A request from chat-completions messages (as :func:`sleepvlm.text.render_prompt` makes
    them). A turn's images go before its text, as the harness sends every image; the
    ``timeseries`` (a ChatTS input's arrays) go with the turn whose text holds their
    ``<ts><ts/>`` placeholders."""
    carrier = next(
        (i for i, m in enumerate(wire) if TS_PLACEHOLDER in _wire_text(m["content"])), None
    )
    if timeseries and carrier is None:
        raise ExperimentError(
            f"request {request_id}: {len(timeseries)} time series but no {TS_PLACEHOLDER} in "
            "the prompt; put the ChatTS text (EncodedEpoch.text) in the prompt's input field"
        )
    messages = tuple(
        Message(
            m["role"],
            _wire_text(m["content"]),
            tuple(wire_images([m])),
            timeseries if i == carrier else (),
        )
        for i, m in enumerate(wire)
    )
    return ChatRequest(messages, id=request_id, prompt_hash=prompt_hash)


def run_prompt(
    modality: str, variant: str, prompt: text_features.Prompt | None = None
) -> tuple[text_features.Prompt, str]:
    """The prompt a run sends, ``prompt`` (a variant of the template ``<modality>_<variant>``)
    or else the template itself, and the name its results records carry: the variant's, with
    the prompt's hash appended when it departs from the template (a variant's record never
    replaces the template's)."""
    template = text_features.load_prompt(modality, variant)
    if prompt is None:
        return template, variant
    if (prompt.modality, prompt.variant) != (modality, variant):
        raise ExperimentError(
            f"prompt {prompt.name} is not a variant of {template.name}; derive it from "
            f"load_prompt({modality!r}, {variant!r})"
        )
    return prompt, variant if prompt.sha256 == template.sha256 else f"{variant}-{prompt.sha256[:8]}"


def build_requests(
    prompt: text_features.Prompt, inputs: Sequence, ids: Sequence[str]
) -> list[ChatRequest]:
    """One request per input with ``prompt`` (its hash keys every stored answer). A
    ChatTS-format :class:`EncodedEpoch` sends its arrays beside its text, one series per
    channel."""
    field = text_features.INPUT_FIELD[prompt.modality]
    requests = []
    for value, request_id in zip(inputs, ids, strict=True):
        wire = text_features.render_prompt(prompt, **{field: value})
        chatts = isinstance(value, EncodedEpoch) and value.format == "chatts"
        timeseries = value.timeseries if chatts else ()
        requests.append(chat_request(wire, request_id, prompt.sha256[:16], timeseries))
    return requests


def local_model_info(spec: ModelSpec) -> dict:
    """What a trained local model reports of itself for the record (its ``info()``, e.g. the
    center it was trained on), or which weights file a real pretrained model ran with (its
    SHA-256 and where it came from); nothing for other models."""
    if spec.weights is not None:
        weights = spec.wheel_weights
        return {
            "pretrained": True,
            "weights_file": weights.file,
            "weights_sha256": weights.sha256,
            "weights_source": weights.requirement,
        }
    if spec.backend != "local":
        return {}
    info = getattr(local_model(spec.model_id), "info", None)
    return info() if info else {}


def _responses_path(folder: Path, spec: ModelSpec) -> Path:
    return folder / (re.sub(r"[^A-Za-z0-9._-]+", "-", spec.name) + ".jsonl")


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """What one run measures: ``model`` asked with the ``<modality>_<prompt_variant>`` prompt
    on a sample of ``dataset``'s held-out test subjects.

    The epochs: the paper's counts per stage times ``count_scale`` (or ``counts``), drawn with
    ``seed`` from the held-out subjects of ``data_dir`` (a real dataset's folder) or of the
    simulated cohort of ``cohort_size``; with ``whole_nights`` instead every epoch of that many
    held-out nights (a seeded choice; all when there are fewer), as the SleepVLM paper scores
    its model, and the record's ``counts`` is None.
    The inputs: ``image_context`` neighbouring epochs and ``image`` options (e.g.
    ``{"autoscale": True}``, applied after the model's own), the ``sequence_config`` of a
    sequence run, and ``prompt``, a variant of the template (e.g. from
    :mod:`sleepvlm.failures`): its answers are stored under its own hash, and the record's
    ``prompt`` is ``<prompt_variant>-<first 8 of its hash>`` so it never replaces the
    template's.
    The model's endpoint: ``base_url``, ``model_id`` and ``api_key_env`` override the registry
    entry; ``decoding`` its decoding settings; ``concurrency`` (requests in flight) defaults to
    the entry's, else :data:`~sleepvlm.models.engine.DEFAULT_CONCURRENCY`.
    ``extra`` fields are added to the record (e.g. ``train_dataset`` of a trained model).
    """

    dataset: str
    modality: str
    prompt_variant: str
    model: str
    data_dir: str | Path | None = None
    cohort_size: str = "full"
    seed: int = 0
    count_scale: float = 1.0
    counts: dict[str, int] | None = None
    whole_nights: int | None = None
    image_context: int = 0
    image: dict | None = None
    sequence_config: SequenceConfig | None = None
    prompt: text_features.Prompt | None = None
    base_url: str | None = None
    model_id: str | None = None
    api_key_env: str | None = None
    decoding: dict | None = None
    concurrency: int | None = None
    timeout_s: float = 120.0
    extra: dict | None = None

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ExperimentError(f"modality {self.modality!r} is not one of {MODALITIES}")
        if self.prompt_variant not in PROMPT_VARIANTS:
            raise ExperimentError(
                f"prompt variant {self.prompt_variant!r} is not one of {PROMPT_VARIANTS}"
            )


def run_experiment(
    run: RunSpec,
    *,
    results_dir: str | Path | None = "results",
    store_dir: str | Path | None = None,
    executor=None,
    progress: bool = False,
    registry: dict[str, ModelSpec] | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Run ``run``: returns the results record (also written to ``results_dir`` unless None)
    and one row per epoch (:data:`EPOCH_COLUMNS`).

    Answers are kept in ``store_dir`` (default: the cache's ``responses``), one JSONL file per
    model: a rerun asks only for what is missing. A request that still fails after the
    engine's retries is not scored: the run raises :class:`ExperimentError` (the answers
    obtained are kept; run again to retry the rest). ``registry`` replaces the packaged model
    registry (e.g. one loaded from your own file); ``executor`` prepares inputs in parallel.
    """
    dataset, modality, seed = run.dataset, run.modality, run.seed
    spec = resolve_model(run.model, modality, run.base_url, run.model_id, run.api_key_env, registry)
    prepared = prepare_dataset(
        dataset, run.data_dir, cohort_size=run.cohort_size, executor=executor
    )
    if run.whole_nights is None:
        counts = run.counts or sample_counts(dataset, run.count_scale)
        sample = balanced_test_manifest(prepared, counts, seed=seed)
    else:
        counts, sample = None, test_night_manifest(prepared, run.whole_nights, seed)
    rows = store_rows(prepared, sample)
    ids = [f"{dataset}/{s}/{n}/{e}" for s, n, e in sample[["subject", "night", "epoch"]].values]

    if modality == "image":
        # A model trained on other images (e.g. SleepVLM-mini) gets the images it knows.
        options = ImageOptions(
            **{"context": run.image_context, **(spec.image or {}), **(run.image or {})}
        )
        inputs: Sequence = image_inputs(prepared, rows, options, executor)
        input_settings = asdict(options)
    elif modality == "text":
        inputs = text_inputs(prepared, sample, executor)
        input_settings = {"features": sorted(text_features.FEATURES)}
    else:
        fmt = sequence_format(spec)
        sequence_config = run.sequence_config or SequenceConfig()
        inputs = sequence_inputs(prepared, rows, sequence_config, fmt)
        input_settings = {"format": fmt, **asdict(sequence_config)}
    prompt, prompt_name = run_prompt(modality, run.prompt_variant, run.prompt)
    requests = build_requests(prompt, inputs, ids)

    folder = Path(store_dir) if store_dir else cache_dir("responses")
    engine = Engine(
        spec,
        ResponseStore(_responses_path(folder, spec)),
        concurrency=run.concurrency or spec.concurrency or DEFAULT_CONCURRENCY,
        decoding=run.decoding,
        timeout_s=run.timeout_s,
        progress=progress,
        seed=seed,
    )
    start = time.perf_counter()
    responses = engine.run(requests)
    elapsed = time.perf_counter() - start
    summary = summarize(responses)
    if summary.failed:
        first = next(r for r in responses if not r.ok)
        raise ExperimentError(
            f"{spec.name}: {summary.failed} of {summary.n} requests failed after retries "
            f"(first: {first.error}); {summary.called} new answers are stored, so running "
            "again asks only for the rest"
        )

    answers = [r.text for r in responses]
    truth = sample["stage"].tolist()
    evaluation = evaluate(truth, answers, subjects=sample["subject"].tolist(), seed=seed)
    record = result_record(
        dataset=dataset,
        modality=modality,
        prompt=prompt_name,
        model=spec.name,
        backend=spec.backend,
        model_id=spec.model_id,
        data="simulated" if prepared.simulated else "real",
        evaluation=evaluation,
        manifest_hash=manifest_hash(sample),
        prompt_hash=prompt.sha256,
        decoding=engine.decoding,
    )
    record.update(
        {
            "prompt_version": prompt.version,
            "role": spec.role,
            "registry": spec.registry,
            "base_url": spec.base_url,
            "parse_rate": evaluation["parse_rate"],
            "seed": seed,
            "cohort_size": run.cohort_size if prepared.simulated else None,
            "counts": counts,
            "whole_nights": None if run.whole_nights is None else len(nights_of(sample)),
            "source": prepared.source_label,
            "inputs": input_settings,
            "run": {
                **asdict(summary),
                "seconds": round(elapsed, 3),
                "requests_per_s": summary.called / elapsed if summary.called else None,
            },
        }
    )
    record.update(local_model_info(spec))
    record.update(run.extra or {})
    json.dumps(record, allow_nan=False)  # a record that cannot be written fails here, not later
    if results_dir is not None:
        write_result(record, results_dir)

    frame = sample[[*MANIFEST_KEY, "stage"]].copy()
    frame["request_id"] = ids
    frame["answer"] = answers
    frame["prediction"] = predictions(answers)
    frame["correct"] = frame["prediction"] == frame["stage"]
    frame["cached"] = [r.cached for r in responses]
    return record, frame[list(EPOCH_COLUMNS)]


# --- many runs, and the tables of a chapter ----------------------------------------------------

#: Registry roles whose models a modality's chapter lists (besides the floors it ran).
CHAPTER_ROLES: dict[str, tuple[str, ...]] = {
    "image": ("vlm",),
    "text": ("text-llm", "vlm"),
    "sequence": ("ts-llm", "text-llm", "vlm"),
}
#: Notebook of each modality's chapter (for the commands that fill its missing rows).
CHAPTERS: dict[str, str] = {
    "image": "07_image_experiment",
    "text": "08_text_experiment",
    "sequence": "09_sequence_experiment",
    "signal": "10_baselines",  # the supervised baselines, trained and scored per center
}
SUMMARY_COLUMNS: tuple[str, ...] = (
    "accuracy",
    "macro_f1",
    "macro_recall",
    "kappa",
    "parse_rate",
)


def per_stage_counts(per_stage: int) -> dict[str, int]:
    """Counts of a seeded subsample with ``per_stage`` epochs of every stage (e.g. the few
    epochs a real model on a CPU can answer), for :class:`RunSpec`'s ``counts``."""
    if per_stage < 1:
        raise ExperimentError(f"a subsample needs at least one epoch per stage, got {per_stage}")
    return {stage: per_stage for stage in STAGES}


def run_grid(
    datasets: Sequence[str],
    modality: str,
    models: Sequence[str],
    prompt_variants: Sequence[str] = PROMPT_VARIANTS,
    *,
    results_dir: str | Path | None = "results",
    store_dir: str | Path | None = None,
    executor=None,
    progress: bool = False,
    registry: dict[str, ModelSpec] | None = None,
    **run_fields,
) -> tuple[list[dict], dict[tuple[str, str, str], pd.DataFrame]]:
    """:func:`run_experiment` for every dataset x model x prompt variant, each a
    :class:`RunSpec` with the other ``run_fields``; the records and the per-epoch tables by
    (dataset, model, variant)."""
    records, frames = [], {}
    for dataset in datasets:
        for model in models:
            for variant in prompt_variants:
                record, frame = run_experiment(
                    RunSpec(dataset, modality, variant, model, **run_fields),
                    results_dir=results_dir,
                    store_dir=store_dir,
                    executor=executor,
                    progress=progress,
                    registry=registry,
                )
                records.append(record)
                frames[(dataset, model, variant)] = frame
    return records, frames


def results_table(records: Sequence[dict]) -> pd.DataFrame:
    """One row per run: the summary metrics in percent with their subject-bootstrap 95 %
    intervals, the parse rate and the run's size."""
    rows = []
    for r in records:
        row = {
            "dataset": r["dataset"],
            "model": r["model"],
            "prompt": r["prompt"],
            "data": r["data"],
            "n": r["n"],
        }
        for name in SUMMARY_COLUMNS:
            value = r["parse_rate"] if name == "parse_rate" else r["metrics"][name]
            scale = 1 if name == "kappa" else 100
            row[name] = None if value is None else value * scale
            if name in ("accuracy", "macro_f1"):
                low, high = r["metrics"].get("ci95", {}).get(name, [None, None])
                row[f"{name}_ci"] = "—" if low is None else f"{100 * low:.1f}–{100 * high:.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def kappa_summary(results: pd.DataFrame) -> str:
    """κ of each run of a :func:`results_table`, as text for the prose ("dcsm plain 0.01,
    ..."), or "not run" when the table is empty."""
    if results.empty:
        return "not run"
    return ", ".join(
        f"{r.dataset} {r.prompt} {r.kappa:.2f}" for r in results.itertuples(index=False)
    )


def rerun_command(
    modality: str,
    model: str,
    dataset: str,
    open_model: bool = False,
    prompt_variant: str | None = None,
    pretrained: bool = False,
) -> str:
    """The papermill command that fills a missing row of a modality's chapter with a real
    dataset (paths are placeholders to replace); ``prompt_variant`` runs that prompt only.
    A real pretrained model run here (``pretrained``: weights fetched into the cache) is the
    chapter's ``real_llm`` parameter, run on its seeded subsample, not one of its ``models``.
    ``signal`` rows (the supervised baselines) are filled by chapter 10, which trains and scores
    both baselines on the dataset."""
    chapter = CHAPTERS[modality]
    command = f"papermill notebooks/{chapter}.ipynb {chapter}.out.ipynb"
    if modality == "signal":
        # Chapter 10 takes a folder per dataset (sleepvlm.params.as_dict reads the text).
        return command + f" -p datasets {dataset} -p data_dirs '{{{dataset}: /path/to/{dataset}}}'"
    command += f" -p {'real_llm' if pretrained else 'models'} {model}"
    command += f" -p dataset {dataset} -p data_dir /path/to/{dataset}"
    if prompt_variant:
        command += f" -p prompt_variants {prompt_variant}"
    return command + (" -p base_url http://host:8000/v1" if open_model else "")


def not_run_rows(
    modality: str, ran: Sequence[str], datasets: Sequence[str], registry=None
) -> pd.DataFrame:
    """The registry's models of this modality's roles that were not run: "not run", and the
    command that runs each (open models need the URL of their OpenAI-compatible server)."""
    registry = load_registry() if registry is None else registry
    rows = []
    for name, spec in registry.items():
        if name in ran or spec.role not in CHAPTER_ROLES[modality]:
            continue
        if modality not in spec.modalities or spec.backend == "local":
            continue
        for dataset in datasets:
            rows.append(
                {
                    "dataset": dataset,
                    "model": name,
                    "role": spec.role,
                    "status": "not run",
                    "command": rerun_command(
                        modality,
                        name,
                        dataset,
                        spec.backend == "openai_compatible",
                        pretrained=spec.weights is not None,
                    ),
                }
            )
    return pd.DataFrame(rows)


__all__ = [
    "RunSpec",
    "CHAPTERS",
    "CHAPTER_ROLES",
    "EMBEDDED_MODELS",
    "EPOCH_COLUMNS",
    "ExperimentError",
    "PROMPT_VARIANTS",
    "build_requests",
    "chance_floor",
    "chat_request",
    "context_fit",
    "context_fit_summary",
    "estimated_tokens",
    "feature_table",
    "fitting_configs",
    "image_inputs",
    "kappa_summary",
    "model_token_counter",
    "not_run_rows",
    "per_stage_counts",
    "rerun_command",
    "resolve_model",
    "results_table",
    "run_experiment",
    "run_grid",
    "run_prompt",
    "sequence_format",
    "sequence_inputs",
    "sequence_context_fit",
    "sequence_prompt_tokens",
    "store_rows",
    "text_inputs",
    "token_counter",
]
