"""Scoring model answers honestly: the first valid stage label in an answer is the prediction,
answers without one stay in the denominator as wrong, macro averages are unweighted, and
subject-level bootstrap intervals come with every number. Results are written one JSON record
per run and read back into one table.

Answer grammar (case-insensitive unless marked; a label must stand as a whole word, so "N1"
is not found in "N12" nor "REM" in "remain"; the FIRST match anywhere in the answer wins, even
when negated: "Not N3 but N2" is N3):

===============================================  ===========  =================================
written as                                       prediction   examples
===============================================  ===========  =================================
NREM/non-REM + (sleep) (stage) 1 | 2 | 3 | 4     N1 | N2 | N3  "NREM 2", "non-REM stage 3"
NREM, non-REM without a number                   (skipped)    "NREM sleep" names no one stage
N1, N2, N3                                       same         "N2", "stage N3"
Stage 1 | 2 | 3 | 4 (R&K)                        N1|N2|N3|N3  "Stage 2", "stage: 4"
S1, S2, S3, S4 (R&K)                             N1|N2|N3|N3  "S3"
SWS, slow-wave sleep                             N3           "slow wave sleep"
REM, rapid eye movement sleep, Stage R           REM          "REM sleep"; not "REMs", "remain"
R (upper case, alone; not in "R&K")              REM          "R"
Wake, Wakefulness, Awake, Stage W                W            "awake"; not "awakening"
W (upper case, alone)                            W            "W"
===============================================  ===========  =================================
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

import sleepvlm
from sleepvlm.data.records import STAGES, CorruptFileError, DataError
from sleepvlm.environment import lock_hash
from sleepvlm.models.secrets import redact

#: The prediction of an answer without a valid stage label (counted as wrong).
INVALID = "invalid"
#: Columns of every confusion matrix: the five stages, then invalid answers.
PRED_LABELS: tuple[str, ...] = (*STAGES, INVALID)
SUMMARY_METRICS = ("accuracy", "macro_f1", "macro_recall", "kappa")
DATA_KINDS = ("simulated", "real")
MODALITIES = ("image", "text", "sequence", "signal")  # signal: supervised baselines


class MetricsError(DataError):
    """Labels or results that cannot be scored as given."""


@dataclass(frozen=True)
class Rule:
    """One way of writing a stage (``stage`` None: looks like a label but names no stage)."""

    pattern: str
    stage: str | None
    example: str
    case_sensitive: bool = False


_STAGE_WORD = r"stage[\s:\-]*"
_NREM = r"(?:n|non[\s\-]?)rem[\s\-]*(?:sleep[\s\-]*)?(?:stage[\s:\-]*)?"
GRAMMAR: tuple[Rule, ...] = (
    Rule(_NREM + "1", "N1", "NREM 1"),
    Rule(_NREM + "2", "N2", "non-REM stage 2"),
    Rule(_NREM + "[34]", "N3", "NREM3"),
    Rule(r"(?:n|non[\s\-]?)rem", None, "NREM sleep"),
    Rule("n1", "N1", "N1"),
    Rule("n2", "N2", "N2"),
    Rule("n3", "N3", "N3"),
    Rule(_STAGE_WORD + "1", "N1", "Stage 1"),
    Rule(_STAGE_WORD + "2", "N2", "stage: 2"),
    Rule(_STAGE_WORD + "[34]", "N3", "Stage 4"),
    Rule("s1", "N1", "S1"),
    Rule("s2", "N2", "S2"),
    Rule("s[34]", "N3", "S3"),
    Rule(r"sws|slow[\s\-]?wave\s+sleep", "N3", "slow-wave sleep"),
    Rule(r"rem|rapid[\s\-]eye[\s\-]movement\s+sleep|" + _STAGE_WORD + "r", "REM", "REM sleep"),
    Rule("R", "REM", "R", case_sensitive=True),
    Rule(r"wake(?:fulness)?|awake|" + _STAGE_WORD + "w", "W", "awake"),
    Rule("W", "W", "W", case_sensitive=True),
)
#: A label is a whole word; lone R and W also must not touch "&", "'" or "-" (as in "R&K").
_WORD = (r"(?<![A-Za-z0-9])", r"(?![A-Za-z0-9])")
_LETTER = (r"(?<![A-Za-z0-9&'\-])", r"(?![A-Za-z0-9&'\-])")


def _compile_grammar(rules: tuple[Rule, ...]) -> re.Pattern:
    parts = []
    for index, rule in enumerate(rules):
        before, after = _LETTER if rule.case_sensitive else _WORD
        body = f"(?-i:{rule.pattern})" if rule.case_sensitive else rule.pattern
        parts.append(f"(?P<r{index}>{before}(?:{body}){after})")
    return re.compile("|".join(parts), re.IGNORECASE)


_GRAMMAR_RE = _compile_grammar(GRAMMAR)


def parse_stage(answer: str | None) -> str | None:
    """The first stage label written in ``answer`` (see the module's table), or None."""
    if not isinstance(answer, str):
        return None
    for match in _GRAMMAR_RE.finditer(answer):
        stage = GRAMMAR[int(match.lastgroup[1:])].stage
        if stage is not None:
            return stage
    return None


def predictions(answers: Sequence[str | None]) -> list[str]:
    """Parsed answers, :data:`INVALID` where no label was found."""
    return [parse_stage(a) or INVALID for a in answers]


def grammar_table() -> pd.DataFrame:
    """The grammar as a table (pattern, prediction, example, case-sensitive)."""
    return pd.DataFrame(
        [
            {
                "pattern": r.pattern,
                "prediction": r.stage or "(skipped)",
                "example": r.example,
                "case_sensitive": r.case_sensitive,
            }
            for r in GRAMMAR
        ]
    )


def _check_labels(y_true: Sequence[str], y_pred: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray([INVALID if p is None else p for p in y_pred], dtype=object)
    if len(y_true) != len(y_pred):
        raise MetricsError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise MetricsError("nothing to score: no epochs")
    bad_true = set(y_true) - set(STAGES)
    if bad_true:
        raise MetricsError(
            f"true labels {sorted(map(str, bad_true))} are not among {STAGES}: drop "
            "movement/unknown epochs before scoring"
        )
    bad_pred = set(y_pred) - set(PRED_LABELS)
    if bad_pred:
        raise MetricsError(
            f"predictions {sorted(map(str, bad_pred))} are neither stages nor {INVALID!r}: "
            "parse answers with predictions() first"
        )
    return y_true, y_pred


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str | None]) -> dict:
    """Accuracy, macro-F1, macro recall, Cohen's κ, per-class F1 and the 5 x 6 confusion matrix
    (columns: stages, then invalid). Invalid predictions (None or :data:`INVALID`) count as
    wrong everywhere. Macro averages are unweighted over the stages whose F1 (or recall) is
    defined: a stage absent from the truth but predicted has F1 0; a stage absent from both the
    truth and the predictions has no F1 and is left out (its per-class F1 is None)."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    with warnings.catch_warnings():
        # Degenerate inputs (one label only) are reported as None below, not warned about.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        _, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=list(STAGES), zero_division=np.nan
        )
        kappa = cohen_kappa_score(y_true, y_pred)
    confusion = confusion_matrix(y_true, y_pred, labels=list(PRED_LABELS))[: len(STAGES)]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": _nanmean(f1),
        "macro_recall": _nanmean(recall),
        "kappa": _none_if_nan(kappa),
        "per_class_f1": {s: _none_if_nan(v) for s, v in zip(STAGES, f1, strict=True)},
        "confusion": confusion.tolist(),
    }


def _nanmean(values: np.ndarray) -> float | None:
    return None if np.all(np.isnan(values)) else float(np.nanmean(values))


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1, macro recall and κ of (stacks of) 5 x 6 confusion matrices, with the
    conventions of :func:`classification_metrics` (vectorised for the bootstrap)."""
    c = np.asarray(confusion, dtype=float)
    k = len(STAGES)
    n = c.sum(axis=(-2, -1))
    tp = np.diagonal(c[..., :k], axis1=-2, axis2=-1)
    true_counts = c.sum(axis=-1)
    pred_counts = c.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = true_counts + pred_counts[..., :k]
        f1 = np.where(denominator > 0, 2 * tp / denominator, np.nan)
        recall = np.where(true_counts > 0, tp / true_counts, np.nan)
        observed = tp.sum(axis=-1) / n
        expected = (true_counts * pred_counts[..., :k]).sum(axis=-1) / n**2
        kappa = (observed - expected) / (1 - expected)
        macro_f1 = np.nanmean(f1, axis=-1)
        macro_recall = np.nanmean(recall, axis=-1)
    return {
        "accuracy": observed,
        "macro_f1": macro_f1,
        "macro_recall": macro_recall,
        "kappa": kappa,
    }


def subject_confusions(
    y_true: Sequence[str], y_pred: Sequence[str | None], subjects: Sequence
) -> np.ndarray:
    """One 5 x 6 confusion matrix per subject (in sorted subject order)."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    subjects = np.asarray(subjects)
    if len(subjects) != len(y_true):
        raise MetricsError(f"{len(subjects)} subject ids for {len(y_true)} epochs")
    _, subject_index = np.unique(subjects, return_inverse=True)
    pred_order = {label: i for i, label in enumerate(PRED_LABELS)}
    pred_index = np.array([pred_order[p] for p in y_pred])
    stage_order = {label: i for i, label in enumerate(STAGES)}
    true_index = np.array([stage_order[t] for t in y_true])
    confusions = np.zeros((subject_index.max() + 1, len(STAGES), len(PRED_LABELS)), dtype=int)
    np.add.at(confusions, (subject_index, true_index, pred_index), 1)
    return confusions


def bootstrap_ci(
    y_true: Sequence[str],
    y_pred: Sequence[str | None],
    subjects: Sequence,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float | None]]:
    """Percentile intervals of the summary metrics, resampling whole subjects with replacement
    (epochs of one night are not independent). With fewer than two subjects there is nothing to
    resample and every bound is None."""
    confusions = subject_confusions(y_true, y_pred, subjects)
    n_subjects = len(confusions)
    if n_subjects < 2:
        return {name: [None, None] for name in SUMMARY_METRICS}
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_subjects, np.full(n_subjects, 1 / n_subjects), size=n_boot)
    resampled = np.einsum("bs,sij->bij", draws, confusions)
    values = metrics_from_confusion(resampled)
    tail = 100 * (1 - level) / 2
    intervals = {}
    for name in SUMMARY_METRICS:
        finite = values[name][np.isfinite(values[name])]
        if finite.size == 0:
            intervals[name] = [None, None]
        else:
            low, high = np.percentile(finite, [tail, 100 - tail])
            intervals[name] = [float(low), float(high)]
    return intervals


def evaluate(
    y_true: Sequence[str],
    answers: Sequence[str | None],
    subjects: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Parse raw answers and score them: ``n``, ``invalid``, ``parse_rate`` and ``metrics``
    (with ``ci95`` from a subject bootstrap when ``subjects`` are given)."""
    y_pred = predictions(answers)
    metrics = classification_metrics(y_true, y_pred)
    if subjects is not None:
        metrics["ci95"] = bootstrap_ci(y_true, y_pred, subjects, n_boot=n_boot, seed=seed)
    invalid = sum(p == INVALID for p in y_pred)
    return {
        "n": len(y_pred),
        "invalid": invalid,
        "parse_rate": 1 - invalid / len(y_pred),
        "metrics": metrics,
    }


def kappa_text(kappas: pd.Series) -> str:
    """κ per group (the index: centers or datasets) as the book writes it:
    "0.71 (DCSM), 0.65 (SHHS) and 0.60 (ISRUC)"."""
    parts = [f"{kappa:.2f} ({str(group).upper()})" for group, kappa in kappas.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def result_record(
    *,
    dataset: str,
    modality: str,
    prompt: str,
    model: str,
    backend: str,
    model_id: str,
    data: str,
    evaluation: dict,
    manifest_hash: str,
    prompt_hash: str,
    decoding: dict,
) -> dict:
    """One run's record (see :func:`write_result`); ``evaluation`` comes from :func:`evaluate`."""
    if data not in DATA_KINDS:
        raise MetricsError(f"data must be one of {DATA_KINDS}, got {data!r}")
    if modality not in MODALITIES:
        raise MetricsError(f"modality must be one of {MODALITIES}, got {modality!r}")
    missing = {"n", "invalid", "metrics"} - set(evaluation)
    if missing:
        raise MetricsError(f"evaluation lacks {sorted(missing)}: build it with evaluate()")
    return {
        "dataset": dataset,
        "modality": modality,
        "prompt": prompt,
        "model": model,
        "backend": backend,
        "model_id": model_id,
        "data": data,
        "n": evaluation["n"],
        "invalid": evaluation["invalid"],
        "metrics": evaluation["metrics"],
        "manifest_hash": manifest_hash,
        "prompt_hash": prompt_hash,
        "decoding": decoding,
        **provenance(),
    }


def provenance() -> dict:
    """When a record was made, by which library version and dependency lock (every record,
    a run's or a summary's, carries these)."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "library_version": sleepvlm.__version__,
        "lock": lock_hash(),
    }


#: Field naming what a summary record (not a run's staging scores) summarises, e.g.
#: ``"faithfulness"``: readers of staging records pass over records that carry it.
SUMMARY_FIELD = "summary"
#: Field of a faithfulness summary whose answers were cut to the evidence items the model was
#: sure of: the least token probability kept (absent: the answers as written).
MIN_CLAIM_CONFIDENCE = "min_claim_confidence"
#: Field of a faithfulness summary whose answers were decoded contrastively (the label of its
#: sleepvlm.explain.contrast.Contrast; absent: greedy decoding).
CONTRAST = "contrast"
#: Field of a faithfulness summary whose answers were cut to the evidence items a probe on the
#: model's own vision tower (its image tokens or patch states) supports
#: (sleepvlm.explain.perception.EventProbe): the least support kept.
MIN_PROBE_SUPPORT = "min_probe_support"
#: Field of a faithfulness summary whose answers' cited times were guided by that probe as
#: they were decoded (sleepvlm.explain.guidance.ProbeGuidance): the guidance's weight.
PROBE_GUIDANCE = "probe_guidance"
#: Field of a faithfulness summary whose answers' cited kinds of event were guided by that probe
#: too (sleepvlm.explain.guidance.GuidedKinds): the kinds' weight.
KIND_GUIDANCE = "kind_guidance"
#: Field of a faithfulness summary whose answers give the stages read over each night from the
#: model's own stage probabilities (sleepvlm.explain.night_stages): how they were read ("hmm").
NIGHT_STAGES = "night_stages"
#: Fields of a summary record that tell apart summaries of one run's answers read or decoded
#: in different ways; each is in the file name.
SUMMARY_VARIANTS: tuple[str, ...] = (
    MIN_CLAIM_CONFIDENCE,
    CONTRAST,
    PROBE_GUIDANCE,
    MIN_PROBE_SUPPORT,
    NIGHT_STAGES,
    KIND_GUIDANCE,
)


def point_value(value):
    """A summary metric's point value: the mean of an entry that carries its interval
    (``{"mean": ..., "ci95": [...]}``), else the value as it is."""
    return value["mean"] if isinstance(value, dict) and "mean" in value else value


def is_summary(record: dict) -> bool:
    """Whether ``record`` is a summary record (:data:`SUMMARY_FIELD`), not a run's scores."""
    return bool(record.get(SUMMARY_FIELD))


def _file_name(record: dict) -> str:
    parts = [record[SUMMARY_FIELD]] if is_summary(record) else []
    parts += [record[k] for k in ("dataset", "modality", "model", "prompt")]
    parts.append(record["manifest_hash"][:8])
    # A summary of the same run's answers cut or decoded another way (e.g. a faithfulness
    # record's min_claim_confidence) is another file.
    parts += [f"{k}-{_variant(record[k])}" for k in SUMMARY_VARIANTS if record.get(k) is not None]
    return "__".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)) for p in parts) + ".json"


def _variant(value) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def write_result(record: dict, folder: str | Path = "results", name: str | None = None) -> Path:
    """Write ``record`` as ``<dataset>__<modality>__<model>__<prompt>__<manifest>.json``, or as
    ``name`` when given (replacing the same run's earlier file); anything secret-looking is
    redacted."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or _file_name(record))
    text = redact(json.dumps(record, indent=2, sort_keys=True, allow_nan=False))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _flatten(record: dict) -> dict:
    metrics = record["metrics"]
    row = {k: v for k, v in record.items() if k not in ("metrics", "decoding")}
    row["parse_rate"] = 1 - record["invalid"] / record["n"] if record["n"] else None
    row["temperature"] = record["decoding"].get("temperature")
    for name in SUMMARY_METRICS:
        row[name] = metrics[name]
        low, high = metrics.get("ci95", {}).get(name, [None, None])
        row[f"{name}_lo"], row[f"{name}_hi"] = low, high
    for stage in STAGES:
        row[f"f1_{stage}"] = metrics["per_class_f1"][stage]
    row["confusion"] = metrics["confusion"]
    return row


def read_results(folder: str | Path = "results") -> pd.DataFrame:
    """Every run's record in ``folder`` as one row (metrics, intervals ``<metric>_lo/_hi``,
    per-class ``f1_<stage>``, ``parse_rate``), sorted by dataset, modality and model; summary
    records (:func:`is_summary`) are not runs and are passed over."""
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(record, dict) and is_summary(record):
                continue
            rows.append({**_flatten(record), "file": path.name})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CorruptFileError(
                f"{path} is not a result record ({type(err).__name__}: {err}); rewrite it with "
                "write_result or remove it"
            ) from err
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values(["dataset", "modality", "model"], ignore_index=True)
