"""MASS-EX-style per-epoch rule annotations and the short answers SleepVLM-mini learns to write.

An :class:`EpochAnnotation` says, for one scored epoch, which AASM rules of
:data:`~sleepvlm.rules.table.RULES` support its scored stage and which events show it, with
times in seconds from the epoch start. On simulated nights the events are the ground truth drawn
into the signals, and rules that count events (spindles, K complexes, REMs...) are judged on
those true events; rules read from the background (alpha share, LAMF, slow-wave coverage, chin
tone, movement) come from the detectors of :func:`~sleepvlm.rules.evidence.detect_all`. On real
nights everything comes from the detectors. Context rules (N2 and R continuation, their end at an
arousal) are judged from the scored stage of the epoch before, as a scorer applies them.

:func:`answer_text` turns an annotation into the target answer, e.g.::

    Stage: N2. Rules: N2.spindle. Evidence: spindle on EEG at 12-13 s; K complex on EEG at 20-21 s.

(event times rounded outwards to whole seconds, so the cited span always holds the event; at
most :data:`MAX_EVIDENCE` events, most decisive first; rules without an event in the epoch get a
fixed phrase from :data:`RULE_PHRASES`). :func:`parse_answer` reads such answers back, and the
free-text answers of any other model ("a spindle at about 12 s"), for
:mod:`sleepvlm.explain.faithfulness`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sleepvlm import cache as _cache
from sleepvlm.data.records import EPOCH_S, EVENT_KINDS, ROLES, STAGES, DataError, Recording
from sleepvlm.metrics import parse_stage
from sleepvlm.pipeline import EpochStore, SerialExecutor
from sleepvlm.rules import detectors as _detectors
from sleepvlm.rules import evidence as _evidence
from sleepvlm.rules import table as _table
from sleepvlm.rules.evidence import DETECTOR_KINDS, DETECTOR_ROLE, Detection, detect_all
from sleepvlm.rules.table import DEFAULT_RULES, RULES, RuleSet
from sleepvlm.signal import Epochs

SOURCES: tuple[str, ...] = ("truth", "detected")
#: Events cited per answer (the most decisive first).
MAX_EVIDENCE = 3
#: Rule of last resort: the stage that fills most of the epoch.
FALLBACK_RULE = "epoch.majority"

#: Event kinds that are positive evidence for each rule. The rule table's ``detectors`` also
#: name what a rule checks the *absence* of (no alpha for N1.lamf, no arousal for a K complex,
#: no spindle for the continuation rules), so they cannot be used as they are; true theta
#: bursts (which no detector reports) support N1.lamf.
RULE_EVIDENCE: dict[str, tuple[str, ...]] = {
    "W.alpha": ("alpha",),
    "W.eyes": ("blink", "rem"),
    "W.fast": (),
    "N1.lamf": ("theta",),
    "N1.vertex": ("vertex",),
    "N1.sem": ("sem",),
    "N2.spindle": ("spindle",),
    "N2.kcomplex": ("kcomplex",),
    "N2.cont": (),
    "N2.arousal_end": ("arousal",),
    "N3.sw20": ("slow_wave",),
    "R.rem": ("rem",),
    "R.atonia": (),
    "R.sawtooth": ("sawtooth",),
    "R.cont": (),
    "R.arousal_end": ("arousal", "sem"),
    "arousal": ("arousal",),
    "major_body_movement": ("artifact",),
    "epoch.majority": (),
}
#: What an answer says for a rule that has no event in the epoch (read from the background,
#: from context, or from events in the previous epoch).
RULE_PHRASES: dict[str, str] = {
    "W.alpha": "alpha rhythm over most of the epoch",
    "W.eyes": "eye movements with high chin tone",
    "W.fast": "alpha and beta without slowing of the EEG, chin tone not atonic",
    "N1.lamf": "low-amplitude mixed-frequency EEG",
    "N1.vertex": "vertex sharp waves",
    "N1.sem": "slow eye movements",
    "N2.spindle": "spindle in the last half of the previous epoch",
    "N2.kcomplex": "K complex in the last half of the previous epoch",
    "N2.cont": "low-amplitude mixed-frequency EEG continuing N2",
    "N2.arousal_end": "arousal ending N2",
    "N3.sw20": "slow waves over 20 % of the epoch",
    "R.rem": "rapid eye movements",
    "R.atonia": "low chin EMG tone",
    "R.sawtooth": "sawtooth waves",
    "R.cont": "low chin EMG tone and mixed-frequency EEG continuing R",
    "R.arousal_end": "arousal or rising chin tone ending R",
    "arousal": "arousal",
    "major_body_movement": "movement artifact over most of the epoch",
    "epoch.majority": "background of the scored stage over most of the epoch",
}
#: Rules decided from the scored stage of the previous epoch (not from one epoch alone).
CONTEXT_RULES: tuple[str, ...] = ("N2.cont", "N2.arousal_end", "R.cont", "R.arousal_end")
#: Stages that rules ending a stage support: the epochs after the end (the table files them
#: under the stage they end).
_END_STAGES: dict[str, tuple[str, ...]] = {
    "N2.arousal_end": ("N1",),
    "R.arousal_end": tuple(s for s in STAGES if s != "REM"),
}
#: Rules judged on true events when a night has them: the event kind they count.
_COUNTED: dict[str, str] = {
    "N1.vertex": "vertex",
    "N1.sem": "sem",
    "N2.spindle": "spindle",
    "N2.kcomplex": "kcomplex",
    "R.rem": "rem",
    "R.sawtooth": "sawtooth",
    "arousal": "arousal",
}
#: Rules whose window is the first half of the epoch plus the last half of the previous one.
_HALF_WINDOW = ("N2.spindle", "N2.kcomplex")

#: Channel role of each event kind (detected kinds from the detectors' roles).
KIND_ROLE: dict[str, str] = {
    **{k: DETECTOR_ROLE[d] for d, kinds in DETECTOR_KINDS.items() for k in kinds},
    "theta": "eeg",
    "twitch": "emg",
}
#: How answers name each event kind.
KIND_WORDS: dict[str, str] = {
    "spindle": "spindle",
    "kcomplex": "K complex",
    "slow_wave": "slow wave",
    "vertex": "vertex sharp wave",
    "alpha": "alpha rhythm",
    "theta": "theta activity",
    "sawtooth": "sawtooth waves",
    "rem": "rapid eye movement",
    "sem": "slow eye movement",
    "twitch": "muscle twitch",
    "blink": "eye blink",
    "artifact": "movement artifact",
    "arousal": "arousal",
}
#: How free text may name each kind (case-insensitive; ``(?-i:...)`` parts are exact).
KIND_PATTERNS: dict[str, str] = {
    "spindle": r"(?:sleep[\s\-]+)?spindles?",
    "kcomplex": r"k[\s\-]*complex(?:es)?",
    "slow_wave": r"slow[\s\-]*waves?(?![\s\-]+sleep)|delta[\s\-]+waves?",
    "vertex": r"vertex(?:[\s\-]+sharp)?(?:[\s\-]+waves?)?",
    "alpha": r"alpha(?:[\s\-]+(?:rhythm|waves?|activity|bursts?))?",
    "theta": r"theta(?:[\s\-]+(?:waves?|activity|bursts?))?",
    "sawtooth": r"saw[\s\-]*tooth(?:[\s\-]+waves?)?",
    "rem": r"rapid[\s\-]+eye[\s\-]+movements?(?![\s\-]+sleep)|(?-i:REMs)",
    "sem": r"slow[\s\-]+eye[\s\-]+movements?|(?-i:SEMs?)",
    "twitch": r"(?:muscle[\s\-]+)?twitch(?:es)?",
    "blink": r"(?:eye[\s\-]+)?blinks?",
    "artifact": (
        r"(?:movement[\s\-]+|muscle[\s\-]+)?arte?facts?"
        r"|(?:major[\s\-]+)?body[\s\-]+movements?"
    ),
    "arousal": r"arousals?",
}


class AnnotationError(DataError):
    """An annotation, annotation file or answer that cannot be used as given."""


def _check_tables() -> None:
    for name, keys in (("RULE_EVIDENCE", RULE_EVIDENCE), ("RULE_PHRASES", RULE_PHRASES)):
        if set(keys) != set(RULES):
            raise KeyError(
                f"{name} must cover exactly the rule table; differs in "
                f"{sorted(set(keys) ^ set(RULES))}"
            )
    kinds = {k for ks in RULE_EVIDENCE.values() for k in ks} | set(KIND_ROLE)
    kinds |= set(KIND_WORDS) | set(KIND_PATTERNS)
    if kinds != set(EVENT_KINDS):
        raise KeyError(f"event kinds differ from EVENT_KINDS: {sorted(kinds ^ set(EVENT_KINDS))}")


_check_tables()


def supported_stages(rule_id: str) -> tuple[str, ...]:
    """Stages a rule can support: its table stage; every stage for rules of any stage; the
    stages after the end for rules that end N2 or R."""
    if rule_id not in RULES:
        raise AnnotationError(f"unknown rule ID {rule_id!r}; rule IDs: {', '.join(RULES)}")
    if rule_id in _END_STAGES:
        return _END_STAGES[rule_id]
    stage = RULES[rule_id].stage
    return STAGES if stage == "any" else (stage,)


# --- annotation records ------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """One event in an epoch: kind (records.EVENT_KINDS), channel role, start and end in s from
    the epoch start (clipped to the epoch)."""

    kind: str
    role: str
    start_s: float
    end_s: float

    def text(self, step_s: int = 1) -> str:
        """The event as an answer cites it, times rounded outwards to multiples of ``step_s``
        seconds (1: whole seconds; 5: the 5-s segment(s) it lies in)."""
        start = max(0, math.floor(self.start_s / step_s) * step_s)
        end = min(int(EPOCH_S), max(math.ceil(self.end_s / step_s) * step_s, start + step_s))
        return f"{KIND_WORDS[self.kind]} on {self.role.upper()} at {start}-{end} s"


@dataclass
class EpochAnnotation:
    """Rules and evidence behind the scored stage of one epoch (see the module docstring).
    ``evidence``: events of the kinds that support the chosen rules (:data:`RULE_EVIDENCE`);
    ``other_events``: every other event in the epoch (true or detected, as ``source``), which
    an answer may also cite truthfully."""

    dataset: str
    subject: str
    night: str
    epoch: int
    stage: str
    rules: list[str]
    evidence: list[Evidence]
    source: str
    other_events: list[Evidence] = field(default_factory=list)

    def __post_init__(self) -> None:
        where = f"{self.dataset}/{self.subject}/{self.night} epoch {self.epoch}"
        if self.stage not in STAGES:
            raise AnnotationError(f"{where}: stage {self.stage!r} is not one of {STAGES}")
        unknown = [r for r in self.rules if r not in RULES]
        if unknown:
            raise AnnotationError(
                f"{where}: unknown rule ID(s) {unknown}; use IDs of sleepvlm.rules.table.RULES"
            )
        if not self.rules:
            raise AnnotationError(f"{where}: no rule; use {FALLBACK_RULE!r} when none applies")
        if self.source not in SOURCES:
            raise AnnotationError(f"{where}: source {self.source!r} is not one of {SOURCES}")
        self.evidence = [_checked_evidence(e, where) for e in self.evidence]
        self.other_events = [_checked_evidence(e, where) for e in self.other_events]

    @property
    def all_events(self) -> list[Evidence]:
        """Every event of the epoch: the evidence, then the others."""
        return [*self.evidence, *self.other_events]

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.dataset, self.subject, self.night, self.epoch)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> EpochAnnotation:
        fields = ("dataset", "subject", "night", "epoch", "stage", "rules", "evidence", "source")
        missing = [f for f in fields if f not in data]
        if missing:
            raise AnnotationError(f"annotation lacks fields {missing}")
        return cls(
            dataset=str(data["dataset"]),
            subject=str(data["subject"]),
            night=str(data["night"]),
            epoch=int(data["epoch"]),
            stage=data["stage"],
            rules=list(data["rules"]),
            evidence=list(data["evidence"]),
            source=data["source"],
            other_events=list(data.get("other_events", [])),
        )


def _checked_evidence(item: Evidence | Mapping, where: str) -> Evidence:
    if isinstance(item, Mapping):
        try:
            item = Evidence(
                str(item["kind"]), str(item["role"]), float(item["start_s"]), float(item["end_s"])
            )
        except (KeyError, TypeError, ValueError) as err:
            raise AnnotationError(
                f"{where}: evidence {dict(item)} needs kind, role, start_s and end_s ({err})"
            ) from None
    if item.kind not in EVENT_KINDS or item.role not in ROLES:
        raise AnnotationError(
            f"{where}: evidence {item} has an unknown kind or role (kinds: "
            f"{', '.join(EVENT_KINDS)}; roles: {', '.join(ROLES)})"
        )
    if not 0 <= item.start_s <= item.end_s <= EPOCH_S:
        raise AnnotationError(f"{where}: evidence {item} must lie within 0-{EPOCH_S:g} s")
    return item


def write_jsonl(annotations: Iterable[EpochAnnotation], path: str | Path) -> Path:
    """Write annotations, one JSON object per epoch (written whole, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    with open(partial, "w", encoding="utf-8") as fh:
        for annotation in annotations:
            fh.write(json.dumps(annotation.to_dict(), ensure_ascii=False) + "\n")
    partial.replace(path)
    return path


def read_jsonl(path: str | Path) -> list[EpochAnnotation]:
    """Annotations written by :func:`write_jsonl` (or by hand, for any dataset)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: no annotation file; write one with write_jsonl")
    out = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise AnnotationError(f"a JSON object, not {type(data).__name__}")
                out.append(EpochAnnotation.from_dict(data))
            except (json.JSONDecodeError, AnnotationError) as err:
                raise AnnotationError(
                    f"{path}, line {number}: not an epoch annotation ({err}); fix or remove "
                    "the line"
                ) from None
    return out


def select(annotations: Iterable[EpochAnnotation], sample: pd.DataFrame) -> list[EpochAnnotation]:
    """The annotations of the epochs of ``sample`` (dataset, subject, night, epoch columns), in
    its row order."""
    index = {a.key: a for a in annotations}
    keys = [
        (str(d), str(s), str(n), int(e))
        for d, s, n, e in sample[["dataset", "subject", "night", "epoch"]].itertuples(index=False)
    ]
    missing = [k for k in keys if k not in index]
    if missing:
        raise AnnotationError(
            f"{len(missing)} epoch(s) of the sample have no annotation, e.g. {missing[0]}; "
            "annotate their nights with annotate_store"
        )
    return [index[k] for k in keys]


# --- annotating nights -------------------------------------------------------------------------


class _EventIndex:
    """Events sorted by onset, for quick per-window look-ups."""

    def __init__(self, events: pd.DataFrame) -> None:
        events = events.sort_values("onset", kind="stable").reset_index(drop=True)
        self.kind = events["kind"].to_numpy(str)
        self.role = events["role"].to_numpy(str)
        self.onset = events["onset"].to_numpy(float)
        self.offset = self.onset + events["duration"].to_numpy(float)
        self.usable = events["usable"].to_numpy(bool)
        self.longest = float(events["duration"].max()) if len(events) else 0.0

    def overlapping(self, start: float, stop: float) -> np.ndarray:
        lo, hi = np.searchsorted(self.onset, [start - self.longest, stop])
        picked = np.arange(lo, hi)
        return picked[self.offset[picked] > start]

    def count_starting(self, kind: str, start: float, stop: float) -> int:
        lo, hi = np.searchsorted(self.onset, [start, stop])
        return int(((self.kind[lo:hi] == kind) & self.usable[lo:hi]).sum())


def _usable_events(
    events: pd.DataFrame, roles: Mapping[str, str] | None, *, rules: RuleSet
) -> pd.DataFrame:
    """Events with their channel role and whether they can be evidence: slow waves must reach
    the N3 amplitude, K complexes must not come with an arousal (as the rules ask). Kinds
    outside records.EVENT_KINDS are left out."""
    events = events[events["kind"].isin(EVENT_KINDS)].copy()
    by_channel = {channel: role for role, channel in (roles or {}).items()}
    events["role"] = [
        by_channel.get(c, KIND_ROLE[k])
        for k, c in zip(events["kind"], events["channel"], strict=True)
    ]
    usable = np.ones(len(events), dtype=bool)
    slow = (events["kind"] == "slow_wave").to_numpy()
    usable[slow] &= events.loc[slow, "amplitude"].to_numpy(float) >= rules.threshold(
        "N3.sw20", "min_ptp_uv"
    )
    arousal_on = np.sort(events.loc[events["kind"] == "arousal", "onset"].to_numpy(float))
    kc = (events["kind"] == "kcomplex").to_numpy()
    kc_on = events.loc[kc, "onset"].to_numpy(float)
    kc_end = kc_on + events.loc[kc, "duration"].to_numpy(float)
    first = np.searchsorted(arousal_on, kc_on, side="left")
    last = np.searchsorted(
        arousal_on, kc_end + rules.threshold("N2.kcomplex", "arousal_gap_s"), side="right"
    )
    usable[kc] &= last - first == 0
    events["usable"] = usable
    return events


def _criteria_sets(criteria: pd.DataFrame) -> tuple[dict[int, set], dict[int, set]]:
    """Per epoch: the rules met, and the rules that can be evaluated."""
    known = ~criteria.isna().to_numpy()
    met = criteria.fillna(False).to_numpy(bool) & known
    rules = np.asarray(criteria.columns)
    ids = criteria.index.to_numpy(np.int64).tolist()
    return (
        {e: set(rules[row]) for e, row in zip(ids, met, strict=True)},
        {e: set(rules[row]) for e, row in zip(ids, known, strict=True)},
    )


def _rules_met(met: set, known: set, onset: float, truth: _EventIndex | None) -> set:
    """Rules whose criterion is met in an epoch: from the detectors, with the event-counting
    rules judged on the true events when there are any (not where the rule is not evaluable)."""
    if truth is None:
        return met
    met = set(met)
    for rule_id, kind in _COUNTED.items():
        if rule_id not in known:
            continue
        start, stop = onset, onset + EPOCH_S
        if rule_id in _HALF_WINDOW:
            start, stop = onset - EPOCH_S / 2, onset + EPOCH_S / 2
        needed = RULES[rule_id].thresholds.get("min_count", 1)
        if truth.count_starting(kind, start, stop) >= needed:
            met.add(rule_id)
        else:
            met.discard(rule_id)
    return met


def _choose_rules(stage: str, met: set, previous: str | None) -> list[str]:
    """Rules that support the scored ``stage``: those met that belong to it, plus the context
    rules the previous epoch's stage calls for; the fallback rule when none applies."""
    chosen = {r for r in met if r not in CONTEXT_RULES and RULES[r].stage == stage}
    arousal = "arousal" in met
    if stage == "N2" and previous == "N2" and not chosen & set(_HALF_WINDOW) and not arousal:
        chosen.add("N2.cont")
    if stage == "REM" and previous == "REM" and "R.rem" not in chosen:
        chosen.add("R.cont")
    if stage == "N1" and previous == "N2" and arousal:
        chosen |= {"N2.arousal_end", "arousal"}
    if stage != "REM" and previous == "REM" and "R.arousal_end" in met:
        chosen.add("R.arousal_end")
    if not chosen:
        chosen.add("major_body_movement" if "major_body_movement" in met else FALLBACK_RULE)
    return [r for r in RULES if r in chosen]


def _epoch_evidence(
    index: _EventIndex, onset: float, rules: list[str]
) -> tuple[list[Evidence], list[Evidence]]:
    """(evidence of the rules, other events) overlapping the epoch, each in rule order and then
    by time; events of a rule's own window (the first half for N2 marks) first."""
    picked = index.overlapping(onset, onset + EPOCH_S)
    items = [
        (
            str(index.kind[i]),
            Evidence(
                str(index.kind[i]),
                str(index.role[i]),
                round(max(0.0, index.onset[i] - onset), 2),
                round(min(EPOCH_S, index.offset[i] - onset), 2),
            ),
            bool(index.usable[i]),
        )
        for i in picked.tolist()
    ]
    evidence: list[Evidence] = []
    for rule_id in rules:
        kinds = RULE_EVIDENCE[rule_id]
        mine = [e for k, e, ok in items if ok and k in kinds and e not in evidence]
        late = [e for e in mine if rule_id in _HALF_WINDOW and e.start_s >= EPOCH_S / 2]
        evidence += [e for e in mine if e not in late] + late
    other = [e for _, e, _ in items if e not in evidence]
    return evidence, list(dict.fromkeys(other))


def _labels(stages, ids: np.ndarray) -> dict[int, str]:
    """Epoch number -> scored label from a mapping (epoch -> label) or a hypnogram sequence."""
    if isinstance(stages, Mapping | pd.Series):
        return {int(k): str(v) for k, v in stages.items()}
    stages = list(stages)
    return {int(k): str(stages[k]) for k in ids if 0 <= k < len(stages)}


def _identity(label: str) -> tuple[str, str, str]:
    parts = label.split("/")
    if len(parts) != 3:
        raise AnnotationError(
            f"cannot tell dataset/subject/night from the detection label {label!r}; pass the "
            "Recording or Epochs it came from"
        )
    return parts[0], parts[1], parts[2]


def annotate_night(
    source: Recording | Epochs | Detection,
    stages: Mapping[int, str] | Sequence[str] | None = None,
    truth_events: pd.DataFrame | None = None,
    roles: Mapping[str, str] | None = None,
    rules: RuleSet = DEFAULT_RULES,
) -> list[EpochAnnotation]:
    """Annotate every scored epoch of one night.

    ``source``: a :class:`Recording` (detectors run at its native rates; its own true events
    and roles are used when it is simulated), preprocessed :class:`Epochs` (as stored) or a
    :class:`Detection` already run. ``stages``: scored labels, a hypnogram sequence (item k is
    epoch k) or a mapping epoch -> label (default: the recording's hypnogram, the epochs'
    manifest; required for a Detection). ``truth_events``: true events (records.EVENT_COLUMNS,
    onsets on the recording's time axis) with ``roles`` mapping roles to their channel names.
    Epochs labelled outside records.STAGES (MOVE, UNKNOWN) are left out."""
    if isinstance(source, Detection):
        if stages is None:
            raise AnnotationError(f"{source.label}: annotating a Detection needs its stages")
        detection, (dataset, subject, night) = source, _identity(source.label)
    else:
        detection = detect_all(source, rules=rules)
        dataset, subject, night = source.dataset, source.subject, source.night
    if isinstance(source, Recording):
        stages = source.stages if stages is None else stages
        if truth_events is None and source.simulated and len(source.events):
            truth_events = source.events
        roles = source.roles if roles is None else roles
    elif isinstance(source, Epochs) and stages is None:
        stages = dict(zip(source.manifest["epoch"], source.manifest["stage"], strict=True))
    ids = detection.criteria.index.to_numpy()
    labels = _labels(stages, ids)
    scored = [int(e) for e in ids if labels.get(int(e)) in STAGES]
    if not scored:
        raise AnnotationError(
            f"{detection.label}: no epoch has both detector output and a scored label in "
            f"{STAGES}; check that the stages belong to this night"
        )
    truth = None
    if truth_events is not None:
        truth = _EventIndex(_usable_events(truth_events, roles, rules=rules))
    events = (
        truth
        if truth is not None
        else _EventIndex(_usable_events(detection.events, None, rules=rules))
    )
    onsets = detection.epochs["onset"].to_dict()
    met, known = _criteria_sets(detection.criteria)
    out = []
    for epoch in scored:
        onset = float(onsets[epoch])
        found = _rules_met(met[epoch], known[epoch], onset, truth)
        cited = _choose_rules(labels[epoch], found, labels.get(epoch - 1))
        evidence, other = _epoch_evidence(events, onset, cited)
        out.append(
            EpochAnnotation(
                dataset,
                subject,
                night,
                epoch,
                labels[epoch],
                cited,
                evidence,
                "truth" if truth is not None else "detected",
                other,
            )
        )
    return out


@dataclass
class _NightTask:
    """Picklable per-night job: reads the night from the store, and its true events from the
    source recording when it is simulated."""

    path: str
    dataset: str
    rules: RuleSet = DEFAULT_RULES

    def __call__(self, item: tuple[str, str, dict | None]) -> list[dict]:
        from sleepvlm.data import formats

        subject, night, entry = item
        epochs = EpochStore(self.path, self.dataset).read_record(subject, night)
        truth, roles = None, None
        if entry is not None:
            rec = formats.load_entry(entry)
            if rec.simulated and len(rec.events):
                truth, roles = rec.events, rec.roles
        return [a.to_dict() for a in annotate_night(epochs, None, truth, roles, self.rules)]


def annotate_store(
    prepared,
    nights: Iterable[tuple[str, str]] | None = None,
    executor=None,
    rules: RuleSet = DEFAULT_RULES,
) -> list[EpochAnnotation]:
    """Annotations of whole nights of a :class:`~sleepvlm.prepare.PreparedDataset` (default:
    all), one night per task on ``executor``; detectors run on the stored 100-Hz epochs (what the
    models see), true events come from the source files of simulated nights. Cached in
    ``cache_dir("annotations")`` by store, nights, the source of the annotation code and the
    values of ``rules``."""
    manifest = prepared.manifest
    if nights is None:
        nights = manifest[["subject", "night"]].drop_duplicates().itertuples(index=False)
    nights = sorted({(str(s), str(n)) for s, n in nights})
    stored = set(zip(manifest["subject"].astype(str), manifest["night"].astype(str), strict=True))
    unknown = [k for k in nights if k not in stored]
    if unknown or not nights:
        raise AnnotationError(
            f"{prepared.store.path}: nights {unknown or '(none)'} are not in the store; pick "
            "(subject, night) pairs of prepared.manifest"
        )
    code = _cache.content_hash(
        _cache.source_hash(_detectors, _evidence, _table), Path(__file__), rules.values()
    )
    key = _cache.content_hash(prepared.store.path.name, nights, code)
    path = _cache.cache_dir("annotations") / f"{prepared.dataset}-{key}.jsonl"
    if path.is_file():
        return read_jsonl(path)
    simulated = manifest.groupby(["subject", "night"])["simulated"].any()
    entries = {}
    if simulated.any():
        from sleepvlm.data import formats

        entries = {
            (e["subject"], e["night"]): e
            for e in formats.discover(prepared.dataset, prepared.source)
        }
    items = [
        (s, n, entries.get((s, n)) if simulated.get((s, n), False) else None) for s, n in nights
    ]
    executor = executor or SerialExecutor()
    parts = executor.map(_NightTask(str(prepared.store.path), prepared.dataset, rules), items)
    annotations = [EpochAnnotation.from_dict(d) for part in parts for d in part]
    write_jsonl(annotations, path)
    return annotations


# --- answers -----------------------------------------------------------------------------------


def decisive_evidence(
    annotation: EpochAnnotation, limit: int = MAX_EVIDENCE, step_s: int = 1
) -> list[Evidence]:
    """The events an answer cites: taken from the annotation's rules in turn (rule order), each
    rule's events in the annotation's order, at most ``limit``; an event that would read the
    same as one already cited (same kind, channel and times at ``step_s`` resolution) is passed
    over, since an answer cannot cite it apart."""
    queues = [
        [e for e in annotation.evidence if e.kind in RULE_EVIDENCE[r]] for r in annotation.rules
    ]
    out: list[Evidence] = []
    while len(out) < limit and any(queues):
        for queue in queues:
            while queue and queue[0].text(step_s) in {e.text(step_s) for e in out}:
                queue.pop(0)
            if queue and len(out) < limit:
                out.append(queue.pop(0))
    return out


def answer_text(annotation: EpochAnnotation, step_s: int = 1) -> str:
    """The target answer of one epoch (see the module docstring), event times at ``step_s``
    resolution (:meth:`Evidence.text`); it starts with the stage so that
    :func:`sleepvlm.metrics.parse_stage` reads it."""
    cited = decisive_evidence(annotation, step_s=step_s)
    items = [e.text(step_s) for e in cited]
    for rule_id in annotation.rules:
        if not any(e.kind in RULE_EVIDENCE[rule_id] for e in annotation.evidence):
            items.append(RULE_PHRASES[rule_id])
    return (
        f"Stage: {annotation.stage}. Rules: {', '.join(annotation.rules)}. "
        f"Evidence: {'; '.join(dict.fromkeys(items))}."
    )


@dataclass(frozen=True)
class Claim:
    """An event an answer cites: kind, role, start and end (s from the epoch start; equal for
    a time point), and the words it was read from."""

    kind: str
    role: str
    start_s: float
    end_s: float
    text: str = field(default="", compare=False)

    def describe(self) -> str:
        span = (
            f"{self.start_s:g}"
            if self.start_s == self.end_s
            else f"{self.start_s:g}-{self.end_s:g}"
        )
        return f"{KIND_WORDS[self.kind]} on {self.role.upper()} at {span} s"


@dataclass
class ParsedAnswer:
    """What an answer says: stage (first valid label, as metrics.parse_stage), cited rule IDs
    (also unknown ones), event claims, and evidence statements that could not be checked (an
    event named without a time, or an evidence item that names nothing known)."""

    stage: str | None
    rules: list[str]
    claims: list[Claim]
    unparsed: list[str]


_NUM = r"\d+(?:\.\d+)?"
_UNIT = r"\s*(?:seconds?|secs?|s)\b"
_TIME_RE = re.compile(
    rf"(?<![\w.])(?:between\s+(?P<c>{_NUM})(?:{_UNIT})?\s+and\s+(?P<d>{_NUM}){_UNIT}"
    rf"|(?:from\s+)?(?P<a>{_NUM})(?:{_UNIT})?\s*(?:-|–|—|to|until)\s*(?P<b>{_NUM}){_UNIT}"
    rf"|(?P<e>{_NUM}){_UNIT}"
    r"|(?P<whole>throughout|(?:the\s+)?(?:whole|entire)\s+epoch))",
    re.IGNORECASE,
)
_DURATION_BEFORE = re.compile(r"(?:lasting|lasts|duration(?:\s+of)?|long)\s*(?:about|~)?\s*$", re.I)
_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|absence\s+of|lack\s+of|never)\s+(?:any\s+|clear\s+|obvious\s+)?$", re.I
)
_KIND_RE = re.compile(
    "|".join(f"(?P<{k}>(?<![A-Za-z])(?:{p})(?![A-Za-z]))" for k, p in KIND_PATTERNS.items()),
    re.IGNORECASE,
)
_ROLE_RE = re.compile(r"\b(?:on|in)\s+(?:the\s+)?(EEG|EOG|EMG|chin)\b", re.IGNORECASE)
_RULE_ID_RE = re.compile(r"(?<![\w.])(?:[WR]|N[1-4]|REM|epoch)\.[a-z][a-z0-9_]*")
_RULES_SECTION = re.compile(r"\bRules?\s*:\s*(?P<body>.*?)(?=\bEvidence\s*:|\n|$)", re.I | re.S)
_EVIDENCE_SECTION = re.compile(r"\bEvidence\s*:\s*(?P<body>.*)", re.I | re.S)
_SEGMENT_SPLIT = re.compile(r";|\n|\.(?=\s|$)")
_KNOWN_PHRASES = {p.lower() for p in RULE_PHRASES.values()}


def _cited_rules(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Rule IDs an answer cites (a 'Rules:' list as written, else rule-shaped IDs anywhere) and
    the character spans they occupy."""
    section = _RULES_SECTION.search(text)
    if section:
        body = section["body"].strip().rstrip(".").strip()
        items = [x.strip() for x in re.split(r",|;|\band\b", body) if x.strip()]
        rules = [] if [x.lower() for x in items] in (["none"], ["-"]) else items
        return rules, [section.span("body")]
    found = list(_RULE_ID_RE.finditer(text))
    return list(dict.fromkeys(m[0] for m in found)), [m.span() for m in found]


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    chars = list(text)
    for start, stop in spans:
        chars[start:stop] = " " * (stop - start)
    return "".join(chars)


def _segment_claims(segment: str) -> tuple[list[Claim], bool, bool]:
    """Claims in one clause, whether it names an event kind, and whether a named kind went
    without a time."""
    kinds = [
        (m.start(), m.end(), m.lastgroup, bool(_NEGATION_BEFORE.search(segment[: m.start()])))
        for m in _KIND_RE.finditer(segment)
    ]
    if not kinds:
        return [], False, False
    times = [
        (m.start(), _span(m))
        for m in _TIME_RE.finditer(segment)
        if not _DURATION_BEFORE.search(segment[: m.start()])
    ]
    claims, timed = [], set()
    for pos, (start, end) in times:
        before = [i for i, k in enumerate(kinds) if k[1] <= pos]
        owner = before[-1] if before else 0
        timed.add(owner)
        _, kind_end, kind, negated = kinds[owner]
        if negated:
            continue
        stop = kinds[owner + 1][0] if owner + 1 < len(kinds) else len(segment)
        role = _ROLE_RE.search(segment, kind_end, stop)
        role = role[1].lower() if role else KIND_ROLE[kind]
        claims.append(Claim(kind, "emg" if role == "chin" else role, start, end, segment.strip()))
    untimed = any(i not in timed and not k[3] for i, k in enumerate(kinds))
    return claims, True, untimed


def _span(match: re.Match) -> tuple[float, float]:
    if match["whole"]:
        return 0.0, EPOCH_S
    pair = [match[g] for g in ("c", "d", "a", "b") if match[g] is not None]
    values = [float(v) for v in pair] if pair else [float(match["e"])] * 2
    return min(values), max(values)


def evidence_items(text: str) -> tuple[int | None, list[tuple[int, int]]]:
    """Where an answer's evidence section starts ("Evidence:"; None without one) and the
    character spans of its items, split as :func:`parse_answer` splits them (empty items left
    out)."""
    section = _EVIDENCE_SECTION.search(text)
    if section is None:
        return None, []
    spans, begin = [], section.start("body")
    for separator in _SEGMENT_SPLIT.finditer(text, begin):
        spans.append((begin, separator.start()))
        begin = separator.end()
    spans.append((begin, len(text)))
    return section.start(), [(a, b) for a, b in spans if text[a:b].strip()]


def parse_answer(text: str | None) -> ParsedAnswer:
    """Read an answer of SleepVLM-mini (:func:`answer_text`'s format) or free text of any model:
    the stage by :func:`sleepvlm.metrics.parse_stage`, rule IDs, and event claims with times
    ("spindle on EEG at 12-13 s", "K-complex around 20 s", "REMs between 3 and 5 seconds")."""
    if not isinstance(text, str):
        return ParsedAnswer(None, [], [], [])
    rules, rule_spans = _cited_rules(text)
    masked = _mask(text, rule_spans)
    section = _EVIDENCE_SECTION.search(masked)
    body = section["body"] if section else masked
    claims, unparsed = [], []
    for segment in _SEGMENT_SPLIT.split(body):
        words = " ".join(segment.split())
        if not words or words.lower() in _KNOWN_PHRASES:
            continue
        found, names_kind, untimed = _segment_claims(segment)
        claims += found
        if untimed or (section and not names_kind):
            unparsed.append(words)
    return ParsedAnswer(parse_stage(text), rules, claims, unparsed)
