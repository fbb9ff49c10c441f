"""Probe-guided decoding of SleepVLM-mini (issue 19): each cited time read from where the
model's own vision tower shows the event.

Chapter 11 finds the mini's answers cite most events at the wrong time (it writes the times most
frequent in its training answers), while a linear probe on its frozen image tokens
(:class:`sleepvlm.explain.perception.EventProbe`) tells which column of an epoch holds an event
well above chance: the tokens hold *where*, and the answers do not read it. The probe can read
the vision tower's patch states before their merge into tokens instead, columns half as wide in
time, which is what chapter 11 guides with. Probe-guided
decoding hands it to them as they are written. Once an answer has written "<event> on <channel>
at", its next token is the event's time, and each time token's log probability is raised by

    weight × log(support)

where ``support`` is the probe's mean probability, for the kind the item names, over the token
columns the time's span covers (at least :data:`MIN_SUPPORT`): the mean, not the highest, so that
a span wider than its event gains nothing by covering more columns. The time tokens' probability
is then scaled back to its total before: whether a time comes next stays the model's call, only
which time is moved. A time the answer has already cited for the same kind is not written
again (:func:`times_cited`): otherwise every item of a kind is drawn to the one place the probe
finds best, and the answer cites one event twice (on the book's model, before this rule, about
a sixth of the guided claims repeated an earlier one).

Only the evidence's time tokens are touched. The stage, the rules, which kinds of events and how
many are greedy decoding's, so κ is unchanged; the answer is still the model's own writing, read
from the image.

The same probe can also guide which kind of event each item names (:class:`GuidedKinds`, a
weight of its own): where an item begins, each kind a rule of the answer calls for is made
likelier by the log of the probe's best support for an event of that kind the answer has not
cited yet. On the book's model, a guided answer's wrong claims are as often another kind where
an event is as a wrong time, and kinds left out lose it more decisive evidence than items too
few. How many items an answer cites stays the model's call: guiding that too (towards more
items while the probe sees an uncited event) moved comprehensiveness on validation epochs by
less than 0.01.

Nothing comes from the detectors: the probe is fitted on the training center's training epochs
(as chapter 11's probe check). The guided answers are settings of their own
(:data:`sleepvlm.metrics.PROBE_GUIDANCE`, :data:`sleepvlm.metrics.KIND_GUIDANCE`), reported
beside the answers as written. :func:`guidance_table` (:func:`kind_table`) measures weights on
held-out epochs, :func:`choose_guidance` picks one on the training center's (precision raised
most, comprehensiveness kept), and :func:`sleepvlm.explain.perception.probe_night_answers`
answers test nights with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from sleepvlm.data.records import EVENT_KINDS
from sleepvlm.explain.annotations import KIND_WORDS, RULE_EVIDENCE
from sleepvlm.explain.faithfulness import metric_text
from sleepvlm.explain.mini import EVIDENCE, MiniError, MiniModel
from sleepvlm.explain.perception import EventProbe, span_cover
from sleepvlm.explain.snapshots import decoding_table

#: The weights chapter 11 tries (0, greedy decoding, is always measured beside them). On the
#: book's model precision and comprehensiveness both rose with the weight up to about 8 and
#: then held: past it, the time is the probe's own reading of where the event lies, and the
#: probe's errors are what is left (chapter 11's table shows it).
WEIGHTS: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
#: How much lower than greedy decoding's comprehensiveness a weight's may be on the held-out
#: epochs and the weight still be chosen: the guidance is to place the events the answer
#: cites, not to cite fewer of them (the cuts do that, and are measured apart).
COMPREHENSIVENESS_SLACK = 0.02
#: The column of :func:`kind_table` that holds the kinds' weight.
KIND_WEIGHT = "kind_weight"
#: The least support a time is given, so that its log stays finite.
MIN_SUPPORT = 1e-3
#: The word the answers write before an event's time ("spindle on EEG at 10-15 s").
AT = "at"
#: The word that ends an evidence item when another follows ("... at 0-5 s; K complex ...").
MORE = "s;"

_TIME = re.compile(r"(\d+)-(\d+)")
_ITEM_BEFORE_TIME = re.compile(r"(?:^|[:;,.]\s*)([A-Za-z][A-Za-z ]*?) on [A-Z]+ at$")
_ITEM_WITH_TIME = re.compile(r"([A-Za-z][A-Za-z ]*?) on [A-Z]+ at (\d+)-(\d+)")
_KIND_OF_WORDS = {words: kind for kind, words in KIND_WORDS.items()}


def time_tokens(tokenizer) -> dict[int, tuple[int, int]]:
    """The vocabulary's time tokens (words "<start>-<end>", s): token id -> (start, end)."""
    return {
        token: (int(found[1]), int(found[2]))
        for word, token in tokenizer.get_vocab().items()
        if (found := _TIME.fullmatch(word))
    }


def can_guide(tokenizer) -> bool:
    """Whether answers written with ``tokenizer`` can be guided: it has time tokens and
    :data:`AT` as a token (the mini's own tokenizer, trained on enough answers, has both)."""
    return bool(time_tokens(tokenizer)) and tokenizer.convert_tokens_to_ids(AT) != (
        tokenizer.unk_token_id
    )


def times_cited(text: str, kind: str) -> set[tuple[int, int]]:
    """The times (s) the evidence items of ``text`` cite for events of ``kind`` ("spindle on EEG
    at 0-5 s; K complex on EEG at 10-15 s", "spindle" -> {(0, 5)})."""
    words = KIND_WORDS[kind]
    return {(int(a), int(b)) for said, a, b in _ITEM_WITH_TIME.findall(text) if said == words}


def time_support(cover: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """Each time's support: the probe's mean ``probability`` (one kind's, per column) over the
    columns its span covers (``cover``: times, columns)."""
    return (cover @ probability) / np.maximum(cover.sum(1), 1)


def kinds_of_rules(text: str) -> set[str]:
    """The event kinds that are evidence for a rule the answer ``text`` names ("Stage: N2.
    Rules: N2.spindle, N2.kcomplex. Evidence: ..." -> {"spindle", "kcomplex"})."""
    named = text.partition("Rules:")[2].partition(EVIDENCE)[0]
    rules = (word.strip().rstrip(".") for word in named.split(","))
    return {kind for rule in rules for kind in RULE_EVIDENCE.get(rule, ())}


def kind_being_cited(text: str) -> str | None:
    """The event kind of the evidence item ``text`` ends in when its next word is the event's
    time ("...; K complex on EEG at" -> "kcomplex"); None otherwise."""
    found = _ITEM_BEFORE_TIME.search(text)
    return _KIND_OF_WORDS.get(found[1]) if found else None


@dataclass(frozen=True)
class ProbeGuidance:
    """Decoding whose evidence times are guided by ``probe`` with ``weight`` (module docstring);
    weight 0 is greedy decoding. With ``kind_weight``, the probe also guides which kind of
    event each item names (:class:`GuidedKinds`)."""

    probe: EventProbe
    weight: float
    #: The probe's probabilities of images already worked out (PNG -> :meth:`EventProbe.
    #: probabilities` row), so that answers checked by the same probe need not ask it twice.
    known: Mapping[bytes, np.ndarray] | None = field(default=None, compare=False, repr=False)
    kind_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.weight < 0 or self.kind_weight < 0:
            raise MiniError(
                f"probe guidance needs weights >= 0, got {self.weight} (kinds {self.kind_weight})"
            )

    @property
    def label(self) -> str:
        label = f"times guided by a probe of the vision tower (weight {self.weight:g})"
        if self.kind_weight:
            label += f", kinds too (weight {self.kind_weight:g})"
        return label

    def knowing(self, pngs: Sequence[bytes], probabilities: np.ndarray) -> ProbeGuidance:
        """This guidance with the probe's ``probabilities`` of ``pngs`` (one row per image)
        known in advance."""
        return replace(self, known=dict(zip(pngs, probabilities, strict=True)))

    def probabilities(self, model: MiniModel, pngs: Sequence[bytes]) -> np.ndarray:
        """The probe's probabilities of ``pngs``: those :meth:`knowing` was given, or worked
        out now."""
        if self.known is not None and all(png in self.known for png in pngs):
            return np.stack([self.known[png] for png in pngs])
        return self.probe.probabilities(model, pngs)

    def logits(self, model: MiniModel, pngs: Sequence[bytes]) -> list:
        """The logits processors of one batch of ``pngs`` answered by ``model``: the times',
        and the kinds' when :attr:`kind_weight` is set."""
        times = time_tokens(model.tokenizer)
        at = model.tokenizer.convert_tokens_to_ids(AT)
        if not can_guide(model.tokenizer):
            raise MiniError(
                f"probe guidance needs the answers' time words ('10-15') and {AT!r} as tokens "
                "of the vocabulary (the mini's own tokenizer); answer without it"
            )
        ids = sorted(times)
        spans = [times[i] for i in ids]
        cover = span_cover(spans, self.probe.spans)
        probabilities = self.probabilities(model, pngs)
        guided = [
            GuidedTimes(
                model.tokenizer, probabilities, np.array(ids), spans, cover, at, self.weight
            )
        ]
        if self.kind_weight:
            guided.append(
                GuidedKinds.of(model.tokenizer, probabilities, spans, cover, self.kind_weight)
            )
        return guided


def after_last(ids: list[int], token: int) -> list[int]:
    """The tokens of ``ids`` after the last ``token`` (all of them when it is not there)."""
    return ids[len(ids) - ids[::-1].index(token) :] if token in ids else ids


def require_rows(probabilities: np.ndarray, scores) -> None:
    """Refuse a batch whose rows are not the images whose probe ``probabilities`` are held."""
    if scores.shape[0] != len(probabilities):
        raise MiniError(
            f"probe guidance holds {len(probabilities)} images' probabilities, the batch has "
            f"{scores.shape[0]} rows"
        )


def moved_within(row_scores, ids: Sequence[int], bias: Sequence[float]):
    """One row's log probabilities with ``bias`` added to the tokens ``ids``, these then scaled
    back to their total probability before: which of them comes next is moved, not whether one
    of them does."""
    import torch

    guided = row_scores.float().log_softmax(-1)
    chosen = torch.as_tensor(ids, device=guided.device)
    before = guided[chosen]
    moved = before + torch.as_tensor(np.asarray(bias, dtype=float)).to(before)
    guided[chosen] = moved - moved.logsumexp(0) + before.logsumexp(0)
    return guided.to(row_scores.dtype)


@dataclass(frozen=True)
class GuidedTimes:
    """transformers' logits-processor call of probe-guided decoding: in each row whose last
    token is ``at_id`` and whose item names a kind the probe knows, the time tokens
    ``time_ids`` (their spans ``times``, over the columns: ``cover``) get ``weight ×
    log(support)`` added to their log probabilities, from that row's image's ``probabilities``
    (columns, kinds; NaN for a kind without a probe), and are scaled back to their total
    probability. A time the answer has already cited for that kind is not written again: the
    probe would otherwise draw every item of a kind to the one place it finds best, and the
    answer would cite one event twice."""

    tokenizer: object
    probabilities: np.ndarray
    time_ids: np.ndarray
    times: Sequence[tuple[int, int]]
    cover: np.ndarray
    at_id: int
    weight: float

    def __call__(self, input_ids, scores):
        import torch

        require_rows(self.probabilities, scores)
        rows = torch.nonzero(input_ids[:, -1] == self.at_id).flatten().tolist()
        if not rows or not self.weight:
            return scores
        scores = scores.clone()
        for row in rows:
            bias = self.time_bias(row, input_ids[row].tolist())
            if bias is not None:
                scores[row] = moved_within(scores[row], self.time_ids.tolist(), bias)
        return scores

    def time_bias(self, row: int, ids: list[int]) -> np.ndarray | None:
        """What each time token gets added in ``row``, whose tokens so far are ``ids``
        (-inf for a time already cited for the kind, unless every time is); None where the item
        names no kind the probe knows."""
        evidence = self.tokenizer.decode(ids, skip_special_tokens=True).rpartition(EVIDENCE)[2]
        kind = kind_being_cited(evidence.lstrip())
        if kind is None:
            return None
        probability = self.probabilities[row, :, EVENT_KINDS.index(kind)]
        if np.isnan(probability).all():
            return None
        bias = self.weight * np.log(np.maximum(time_support(self.cover, probability), MIN_SUPPORT))
        before = times_cited(evidence, kind)
        cited = np.array([time in before for time in self.times])
        if cited.any() and not cited.all():
            bias[cited] = -np.inf
        return bias


@dataclass(frozen=True)
class GuidedKinds:
    """transformers' logits-processor call that lets the probe guide which kind of event each
    evidence item names, as :class:`GuidedTimes` guides its time. Where an item's kind is being
    written (after :data:`EVIDENCE` or :data:`MORE`, or within a kind's words), each next word
    that can go on to name a guided kind gets ``weight × log(open support)`` of the best such
    kind, and these words are scaled back to their total probability before: whether an event
    item comes next, and how many, stay the model's call; only which kind is moved.

    Only kinds that are evidence for a rule the answer has named are guided (the stage and
    rules stay the model's, and the answer stays coherent), and a kind's *open support* is the
    probe's best support (:func:`time_support`) over the times that overlap no item of that
    kind the answer has cited: an event it has not cited yet."""

    tokenizer: object
    probabilities: np.ndarray
    times: Sequence[tuple[int, int]]
    cover: np.ndarray
    weight: float
    #: kind -> its words' token ids ("K complex" -> (id of "K", id of "complex"))
    kind_ids: Mapping[str, tuple[int, ...]]
    evidence_id: int
    more_id: int

    @classmethod
    def of(
        cls,
        tokenizer,
        probabilities: np.ndarray,
        times: Sequence[tuple[int, int]],
        cover: np.ndarray,
        weight: float,
    ) -> GuidedKinds:
        """The processor of one batch (``probabilities``: its images' probe rows) for the
        answers ``tokenizer`` writes; refused when it cannot write where items begin."""
        vocab = tokenizer.get_vocab()
        if not {EVIDENCE, MORE} <= set(vocab):
            raise MiniError(
                f"guiding the kinds needs {EVIDENCE!r} and {MORE!r} as tokens of the vocabulary "
                "(the mini's own tokenizer); guide the times only"
            )
        kind_ids = {
            kind: tuple(vocab[word] for word in words.split())
            for kind, words in KIND_WORDS.items()
            if all(word in vocab for word in words.split())
        }
        return cls(
            tokenizer, probabilities, times, cover, weight, kind_ids, vocab[EVIDENCE], vocab[MORE]
        )

    def __call__(self, input_ids, scores):
        require_rows(self.probabilities, scores)
        if not self.weight:
            return scores
        scores = scores.clone()
        for row in range(scores.shape[0]):
            bias = self.kind_bias(row, input_ids[row].tolist())
            if bias:
                scores[row] = moved_within(scores[row], list(bias), list(bias.values()))
        return scores

    def kind_bias(self, row: int, ids: list[int]) -> dict[int, float]:
        """What each guided word gets added in ``row``, whose tokens so far are ``ids`` (token
        id -> bias); empty where no kind is being named."""
        if self.evidence_id not in ids:
            return {}
        item = after_last(after_last(ids, self.evidence_id), self.more_id)
        named = [
            (kind, words)
            for kind, words in self.kind_ids.items()
            if len(words) > len(item) and tuple(item) == words[: len(item)]
        ]
        if not named:
            return {}
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        allowed = kinds_of_rules(text)
        best: dict[int, float] = {}
        for kind, words in named:
            support = self.open_support(row, kind, text) if kind in allowed else None
            if support is not None:
                best[words[len(item)]] = max(best.get(words[len(item)], 0.0), support)
        return {w: self.weight * np.log(max(s, MIN_SUPPORT)) for w, s in best.items()}

    def open_support(self, row: int, kind: str, text: str) -> float | None:
        """The probe's best support for an event of ``kind`` at a time overlapping none the
        answer ``text`` cites for it (0 when every time does); None without a probe of it."""
        probability = self.probabilities[row, :, EVENT_KINDS.index(kind)]
        if np.isnan(probability).all():
            return None
        cited = times_cited(text.rpartition(EVIDENCE)[2], kind)
        open_times = ~span_cover(self.times, sorted(cited)).any(1)
        if not open_times.any():
            return 0.0
        return float(time_support(self.cover, probability)[open_times].max())


def guidance_table(
    model: MiniModel,
    probe: EventProbe,
    inputs: Mapping[str, tuple[list[bytes], list]],
    weights: Sequence[float] = WEIGHTS,
    tolerance_s: float = 1.0,
) -> pd.DataFrame:
    """One row per (weight, dataset): κ and the faithfulness goals' metrics of ``model``'s
    answers to each dataset's held-out ``inputs`` (name -> (images, annotations),
    :func:`sleepvlm.explain.snapshots.held_out_inputs`), greedy (weight 0) and guided by
    ``probe`` at each of ``weights``."""
    return decoding_table(model, inputs, guidance_decodings(probe, weights), "weight", tolerance_s)


def guidance_decodings(
    probe: EventProbe,
    weights: Sequence[float] = WEIGHTS,
    known: Mapping[bytes, np.ndarray] | None = None,
) -> dict[float, dict]:
    """:func:`guidance_table`'s decodings (weight -> :meth:`MiniModel.answer_all`'s keyword
    arguments): greedy (weight 0) and guided by ``probe`` at each of ``weights``, with the
    probe's probabilities of the images in ``known`` (PNG -> row) not worked out again."""
    guided = {w: {"guide": ProbeGuidance(probe, w, known)} for w in weights if w}
    return {0.0: {}, **guided}


def kind_table(
    model: MiniModel,
    probe: EventProbe,
    inputs: Mapping[str, tuple[list[bytes], list]],
    weight: float,
    kind_weights: Sequence[float] = WEIGHTS,
    tolerance_s: float = 1.0,
) -> pd.DataFrame:
    """:func:`guidance_table` of the kinds: one row per (kind weight, dataset), the times
    guided at ``weight`` throughout, kind weight 0 the times guided alone."""
    decodings = {
        kinds: {"guide": ProbeGuidance(probe, weight, kind_weight=kinds)}
        for kinds in (0.0, *kind_weights)
    }
    return decoding_table(model, inputs, decodings, KIND_WEIGHT, tolerance_s)


def choose_guidance(
    table: pd.DataFrame,
    dataset: str,
    slack: float = COMPREHENSIVENESS_SLACK,
    column: str = "weight",
) -> float | None:
    """The weight (in ``column``: the times' or :data:`KIND_WEIGHT`) that raised the precision
    of cited events most on ``dataset``'s rows of ``table`` (:func:`guidance_table` or
    :func:`kind_table`, on validation epochs) among those whose comprehensiveness is at most
    ``slack`` below that of weight 0's; None when none raised it."""
    rows = table[table["dataset"] == dataset].set_index(column)
    if 0.0 not in rows.index:
        return None
    greedy = rows.loc[0.0]
    best, best_precision = None, greedy["precision"]
    for weight, row in rows.drop(index=0.0).iterrows():
        kept = row["comprehensiveness"] >= greedy["comprehensiveness"] - slack
        if kept and row["precision"] > best_precision:
            best, best_precision = float(weight), row["precision"]
    return best


def guidance_text(
    table: pd.DataFrame, weight: float | None, dataset: str, column: str = "weight"
) -> str:
    """What the weight :func:`choose_guidance` chose on ``dataset`` (in ``column``) changed on
    each dataset's held-out epochs of ``table``: precision, answers citing an absent event and
    comprehensiveness beside weight 0's; or that none was chosen."""
    name = column.replace("_", " ")
    if weight is None:
        return (
            f"On {dataset.upper()}'s held-out epochs no {name} raised the precision of cited "
            f"events with comprehensiveness kept (at most {COMPREHENSIVENESS_SLACK:g} lower), "
            "so none is scored on the test nights."
        )
    parts = []
    for dataset_name, rows in table.groupby("dataset", sort=False):
        by_weight = rows.set_index(column)
        if not {0.0, weight} <= set(by_weight.index):
            continue
        before, guided = by_weight.loc[0.0], by_weight.loc[weight]
        changes = ", ".join(
            f"{metric.replace('_', ' ')} {metric_text(metric, before[metric])} → "
            f"{metric_text(metric, guided[metric])}"
            for metric in ("precision", "ungrounded_share", "comprehensiveness")
        )
        parts.append(f"{dataset_name.upper()} {changes}")
    return (
        f"Chosen on {dataset.upper()}'s held-out epochs: {name} {weight:g}. "
        + "; ".join(parts)
        + "."
    )
