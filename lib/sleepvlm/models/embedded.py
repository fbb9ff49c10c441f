"""Embedded models that need no download, no GPU and no key: registered by name on import, so
they run in-process (backend ``local``) and behind ``sleepvlm serve`` alike.

``rule-reader`` is a text "model" that reads nothing but the prompt it is sent. It finds the
expert feature description in the user turn (the tagged lines of
:func:`sleepvlm.text.feature_text`), parses the numbers written there (shares of the epoch,
event counts and times, the chin-tone percentile) and applies the thresholds of the AASM rule
table (:mod:`sleepvlm.rules.table`) in the order of precedence of the rule-based stager
(:mod:`sleepvlm.rules.stager`). It never sees the scored stage, the signals or the detector
objects, and it has no memory of earlier epochs: the N2 and R continuation rules, which need
the stages of the epochs before, are out of its reach, so an N2 epoch without a spindle or K
complex near it is read as N1 or W. That is the point of it: what a perfectly obedient text
model could get from these lines alone, by the book. A prompt without a feature description
(an image or a sequence) gets an answer without a stage label, scored as invalid.

``sleepvlm-mini`` is the small rule-grounded VLM of :mod:`sleepvlm.explain`, trained here; it
answers the first image of a request with the last model trained (chapter 11), loaded on the
first request.

The built-in floors ``chance`` and ``majority`` live in :mod:`sleepvlm.models.local`. Each
embedded model is one entry of :data:`EMBEDDED` (plus its entry in ``registry.yaml``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sleepvlm.data.records import EPOCH_S
from sleepvlm.rules.table import DEFAULT_RULES, RuleSet

from .local import LocalModel, local_model_names, register_local_model
from .messages import wire_text

#: Answer of the rule reader to a prompt holding no feature description (no stage label in it).
NO_FEATURES_ANSWER = "No epoch description found in the prompt; nothing to score."

_NUMBER = r"(\d+(?:\.\d+)?)"
_SPAN = re.compile(_NUMBER + r"\s*[–-]\s*" + _NUMBER + r"\s*s\b")
#: A feature line: bracketed rule IDs at the start of a line, then what was found.
_LINE = re.compile(r"^\[([A-Za-z0-9_., ]+)\]\s*(?:\(context\)\s*)?(.*)$", re.MULTILINE)
#: Event kinds of the description, by the words it writes them with.
_EVENT_WORDS: dict[str, str] = {
    "vertex": r"vertex sharp waves?",
    "spindle": r"sleep spindles?",
    "kcomplex": r"K complex(?:es)?",
    "sawtooth": r"sawtooth wave trains?",
    "arousal": r"arousals?",
    "rem": r"rapid eye movements?",
    "sem": r"slow eye movements?",
    "blink": r"eye blinks?",
}
#: Shares of the epoch, by the sentence that carries them.
_SHARES: dict[str, re.Pattern] = {
    "alpha": re.compile(r"alpha rhythm in " + _NUMBER + r"\s*%"),
    "lamf": re.compile(r"mixed-frequency EEG in " + _NUMBER + r"\s*%"),
    "slow_wave": re.compile(r"slow waves .*?cover " + _NUMBER + r"\s*%"),
    "movement": re.compile(r"movement artifact in " + _NUMBER + r"\s*%"),
}
#: How a "not available" line names each share.
_SHARE_WORDS: dict[str, str] = {
    "alpha": "alpha rhythm",
    "lamf": "mixed-frequency",
    "slow_wave": "slow waves",
    "movement": "movement artifact",
}
_TONE = re.compile(r"chin EMG tone at percentile " + _NUMBER)


@dataclass
class ReadFeatures:
    """What the rule reader found in a description. ``None``: not written, or "not
    available". Event lists hold (start, end) in seconds from the epoch start (only the times
    written out; ``counts`` holds the full counts); ``previous`` the events of the last half
    of the previous epoch."""

    lines: int = 0
    shares: dict[str, float | None] = field(default_factory=dict)
    counts: dict[str, int | None] = field(default_factory=dict)
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    previous: dict[str, int] | None = None
    tone_percentile: float | None = None


def _event_count(body: str, kind: str) -> tuple[int, list[tuple[float, float]]] | None:
    """Count of ``kind`` written in ``body`` and the times written after it (None: no
    mention). A line names one kind, except the previous-epoch line, read for counts only."""
    words = _EVENT_WORDS[kind]
    if re.search(r"\bno " + words, body):
        return 0, []
    found = re.search(r"(\d+) " + words, body)
    if not found:
        return None
    return int(found[1]), [(float(a), float(b)) for a, b in _SPAN.findall(body[found.end() :])]


def read_features(text: str) -> ReadFeatures:
    """Parse the feature lines of ``text`` (anything else in it is ignored)."""
    read = ReadFeatures()
    for match in _LINE.finditer(text):
        body = match[2]
        read.lines += 1
        available = "not available" not in body
        if "previous epoch" in body:
            if available:
                read.previous = {}
                for kind in ("spindle", "kcomplex"):
                    counted = _event_count(body, kind)
                    read.previous[kind] = counted[0] if counted else 0
            continue
        for name, pattern in _SHARES.items():
            hit = pattern.search(body)
            if hit:
                read.shares[name] = float(hit[1]) / 100
            elif not available and _SHARE_WORDS[name] in body:
                read.shares[name] = None
        if "chin EMG tone" in body:
            hit = _TONE.search(body)
            read.tone_percentile = float(hit[1]) if hit and available else None
        for kind, words in _EVENT_WORDS.items():
            if not re.search(words, body):
                continue
            counted = _event_count(body, kind) if available else None
            read.counts[kind] = counted[0] if counted else None
            read.spans[kind] = counted[1] if counted else []
    return read


def _at_least(value: float | None, limit: float) -> bool:
    return value is not None and value >= limit


def _over(value: float | None, limit: float) -> bool:
    return value is not None and value > limit


def _first_half(spans: list[tuple[float, float]]) -> bool:
    return any(start < EPOCH_S / 2 for start, _ in spans)


def _free_kcomplexes(
    read: ReadFeatures, rules: RuleSet = DEFAULT_RULES
) -> list[tuple[float, float]]:
    """K complexes not followed by an arousal within the rule's gap (N2.kcomplex)."""
    gap = rules.threshold("N2.kcomplex", "arousal_gap_s")
    arousals = [start for start, _ in read.spans.get("arousal", [])]
    return [
        (start, end)
        for start, end in read.spans.get("kcomplex", [])
        if not any(start <= a <= end + gap for a in arousals)
    ]


def rule_reader_decision(text: str, rules: RuleSet = DEFAULT_RULES) -> tuple[str | None, list[str]]:
    """The stage the rule table gives for the description in ``text``, and the rule IDs that
    decided it (``(None, [])`` when ``text`` holds no description). Precedence as in the
    rule-based stager, without the rules that need earlier epochs."""
    read = read_features(text)
    if read.lines == 0:
        return None, []
    shares, counts = read.shares, read.counts
    alpha, lamf = shares.get("alpha"), shares.get("lamf")
    tone = read.tone_percentile
    high_tone = (
        None if tone is None else tone >= 100 * rules.threshold("W.eyes", "min_tone_quantile")
    )

    if _over(shares.get("movement"), rules.threshold("major_body_movement", "min_epoch_fraction")):
        if _over(alpha, 0.0):  # a movement with any alpha is W; otherwise its neighbours decide
            return "W", ["major_body_movement"]
    if _over(alpha, rules.threshold("W.alpha", "min_epoch_fraction")):
        return "W", ["W.alpha"]
    blinks = _at_least(counts.get("blink"), rules.threshold("W.eyes", "min_blinks"))
    rems = _at_least(counts.get("rem"), rules.threshold("W.eyes", "min_rems"))
    # W.eyes: blinks or REMs with normal or high chin tone; chin not readable: blinks alone
    # (the manual ties REMs, not blinks, to chin tone).
    if (high_tone and (blinks or rems)) or (high_tone is None and blinks):
        return "W", ["W.eyes"]
    if _at_least(shares.get("slow_wave"), rules.threshold("N3.sw20", "min_epoch_fraction")):
        return "N3", ["N3.sw20"]
    eye_known = counts.get("rem") is not None
    eye_sign = (
        _at_least(counts.get("rem"), rules.threshold("R.rem", "min_count"))
        if eye_known
        else _at_least(counts.get("sawtooth"), rules.threshold("R.sawtooth", "min_count"))
    )
    lamf_bg = _over(lamf, rules.threshold("N1.lamf", "min_epoch_fraction"))
    background = (high_tone is False) if high_tone is not None else lamf_bg
    if eye_sign and background:
        eye_rule = "R.rem" if eye_known else "R.sawtooth"
        return "REM", [eye_rule, "R.atonia" if high_tone is not None else "N1.lamf"]
    marks = []
    previous = read.previous or {}
    min_spindles = rules.threshold("N2.spindle", "min_count")
    if _first_half(read.spans.get("spindle", [])) or previous.get("spindle", 0) >= min_spindles:
        marks.append("N2.spindle")
    free = _free_kcomplexes(read, rules=rules)
    if _first_half(free) or previous.get("kcomplex", 0) >= rules.threshold(
        "N2.kcomplex", "min_count"
    ):
        marks.append("N2.kcomplex")
    if marks:
        return "N2", marks
    signs = []
    if lamf_bg and not _over(alpha, rules.threshold("W.alpha", "min_epoch_fraction")):
        signs.append("N1.lamf")
    if _at_least(counts.get("vertex"), rules.threshold("N1.vertex", "min_count")):
        signs.append("N1.vertex")
    if _at_least(counts.get("sem"), rules.threshold("N1.sem", "min_count")):
        signs.append("N1.sem")
    if signs:
        return "N1", signs
    a, m = alpha or 0.0, lamf or 0.0
    if a != m:
        return ("W" if a > m else "N1"), ["epoch.majority"]
    return ("N1" if high_tone is False else "W"), ["epoch.majority"]


def rule_reader(messages: list[dict], rules: RuleSet = DEFAULT_RULES) -> str:
    """Answer as the prompt asks: one stage label (no explanation), from the user turns only
    (the expert system prompt restates the criteria, which are not a description)."""
    users = [m for m in messages if m.get("role") == "user"]
    stage, _ = rule_reader_decision(wire_text(users), rules=rules)
    return stage or NO_FEATURES_ANSWER


def mini_unavailable() -> str | None:
    """Why ``sleepvlm-mini`` cannot answer (no model trained here yet, and how to train one),
    or None."""
    from sleepvlm.explain.mini import MiniError
    from sleepvlm.explain.train import default_model_dir

    try:
        default_model_dir()
    except MiniError as err:
        return str(err)
    return None


def sleepvlm_mini() -> LocalModel:
    """SleepVLM-mini as served (imported on first use: it needs torch and transformers)."""
    from sleepvlm.explain.train import ServedMini

    return ServedMini()


@dataclass(frozen=True)
class EmbeddedModel:
    """An embedded model: its callable (``factory()`` builds it on registration), the
    modalities it reads and what it is."""

    factory: Callable[[], LocalModel]
    modalities: tuple[str, ...]
    summary: str


#: Every embedded model, by name (the name in ``registry.yaml`` and on the server).
EMBEDDED: dict[str, EmbeddedModel] = {
    "rule-reader": EmbeddedModel(
        factory=lambda: rule_reader,
        modalities=("text",),
        summary="applies the AASM rule table to the numbers of an expert feature description",
    ),
    "sleepvlm-mini": EmbeddedModel(
        factory=lambda: _LazyModel(sleepvlm_mini, mini_unavailable),
        modalities=("image",),
        summary="a small rule-grounded VLM trained here (sleepvlm.explain, chapter 11)",
    ),
}


class _LazyModel:
    """A model built on its first request (registration happens on import, which must stay
    light), with the built model's ``version`` and ``info`` passed through."""

    def __init__(
        self, build: Callable[[], LocalModel], unavailable: Callable[[], str | None] | None = None
    ):
        self._build = build
        self._model: LocalModel | None = None
        # Why the model cannot answer yet (and how to make it), without building it.
        self.unavailable = unavailable or (lambda: None)

    def _get(self) -> LocalModel:
        if self._model is None:
            self._model = self._build()
        return self._model

    def __call__(self, messages: list[dict]) -> str:
        return self._get()(messages)

    def version(self) -> str:
        version = getattr(self._get(), "version", None)
        return version() if version else ""

    def info(self) -> dict:
        info = getattr(self._get(), "info", None)
        return info() if info else {}


def register_embedded() -> list[str]:
    """Register every model of :data:`EMBEDDED` not registered yet; their names."""
    present = set(local_model_names())
    for name, model in EMBEDDED.items():
        if name not in present:
            register_local_model(name, model.factory())
    return list(EMBEDDED)


register_embedded()
