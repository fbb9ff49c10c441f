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
from the image. Nothing comes from the detectors: the probe is fitted on the training center's
training epochs (as chapter 11's probe check). The guided answers are a setting of their own
(:data:`sleepvlm.metrics.PROBE_GUIDANCE`), reported beside the answers as written.

:func:`guidance_table` measures weights on held-out epochs, :func:`choose_guidance` picks one on
the training center's (precision raised most, comprehensiveness kept), and
:func:`sleepvlm.explain.perception.probe_night_answers` answers test nights with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from sleepvlm.data.records import EVENT_KINDS
from sleepvlm.explain.annotations import KIND_WORDS
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
#: The least support a time is given, so that its log stays finite.
MIN_SUPPORT = 1e-3
#: The word the answers write before an event's time ("spindle on EEG at 10-15 s").
AT = "at"

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


def kind_being_cited(text: str) -> str | None:
    """The event kind of the evidence item ``text`` ends in when its next word is the event's
    time ("...; K complex on EEG at" -> "kcomplex"); None otherwise."""
    found = _ITEM_BEFORE_TIME.search(text)
    return _KIND_OF_WORDS.get(found[1]) if found else None


@dataclass(frozen=True)
class ProbeGuidance:
    """Decoding whose evidence times are guided by ``probe`` with ``weight`` (module docstring);
    weight 0 is greedy decoding."""

    probe: EventProbe
    weight: float
    #: The probe's probabilities of images already worked out (PNG -> :meth:`EventProbe.
    #: probabilities` row), so that answers checked by the same probe need not ask it twice.
    known: Mapping[bytes, np.ndarray] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise MiniError(f"probe guidance needs weight >= 0, got {self.weight}")

    @property
    def label(self) -> str:
        return f"times guided by a probe of the vision tower (weight {self.weight:g})"

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

    def logits(self, model: MiniModel, pngs: Sequence[bytes]) -> GuidedTimes:
        """The logits processor of one batch of ``pngs`` answered by ``model``."""
        times = time_tokens(model.tokenizer)
        at = model.tokenizer.convert_tokens_to_ids(AT)
        if not can_guide(model.tokenizer):
            raise MiniError(
                f"probe guidance needs the answers' time words ('10-15') and {AT!r} as tokens "
                "of the vocabulary (the mini's own tokenizer); answer without it"
            )
        ids = sorted(times)
        return GuidedTimes(
            model.tokenizer,
            self.probabilities(model, pngs),
            np.array(ids),
            [times[i] for i in ids],
            span_cover([times[i] for i in ids], self.probe.spans),
            at,
            self.weight,
        )


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

        if scores.shape[0] != len(self.probabilities):
            raise MiniError(
                f"probe guidance holds {len(self.probabilities)} images' probabilities, the "
                f"batch has {scores.shape[0]} rows"
            )
        rows = torch.nonzero(input_ids[:, -1] == self.at_id).flatten().tolist()
        if not rows or not self.weight:
            return scores
        scores = scores.clone()
        ids = torch.as_tensor(self.time_ids, device=scores.device)
        for row in rows:
            bias = self.time_bias(row, input_ids[row].tolist())
            if bias is None:
                continue
            guided = scores[row].float().log_softmax(-1)
            times = guided[ids]
            moved = times + torch.as_tensor(bias, dtype=times.dtype, device=times.device)
            guided[ids] = moved - moved.logsumexp(0) + times.logsumexp(0)
            scores[row] = guided.to(scores.dtype)
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
        support = (self.cover @ probability) / np.maximum(self.cover.sum(1), 1)
        bias = self.weight * np.log(np.maximum(support, MIN_SUPPORT))
        before = times_cited(evidence, kind)
        cited = np.array([time in before for time in self.times])
        if cited.any() and not cited.all():
            bias[cited] = -np.inf
        return bias


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


def choose_guidance(
    table: pd.DataFrame, dataset: str, slack: float = COMPREHENSIVENESS_SLACK
) -> float | None:
    """The weight that raised the precision of cited events most on ``dataset``'s rows of
    ``table`` (:func:`guidance_table`, on validation epochs) among those whose comprehensiveness
    is at most ``slack`` below greedy decoding's; None when none raised it."""
    rows = table[table["dataset"] == dataset].set_index("weight")
    if 0.0 not in rows.index:
        return None
    greedy = rows.loc[0.0]
    best, best_precision = None, greedy["precision"]
    for weight, row in rows.drop(index=0.0).iterrows():
        kept = row["comprehensiveness"] >= greedy["comprehensiveness"] - slack
        if kept and row["precision"] > best_precision:
            best, best_precision = float(weight), row["precision"]
    return best


def guidance_text(table: pd.DataFrame, weight: float | None, dataset: str) -> str:
    """What the weight :func:`choose_guidance` chose on ``dataset`` changed on each dataset's
    held-out epochs of ``table``: precision, answers citing an absent event and
    comprehensiveness beside greedy decoding's; or that none was chosen."""
    if weight is None:
        return (
            f"On {dataset.upper()}'s held-out epochs no weight raised the precision of cited "
            f"events with comprehensiveness kept (at most {COMPREHENSIVENESS_SLACK:g} lower), "
            "so none is scored on the test nights."
        )
    parts = []
    for name, rows in table.groupby("dataset", sort=False):
        by_weight = rows.set_index("weight")
        if not {0.0, weight} <= set(by_weight.index):
            continue
        greedy, guided = by_weight.loc[0.0], by_weight.loc[weight]
        changes = ", ".join(
            f"{metric.replace('_', ' ')} {metric_text(metric, greedy[metric])} → "
            f"{metric_text(metric, guided[metric])}"
            for metric in ("precision", "ungrounded_share", "comprehensiveness")
        )
        parts.append(f"{name.upper()} {changes}")
    return (
        f"Chosen on {dataset.upper()}'s held-out epochs: weight {weight:g}. "
        + "; ".join(parts)
        + "."
    )
