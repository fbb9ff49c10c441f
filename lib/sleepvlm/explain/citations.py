"""A lever at answer time (issue 19): SleepVLM-mini cites only the events it is sure of.

The mini writes every cited time token by token; where it does not know when an event happened,
its probability is spread over several times and the greedy answer takes one of them, often the
wrong one. :func:`cite_confident` keeps an evidence item only when its least sure token had at
least ``min_confidence``: the answer is still the model's own words, with the items it guessed
left out (nothing is checked against the detectors or added). Precision rises and fewer answers
cite absent events, at the cost of comprehensiveness, a separate goal: :func:`confidence_curve`
measures the trade-off, and :func:`choose_min_confidence` picks the threshold on validation
nights, never on the test nights it is reported on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sleepvlm.explain.annotations import (
    EpochAnnotation,
    annotate_store,
    evidence_items,
    select,
)
from sleepvlm.explain.faithfulness import (
    FAITHFULNESS_GOALS,
    answers_label,
    faithfulness_metrics,
    metric_text,
    score_answers,
)
from sleepvlm.explain.mini import MiniModel, ScoredAnswer
from sleepvlm.metrics import point_value
from sleepvlm.prepare import store_rows
from sleepvlm.render import render_dataset
from sleepvlm.splits import night_keys, nights_of

#: Thresholds the validation curve is measured at (probability of the least sure token).
THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.0, 1.0, 0.05), 2))
#: The goals a threshold is chosen to meet: the two that leaving out unsure items can reach
#: (comprehensiveness can only fall, coherence does not depend on it).
CHOSEN_FOR: tuple[str, ...] = ("precision", "ungrounded_share")


def cite_confident(answer: ScoredAnswer, min_confidence: float) -> str:
    """``answer`` without the evidence items whose least sure token's probability is below
    ``min_confidence``, and without its evidence section when none is left."""
    section, spans = evidence_items(answer.text)
    text = answer.text
    kept = [text[a:b].strip() for a, b in spans if answer.least_confidence(a, b) >= min_confidence]
    if len(kept) == len(spans):
        return text
    head = text[:section].rstrip()
    return f"{head} Evidence: {'; '.join(kept)}." if kept else head


def epoch_inputs(
    prepared, rows: pd.DataFrame, options
) -> tuple[list[bytes], list[EpochAnnotation]]:
    """The images (drawn at ``options``) and the annotations of the epochs ``rows`` of a
    prepared dataset's manifest, in the order of ``rows``."""
    drawn = render_dataset(prepared.store, store_rows(prepared, rows), options=options)
    pngs = [Path(path).read_bytes() for path in drawn["image"]]
    found = annotate_store(prepared, set(night_keys(rows)))
    return pngs, select(found, rows.assign(dataset=prepared.dataset))


def night_inputs(prepared, nights: Sequence, options) -> tuple[list[bytes], list[EpochAnnotation]]:
    """:func:`epoch_inputs` of every epoch of ``nights`` (keys of
    :func:`sleepvlm.splits.night_keys`) of a prepared dataset."""
    manifest = prepared.manifest
    return epoch_inputs(prepared, manifest[night_keys(manifest).isin(nights)], options)


def night_answers(
    model: MiniModel, prepared, nights: Sequence
) -> tuple[list[ScoredAnswer], list[EpochAnnotation]]:
    """The model's scored answers to every epoch of ``nights`` of a prepared dataset, drawn at
    the model's image options, and the annotations of the same epochs in the same order."""
    pngs, chosen = night_inputs(prepared, nights, model.image_options())
    return model.answer_all(pngs, scored=True), chosen


#: How a cut reads the answers to a set of nights: (model, prepared, nights) -> the answers,
#: each item's characters carrying how sure it is, and the nights' annotations in their order
#: (:func:`night_answers`: the model's own token probabilities).
NightAnswers = Callable[
    [MiniModel, object, Sequence], tuple[Sequence[ScoredAnswer], Sequence[EpochAnnotation]]
]


def remembered(answers: NightAnswers) -> NightAnswers:
    """``answers`` that answers each model's nights of a dataset once: settings read from the
    same answers (as written, then cut) share them rather than decode every night again."""
    kept: dict = {}

    def recall(model: MiniModel, prepared, nights: Sequence):
        key = (id(model), prepared.dataset, tuple(tuple(night) for night in nights))
        if key not in kept:
            kept[key] = answers(model, prepared, nights)
        return kept[key]

    return recall


def score_confident(
    answers: Sequence[ScoredAnswer],
    annotations: Sequence[EpochAnnotation],
    min_confidence: float,
    tolerance_s: float = 1.0,
) -> pd.DataFrame:
    """:func:`~sleepvlm.explain.faithfulness.score_answers` of the answers cut at
    ``min_confidence``, with the cut ``answer`` each row was scored on."""
    texts = [cite_confident(a, min_confidence) for a in answers]
    return score_answers(texts, annotations, tolerance_s).assign(answer=texts)


def score_nights(
    model: MiniModel,
    prepared,
    nights: Sequence,
    min_confidence: float,
    tolerance_s: float = 1.0,
    answers: NightAnswers = night_answers,
) -> pd.DataFrame:
    """:func:`score_confident` of ``model``'s answers to every epoch of ``nights`` of a prepared
    dataset (scored by ``answers``), cut at ``min_confidence``."""
    return score_confident(*answers(model, prepared, nights), min_confidence, tolerance_s)


def validation_threshold(
    model: MiniModel,
    prepared,
    max_nights: int,
    seed: int = 0,
    tolerance_s: float = 1.0,
    answers: NightAnswers = night_answers,
) -> tuple[pd.DataFrame, float | None]:
    """The confidence curve of ``max_nights`` validation nights of the model's training center
    (``prepared``; chosen with ``seed``; scored by ``answers``) and the threshold
    :func:`choose_min_confidence` takes from it; an empty curve and None when the center has no
    validation nights."""
    pool = prepared.manifest[prepared.manifest["split"] == "val"]
    nights = nights_of(pool, max_nights, seed)
    if not nights:
        return pd.DataFrame(), None
    curve = confidence_curve(*answers(model, prepared, nights), tolerance_s=tolerance_s)
    return curve, choose_min_confidence(curve)


def confidence_curve(
    answers: Sequence[ScoredAnswer],
    annotations: Sequence[EpochAnnotation],
    thresholds: Sequence[float] = THRESHOLDS,
    tolerance_s: float = 1.0,
) -> pd.DataFrame:
    """One row per threshold: the faithfulness goals' metrics of the answers cut at it
    (:func:`cite_confident`), the share of answers still citing an event and the claims per
    answer."""
    rows = []
    for threshold in thresholds:
        scored = score_confident(answers, annotations, threshold, tolerance_s)
        metrics = faithfulness_metrics(scored)
        rows.append(
            {
                "min_confidence": float(threshold),
                **{m: point_value(metrics[m]) for m in FAITHFULNESS_GOALS},
                "answers_citing": float((scored["n_claims"] > 0).mean()),
                "claims_per_answer": metrics["n_claims"] / max(len(scored), 1),
            }
        )
    return pd.DataFrame(rows)


def choose_min_confidence(curve: pd.DataFrame, goals: Sequence[str] = CHOSEN_FOR) -> float | None:
    """The lowest threshold of ``curve`` (the validation nights') at which each of ``goals``
    (names in :data:`~sleepvlm.explain.faithfulness.FAITHFULNESS_GOALS`) is met: it keeps as
    many items as the goals allow. None when no threshold meets them."""
    met = pd.Series(True, index=curve.index)
    for goal in goals:
        bound, value = FAITHFULNESS_GOALS[goal]
        column = pd.to_numeric(curve[goal], errors="coerce")
        met &= column >= value if bound == ">=" else column < value
    chosen = curve.loc[met, "min_confidence"]
    return float(chosen.min()) if len(chosen) else None


def cuts_text(curves: Mapping[str, pd.DataFrame]) -> str:
    """How much evidence each cut keeps where it is chosen: per cut (name -> its
    :func:`confidence_curve` on the same validation nights), the comprehensiveness and precision
    at the threshold :func:`choose_min_confidence` takes, or that none meets the goals."""
    parts = []
    for name, curve in curves.items():
        chosen = choose_min_confidence(curve) if len(curve) else None
        if chosen is None:
            parts.append(f"{name}: no threshold meets the goals")
            continue
        row = curve[curve["min_confidence"] == chosen].iloc[0]
        kept = metric_text("comprehensiveness", row["comprehensiveness"])
        right = metric_text("precision", row["precision"])
        parts.append(f"{name} at {chosen:g}: comprehensiveness {kept}, precision {right}")
    return "On the validation nights, " + "; ".join(parts) + "."


def cut_sentence(goals: pd.DataFrame, dataset: str, answers: str) -> str:
    """What reading the answers as ``answers`` (an :func:`answers_label`: cut, or decoded
    another way) changed on ``dataset``'s test nights, from a
    :func:`~sleepvlm.explain.faithfulness.goal_table` holding its summaries as written and so:
    each goal metric before and after; or that there is no such summary to compare."""
    rows = goals[goals["dataset"] == dataset]
    written = rows["answers"] == answers_label(None)
    other = rows["answers"] == answers
    if not written.any() or not other.any():
        return (
            f"There is no summary of {dataset.upper()} with {answers} to set beside its answers "
            "as written."
        )
    before = rows[written].set_index("metric")["measured"]
    after = rows[other].set_index("metric")["measured"]
    changes = [
        f"{metric.replace('_', ' ')} from {metric_text(metric, before.get(metric))} to "
        f"{metric_text(metric, after.get(metric))}"
        for metric in FAITHFULNESS_GOALS
    ]
    return f"On {dataset.upper()}'s test nights, {', '.join(changes)}."
