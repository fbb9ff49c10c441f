"""Simulated human scorers: how the scored hypnogram of a simulated night departs from its
generating stage, and how two scorers of the same night disagree.

Calibrated on the five scorers of the Dreem Open Datasets (DOD-H, DOD-O; measured with
:mod:`sleepvlm.data.nights`): real scorers rarely flip an isolated epoch in the middle of a
stable stretch. They disagree where the night is hard to read: *where* a stage boundary lies
(W/N1, N1/N2, N2/N3), how to call a stretch of mixed features (N1 is agreed on only about
40-50 % of the time, most often read as N2), and each center's habits (how readily N1 is
called, where N3 starts, where wake ends). So a simulated scorer

1. sees the same *appearance* of the night as every other scorer (a transitional or ambiguous
   epoch that looks like its partner stage looks so to everyone),
2. places each stage boundary itself, a few epochs early or late,
3. reads each mixed stretch with its center's habits, one decision for the whole stretch,
4. lapses rarely, and then to a neighbouring stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sleepvlm.data.records import STAGES

_INDEX = {s: i for i, s in enumerate(STAGES)}
# Stage pairs whose shared boundary scorers place differently, with the chance that one scorer
# moves a given boundary of that pair (AASM inter-scorer reliability: W/N1, N1/N2, N2/N3).
_BOUNDARY_DOUBT = {
    frozenset(("W", "N1")): 0.4,
    frozenset(("N1", "N2")): 0.4,
    frozenset(("N2", "N3")): 0.35,
    frozenset(("N1", "REM")): 0.25,
    frozenset(("N2", "REM")): 0.2,
    frozenset(("W", "N2")): 0.15,
    frozenset(("W", "REM")): 0.1,
}
# Stage a lapse goes to: the neighbours on the depth axis.
_LAPSE_TO = {
    "W": ("N1",),
    "N1": ("W", "N2"),
    "N2": ("N1", "N3"),
    "N3": ("N2",),
    "REM": ("N1",),
}


@dataclass(frozen=True)
class ScoringHabits:
    """How a center's scorers read the night (simulated habits, stated per center).

    ``n1_readiness``: how readily a W/N1 or N1/N2 borderline epoch is called N1 (1 neutral,
    above 1 more N1). ``n3_readiness``: the same for N2/N3 (R&K-trained scorers of old
    datasets merge S3+S4 and read slow-wave counts differently). ``wake_readiness``: the same
    for W against sleep. ``boundary_shift``: mean epochs a moved boundary moves.
    ``partner_reading``: chance of reading a fully mixed epoch as its partner stage.
    ``lapse_rate``: isolated errors per epoch.
    """

    n1_readiness: float = 1.0
    n3_readiness: float = 1.0
    wake_readiness: float = 1.0
    boundary_shift: float = 2.0
    partner_reading: float = 1.6
    lapse_rate: float = 0.003

    def readiness(self, stage: str) -> float:
        return {"N1": self.n1_readiness, "N3": self.n3_readiness, "W": self.wake_readiness}.get(
            stage, 1.0
        )


def shared_appearance(
    rng: np.random.Generator, truth: np.ndarray, partner: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """The stage each epoch looks like to every scorer: a mixed epoch looks like its partner
    with a chance that grows with its mixing weight (the signal is the same for all)."""
    looks_partner = rng.random(len(truth)) < np.clip(0.2 * weight, 0, 0.15)
    return np.where(looks_partner, partner, truth)


def mixed_stretches(partner: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Index of the mixed stretch each epoch belongs to (consecutive epochs with the same
    partner and weight), -1 for pure epochs."""
    mixed = weight > 0
    starts = mixed & ~np.r_[False, mixed[:-1] & (partner[1:] == partner[:-1])]
    starts &= ~np.r_[False, weight[1:] == weight[:-1]] | ~np.r_[False, mixed[:-1]]
    index = np.cumsum(starts) - 1
    return np.where(mixed, index, -1)


def shift_boundaries(
    rng: np.random.Generator, labels: np.ndarray, habits: ScoringHabits
) -> np.ndarray:
    """Each boundary between two runs moved by this scorer, with the chance of its stage pair,
    by a geometric number of epochs towards the stage the scorer reads more readily, never
    swallowing what is left of a run (an earlier move may already have shortened it)."""
    out = labels.copy()
    for at in np.flatnonzero(labels[1:] != labels[:-1]) + 1:
        before, after = labels[at - 1], labels[at]
        doubt = _BOUNDARY_DOUBT.get(frozenset((before, after)), 0.0)
        if rng.random() >= doubt:
            continue
        steps = int(rng.geometric(1.0 / habits.boundary_shift))
        favour_after = habits.readiness(after) / (
            habits.readiness(after) + habits.readiness(before)
        )
        if rng.random() < favour_after:  # the later stage starts earlier
            room = _run_length(out[:at][::-1], before) - 1
            out[at - min(steps, room) : at] = after
        else:  # the earlier stage lasts longer
            room = _run_length(out[at:], after) - 1
            out[at : at + min(steps, room)] = before
    return out


def _run_length(labels: np.ndarray, stage: str) -> int:
    """How many of the first labels are ``stage``."""
    other = np.flatnonzero(labels != stage)
    return int(other[0]) if len(other) else len(labels)


def read_mixed_epochs(
    rng: np.random.Generator,
    labels: np.ndarray,
    partner: np.ndarray,
    weight: np.ndarray,
    habits: ScoringHabits,
) -> np.ndarray:
    """Mixed epochs (weight > 0) called as their partner stage by this scorer, more readily
    towards the stages its habits favour, one decision for each mixed stretch."""
    bias = np.array(
        [habits.readiness(p) / habits.readiness(s) for s, p in zip(labels, partner, strict=True)]
    )
    chance = np.clip(habits.partner_reading * weight * bias, 0, 0.85)
    stretch = mixed_stretches(partner, weight)
    draw = rng.random(stretch.max() + 2)[stretch]  # one reading per stretch (-1: unused draw)
    reads_partner = (stretch >= 0) & (partner != labels) & (draw < chance)
    return np.where(reads_partner, partner, labels)


def lapse(rng: np.random.Generator, labels: np.ndarray, habits: ScoringHabits) -> np.ndarray:
    """Rare isolated errors, each to a neighbouring stage on the depth axis."""
    out = labels.copy()
    for e in np.flatnonzero(rng.random(len(labels)) < habits.lapse_rate):
        choices = _LAPSE_TO[labels[e]]
        out[e] = choices[rng.integers(len(choices))]
    return out


def simulate_scorers(
    rng: np.random.Generator,
    truth: np.ndarray,
    partner: np.ndarray,
    weight: np.ndarray,
    habits: ScoringHabits,
    n_scorers: int,
) -> list[np.ndarray]:
    """Hypnograms of ``n_scorers`` scorers of one center, each from the shared appearance of
    the night (see the module docstring)."""
    apparent = shared_appearance(rng, truth, partner, weight)
    hypnograms = []
    for _ in range(n_scorers):
        labels = read_mixed_epochs(rng, apparent, partner, weight, habits)
        labels = shift_boundaries(rng, labels, habits)
        hypnograms.append(lapse(rng, labels, habits))
    return hypnograms
