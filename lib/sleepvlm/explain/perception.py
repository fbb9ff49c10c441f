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

:func:`fit_event_probe` asks the image tokens themselves, without the language model: a linear
probe per event kind, fitted on the frozen tokens of training epochs, says from a column's
tokens (beside its neighbours') whether an event of that kind lies in its stretch of the epoch.
Its AUC *within* held-out epochs (which column of an epoch holds the event, :func:`probe_scores`)
measures how much of *where* the vision tower hands on; where the probe finds it and the
answers do not, the language side is what writes the wrong times. The same probe can then check
the answers: an evidence item is kept only where the image tokens support it
(:meth:`EventProbe.supported`), a lever at answer time beside
:mod:`sleepvlm.explain.citations`' cut by the model's own token probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sleepvlm.data.records import EPOCH_S, EVENT_KINDS
from sleepvlm.explain.annotations import (
    KIND_WORDS,
    EpochAnnotation,
    evidence_items,
    parse_answer,
)
from sleepvlm.explain.citations import epoch_inputs, night_inputs
from sleepvlm.explain.mini import (
    EVIDENCE,
    PERCEPTION_SNAPSHOT,
    SEGMENT_S,
    SETTINGS_FILE,
    MiniConfig,
    MiniModel,
    ScoredAnswer,
    column_spans,
    presence_targets,
    segment_event_words,
)
from sleepvlm.explain.snapshots import held_out_inputs
from sleepvlm.explain.train import training_sample

if TYPE_CHECKING:  # guidance imports this module
    from sleepvlm.explain.guidance import ProbeGuidance

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


#: What the probe of each event kind reports (:func:`probe_scores`).
PROBE_COLUMNS: tuple[str, ...] = ("kind", "positives", "auc", "epochs", "within_epoch_auc")
#: Fewest positive columns of a kind, in training and held out, for its probe to be fitted.
MIN_POSITIVES = 10
#: Columns on each side that a probe reads beside the one it judges: an event's edges and what
#: surrounds it say where it lies. Measured on the book's model, patch states, 400 training
#: epochs per stage, C 0.1: median within-epoch AUC over event kinds 0.83 / 0.86 / 0.79 (DCSM /
#: SHHS / ISRUC held-out epochs) from the column alone, 0.86 / 0.89 / 0.83 with one on each side.
PROBE_NEIGHBOURS = 1
#: The probes' L2 penalty as scikit-learn's inverse strength C: three columns of patch states
#: are 2,304 features for a few thousand columns, which C 1 overfits (same measurement: 0.85 /
#: 0.87 / 0.80 at C 1, 0.86 / 0.89 / 0.84 at this C).
PROBE_C = 0.01


def column_features(tokens: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """(images × columns, rows × width): each chosen column's tokens side by side, image by
    image (from :meth:`MiniModel.image_tokens`)."""
    chosen = tokens[:, :, list(columns), :].transpose(0, 2, 1, 3)
    return chosen.reshape(len(tokens) * len(columns), -1)


def span_cover(
    times: Sequence[tuple[float, float]], spans: Sequence[tuple[float, float]]
) -> np.ndarray:
    """(times, columns): 1 where a time's span overlaps a column's stretch of the epoch."""
    return np.array([[float(a < stop and b > start) for a, b in spans] for start, stop in times])


@dataclass
class EventProbe:
    """Per event kind with enough positive columns in its fitting epochs, a logistic regression
    that says from one image-token column of the scored epoch (its tokens side by side, and
    those of ``neighbours`` columns on each side) whether an event of that kind lies in its
    stretch (:func:`fit_event_probe`). With ``merged`` False it reads the vision tower's patch
    states before their merge into tokens (:meth:`MiniModel.image_tokens`): columns
    ``spatial_merge`` times narrower in time."""

    config: MiniConfig
    probes: dict = field(default_factory=dict)
    merged: bool = True
    neighbours: int = PROBE_NEIGHBOURS

    @cached_property
    def grid_config(self) -> MiniConfig:
        """The model's settings as the probe's columns see them: a patch state is a token
        that merges one patch."""
        return self.config if self.merged else replace(self.config, spatial_merge=1)

    @cached_property
    def columns(self) -> list[int]:
        """The columns of the scored epoch, in order."""
        return [k for k, span in enumerate(column_spans(self.grid_config)) if span is not None]

    @cached_property
    def spans(self) -> list[tuple[float, float]]:
        """The stretch of the scored epoch (s) each of :attr:`columns` shows; worked out once,
        since every evidence item checked reads it."""
        return [column_spans(self.grid_config)[k] for k in self.columns]

    def features(self, model: MiniModel, pngs: Sequence[bytes]) -> np.ndarray:
        """:func:`column_features` of :attr:`columns` of ``pngs`` as ``model`` sees them, each
        beside those of its :attr:`neighbours` (the image's edge column repeated past it)."""
        tokens = model.image_tokens(pngs, merged=self.merged)
        last = tokens.shape[2] - 1
        shifted = [
            [min(max(column + shift, 0), last) for column in self.columns]
            for shift in range(-self.neighbours, self.neighbours + 1)
        ]
        return np.concatenate([column_features(tokens, columns) for columns in shifted], axis=1)

    def probabilities(self, model: MiniModel, pngs: Sequence[bytes]) -> np.ndarray:
        """(images, columns, event kinds): each probe's probability per column of the scored
        epoch; NaN for a kind without a probe."""
        features = self.features(model, pngs)
        out = np.full((len(pngs), len(self.columns), len(EVENT_KINDS)), np.nan)
        for kind, probe in self.probes.items():
            scores = probe.predict_proba(features)[:, 1]
            out[:, :, EVENT_KINDS.index(kind)] = scores.reshape(len(pngs), len(self.columns))
        return out

    def item_support(self, item: str, probabilities: np.ndarray) -> float:
        """How sure the probes are (0-1) that the event an evidence item cites lies where it
        says, from one image's :meth:`probabilities`: for each event it cites, the highest
        probability of its kind among the columns its times overlap; the least of these. An
        item that cites no event, or only kinds without a probe, has nothing to check: 1."""
        support = 1.0
        for claim in parse_answer(f"{EVIDENCE} {item}").claims:
            kind = EVENT_KINDS.index(claim.kind)
            end = max(claim.end_s, claim.start_s + 1e-3)  # a time point overlaps its column
            cited = np.flatnonzero(span_cover([(claim.start_s, end)], self.spans)[0])
            values = probabilities[cited, kind]
            if not np.isnan(probabilities[:, kind]).all():
                support = min(support, float(np.nanmax(values)) if len(values) else 0.0)
        return support

    def supported(self, text: str, probabilities: np.ndarray) -> ScoredAnswer:
        """``text`` with each evidence item's characters carrying its :meth:`item_support` (the
        rest 1), so that :func:`~sleepvlm.explain.citations.cite_confident` keeps the items the
        image tokens support, as it keeps those the model wrote with confidence."""
        confidence = np.ones(len(text))
        for start, stop in evidence_items(text)[1]:
            confidence[start:stop] = self.item_support(text[start:stop], probabilities)
        return ScoredAnswer(text, confidence)


def fit_event_probe(
    model: MiniModel,
    pngs: Sequence[bytes],
    annotations: Sequence[EpochAnnotation],
    merged: bool = True,
    neighbours: int = PROBE_NEIGHBOURS,
    c: float = PROBE_C,
) -> EventProbe:
    """An :class:`EventProbe` fitted on the frozen image tokens of ``pngs`` (``merged`` False:
    the patch states; each column read beside ``neighbours`` on each side) against
    :func:`~sleepvlm.explain.mini.presence_targets` of their ``annotations``, for each kind
    with at least :data:`MIN_POSITIVES` positive columns, L2-penalised at inverse strength
    ``c``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    config = MiniConfig(**model.settings["config"])
    probe = EventProbe(config, merged=merged, neighbours=neighbours)
    features = probe.features(model, pngs)
    truth = presence_columns(probe, annotations)
    for k, kind in enumerate(EVENT_KINDS):
        y = truth[:, :, k].ravel()
        if y.sum() >= MIN_POSITIVES:
            fitted = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
            probe.probes[kind] = fitted.fit(features, y)
    return probe


def presence_columns(probe: EventProbe, annotations: Sequence[EpochAnnotation]) -> np.ndarray:
    """(epochs, columns, kinds): :func:`~sleepvlm.explain.mini.presence_targets` of each
    annotation's events on the probe's columns."""
    return np.stack(
        [presence_targets(a.all_events, probe.grid_config)[probe.columns] for a in annotations]
    )


def probe_scores(
    model: MiniModel,
    probe: EventProbe,
    held_out: Mapping[str, tuple[Sequence[bytes], Sequence[EpochAnnotation]]],
) -> dict[str, pd.DataFrame]:
    """Per held-out set (name -> images and annotations), one row per probed event kind with
    enough positive columns in the set: AUC over all columns, and the mean AUC within the epochs
    where the kind lies in some columns but not all (``epochs`` of them), which only *where*
    can raise."""
    rows = {name: [] for name in held_out}
    for name, (pngs, found) in held_out.items():
        scores, truth = probe.probabilities(model, pngs), presence_columns(probe, found)
        for kind in probe.probes:
            k = EVENT_KINDS.index(kind)
            if truth[:, :, k].sum() >= MIN_POSITIVES:
                rows[name].append({"kind": kind, **_probe_scores(truth[:, :, k], scores[:, :, k])})
    return {name: pd.DataFrame(r, columns=list(PROBE_COLUMNS)) for name, r in rows.items()}


def probe_night_answers(
    model: MiniModel,
    prepared,
    nights: Sequence,
    probe: EventProbe,
    guide: ProbeGuidance | None = None,
) -> tuple[list[ScoredAnswer], list[EpochAnnotation]]:
    """The model's greedy answers to every epoch of ``nights`` of a prepared dataset (with
    ``guide``, their times guided by a probe of the vision tower), each evidence item carrying
    the support of ``probe`` (:meth:`EventProbe.supported`), and the annotations of the same
    epochs (as :func:`~sleepvlm.explain.citations.night_answers`)."""
    pngs, found = night_inputs(prepared, nights, model.image_options())
    return probe_answers(model, pngs, probe, guide), found


def probe_answers(
    model: MiniModel,
    pngs: Sequence[bytes],
    probe: EventProbe,
    guide: ProbeGuidance | None = None,
    stages: Sequence[str] | None = None,
) -> list[ScoredAnswer]:
    """The model's greedy answers to ``pngs`` (with ``guide``, their times guided by a probe of
    the vision tower; with ``stages``, each giving its image's stage), each evidence item
    carrying the support of ``probe`` (:meth:`EventProbe.supported`); the probe is asked once
    per image when it also guides."""
    probabilities = probe.probabilities(model, pngs)
    if guide is not None and guide.probe is probe:
        guide = guide.knowing(pngs, probabilities)
    texts = [answer.text for answer in model.answer_all(pngs, guide=guide, stages=stages)]
    return list(map(probe.supported, texts, probabilities))


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


#: What a probe reads: the image tokens the language model is handed, or the vision tower's
#: patch states before their merge (:class:`EventProbe`'s ``merged``).
IMAGE_TOKENS, PATCH_STATES = "image tokens", "patch states"
#: Chapter 11's probes (name -> ``merged``).
PROBE_READS: dict[str, bool] = {IMAGE_TOKENS: True, PATCH_STATES: False}
#: Training epochs per stage a probe is fitted on (chapter 11's, and each lever record's). With
#: neighbours at C 1, 400 rather than 150 raised the median within-epoch AUC from 0.79 / 0.87 /
#: 0.78 to 0.85 / 0.87 / 0.80 (as above). The probe of one column, C 1 and 150 epochs, that
#: chapter 11 used before gave 0.80 / 0.86 / 0.75.
PROBE_PER_CLASS = 400


def fit_probes(
    model: MiniModel,
    prepared,
    per_class: int,
    max_nights: int | None,
    seed: int = 0,
    reads: Mapping[str, bool] = PROBE_READS,
    neighbours: int = PROBE_NEIGHBOURS,
    c: float = PROBE_C,
) -> dict[str, EventProbe]:
    """Per entry of ``reads`` (name -> ``merged``), :func:`fit_event_probe` (with
    ``neighbours`` and ``c``) on the same ``per_class`` epochs per stage of the training split
    of ``prepared`` (the model's own center, from ``max_nights`` of its training nights), drawn
    once."""
    sample = training_sample(prepared, per_class, seed, max_nights)
    inputs = epoch_inputs(prepared, sample, model.image_options())
    return {
        name: fit_event_probe(model, *inputs, merged, neighbours, c)
        for name, merged in reads.items()
    }


def probe_tables(
    model: MiniModel,
    probes: Mapping[str, EventProbe],
    held_out: Mapping[str, object],
    max_epochs: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, pd.DataFrame]]:
    """Per probe of ``probes`` (name -> probe), :func:`probe_scores` on the same
    :func:`~sleepvlm.explain.snapshots.held_out_epochs` of each dataset of ``held_out`` (name
    -> prepared dataset), drawn once."""
    inputs = held_out_inputs(held_out, model.image_options(), 1, max_epochs, seed)
    return {name: probe_scores(model, probe, inputs) for name, probe in probes.items()}


def probe_text(probes: Mapping[str, pd.DataFrame], read_from: str = f"the {IMAGE_TOKENS}") -> str:
    """Per dataset (name -> :func:`probe_scores` table of a probe that reads ``read_from``): the
    median over event kinds of the within-epoch AUC, and the spindle's and K complex's (N2's
    decisive events)."""
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
        f"Which column of a held-out epoch holds an event, read by a linear probe from {read_from} "
        "(AUC within epochs, median over event kinds; 0.5 is chance): " + "; ".join(parts) + "."
    )
