"""Measuring why models fail: the four causes SleepVLM-Bench gives for the near-chance scores of
zero-shot VLMs, each made a number for any model's per-epoch table
(:data:`sleepvlm.experiment.EPOCH_COLUMNS`).

**Weak visual cues.** :func:`cue_strength` turns the detector features of each epoch into the
strength of the cue that defines a stage (spindle density for N2, slow-wave percentage for N3,
chin-tone contrast for REM, alpha percentage for W); :func:`accuracy_by_cue` gives accuracy with
Wilson intervals per quantile bin of a cue, optionally within one scored stage; a model that
reads the cue gets better as the cue gets stronger.

**Confusions.** :func:`confusion_pairs` lists every error true → predicted with its share of
the true class (the N1/N2 swaps flagged); :func:`prediction_distribution` shows how the answers
spread over the labels (invalid answers included): a model that always answers one class is
anchored, whatever the input.

**Ungrounded explanations.** :func:`ungrounded_explanations` counts, per answer, the events
it cites that are not in the epoch (scored by :mod:`sleepvlm.explain.faithfulness`).

**Prompt anchoring.** :func:`permute_label_order` and :func:`with_leading_example` make
variants of a loaded prompt (the template files stay as they are; each variant has its own
hash, so its answers are stored apart); :func:`anchoring_experiment` runs a model under several
label orders and with a leading example of each stage, and :func:`anchoring_index` says how far
the answers follow the first listed label and the example instead of the epoch.

**Remedies.** :func:`remedy_comparison` puts one metric side by side for conditions run on the
same epochs (e.g. fixed scale vs autoscale, with vs without context), with paired subject-
bootstrap intervals of each difference from a reference condition.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from sleepvlm.data.records import EPOCH_S, STAGES, DataError
from sleepvlm.experiment import RunSpec, run_experiment
from sleepvlm.metrics import (
    INVALID,
    PRED_LABELS,
    SUMMARY_METRICS,
    metrics_from_confusion,
    subject_confusions,
)
from sleepvlm.splits import night_keys, nights_of
from sleepvlm.text import Prompt, load_prompt

#: Columns that identify an epoch across a per-epoch table and a feature table.
EPOCH_KEY: tuple[str, ...] = ("subject", "night", "epoch")
#: Each cue of :func:`cue_strength`: the stage it defines and what it measures.
CUES: dict[str, tuple[str, str]] = {
    "spindle_density": ("N2", "sleep spindles per minute of the epoch"),
    "slow_wave_pct": ("N3", "% of the epoch covered by slow waves"),
    "emg_contrast": ("REM", "log2(night's median chin tone / epoch's chin tone)"),
    "alpha_pct": ("W", "% of the epoch with alpha rhythm"),
}
#: The ordered pairs (true, predicted) of the N1/N2 confusion the paper singles out.
N1_N2: frozenset[tuple[str, str]] = frozenset({("N1", "N2"), ("N2", "N1")})
#: How a label list is written in the prompt templates: the five stages, comma-separated.
_LABEL = "|".join(sorted(map(re.escape, STAGES), key=len, reverse=True))
_LABEL_LIST = re.compile(rf"(?<![\w.])(?:{_LABEL})(?:, (?:{_LABEL})){{{len(STAGES) - 1}}}(?![\w])")
EXAMPLE_LINE = "Example answer: {stage}"


class FailureAnalysisError(DataError):
    """Per-epoch tables, features or prompts that the failure analysis cannot use as given."""


# --- per-epoch tables --------------------------------------------------------------------------


_TABLES_HINT = (
    "pass the per-epoch table of sleepvlm.experiment.run_experiment or the feature table of "
    "sleepvlm.experiment.feature_table"
)


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str, hint=_TABLES_HINT) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FailureAnalysisError(
            f"{what} lacks columns {missing} (has {list(frame.columns)}); {hint}"
        )


def _keyed(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """``frame`` with the epoch key as typed columns (an ``epoch`` index becomes a column)."""
    if "epoch" not in frame.columns and frame.index.name == "epoch":
        frame = frame.reset_index()
    _require(frame, EPOCH_KEY, what)
    return frame.astype({"subject": str, "night": str, "epoch": np.int64})


def _scored(epochs: pd.DataFrame) -> pd.DataFrame:
    """A per-epoch table with its key typed and ``correct`` present."""
    epochs = _keyed(epochs, "per-epoch table")
    _require(epochs, ("stage", "prediction"), "per-epoch table")
    if epochs.empty:
        raise FailureAnalysisError("per-epoch table has no rows: nothing to analyse")
    return epochs.assign(correct=epochs["prediction"] == epochs["stage"])


def wilson_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n``."""
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


# --- weak visual cues --------------------------------------------------------------------------


def _first_column(features: pd.DataFrame, names: Sequence[str]) -> pd.Series:
    """The first of ``names`` present (feature tables and detector tables name some apart)."""
    for name in names:
        if name in features.columns:
            return features[name].astype(float)
    raise FailureAnalysisError(
        f"feature table lacks column {' or '.join(names)}; pass the feature table of "
        "sleepvlm.experiment.feature_table (or a detection's epochs with subject and night)"
    )


def cue_strength(features: pd.DataFrame) -> pd.DataFrame:
    """Per epoch, the strength of each stage-defining cue (:data:`CUES`), from the detector
    features of :func:`sleepvlm.experiment.feature_table` (or a detection's ``epochs`` table
    with subject and night columns). NaN where the channel was not usable."""
    features = _keyed(features, "feature table")
    spindles = _first_column(features, ("n_spindle",))
    slow = _first_column(features, ("sw_fraction", "sw_coverage"))
    tone = _first_column(features, ("emg_rel",))
    alpha = _first_column(features, ("alpha_fraction",))
    ids = [c for c in ("dataset", *EPOCH_KEY, "stage") if c in features.columns]
    cues = features[ids].copy()
    cues["spindle_density"] = spindles / (EPOCH_S / 60)
    cues["slow_wave_pct"] = 100 * slow
    # Atonia is tone far below the night's usual level: halvings below the median.
    with np.errstate(divide="ignore", invalid="ignore"):
        cues["emg_contrast"] = np.where(tone > 0, -np.log2(tone), np.nan)
    cues["alpha_pct"] = 100 * alpha
    return cues


def _join_key(left: pd.DataFrame, right: pd.DataFrame) -> list[str]:
    both = "dataset" in left.columns and "dataset" in right.columns
    return (["dataset"] if both else []) + list(EPOCH_KEY)


def _cue_bins(values: pd.Series, bins: int | Sequence[float]) -> pd.Series:
    """Bin codes: one bin per value when a cue takes at most ``bins`` values (counts such as
    spindles), else quantile bins (edges shared by ties merged), or the given edges."""
    if not isinstance(bins, int):
        return pd.cut(values, list(bins), include_lowest=True, labels=False)
    if bins < 1:
        raise FailureAnalysisError(f"bins must be a positive number of bins, got {bins}")
    distinct = np.sort(values.unique())
    if len(distinct) <= bins:
        return pd.Series(np.searchsorted(distinct, values), index=values.index)
    return pd.qcut(values, bins, labels=False, duplicates="drop")


def _with_cue(epochs: pd.DataFrame, cues: pd.DataFrame, cue: str, stage: str | None):
    """The scored epochs that have a value of ``cue`` (only those scored ``stage``)."""
    if cue not in cues.columns:
        raise FailureAnalysisError(
            f"no cue {cue!r} in the cue table; cues: {', '.join(CUES)} (from cue_strength)"
        )
    if stage is not None and stage not in STAGES:
        raise FailureAnalysisError(f"stage {stage!r} is not one of {STAGES}")
    epochs = _scored(epochs)
    cues = _keyed(cues, "cue table")
    key = _join_key(epochs, cues)
    joined = epochs[[*key, "stage", "correct"]].merge(cues[[*key, cue]], on=key, how="inner")
    if joined.empty:
        raise FailureAnalysisError(
            f"no epoch of the per-epoch table is in the cue table (joined on {key}): compute "
            "the cues from the features of the same nights"
        )
    if stage is not None:
        joined = joined[joined["stage"] == stage]
    return joined[joined[cue].notna()]


def _accuracy_per_bin(joined: pd.DataFrame, cue: str, bins, level: float) -> list[dict]:
    joined = joined.assign(bin=_cue_bins(joined[cue], bins))
    rows = []
    for number, part in joined.groupby("bin", sort=True):
        n, correct = len(part), int(part["correct"].sum())
        low, high = wilson_interval(correct, n, level)
        rows.append(
            {
                "bin": int(number) + 1,
                "cue_min": part[cue].min(),
                "cue_median": part[cue].median(),
                "cue_max": part[cue].max(),
                "n": n,
                "correct": correct,
                "accuracy": correct / n,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return rows


def accuracy_by_cue(
    epochs: pd.DataFrame,
    cues: pd.DataFrame,
    cue: str,
    bins: int | Sequence[float] = 4,
    stage: str | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """Accuracy per bin of ``cue`` (a column of :func:`cue_strength`), over the epochs of one
    model's per-epoch table that have a value of it, or only those scored ``stage``. ``bins``:
    a number of quantile bins or the bin edges. One row per bin, weakest cue first: the cue's
    range and median in the bin, ``n``, ``correct``, ``accuracy`` and its Wilson interval
    (epochs taken as independent; epochs of one night are not quite, so the interval is on the
    narrow side)."""
    joined = _with_cue(epochs, cues, cue, stage)
    if joined.empty:
        raise FailureAnalysisError(
            f"no epoch{' scored ' + stage if stage else ''} has a value of {cue!r}"
        )
    rows = _accuracy_per_bin(joined, cue, bins, level)
    return pd.DataFrame(rows).assign(cue=cue, stage=stage or "any")[["cue", "stage", *rows[0]]]


def weak_cue_table(
    epochs: pd.DataFrame, cues: pd.DataFrame, bins: int | Sequence[float] = 4
) -> pd.DataFrame:
    """:func:`accuracy_by_cue` of every cue of :data:`CUES` within the stage it defines
    (spindle density among N2 epochs, slow-wave % among N3 ...), stacked; a cue without a
    value in any epoch of its stage (e.g. no chin EMG) is left out."""
    parts = [
        accuracy_by_cue(epochs, cues, cue, bins=bins, stage=stage)
        for cue, (stage, _) in CUES.items()
        if not _with_cue(epochs, cues, cue, stage).empty
    ]
    if not parts:
        raise FailureAnalysisError("no epoch of the per-epoch table has a cue value")
    return pd.concat(parts, ignore_index=True)


def split_floors(
    runs: Mapping[str, pd.DataFrame], registry: Mapping | None = None
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """(runs of models that read their input, runs of the floors), by the registry's role of
    each run's model (runs are named "model · modality"; a model the registry lacks reads)."""
    from sleepvlm.models import load_registry

    registry = load_registry() if registry is None else registry

    def is_floor(name: str) -> bool:
        spec = registry.get(name.split(" · ")[0])
        return spec is not None and spec.role == "floor"

    readers = {name: frame for name, frame in runs.items() if not is_floor(name)}
    floors = {name: frame for name, frame in runs.items() if is_floor(name)}
    return readers, floors


def cue_trend_text(weak: pd.DataFrame, model: str, cue: str = "slow_wave_pct") -> str:
    """The chapter's sentence on one model's accuracy from the weakest to the strongest
    quartile of ``cue`` (a block of :func:`weak_cue_table` per model, keyed by name), with the
    reading the numbers allow."""
    stage = CUES[cue][0]
    rows = weak.loc[model]
    accuracy = 100 * rows[rows["cue"] == cue]["accuracy"].reset_index(drop=True)
    if accuracy.empty:
        return f"{model} has no {stage} epoch with a value of {cue}"
    weakest, strongest = accuracy.iloc[0], accuracy.iloc[-1]
    text = (
        f"For {model}, {stage} accuracy goes from {weakest:.0f} % in the weakest {cue} quartile "
        f"to {strongest:.0f} % in the strongest"
    )
    if strongest > weakest:
        return text + ": a model that reads the cue fails where the cue is faint"
    return text + ": it does not do better where the cue is strong"


def quartile_spread(weak: pd.DataFrame, models: Sequence[str]) -> float:
    """The largest change of accuracy (points) across the quartiles of any cue, over
    ``models`` (blocks of :func:`weak_cue_table`); NaN without any."""
    spreads = [
        100 * (part["accuracy"].max() - part["accuracy"].min())
        for model in models
        if model in weak.index.get_level_values(0)
        for _, part in weak.loc[model].groupby("cue")
    ]
    return max(spreads) if spreads else float("nan")


def commonest_confusions_text(runs: Mapping[str, pd.DataFrame]) -> str:
    """Which confusion is commonest for each model of ``runs`` (per-epoch tables), as a
    sentence: how many have N1↔N2 on top, and the top pair of the others."""
    if not runs:
        return "none was run"
    tops = {}
    for name, frame in runs.items():
        pairs = confusion_pairs(frame)
        if len(pairs):
            top = pairs.iloc[0]
            tops[name] = "N1↔N2" if top["n1_n2"] else f"{top['true']}→{top['predicted']}"
    if not tops:
        return "no model made an error"
    n1n2 = [name for name, pair in tops.items() if pair == "N1↔N2"]
    others = [f"{pair} for {name}" for name, pair in tops.items() if pair != "N1↔N2"]
    text = f"N1↔N2 is the commonest confusion of {len(n1n2)} of the {len(tops)} models"
    return text + ("; the commonest is " + ", ".join(others) if others else "")


# --- confusions --------------------------------------------------------------------------------


def confusion_pairs(epochs: pd.DataFrame) -> pd.DataFrame:
    """Every error as an ordered pair true → predicted (invalid answers included), with its
    ``count``, its share of the true class's epochs and of all errors, and ``n1_n2`` marking
    the N1/N2 swaps; most frequent first."""
    epochs = _scored(epochs)
    per_class = epochs["stage"].value_counts()
    wrong = epochs[~epochs["correct"]]
    counts = wrong.groupby(["stage", "prediction"]).size().rename("count").reset_index()
    counts = counts.rename(columns={"stage": "true", "prediction": "predicted"})
    counts["share_of_true"] = counts["count"] / counts["true"].map(per_class)
    counts["share_of_errors"] = counts["count"] / max(len(wrong), 1)
    pairs = zip(counts["true"], counts["predicted"], strict=True)
    counts["n1_n2"] = [pair in N1_N2 for pair in pairs]
    return counts.sort_values(
        ["count", "share_of_true", "true", "predicted"], ascending=[False, False, True, True]
    ).reset_index(drop=True)


def prediction_distribution(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per label (the five stages, then invalid): how often it was answered (``count``,
    ``share``) and how often it is the scored stage (``true_share``)."""
    epochs = _scored(epochs)
    unknown = set(epochs["prediction"]) - set(PRED_LABELS)
    if unknown:
        raise FailureAnalysisError(
            f"predictions {sorted(map(str, unknown))} are neither stages nor {INVALID!r}: "
            "parse answers with sleepvlm.metrics.predictions first"
        )
    counts = epochs["prediction"].value_counts().reindex(PRED_LABELS, fill_value=0)
    truth = epochs["stage"].value_counts().reindex(PRED_LABELS, fill_value=0)
    table = pd.DataFrame(
        {"count": counts, "share": counts / len(epochs), "true_share": truth / len(epochs)}
    )
    table.index.name = "label"
    return table


def dominant_answer(epochs: pd.DataFrame) -> tuple[str, float]:
    """The most frequent answer and its share (1.0: anchored on one label)."""
    shares = prediction_distribution(epochs)["share"]
    return str(shares.idxmax()), float(shares.max())


def answer_distributions(runs: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Share of each label (rows: the five stages, then invalid) among the answers of each run
    (columns, by name): a column with one share of 1.0 is a model that says one thing whatever
    it is given. Empty (labels only) when there are no runs."""
    return pd.DataFrame(
        {name: prediction_distribution(frame)["share"] for name, frame in runs.items()},
        index=pd.Index(PRED_LABELS, name="label"),
        columns=list(runs),
    )


def dominant_answers_text(runs: Mapping[str, pd.DataFrame]) -> str:
    """Each run's most frequent answer and its share, as text for the prose ("plain: REM
    100 %, expert: invalid 95 %"), or "not run" when there are no runs."""
    if not runs:
        return "not run"
    parts = []
    for name, frame in runs.items():
        label, share = dominant_answer(frame)
        parts.append(f"{name}: {label} {100 * share:.0f} %")
    return ", ".join(parts)


# --- ungrounded explanations ------------------------------------------------------------------


def ungrounded_explanations(
    epochs: pd.DataFrame, annotations, tolerance_s: float = 1.0
) -> pd.DataFrame:
    """Per epoch of a per-epoch table: how many events its answer cites (``n_claims``) and
    which of them are not in the epoch (``ungrounded``, described; ``n_ungrounded``), checked
    by :func:`sleepvlm.explain.faithfulness.ungrounded_claims` against the epoch's annotation
    (``annotations``: :class:`~sleepvlm.explain.annotations.EpochAnnotation` of at least these
    epochs). An answer that cites nothing has nothing ungrounded: read ``n_claims`` beside it."""
    # The explanation scorer is loaded on use: the other analyses need none of it.
    from sleepvlm.explain.annotations import parse_answer, select
    from sleepvlm.explain.faithfulness import ungrounded_claims

    epochs = _scored(epochs)
    _require(epochs, ("dataset", "answer"), "per-epoch table")
    matched = select(annotations, epochs)
    rows = []
    for answer, annotation in zip(epochs["answer"], matched, strict=True):
        ungrounded = ungrounded_claims(answer, annotation, tolerance_s)
        rows.append(
            {
                "n_claims": len(parse_answer(answer).claims),
                "n_ungrounded": len(ungrounded),
                "ungrounded": [claim.describe() for claim in ungrounded],
            }
        )
    keep = ["dataset", *EPOCH_KEY, "stage", "prediction", "correct"]
    return pd.concat([epochs[keep].reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def ungrounded_in_run(
    prepared, epochs: pd.DataFrame, max_nights: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """:func:`ungrounded_explanations` of one run's per-epoch table, on the epochs of a seeded
    choice of ``max_nights`` of its nights (all by default), annotated on the way (annotating a
    night runs every detector on it)."""
    from sleepvlm.explain.annotations import annotate_store

    nights = nights_of(epochs, max_nights, seed)
    part = epochs[night_keys(epochs).isin(nights)].assign(dataset=prepared.dataset)
    return ungrounded_explanations(part, annotate_store(prepared, nights))


def ungrounded_summary(table: pd.DataFrame) -> dict:
    """Totals of an :func:`ungrounded_explanations` table: answers, cited events, invented
    events and the share of answers with at least one invented event."""
    _require(table, ("n_claims", "n_ungrounded"), "ungrounded_explanations table")
    return {
        "answers": len(table),
        "cited events": int(table["n_claims"].sum()),
        "invented events": int(table["n_ungrounded"].sum()),
        "answers with an invented event": float((table["n_ungrounded"] > 0).mean()),
    }


# --- prompt anchoring --------------------------------------------------------------------------


def _label_list(prompt: Prompt) -> re.Match:
    """The one place in the user turn where the answer labels are listed."""
    found = [m for m in _LABEL_LIST.finditer(prompt.user) if _labels(m[0]) == sorted(STAGES)]
    if len(found) != 1:
        raise FailureAnalysisError(
            f"prompt {prompt.name}: expected one list of the labels {', '.join(STAGES)} "
            f"(comma-separated, any order) in the user turn, found {len(found)}"
        )
    return found[0]


def _labels(listed: str) -> list[str]:
    return sorted(listed.split(", "))


def label_order(prompt: Prompt) -> tuple[str, ...]:
    """The order in which ``prompt`` lists the answer labels."""
    return tuple(_label_list(prompt)[0].split(", "))


def _checked_order(order: Sequence[str]) -> tuple[str, ...]:
    order = tuple(order)
    if sorted(order) != sorted(STAGES):
        raise FailureAnalysisError(
            f"label order {list(order)} is not a permutation of {list(STAGES)}"
        )
    return order


def permute_label_order(prompt: Prompt, order: Sequence[str]) -> Prompt:
    """``prompt`` with its label list rewritten in ``order`` (nothing else changed); the
    prompt's own order gives the prompt back unchanged, hash included."""
    order = _checked_order(order)
    found = _label_list(prompt)
    user = prompt.user[: found.start()] + ", ".join(order) + prompt.user[found.end() :]
    return dataclasses.replace(prompt, user=user)


def with_leading_example(prompt: Prompt, stage: str) -> Prompt:
    """``prompt`` with the line ``Example answer: <stage>`` as a paragraph of its own just
    before the paragraph that asks for the label."""
    if stage not in STAGES:
        raise FailureAnalysisError(f"example stage {stage!r} is not one of {STAGES}")
    found = _label_list(prompt)
    start = prompt.user.rfind("\n\n", 0, found.start())
    if start < 0:
        raise FailureAnalysisError(
            f"prompt {prompt.name}: the label list is not in a paragraph of its own, so there "
            "is no place before the question for an example"
        )
    example = "\n\n" + EXAMPLE_LINE.format(stage=stage)
    return dataclasses.replace(prompt, user=prompt.user[:start] + example + prompt.user[start:])


def rotations(order: Sequence[str]) -> list[tuple[str, ...]]:
    """The cyclic rotations of ``order``: every label listed first exactly once."""
    order = tuple(order)
    return [order[i:] + order[:i] for i in range(len(order))]


def prompt_variants(
    prompt: Prompt,
    orders: Sequence[Sequence[str]] | None = None,
    examples: Sequence[str] = STAGES,
) -> tuple[pd.DataFrame, dict[str, Prompt]]:
    """The variants of an anchoring experiment: ``prompt`` under each label order (default:
    the rotations of its own order; its own order always comes first, as ``base``) and with a
    leading example of each stage of ``examples``. Returns a table (``name``, ``kind``
    order/example, ``order``, ``anchor``: first listed label or example stage, ``prompt_hash``)
    and the prompts by name."""
    own = label_order(prompt)
    wanted = [own] + [_checked_order(o) for o in (orders or rotations(own))]
    rows, prompts = [], {}
    for order in dict.fromkeys(wanted):
        name = "base" if order == own else "order=" + ",".join(order)
        prompts[name] = permute_label_order(prompt, order)
        rows.append({"name": name, "kind": "order", "order": order, "anchor": order[0]})
    for stage in examples:
        name = f"example={stage}"
        prompts[name] = with_leading_example(prompt, stage)
        rows.append({"name": name, "kind": "example", "order": own, "anchor": stage})
    table = pd.DataFrame(rows)
    table["prompt_hash"] = [prompts[n].sha256 for n in table["name"]]
    return table, prompts


@dataclass
class AnchoringResult:
    """A model's answers under prompt variants: ``variants`` (see :func:`prompt_variants`)
    and one per-epoch table per variant name in ``frames`` (same epochs in each)."""

    variants: pd.DataFrame
    frames: dict[str, pd.DataFrame]
    records: dict[str, dict] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(
            self.variants,
            ("name", "kind", "anchor"),
            "variants table",
            "build it with prompt_variants",
        )
        missing = set(self.variants["name"]) - set(self.frames)
        if missing:
            raise FailureAnalysisError(f"no per-epoch table for variants {sorted(missing)}")
        if (self.variants["kind"] == "example").any() and "base" not in set(self.frames):
            raise FailureAnalysisError(
                "example variants need the 'base' variant (the prompt as loaded) for the "
                "base rate of each label; build the variants with prompt_variants"
            )

    def distributions(self) -> pd.DataFrame:
        """Answer shares per variant (rows), over the stages and invalid (columns), with the
        variant's accuracy."""
        rows = {}
        for name in self.variants["name"]:
            frame = _scored(self.frames[name])
            shares = prediction_distribution(frame)["share"].to_dict()
            rows[name] = {**shares, "accuracy": frame["correct"].mean()}
        table = pd.DataFrame(rows).T
        table.index.name = "variant"
        return table


def total_variation(p: pd.Series, q: pd.Series) -> float:
    """Total-variation distance between two answer distributions (0: same, 1: disjoint)."""
    return float(0.5 * (p - q).abs().sum())


def _lift(share: float, base: float) -> float:
    """How far ``share`` exceeds ``base`` as a fraction of the room above it (NaN: no room)."""
    return (share - base) / (1 - base) if base < 1 else np.nan


def anchoring_index(result: AnchoringResult) -> dict[str, float]:
    """How much the answers follow the prompt rather than the epoch.

    ``order_tv``: mean total-variation distance between the answer distributions of every two
    label orders (0: the order does not matter). ``order_anchoring``: per order, the share of
    answers equal to the first listed label minus the model's share of that label over all
    orders, over the room above that base rate; averaged (1: always the first listed label; 0:
    no pull). ``example_anchoring``: the same for the leading example, the base rate being the
    share of that label under the base prompt. Labels a model answers always (no room above
    the base rate) are left out of the averages; NaN when nothing is left.
    """
    shares = result.distributions()[list(PRED_LABELS)]
    anchors = result.variants.set_index("name")["anchor"]
    kinds = result.variants.set_index("name")["kind"]
    orders, examples = anchors[kinds == "order"], anchors[kinds == "example"]
    pairs = list(combinations(orders.index, 2))
    tvs = [total_variation(shares.loc[a], shares.loc[b]) for a, b in pairs]
    pooled = shares.loc[orders.index].mean()
    order_lifts = [_lift(shares.loc[v, label], pooled[label]) for v, label in orders.items()]
    example_lifts = [
        _lift(shares.loc[v, label], shares.loc["base", label]) for v, label in examples.items()
    ]
    return {
        "order_tv": _nanmean(tvs),
        "order_anchoring": _nanmean(order_lifts),
        "example_anchoring": _nanmean(example_lifts),
    }


def _nanmean(values: Sequence[float]) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan


def anchoring_experiment(
    run: RunSpec,
    orders: Sequence[Sequence[str]] | None = None,
    examples: Sequence[str] = STAGES,
    *,
    results_dir=None,
    **options,
) -> AnchoringResult:
    """Run ``run`` (its dataset, model, sample ...) under every variant of
    :func:`prompt_variants` of its ``<modality>_<prompt_variant>`` prompt, with
    :func:`sleepvlm.experiment.run_experiment`'s ``options`` (store_dir, registry ...). Answers
    are stored under each variant's hash (a rerun replays them); records are written to
    ``results_dir`` only when one is given."""
    template = load_prompt(run.modality, run.prompt_variant)
    variants, prompts = prompt_variants(template, orders, examples)
    frames, records = {}, {}
    for name in variants["name"]:
        records[name], frames[name] = run_experiment(
            dataclasses.replace(run, prompt=prompts[name]), results_dir=results_dir, **options
        )
    return AnchoringResult(variants, frames, records)


# --- remedies ----------------------------------------------------------------------------------


def _common_epochs(frames: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each condition's table restricted to the epochs every condition scored, in one order."""
    scored = {name: _scored(frame) for name, frame in frames.items()}
    key = list(EPOCH_KEY)
    common = None
    for frame in scored.values():
        keys = frame[key].drop_duplicates()
        common = keys if common is None else common.merge(keys, on=key)
    if common is None or common.empty:
        raise FailureAnalysisError(
            f"conditions {list(frames)} share no epoch: run them on the same sample (same "
            "dataset, seed and counts)"
        )
    common = common.sort_values(key, ignore_index=True)
    return {name: common.merge(frame, on=key, how="left") for name, frame in scored.items()}


def remedy_comparison(
    frames: Mapping[str, pd.DataFrame],
    metric: str = "accuracy",
    reference: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """One ``metric`` (:data:`sleepvlm.metrics.SUMMARY_METRICS`) per condition (name ->
    per-epoch table), on the epochs all conditions scored, with its subject-bootstrap interval
    and its difference from the ``reference`` condition (default: the first), whose interval
    comes from the same subject draws for both conditions (paired)."""
    if metric not in SUMMARY_METRICS:
        raise FailureAnalysisError(f"metric {metric!r} is not one of {SUMMARY_METRICS}")
    if not frames:
        raise FailureAnalysisError("no conditions to compare")
    reference = reference or next(iter(frames))
    if reference not in frames:
        raise FailureAnalysisError(f"reference {reference!r} is not among {list(frames)}")
    aligned = _common_epochs(frames)
    confusions = {
        name: subject_confusions(f["stage"], f["prediction"], f["subject"])
        for name, f in aligned.items()
    }
    n_subjects = len(confusions[reference])
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_subjects, np.full(n_subjects, 1 / n_subjects), size=n_boot)
    point = {n: float(metrics_from_confusion(c.sum(axis=0))[metric]) for n, c in confusions.items()}
    boot = {
        n: metrics_from_confusion(np.einsum("bs,sij->bij", draws, c))[metric]
        for n, c in confusions.items()
    }
    tail = 100 * (1 - level) / 2
    rows = []
    for name in frames:
        low, high = _percentiles(boot[name], tail) if n_subjects > 1 else (np.nan, np.nan)
        row = {"condition": name, "n": len(aligned[name]), metric: point[name]}
        row.update({"ci_low": low, "ci_high": high, "delta": point[name] - point[reference]})
        if name == reference or n_subjects < 2:
            row["delta_low"], row["delta_high"] = np.nan, np.nan
        else:
            row["delta_low"], row["delta_high"] = _percentiles(boot[name] - boot[reference], tail)
        rows.append(row)
    return pd.DataFrame(rows).set_index("condition")


def _percentiles(values: np.ndarray, tail: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.nan, np.nan
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


__all__ = [
    "CUES",
    "EPOCH_KEY",
    "EXAMPLE_LINE",
    "N1_N2",
    "AnchoringResult",
    "FailureAnalysisError",
    "accuracy_by_cue",
    "anchoring_experiment",
    "anchoring_index",
    "answer_distributions",
    "confusion_pairs",
    "cue_strength",
    "dominant_answer",
    "dominant_answers_text",
    "label_order",
    "permute_label_order",
    "prediction_distribution",
    "prompt_variants",
    "remedy_comparison",
    "rotations",
    "total_variation",
    "ungrounded_explanations",
    "weak_cue_table",
    "wilson_interval",
]
