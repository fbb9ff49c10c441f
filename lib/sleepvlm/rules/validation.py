"""How well the rule detectors find waveforms: event-level precision, recall and F1 against the
simulator's ground truth, agreement and run time against YASA's detectors on the same data
(simulated nights and the real excerpts), and spindle agreement with the two human experts of the
DREAMS Sleep Spindles excerpts (:func:`expert_agreement_table`).

Matching rule (:func:`match_events`): a detected and a true event of the same kind match when
their intervals overlap with an intersection-over-union of at least ``min_iou`` (0.2), or, for
kinds scored by onset (eye movements, whose drawn duration includes the slow return to
baseline that no scorer marks), when their onsets lie within ``onset_tol_s`` (0.3 s). Pairs are
formed one-to-one, best first (highest IoU, or closest onset). True events that do not meet the
AASM definition of their kind (slow waves under 75 µV p2p) are "don't care": a detection that
matches one counts neither as a hit nor as a false alarm, and missing one is no miss. So is an
unmatched detection that overlaps a true event listed in :data:`OVERLAP_DONT_CARE`: movement
artifacts (AASM: stretches hidden by artifact are not scored) and, for slow waves, K complexes
(which the manual counts as slow waves when they meet the slow-wave definition).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import pandas as pd

from sleepvlm.data import dreams
from sleepvlm.data.records import EVENT_COLUMNS, SECOND_EYE, DataError, Recording, empty_events
from sleepvlm.rules import detectors as det
from sleepvlm.rules.table import DEFAULT_RULES, RuleSet

#: How each kind is matched: by IoU (default) or by onset distance.
MATCHING: dict[str, dict[str, float]] = {
    "default": {"min_iou": 0.2},
    "rem": {"onset_tol_s": 0.3},
    "blink": {"onset_tol_s": 0.3},
}


#: True kinds under which an unmatched detection of a kind is neither hit nor false alarm.
OVERLAP_DONT_CARE: dict[str, tuple[str, ...]] = {
    "slow_wave": ("kcomplex", "artifact"),
    "default": ("artifact",),
}


def matching_for(kind: str) -> dict[str, float]:
    return MATCHING.get(kind, MATCHING["default"])


def dont_care(truth: pd.DataFrame, rules: RuleSet = DEFAULT_RULES) -> np.ndarray:
    """True events that fall short of their AASM definition (slow waves under 75 µV)."""
    low_sw = (truth["kind"] == "slow_wave") & (
        truth["amplitude"] < rules.threshold("N3.sw20", "min_ptp_uv")
    )
    return low_sw.to_numpy()


def _candidate_pairs(det_on, det_off, tru_on, tru_off, reach: float):
    """All (detected, true) index pairs whose intervals come within ``reach`` s."""
    order = np.argsort(tru_on)
    tru_on_sorted = tru_on[order]
    longest = float(np.max(tru_off - tru_on)) if len(tru_on) else 0.0
    lo = np.searchsorted(tru_on_sorted, det_on - longest - reach, side="left")
    hi = np.searchsorted(tru_on_sorted, det_off + reach, side="right")
    counts = hi - lo
    d = np.repeat(np.arange(len(det_on)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    t = order[np.repeat(lo, counts) + offsets]
    return d, t


def match_events(
    detected: pd.DataFrame,
    truth: pd.DataFrame,
    min_iou: float = 0.2,
    onset_tol_s: float | None = None,
) -> pd.DataFrame:
    """One-to-one pairs between ``detected`` and ``truth`` rows (positional indices).

    With ``onset_tol_s`` pairs need onsets within that many s (closest first); otherwise an
    interval IoU of at least ``min_iou`` (largest first). Returns columns ``detected``,
    ``truth``, ``iou`` and ``onset_diff`` (detected minus true onset, s)."""
    columns = ["detected", "truth", "iou", "onset_diff"]
    if len(detected) == 0 or len(truth) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in columns}).astype(
            {"detected": int, "truth": int}
        )
    det_on = detected["onset"].to_numpy(float)
    det_off = det_on + detected["duration"].to_numpy(float)
    tru_on = truth["onset"].to_numpy(float)
    tru_off = tru_on + truth["duration"].to_numpy(float)
    reach = onset_tol_s or 0.0
    d, t = _candidate_pairs(det_on, det_off, tru_on, tru_off, reach)
    inter = np.clip(np.minimum(det_off[d], tru_off[t]) - np.maximum(det_on[d], tru_on[t]), 0, None)
    union = np.maximum(det_off[d], tru_off[t]) - np.minimum(det_on[d], tru_on[t])
    iou = inter / np.maximum(union, 1e-9)
    diff = det_on[d] - tru_on[t]
    if onset_tol_s is not None:
        ok, score = np.abs(diff) <= onset_tol_s, -np.abs(diff)
    else:
        ok, score = iou >= min_iou, iou
    d, t, iou, diff, score = d[ok], t[ok], iou[ok], diff[ok], score[ok]
    used_d, used_t, keep = set(), set(), []
    for k in np.argsort(-score, kind="stable"):  # greedy, best pair first
        if d[k] not in used_d and t[k] not in used_t:
            used_d.add(d[k])
            used_t.add(t[k])
            keep.append(k)
    keep = np.array(sorted(keep, key=lambda k: d[k]), dtype=int)
    return pd.DataFrame(
        {"detected": d[keep], "truth": t[keep], "iou": iou[keep], "onset_diff": diff[keep]},
        columns=columns,
    )


@dataclass
class KindScore:
    """Matching outcome of one kind: counts, scores, and the unmatched events themselves."""

    kind: str
    tp: int
    fp: int
    fn: int
    ignored: int
    missed: pd.DataFrame
    false_alarms: pd.DataFrame

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else float("nan")

    def row(self) -> dict[str, float | int | str]:
        return {
            "kind": self.kind,
            "n_truth": self.tp + self.fn,
            "n_detected": self.tp + self.fp,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "ignored": self.ignored,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def score_kind(
    detected: pd.DataFrame, truth: pd.DataFrame, kind: str, rules: RuleSet = DEFAULT_RULES
) -> KindScore:
    """Match the ``kind`` rows of both tables (see the module docstring for the rule)."""
    d = detected[detected["kind"] == kind].reset_index(drop=True)
    t = truth[truth["kind"] == kind].reset_index(drop=True)
    pairs = match_events(d, t, **matching_for(kind))
    ignore = dont_care(t, rules=rules)
    hit = ~ignore[pairs["truth"].to_numpy(int)]
    matched_d = np.zeros(len(d), bool)
    matched_d[pairs["detected"].to_numpy(int)] = True
    matched_t = np.zeros(len(t), bool)
    matched_t[pairs["truth"].to_numpy(int)] = True
    excused = ~matched_d & _overlaps(d, truth[truth["kind"].isin(_overlap_kinds(kind))])
    return KindScore(
        kind=kind,
        tp=int(hit.sum()),
        fp=int((~matched_d & ~excused).sum()),
        fn=int((~matched_t & ~ignore).sum()),
        ignored=int((~hit).sum() + excused.sum()),
        missed=t[~matched_t & ~ignore],
        false_alarms=d[~matched_d & ~excused],
    )


def _overlap_kinds(kind: str) -> tuple[str, ...]:
    return OVERLAP_DONT_CARE.get(kind, OVERLAP_DONT_CARE["default"])


def _overlaps(events: pd.DataFrame, regions: pd.DataFrame) -> np.ndarray:
    """Whether each event's interval overlaps any of ``regions``."""
    if len(events) == 0 or len(regions) == 0:
        return np.zeros(len(events), dtype=bool)
    on = events["onset"].to_numpy(float)
    off = on + events["duration"].to_numpy(float)
    r_on = regions["onset"].to_numpy(float)
    r_off = r_on + regions["duration"].to_numpy(float)
    order = np.argsort(r_on)
    r_on, r_off = r_on[order], r_off[order]
    # the regions starting before each event's end; one of them must end after its start
    latest_end = np.maximum.accumulate(r_off)
    k = np.searchsorted(r_on, off, side="left") - 1
    return (k >= 0) & (latest_end[np.clip(k, 0, None)] > on)


def event_scores(
    detected: pd.DataFrame, truth: pd.DataFrame, kinds, rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """Precision/recall/F1 per kind (one row each)."""
    return pd.DataFrame([score_kind(detected, truth, k, rules=rules).row() for k in kinds])


# --------------------------------------------------------------------------------------------
# Our detectors and YASA's on the same channels
# --------------------------------------------------------------------------------------------

#: The kinds compared with YASA, and the role they are read on.
YASA_KINDS: dict[str, str] = {"spindle": "eeg", "slow_wave": "eeg", "rem": "eog"}


def _timed(fn: Callable[[], pd.DataFrame]) -> tuple[pd.DataFrame, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def ours(
    kind: str,
    x: np.ndarray,
    sfreq: float,
    channel: str,
    other: np.ndarray | None = None,
    rules: RuleSet = DEFAULT_RULES,
) -> pd.DataFrame:
    """Our detector of ``kind`` on one channel (eye movements without an EEG reference, as
    YASA's REM detector has none either; ``other``: the second eye, same rate)."""
    if kind == "spindle":
        return det.detect_spindles(x, sfreq, channel, rules=rules)
    if kind == "slow_wave":
        return det.detect_slow_waves(x, sfreq, channel, rules=rules)
    if kind == "kcomplex":
        return det.detect_kcomplexes(x, sfreq, channel, rules=rules)
    moves = det.detect_eye_movements(x, sfreq, channel, other=other, rules=rules)
    return moves[moves["kind"] == "rem"].reset_index(drop=True)


def yasa_events(
    kind: str, x: np.ndarray, sfreq: float, channel: str, other: np.ndarray | None = None
) -> pd.DataFrame:
    """YASA's detector of ``kind`` with its defaults, as an events table.

    YASA's REM detector needs two EOG channels (LOC ``x``, ROC ``other``) and keeps
    out-of-phase deflections; with one EOG we give it the channel and its mirror image, i.e.
    perfectly conjugate eyes. Slow-wave amplitude is YASA's ``PTP``; spindle amplitude its
    ``Amplitude`` (p2p of the detrended signal); REM amplitude the absolute filtered value at
    the peak."""
    import yasa  # imported here: slow to import, only needed for this comparison

    data = np.asarray(x, dtype=np.float64)
    if kind == "spindle":
        res = yasa.spindles_detect(data, sfreq, ch_names=[channel], verbose="error")
        cols = ("Start", "Duration", "Amplitude")
    elif kind == "slow_wave":
        res = yasa.sw_detect(data, sfreq, ch_names=[channel], verbose="error")
        cols = ("Start", "Duration", "PTP")
    else:
        second = -data if other is None else np.asarray(other, dtype=np.float64)
        res = yasa.rem_detect(data, second, sfreq, verbose="error")
        cols = ("Start", "Duration", "LOCAbsValPeak")
    if res is None:
        return det.events_frame(kind, channel, [], [], [])
    table = res.summary()
    return det.events_frame(kind, channel, table[cols[0]], table[cols[1]], table[cols[2]])[
        list(EVENT_COLUMNS)
    ]


def compare_with_yasa(
    rec: Recording, kinds=tuple(YASA_KINDS), rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """Ours vs YASA on one simulated night: F1 against the ground truth and wall time. Both
    read both eyes where the night has a second (``eyes``: 2), one eye otherwise (``eyes``: 1;
    YASA then gets the channel's mirror image).

    One row per (kind, method) with precision, recall, F1, counts, ``eyes`` and ``seconds``."""
    rows = []
    for kind in kinds:
        role = YASA_KINDS[kind]
        channel = rec.role(role)
        x, sfreq = rec.signals[channel], rec.sfreq[channel]
        other = second_eye(rec, sfreq) if role == "eog" else None
        eyes = (1 if other is None else 2) if role == "eog" else None
        for method, fn in (("ours", partial(ours, rules=rules)), ("yasa", yasa_events)):
            events, seconds = _timed(partial(fn, kind, x, sfreq, channel, other))
            row = score_kind(events, rec.events, kind, rules=rules).row()
            rows.append(
                {"record": rec.label, "method": method, **row, "eyes": eyes, "seconds": seconds}
            )
    return pd.DataFrame(rows)


def rem_by_eyes(rec: Recording, rules: RuleSet = DEFAULT_RULES) -> pd.DataFrame:
    """Rapid eye movements of a two-eye night read by ours and YASA's detectors from both eyes
    and from the first alone (:func:`compare_with_yasa` rows of kind ``rem``, ``eyes`` 2 and 1):
    what the second eye is worth."""
    one_eye = replace(rec, roles={r: c for r, c in rec.roles.items() if r != SECOND_EYE})
    both = compare_with_yasa(rec, kinds=("rem",), rules=rules) if SECOND_EYE in rec.roles else None
    return pd.concat(
        [both, compare_with_yasa(one_eye, kinds=("rem",), rules=rules)], ignore_index=True
    )


def rem_by_eyes_table(rows: list[pd.DataFrame]) -> pd.DataFrame:
    """F1 per center (the rows' ``center`` column), number of eyes read and method, from
    :func:`rem_by_eyes` rows; empty when there are none (a real dataset: no ground truth)."""
    if not rows:
        return pd.DataFrame()
    return pd.concat(rows).pivot_table(index=["center", "eyes"], columns="method", values="f1")


def two_eye_f1_range(table: pd.DataFrame, method: str) -> str:
    """The lowest and highest two-eye F1 of ``method`` in a :func:`rem_by_eyes_table`."""
    if table.empty or 2 not in table.index.get_level_values("eyes"):
        return "not measured (no two-eye night with ground truth in this build)"
    f1 = table.xs(2, level="eyes")[method]
    return f"{f1.min():.2f}–{f1.max():.2f}"


def second_eye(rec: Recording, sfreq: float) -> np.ndarray | None:
    """The night's second EOG (ROC) where it has one at the first eye's rate ``sfreq``."""
    channel = rec.roles.get(SECOND_EYE)
    if channel is None or rec.sfreq[channel] != sfreq:
        return None
    return rec.signals[channel]


#: What a night's detections are scored against, as the book names it.
TRUTH_REFERENCE = "the ground truth drawn into the simulated nights"
YASA_REFERENCE = (
    "YASA's detectors with their defaults (a real recording has no ground-truth events; "
    "only spindles, slow waves and rapid eye movements are compared)"
)


def reference_events(rec: Recording, kinds=tuple(YASA_KINDS)) -> tuple[pd.DataFrame, str]:
    """The events a night's detections are scored against, and the phrase that names them:
    on a simulated night the ground truth drawn into it; on a real one, which has none, the
    events of YASA's detectors of ``kinds`` (on the roles the night has)."""
    if rec.simulated:
        return rec.events, TRUTH_REFERENCE
    frames = [empty_events()]
    for kind in kinds:
        role = YASA_KINDS[kind]
        if role in rec.roles:
            channel = rec.roles[role]
            x, sfreq = rec.signals[channel], rec.sfreq[channel]
            other = second_eye(rec, sfreq) if role == "eog" else None  # YASA reads both eyes
            frames.append(yasa_events(kind, x, sfreq, channel, other))
    return pd.concat(frames, ignore_index=True), YASA_REFERENCE


def pooled_counts(scores: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`event_scores` (several nights) pooled per kind: counts summed, then
    precision, recall and F1 of the sums (not the mean of per-night scores, which would weigh
    a night with two events like one with two hundred)."""
    counts = scores.groupby("kind")[["n_truth", "n_detected", "tp", "fp", "fn"]].sum()
    counts = counts.rename(columns={"n_truth": "n_reference"})  # the truth, or YASA's events
    with np.errstate(invalid="ignore", divide="ignore"):  # a kind none found: NaN, not 0
        counts["precision"] = counts["tp"] / (counts["tp"] + counts["fp"])
        counts["recall"] = counts["tp"] / (counts["tp"] + counts["fn"])
        counts["f1"] = 2 * counts["tp"] / (2 * counts["tp"] + counts["fp"] + counts["fn"])
    return counts


def dreams_rem_agreement(
    excerpt: int = 3, loc: str = "EOG1-A1", roc: str = "EOG2-A1", rules: RuleSet = DEFAULT_RULES
) -> dict:
    """Rapid eye movements on a DREAMS PSG's two real EOG channels (excerpt 3: 30 min of W,
    N1, N2 and N3, no REM sleep), over the whole excerpt: how many ours finds with both eyes
    and with ``loc`` alone (the fallback), how many YASA's ``rem_detect`` finds fed both eyes,
    and our two-eye and one-eye events scored against YASA's (:func:`score_kind`, matched by
    onset: ``f1_vs_yasa``, ``precision_vs_yasa``, ``recall_vs_yasa`` of each)."""
    from sleepvlm.data.edf import open_edf, read_channels

    path = dreams.dreams_psg(excerpt)
    signals, rates = read_channels(open_edf(path), [loc, roc], path)
    if rates[loc] != rates[roc]:
        raise DataError(f"{path}: {loc} and {roc} are sampled at different rates")
    x, other, sfreq = signals[loc], signals[roc], rates[loc]
    reference = yasa_events("rem", x, sfreq, loc, other)
    out: dict = {"yasa": len(reference)}
    for name, second in (("both eyes", other), ("one eye", None)):
        found = ours("rem", x, sfreq, loc, second, rules=rules)
        score = score_kind(found, reference, "rem", rules=rules).row()
        out[name] = {
            "n": len(found),
            **{f"{k}_vs_yasa": score[k] for k in ("precision", "recall", "f1")},
        }
    return out


def agreement(
    kind: str, x: np.ndarray, sfreq: float, channel: str, rules: RuleSet = DEFAULT_RULES
) -> dict:
    """Ours vs YASA on one channel without ground truth (the real excerpts).

    Returns a summary row (counts, matched pairs, F1 of ours taking YASA as reference, times)
    and the events each found that the other did not."""
    mine, t_mine = _timed(lambda: ours(kind, x, sfreq, channel, rules=rules))
    theirs, t_theirs = _timed(lambda: yasa_events(kind, x, sfreq, channel))
    result = score_kind(mine, theirs, kind, rules=rules)
    return {
        "summary": {
            "kind": kind,
            "channel": channel,
            "n_ours": len(mine),
            "n_yasa": len(theirs),
            "matched": result.tp,
            "f1_vs_yasa": result.f1,
            "seconds_ours": t_mine,
            "seconds_yasa": t_theirs,
        },
        "only_ours": result.false_alarms,
        "only_yasa": result.missed,
    }


# --------------------------------------------------------------------------------------------
# Against the two experts of the DREAMS Sleep Spindles database
# --------------------------------------------------------------------------------------------

#: Parts of an excerpt the agreement is measured on: all of it, or its N2 and N3 steps.
REGIONS: dict[str, tuple[str, ...] | None] = {"all": None, "N2N3": ("N2", "N3")}
#: Spindle detectors compared with the experts: name → function of (kind, x, sfreq, channel).
SPINDLE_METHODS: dict[str, Callable[..., pd.DataFrame]] = {"ours": ours, "yasa": yasa_events}
#: References each method is scored against: expert 1, expert 2, and their union.
REFERENCES: tuple[str, ...] = ("expert1", "expert2", "union")


def union_of_experts(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The events of both tables, those that overlap (also within one table) merged into one
    event from the earliest onset to the latest end; amplitude NaN (the experts give none)."""
    both = pd.concat([a, b], ignore_index=True).sort_values("onset", ignore_index=True)
    if len(both) == 0:
        return empty_events()
    on = both["onset"].to_numpy(float)
    off = on + both["duration"].to_numpy(float)
    # an event opens a new group when it starts at or after every earlier event's end
    reach = np.maximum.accumulate(off)
    group = np.cumsum(np.r_[True, on[1:] >= reach[:-1]]) - 1
    starts = pd.Series(on).groupby(group).min().to_numpy()
    ends = pd.Series(off).groupby(group).max().to_numpy()
    return det.events_frame(
        "spindle", both["channel"].iloc[0], starts, ends - starts, np.full(len(starts), np.nan)
    )


def events_in_stages(
    events: pd.DataFrame, labels: np.ndarray, step_s: float, stages: tuple[str, ...]
) -> pd.DataFrame:
    """The events whose onset falls in a step (of ``step_s`` s, labels from the signal start)
    labelled one of ``stages``; an onset past the last step is out."""
    step = np.floor(events["onset"].to_numpy(float) / step_s).astype(np.int64)
    inside = step < len(labels)
    keep = np.zeros(len(events), dtype=bool)
    keep[inside] = np.isin(np.asarray(labels, dtype=object)[step[inside]], stages)
    return events[keep].reset_index(drop=True)


def _detect_or_reason(
    method: Callable[..., pd.DataFrame], x: np.ndarray, sfreq: float, channel: str
) -> tuple[pd.DataFrame | None, str]:
    """(spindles, "") or (None, why the detector refused the signal)."""
    try:
        return method("spindle", x, sfreq, channel), ""
    # a rate too low for a detector's filters is refused by our rate check (DataError, a
    # ValueError) or by scipy/MNE filter design (ValueError: a band edge above Nyquist)
    except ValueError as exc:
        return None, f"not evaluable at {sfreq:g} Hz: {exc}"


def _score_row(excerpt, method: str, reference: str, score: KindScore, note: str = "") -> dict:
    row = score.row()
    return {
        "excerpt": excerpt,
        "method": method,
        "reference": reference,
        "n_reference": row["n_truth"],
        "n_detected": row["n_detected"],
        **{k: row[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")},
        "note": note,
    }


def _not_evaluable_row(excerpt: int, method: str, reference: str, n_ref: int, why: str) -> dict:
    nan = float("nan")
    return {
        "excerpt": excerpt,
        "method": method,
        "reference": reference,
        "n_reference": n_ref,
        **dict.fromkeys(("n_detected", "tp", "fp", "fn", "precision", "recall", "f1"), nan),
        "note": why,
    }


def _excerpt_rows(
    n: int, region: str, methods: dict[str, Callable], rules: RuleSet = DEFAULT_RULES
) -> list[dict]:
    """Rows of one excerpt: each method against each reference, and expert 2 against 1."""
    x, sfreq, channel = dreams.read_dreams_eeg(n)
    experts = [dreams.read_dreams_spindles(n, e) for e in dreams.EXPERTS]
    references = dict(zip(REFERENCES, [*experts, union_of_experts(*experts)], strict=True))
    stages, labels = REGIONS[region], dreams.read_dreams_hypnogram(n)

    def keep(events: pd.DataFrame) -> pd.DataFrame:
        if stages is None:
            return events
        return events_in_stages(events, labels, dreams.HYPNOGRAM_STEP_S, stages)

    references = {name: keep(events) for name, events in references.items()}
    mutual = score_kind(references["expert2"], references["expert1"], "spindle", rules=rules)
    rows = [_score_row(n, "expert2", "expert1", mutual)]
    for method, fn in methods.items():
        found, why = _detect_or_reason(fn, x, sfreq, channel)
        for name, truth in references.items():
            if found is None:
                rows.append(_not_evaluable_row(n, method, name, len(truth), why))
            else:
                rows.append(
                    _score_row(
                        n, method, name, score_kind(keep(found), truth, "spindle", rules=rules)
                    )
                )
    return rows


def _pooled_rows(rows: pd.DataFrame) -> list[dict]:
    """Counts summed over the excerpts on which every method ran, then precision, recall, F1
    of the sums (micro average: each event weighs the same, whatever its excerpt)."""
    refused = rows.loc[rows["n_detected"].isna(), "excerpt"].unique()
    ran = rows[~rows["excerpt"].isin(refused)]
    note = "pooled over excerpts " + ", ".join(map(str, sorted(ran["excerpt"].unique())))
    pooled = []
    for (method, reference), part in ran.groupby(["method", "reference"], sort=False):
        tp, fp, fn = (int(part[c].sum()) for c in ("tp", "fp", "fn"))
        score = KindScore("spindle", tp, fp, fn, 0, empty_events(), empty_events())
        pooled.append(_score_row("pooled", method, reference, score, note))
    return pooled


def expert_agreement_table(
    n_excerpts: tuple[int, ...] = dreams.EXCERPTS,
    region: str = "all",
    methods: dict[str, Callable[..., pd.DataFrame]] | None = None,
    rules: RuleSet = DEFAULT_RULES,
) -> pd.DataFrame:
    """Spindle detectors against the two DREAMS experts, per excerpt and pooled.

    One row per (excerpt, method, reference): counts (``n_reference``, ``n_detected``, ``tp``,
    ``fp``, ``fn``), precision, recall and F1 of the method taking the reference as truth, and a
    ``note``. Methods are ``methods`` (default :data:`SPINDLE_METHODS`, ours with ``rules``,
    run on the whole excerpt) and ``expert2`` scored against ``expert1``: the experts'
    mutual agreement, the human reference a detector should reach (F1 is symmetric, so which
    expert is the truth does not matter). References are expert 1, expert 2 and
    :func:`union_of_experts`. Events match one to one by the module's rule (intervals with an
    IoU of at least 0.2, best first); expert 2 marks nearly every spindle as 1 s long, so only
    the onsets carry that expert's judgement. ``region="N2N3"`` keeps only events (detected and
    expert) whose onset falls in a 5-s step the hypnogram scores N2 or N3 (S2, S3, S4). A
    detector that refuses an excerpt's sampling rate gives NaN rows whose note says why; the
    pooled rows sum the counts over the excerpts on which every method ran (their note lists
    them).
    """
    if region not in REGIONS:
        raise ValueError(f"region {region!r} is not one of {', '.join(REGIONS)}")
    methods = (
        {**SPINDLE_METHODS, "ours": partial(ours, rules=rules)} if methods is None else methods
    )
    rows = pd.DataFrame(
        [r for n in n_excerpts for r in _excerpt_rows(n, region, methods, rules=rules)]
    )
    table = pd.concat([rows, pd.DataFrame(_pooled_rows(rows))], ignore_index=True)
    table.insert(1, "region", region)
    return table
