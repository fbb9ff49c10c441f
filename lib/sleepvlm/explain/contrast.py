"""Contrastive decoding of SleepVLM-mini (issue 19): a lever at answer time that pulls each
answer towards what *this* image shows.

The mini cites one template of times per stage (chapter 11): its answers depend on the image
through the stage far more than through where the events lie. Contrastive decoding (in the
spirit of visual contrastive decoding, Leng et al. 2024) answers the image and a *negative*
image side by side and, at each token, prefers the tokens the real image makes more likely
than the negative does:

    score = (1 + weight) * log p(token | image) - weight * log p(token | negative)

among the tokens the real image itself finds plausible (probability at least ``plausibility``
times its most likely token's, so that the contrast never writes what the image rules out).
Both rows take the same token, so they stay one answer apart only in their image. With
``evidence_only`` the contrast starts after the answer's evidence marker: the stage and rules
are greedy decoding's, and only the cited events are pulled.

Two negatives ask two questions. The *mirrored* image (time reversed) shows the same waveforms,
so the same stage and the same kinds of events, at other times: only what depends on where
things lie is pulled. The *blank* image shows nothing: everything the image informs is pulled,
the stage included. The model is the same in every setting; only the decoding changes, so the
lever costs no training and is measured on the same held-out epochs as the training curve.

:func:`contrast_table` measures settings on validation epochs; :func:`choose_contrast` picks one
there (the precision of cited events raised most, κ kept), and :func:`score_nights` scores the
chosen setting on the test nights it is reported on.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sleepvlm.explain.citations import night_inputs
from sleepvlm.explain.faithfulness import metric_text, score_answers
from sleepvlm.explain.mini import MiniError, MiniModel, blank_like
from sleepvlm.explain.snapshots import CURVE_METRICS, decoding_table

#: The negative images contrastive decoding can answer beside the real one.
NEGATIVE_IMAGES: tuple[str, ...] = ("mirrored", "blank")

#: The last part of a setting's name (Contrast.from_name) that contrasts the evidence only.
EVIDENCE_ONLY = "evidence"
#: The label of answers decoded greedily from the image alone.
GREEDY = "greedy"
#: How much lower than greedy decoding's a setting's κ may be on the validation epochs and the
#: setting still be chosen: the lever is for the evidence, not a trade of stages for it.
KAPPA_SLACK = 0.01


@dataclass(frozen=True)
class Contrast:
    """Contrastive decoding against one of :data:`NEGATIVE_IMAGES`: ``weight`` says how hard
    each token is pulled away from the negative image's (0: greedy decoding), ``plausibility``
    the least probability, relative to the real image's most likely token, a token needs to be
    written at all; with ``evidence_only``, tokens before the evidence marker are greedy."""

    negative: str
    weight: float
    plausibility: float = 0.1
    evidence_only: bool = False

    def __post_init__(self) -> None:
        if self.negative not in NEGATIVE_IMAGES:
            raise MiniError(
                f"negative image {self.negative!r} is not one of {NEGATIVE_IMAGES}; "
                "choose one of them for contrastive decoding"
            )
        if self.weight < 0 or not 0 < self.plausibility <= 1:
            raise MiniError(
                f"contrastive decoding needs weight >= 0 and 0 < plausibility <= 1, got "
                f"weight {self.weight} and plausibility {self.plausibility}"
            )

    @property
    def name(self) -> str:
        """The setting as a chapter parameter names it (:meth:`from_name`)."""
        return f"{self.negative}-{self.weight:g}" + (
            f"-{EVIDENCE_ONLY}" if self.evidence_only else ""
        )

    @classmethod
    def from_name(cls, name: str) -> Contrast:
        """The setting ``name`` names: ``<negative>-<weight>``, then ``-evidence`` to contrast
        the evidence only (``mirrored-1``, ``blank-4-evidence``); the default plausibility."""
        parts = name.split("-")
        try:
            weight = float(parts[1])
        except (IndexError, ValueError):
            weight = None
        extra = parts[2:]
        if weight is None or extra not in ([], [EVIDENCE_ONLY]):
            raise MiniError(
                f"contrastive decoding {name!r} is not <negative>-<weight>[-{EVIDENCE_ONLY}] "
                f"with a negative of {NEGATIVE_IMAGES}, e.g. 'blank-4-{EVIDENCE_ONLY}'"
            )
        return cls(parts[0], weight, evidence_only=bool(extra))

    @property
    def label(self) -> str:
        where = ", evidence only" if self.evidence_only else ""
        return f"against the {self.negative} image, weight {self.weight:g}{where}"

    def negatives(self, pngs: Sequence[bytes]) -> list[bytes]:
        """The negative image of each epoch image."""
        return [negative_image(png, self.negative) for png in pngs]

    def logits(self, n_images: int, evidence_id: int) -> ContrastiveLogits:
        """The logits processor of a batch whose first ``n_images`` rows show the real
        images and the next ``n_images`` their negatives (``evidence_id``: the token of the
        answers' evidence marker)."""
        start = evidence_id if self.evidence_only else None
        return ContrastiveLogits(n_images, self.weight, self.plausibility, start)


#: The settings chapter 11 tries. Measured on the book's model (200 held-out epochs per center,
#: DCSM / SHHS / ISRUC; greedy: precision 0.42 / 0.42 / 0.32, kappa 0.77 / 0.73 / 0.58): the
#: mirrored image changes little (weight 1: precision 0.42 / 0.43 / 0.32), so the answers' times
#: barely depend on where the events are drawn; pulling the whole answer from the blank image
#: (weight 4) raises precision to 0.49 / 0.54 / 0.38 and costs kappa (0.66 / 0.58 / 0.41): the
#: stage is pulled too; from the evidence on (weight 4), precision 0.47 / 0.57 / 0.41 with the
#: greedy stage. The gain is not the same in every model: trained with seed 1 (precision 0.40 /
#: 0.43 / 0.30 greedy), the same setting gave 0.36 / 0.44 / 0.32, lower on DCSM, so it is
#: chosen per model on validation epochs (choose_contrast), never assumed.
SETTINGS: tuple[Contrast, ...] = (
    Contrast("mirrored", 1.0),
    Contrast("blank", 4.0),
    Contrast("mirrored", 4.0, evidence_only=True),
    Contrast("blank", 4.0, evidence_only=True),
    Contrast("blank", 8.0, evidence_only=True),
)


def negative_image(png: bytes, negative: str) -> bytes:
    """The ``negative`` (:data:`NEGATIVE_IMAGES`) of an epoch image, as PNG bytes of the same
    size: mirrored left to right (time reversed: the scored epoch stays in the middle, its events
    at other times), or blank white."""
    from PIL import Image, ImageOps

    if negative == "blank":
        return blank_like(png)
    if negative != "mirrored":
        raise MiniError(f"negative image {negative!r} is not one of {NEGATIVE_IMAGES}")
    with Image.open(io.BytesIO(png)) as image:
        out = ImageOps.mirror(image.convert("RGB"))
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class ContrastiveLogits:
    """transformers' logits-processor call for contrastive decoding (see the module docstring):
    rows ``:n`` hold the real images' next-token logits, rows ``n:`` their negatives'; both get
    the contrasted scores, so that each pair writes the same token. With ``start_id``, a pair
    is contrasted only once its answer holds that token, and gets the real image's scores
    before."""

    n: int
    weight: float
    plausibility: float
    start_id: int | None = None

    def __call__(self, input_ids, scores):
        import torch

        if scores.shape[0] != 2 * self.n:
            raise MiniError(
                f"contrastive decoding expects {2 * self.n} rows (images, then their negatives), "
                f"got {scores.shape[0]}"
            )
        log_probs = scores.float().log_softmax(-1)
        real, negative = log_probs[: self.n], log_probs[self.n :]
        contrasted = (1 + self.weight) * real - self.weight * negative
        floor = real.max(-1, keepdim=True).values + np.log(self.plausibility)
        contrasted = contrasted.masked_fill(real < floor, -torch.inf)
        if self.start_id is not None:
            started = (input_ids[: self.n] == self.start_id).any(-1, keepdim=True)
            contrasted = torch.where(started, contrasted, real)
        return torch.cat([contrasted, contrasted]).to(scores.dtype)


def contrast_table(
    model: MiniModel,
    inputs: Mapping[str, tuple[list[bytes], list]],
    contrasts: Sequence[Contrast],
    tolerance_s: float = 1.0,
) -> pd.DataFrame:
    """One row per (decoding, dataset): κ and the faithfulness goals' metrics of ``model``'s
    answers to each dataset's held-out ``inputs`` (name -> (images, annotations),
    :func:`sleepvlm.explain.snapshots.held_out_inputs`), decoded greedily and with each of
    ``contrasts``."""
    decodings = {GREEDY: {}, **{c.label: {"contrast": c} for c in contrasts}}
    return decoding_table(model, inputs, decodings, "decoding", tolerance_s)


def contrast_text(table: pd.DataFrame, chosen: Contrast | None, dataset: str) -> str:
    """What the setting :func:`choose_contrast` chose on ``dataset`` changed on the held-out
    epochs of ``table`` (:func:`contrast_table`), averaged over its datasets: precision,
    answers citing an absent event, comprehensiveness and κ beside greedy decoding's; or that
    none was chosen."""
    if chosen is None:
        return (
            f"On {dataset.upper()}'s held-out epochs no setting raised the precision of cited "
            f"events with κ kept (at most {KAPPA_SLACK:g} lower), so none is scored on the test "
            "nights."
        )
    means = table.groupby("decoding", sort=False)[list(CURVE_METRICS)].mean()
    greedy, pulled = means.loc[GREEDY], means.loc[chosen.label]

    def change(metric: str) -> str:
        return f"{metric_text(metric, greedy[metric])} → {metric_text(metric, pulled[metric])}"

    return (
        f"Chosen on {dataset.upper()}'s held-out epochs: decoding {chosen.label}. Averaged over "
        f"the centers' held-out epochs it moved precision {change('precision')}, answers citing "
        f"an absent event {change('ungrounded_share')}, comprehensiveness "
        f"{change('comprehensiveness')} and κ {change('kappa')}."
    )


def choose_contrast(
    table: pd.DataFrame,
    contrasts: Sequence[Contrast],
    dataset: str,
    kappa_slack: float = KAPPA_SLACK,
) -> Contrast | None:
    """The setting of ``contrasts`` that raised the precision of cited events most on
    ``dataset``'s rows of ``table`` (:func:`contrast_table`, on validation epochs) among those
    whose κ is at most ``kappa_slack`` below greedy decoding's; None when none raised it."""
    rows = table[table["dataset"] == dataset].set_index("decoding")
    if GREEDY not in rows.index:
        return None
    greedy = rows.loc[GREEDY]
    best, best_precision = None, greedy["precision"]
    for contrast in contrasts:
        if contrast.label not in rows.index:
            continue
        row = rows.loc[contrast.label]
        if row["kappa"] >= greedy["kappa"] - kappa_slack and row["precision"] > best_precision:
            best, best_precision = contrast, row["precision"]
    return best


def score_nights(
    model: MiniModel, prepared, nights, contrast: Contrast, tolerance_s: float = 1.0
) -> pd.DataFrame:
    """:func:`~sleepvlm.explain.faithfulness.score_answers` of ``model``'s answers, decoded
    with ``contrast``, to every epoch of ``nights`` of a prepared dataset, with the ``answer``
    each row was scored on."""
    pngs, truth = night_inputs(prepared, nights, model.image_options())
    texts = [a.text for a in model.answer_all(pngs, contrast=contrast)]
    return score_answers(texts, truth, tolerance_s).assign(answer=texts)
