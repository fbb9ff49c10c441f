"""Stages read over the night (issue 19): SleepVLM-mini's own stage probabilities, decoded as a
sequence.

The mini scores each epoch from one image (the epoch with a neighbour each side) and its answer
takes the likeliest stage of that image alone. A scorer reads the night: how often each stage
comes, and what follows what (N2 holds for minutes, REM rarely follows wake). Here the mini's
probability of each stage word, the token its answer writes after "Stage:", is read for every
epoch of a night (:func:`stage_probabilities`), and the night's likeliest sequence of stages is
found under a hidden Markov model (:func:`night_path`, Viterbi) whose transitions are counted on
the training center's training nights (:class:`StageTransitions`). The mini learnt on a
class-balanced sample, so its probabilities carry no prior of how common each stage is over a
night: read as likelihoods, they meet that prior, and the night's order, in the transitions
only, with nothing fitted on held-out or test nights.

The answer is then written by the mini with its first word fixed to that stage
(:class:`ChosenStages`): the rules and the evidence are its own greedy writing after it, from
the image, so the rationale follows the stage it gives. Nothing comes from the detectors. Where
the night's stage is the one the image alone gave, the answer is greedy decoding's, word for
word, so only the other epochs are answered again (:func:`night_staged`). Read so, the answers
are a setting of their own (:data:`sleepvlm.metrics.NIGHT_STAGES`), reported beside the
answers as written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sleepvlm.data.records import STAGES
from sleepvlm.explain.annotations import EpochAnnotation
from sleepvlm.explain.citations import NightAnswers, night_inputs
from sleepvlm.explain.mini import MiniError, MiniModel, ScoredAnswer
from sleepvlm.explain.train import KAPPA_GOAL
from sleepvlm.metrics import classification_metrics, parse_stage

#: The token an answer writes before its stage ("Stage: N2. Rules: ...").
STAGE_MARKER = "Stage:"
#: How the setting is named in records and labels (:data:`sleepvlm.metrics.NIGHT_STAGES`).
HMM = "hmm"
#: Pseudo-count added to every transition and first stage, so that one never seen on the
#: training nights keeps a small probability instead of being ruled out.
PSEUDOCOUNT = 1.0


def stage_word(stage: str) -> str:
    """The token an answer writes as its stage, as the targets write it ("N2" -> "N2.")."""
    return f"{stage}."


def stage_word_ids(tokenizer) -> np.ndarray:
    """Each stage's word as a token id of ``tokenizer``, in :data:`STAGES` order (-1 for a stage
    it cannot write as one token)."""
    unknown = tokenizer.unk_token_id
    ids = [tokenizer.convert_tokens_to_ids(stage_word(s)) for s in STAGES]
    return np.array([-1 if i in (None, unknown) else i for i in ids])


def _marker_id(tokenizer) -> int:
    marker = tokenizer.convert_tokens_to_ids(STAGE_MARKER)
    if marker in (None, tokenizer.unk_token_id):
        raise MiniError(
            f"reading the stages over the night needs {STAGE_MARKER!r} as one token of the "
            "vocabulary (the mini's own tokenizer); read each epoch alone instead"
        )
    return marker


def stage_probabilities(model: MiniModel, pngs: Sequence[bytes], batch_size: int = 32):
    """(images, stages): the probability ``model`` gives each stage (:data:`STAGES` order) as the
    word after "Stage:" in its answer to each image (the answer made to begin so, as the mini's
    do: the token greedy decoding reads its stage from), over the stages alone; 0 for a stage
    its vocabulary cannot write. An image that cannot be read as one drawn at the model's
    options (:func:`sleepvlm.render.lane_problems`) is not shown to the model, which would stage
    anything: its row is NaN."""
    words = stage_word_ids(model.tokenizer)
    readable = [not found for found in model.lane_problems(pngs)]
    shown = [p for p, ok in zip(pngs, readable, strict=True) if ok]
    rows = []
    for start in range(0, len(shown), batch_size):
        output, _ = model.decode_batch(
            shown[start : start + batch_size],
            "grounding",
            lambda prompt: [ChosenStages.of(model.tokenizer, prompt)],
            max_new_tokens=2,
            scored=True,
        )
        found = output.scores[1].float().softmax(-1).cpu().numpy()
        rows.append(np.where(words >= 0, found[:, np.maximum(words, 0)], 0.0))
    out = np.full((len(pngs), len(STAGES)), np.nan)
    if rows:
        probabilities = np.concatenate(rows)
        out[np.flatnonzero(readable)] = probabilities / probabilities.sum(1, keepdims=True)
    return out


@dataclass(frozen=True)
class StageTransitions:
    """How the scored nights of a center move between stages (:data:`STAGES` order): the share
    of nights starting in each stage (``initial``) and, per stage, the share of the next epochs
    in each (``transitions``, rows sum to 1), counted on ``nights`` nights."""

    initial: np.ndarray
    transitions: np.ndarray
    nights: int

    @classmethod
    def count(cls, manifest: pd.DataFrame, pseudocount: float = PSEUDOCOUNT) -> StageTransitions:
        """Counted on every night of ``manifest`` (its ``subject``, ``night``, ``epoch`` and
        ``stage`` columns: a prepared dataset's manifest, its training split) in epoch order,
        ``pseudocount`` added to each count; a pair with an epoch of no sleep stage (movement,
        unscored) is not counted."""
        needed = ["subject", "night", "epoch", "stage"]
        missing = [c for c in needed if c not in manifest]
        if missing:
            raise MiniError(f"stage transitions need the manifest's {missing} columns")
        index = {stage: k for k, stage in enumerate(STAGES)}
        initial = np.full(len(STAGES), pseudocount)
        counts = np.full((len(STAGES), len(STAGES)), pseudocount)
        nights = manifest.sort_values("epoch").groupby(["subject", "night"], sort=False)
        for _, night in nights:
            stages = night["stage"].map(index).to_numpy(dtype=float)
            if len(stages) and not np.isnan(stages[0]):
                initial[int(stages[0])] += 1
            pairs = np.stack([stages[:-1], stages[1:]], 1)
            pairs = pairs[~np.isnan(pairs).any(1)].astype(int)
            np.add.at(counts, (pairs[:, 0], pairs[:, 1]), 1)
        if not nights.ngroups:
            raise MiniError("stage transitions need a scored night; the manifest holds none")
        return cls(
            initial / initial.sum(), counts / counts.sum(1, keepdims=True), int(nights.ngroups)
        )


def viterbi(log_emissions: np.ndarray, log_transitions: np.ndarray, log_initial: np.ndarray):
    """The likeliest state sequence (indices) of a hidden Markov model, given each step's log
    emission (steps, states), the log transitions (from, to) and the log first-state
    probabilities."""
    score = log_initial + log_emissions[0]
    back = np.zeros(log_emissions.shape, dtype=int)
    for step in range(1, len(log_emissions)):
        candidates = score[:, None] + log_transitions
        back[step] = candidates.argmax(0)
        score = candidates.max(0) + log_emissions[step]
    path = [int(score.argmax())]
    for step in range(len(log_emissions) - 1, 0, -1):
        path.append(int(back[step, path[-1]]))
    return np.array(path[::-1])


def night_path(probabilities: np.ndarray, transitions: StageTransitions) -> list[str]:
    """The likeliest stages of one night's epochs (in order) given the mini's
    :func:`stage_probabilities` of each (read as likelihoods: it learnt on a class-balanced
    sample) and the center's ``transitions``. A stage the mini gives no probability is never
    chosen; an unread epoch (NaN row) is left to its neighbours."""
    with np.errstate(divide="ignore"):
        emissions = np.log(np.nan_to_num(probabilities, nan=1.0))
        path = viterbi(emissions, np.log(transitions.transitions), np.log(transitions.initial))
    return [STAGES[k] for k in path]


def night_stages(
    model: MiniModel,
    pngs: Sequence[bytes],
    found: Sequence[EpochAnnotation],
    transitions: StageTransitions,
) -> list[str]:
    """The stage of each image ``pngs[i]`` (the epoch ``found[i]``) read over its night
    (:func:`stages_over_nights` of the model's :func:`stage_probabilities`)."""
    if len(pngs) != len(found):
        raise MiniError(f"{len(pngs)} images for {len(found)} annotated epochs: give one each")
    return stages_over_nights(stage_probabilities(model, pngs), found, transitions)


def stages_over_nights(
    probabilities: np.ndarray, found: Sequence[EpochAnnotation], transitions: StageTransitions
) -> list[str]:
    """The stage of each epoch ``found[i]`` (its :func:`stage_probabilities` row
    ``probabilities[i]``) read over its night: :func:`night_path` of each night's epochs in
    epoch order, whatever the order given."""
    nights = [(a.dataset, a.subject, a.night) for a in found]
    epochs = pd.DataFrame({"night": nights, "epoch": [a.epoch for a in found]})
    stages: list[str] = [""] * len(found)
    for _, night in epochs.sort_values("epoch").groupby("night", sort=False):
        rows = night.index.to_numpy()
        for row, stage in zip(rows, night_path(probabilities[rows], transitions), strict=True):
            stages[row] = stage
    return stages


@dataclass(frozen=True)
class ChosenStages:
    """transformers' logits-processor call that makes each answer begin "Stage: <its stage>.":
    at the first token of the answer (the prompt is ``start`` tokens long) only ``marker``
    ("Stage:") may come, and in a row whose last token is ``marker`` only that row's
    ``words[row]`` (each at the score the model gave it); every other token is left as the model
    scores it. With ``words`` None the stage itself is left to the model (the answer only
    begins with the marker, as the mini's answers do)."""

    marker: int
    start: int
    words: Sequence[int] | None = None

    @classmethod
    def of(cls, tokenizer, start: int, stages: Sequence[str] | None = None) -> ChosenStages:
        """The processor that makes answers written with ``tokenizer`` after a prompt of
        ``start`` tokens give ``stages`` (one per row of the batch; None: the model's own)."""
        if stages is None:
            return cls(_marker_id(tokenizer), start)
        ids = dict(zip(STAGES, stage_word_ids(tokenizer), strict=True))
        unwritable = sorted({s for s in stages if ids.get(s, -1) < 0})
        if unwritable:
            raise MiniError(
                f"the vocabulary cannot write the stage(s) {unwritable} as one word: answer "
                f"with stages among {[s for s in STAGES if ids[s] >= 0]}"
            )
        return cls(_marker_id(tokenizer), start, [int(ids[s]) for s in stages])

    def __call__(self, input_ids, scores):
        import torch

        if self.words is not None and scores.shape[0] != len(self.words):
            raise MiniError(f"{len(self.words)} stages chosen for a batch of {scores.shape[0]}")
        if input_ids.shape[1] == self.start:
            return _only(scores, range(len(scores)), [self.marker] * len(scores))
        if self.words is None:
            return scores
        rows = torch.nonzero(input_ids[:, -1] == self.marker).flatten().tolist()
        return _only(scores, rows, [self.words[row] for row in rows]) if rows else scores


def _only(scores, rows, tokens):
    """``scores`` with each of ``rows`` left only its token of ``tokens`` (at its score)."""
    scores = scores.clone()
    for row, token in zip(rows, tokens, strict=True):
        kept = scores[row, token].clone()
        scores[row] = float("-inf")
        scores[row, token] = kept
    return scores


#: How the epochs whose stage the night changed are answered again: (model, images, and as
#: ``stages`` the stage each must give) -> answers, each as the answers it replaces were read
#: (e.g. :func:`sleepvlm.explain.perception.probe_answers` with a probe and a guide).
Rewrite = Callable[[MiniModel, Sequence[bytes], Sequence[str]], Sequence[ScoredAnswer]]


def night_staged(
    answers: NightAnswers, rewrite: Rewrite, transitions: StageTransitions
) -> NightAnswers:
    """``answers`` (a :data:`~sleepvlm.explain.citations.NightAnswers`) with the stages read
    over each night (:func:`night_stages`): an answer whose stage is the night's is kept (greedy
    decoding with that stage fixed writes it word for word), the others are written again by
    ``rewrite`` with the night's stage."""

    def read(model: MiniModel, prepared, nights: Sequence):
        given, found = answers(model, prepared, nights)
        pngs, _ = night_inputs(prepared, nights, model.image_options())
        stages = night_stages(model, pngs, found, transitions)
        redo = [i for i, a in enumerate(given) if parse_stage(a.text) != stages[i]]
        out = list(given)
        if redo:
            again = rewrite(model, [pngs[i] for i in redo], stages=[stages[i] for i in redo])
            for i, answer in zip(redo, again, strict=True):
                out[i] = answer
        return out, found

    return read


def night_kappa_table(
    model: MiniModel, prepared: dict, nights: dict[str, Sequence], transitions: StageTransitions
) -> pd.DataFrame:
    """One row per dataset (name -> prepared dataset, and its ``nights``): epochs, and Cohen's
    κ of the stages against the labels, each epoch read alone (the likeliest stage of its
    image, greedy decoding's) and read over the night (:func:`night_stages`)."""
    rows = []
    for name, data in prepared.items():
        pngs, found = night_inputs(data, nights[name], model.image_options())
        labels = [a.stage for a in found]
        probabilities = stage_probabilities(model, pngs)
        alone = [
            STAGES[int(np.argmax(p))] if not np.isnan(p).all() else None for p in probabilities
        ]
        over = stages_over_nights(probabilities, found, transitions)
        rows.append(
            {
                "dataset": name,
                "nights": len(nights[name]),
                "epochs": len(found),
                "kappa_alone": classification_metrics(labels, alone)["kappa"],
                "kappa_night": classification_metrics(labels, over)["kappa"],
                "changed": float(np.mean([a != b for a, b in zip(alone, over, strict=True)])),
            }
        )
    return pd.DataFrame(rows)


def night_kappa_text(table: pd.DataFrame) -> str:
    """What reading the stages over the night changed in a :func:`night_kappa_table` (with a
    ``setting`` column: within center or external): per setting, the mean whole-night κ read
    epoch by epoch and over the night (to three decimals: it can lie next to its goal), whether
    the latter meets
    :data:`~sleepvlm.explain.train.KAPPA_GOAL`, and the share of epochs whose stage changed."""
    parts = []
    for setting, rows in table.groupby("setting", sort=False):
        alone, night = rows["kappa_alone"].mean(), rows["kappa_night"].mean()
        goal = KAPPA_GOAL[setting]
        verdict = "meets" if night >= goal else "is short of"
        parts.append(f"{setting} {alone:.3f} → {night:.3f} ({verdict} the goal of {goal:.2f})")
    if not parts:
        return "No whole night was read."
    changed = (table["changed"] * table["epochs"]).sum() / table["epochs"].sum()
    return (
        "Whole-night κ read epoch by epoch → read over the night: "
        + "; ".join(parts)
        + f". The night's sequence changed the stage of {changed:.0%} of the epochs."
    )
