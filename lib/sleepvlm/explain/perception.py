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
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sleepvlm.explain.annotations import EpochAnnotation
from sleepvlm.explain.mini import (
    PERCEPTION_SNAPSHOT,
    SEGMENT_S,
    SETTINGS_FILE,
    MiniConfig,
    MiniModel,
    segment_event_words,
)
from sleepvlm.explain.snapshots import held_out_inputs

PERCEPTION_METRICS: tuple[str, ...] = ("precision", "recall", "same_every_segment")


def described_segments(text: str) -> list[set[str]]:
    """The event words (``kind@ROLE``) a perception answer names in each segment it opens with
    ``t<seconds>``; segments it does not describe are empty."""
    segments: list[set[str]] = [set() for _ in range(int(30 // SEGMENT_S))]
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
        "It names fewer than half of the events that are there: the wrong times start in what "
        "it sees, before an answer is written."
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
