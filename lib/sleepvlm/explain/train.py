"""Training SleepVLM-mini on a prepared dataset, cached by content, and finding the trained
model to serve.

:func:`train_mini` draws a class-balanced sample of the training subjects' epochs, renders
each with its neighbours at the model's fixed scale, writes both phases' targets (the
waveform description, and the answer built from the epoch's rule annotation: ground-truth
events on simulated nights, detected events on real ones), trains the tokenizer and the model,
and saves the folder under the cache keyed by data, settings and code; a second call returns
the saved folder. The folder of the last model trained with ``make_default`` is the one the
embedded ``sleepvlm-mini`` model serves (``$SLEEPVLM_MINI_DIR`` overrides it).
"""

from __future__ import annotations

import ast
import functools
import json
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from sleepvlm import render
from sleepvlm.cache import cache_dir, content_hash
from sleepvlm.data.records import STAGES
from sleepvlm.models.messages import wire_images
from sleepvlm.params import EXTERNAL, MINI_SNAPSHOTS, WITHIN
from sleepvlm.prepare import PreparedDataset, prepare_dataset, store_rows
from sleepvlm.splits import balanced_sample, night_keys, nights_of

from . import annotations, mini
from .mini import Example, MiniConfig, MiniError

#: Settings of :func:`train_mini` for the book's smoke build: seconds, not a useful model.
SMOKE = {
    "config": MiniConfig(perception_steps=2, grounding_steps=4),
    "per_class": 12,
    "max_nights": 2,
}
#: This project's goal for SleepVLM-mini on the simulated cohort: Cohen's κ on whole held-out
#: test nights (the SleepVLM paper's protocol), within the training center and on average over
#: the external ones.
KAPPA_GOAL = {WITHIN: 0.75, EXTERNAL: 0.70}


def kappa_goal_texts(within: float, external: float) -> dict[str, str]:
    """Glue texts on whole-night κ: whether :data:`KAPPA_GOAL` is met, and whether the
    external centers score below the training center, as a model meeting real domain shift
    does (the SleepVLM paper: lower κ on its external cohort)."""
    if np.isnan(external):
        return {"mini_goal_verdict": "—", "mini_external_verdict": "— (no external center)"}
    missed = [
        f"{name} {value:.2f} < {KAPPA_GOAL[name]:.2f}"
        for name, value in ((WITHIN, within), (EXTERNAL, external))
        if value < KAPPA_GOAL[name]
    ]
    return {
        "mini_goal_verdict": "met" if not missed else "not met (" + ", ".join(missed) + ")",
        "mini_external_verdict": (
            f"lower than within, by {within - external:.2f}, as in the paper"
            if external < within
            else f"not lower than within ({external:.2f} vs {within:.2f}): the simulated "
            "centers do not differ enough for this model to notice"
        ),
    }


def ceiling_text(ceilings: pd.DataFrame, dataset: str) -> str:
    """The sentence on the label ceiling of the training center: its κ on the class-balanced
    sample and on whole test nights (``ceilings`` has one row per ``epochs`` kind with
    ``setting``, ``kappa``, ``label ceiling κ``, ``share of ceiling`` and, for a real dataset,
    ``two scorers κ``), or, on real data, its two scorers' agreement or why there is none."""
    within = ceilings[ceilings["setting"] == WITHIN].set_index("epochs")
    ceiling = within["label ceiling κ"].astype(float)
    if within.empty or ceiling.isna().all():
        real = (
            f"{dataset.upper()} is read here from a real dataset, whose epochs have no "
            "generating stage: no label ceiling is measured"
        )
        scorers = within.get("two scorers κ", pd.Series(dtype=float)).astype(float).dropna()
        if scorers.empty:
            return real + " (two scorers' agreement plays its part where a dataset has two)."
        epochs, kappa = scorers.index[0], scorers.iloc[0]
        share = 100 * within.loc[epochs, "kappa"] / kappa
        return (
            f"{real}; its two scorers agree at κ {kappa:.2f} on the {epochs}, the human "
            f"ceiling, of which SleepVLM-mini reaches {share:.0f} %."
        )
    sample, nights = within.loc["class-balanced sample"], within.loc["whole test nights"]
    why = (
        "lower: it holds as much N1 as any other stage, and N1 is where most labels that "
        "depart from the generating stage fall"
        if sample["label ceiling κ"] < nights["label ceiling κ"]
        else "not lower than the whole nights' here"
    )
    return (
        f"On {dataset.upper()}'s class-balanced sample the generating stage agrees with the label "
        f"at κ {sample['label ceiling κ']:.2f}, and SleepVLM-mini reaches "
        f"{100 * sample['share of ceiling']:.0f} % of it; on its whole test nights the ceiling "
        f"is κ {nights['label ceiling κ']:.2f} and the model reaches "
        f"{100 * nights['share of ceiling']:.0f} %. The balanced sample's ceiling is {why}."
    )


#: Environment variable naming the model folder ``sleepvlm-mini`` serves.
MODEL_DIR_ENV = "SLEEPVLM_MINI_DIR"
DEFAULT_POINTER = "sleepvlm-mini-default.txt"


def build_examples(
    prepared: PreparedDataset, sample: pd.DataFrame, config: MiniConfig, executor=None
) -> list[Example]:
    """Images and both phases' targets of the epochs of ``sample``."""
    rows = store_rows(prepared, sample)
    drawn = render.render_dataset(
        prepared.store, rows, options=config.image_options(), executor=executor
    )
    epochs = prepared.store.read(rows)
    nights = zip(sample["subject"].astype(str), sample["night"].astype(str), strict=True)
    found = annotations.annotate_store(prepared, set(nights), executor=executor)
    examples = []
    for annotation, image, epoch in zip(
        annotations.select(found, sample), drawn["image"], epochs, strict=True
    ):
        step = config.time_step_s
        events = list(dict.fromkeys(e.text(step) for e in annotation.evidence))
        located = mini.segment_event_words(annotation.all_events) if config.segment_events else None
        targets = {
            "perception": mini.waveform_description(epoch, events, located),
            "grounding": annotations.answer_text(annotation, step),
        }
        presence = mini.presence_targets(annotation.all_events, config)
        examples.append(Example(Path(image).read_bytes(), targets, annotation.key, presence))
    return examples


def training_sample(
    prepared: PreparedDataset,
    per_class: int,
    seed: int = 0,
    max_nights: int | None = None,
    split: str = "train",
) -> pd.DataFrame:
    """``per_class`` epochs of each stage (fewer when the nights hold fewer) from ``split``,
    from a seeded choice of ``max_nights`` of its nights when given (every training night is
    annotated, which runs the detectors on it)."""
    pool = prepared.manifest[prepared.manifest["split"] == split]
    nights = nights_of(pool, max_nights, seed)
    pool = pool[night_keys(pool).isin(nights)]
    available = pool["stage"].value_counts()
    counts = {s: min(per_class, int(available.get(s, 0))) for s in STAGES}
    return balanced_sample(pool, counts, split=split, seed=seed)


#: The modules whose code decides a trained model (:func:`training_code_hash`): its
#: architecture and training, its targets and its images.
TRAINING_CODE = (mini, annotations, render)
#: Definitions of :mod:`~sleepvlm.explain.mini` used only to answer with a trained model (the
#: scoring's, which each result names by its library version): left out of
#: :func:`training_code_hash`, so that a change in how the model answers neither retrains it nor
#: outdates the lever records.
ANSWERING = frozenset(
    {"MiniModel", "ScoredAnswer", "BatchingAnswerer", "_scored_text", "unreadable_answer"}
)


def training_code_hash(modules=TRAINING_CODE) -> str:
    """Hash of the syntax trees of the code that decides a trained model (``modules``' source
    files), without its comments, its type-checking imports and the :data:`ANSWERING`
    definitions: a model's cache key, and the ``code`` of each lever record
    (:mod:`sleepvlm.explain.levers`)."""
    trees = []
    for module in modules:
        tree = ast.parse(Path(module.__file__).read_text())
        tree.body = [node for node in tree.body if not _answers_only(node)]
        trees.append(ast.dump(tree))
    return content_hash(*trees)


def _answers_only(node: ast.stmt) -> bool:
    if isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports nothing at run time
        return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    return isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name in ANSWERING


def model_key(prepared: PreparedDataset, config: MiniConfig, sample, base_model_dir=None) -> str:
    code = training_code_hash()
    base = str(base_model_dir) if base_model_dir else None
    return content_hash(prepared.store.path.name, asdict(config), sample, code, base)


def train_mini(
    dataset: str = "dcsm",
    data_dir: str | Path | None = None,
    cohort_size: str = "full",
    config: MiniConfig | None = None,
    per_class: int = 800,
    max_nights: int | None = 8,
    device: str = "cpu",
    max_seconds: float | None = None,
    executor=None,
    make_default: bool = True,
    progress: bool = False,
    base_model_dir: str | Path | None = None,
    snapshots: int = MINI_SNAPSHOTS,
) -> Path:
    """Train SleepVLM-mini on ``dataset``'s training subjects (both phases) and save it; the
    saved folder when this data, config and code were trained before.

    With ``base_model_dir`` (a pretrained Qwen2-VL-family folder, e.g. Qwen2.5-VL-3B-Instruct
    with its tokenizer and image processor), the same two phases fine-tune LoRA adapters on it
    instead of training a small model from scratch (use ``device="cuda"``). ``max_seconds``
    caps the wall time: a quarter for perception, the rest for grounding. ``snapshots`` keeps
    the weights at that many evenly spaced steps of the grounding phase before its last
    (:func:`snapshot_steps`), for the training curve of :mod:`sleepvlm.explain.snapshots`; a
    LoRA fine-tune keeps none (its adapters are merged into the saved weights)."""
    import torch

    config = config or MiniConfig()
    prepared = prepare_dataset(dataset, data_dir, cohort_size=cohort_size, executor=executor)
    if base_model_dir is not None:
        snapshots = 0
    key = model_key(prepared, config, (per_class, max_nights, snapshots), base_model_dir)
    folder = cache_dir("models") / f"sleepvlm-mini-{dataset}-{key}"
    if not (folder / mini.SETTINGS_FILE).is_file():
        torch.manual_seed(config.seed)
        started = time.perf_counter()
        sample = training_sample(prepared, per_class, config.seed, max_nights)
        examples = build_examples(prepared, sample, config, executor)
        model, tokenizer, processor = _starting_point(examples, config, base_model_dir)
        log = train_phases(
            model,
            tokenizer,
            processor,
            examples,
            config,
            device,
            max_seconds,
            progress,
            snapshot_steps(config.grounding_steps, snapshots),
        )
        settings = mini.settings_of(
            config,
            dataset=dataset,
            simulated=prepared.simulated,
            source=prepared.source,
            base_model=str(base_model_dir) if base_model_dir else None,
            per_class=per_class,
            max_nights=max_nights,
            n_examples=len(examples),
            train_subjects=sorted(sample["subject"].astype(str).unique()),
            device=device,
            seconds=time.perf_counter() - started,
            log={"loss": log.loss, "seconds": log.seconds},
            parameters=sum(p.numel() for p in model.parameters()),
            snapshot_steps=sorted(log.snapshots),
        )
        mini.save(model, tokenizer, processor, folder, settings, log.snapshots)
    if make_default:
        (cache_dir("models") / DEFAULT_POINTER).write_text(str(folder))
    return folder


def _starting_point(examples: list[Example], config: MiniConfig, base_model_dir):
    """A new small model with a tokenizer trained on the targets, or a base with LoRA."""
    if base_model_dir is None:
        tokenizer = mini.train_tokenizer([e.targets[p] for e in examples for p in mini.PHASES])
        return mini.build_model(tokenizer, config), tokenizer, mini.image_processor(config)
    if config.column_embedding:
        raise MiniError(
            "column_embedding trains a new vector per image column, which LoRA would leave "
            "frozen: leave it off to fine-tune a pretrained model"
        )
    base = mini.MiniModel.load(base_model_dir)
    return mini.add_lora(base.model), base.tokenizer, base.processor


def snapshot_steps(total: int, count: int) -> list[int]:
    """``count`` step counts spaced evenly through a phase of ``total`` steps, its last excluded
    (the saved model is that one)."""
    return sorted({round(total * k / (count + 1)) for k in range(1, count + 1)} - {0, total})


def train_phases(
    model,
    tokenizer,
    processor,
    examples,
    config,
    device="cpu",
    max_seconds=None,
    progress=False,
    snapshot_at=(),
) -> mini.TrainingLog:
    """Perception, then grounding, on the same examples; the grounding weights kept after each
    step count of ``snapshot_at`` (in the log's ``snapshots``), and with them the weights the
    perception phase left (:data:`~sleepvlm.explain.mini.PERCEPTION_SNAPSHOT`)."""
    log = mini.TrainingLog()
    budget = {"perception": None, "grounding": None}
    if max_seconds is not None:
        budget = {"perception": max_seconds / 4, "grounding": 3 * max_seconds / 4}
    steps = {"perception": config.perception_steps, "grounding": config.grounding_steps}
    for phase in mini.PHASES:
        if phase == "grounding" and snapshot_at and steps["perception"]:
            log.snapshots[mini.PERCEPTION_SNAPSHOT] = mini.trainable_weights(model)
        if steps[phase]:
            mini.train_phase(
                model,
                tokenizer,
                processor,
                examples,
                phase,
                steps[phase],
                config,
                device,
                log,
                budget[phase],
                _printer(phase) if progress else None,
                snapshot_at if phase == "grounding" else (),
            )
    return log


def _printer(phase: str):
    def report(step: int, loss: float) -> None:
        if step % 50 == 0:
            print(f"{phase} step {step}: loss {loss:.3f}", flush=True)

    return report


def default_model_dir() -> Path:
    """The model folder ``sleepvlm-mini`` serves: ``$SLEEPVLM_MINI_DIR``, else the last one
    trained with ``make_default``."""
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV])
    pointer = cache_dir("models") / DEFAULT_POINTER
    if not pointer.is_file():
        raise MiniError(
            "no SleepVLM-mini has been trained here: run chapter 11 (sleepvlm book --only 11), "
            f"call sleepvlm.explain.train_mini(), or set {MODEL_DIR_ENV} to a model folder"
        )
    return Path(pointer.read_text().strip())


#: Answer to a request without an image (no stage label in it: scored as invalid).
NO_IMAGE_ANSWER = "No epoch image in the request; SleepVLM-mini reads images only."


_ANSWERERS: dict[Path, mini.BatchingAnswerer] = {}
_LOADING = threading.Lock()


def _answerer(folder: Path) -> mini.BatchingAnswerer:
    # Concurrent first requests must load the model once (transformers' lazy imports are not
    # safe to race either).
    with _LOADING:
        if folder not in _ANSWERERS:
            _ANSWERERS[folder] = mini.BatchingAnswerer(mini.MiniModel.load(folder))
        return _ANSWERERS[folder]


@functools.lru_cache(maxsize=65536)
def _answer(folder: Path, png: bytes) -> str:
    return _answerer(folder)(png)


class ServedMini:
    """The embedded ``sleepvlm-mini`` model: answers the first image of a request with the
    model in :func:`default_model_dir` (loaded once, concurrent requests batched). It was
    trained with one instruction and is given that one whatever the request's text says, so
    an image already answered (under another prompt) is answered from memory."""

    def __call__(self, messages: list[dict]) -> str:
        images = wire_images(messages)
        if not images:
            return NO_IMAGE_ANSWER
        return _answer(default_model_dir(), images[0])

    def version(self) -> str:
        """Names the trained weights, so stored answers of another model are never replayed."""
        return default_model_dir().name

    def info(self) -> dict:
        """What a results record says of the served model: where it learnt, which weights."""
        settings = json.loads((default_model_dir() / mini.SETTINGS_FILE).read_text())
        return {
            "train_dataset": settings.get("dataset"),
            "model_folder": default_model_dir().name,
            "train_seconds": settings.get("seconds"),
        }
