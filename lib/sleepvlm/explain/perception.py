"""Does SleepVLM-mini see where the events are? (issue 19)

The grounding answers cite most events at the wrong time. Whether that starts in what the model
sees or in how it writes its answer is read from its *perception* answers: asked to describe
the waveforms, a model trained with ``segment_events`` names the events of each 5-s segment
(:func:`sleepvlm.explain.mini.waveform_description`). :func:`perception_scores` compares the
events each answer names per segment with the true events there: precision (named and there),
recall (there and named), and the share of answers that say the same of every segment, the sign
of a model that describes the epoch as a whole and not where things lie.

:func:`perception_table` asks it of the model as the perception phase left it (the snapshot
kept before grounding, :data:`sleepvlm.explain.mini.PERCEPTION_SNAPSHOT`) and of the finished
model, on the same held-out epochs as :mod:`sleepvlm.explain.snapshots`: how much it saw, and
how much of that the grounding phase kept.

:func:`token_probe` asks the image tokens themselves, without the language model: a linear
probe per event kind, fitted on the frozen tokens of training epochs, says from a column's
tokens whether an event of that kind lies in its stretch of the epoch. Its AUC *within* held-out
epochs (which column of an epoch holds the event) measures how much of *where* the vision
tower hands on; where the probe finds it and the answers do not, the language side is what
writes the wrong times.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sleepvlm.data.records import EPOCH_S, EVENT_KINDS
from sleepvlm.explain.annotations import KIND_WORDS, EpochAnnotation
from sleepvlm.explain.citations import epoch_inputs
from sleepvlm.explain.mini import (
    PERCEPTION_SNAPSHOT,
    SEGMENT_S,
    SETTINGS_FILE,
    MiniConfig,
    MiniModel,
    column_spans,
    presence_targets,
    segment_event_words,
)
from sleepvlm.explain.snapshots import held_out_inputs
from sleepvlm.explain.train import training_sample

PERCEPTION_METRICS: tuple[str, ...] = ("precision", "recall", "same_every_segment")


def described_segments(text: str) -> list[set[str]]:
    """The event words (``kind@ROLE``) a perception answer names in each segment it opens with
    ``t<seconds>``; segments it does not describe are empty."""
    segments: list[set[str]] = [set() for _ in range(int(EPOCH_S // SEGMENT_S))]
    current = None
    for word in text.split():
        if word[:1] == "t" and word[1:].isdigit():
            index = int(word[1:]) // SEGMENT_S
            current = segments[index] if index < len(segments) else None
        elif "@" in word and current is not None:
            current.add(word)
    return segments


def perception_scores(texts: Sequence[str], annotations: Sequence[EpochAnnotation]) -> dict:
    """Precision and recall of the events the perception answers name per segment against the
    true events of the same segments (every event of the epoch: evidence and others), and the
    share of answers naming the same events in every segment while the truth differs between
    segments. NaN where undefined (nothing named, nothing there, no such epoch)."""
    named = there = both = 0
    uniform = differs = 0
    for text, annotation in zip(texts, annotations, strict=True):
        truth = [set(words) for words in segment_event_words(annotation.all_events)]
        said = described_segments(text)
        named += sum(len(s) for s in said)
        there += sum(len(t) for t in truth)
        both += sum(len(s & t) for s, t in zip(said, truth, strict=True))
        if any(t != truth[0] for t in truth):
            differs += 1
            uniform += all(s == said[0] for s in said)
    return {
        "precision": both / named if named else np.nan,
        "recall": both / there if there else np.nan,
        "same_every_segment": uniform / differs if differs else np.nan,
    }


def perception_table(
    folder: str | Path,
    prepared: Mapping[str, object],
    max_nights: int = 1,
    max_epochs: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (model stage, dataset): :data:`PERCEPTION_METRICS` of the perception answers
    of the model in ``folder`` after its perception phase (when it kept that snapshot) and when
    finished, on :func:`~sleepvlm.explain.snapshots.held_out_epochs` of each prepared dataset."""
    settings = json.loads((Path(folder) / SETTINGS_FILE).read_text())
    options = MiniConfig(**settings["config"]).image_options()
    stages = {"after perception": PERCEPTION_SNAPSHOT, "finished": None}
    if PERCEPTION_SNAPSHOT not in settings.get("snapshot_steps", []):
        stages.pop("after perception")
    inputs = held_out_inputs(prepared, options, max_nights, max_epochs, seed)
    out = []
    for stage, snapshot in stages.items():
        model = MiniModel.load(folder, snapshot=snapshot)
        for name, (pngs, found) in inputs.items():
            texts = [a.text for a in model.answer_all(pngs, phase="perception")]
            scores = perception_scores(texts, found)
            out.append({"model": stage, "dataset": name, "epochs": len(pngs), **scores})
    table = pd.DataFrame(out, columns=["model", "dataset", "epochs", *PERCEPTION_METRICS])
    return table.astype(dict.fromkeys(PERCEPTION_METRICS, float))


def perception_text(table: pd.DataFrame) -> str:
    """What :func:`perception_table`'s ``table`` says, per model stage and dataset, and what
    follows from it: whether the model names most of the events that are there, and how much
    of that the grounding phase kept."""
    if table.empty:
        return "No held-out epoch to ask: no validation night in these datasets."
    parts = []
    for stage, rows in table.groupby("model", sort=False):
        values = "; ".join(
            f"{row.dataset.upper()} precision {_share(row.precision)}, recall "
            f"{_share(row.recall)}, one description for every segment "
            f"{_percent(row.same_every_segment)}"
            for row in rows.itertuples()
        )
        parts.append(f"{stage}: {values}")
    recall = table.groupby("model", sort=False)["recall"].mean()
    first = recall.iloc[0]
    verdict = (
        "It names fewer than half of the events that are there: even asked only to describe "
        "the epoch, it does not write where the events lie."
        if first < 0.5
        else "It names most of the events that are there, in their segments."
    )
    if "after perception" in recall and "finished" in recall:
        kept = recall["finished"] / first if first else np.nan
        verdict += f" The finished model keeps {_percent(kept)} of that recall" + (
            ": the grounding phase overwrote what the perception phase taught."
            if kept < 0.5
            else "."
        )
    return "Events named per 5-s segment, " + "; ".join(parts) + ". " + verdict


def _share(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.2f}"


def _percent(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.0%}"


#: What the probe of each event kind reports (:func:`token_probe`).
PROBE_COLUMNS: tuple[str, ...] = ("kind", "positives", "auc", "epochs", "within_epoch_auc")
#: Fewest positive columns of a kind, in training and held out, for its probe to be fitted.
MIN_POSITIVES = 10


def column_features(tokens: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """(images × columns, rows × width): each chosen column's tokens side by side, image by
    image (from :meth:`MiniModel.image_tokens`)."""
    chosen = tokens[:, :, list(columns), :].transpose(0, 2, 1, 3)
    return chosen.reshape(len(tokens) * len(columns), -1)


def token_probe(
    model: MiniModel,
    train_pngs: Sequence[bytes],
    train_annotations: Sequence[EpochAnnotation],
    held_out: Mapping[str, tuple[Sequence[bytes], Sequence[EpochAnnotation]]],
) -> dict[str, pd.DataFrame]:
    """Per held-out set (name -> images and annotations), one row per event kind with enough
    positive columns: a logistic regression fitted once on the image tokens of the scored
    epoch's columns of ``train_pngs`` against :func:`~sleepvlm.explain.mini.presence_targets`,
    scored on the set: AUC over all columns, and the mean AUC within the epochs where the kind
    lies in some columns but not all (``epochs`` of them), which only *where* can raise."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    config = MiniConfig(**model.settings["config"])
    columns = [k for k, span in enumerate(column_spans(config)) if span is not None]

    def targets(found):
        return np.stack([presence_targets(a.all_events, config)[columns] for a in found])

    fit_x = column_features(model.image_tokens(train_pngs), columns)
    fit_y = targets(train_annotations)
    tests = {
        name: (column_features(model.image_tokens(pngs), columns), targets(found))
        for name, (pngs, found) in held_out.items()
    }
    rows = {name: [] for name in held_out}
    for k, kind in enumerate(EVENT_KINDS):
        y = fit_y[:, :, k].ravel()
        if y.sum() < MIN_POSITIVES:
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(fit_x, y)
        for name, (test_x, test_y) in tests.items():
            truth = test_y[:, :, k]
            if truth.sum() >= MIN_POSITIVES:
                scores = probe.predict_proba(test_x)[:, 1].reshape(truth.shape)
                rows[name].append({"kind": kind, **_probe_scores(truth, scores)})
    return {name: pd.DataFrame(r, columns=list(PROBE_COLUMNS)) for name, r in rows.items()}


def _probe_scores(truth: np.ndarray, scores: np.ndarray) -> dict:
    """AUC over all (epoch, column) cells, and within the epochs whose columns differ."""
    from sklearn.metrics import roc_auc_score

    mixed = (truth.sum(1) > 0) & (truth.sum(1) < truth.shape[1])
    within = [roc_auc_score(t, p) for t, p in zip(truth[mixed], scores[mixed], strict=True)]
    return {
        "positives": int(truth.sum()),
        "auc": roc_auc_score(truth.ravel(), scores.ravel()),
        "epochs": int(mixed.sum()),
        "within_epoch_auc": float(np.mean(within)) if within else np.nan,
    }


def probe_tables(
    model: MiniModel,
    prepared,
    held_out: Mapping[str, object],
    per_class: int,
    max_nights: int | None,
    max_epochs: int = 200,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """:func:`token_probe` fitted on ``per_class`` epochs per stage of the training split of
    ``prepared`` (the model's own center, from ``max_nights`` of its training nights) and
    scored on the :func:`~sleepvlm.explain.snapshots.held_out_epochs` of each dataset of
    ``held_out`` (name -> prepared dataset)."""
    options = model.image_options()
    fit = epoch_inputs(prepared, training_sample(prepared, per_class, seed, max_nights), options)
    return token_probe(model, *fit, held_out_inputs(held_out, options, 1, max_epochs, seed))


def probe_text(probes: Mapping[str, pd.DataFrame]) -> str:
    """Per dataset (name -> :func:`token_probe` table): the median over event kinds of the
    within-epoch AUC, and the spindle's and K complex's (N2's decisive events)."""
    parts = []
    for name, table in probes.items():
        if table.empty:
            continue
        within = table.set_index("kind")["within_epoch_auc"]
        named = ", ".join(
            f"{KIND_WORDS[kind]} {within[kind]:.2f}"
            for kind in ("spindle", "kcomplex")
            if kind in within and not np.isnan(within[kind])
        )
        parts.append(f"{name.upper()} {within.median():.2f}" + (f" ({named})" if named else ""))
    if not parts:
        return "No event kind had enough positive columns for a probe."
    return (
        "Which column of a held-out epoch holds an event, read by a linear probe from the image "
        "tokens (AUC within epochs, median over event kinds; 0.5 is chance): "
        + "; ".join(parts)
        + "."
    )
