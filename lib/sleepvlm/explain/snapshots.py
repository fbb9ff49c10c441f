"""SleepVLM-mini's training curve (issue 19): κ and the rationales' faithfulness against
grounding steps, so that whether longer training is what the mini needs is measured, not guessed.

:func:`sleepvlm.explain.train_mini` with ``snapshots`` keeps the weights at evenly spaced steps
of the grounding phase; :func:`training_curve` answers the same held-out epochs (a seeded
sample of each center's validation nights, subjects the model never saw) with each snapshot and
with the finished model. The snapshots are points along one run, not shorter runs of their own:
an early snapshot's learning rate is still high on its cosine schedule, where a run of that
length would have decayed it. What the curve shows is how far the run had come at each point,
and how much its last stretch still changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from sleepvlm.explain.citations import epoch_inputs
from sleepvlm.explain.faithfulness import (
    FAITHFULNESS_GOALS,
    faithfulness_metrics,
    metric_text,
    score_answers,
)
from sleepvlm.explain.mini import (
    PERCEPTION_SNAPSHOT,
    SETTINGS_FILE,
    MiniConfig,
    MiniModel,
    ScoredAnswer,
)
from sleepvlm.metrics import classification_metrics, point_value, predictions
from sleepvlm.params import WITHIN
from sleepvlm.splits import night_keys, nights_of

#: What each point of the curve measures: Cohen's κ of the stages, then the faithfulness goals.
CURVE_METRICS: tuple[str, ...] = ("kappa", *FAITHFULNESS_GOALS)


def held_out_epochs(prepared, max_nights: int, max_epochs: int, seed: int = 0) -> pd.DataFrame:
    """A seeded sample of at most ``max_epochs`` epochs (in night order) of ``max_nights``
    validation nights of a prepared dataset (the nights :func:`nights_of` chooses with
    ``seed``); empty when it has no validation nights."""
    pool = prepared.manifest[prepared.manifest["split"] == "val"]
    rows = pool[night_keys(pool).isin(nights_of(pool, max_nights, seed))]
    if len(rows) > max_epochs:
        rows = rows.sample(max_epochs, random_state=seed).sort_index()
    return rows


def grounding_snapshots(settings: dict) -> list[int]:
    """The grounding steps after which a saved model (its :data:`SETTINGS_FILE` ``settings``)
    kept its weights (not the perception phase's snapshot, which writes no stage)."""
    return [s for s in settings.get("snapshot_steps", []) if s != PERCEPTION_SNAPSHOT]


def held_out_inputs(
    prepared: Mapping[str, object], options, max_nights: int, max_epochs: int, seed: int = 0
) -> dict[str, tuple[list[bytes], list]]:
    """Per prepared dataset (name -> dataset) with validation nights, the images (drawn at
    ``options``) and annotations of its :func:`held_out_epochs`."""
    inputs = {}
    for name, data in prepared.items():
        rows = held_out_epochs(data, max_nights, max_epochs, seed)
        if len(rows):
            inputs[name] = epoch_inputs(data, rows, options)
    return inputs


def curve_steps(settings: dict) -> dict[int, int | None]:
    """Each point of a saved model's curve: grounding step -> the snapshot to load, None for
    the finished model (which trained fewer steps than asked when its time was capped)."""
    finished = len(settings["log"]["loss"]["grounding"])
    return {**{step: step for step in grounding_snapshots(settings)}, finished: None}


def score_point(texts: list[str], annotations, tolerance_s: float) -> dict:
    """κ of the stages the answers give, read as every run's answers are (an answer without
    one counts as wrong), and the faithfulness goals' metrics of their evidence."""
    scored = score_answers(texts, annotations, tolerance_s)
    metrics = faithfulness_metrics(scored)
    stages = classification_metrics(scored["stage"].tolist(), predictions(texts))
    return {"kappa": stages["kappa"], **{m: point_value(metrics[m]) for m in FAITHFULNESS_GOALS}}


def decoded_answers(
    model: MiniModel,
    inputs: Mapping[str, tuple[list[bytes], list]],
    decodings: Mapping[object, Mapping],
) -> dict[object, dict[str, list[ScoredAnswer]]]:
    """``model``'s answers to each dataset's held-out ``inputs`` (name -> (images,
    annotations), :func:`held_out_inputs`), decoded each way of ``decodings`` (a name ->
    :meth:`MiniModel.answer_all`'s keyword arguments; none for greedy decoding): name ->
    dataset -> answers."""
    return {
        name: {dataset: model.answer_all(pngs, **how) for dataset, (pngs, _) in inputs.items()}
        for name, how in decodings.items()
    }


def scored_decodings(
    answers: Mapping[object, Mapping[str, Sequence[ScoredAnswer]]],
    inputs: Mapping[str, tuple[list[bytes], list]],
    column: str,
    tolerance_s: float = 1.0,
) -> pd.DataFrame:
    """One row per (decoding, dataset) of :func:`decoded_answers`' ``answers`` to ``inputs``:
    :data:`CURVE_METRICS` (:func:`score_point`), the decoding's name in ``column``."""
    rows = []
    for name, by_dataset in answers.items():
        for dataset, answered in by_dataset.items():
            point = score_point([a.text for a in answered], inputs[dataset][1], tolerance_s)
            rows.append({column: name, "dataset": dataset, "epochs": len(answered), **point})
    table = pd.DataFrame(rows, columns=[column, "dataset", "epochs", *CURVE_METRICS])
    return table.astype(dict.fromkeys(CURVE_METRICS, float))


def decoding_table(
    model: MiniModel,
    inputs: Mapping[str, tuple[list[bytes], list]],
    decodings: Mapping[object, Mapping],
    column: str,
    tolerance_s: float = 1.0,
) -> pd.DataFrame:
    """:func:`scored_decodings` of ``model``'s :func:`decoded_answers` to ``inputs``, decoded
    each way of ``decodings``."""
    answers = decoded_answers(model, inputs, decodings)
    return scored_decodings(answers, inputs, column, tolerance_s)


def training_curve(
    folder: str | Path,
    prepared: Mapping[str, object],
    max_nights: int = 1,
    max_epochs: int = 200,
    seed: int = 0,
    tolerance_s: float = 1.0,
) -> pd.DataFrame:
    """One row per (grounding step, dataset): the :data:`CURVE_METRICS` of the answers of the
    model in ``folder`` at each snapshot it kept and finished, on the same
    :func:`held_out_epochs` of each prepared dataset (name -> dataset)."""
    settings = json.loads((Path(folder) / SETTINGS_FILE).read_text())
    options = MiniConfig(**settings["config"]).image_options()
    inputs = held_out_inputs(prepared, options, max_nights, max_epochs, seed)
    out = []
    for step, snapshot in curve_steps(settings).items():
        model = MiniModel.load(folder, snapshot=snapshot)
        for name, (pngs, found) in inputs.items():
            texts = [answer.text for answer in model.answer_all(pngs)]
            row = score_point(texts, found, tolerance_s)
            out.append({"step": step, "dataset": name, "epochs": len(pngs), **row})
    curve = pd.DataFrame(out, columns=["step", "dataset", "epochs", *CURVE_METRICS])
    return curve.astype(dict.fromkeys(CURVE_METRICS, float))  # undefined: NaN, not None


def curve_text(curve: pd.DataFrame) -> str:
    """Where the run stood at its first snapshot, its last snapshot and its end, per setting:
    each metric's mean over the setting's centers at those steps (whether it had already
    flattened, and what the last stretch changed). ``curve`` holds :func:`training_curve`'s
    rows with a ``setting`` column (within or external)."""
    steps = sorted(curve["step"].unique())
    if len(steps) < 2:
        return "The run kept no snapshot, so there is no curve to read."
    shown = sorted({steps[0], steps[-2], steps[-1]})
    means = curve.groupby(["setting", "step"])[list(CURVE_METRICS)].mean()
    parts = []
    settings = means.index.get_level_values("setting").unique()
    for setting in sorted(settings, key=lambda s: s != WITHIN):  # within its center first
        values = ", ".join(
            f"{_name(m)} " + " → ".join(metric_text(m, means.loc[(setting, k), m]) for k in shown)
            for m in CURVE_METRICS
        )
        parts.append(f"{setting}: {values}")
    at = " → ".join(str(k) for k in shown)
    return f"At grounding steps {at} (the finished model): " + "; ".join(parts) + "."


def _name(metric: str) -> str:
    return "κ" if metric == "kappa" else metric.replace("_", " ")
