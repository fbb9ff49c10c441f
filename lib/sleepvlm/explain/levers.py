"""Training levers of SleepVLM-mini (issue 19), each measured by a training run of its own.

A lever is a change to :class:`~sleepvlm.explain.mini.MiniConfig` that a VLM engineer would try
to make the mini's evidence as reliable as its stage (:data:`LEVERS`). :func:`run_lever` trains
the mini from scratch with it, on the training center and with every other setting as the book
trains it (:func:`~sleepvlm.explain.train.train_mini`'s defaults), then scores the finished
model on the held-out epochs of chapter 11's training curve
(:func:`~sleepvlm.explain.snapshots.held_out_inputs`) with the curve's metrics. The default
lever is the book's own model, so its record and the curve's last point must agree.

Each is a full training run (the table gives its minutes), so a dozen do not fit in the book's
time budget: ``sleepvlm lever NAME`` runs one and writes its records (one per center, summary
records of the results-record shape, :data:`LEVER`); the project's are committed in
:data:`RECORDS_DIR` and chapter 11 reads them, marking those measured on other code than its
own (:func:`~sleepvlm.explain.train.training_code_hash`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from sleepvlm.cache import content_hash
from sleepvlm.explain import citations, faithfulness, guidance, perception, snapshots
from sleepvlm.explain.mini import SETTINGS_FILE, MiniConfig, MiniError, MiniModel
from sleepvlm.explain.train import train_mini, training_code_hash
from sleepvlm.metrics import (
    MIN_PROBE_SUPPORT,
    PROBE_GUIDANCE,
    SUMMARY_FIELD,
    point_value,
    provenance,
    write_result,
)
from sleepvlm.params import PAPER_CENTERS, WITHIN, evaluation_setting
from sleepvlm.prepare import prepare_dataset
from sleepvlm.report import SLEEPVLM_MINI, load_summaries

#: :data:`~sleepvlm.metrics.SUMMARY_FIELD` of a lever's record.
LEVER = "lever"
#: Folder of the project's lever records: package data, so that the chapters that read them
#: rerun when one is added (the book's run key hashes the library).
RECORDS_DIR = Path(__file__).with_name("lever_records")
#: The lever every other is read against: the book's own settings.
DEFAULT = "default"
#: The same run with another seed: how far two runs of one setting differ.
SEED_NOISE = "seed-1"


@dataclass(frozen=True)
class Lever:
    """A named change to the mini's settings (``MiniConfig`` fields -> values) and why."""

    name: str
    why: str
    changes: dict = field(default_factory=dict)


LEVERS: tuple[Lever, ...] = (
    Lever(DEFAULT, "the book's settings"),
    Lever(SEED_NOISE, "the book's settings trained with another seed", {"seed": 1}),
    Lever(
        "presence-loss",
        "a head on each image token must say which events lie in its stretch of the epoch",
        {"presence_weight": 1.0},
    ),
    Lever(
        "column-embedding",
        "each image token carries a learned embedding of the stretch it shows",
        {"column_embedding": True},
    ),
    Lever("no-context", "the scored epoch alone, drawn three times as wide", {"context": 0}),
    Lever(
        "finer-patches",
        "vision patches half as wide and tall, merged four by four into as many image tokens",
        {
            "patch_size": MiniConfig().patch_size // 2,
            "spatial_merge": 2 * MiniConfig().spatial_merge,
        },
    ),
    Lever("deeper-vision", "four vision blocks instead of two", {"vision_depth": 4}),
    Lever(
        "evidence-weight",
        "the evidence tokens weigh three times as much in the grounding loss",
        {"evidence_weight": 3.0},
    ),
    Lever(
        "perception-mix",
        "a quarter of each grounding batch keeps describing the waveforms",
        {"perception_mix": 0.25},
    ),
    Lever(
        "unconditional-share",
        "an eighth of each grounding batch sees a blank image with its epoch's answer",
        {"unconditional_share": 0.125},
    ),
    Lever(
        "larger-language-model",
        "the language model twice as wide and deep",
        {"text_dim": 256, "text_layers": 4},
    ),
    Lever(
        "times-to-the-second",
        "evidence times cited to the second rather than to the 5-s segment",
        {"time_step_s": 1},
    ),
    Lever(
        "events-after-segments",
        "the perception targets list the events with their times after the segments",
        {"segment_events": False},
    ),
    Lever(
        "longer-grounding",
        "twice the grounding steps",
        {"grounding_steps": 2 * MiniConfig().grounding_steps},
    ),
)
#: The metrics of a lever's record: those of chapter 11's training curve.
LEVER_METRICS = snapshots.CURVE_METRICS
#: The record's metrics of its answers after chapter 11's answer-time levers
#: (:func:`checked_metrics`), each a faithfulness goal's with this prefix.
CHECKED = "checked_"
CHECKED_METRICS: tuple[str, ...] = tuple(CHECKED + m for m in faithfulness.FAITHFULNESS_GOALS)
#: The probe :func:`checked_metrics` fits, guides and checks with, written into each record's
#: ``checked_by``: the lever table reads checked metrics only of records checked by this probe,
#: since a better probe keeps more evidence of the same answers.
CHECKED_PROBE: dict = {
    "reads": perception.PATCH_STATES,
    "per_class": perception.PROBE_PER_CLASS,
    "neighbours": perception.PROBE_NEIGHBOURS,
    "c": perception.PROBE_C,
}


class LeverError(MiniError):
    """A lever cannot be run or read as asked."""


def lever_named(name: str) -> Lever:
    """The lever of :data:`LEVERS` called ``name``."""
    for lever in LEVERS:
        if lever.name == name:
            return lever
    known = ", ".join(lever.name for lever in LEVERS)
    raise LeverError(f"no lever {name!r}; the levers are: {known}")


def run_lever(
    lever: Lever,
    train_dataset: str = "dcsm",
    eval_datasets: Sequence[str] = PAPER_CENTERS,
    data_dirs: Mapping[str, str | Path] | None = None,
    cohort_size: str = "full",
    base: MiniConfig | None = None,
    per_class: int = 800,
    max_nights: int = 8,
    max_epochs: int = 200,
    seed: int = 0,
    tolerance_s: float = 1.0,
    progress: bool = False,
) -> list[dict]:
    """Train the mini with ``lever``'s changes to ``base`` (the default config) on
    ``train_dataset`` (a cached model when these settings were trained before) and score it on
    the training curve's held-out epochs of each of ``eval_datasets``: one record per center.
    ``data_dirs``: the folder of each dataset that is not the simulated cohort's."""
    config = replace(base or MiniConfig(), **lever.changes)
    data_dirs = data_dirs or {}
    folder = train_mini(
        train_dataset,
        data_dirs.get(train_dataset),
        cohort_size=cohort_size,
        config=config,
        per_class=per_class,
        max_nights=max_nights,
        make_default=False,
        progress=progress,
    )
    trained = json.loads((Path(folder) / SETTINGS_FILE).read_text())
    prepared = {
        name: prepare_dataset(name, data_dirs.get(name), cohort_size=cohort_size)
        for name in eval_datasets
    }
    inputs = snapshots.held_out_inputs(prepared, config.image_options(), 1, max_epochs, seed)
    model = MiniModel.load(folder)
    checked = checked_metrics(
        model, prepared[train_dataset], inputs, train_dataset, max_nights, seed, tolerance_s
    )
    records = []
    for name, (pngs, found) in inputs.items():
        texts = [answer.text for answer in checked.greedy[name]]
        records.append(
            {
                SUMMARY_FIELD: LEVER,
                LEVER: lever.name,
                "why": lever.why,
                "changes": lever.changes,
                "dataset": name,
                "modality": "image",
                "model": SLEEPVLM_MINI,
                "prompt": "expert",
                "data": "simulated" if prepared[name].simulated else "real",
                "train_dataset": train_dataset,
                "n": len(pngs),
                "manifest_hash": content_hash([list(a.key) for a in found]),
                "tolerance_s": tolerance_s,
                "config": asdict(config),
                "train_seconds": trained["seconds"],
                "grounding_steps_done": len(trained["log"]["loss"]["grounding"]),
                "parameters": trained["parameters"],
                "code": training_code_hash(),
                "metrics": {
                    **snapshots.score_point(texts, found, tolerance_s),
                    **checked.metrics[name],
                },
                "checked_by": checked.choices,
                **provenance(),
            }
        )
    return records


@dataclass(frozen=True)
class CheckedAnswers:
    """What :func:`checked_metrics` measured: the weight and least support it chose
    (:data:`~sleepvlm.metrics.PROBE_GUIDANCE`, :data:`~sleepvlm.metrics.MIN_PROBE_SUPPORT`),
    per center the faithfulness goals' metrics after both (:data:`CHECKED_METRICS`), and the
    greedy answers it decoded on the way (center -> answers), which a lever's record also
    scores."""

    choices: dict
    metrics: dict[str, dict]
    greedy: dict[str, list]


def checked_metrics(
    model: MiniModel,
    prepared_train,
    inputs: Mapping[str, tuple[list[bytes], list]],
    train_dataset: str,
    max_nights: int,
    seed: int = 0,
    tolerance_s: float = 1.0,
) -> CheckedAnswers:
    """How ``model``'s answers fare after chapter 11's answer-time levers, so that a training
    lever is also read where those levers take its answers: each cited time guided by a probe
    of the patch states, fitted on :data:`~sleepvlm.explain.perception.PROBE_PER_CLASS`
    training epochs per stage of ``prepared_train`` (from ``max_nights`` nights), then each
    item kept only where that probe supports it. The weight
    (:func:`~sleepvlm.explain.guidance.choose_guidance`) and the least support
    (:func:`~sleepvlm.explain.citations.choose_min_confidence`) are chosen on the training
    center's held-out ``inputs`` (name -> images and annotations), which the metrics are then
    measured on too: comparable between levers, not a test-night result. Where no weight
    raises precision the answers are greedy, and where no threshold meets the goals every item
    is kept (each choice then None). Each image is answered once per weight and read by the
    probe once."""
    patches = CHECKED_PROBE["reads"]
    probe = perception.fit_probes(
        model,
        prepared_train,
        CHECKED_PROBE["per_class"],
        max_nights,
        seed,
        {patches: False},
        CHECKED_PROBE["neighbours"],
        CHECKED_PROBE["c"],
    )[patches]
    probabilities = {name: probe.probabilities(model, pngs) for name, (pngs, _) in inputs.items()}
    known = {
        png: row
        for name, (pngs, _) in inputs.items()
        for png, row in zip(pngs, probabilities[name], strict=True)
    }
    weights = guidance.WEIGHTS if guidance.can_guide(model.tokenizer) else ()
    answers = snapshots.decoded_answers(
        model, inputs, guidance.guidance_decodings(probe, weights, known)
    )
    weight = None
    if weights:
        table = snapshots.scored_decodings(answers, inputs, "weight", tolerance_s)
        weight = guidance.choose_guidance(table, train_dataset)
    chosen = answers[weight or 0.0]
    curves = {
        name: citations.confidence_curve(
            list(map(probe.supported, [a.text for a in chosen[name]], probabilities[name])),
            found,
            tolerance_s=tolerance_s,
        )
        for name, (_, found) in inputs.items()
    }
    least = (
        citations.choose_min_confidence(curves[train_dataset]) if train_dataset in curves else None
    )
    rows = {
        name: curve.set_index("min_confidence").loc[least or 0.0] for name, curve in curves.items()
    }
    metrics = {
        name: {CHECKED + m: point_value(row[m]) for m in faithfulness.FAITHFULNESS_GOALS}
        for name, row in rows.items()
    }
    choices = {PROBE_GUIDANCE: weight, MIN_PROBE_SUPPORT: least, "probe": CHECKED_PROBE}
    return CheckedAnswers(choices, metrics, answers[0.0])


def write_lever(records: Sequence[Mapping], folder: str | Path | None = None) -> list[Path]:
    """Write a lever's records (:func:`run_lever`) into ``folder`` (default: the project's), one
    file per lever and center, replacing that lever's earlier record of the center."""
    folder = Path(folder) if folder else RECORDS_DIR
    return [write_result(dict(r), folder, name=f"{r[LEVER]}__{r['dataset']}.json") for r in records]


def lever_table(summaries: pd.DataFrame, train_dataset: str) -> pd.DataFrame:
    """One row per lever of :data:`LEVERS` (in order) and setting (within center, external):
    the mean of each metric over the setting's centers, the change of precision against the
    default lever's, minutes of training, and whether the records were measured on this code
    (``code``: "this", "other", or "not measured" without a record); the :data:`CHECKED_METRICS`
    are empty for records written without them. ``summaries`` are the
    lever records (:func:`sleepvlm.report.load_summaries` of :data:`LEVER`)."""
    columns = ["lever", "changes", "setting", *LEVER_METRICS, *CHECKED_METRICS]
    columns += ["train_minutes", "code"]
    if len(summaries):
        summaries = summaries[summaries["train_dataset"] == train_dataset]
        # records written before the answer-time levers were measured have no checked metrics,
        # and those checked by another probe than this build's are not read as its
        summaries = summaries.reindex(columns=[*summaries.columns.union(CHECKED_METRICS)])
        summaries.loc[~summaries.apply(_checked_by_this_probe, axis=1), CHECKED_METRICS] = None
    rows, current = [], training_code_hash()
    for lever in LEVERS:
        mine = summaries[summaries[LEVER] == lever.name] if len(summaries) else summaries
        changes = ", ".join(f"{k}={v}" for k, v in lever.changes.items()) or "—"
        if not len(mine):
            rows.append({"lever": lever.name, "changes": changes, "code": "not measured"})
            continue
        mine = mine.assign(setting=[evaluation_setting(train_dataset, d) for d in mine["dataset"]])
        for setting, group in mine.groupby("setting", sort=False):
            rows.append(
                {
                    "lever": lever.name,
                    "changes": changes,
                    "setting": setting,
                    **group[[*LEVER_METRICS, *CHECKED_METRICS]].astype(float).mean().to_dict(),
                    "train_minutes": group["train_seconds"].max() / 60,
                    "code": "this" if (group["code"] == current).all() else "other",
                }
            )
    table = pd.DataFrame(rows, columns=columns)
    default = table[table["lever"] == DEFAULT].set_index("setting")["precision"]
    table["Δ precision"] = table["precision"] - table["setting"].map(default)
    return table


def _checked_by_this_probe(record: pd.Series) -> bool:
    """Whether a lever record's checked metrics were measured with :data:`CHECKED_PROBE`."""
    checked_by = record.get("checked_by")
    return isinstance(checked_by, dict) and checked_by.get("probe") == CHECKED_PROBE


def load_levers(folder: str | Path | None = None) -> pd.DataFrame:
    """The lever records in ``folder`` (default: the project's), as
    :func:`sleepvlm.report.load_summaries` reads summaries."""
    return load_summaries(Path(folder) if folder else RECORDS_DIR, LEVER)


def lever_text(table: pd.DataFrame) -> str:
    """What :func:`lever_table` shows within the training center: how far the second seed
    moved precision and κ (the noise), which levers moved precision further, and the best
    precision against the goal."""
    measured = table[table["code"] != "not measured"]
    within = measured[measured["setting"] == WITHIN].set_index("lever")
    if DEFAULT not in within.index:
        return "The default lever has no record, so no lever can be read against it."
    stale = sorted(set(measured[measured["code"] == "other"]["lever"]))
    counted = f"{len(set(measured['lever']))} of {len(LEVERS)} levers have records"
    if stale:
        counted += f" ({', '.join(stale)} measured on other code than this build's)"
    goal = faithfulness.FAITHFULNESS_GOALS["precision"][1]
    shown = faithfulness.metric_text
    text = (
        f"{counted}. Within the training center the default lever's precision is "
        f"{shown('precision', within.loc[DEFAULT, 'precision'])} and κ "
        f"{shown('kappa', within.loc[DEFAULT, 'kappa'])}"
    )
    cited = within["precision"].dropna()
    if len(cited):
        best = cited.idxmax()
        text += f"; the highest precision is {best}'s, {cited[best]:.2f} (goal {goal:g})."
    else:
        text += "; no lever's answers cite an event there."
    if SEED_NOISE not in within.index:
        return text + " The second seed has no record, so the noise is not known."
    noise = abs(within.loc[SEED_NOISE, "Δ precision"])
    kappa_noise = abs(within.loc[SEED_NOISE, "kappa"] - within.loc[DEFAULT, "kappa"])
    beyond = within[(within["Δ precision"].abs() > noise) & ~within.index.isin([SEED_NOISE])]
    moved = (
        ", ".join(f"{name} {row['Δ precision']:+.2f}" for name, row in beyond.iterrows()) or "none"
    )
    return text + (
        f" A second seed of the default settings moves precision by "
        f"{shown('precision', noise)} and κ by {shown('kappa', kappa_noise)}; levers that move "
        f"precision further: {moved}."
    )


def checked_text(table: pd.DataFrame) -> str:
    """What :func:`lever_table`'s checked columns show within the training center: for each
    lever whose record holds them, precision, comprehensiveness and the share of answers citing
    an absent event after the answer-time levers (:func:`checked_metrics`)."""
    within = table[table["setting"] == WITHIN].set_index("lever")
    measured = within[within[CHECKED + "ungrounded_share"].notna()]
    if measured.empty:
        return "No lever record holds its answers after the answer-time levers."
    shown = faithfulness.metric_text
    goals = ("precision", "comprehensiveness", "ungrounded_share")
    parts = [
        f"{name} " + " / ".join(shown(m, row[CHECKED + m]) for m in goals)
        for name, row in measured.iterrows()
    ]
    unmeasured = len(within) - len(measured)
    noise = ""
    if {DEFAULT, SEED_NOISE} <= set(measured.index):
        columns = [CHECKED + m for m in goals]
        moved = measured.loc[SEED_NOISE, columns] - measured.loc[DEFAULT, columns]
        noise = (
            " A second seed of the default moves them by "
            + " / ".join(shown(m, abs(moved[CHECKED + m])) for m in goals)
            + "."
        )
    return (
        "After the answer-time levers (probe-guided times, then the probe's check), within the "
        "training center, precision / comprehensiveness / answers citing an absent event: "
        + "; ".join(parts)
        + "."
        + noise
        + (
            f" {unmeasured} other lever {'record was' if unmeasured == 1 else 'records were'} "
            "not checked with this build's probe."
            if unmeasured
            else ""
        )
    )


#: The levers that give the default model more of the same, steps or size: the issue's curve
#: against steps and size beside the training curve's points along one run.
SCALE: tuple[str, ...] = ("longer-grounding", "larger-language-model")
#: What :func:`scale_text` reads of them, and how it names each.
SCALE_METRICS: dict[str, str] = {
    "kappa": "κ",
    "precision": "precision",
    "comprehensiveness": "comprehensiveness",
    CHECKED + "comprehensiveness": "comprehensiveness after the answer-time levers",
}


def scale_text(table: pd.DataFrame) -> str:
    """What more steps or size (the :data:`SCALE` levers) changed within the training center
    against the default lever: each of :data:`SCALE_METRICS` that both records hold, and which
    of those changes are larger than the second seed's (among the metrics its record holds
    too)."""
    within = table[table["setting"] == WITHIN].set_index("lever")
    if DEFAULT not in within.index:
        return "The default lever has no record, so more steps or size cannot be read against it."
    metrics = list(SCALE_METRICS)
    default = within.loc[DEFAULT, metrics].astype(float)
    noise = None
    if SEED_NOISE in within.index:
        noise = (within.loc[SEED_NOISE, metrics].astype(float) - default).abs()
    parts = []
    for name in SCALE:
        why = lever_named(name).why
        if name not in within.index:
            parts.append(f"{why} ({name}) has no record")
            continue
        moved = (within.loc[name, metrics].astype(float) - default).dropna()
        changes = ", ".join(f"{SCALE_METRICS[m]} {v:+.2f}" for m, v in moved.items())
        part = f"{why} ({name}): {changes}"
        judged = [] if noise is None else [m for m in moved.index if pd.notna(noise[m])]
        if judged:
            beyond = [SCALE_METRICS[m] for m in judged if abs(moved[m]) > noise[m]]
            part += f" (larger than a second seed's change: {', '.join(beyond) or 'none'})"
        parts.append(part)
    return "Within the training center, against the default: " + "; ".join(parts) + "."


def agreement_text(table: pd.DataFrame, curve: pd.DataFrame) -> str:
    """Whether the default lever's record and the last point of this build's training curve
    (:func:`~sleepvlm.explain.snapshots.training_curve` with a ``setting`` column), which score
    the same model on the same epochs, agree within the training center."""
    default = table[(table["lever"] == DEFAULT) & (table["setting"] == WITHIN)]
    last = curve[(curve["step"] == curve["step"].max()) & (curve["setting"] == WITHIN)]
    if default.empty or last.empty:
        return "There is no default record or no curve within the training center to compare."
    record = default.iloc[0][list(LEVER_METRICS)].astype(float)
    built = last[list(LEVER_METRICS)].astype(float).mean()
    gap = (record - built).abs().max()
    verdict = (
        "they agree"
        if gap < 0.005
        else f"they differ by up to {gap:.2f}, so the records are "
        "not of the model this build trained"
    )
    shown = faithfulness.metric_text  # a dash, not "nan", where no answer cites an event
    return (
        f"The default record gives precision {shown('precision', record['precision'])} and κ "
        f"{shown('kappa', record['kappa'])} within the training center, this build's model "
        f"{shown('precision', built['precision'])} and {shown('kappa', built['kappa'])} on the "
        f"same epochs: {verdict}."
    )
