"""A transparent rule-based stager: the AASM rules of :mod:`.table`, read off the per-epoch
evidence of :func:`~sleepvlm.rules.evidence.detect_all`, applied epoch by epoch with the
neighbouring-epoch context the manual asks for (N2 and R continuation, their end at an arousal,
the arousal rule's 10 s of prior sleep, major body movements scored from their neighbours).

Every epoch's stage comes with the IDs of the rules that decided it and the detected events
(with times) behind them, so each decision can be traced back to a line of the rule table.
Rules that cannot be evaluated (a missing, flat or too slowly sampled channel) are listed per
epoch; the stager then decides from what is left, down to the EEG alone.

Order of precedence in one epoch (the first that applies wins):

========================================================  ======  ==============================
evidence                                                  stage   rules
========================================================  ======  ==============================
major body movement                                       (*)     major_body_movement
alpha over more than half of the epoch                    W       W.alpha
blinks or REMs with high chin tone (no EMG: blinks)       W       W.eyes
slow waves fill >= 20 % of the epoch                      N3      N3.sw20
REMs + low chin (no EMG: REMs + LAMF; no EOG: sawtooth)   R       R.rem, R.atonia, ...
spindle / K complex (first half, or previous last half)   N2      N2.spindle, N2.kcomplex
after R: LAMF, low chin, no spindle or K complex          R       R.cont (else R.arousal_end)
EEG not slowed (alpha + beta >= theta), chin not atonic   W       W.fast
after N2: an arousal                                      N1      N2.arousal_end, arousal (**)
after N2: no spindle, K complex, arousal or movement      N2      N2.cont
after an arousal ended N2                                 N1      N2.arousal_end
LAMF, vertex waves or slow eye movements                  N1      N1.lamf, N1.vertex, N1.sem
nothing else: alpha vs LAMF share (chin breaks a tie)     W / N1  epoch.majority
========================================================  ======  ==============================

(*) W if any alpha shows or a neighbour is W, else the next epoch's stage. (**) An arousal
counts only after sleep (its rule asks for 10 s of stable sleep before it); when it starts in
the epoch's second half, most of the epoch is still N2 and it is scored N2 (epoch.majority),
the next epochs N1. Eye signs come before slow waves because blinks and eye movements do not
happen in N3: slow waves that come with them on a frontal EEG are eye artifacts. W.fast reads
eyes-open wake without an EOG: the alpha rhythm is blocked, but the EEG keeps its alpha and beta
(N1 needs the background to slow into theta). It comes after the marks of sleep and after R's
continuation (REM EEG is not slowed either; its atonic chin tells it apart), and a K complex
does not count in an epoch it holds (see :func:`~sleepvlm.rules.evidence.detect_all`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sleepvlm.data.records import EPOCH_S, EVENT_COLUMNS, ROLES, STAGES, DataError, Recording
from sleepvlm.rules.evidence import Detection, detect_all, rule_event_kinds
from sleepvlm.rules.table import DEFAULT_RULES, RuleSet
from sleepvlm.signal import Epochs

#: Columns of a staged night, one row per epoch.
STAGED_COLUMNS: tuple[str, ...] = ("epoch", "onset", "stage", "rules", "evidence", "not_evaluable")
#: Stages after which an arousal counts (the arousal rule asks for 10 s of stable sleep first).
_SLEEP = ("N1", "N2", "N3", "REM")
_N2_MARKS = ("N2.spindle", "N2.kcomplex")
_N1_SIGNS = ("N1.lamf", "N1.vertex", "N1.sem")


@dataclass
class _Context:
    """What the epochs before this one leave behind."""

    previous: str | None = None  # stage of the previous epoch; None after a gap or at the start
    n2_ended: bool = False  # an arousal ended N2 and no spindle or K complex has come since


def _met(row: pd.Series, rule_id: str) -> bool:
    value = row.get(rule_id, pd.NA)
    return value is not pd.NA and bool(value)


def _unknown(row: pd.Series, rule_id: str) -> bool:
    return row.get(rule_id, pd.NA) is pd.NA


def _rem(row: pd.Series) -> list[str] | None:
    """Rules that make this epoch R, or None: rapid eye movements with a low chin tone; with
    the EMG not evaluable, REMs over LAMF; with the EOG not evaluable, sawtooth waves over a
    low chin (or over LAMF when neither can be evaluated)."""
    eyes_known, chin_known = not _unknown(row, "R.rem"), not _unknown(row, "R.atonia")
    eye_sign = "R.rem" if eyes_known else "R.sawtooth"
    background = "R.atonia" if chin_known else "N1.lamf"
    if not (_met(row, eye_sign) and _met(row, background)):
        return None
    fired = [eye_sign, background]
    return fired + [r for r in ("R.sawtooth", "N1.lamf") if r not in fired and _met(row, r)]


def _fallback(values: pd.Series, row: pd.Series) -> str:
    """W or N1 by the larger share of alpha or LAMF background; a tie goes to W on a high or
    unknown chin tone, to N1 on a low one."""
    alpha = np.nan_to_num(values.get("alpha_fraction", 0.0))
    lamf = np.nan_to_num(values.get("lamf_fraction", 0.0))
    if alpha != lamf:
        return "W" if alpha > lamf else "N1"
    return "N1" if _met(row, "R.atonia") else "W"


def _decide(
    row: pd.Series, values: pd.Series, ctx: _Context, arousal_at: float | None
) -> tuple[str, list[str]]:
    """Stage of one epoch and the rules that decided it."""
    if _met(row, "major_body_movement"):
        return "MOVE", ["major_body_movement"]
    if _met(row, "W.alpha"):
        return "W", ["W.alpha"]
    if _met(row, "W.eyes"):  # without chin EMG: blinks alone (Detection.read_in_part)
        return "W", ["W.eyes"]
    if _met(row, "N3.sw20"):
        return "N3", ["N3.sw20"]
    rem = _rem(row)
    if rem:
        return "REM", rem
    marks = [r for r in _N2_MARKS if _met(row, r)]
    if marks:
        return "N2", marks
    ended: list[str] = []
    if ctx.previous == "REM":
        if _met(row, "R.cont"):
            return "REM", ["R.cont"]
        ended = [r for r in ("R.arousal_end",) if _met(row, r)]
    # an EEG that is not slowed ends N2 and stops N1's signs: vertex-like waves and slow eye
    # movements in it are the eye artifacts of someone awake with open eyes
    if _met(row, "W.fast"):
        return "W", ended + ["W.fast"]
    # an arousal counts after stable sleep only, hence the previous stage
    arousal = arousal_at is not None and ctx.previous in _SLEEP
    if ctx.previous == "N2" and not ctx.n2_ended:
        if arousal:
            if arousal_at >= EPOCH_S / 2:
                # N2.cont is not cited when it could not be read (no movement detector)
                kept_on = [r for r in ("N2.cont",) if not _unknown(row, r)]
                return "N2", [*kept_on, "arousal", "epoch.majority"]
            return "N1", ["N2.arousal_end", "arousal"]
        if _met(row, "N2.cont"):
            return "N2", ["N2.cont"]
    if ctx.n2_ended and ctx.previous in _SLEEP:
        return "N1", ["N2.arousal_end"]
    signs = [r for r in _N1_SIGNS if _met(row, r)]
    if signs:
        return "N1", ended + signs
    return _fallback(values, row), ended + ["epoch.majority"]


def _advance(ctx: _Context, stage: str, rules: list[str]) -> _Context:
    """The context the next epoch sees: N2 stays ended after an arousal until a spindle or a
    K complex (or any stage other than N1) comes."""
    if "N2.arousal_end" in rules or (stage == "N2" and "arousal" in rules):
        n2_ended = True
    else:
        n2_ended = ctx.n2_ended and stage == "N1"
    return _Context(previous=stage, n2_ended=n2_ended)


def _resolve_movements(stages: list[str], epochs: pd.DataFrame) -> list[str]:
    """Major body movements: W if alpha shows or a neighbour is W, else the next epoch's stage
    (the previous one's at the end of the night)."""
    out = list(stages)
    alpha = epochs["alpha_fraction"].fillna(0).to_numpy()
    for i in range(len(out) - 1, -1, -1):
        if out[i] != "MOVE":
            continue
        before = out[i - 1] if i > 0 else None
        after = out[i + 1] if i + 1 < len(out) else None
        if alpha[i] > 0 or "W" in (before, after):
            out[i] = "W"
        else:
            out[i] = after or before or "W"
    return out


class _EvidenceIndex:
    """The events behind each rule, as arrays sorted by onset, so that one epoch's evidence is
    two binary searches instead of a scan of the night's events table. Windows as in
    :meth:`Detection.evidence`: events overlapping the epoch; for the spindle and K-complex
    rules, events starting in the epoch's first half or the previous epoch's last half."""

    def __init__(self, detection: Detection) -> None:
        self.events = detection.events
        self.epoch_onset = detection.epochs["onset"]
        self._arrays: dict[str, tuple] = {}

    def _for_rule(self, rule_id: str) -> tuple:
        if rule_id not in self._arrays:
            kinds = rule_event_kinds(rule_id)
            ev = self.events[self.events["kind"].isin(kinds)].sort_values("onset", kind="stable")
            columns = [ev[c].to_numpy() for c in EVENT_COLUMNS]
            longest = float(ev["duration"].max()) if len(ev) else 0.0
            self._arrays[rule_id] = (columns, longest)
        return self._arrays[rule_id]

    def rows(self, epoch: int, rule_id: str) -> list[tuple]:
        """(kind, channel, onset, duration, amplitude) of the events behind ``rule_id``."""
        (kind, channel, onset, duration, amplitude), longest = self._for_rule(rule_id)
        start = float(self.epoch_onset.loc[epoch])
        if rule_id in _N2_MARKS:
            lo, hi = np.searchsorted(onset, [start - EPOCH_S / 2, start + EPOCH_S / 2])
            picked = np.arange(lo, hi)
        else:
            lo, hi = np.searchsorted(onset, [start - longest, start + EPOCH_S])
            picked = np.arange(lo, hi)
            picked = picked[onset[picked] + duration[picked] > start]
        return [(kind[i], channel[i], onset[i], duration[i], amplitude[i]) for i in picked.tolist()]

    def arousal_onset(self, epoch: int) -> float | None:
        """Onset (s into the epoch) of the first arousal detected in ``epoch``."""
        rows = self.rows(epoch, "arousal")
        start = float(self.epoch_onset.loc[epoch])
        return max(0.0, min(r[2] for r in rows) - start) if rows else None

    def evidence(self, epoch: int, rules: Iterable[str]) -> list[dict]:
        """Events behind the rules that fired, each event once: ``rule`` holds the IDs of every
        rule it supports, ';'-joined in the order of ``rules`` (an arousal can support both
        N2.arousal_end and arousal)."""
        cited: dict[tuple, list[str]] = {}
        for rule_id in rules:
            if rule_id == "epoch.majority":
                continue
            for kind, channel, onset, duration, amplitude in self.rows(epoch, rule_id):
                event = (
                    str(kind),
                    str(channel),
                    round(float(onset), 3),
                    round(float(duration), 3),
                    round(float(amplitude), 1),
                )
                cited.setdefault(event, []).append(rule_id)
        fields = ("kind", "channel", "onset", "duration", "amplitude")
        return [
            {"rule": ";".join(dict.fromkeys(ids)), **dict(zip(fields, event, strict=True))}
            for event, ids in cited.items()
        ]


def stage_detection(detection: Detection) -> pd.DataFrame:
    """Stage every epoch of a night from its detector evidence.

    One row per epoch (:data:`STAGED_COLUMNS`): ``stage`` (one of STAGES), ``rules`` (the IDs
    that decided it, list), ``evidence`` (list of events ``{rule, kind, channel, onset,
    duration, amplitude}``, onset in s from the recording start, each event once, ``rule``
    the ';'-joined IDs it supports) and ``not_evaluable`` (rule IDs that could not be
    evaluated in this epoch; none of them is among ``rules``). Epochs whose numbers are not
    consecutive (left out in between) start afresh: continuation needs the epoch just before."""
    criteria, values = detection.criteria, detection.epochs
    ids = criteria.index.to_numpy()
    index = _EvidenceIndex(detection)
    ctx, stages, decided, evidence = _Context(), [], [], []
    for k, epoch in enumerate(ids):
        if k and ids[k - 1] != epoch - 1:
            ctx = _Context()
        row = criteria.loc[epoch]
        arousal_at = index.arousal_onset(epoch) if _met(row, "arousal") else None
        stage, rules = _decide(row, values.loc[epoch], ctx, arousal_at)
        ctx = _advance(ctx, stage, rules)
        stages.append(stage)
        decided.append(rules)
        evidence.append(index.evidence(epoch, rules))
    unknown = criteria.isna().to_numpy()
    columns = np.asarray(criteria.columns)
    return pd.DataFrame(
        {
            "epoch": ids.astype(np.int64),
            "onset": values["onset"].to_numpy(float),
            "stage": _resolve_movements(stages, values),
            "rules": decided,
            "evidence": evidence,
            "not_evaluable": [columns[row].tolist() for row in unknown],
        },
        columns=list(STAGED_COLUMNS),
    )


def stage(
    source: Recording | Epochs, roles: tuple[str, ...] = ROLES, rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """Run the detectors on a night (see :func:`detect_all`) and stage it."""
    return stage_detection(detect_all(source, roles=roles, rules=rules))


def hypnogram_frame(staged: pd.DataFrame) -> pd.DataFrame:
    """A staged night as flat text columns: rules and not-evaluable rules ';'-joined, evidence
    as a JSON list."""
    out = staged.copy()
    out["rules"] = out["rules"].map(";".join)
    out["not_evaluable"] = out["not_evaluable"].map(";".join)
    out["evidence"] = out["evidence"].map(json.dumps)
    return out


def write_hypnogram(staged: pd.DataFrame, path: str | Path) -> Path:
    """Write a staged night as CSV, one row per 30-s epoch (see :func:`hypnogram_frame`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hypnogram_frame(staged).to_csv(path, index=False)
    return path


def rule_usage(staged: pd.DataFrame) -> pd.DataFrame:
    """How often each rule took part in deciding each stage (rules x stages counts)."""
    pairs = staged[["stage", "rules"]].explode("rules")
    table = pd.crosstab(pairs["rules"], pairs["stage"])
    return table.reindex(columns=[s for s in STAGES if s in table.columns], fill_value=0)


def hypnogram_agreement(staged: pd.DataFrame, reference) -> dict:
    """:func:`evaluate` of a staged night against a reference 30-s hypnogram (one label per
    epoch from epoch 0, e.g. a scorer's); epochs the reference leaves unscored (not one of
    STAGES) or does not reach are left out, and ``n`` counts those compared."""
    labels = np.asarray(reference, dtype=object)
    epochs = staged["epoch"].to_numpy(np.int64)
    inside = epochs < len(labels)
    truth = np.full(len(staged), "", dtype=object)
    truth[inside] = labels[epochs[inside]]
    scored = np.isin(truth.astype(str), STAGES)
    if not scored.any():
        raise DataError(
            "no staged epoch has a scored reference label; check that the reference is a 30-s "
            "hypnogram of the same recording, starting at its epoch 0"
        )
    metrics = evaluate(truth[scored], staged["stage"].to_numpy()[scored])
    return {**metrics, "n": int(scored.sum())}


def evaluate(y_true, y_pred) -> dict:
    """Accuracy, macro-F1, macro recall, Cohen's κ, per-class F1 and confusion matrix, as the
    benchmark scores models (:func:`sleepvlm.metrics.classification_metrics`)."""
    from sleepvlm.metrics import classification_metrics

    return classification_metrics(list(y_true), list(y_pred))


# --------------------------------------------------------------------------------------------
# The stager and YASA's pretrained stager on the same held-out nights
# --------------------------------------------------------------------------------------------


def _yasa_labels(rec: Recording, epoch_ids: np.ndarray) -> np.ndarray:
    from sleepvlm.data.realism import yasa_staging_agreement

    predicted = yasa_staging_agreement(rec)["predicted"]
    labels = np.full(len(epoch_ids), "W", dtype=object)
    inside = epoch_ids < len(predicted)
    labels[inside] = predicted[epoch_ids[inside]]
    return labels.astype(str)


def night_predictions(
    rec: Recording, epochs: Epochs, yasa: bool = True, rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """The stager (on the stored 100-Hz epochs) and, with ``yasa``, YASA's pretrained stager
    (on the raw night) for the scored epochs of one night: one row per epoch with the scored
    ``stage``, ``stager`` and ``yasa`` labels, and each method's run time in ``attrs``."""
    start = time.perf_counter()
    staged = stage(epochs, rules=rules)
    seconds = {"stager": time.perf_counter() - start}
    man = epochs.manifest
    out = pd.DataFrame(
        {
            "dataset": man["dataset"].to_numpy(),
            "subject": man["subject"].to_numpy(),
            "night": man["night"].to_numpy(),
            "epoch": man["epoch"].to_numpy(np.int64),
            "stage": man["stage"].to_numpy(str),
            "stager": staged["stage"].to_numpy(str),
        }
    )
    if yasa:
        start = time.perf_counter()
        out["yasa"] = _yasa_labels(rec, out["epoch"].to_numpy())
        seconds["yasa"] = time.perf_counter() - start
    out.attrs["seconds"] = seconds
    return out


def held_out_predictions(
    prepared,
    split: str = "test",
    max_nights: int | None = None,
    yasa: bool = True,
    rules: RuleSet = DEFAULT_RULES,
) -> pd.DataFrame:
    """:func:`night_predictions` for the nights of one split of a prepared dataset
    (:func:`sleepvlm.prepare.prepare_dataset`), in subject order; the first ``max_nights``."""
    from sleepvlm.data import formats

    nights = (
        prepared.manifest.loc[prepared.manifest["split"] == split, ["subject", "night"]]
        .drop_duplicates()
        .sort_values(["subject", "night"])
    )
    if max_nights is not None:
        nights = nights.head(max_nights)
    entries = {
        (e["subject"], e["night"]): e for e in formats.discover(prepared.dataset, prepared.source)
    }
    parts, seconds = [], {"stager": 0.0, "yasa": 0.0}
    for subject, night in nights.itertuples(index=False):
        rec = formats.load_entry(entries[(subject, night)]) if yasa else None
        part = night_predictions(
            rec, prepared.store.read_record(subject, night), yasa=yasa, rules=rules
        )
        for method, s in part.attrs["seconds"].items():
            seconds[method] += s
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    out.attrs["seconds"] = seconds
    return out


def agreement_summary(predictions: pd.DataFrame, by: str = "dataset") -> pd.DataFrame:
    """Per group (default: per center) and method: n, accuracy, macro-F1, macro recall, κ and
    per-stage F1 against the scored stages."""
    methods = [m for m in ("stager", "yasa") if m in predictions]
    rows = []
    for group, part in predictions.groupby(by):
        for method in methods:
            m = evaluate(part["stage"], part[method])
            rows.append(
                {
                    by: group,
                    "method": method,
                    "n": len(part),
                    "nights": part.groupby(["subject", "night"]).ngroups,
                    **{k: m[k] for k in ("accuracy", "macro_f1", "macro_recall", "kappa")},
                    **{f"F1 {s}": v for s, v in m["per_class_f1"].items()},
                }
            )
    return pd.DataFrame(rows).set_index([by, "method"])


def yasa_comparison_text(summary: pd.DataFrame) -> str:
    """How the stager compares with YASA per group of :func:`agreement_summary` (κ), and the
    weakest stage (lowest F1) of each, as the book's summary says it."""
    kappa = summary["kappa"].unstack("method")
    behind = [str(g).upper() for g in kappa.index if kappa.loc[g, "stager"] < kappa.loc[g, "yasa"]]
    if len(behind) == len(kappa):
        text = "trails YASA's trained classifier on every center"
    elif not behind:
        text = "matches or beats YASA's trained classifier on every center"
    else:
        text = f"trails YASA's trained classifier on {', '.join(behind)} only"
    f1 = summary[[c for c in summary.columns if c.startswith("F1 ")]].groupby(level="method").mean()
    weakest = {m: row.idxmin()[3:] for m, row in f1.iterrows()}
    if len(set(weakest.values())) == 1:
        return f"{text}; {weakest['stager']} is the weakest stage of both"
    return (
        text + "; the weakest stage is " + " and ".join(f"{s} for {m}" for m, s in weakest.items())
    )
