"""Automatic scores of a rationale against the epoch's annotation, as proxies of the three
expert ratings of SleepVLM (factual accuracy, evidence comprehensiveness, logical coherence).

* **Factual precision**: share of the events an answer cites (kind, channel role, time) that
  match an event of that kind and role in the epoch, overlapping it within ``tolerance_s``
  (true events on simulated nights, detected ones on real nights). None without a claim.
* **Comprehensiveness**: share of the decisive evidence (the events the reference answer
  cites, :func:`~sleepvlm.explain.annotations.decisive_evidence`) that the answer covers: for
  each kind, as many distinct evidence events of that kind as the reference cites, matched one
  to one. None when the reference cites no event (the stage is read from the background).
* **Rule recall**: share of the annotation's rule IDs the answer cites.
* **Coherence**: share of the answer's statements that hang together with its stage: each cited
  rule must exist in the rule table and support the predicted stage, each claimed event must be
  evidence for some rule of that stage. 0 when the answer names no stage but cites something;
  None when it cites neither rule nor event.

These are checks against ground truth, not expert judgement; the summary maps each to 1-5 as
``1 + 4 x score`` only so that it can be set beside the paper's expert ratings.

Each claim is also checked for *what* it got wrong (:func:`claim_error`): the right event at the
wrong time, on the wrong channel, another event where one is, or an event with nothing there at
all; and how far it lies from the nearest event of its kind on its channel (``gap_s``), so that
precision at any other tolerance follows without scoring again (:func:`precision_by_tolerance`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sleepvlm.data.records import EPOCH_S, STAGES
from sleepvlm.explain.annotations import (
    RULE_EVIDENCE,
    AnnotationError,
    Claim,
    EpochAnnotation,
    Evidence,
    ParsedAnswer,
    annotate_store,
    answer_text,
    decisive_evidence,
    parse_answer,
    select,
    supported_stages,
)
from sleepvlm.metrics import (
    SUMMARY_FIELD,
    SUMMARY_VARIANTS,
    provenance,
    write_result,
)
from sleepvlm.params import evaluation_setting
from sleepvlm.report import SLEEPVLM_MINI, load_summaries
from sleepvlm.rules.table import RULES
from sleepvlm.splits import night_keys, nights_of

#: Summary entries: (column, name of the expert rating it stands in for).
PROXIES: tuple[tuple[str, str], ...] = (
    ("precision", "factual accuracy"),
    ("comprehensiveness", "evidence comprehensiveness"),
    ("coherence", "logical coherence"),
)
PROXY_NOTE = (
    "automatic proxy computed against ground-truth (simulated) or detected (real) events; "
    "scale_1_5 = 1 + 4 x score, for setting beside the paper's expert ratings (> 4/5), "
    "not an expert rating"
)


#: What an ungrounded claim got wrong, in the order :func:`claim_error` checks it.
CLAIM_ERRORS: tuple[str, ...] = ("wrong time", "wrong channel", "wrong kind", "invented")
GROUNDED = "grounded"


@dataclass(frozen=True)
class ClaimCheck:
    """One cited event checked against its epoch: ``error`` is :data:`GROUNDED` or one of
    :data:`CLAIM_ERRORS`; ``gap_s`` is the distance (s) to the nearest event of the claimed kind
    on the claimed channel (0 when they overlap; None when the epoch holds none)."""

    claim: Claim
    error: str
    gap_s: float | None

    def row(self) -> dict:
        return {
            "kind": self.claim.kind,
            "role": self.claim.role,
            "start_s": self.claim.start_s,
            "end_s": self.claim.end_s,
            "error": self.error,
            "gap_s": self.gap_s,
        }


@dataclass
class AnswerScore:
    """Scores of one answer against one epoch's annotation (see the module docstring)."""

    predicted: str | None
    stage_correct: bool
    n_claims: int
    n_grounded: int
    precision: float | None
    n_decisive: int
    n_decisive_cited: int
    comprehensiveness: float | None
    rule_recall: float | None
    coherence: float | None
    ungrounded: list[Claim] = field(default_factory=list)
    unknown_rules: list[str] = field(default_factory=list)
    off_stage_rules: list[str] = field(default_factory=list)
    off_stage_claims: list[Claim] = field(default_factory=list)
    n_unparsed: int = 0
    checks: list[ClaimCheck] = field(default_factory=list)

    def row(self) -> dict:
        """The score as flat columns (claims as text)."""
        return {
            "predicted": self.predicted,
            "stage_correct": self.stage_correct,
            "n_claims": self.n_claims,
            "n_grounded": self.n_grounded,
            "precision": self.precision,
            "n_decisive": self.n_decisive,
            "n_decisive_cited": self.n_decisive_cited,
            "comprehensiveness": self.comprehensiveness,
            "rule_recall": self.rule_recall,
            "coherence": self.coherence,
            "ungrounded": [c.describe() for c in self.ungrounded],
            "unknown_rules": list(self.unknown_rules),
            "off_stage_rules": list(self.off_stage_rules),
            "off_stage_claims": [c.describe() for c in self.off_stage_claims],
            "n_unparsed": self.n_unparsed,
            "claims": [c.row() for c in self.checks],
        }


def _gap(claim: Claim, event: Evidence) -> float:
    """Seconds between the claimed span and the event's (0 when they overlap)."""
    return max(0.0, event.start_s - claim.end_s, claim.start_s - event.end_s)


def _matches(claim: Claim, event: Evidence, tolerance_s: float) -> bool:
    same = (claim.kind, claim.role) == (event.kind, event.role)
    return same and _gap(claim, event) <= tolerance_s


def claim_error(claim: Claim, annotation: EpochAnnotation, tolerance_s: float = 1.0) -> ClaimCheck:
    """What ``claim`` got wrong: nothing (grounded); the *time* (its kind is on its channel in
    this epoch, further than ``tolerance_s``); the *channel* (its kind is there at that time, on
    another channel); the *kind* (another event is on its channel at that time); else it is
    *invented* (nothing of the sort, nothing there)."""
    events = annotation.all_events
    same = [_gap(claim, e) for e in events if (e.kind, e.role) == (claim.kind, claim.role)]
    gap = min(same) if same else None
    near = [e for e in events if _gap(claim, e) <= tolerance_s]
    if gap is not None and gap <= tolerance_s:
        error = GROUNDED
    elif gap is not None:
        error = "wrong time"
    elif any(e.kind == claim.kind for e in near):
        error = "wrong channel"
    elif any(e.role == claim.role for e in near):
        error = "wrong kind"
    else:
        error = "invented"
    return ClaimCheck(claim, error, gap)


def _covered(claims: Sequence[Claim], annotation: EpochAnnotation, tolerance_s: float) -> int:
    """Decisive events covered: per (kind, role), distinct evidence events matched one to one
    by claims (nearest center first), capped at the number the reference cites."""
    decisive = decisive_evidence(annotation)
    covered = 0
    for kind, role in dict.fromkeys((e.kind, e.role) for e in decisive):
        events = [e for e in annotation.evidence if (e.kind, e.role) == (kind, role)]
        free = list(range(len(events)))
        matched = 0
        for claim in claims:
            hits = [i for i in free if _matches(claim, events[i], tolerance_s)]
            if hits:
                center = (claim.start_s + claim.end_s) / 2
                best = min(
                    hits, key=lambda i: abs((events[i].start_s + events[i].end_s) / 2 - center)
                )
                free.remove(best)
                matched += 1
        needed = sum((e.kind, e.role) == (kind, role) for e in decisive)
        covered += min(matched, needed)
    return covered


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def score_answer(
    parsed: ParsedAnswer | str, annotation: EpochAnnotation, tolerance_s: float = 1.0
) -> AnswerScore:
    """Score one answer (parsed, or its text) against the annotation of its epoch."""
    if isinstance(parsed, str) or parsed is None:
        parsed = parse_answer(parsed)
    if tolerance_s < 0:
        raise AnnotationError(f"tolerance_s must be >= 0 s, got {tolerance_s}")
    claims = parsed.claims
    checks = [claim_error(c, annotation, tolerance_s) for c in claims]
    grounded = [k.claim for k in checks if k.error == GROUNDED]
    decisive = decisive_evidence(annotation)
    cited = _covered(claims, annotation, tolerance_s) if decisive else 0
    unknown = [r for r in parsed.rules if r not in RULES]
    stage = parsed.stage
    off_rules = [r for r in parsed.rules if r in RULES and stage not in supported_stages(r)]
    stage_kinds = {
        k
        for r in RULES
        if stage is not None and stage in supported_stages(r)
        for k in RULE_EVIDENCE[r]
    }
    off_claims = [c for c in claims if c.kind not in stage_kinds]
    statements = len(parsed.rules) + len(claims)
    coherent = statements - len(unknown) - len(off_rules) - len(off_claims)
    return AnswerScore(
        predicted=stage,
        stage_correct=stage == annotation.stage,
        n_claims=len(claims),
        n_grounded=len(grounded),
        precision=_share(len(grounded), len(claims)),
        n_decisive=len(decisive),
        n_decisive_cited=cited,
        comprehensiveness=_share(cited, len(decisive)),
        rule_recall=_share(len(set(parsed.rules) & set(annotation.rules)), len(annotation.rules)),
        coherence=_share(coherent, statements),
        ungrounded=[c for c in claims if c not in grounded],
        unknown_rules=unknown,
        off_stage_rules=off_rules,
        off_stage_claims=off_claims,
        n_unparsed=len(parsed.unparsed),
        checks=checks,
    )


def score_answers(
    answers: Sequence[ParsedAnswer | str | None],
    annotations: Sequence[EpochAnnotation],
    tolerance_s: float = 1.0,
) -> pd.DataFrame:
    """One row per epoch: its identity, scored stage and :meth:`AnswerScore.row` columns.
    ``answers[i]`` (parsed or text; None counts as an answer without content) belongs to
    ``annotations[i]`` (align them with :func:`~sleepvlm.explain.annotations.select`)."""
    if len(answers) != len(annotations):
        raise AnnotationError(
            f"{len(answers)} answers for {len(annotations)} annotations; give one answer per "
            "annotated epoch, in the same order"
        )
    rows = [
        {
            "dataset": a.dataset,
            "subject": a.subject,
            "night": a.night,
            "epoch": a.epoch,
            "stage": a.stage,
            "source": a.source,
            **score_answer(answer, a, tolerance_s).row(),
        }
        for answer, a in zip(answers, annotations, strict=True)
    ]
    return pd.DataFrame(rows)


def _mean_entry(values: pd.Series) -> dict:
    values = pd.to_numeric(values, errors="coerce").dropna()
    mean = float(values.mean()) if len(values) else None
    return {
        "mean": mean,
        "n": int(len(values)),
        "scale_1_5": None if mean is None else 1 + 4 * mean,
    }


def faithfulness_summary(frame: pd.DataFrame) -> dict:
    """Means of the scores of :func:`score_answers` (with how many epochs each is defined on)
    and their 1-5 mapping, labelled as an automatic proxy of the paper's expert ratings."""
    needed = [c for c, _ in PROXIES] + ["rule_recall", "stage_correct", "ungrounded"]
    missing = [c for c in needed if c not in frame]
    if missing or frame.empty:
        raise AnnotationError(
            f"faithfulness_summary needs the rows of score_answers; missing columns {missing}"
            if missing
            else "faithfulness_summary got no scored answers"
        )
    out: dict = {"n_epochs": int(len(frame))}
    for column, rating in PROXIES:
        out[column] = {"rating": rating, **_mean_entry(frame[column])}
    out["rule_recall"] = _mean_entry(frame["rule_recall"])
    out["stage_accuracy"] = float(np.mean(frame["stage_correct"].astype(bool)))
    out["share_with_ungrounded_claims"] = float(np.mean([len(u) > 0 for u in frame["ungrounded"]]))
    out["note"] = PROXY_NOTE
    return out


def summary_table(scored: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """:func:`faithfulness_summary` of each center's scored answers, one column per center: the
    three criteria on the 1-5 proxy scale (empty where no epoch defines one), rule recall,
    stage accuracy, the share of answers citing an event that is not there, epochs scored."""
    columns = {}
    for name, frame in scored.items():
        s = faithfulness_summary(frame)
        columns[name] = {
            **{f"{s[c]['rating']} (1–5)": s[c]["scale_1_5"] for c, _ in PROXIES},
            "rule recall": s["rule_recall"]["mean"],
            "stage accuracy": s["stage_accuracy"],
            "answers with an invented event": s["share_with_ungrounded_claims"],
            "epochs scored": s["n_epochs"],
        }
    return pd.DataFrame(columns, dtype=float)


#: Columns of :func:`claim_table` that name the epoch a claim belongs to.
_EPOCH_COLUMNS = ("dataset", "subject", "night", "epoch", "stage", "predicted")


def claim_table(scored: pd.DataFrame, bin_s: float = 5.0) -> pd.DataFrame:
    """One row per cited event of the answers :func:`score_answers` scored: its epoch, kind,
    channel, span, :func:`claim_error` verdict, ``gap_s`` and the ``bin_s``-second bin of the
    epoch its middle falls in (``time_bin``, e.g. ``"10-15 s"``)."""
    if "claims" not in scored:
        raise AnnotationError("claim_table needs the rows of score_answers (a 'claims' column)")
    keep = [c for c in _EPOCH_COLUMNS if c in scored]
    rows = [
        {**{c: row[c] for c in keep}, **claim}
        for _, row in scored.iterrows()
        for claim in row["claims"]
    ]
    columns = [*keep, "kind", "role", "start_s", "end_s", "error", "gap_s"]
    table = pd.DataFrame(rows, columns=columns)
    middle = (table["start_s"].astype(float) + table["end_s"].astype(float)) / 2
    start = (np.floor(middle.clip(0, EPOCH_S - 1e-9) / bin_s) * bin_s).astype(int)
    table["time_bin"] = [f"{a}-{a + bin_s:g} s" for a in start]
    return table


def error_breakdown(claims: pd.DataFrame, by: str = "kind") -> pd.DataFrame:
    """Share of the claims of each ``by`` group (event kind, time bin, ...) that are grounded
    or make each error of :data:`CLAIM_ERRORS`, with the number of claims (``claims``)."""
    order = [GROUNDED, *CLAIM_ERRORS]
    shares = pd.crosstab(claims[by], claims["error"], normalize="index")
    shares = shares.reindex(columns=order, fill_value=0.0)
    shares["claims"] = claims.groupby(by).size()
    return shares


def precision_by_tolerance(claims: pd.DataFrame, tolerances: Sequence[float]) -> pd.Series:
    """Share of the claims that would be grounded at each tolerance (s): those whose claimed
    kind lies on their channel within it (``gap_s`` of :func:`claim_table`)."""
    gaps = pd.to_numeric(claims["gap_s"], errors="coerce")
    return pd.Series(
        [float((gaps <= t).mean()) if len(gaps) else float("nan") for t in tolerances],
        index=pd.Index(tolerances, name="tolerance (s)"),
        name="precision",
    )


def repeated_answers(scored: pd.DataFrame) -> pd.Series:
    """Per predicted stage, the share of its answers (``answer`` of :func:`score_run`) that are
    word for word its most frequent one: a model that writes one template per stage cites the
    same events at the same times whatever the image holds."""
    if "answer" not in scored:
        raise AnnotationError("repeated_answers needs the rows of score_run (an 'answer' column)")
    answered = scored.dropna(subset=["predicted"])
    top = answered.groupby("predicted")["answer"].agg(lambda a: a.value_counts().iloc[0] / len(a))
    stages = [s for s in STAGES if s in top.index]
    return top.reindex(stages).astype(float).rename("same answer")


#: Share of a stage's answers being one sentence above which the answers are a template.
TEMPLATE_SHARE = 0.5


def template_sentence(repeated: pd.DataFrame) -> str:
    """What :func:`repeated_answers` of each center (one column each) say, as the book says
    it: whether the most repeated stage's answers (mean over the centers) are a template."""
    shares = repeated.astype(float).mean(axis=1).dropna()
    if shares.empty:
        return "No answer names a stage, so none repeats."
    stage, share = shares.idxmax(), shares.max()
    if share >= TEMPLATE_SHARE:
        return (
            f"{share:.0%} of its {stage} answers are one and the same sentence (mean over the "
            "centers): it has learnt the stage and which rules and event kinds go with it, "
            "but does not write where in the image the events lie: it writes the times most "
            "frequent in its training answers."
        )
    return (
        f"No stage's answers are mostly one sentence (at most {share:.0%}, {stage}): the "
        "cited times change with the image."
    )


#: Glue names of :func:`error_texts`.
ERROR_TEXTS: tuple[str, ...] = (
    "share_wrong_time",
    "share_wrong_kind",
    "share_invented",
    "wrong_time_median_s",
    "precision_at_token",
    "precision_at_epoch",
    "top_error",
)


def error_texts(claims: pd.DataFrame, token_s: float) -> dict[str, str]:
    """The sentences' numbers of a :func:`claim_table`, as text: the share of claims making each
    error, the median gap of the wrong-time ones, precision read with one image token
    (``token_s``) and with the whole epoch as tolerance, and the most frequent error; a dash
    where there is nothing to count."""
    if not len(claims):
        return dict.fromkeys(ERROR_TEXTS, "— (no cited events)")
    errors = claims["error"].value_counts(normalize=True)
    gaps = claims.loc[claims["error"] == "wrong time", "gap_s"]
    precision = precision_by_tolerance(claims, [token_s, EPOCH_S])
    wrong = errors.drop(GROUNDED, errors="ignore")
    return {
        "share_wrong_time": f"{errors.get('wrong time', 0):.0%}",
        "share_wrong_kind": f"{errors.get('wrong kind', 0):.0%}",
        "share_invented": f"{errors.get('invented', 0):.0%}",
        "wrong_time_median_s": f"{gaps.median():.1f}" if len(gaps) else "—",
        "precision_at_token": f"{precision[token_s]:.2f}",
        "precision_at_epoch": f"{precision[EPOCH_S]:.2f}",
        "top_error": wrong.idxmax() if len(wrong) else "none (all are there)",
    }


def ungrounded_claims(
    text: str | None, annotation: EpochAnnotation, tolerance_s: float = 1.0
) -> list[Claim]:
    """The events a free-text answer of any model cites that are not in the epoch."""
    return score_answer(parse_answer(text), annotation, tolerance_s).ungrounded


def reference_text(simulated: bool) -> str:
    """What the rationales of a run are checked against, as the book says it: the events
    drawn into simulated nights, or, on a real dataset (no ground truth), our detectors'."""
    if simulated:
        return "the ground truth of the scored nights (the events drawn into them)"
    return (
        "the events our detectors find in the scored nights: a real dataset has no ground "
        "truth, so a cited event is checked against the detectors, not against what is there"
    )


def score_run(
    prepared,
    frame: pd.DataFrame,
    max_nights: int | None = None,
    seed: int = 0,
    executor=None,
    tolerance_s: float = 1.0,
) -> pd.DataFrame:
    """Scores of the answers of one run (the per-epoch table of
    :func:`sleepvlm.experiment.run_experiment`, with ``answer``) against the rule annotations
    of their nights; only the epochs of ``max_nights`` nights when given (annotating a night
    runs every detector on it)."""
    nights = nights_of(frame, max_nights, seed)
    found = annotate_store(prepared, nights, executor=executor)
    keep = frame[night_keys(frame).isin(nights)]
    chosen = select(found, keep.assign(dataset=prepared.dataset))
    scores = score_answers(keep["answer"].tolist(), chosen, tolerance_s)
    scores["answer"] = keep["answer"].to_numpy()
    scores["reference"] = [answer_text(a) for a in chosen]
    return scores


#: :data:`~sleepvlm.metrics.SUMMARY_FIELD` of a faithfulness record.
FAITHFULNESS = "faithfulness"
#: This project's goals for SleepVLM-mini's rationales on held-out nights (issue 19), each
#: metric of :func:`faithfulness_record` with its bound: at least (``">="``) or below (``"<"``).
FAITHFULNESS_GOALS: dict[str, tuple[str, float]] = {
    "precision": (">=", 0.75),
    "comprehensiveness": (">=", 0.6),
    "coherence": (">=", 0.9),
    "ungrounded_share": ("<", 0.2),
}
#: Fields of the run's record a faithfulness record keeps (which run it summarises).
_RUN_FIELDS = (
    "dataset",
    "modality",
    "prompt",
    "model",
    "backend",
    "model_id",
    "data",
    "train_dataset",
    "manifest_hash",
    "prompt_hash",
    "counts",
    "whole_nights",
    "seed",
)


def faithfulness_metrics(scored: pd.DataFrame) -> dict:
    """The metrics of a faithfulness record: each proxy's mean (answers it is defined on, and
    1-5 mapping), ``ungrounded_share`` (answers citing an event that is not there), rule recall,
    stage accuracy, the pooled share of grounded claims (``claim_precision``) and the share of
    claims making each error of :data:`CLAIM_ERRORS` (``claim_errors``)."""
    summary = faithfulness_summary(scored)
    claims = claim_table(scored)
    errors = claims["error"].value_counts(normalize=True) if len(claims) else pd.Series()
    return {
        **{c: summary[c] for c, _ in PROXIES},
        "ungrounded_share": summary["share_with_ungrounded_claims"],
        "rule_recall": summary["rule_recall"],
        "stage_accuracy": summary["stage_accuracy"],
        "n_claims": int(len(claims)),
        "claim_precision": float(errors.get(GROUNDED, 0.0)) if len(claims) else None,
        "claim_errors": {e: float(errors.get(e, 0.0)) for e in CLAIM_ERRORS},
    }


def faithfulness_record(
    run: Mapping, scored: pd.DataFrame, tolerance_s: float = 1.0, **setting
) -> dict:
    """The faithfulness summary of one run as a results record: which run (the fields of its
    staging record ``run`` that name model, data and training center), which nights and epochs
    were scored, against what (``reference``: true or detected events) and at which
    ``tolerance_s``, and :func:`faithfulness_metrics`. ``scored`` are the rows of
    :func:`score_run` for that run, scored at ``tolerance_s``; or of its answers read or decoded
    in another ``setting`` (fields of :data:`~sleepvlm.metrics.SUMMARY_VARIANTS` and their
    values, None for one not used), which the record keeps (and its file name): cut to the items
    the model was sure of (``min_claim_confidence``,
    :func:`sleepvlm.explain.citations.cite_confident`), decoded contrastively (``contrast``, the
    label of a :class:`sleepvlm.explain.contrast.Contrast`), with the cited times guided by a
    probe of the vision tower (``probe_guidance``,
    :class:`sleepvlm.explain.guidance.ProbeGuidance`'s weight), or cut to the items that probe
    supports (``min_probe_support``,
    :class:`sleepvlm.explain.perception.EventProbe`), or giving the stages read over each night
    (``night_stages``, :mod:`sleepvlm.explain.night_stages`)."""
    unknown = sorted(set(setting) - set(SUMMARY_VARIANTS))
    if unknown:
        raise ValueError(f"{unknown} are not among the summary variants {SUMMARY_VARIANTS}")
    missing = [k for k in ("dataset", "modality", "model", "prompt") if k not in run]
    if missing:
        raise AnnotationError(
            f"the run's record lacks {missing}: pass the record run_experiment wrote"
        )
    nights = sorted(
        f"{s}/{n}" for s, n in set(zip(scored["subject"], scored["night"], strict=True))
    )
    return {
        SUMMARY_FIELD: FAITHFULNESS,
        **{k: run[k] for k in _RUN_FIELDS if k in run},
        "n": int(len(scored)),
        "nights": nights,
        "reference": sorted(set(scored["source"])),
        "tolerance_s": tolerance_s,
        **{k: v for k, v in setting.items() if v is not None},
        "metrics": faithfulness_metrics(scored),
        "note": PROXY_NOTE,
        **provenance(),
    }


def write_faithfulness(
    run: Mapping, scored: pd.DataFrame, results_dir: str | Path, tolerance_s: float = 1.0, **setting
) -> Path:
    """Write :func:`faithfulness_record` beside the run's own record in ``results_dir``."""
    return write_result(faithfulness_record(run, scored, tolerance_s, **setting), results_dir)


def scored_nights(night_frames: Mapping, max_nights: int, seed: int = 0) -> dict[str, list]:
    """The (subject, night) pairs of each center's whole-night run whose rationales are scored,
    as :func:`score_run` chooses them: ``night_frames`` are the per-epoch tables of
    :func:`sleepvlm.experiment.run_grid`, keyed by (dataset, modality, model)."""
    return {key[0]: nights_of(frame, max_nights, seed) for key, frame in night_frames.items()}


def setting_chosen(setting: Mapping[str, object]) -> bool:
    """Whether a build chose every field of ``setting`` (a value None: nothing was chosen)."""
    return all(value is not None for value in setting.values())


def write_setting(
    runs: Mapping[str, Mapping],
    scored: Mapping[str, pd.DataFrame],
    results_dir: str | Path,
    tolerance_s: float = 1.0,
    *,
    setting: Mapping[str, object],
) -> list[Path]:
    """Write each center's faithfulness record (:func:`write_faithfulness` of ``scored[dataset]``
    beside ``runs[dataset]``) of the answers read in the one setting a build chose: ``setting``
    maps fields of :data:`~sleepvlm.metrics.SUMMARY_VARIANTS` to the values chosen, a value None
    when nothing was chosen (``scored`` then empty). The same runs' records of those fields at
    other values go first: an earlier build into the same folder chose them, and chapter 13,
    which reads every record on file, would show them as this build's."""
    unknown = sorted(set(setting) - set(SUMMARY_VARIANTS))
    if unknown or not setting:
        raise ValueError(f"setting {dict(setting)} is not one of {SUMMARY_VARIANTS} with a value")
    missing = sorted(set(scored) - set(runs))
    if missing:
        raise AnnotationError(f"no run's record for {missing}: pass the records run_grid wrote")
    chosen = setting_chosen(setting)
    if scored and not chosen:
        raise ValueError(f"answers scored in a setting, but {dict(setting)} holds None: pass it")
    on_file = load_summaries(results_dir, FAITHFULNESS)
    manifests = {run["manifest_hash"] for run in runs.values()}
    for _, row in on_file.iterrows():
        values = {k: row.get(k) for k in SUMMARY_VARIANTS if pd.notna(row.get(k))}
        if row["manifest_hash"] in manifests and set(values) == set(setting):
            if not chosen or values != dict(setting):
                (Path(results_dir) / row["file"]).unlink()
    return [
        write_faithfulness(runs[dataset], frame, results_dir, tolerance_s, **setting)
        for dataset, frame in scored.items()
    ]


def setting_goals(
    summaries: pd.DataFrame,
    manifests: Collection[str],
    answers: str,
    train_dataset: str,
    model: str = SLEEPVLM_MINI,
) -> pd.DataFrame:
    """:func:`goal_table` of ``model``'s faithfulness summaries (rows of
    :func:`sleepvlm.report.load_summaries`) of the runs with these ``manifests`` (one build's),
    read as written and as ``answers`` (an :func:`answers_label`), with each center's
    ``setting`` against ``train_dataset`` (within center or external)."""
    if not len(summaries):
        return goal_table(summaries).assign(setting=[])
    mine = summaries[summaries["manifest_hash"].isin(manifests) & (summaries["model"] == model)]
    goals = goal_table(mine)
    goals["setting"] = [evaluation_setting(train_dataset, d) for d in goals["dataset"]]
    return goals[goals["answers"].isin([answers_label(None), answers])].reset_index(drop=True)


def record_setting(
    runs: Mapping[str, Mapping],
    night_frames: Mapping,
    score: Callable[[str, list], pd.DataFrame],
    results_dir: str | Path,
    tolerance_s: float = 1.0,
    *,
    setting: Mapping[str, object],
    answers: str,
    train_dataset: str,
    max_nights: int,
    seed: int = 0,
    model: str = SLEEPVLM_MINI,
) -> pd.DataFrame:
    """Measure one setting a build chose on every center's test nights and keep it on file:
    ``score(dataset, nights)`` scores the answers read so on the nights of
    :func:`scored_nights` (not called when a value of ``setting`` is None: nothing was chosen),
    their records replace the runs' earlier ones of that setting (:func:`write_setting`), and
    the return is :func:`setting_goals` of the runs, read as written and as ``answers``."""
    scored = (
        {
            dataset: score(dataset, nights)
            for dataset, nights in scored_nights(night_frames, max_nights, seed).items()
        }
        if setting_chosen(setting)
        else {}
    )
    write_setting(runs, scored, results_dir, tolerance_s, setting=setting)
    return setting_goals(
        load_summaries(results_dir, FAITHFULNESS),
        [run["manifest_hash"] for run in runs.values()],
        answers,
        train_dataset,
        model,
    )


def goal_pivot(goals: pd.DataFrame) -> pd.DataFrame:
    """A :func:`setting_goals` table laid out for reading: one row per setting, center and
    answers, one column per metric with its goal."""
    named = goals.assign(metric=goals["metric"] + " " + goals["goal"])
    return named.pivot_table(
        index=["setting", "dataset", "answers"],
        columns="metric",
        values="measured",
        aggfunc="first",
    )


def goals_met_text(goals: pd.DataFrame, answers: str) -> str:
    """How many of the goals measured with ``answers`` a :func:`goal_table` shows met
    ("3 of 12"), or "none measured"."""
    judged = goals[goals["answers"] == answers].dropna(subset=["met"])
    if not len(judged):
        return "none measured"
    return f"{int(judged['met'].astype(bool).sum())} of {len(judged)}"


def goal_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Each faithfulness summary (rows of :func:`sleepvlm.report.load_summaries`) against
    :data:`FAITHFULNESS_GOALS`: one row per (dataset, answers, metric) with the measured value,
    the goal and whether it is met (None where the metric is undefined); ``answers`` is
    :func:`answers_label` of the summary."""
    rows = []
    for _, summary in summaries.iterrows():
        for metric, (bound, goal) in FAITHFULNESS_GOALS.items():
            value = summary.get(metric)
            defined = value is not None and not pd.isna(value)
            met = (value >= goal if bound == ">=" else value < goal) if defined else None
            rows.append(
                {
                    "dataset": summary["dataset"],
                    "train_dataset": summary.get("train_dataset"),
                    "answers": summary_label(summary),
                    "metric": metric,
                    "measured": value if defined else None,
                    "goal": f"{bound} {goal:g}",
                    "met": met,
                }
            )
    columns = ["dataset", "train_dataset", "answers", "metric", "measured", "goal", "met"]
    return pd.DataFrame(rows, columns=columns)


def metric_text(metric: str, value) -> str:
    """A goal metric's value as the book writes it: the share of answers citing an absent
    event in per cent, the others to two decimals, a dash where it is undefined."""
    if value is None or pd.isna(value):
        return "—"
    return f"{value:.0%}" if metric == "ungrounded_share" else f"{value:.2f}"


def answers_label(
    min_claim_confidence: float | None = None,
    contrast: str | None = None,
    probe_guidance: float | None = None,
    min_probe_support: float | None = None,
    night_stages: str | None = None,
    kind_guidance: float | None = None,
) -> str:
    """How a faithfulness summary's answers were read: as written, cut to the evidence items
    the model was sure of (its :data:`~sleepvlm.metrics.MIN_CLAIM_CONFIDENCE`), decoded
    contrastively (its :data:`~sleepvlm.metrics.CONTRAST`), with the cited times guided by a
    probe of its vision tower (its :data:`~sleepvlm.metrics.PROBE_GUIDANCE`) and the cited kinds
    too (its :data:`~sleepvlm.metrics.KIND_GUIDANCE`), cut to the items that probe supports
    (its :data:`~sleepvlm.metrics.MIN_PROBE_SUPPORT`), or giving the stages read over the night
    (its :data:`~sleepvlm.metrics.NIGHT_STAGES`)."""
    parts = []
    if _given(night_stages):
        parts.append(f"stages read over the night ({night_stages})")
    if _given(contrast):
        parts.append(f"decoded {contrast}")
    if _given(probe_guidance):
        parts.append(f"times guided by a probe of the vision tower (weight {probe_guidance:g})")
    if _given(kind_guidance):
        parts.append(f"kinds guided by it too (weight {kind_guidance:g})")
    if _given(min_claim_confidence):
        parts.append(f"items with confidence ≥ {min_claim_confidence:g}")
    if _given(min_probe_support):
        parts.append(f"items a probe of the vision tower supports at ≥ {min_probe_support:g}")
    return "; ".join(parts) or "as written"


def _given(value) -> bool:
    return value is not None and not pd.isna(value)


def summary_label(summary: Mapping) -> str:
    """:func:`answers_label` of a faithfulness summary (a record, or a row of
    :func:`sleepvlm.report.load_summaries`)."""
    return answers_label(**{k: summary.get(k) for k in SUMMARY_VARIANTS})


#: Colors of :func:`draw_claims`: the epoch's events, and cited events found or not found.
CLAIM_COLORS = {"event": "tab:green", GROUNDED: "tab:blue", "ungrounded": "tab:red"}


def draw_claims(png: bytes, annotation: EpochAnnotation, answer: str | None, options, ax=None):
    """The epoch image with, in each lane, the epoch's events (green bands, named) and the events
    the answer cites (outlined: blue where one is there, red where none is), at the times they
    give in the scored (middle) epoch; ``options`` are the image's
    :class:`~sleepvlm.render.ImageOptions`. Returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from sleepvlm.render import decode_png, layout

    lay = layout(options)
    start, stop = lay.center_columns
    per_s = (stop - start) / EPOCH_S

    def box(role: str, begin_s: float, end_s: float, inset: float) -> tuple:
        top, height = lay.lanes[role]
        x = start + begin_s * per_s
        return (x, top + inset), max(end_s - begin_s, 0.3) * per_s, height - 2 * inset

    if ax is None:
        _, ax = plt.subplots(figsize=(options.width / 100, options.height / 100), dpi=100)
    ax.imshow(decode_png(png))
    for event in annotation.all_events:
        xy, w, h = box(event.role, event.start_s, event.end_s, 1)
        ax.add_patch(Rectangle(xy, w, h, color=CLAIM_COLORS["event"], alpha=0.25, lw=0))
        ax.text(xy[0], xy[1] + h, event.kind, fontsize=5, color=CLAIM_COLORS["event"], va="top")
    for check in score_answer(answer, annotation).checks:
        claim = check.claim
        color = CLAIM_COLORS[GROUNDED if check.error == GROUNDED else "ungrounded"]
        xy, w, h = box(claim.role, claim.start_s, claim.end_s, 3)
        ax.add_patch(Rectangle(xy, w, h, fill=False, edgecolor=color, lw=1.5))
    ax.set_axis_off()
    return ax
