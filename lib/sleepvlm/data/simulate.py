"""Simulated multi-center PSG cohort: realistic nights with known ground truth.

No real PSG dataset can be downloaded here, so the book runs on nights drawn by this module.
Each night has a realistic hypnogram (sleep-onset latency, a first NREM period of about an hour
and a half, ~90-min ultradian cycles, N3 early, REM late, awakenings), its person drawn from the
center's population (age, sleep apnea severity), and stage-specific EEG/EOG/EMG built from a
time-varying 1/f background plus overlap-added waveforms (spindles, K-complexes, slow waves,
vertex waves, alpha/theta bursts, sawtooth waves, rapid and slow eye movements, blinks, arousals
and artifacts), each listed in ``Recording.events`` as a scorer would mark it: a spindle by its
body above half amplitude, an eye movement by its rapid deflection, a K complex inside N3 as a
slow wave; the background alone holds no wave of AASM slow-wave size. Three centers differ in
montage, amplifier gain, hardware filters, noise floor, mains frequency and line-noise level, so
models meet a real domain shift. Scored hypnograms come from simulated scorers calibrated on the
five real scorers of the Dreem Open Datasets (:mod:`sleepvlm.data.scorers`): they place stage
boundaries differently, read ambiguous stretches with their center's habits, and so disagree
mostly at W/N1, N1/N2 and N2/N3.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import fft as sp_fft
from scipy import signal

from sleepvlm.data.records import (
    EPOCH_S,
    EVENT_COLUMNS,
    SECOND_EYE,
    STAGES,
    DataError,
    Recording,
)
from sleepvlm.data.scorers import ScoringHabits, simulate_scorers


class SimulationError(DataError):
    """Bad arguments to the simulator (unknown center, impossible duration...)."""


@dataclass(frozen=True)
class CenterSpec:
    """Recording set-up of one simulated center (what makes its signals differ from others).

    ``channels`` and ``rates`` are keyed by role (eeg, eog, emg, and eog2: the second eye, ROC,
    where the real dataset records it). ``highpass``/``lowpass`` are
    the amplifier's hardware filter corners (Hz) of EEG/EOG, ``emg_highpass`` that of the chin
    EMG; ``gain`` scales every channel (calibration error), ``noise_floor`` is the amplifier's
    white noise (µV RMS) and ``line_noise`` the mains amplitude (µV) on EEG/EOG (twice on EMG).
    ``frontal`` marks a frontal EEG derivation (more delta and eye artifact, less alpha).
    ``emg_gain`` scales the chin EMG alone (electrode spacing and impedance differ between
    labs, so chin tone on one center's recordings is not on the same scale as another's);
    ``artifact_rate`` scales the rates of body movements, electrode pops and sweat drifts
    (unattended home recordings and sleep-disorder patients have more of them).
    ``alpha_intrusion_share`` and ``rem_without_atonia_share`` are the shares of its people
    whose stage cues are weak: alpha that persists through NREM sleep (alpha-delta sleep, seen
    in pain, mood disorders and insomnia) and chin tone that persists through REM sleep (REM
    sleep without atonia: REM behaviour disorder, antidepressants). Their epochs keep their
    stage; only the signs a scorer or a model reads are blurred.
    ``age_mean`` is the center's mean age factor (0 young adult, 1 elderly), drawn from a beta
    distribution whose ``age_concentration`` sets how alike its people's ages are (a cohort
    recruited in one age band against a clinic that sees every age); its people's obstructive
    sleep apnea severity (0..1) is drawn from a beta distribution of mean ``apnea_mean``
    (higher ``apnea_concentration``: a more uniform population). ``sedative_share`` is the
    share of its people who sleep on a benzodiazepine or Z-drug (patients of a sleep-disorder
    clinic often do): excess fast (beta) activity through sleep, more spindles, smaller slow
    waves. ``ambiguous_share`` sets how much of a night lies in stretches that carry the
    features of two stages (they start at a rate that would cover that share were they never to
    overlap; overlapping, they cover about 1 - exp(-share)): scorers agree less on some
    patient groups than on others (κ 0.61 to 0.82 across disorders in the SIESTA study).
    ``habits`` are how its scorers read the night (:class:`~sleepvlm.data.scorers.ScoringHabits`).
    ``person_spread`` widens how far its nights differ from each other (1: one lab's usual
    spread): recorded amplitudes (scalp, electrodes, set-up) and each stage's own signature in
    a person (how much theta their N1 holds, how much tone their chin keeps in REM), as
    :data:`PERSON_SD` sets them. A clinic that sees many disorders and medications meets more
    different people than one lab's referrals do, and a study recorded at home by several
    sites more different set-ups.
    """

    name: str
    channels: dict[str, str]
    rates: dict[str, float]
    line_freq: float
    gain: float
    noise_floor: float
    highpass: float
    lowpass: float
    emg_highpass: float
    line_noise: float
    frontal: bool
    emg_gain: float
    artifact_rate: float
    alpha_intrusion_share: float
    rem_without_atonia_share: float
    age_mean: float
    apnea_mean: float
    apnea_concentration: float
    age_concentration: float
    sedative_share: float
    ambiguous_share: float
    habits: ScoringHabits
    n_scorers: int = 1
    person_spread: float = 1.0


CENTERS: dict[str, CenterSpec] = {
    "dcsm": CenterSpec(
        name="dcsm",
        channels={"eeg": "F4-M1", "eog": "E1-M2", "eog2": "E2-M2", "emg": "CHIN"},
        rates={"eeg": 256.0, "eog": 256.0, "eog2": 256.0, "emg": 256.0},
        line_freq=50.0,
        gain=1.0,
        noise_floor=0.5,
        highpass=0.1,
        lowpass=90.0,
        emg_highpass=10.0,
        line_noise=2.5,
        frontal=True,
        emg_gain=1.0,
        artifact_rate=1.0,
        alpha_intrusion_share=0.05,
        rem_without_atonia_share=0.05,
        age_mean=0.45,
        apnea_mean=0.25,
        apnea_concentration=4.0,
        age_concentration=4.0,
        sedative_share=0.1,
        ambiguous_share=0.45,
        habits=ScoringHabits(boundary_shift=1.5),
    ),
    "shhs": CenterSpec(
        name="shhs",
        channels={"eeg": "EEG", "eog": "EOG(L)", "eog2": "EOG(R)", "emg": "EMG"},
        rates={"eeg": 125.0, "eog": 50.0, "eog2": 50.0, "emg": 125.0},
        line_freq=60.0,
        gain=0.85,
        noise_floor=1.0,
        highpass=0.15,
        lowpass=45.0,
        emg_highpass=5.0,
        line_noise=3.0,
        frontal=False,
        emg_gain=0.6,
        artifact_rate=1.5,
        alpha_intrusion_share=0.1,
        rem_without_atonia_share=0.05,
        age_mean=0.7,
        apnea_mean=0.4,
        apnea_concentration=5.0,
        age_concentration=8.0,
        sedative_share=0.05,
        ambiguous_share=0.5,
        habits=ScoringHabits(n1_readiness=0.75, n3_readiness=1.3, wake_readiness=1.2),
        person_spread=1.3,
    ),
    "isruc": CenterSpec(
        name="isruc",
        channels={"eeg": "C4-A1", "eog": "LOC-A2", "eog2": "ROC-A1", "emg": "X1"},
        rates={"eeg": 200.0, "eog": 200.0, "eog2": 200.0, "emg": 200.0},
        line_freq=50.0,
        gain=1.15,
        noise_floor=1.5,
        highpass=0.3,
        lowpass=70.0,
        emg_highpass=10.0,
        line_noise=5.0,
        frontal=False,
        emg_gain=1.6,
        artifact_rate=2.0,
        alpha_intrusion_share=0.3,
        rem_without_atonia_share=0.25,
        age_mean=0.5,
        apnea_mean=0.55,
        apnea_concentration=2.0,
        age_concentration=1.5,
        sedative_share=0.45,
        ambiguous_share=0.65,
        habits=ScoringHabits(n3_readiness=0.85, boundary_shift=3.0, partner_reading=1.8),
        n_scorers=2,
        person_spread=2.0,
    ),
}

# Row order of the per-stage parameter table: wake is split by eye state (alpha vs blinks).
_ROWS = ("W_EO", "W_EC", "N1", "N2", "N3", "REM")
_ROW = {r: i for i, r in enumerate(_ROWS)}
_STAGE_INDEX = {s: i for i, s in enumerate(STAGES)}

# Per-state parameters. Background: PSD levels (µV²/Hz) of a 1/f component at 1 Hz (``a1``), a
# 1/(1+(f/1.5)^3) low-frequency component (``a2``) and peaks at 6 Hz (theta), the alpha
# frequency, 20 Hz (beta) and >20 Hz (muscle); event rates per min; chin EMG SD (µV). Levels
# were fitted to the real excerpts (Sleep-EDF wake, YASA's N2/N3 epochs); events add on top.
# The delta of N3 comes mostly from drawn (listed) slow waves: the background alone stays
# below the slow-wave criterion, so every wave a scorer would mark is in ``events``.
_PARAM_NAMES = (
    "a1", "a2", "theta_pk", "alpha_pk", "beta_pk", "hf_pk",
    "spindle", "kcomplex", "vertex", "theta", "alpha", "sawtooth",
    "rem", "sem", "blink", "arousal", "movement", "emg", "twitch",
)  # fmt: skip
# fmt: off
_PARAMS = np.array(
    [
        # a1, a2, theta, alpha, beta, hf | spindle, kc, vertex, theta, alpha, sawtooth,
        # rem, sem, blink, arousal, movement | emg, twitch
        [14, 30, 0.5, 1, 0.6, 0.4, 0, 0, 0, 0.2, 1, 0, 14, 0, 16, 0, 0.4, 14, 0],  # W_EO
        [12, 30, 0.5, 2.5, 0.4, 0.2, 0, 0, 0.1, 0.4, 9, 0, 1, 1, 2, 0, 0.2, 10, 0],  # W_EC
        [9, 45, 8, 0.3, 0.25, 0.05, 0.2, 0.1, 4, 4, 0.2, 0, 0.2, 3.5, 0.3, 0.2, 0.1, 8, 0],  # N1
        [5, 85, 1, 0.2, 0.05, 0, 4, 1.6, 0.3, 0.5, 0.1, 0, 0, 0.1, 0, 0.12, 0.05, 4.5, 0],  # N2
        [3, 120, 1, 0.3, 0, 0, 1, 0.5, 0, 0.2, 0, 0, 0, 0, 0, 0.04, 0.02, 4, 0],  # N3
        [8, 50, 2.5, 0.4, 0.3, 0.05, 0, 0, 0, 1.5, 0.5, 1.8, 12, 0.2, 0, 0.12, 0.05, 0.7, 8],  # REM
    ]
)
# fmt: on
_P = {n: i for i, n in enumerate(_PARAM_NAMES)}
# Highest ``a2`` level (µV²/Hz, as recorded): above it a Gaussian background starts to hold
# 0.5-2 Hz cycles of 75 µV p2p (about 0.15 per epoch at this level, none at 95).
_A2_CAP = 130.0

# How far one person's signature of a stage departs from the table above: the SD of the log
# factor on each stage's band levels and event rates, at a ``person_spread`` of 1 (people's
# spectra differ stage by stage, not only in overall amplitude).
PERSON_SD = 0.15

# How far one person's recorded amplitudes depart from the center's (SD of the log factor, at a
# ``person_spread`` of 1): scalp and skull thickness for the EEG, electrode placement for the
# eyes, and the chin's fat and electrode spacing most of all.
AMPLITUDE_SD = {"eeg": 0.12, "eog": 0.2, "emg": 0.3}

# 20-Hz (beta) level a benzodiazepine or Z-drug adds through sleep (µV²/Hz, as ``beta_pk``):
# it raises sleep's fast activity a few-fold (N2's level 0.05 to 0.15), but not to the level of
# wake (0.4-0.6), which would make a sedated person's sleep read as wake.
SEDATIVE_BETA = 0.1

# Mean length (epochs) of an ambiguous stretch (how often they start is set by the center's
# ``ambiguous_share``).
AMBIGUOUS_RUN = 8.0
# Stage an ambiguous epoch drifts to (its neighbours on the depth axis).
_AMBIGUOUS_PARTNERS = {
    "W": ("N1",),
    "N1": ("W", "N2"),
    "N2": ("N1", "N3"),
    "N3": ("N2",),
    "REM": ("N1", "N2"),
}


# --------------------------------------------------------------------------------------------
# Hypnogram
# --------------------------------------------------------------------------------------------


def simulate_hypnogram(
    rng: np.random.Generator,
    n_epochs: int,
    age: float = 0.5,
    apnea: float = 0.0,
    cycle_min: float = 90.0,
) -> np.ndarray:
    """Generating ("true") stage of each 30-s epoch of one night, from lights-off.

    Built cycle by cycle, as real nights are (DOD-H/DOD-O, Sleep-EDF; chapter 01 compares):
    a sleep-onset latency (log-normal, longer with ``age``); N1 at sleep onset; a first NREM
    period of about an hour and a half before the first REM period, which is sometimes skipped
    (more often with ``apnea``), giving REM latency its long tail; ~``cycle_min``-min
    NREM-REM cycles whose N3 declines over the night at a rate of the person's own (so N3 is
    early but not all in the first cycle) while REM lengthens; and a final awakening. Both
    ``age`` and ``apnea`` (0..1: obstructive sleep apnea severity) reduce N3; apnea fragments
    N2 and REM with awakenings and shifts to N1 (respiratory arousals), age adds wake. The
    result is cut or padded (wake) to ``n_epochs``.
    """
    if n_epochs < 1:
        raise SimulationError(f"simulate_hypnogram: n_epochs must be >= 1, got {n_epochs}")
    age = float(np.clip(age, 0.0, 1.0))
    apnea = float(np.clip(apnea, 0.0, 1.0))
    per_min = 2  # epochs per minute
    # per hour of sleep: awakenings, and shifts to N1 without waking
    awakenings_per_hour = 0.9 + 1.2 * age + 3.5 * apnea
    shifts_per_hour = 0.3 + 0.6 * age + 2.0 * apnea
    segments: list[tuple[str, int]] = []

    def add(stage: str, minutes: float) -> None:
        n = int(round(minutes * per_min))
        if n > 0:
            segments.append((stage, n))

    def awakening() -> None:
        # most awakenings last a minute or two; a few are long (log-normal)
        add("W", float(np.clip(rng.lognormal(np.log(1.0 + 1.0 * age), 0.8), 0.5, 40.0)))
        add("N1", rng.uniform(0.5, 1.0))

    def add_light(stage: str, minutes: float, breaks: float = 1.0) -> None:
        """A run of N2 or REM broken by awakenings and shifts to N1 (``breaks`` times the
        night's rates)."""
        n = int(round(minutes * per_min))
        rate = breaks * awakenings_per_hour / 120.0
        shift = breaks * shifts_per_hour / 120.0
        while n > 0:
            gap = int(rng.exponential(1.0 / (rate + shift))) + 1
            take = min(gap, n)
            segments.append((stage, take))
            n -= take
            if n <= 0:
                break
            if rng.random() < rate / (rate + shift):
                awakening()
            else:
                add("N1", rng.uniform(0.5, 1.0))

    def add_deep(minutes: float) -> None:
        """N3, interrupted now and then by a minute or two of N2."""
        pieces = int(rng.integers(1, 3 + int(2 * apnea)))
        for k in range(pieces):
            add("N3", minutes / pieces)
            if k < pieces - 1:
                add("N2", rng.uniform(0.5, 2.0))

    total_min = n_epochs / per_min
    add("W", float(np.clip(rng.lognormal(np.log(12 + 8 * age), 0.7), 2.0, 90.0)))
    add("N1", rng.uniform(1.5, 4.0))
    if rng.random() < 0.3:  # a false start back to wake, typical of sleep onset
        add("W", rng.uniform(0.5, 2.0))
        add("N1", rng.uniform(1.0, 2.5))
    n3_first = rng.uniform(25.0, 45.0) * (1.15 - 0.75 * age) * (1.0 - 0.5 * apnea)
    n3_decline = rng.uniform(0.5, 0.85)  # share of N3 left from one cycle to the next
    first_nrem = float(np.clip(rng.lognormal(np.log(80.0 + 20.0 * apnea), 0.25), 45.0, 200.0))
    skip_first_rem = rng.random() < 0.15 + 0.3 * apnea
    final_wake = rng.uniform(2.0, 12.0 + 10 * age)
    elapsed = sum(n for _, n in segments) / per_min
    cycle = 0
    while elapsed < total_min - final_wake:
        nrem = first_nrem if cycle == 0 else rng.normal(cycle_min, 10.0) * 0.8
        n3 = n3_first * n3_decline**cycle * rng.uniform(0.7, 1.2)
        n3 = n3 if n3 >= 4.0 else 0.0
        n2 = max(nrem - n3, 15.0)
        add_light("N2", n2 * 0.4)
        if n3:
            add_deep(n3)
        add_light("N2", n2 * 0.6)
        if not (cycle == 0 and skip_first_rem):
            rem = rng.uniform(5, 15) if cycle == 0 else min(15.0 + 8.0 * cycle, 45.0)
            if rng.random() < 0.3:
                add("N1", rng.uniform(0.5, 1.5))
            # REM periods hold together better than N2 (a third of its breaks)
            add_light("REM", max(rem + rng.normal(0, 3.0), 3.0) * (1.0 - 0.2 * apnea), 1 / 3)
            if rng.random() < 0.5:
                awakening()
        elapsed = sum(n for _, n in segments) / per_min
        cycle += 1
    stages = np.repeat([s for s, _ in segments], [n for _, n in segments]).astype(object)
    # the final awakening closes the night, however short it is
    stages = stages[: max(n_epochs - int(final_wake * per_min), 0)]
    out = np.full(n_epochs, "W", dtype=object)
    out[: len(stages)] = stages
    return out


# --------------------------------------------------------------------------------------------
# Per-night traits and per-epoch parameters
# --------------------------------------------------------------------------------------------


def _subject_traits(rng: np.random.Generator, center: CenterSpec) -> dict[str, float]:
    """Stable traits of one person (same for all their nights)."""
    age = float(np.clip(rng.beta(*_age_shape(center.age_mean, center.age_concentration)), 0, 1))
    traits = {
        "age": age,
        **{
            f"{role}_scale": float(rng.lognormal(0.0, sd * center.person_spread))
            for role, sd in AMPLITUDE_SD.items()
        },
        # slow waves shrink and spindles thin out with age (both about halve from young to
        # old adulthood), so an older person's N3 lies nearer its 20 % line, N2 nearer N1
        "sw_amp": float(rng.uniform(0.95, 1.25) * (1.3 - 0.6 * age)),
        "spindle_rate": float(rng.uniform(0.6, 1.4) * (1.25 - 0.6 * age)),
        "spindle_freq": float(rng.normal(13.2, 0.6) - (0.8 if center.frontal else 0.0)),
        "alpha_amp": float(rng.lognormal(0.0, 0.35)),
        "alpha_freq": float(np.clip(rng.normal(10.0 - 0.6 * age, 0.6), 8.2, 11.8)),
        "eyes_closed": float(rng.uniform(0.3, 0.85)),
        "rem_rate": float(rng.uniform(0.6, 1.4)),
        "vertex_rate": float(rng.uniform(0.6, 1.4)),
        "sawtooth_rate": float(rng.uniform(0.4, 1.6)),
        "movement_rate": float(rng.uniform(0.5, 1.5) * (0.8 + 0.6 * age)),
        "heart_rate": float(rng.uniform(55, 75)),
        "apnea": float(rng.beta(*_beta_shape(center.apnea_mean, center.apnea_concentration))),
        "alpha_intrusion": float(rng.random() < center.alpha_intrusion_share),
        "rem_without_atonia": float(rng.random() < center.rem_without_atonia_share),
        "sedative": float(rng.random() < center.sedative_share),
    }
    if traits["sedative"]:  # benzodiazepines add spindles and flatten slow waves
        traits["spindle_rate"] *= 1.3
        traits["sw_amp"] *= 0.85
    return traits


def _person_signature(rng: np.random.Generator, center: CenterSpec) -> np.ndarray:
    """One person's per-state parameter table: :data:`_PARAMS` with each entry scaled by a
    log-normal factor of SD ``PERSON_SD * center.person_spread`` (same for all their nights)."""
    sd = PERSON_SD * center.person_spread
    return _PARAMS * np.exp(rng.normal(0.0, sd, _PARAMS.shape))


def _beta_shape(mean: float, concentration: float) -> tuple[float, float]:
    return mean * concentration, (1 - mean) * concentration


def _age_shape(mean: float, concentration: float) -> tuple[float, float]:
    """Beta shape of the age factor: one added to each side keeps the density unimodal, so
    even the widest clinic has more middle-aged people than extremes."""
    a, b = _beta_shape(mean, concentration)
    return a + 1, b + 1


def _eye_state(rng: np.random.Generator, stages: np.ndarray, p_closed: float) -> np.ndarray:
    """Eyes closed (True) in each wake epoch: runs of a two-state Markov chain."""
    n = len(stages)
    flips = rng.random(n) < 0.15
    start = rng.random() < p_closed
    state = (np.cumsum(flips) + start) % 2 == 1
    # drowsy wake next to sleep is almost always eyes-closed
    near_sleep = np.zeros(n, bool)
    asleep = stages != "W"
    near_sleep[:-1] |= asleep[1:]
    near_sleep[1:] |= asleep[:-1]
    state |= near_sleep & (rng.random(n) < 0.8)
    return state


def _transition_mix(
    rng: np.random.Generator, stages: np.ndarray, ambiguous_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Partner stage and mixing weight per epoch: transitional and ambiguous epochs carry
    features of an adjacent stage (weight 0 = pure, up to ~0.45 = nearly undecidable);
    ambiguous stretches start at ``ambiguous_share / AMBIGUOUS_RUN`` per epoch, so that they
    cover about 1 - exp(-ambiguous_share) of a night, as they may overlap."""
    n = len(stages)
    partner = stages.copy()
    weight = np.zeros(n)
    # ambiguous stretches of a few minutes (mean 8 epochs) over about half the night: most
    # of the epochs real scorers dispute lie away from stage changes (DOD: two thirds)
    # alert wake is not ambiguous: only drowsy wake within 5 min of sleep mixes with N1
    drowsy = np.convolve(stages != "W", np.ones(21), mode="same") > 0
    for start in np.flatnonzero(rng.random(n) < ambiguous_share / AMBIGUOUS_RUN):
        if stages[start] == "W" and not drowsy[start]:
            continue
        end = min(start + int(rng.geometric(1 / AMBIGUOUS_RUN)), n)
        same = end if (stages[start:end] == stages[start]).all() else start + 1
        partner[start:same] = rng.choice(_AMBIGUOUS_PARTNERS[stages[start]])
        weight[start:same] = rng.uniform(0.05, 0.35)
    prev_diff = np.r_[False, stages[1:] != stages[:-1]]
    next_diff = np.r_[stages[:-1] != stages[1:], False]
    for e in np.flatnonzero(prev_diff | next_diff):
        choices = []
        if prev_diff[e]:
            choices.append(stages[e - 1])
        if next_diff[e]:
            choices.append(stages[e + 1])
        partner[e] = choices[rng.integers(len(choices))]
        weight[e] = rng.uniform(0.05, 0.3)
    return partner, weight


def _state_rows(stages: np.ndarray, eyes_closed: np.ndarray) -> np.ndarray:
    rows = np.array([_ROW.get(s, _ROW["N2"]) for s in stages])
    rows[(stages == "W") & eyes_closed] = _ROW["W_EC"]
    rows[(stages == "W") & ~eyes_closed] = _ROW["W_EO"]
    return rows


def _epoch_params(
    stages: np.ndarray,
    partner: np.ndarray,
    weight: np.ndarray,
    eyes_closed: np.ndarray,
    traits: dict[str, float],
    center: CenterSpec,
    rng: np.random.Generator,
    signature: np.ndarray,
) -> np.ndarray:
    """Parameter table (epochs x _PARAM_NAMES) after mixing, subject traits and night trends;
    ``signature`` is the person's per-state table (:func:`_person_signature`)."""
    own = signature[_state_rows(stages, eyes_closed)]
    other = signature[_state_rows(partner, np.ones(len(stages), bool))]
    par = (1 - weight)[:, None] * own + weight[:, None] * other
    n = len(stages)
    night = np.linspace(0.0, 1.0, n)
    # slow drifts of event density over the night and between epochs (people differ, nights drift)
    wobble = np.exp(rng.normal(0, 0.25, (n, par.shape[1])))
    par = par * wobble
    par[:, _P["spindle"]] *= traits["spindle_rate"] * (0.85 + 0.3 * night)
    par[:, _P["vertex"]] *= traits["vertex_rate"]
    par[:, _P["sawtooth"]] *= traits["sawtooth_rate"]
    # phasic vs tonic REM: eye-movement density is bursty from epoch to epoch
    par[:, _P["rem"]] *= traits["rem_rate"] * rng.gamma(1.2, 1 / 1.2, n) * (0.8 + 0.4 * night)
    par[:, _P["movement"]] *= traits["movement_rate"]
    par[:, _P["a2"]] *= traits["sw_amp"] * (1.1 - 0.2 * night) * (1.2 if center.frontal else 1.0)
    par[:, _P["a2"]] = np.minimum(
        par[:, _P["a2"]], _A2_CAP / (center.gain * traits["eeg_scale"]) ** 2
    )
    par[:, _P["alpha"]] *= traits["alpha_amp"] ** 0.5
    par[:, _P["alpha_pk"]] *= traits["alpha_amp"] ** 2 * (0.4 if center.frontal else 0.7)
    par[:, _P["emg"]] *= traits["emg_scale"]
    _weaken_cues(par, stages, traits)
    return par


def _weaken_cues(par: np.ndarray, stages: np.ndarray, traits: dict[str, float]) -> None:
    """Blur the stage signs of a person with alpha-delta sleep, REM sleep without atonia or a
    sedative (in place): alpha bursts and background alpha near those of relaxed wake through
    N2/N3; chin tone near that of N2, with more twitches, through REM; fast (beta) activity
    near that of wake through all of sleep."""
    if traits["alpha_intrusion"]:
        nrem = np.isin(stages, ("N2", "N3"))
        par[nrem, _P["alpha"]] += 4.0 * traits["alpha_amp"] ** 0.5
        par[nrem, _P["alpha_pk"]] += 1.2 * traits["alpha_amp"] ** 2
    if traits["rem_without_atonia"]:
        rem = stages == "REM"
        par[rem, _P["emg"]] *= 5.0
        par[rem, _P["twitch"]] *= 2.0
    if traits["sedative"]:  # a few times sleep's own beta, still well below that of wake
        par[stages != "W", _P["beta_pk"]] += SEDATIVE_BETA


# --------------------------------------------------------------------------------------------
# Signal building blocks (vectorized: frame-wise spectral synthesis, template overlap-add)
# --------------------------------------------------------------------------------------------


def _background(
    rng: np.random.Generator, n: int, fs: float, levels: np.ndarray, alpha_freq: float
) -> np.ndarray:
    """Non-stationary colored noise: windowed overlap-add of 8-s frames whose PSD is a
    per-frame mix of components (1/f, low-frequency knee, theta, alpha, beta and muscle peaks).

    ``levels`` holds each component's PSD level (µV²/Hz) at every frame center (frames x 6)."""
    frame = int(8 * fs) // 2 * 2
    hop = frame // 2
    n_frames = levels.shape[0]
    freqs = np.fft.rfftfreq(frame, 1 / fs)
    f = np.maximum(freqs, 0.25)

    def bump(center: float, width: float) -> np.ndarray:
        return np.exp(-0.5 * ((freqs - center) / width) ** 2)

    shapes = np.stack(
        [
            1 / f,
            1 / (1 + (f / 1.5) ** 3),
            bump(6.0, 1.2),
            bump(alpha_freq, 0.8),
            bump(20.0, 5.0),
            1 / (1 + np.exp(-(freqs - 25.0) / 3.0)) / (1 + (freqs / 80) ** 4),
        ]
    )
    shapes[:, freqs < 0.15] = 0.0
    # one-sided PSD P from DFT coefficients A(a + ib): P = 4 A^2 / (fs N)
    amp = np.sqrt(np.maximum(levels, 0) @ shapes * (fs * frame / 4)).astype(np.float32)
    coef = np.empty((n_frames, len(freqs)), dtype=np.complex64)
    coef.real = rng.standard_normal(coef.shape, dtype=np.float32)
    coef.imag = rng.standard_normal(coef.shape, dtype=np.float32)
    coef *= amp
    frames = sp_fft.irfft(coef, n=frame, axis=1, workers=-1)
    frames *= np.sin(np.pi * (np.arange(frame) + 0.5) / frame).astype(np.float32)
    out = np.zeros((n_frames + 1) * hop, dtype=np.float32)
    out[: n_frames * hop] += frames[:, :hop].ravel()
    out[hop : (n_frames + 1) * hop] += frames[:, hop:].ravel()
    return out[hop : hop + n]


def _knots(values: np.ndarray, ramp_s: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-constant per-epoch values with ``2*ramp_s``-long linear ramps at boundaries."""
    starts = np.arange(len(values)) * EPOCH_S
    x = np.stack([starts + ramp_s, starts + EPOCH_S - ramp_s], axis=1).ravel()
    return x, np.repeat(values, 2, axis=0)


def _frame_values(par: np.ndarray, n_frames: int, hop_s: float) -> np.ndarray:
    """Per-epoch values at frame centers (frames start one hop before the signal)."""
    x, y = _knots(par)
    centers = np.arange(n_frames) * hop_s
    return np.stack([np.interp(centers, x, col) for col in y.T], axis=1)


def _sample_envelope(values: np.ndarray, n: int, fs: float) -> np.ndarray:
    x, y = _knots(values)
    return np.interp(np.arange(n) / fs, x, y).astype(np.float32)


def _draw_onsets(
    rng: np.random.Generator, rate_per_min: np.ndarray, min_gap: float = 0.0
) -> np.ndarray:
    """Poisson event onsets (s), with ``rate_per_min`` per epoch."""
    counts = rng.poisson(np.maximum(rate_per_min, 0) * EPOCH_S / 60)
    epoch = np.repeat(np.arange(len(rate_per_min)), counts)
    onsets = np.sort((epoch + rng.random(len(epoch))) * EPOCH_S)
    if min_gap > 0 and len(onsets) > 1:
        keep = np.r_[True, np.diff(onsets) >= min_gap]
        onsets = onsets[keep]
    return onsets


class _Canvas:
    """Waveforms to overlap-add, kept as (sample index, value) pairs per layer and summed into
    each output channel with one ``np.bincount`` (a weighted mix of layers)."""

    def __init__(self, n: int, fs: float) -> None:
        self.n, self.fs = n, fs
        self.layers: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, layer: str, onsets: np.ndarray, waves: np.ndarray) -> None:
        """Place one row of ``waves`` at each onset (s)."""
        if len(onsets) == 0:
            return
        idx = np.round(np.asarray(onsets) * self.fs).astype(np.int64)[:, None]
        idx = idx + np.arange(waves.shape[1])
        ok = (idx < self.n) & (waves != 0)
        self.layers.setdefault(layer, []).append((idx[ok], waves[ok]))

    def render(self, mix: dict[str, float]) -> np.ndarray:
        idx, val = [], []
        for layer, coef in mix.items():
            for i, v in self.layers.get(layer, []):
                idx.append(i)
                val.append(v * coef)
        if not idx:
            return np.zeros(self.n, dtype=np.float32)
        summed = np.bincount(np.concatenate(idx), np.concatenate(val), minlength=self.n)
        return summed.astype(np.float32)


def _times(fs: float, max_s: float) -> np.ndarray:
    return (np.arange(int(np.ceil(max_s * fs))) / fs)[None, :]


def _window(t: np.ndarray, dur: np.ndarray, power: float = 1.0) -> np.ndarray:
    inside = (t >= 0) & (t < dur)
    return np.where(inside, np.abs(np.sin(np.pi * np.clip(t / dur, 0, 1))) ** power, 0.0)


def _p2p(waves: np.ndarray) -> np.ndarray:
    return waves.max(axis=1) - waves.min(axis=1)


class _Events:
    """Collects ground-truth events; amplitudes are p2p µV as recorded (after gain/filter)."""

    def __init__(self) -> None:
        self.parts: list[pd.DataFrame] = []

    def add(self, kind: str, channel: str, onsets, durations, amplitudes) -> None:
        if len(onsets):
            self.parts.append(
                pd.DataFrame(
                    {
                        "kind": kind,
                        "channel": channel,
                        "onset": np.asarray(onsets, float),
                        "duration": np.broadcast_to(np.asarray(durations, float), len(onsets)),
                        "amplitude": np.broadcast_to(np.asarray(amplitudes, float), len(onsets)),
                    }
                )
            )

    def table(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame(columns=list(EVENT_COLUMNS))
        df = pd.concat(self.parts, ignore_index=True)
        return df.sort_values(["onset", "kind"], ignore_index=True)[list(EVENT_COLUMNS)]


def _mains(n: int, fs: float, freq: float, amplitude: float, phase: float) -> np.ndarray:
    """Mains interference (fundamental and a weak 3rd harmonic below Nyquist), built from one
    exact period tiled over the night."""
    period = int(round(fs / np.gcd(int(fs), int(freq))))
    t = np.arange(period) / fs
    wave = amplitude * np.sin(2 * np.pi * freq * t + phase)
    if 3 * freq < fs / 2:
        wave += 0.2 * amplitude * np.sin(2 * np.pi * 3 * freq * t + 3 * phase)
    return np.resize(wave.astype(np.float32), n)


def _hardware(center: CenterSpec, role: str, fs: float) -> np.ndarray:
    """Second-order sections of the amplifier's high-pass and anti-alias low-pass."""
    hp = center.emg_highpass if role == "emg" else center.highpass
    lp = min(center.lowpass, 0.4 * fs)
    high = signal.butter(1, hp, "highpass", fs=fs, output="sos")
    low = signal.butter(4, lp, "lowpass", fs=fs, output="sos")
    return np.vstack([high, low])


def _role_gain(center: CenterSpec, role: str) -> float:
    """Amplifier gain of a channel role (the chin EMG has its own set-up on top)."""
    return center.gain * (center.emg_gain if role == "emg" else 1.0)


#: How much the second eye's channel sees of an eye movement and of a blink, relative to the
#: first (electrode placement and distance to the eye differ between the two sides).
SECOND_EYE_MOVEMENT_GAIN = (0.75, 1.25)
SECOND_EYE_BLINK_GAIN = (0.6, 1.1)


def _second_eye(rng, canvas: _Canvas, eeg: np.ndarray, n: int, fs: float) -> np.ndarray:
    """ROC as recorded beside LOC: a horizontal eye movement (rapid or slow) moves the cornea
    towards one electrode and away from the other, so it shows with the opposite sign; a blink
    is vertical and shows with the same sign; each side has its own gain and its own noise
    (the frontal EEG it picks up is the same)."""
    movement = rng.uniform(*SECOND_EYE_MOVEMENT_GAIN)
    blink = rng.uniform(*SECOND_EYE_BLINK_GAIN)
    mix = {"eeg": 0.55, "eye": -movement, "blink": blink, "art_eog": 1}
    return 0.55 * eeg + canvas.render(mix) + _eye_channel_noise(rng, n, fs)


def _eye_channel_noise(rng, n: int, fs: float) -> np.ndarray:
    """An EOG electrode's own slow noise (skin potentials, drifts), about 12 µV below 2 Hz."""
    own = signal.sosfilt(
        signal.butter(1, 2.0, fs=fs, output="sos"), rng.standard_normal(n, dtype=np.float32)
    )
    return (own * 12.0).astype(np.float32)


def _chain_gain(center: CenterSpec, role: str, fs: float, freq: np.ndarray) -> np.ndarray:
    """|H(f)| x gain: how much a drawn waveform at ``freq`` is scaled on the recording."""
    _, h = signal.sosfreqz(_hardware(center, role, fs), worN=np.atleast_1d(freq), fs=fs)
    return _role_gain(center, role) * np.abs(h)


# --------------------------------------------------------------------------------------------
# Night
# --------------------------------------------------------------------------------------------


def _slow_waves(
    rng: np.random.Generator,
    stages: np.ndarray,
    partner: np.ndarray,
    weight: np.ndarray,
    traits: dict[str, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Onset, duration (one cycle, 0.5-2 s) and p2p of slow waves, with an epoch coverage that
    follows the AASM definition: >= 20 % in N3 (deeper mid-run, shallower late), < 20 % in N2.

    Waves are drawn until they cover an epoch's target, then spread over it with uneven gaps,
    so that they come in trains of back-to-back cycles as well as singly."""
    n = len(stages)
    night = np.linspace(0, 1, n)
    target = np.zeros(n)
    is_n3 = stages == "N3"
    # depth profile within each N3 run: rises then falls
    run_id = np.cumsum(np.r_[True, stages[1:] != stages[:-1]])
    for r in np.unique(run_id[is_n3]):
        idx = np.flatnonzero(run_id == r)
        pos = (np.arange(len(idx)) + 0.5) / len(idx)
        deep = rng.uniform(0.45, 0.75) * traits["sw_amp"] * (1.05 - 0.3 * night[idx])
        target[idx] = 0.25 + np.maximum(deep - 0.25, 0) * np.sin(np.pi * pos) ** 0.7
    target[is_n3] -= 0.5 * weight[is_n3] * np.maximum(target[is_n3] - 0.25, 0)
    n2 = stages == "N2"
    target[n2] = np.where(rng.random(n2.sum()) < 0.2, rng.uniform(0.0, 0.06, n2.sum()), 0.0)
    near_n3 = n2 & (partner == "N3")
    target[near_n3] = rng.uniform(0.06, 0.12, near_n3.sum())
    target[is_n3] = np.maximum(target[is_n3], 0.22)

    most = 40  # cycles drawn per epoch, more than fit in 30 s at the highest target
    dur = 1 / rng.uniform(0.55, 1.8, (n, most))
    before = np.cumsum(dur, axis=1) - dur
    chosen = (before < np.minimum(target, 0.9)[:, None] * EPOCH_S) & (before + dur < EPOCH_S)
    # gaps before each chosen wave and after the last share the epoch's free time unevenly
    gaps = rng.gamma(0.4, 1.0, (n, most + 1)) * np.c_[np.ones(n, bool), chosen]
    free = EPOCH_S - (dur * chosen).sum(axis=1)
    gaps *= (free / np.maximum(gaps.sum(axis=1), 1e-12))[:, None]
    start = np.cumsum(gaps[:, :-1], axis=1) + before
    e, s = np.nonzero(chosen)
    d = dur[e, s]
    onset = e * EPOCH_S + start[e, s]
    amp_scale = traits["sw_amp"] * traits["eeg_scale"] * (1.1 - 0.25 * night[e])
    p2p = np.where(
        stages[e] == "N3",
        np.maximum(rng.uniform(80, 150, len(e)) * amp_scale, 78.0),
        rng.uniform(55, 100, len(e)) * amp_scale,
    )
    return onset, d, p2p


def _check_night(center: str, subject: int, seed: int, hours: float) -> None:
    if center not in CENTERS:
        raise SimulationError(
            f"unknown simulated center {center!r}; choose one of {', '.join(CENTERS)}"
        )
    if not 0.25 <= hours <= 14:
        raise SimulationError(f"simulate_night: hours must be between 0.25 and 14, got {hours}")
    if int(subject) < 0 or int(seed) < 0:
        raise SimulationError(f"subject and seed must be >= 0, got {subject}, {seed}")


def _stream(center: str, *keys: int) -> np.random.Generator:
    """A random stream of the center's person or night ``keys``: (subject,) draws the person's
    traits, (subject, 3) their signature; (subject, seed, 1) a night's signals, (subject,
    seed, 2) its scorers. Streams of their own keep each draw unchanged when another grows."""
    return np.random.default_rng([zlib.crc32(center.encode()), *map(int, keys)])


def _night_course(center: str, subject: int, seed: int, n_epochs: int):
    """The person's traits, the night's random stream (left where the signals start), its
    generating stages, eye state and mixing of neighbouring stages."""
    spec = CENTERS[center]
    traits = _subject_traits(_stream(center, subject), spec)
    rng = _stream(center, subject, seed, 1)
    truth = simulate_hypnogram(rng, n_epochs, age=traits["age"], apnea=traits["apnea"])
    eyes = _eye_state(rng, truth, traits["eyes_closed"])
    partner, weight = _transition_mix(rng, truth, spec.ambiguous_share)
    return traits, rng, truth, eyes, partner, weight


def _night_scorers(center, subject, seed, truth, partner, weight, n_scorers: int):
    """The scorers of a night, from a random stream of their own, so that the scored
    hypnograms can be had without drawing the signals (:func:`simulate_scoring`)."""
    rng = _stream(center, subject, seed, 2)
    return simulate_scorers(rng, truth, partner, weight, CENTERS[center].habits, n_scorers)


def simulate_scoring(
    center: str, subject: int, seed: int = 0, hours: float = 8.0, n_scorers: int | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The generating stages and the scored hypnograms of the night :func:`simulate_night`
    draws for the same arguments (the same labels, scorer 1 first), without its signals: fast
    enough to study night structure and scorer disagreement over many nights. ``n_scorers``
    beyond the center's own draws more scorers of the same center (the first ones unchanged)."""
    _check_night(center, subject, seed, hours)
    n_epochs = int(round(hours * 3600 / EPOCH_S))
    _, _, truth, _, partner, weight = _night_course(center, subject, seed, n_epochs)
    n = CENTERS[center].n_scorers if n_scorers is None else n_scorers
    return truth, _night_scorers(center, subject, seed, truth, partner, weight, n)


@dataclass
class _Night:
    """What every section of :func:`simulate_night` draws into, in the order it draws: one
    random stream (the sections' order fixes the night), the per-epoch parameters, and the
    canvas and event list the waveforms go to."""

    spec: CenterSpec
    traits: dict[str, float]
    rng: np.random.Generator
    truth: np.ndarray
    par: np.ndarray
    fs: float
    n: int
    canvas: _Canvas
    events: _Events

    @property
    def n_epochs(self) -> int:
        return len(self.truth)

    @property
    def channels(self) -> dict[str, str]:
        return self.spec.channels

    def rate(self, name: str) -> np.ndarray:
        """Per-epoch rate (events per second) of the waveform ``name``."""
        return self.par[:, _P[name]]

    def amp(self, role: str, freq, p2p) -> np.ndarray:
        """Template amplitude that shows as ``p2p`` µV on the recording."""
        return np.asarray(p2p) / _chain_gain(self.spec, role, self.fs, np.asarray(freq, float))


def _draw_eeg_background(night: _Night) -> np.ndarray:
    """The cortical background: colored noise shaped by each epoch's band levels."""
    hop_s = int(8 * night.fs) // 2 / night.fs
    n_frames = int(np.ceil(night.n / (hop_s * night.fs))) + 1
    bg_cols = [_P[c] for c in ("a1", "a2", "theta_pk", "alpha_pk", "beta_pk", "hf_pk")]
    levels = _frame_values(night.par[:, bg_cols], n_frames, hop_s) * night.traits["eeg_scale"] ** 2
    return _background(night.rng, night.n, night.fs, levels, night.traits["alpha_freq"])


def _draw_spindles(night: _Night) -> None:
    """Waxing-waning 11-16 Hz; the listed 0.5-1.8 s is the stretch above half the peak
    amplitude (a sine envelope over 1.5 x that), which is what a scorer marks."""
    rng, traits, fs = night.rng, night.traits, night.fs
    on = _draw_onsets(rng, night.rate("spindle"), min_gap=3.0)
    k = len(on)
    dur = np.clip(rng.gamma(6, 0.17, k), 0.5, 1.8)
    freq = np.clip(traits["spindle_freq"] + rng.normal(0, 0.5, k), 11.0, 16.0)
    p2p = rng.uniform(18, 55, k) * traits["eeg_scale"]
    t = _times(fs, 1.5 * 1.8)
    w = np.sin(2 * np.pi * freq[:, None] * t + rng.uniform(0, 2 * np.pi, (k, 1)))
    w *= _window(t, 1.5 * dur[:, None], 1.0)
    w *= (night.amp("eeg", freq, p2p) / np.maximum(_p2p(w), 1e-9))[:, None]
    night.canvas.add("eeg", on, w)
    night.events.add("spindle", night.channels["eeg"], on + dur / 4, dur, p2p)


def _draw_kcomplexes(night: _Night) -> None:
    """Sharp negative then slower positive wave, 0.6-1.5 s; in N3 one more slow wave (AASM: N3
    criteria met means no K complex is scored)."""
    rng, traits = night.rng, night.traits
    on = _draw_onsets(rng, night.rate("kcomplex"), min_gap=3.0)
    k = len(on)
    dur = rng.uniform(0.6, 1.5, k)[:, None]
    p2p = rng.uniform(90, 220, k) * traits["sw_amp"] * traits["eeg_scale"]
    t = _times(night.fs, 1.5)
    w = -np.exp(-(((t - 0.3 * dur) / (0.11 * dur)) ** 2)) + 0.55 * np.exp(
        -(((t - 0.65 * dur) / (0.16 * dur)) ** 2)
    )
    w *= t < dur
    w *= (night.amp("eeg", 1.0 / dur[:, 0], p2p) / _p2p(w))[:, None]
    night.canvas.add("eeg", on, w)
    epoch = np.minimum((on // EPOCH_S).astype(int), night.n_epochs - 1)
    in_n3 = night.truth[epoch] == "N3"
    eeg = night.channels["eeg"]
    night.events.add("kcomplex", eeg, on[~in_n3], dur[~in_n3, 0], p2p[~in_n3])
    night.events.add("slow_wave", eeg, on[in_n3], dur[in_n3, 0], p2p[in_n3])


def _draw_slow_waves(night: _Night, partner: np.ndarray, weight: np.ndarray) -> None:
    """One negative-then-positive cycle each, where the epochs call for them."""
    on, dur, p2p = _slow_waves(night.rng, night.truth, partner, weight, night.traits)
    t = _times(night.fs, 2.0)
    phase = np.clip(t / dur[:, None], 0, 1)
    w = -np.sin(2 * np.pi * phase) * (t < dur[:, None]) * (1 + 0.15 * np.cos(np.pi * phase))
    w *= (night.amp("eeg", 1 / dur, p2p) / np.maximum(_p2p(w), 1e-9))[:, None]
    night.canvas.add("eeg", on, w)
    night.events.add("slow_wave", night.channels["eeg"], on, dur, p2p)


def _draw_vertex_waves(night: _Night) -> None:
    on = _draw_onsets(night.rng, night.rate("vertex"), min_gap=1.0)
    k = len(on)
    frontal = 0.7 if night.spec.frontal else 1.0
    p2p = night.rng.uniform(50, 150, k) * night.traits["eeg_scale"] * frontal
    t = _times(night.fs, 0.5)
    w = -np.exp(-(((t - 0.15) / 0.045) ** 2)) + 0.3 * np.exp(-(((t - 0.3) / 0.07) ** 2))
    w = np.repeat(w, k, axis=0) * (night.amp("eeg", 4.0, p2p) / _p2p(w))[:, None]
    night.canvas.add("eeg", on, w)
    night.events.add("vertex", night.channels["eeg"], on, 0.5, p2p)


def _draw_bursts(
    night: _Night, kind: str, lo: float, hi: float, dmin: float, dmax: float, a: float, b: float
) -> None:
    """Rhythmic EEG bursts of ``kind`` (alpha, theta, sawtooth): ``lo``-``hi`` Hz, lasting
    ``dmin``-``dmax`` s, ``a``-``b`` µV peak to peak."""
    rng = night.rng
    on = _draw_onsets(rng, night.rate(kind))
    k = len(on)
    dur = rng.uniform(dmin, dmax, k)
    freq = rng.uniform(lo, hi, k)
    p2p = rng.uniform(a, b, k) * night.traits["eeg_scale"]
    t = _times(night.fs, dmax)
    if kind == "sawtooth":
        w = signal.sawtooth(2 * np.pi * freq[:, None] * t, width=0.15)
    else:
        w = np.sin(2 * np.pi * freq[:, None] * t + rng.uniform(0, 2 * np.pi, (k, 1)))
    w *= _window(t, dur[:, None], 0.5)
    w *= (night.amp("eeg", freq, p2p) / np.maximum(_p2p(w), 1e-9))[:, None]
    night.canvas.add("eeg", on, w)
    night.events.add(kind, night.channels["eeg"], on, dur, p2p)


def _draw_arousals(night: _Night) -> tuple[np.ndarray, np.ndarray]:
    """Alpha intrusion in the EEG, 3-15 s; returns the onsets and envelopes, which the chin's
    burst of tone (:func:`_draw_emg`) follows."""
    rng, af = night.rng, night.traits["alpha_freq"]
    on = _draw_onsets(rng, night.rate("arousal"), min_gap=20.0)
    dur = rng.uniform(3.0, 15.0, len(on))
    k = len(on)
    t = _times(night.fs, 15.0)
    env = _window(t, dur[:, None], 0.3)
    w = np.sin(2 * np.pi * rng.uniform(af - 1, af + 1, (k, 1)) * t) * 12 * env
    night.canvas.add("eeg", on, w * night.traits["eeg_scale"])
    amplitude = _p2p(w) * night.spec.gain if k else []
    night.events.add("arousal", night.channels["eeg"], on, dur, amplitude)
    return on, env


def _draw_eye_movements(night: _Night) -> None:
    """Rapid eye movements and blinks share one point process (the eyes do one thing at a
    time). A rapid eye movement is a fast step (saccade), a fixation, then a slow drift back;
    its listed onset and duration are those of the step (the deflection a scorer marks). A
    blink is vertical: the same sign on both eyes."""
    rng, traits, fs, eog = night.rng, night.traits, night.fs, night.channels["eog"]
    eye_rate = night.rate("rem") + night.rate("blink")
    on = _draw_onsets(rng, eye_rate, min_gap=0.6)
    epoch = np.minimum((on // EPOCH_S).astype(int), night.n_epochs - 1)
    is_rem = rng.random(len(on)) * eye_rate[epoch] < night.rate("rem")[epoch]
    on_rem = on[is_rem]
    k = len(on_rem)
    p2p = rng.uniform(50, 220, k) * traits["eog_scale"]
    sign = rng.choice([-1.0, 1.0], k)[:, None]
    rise = rng.uniform(0.02, 0.05, (k, 1))
    hold = rng.uniform(0.2, 1.2, (k, 1))
    back = rng.uniform(0.6, 1.5, (k, 1))
    t = _times(fs, 3.0)
    ramp = np.clip((t - 0.15 - hold) / back, 0, 1)
    w = sign * (1 + np.tanh((t - 0.15) / rise)) / 2 * np.cos(np.pi / 2 * ramp) ** 2
    w *= (night.amp("eog", 2.0, p2p) / _p2p(w))[:, None]
    night.canvas.add("eye", on_rem, w)
    night.events.add("rem", eog, on_rem + 0.15 - 2 * rise[:, 0], 4 * rise[:, 0], p2p)

    on_blink = on[~is_rem]
    k = len(on_blink)
    p2p = rng.uniform(80, 300, k) * traits["eog_scale"]
    t = _times(fs, 0.6)
    w = np.exp(-(((t - 0.18) / rng.uniform(0.05, 0.09, (k, 1))) ** 2))
    w *= (night.amp("eog", 3.0, p2p) / _p2p(w))[:, None]
    night.canvas.add("blink", on_blink, w)
    night.events.add("blink", eog, on_blink, 0.4, p2p)


def _draw_slow_eye_movements(night: _Night) -> None:
    rng = night.rng
    on = _draw_onsets(rng, night.rate("sem"), min_gap=4.0)
    k = len(on)
    dur = rng.uniform(2.0, 6.0, k)
    p2p = rng.uniform(50, 150, k) * night.traits["eog_scale"]
    t = _times(night.fs, 6.0)
    w = np.sin(2 * np.pi * t / dur[:, None]) * (t < dur[:, None]) * rng.choice([-1.0, 1.0], (k, 1))
    w *= (night.amp("eog", 1 / dur, p2p) / np.maximum(_p2p(w), 1e-9))[:, None]
    night.canvas.add("eye", on, w)
    night.events.add("sem", night.channels["eog"], on, dur, p2p)


def _draw_emg(night: _Night, arousals: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The chin: noise under each epoch's tone envelope, REM twitches, a burst of tone at each
    arousal; and the heartbeats (layer ``ecg``) that the EEG and the chin pick up. Returns the
    tone noise (the rest goes to the canvas)."""
    rng, fs, n, traits = night.rng, night.fs, night.n, night.traits
    tone = _sample_envelope(night.rate("emg"), n, fs)
    emg = rng.standard_normal(n, dtype=np.float32) * tone
    on = _draw_onsets(rng, night.rate("twitch"), min_gap=0.3)
    k = len(on)
    t = _times(fs, 0.4)
    noise = rng.standard_normal((k, t.shape[1]))
    dur = rng.uniform(0.08, 0.4, (k, 1))
    w = noise * _window(t, dur) * rng.uniform(8, 30, (k, 1)) * traits["emg_scale"]
    night.canvas.add("emg", on, w)
    amplitude = _p2p(w) * _role_gain(night.spec, "emg") if k else []
    night.events.add("twitch", night.channels["emg"], on, dur[:, 0], amplitude)
    arousal_on, arousal_env = arousals
    burst = rng.standard_normal(arousal_env.shape) * arousal_env * 15 * traits["emg_scale"]
    night.canvas.add("emg", arousal_on, burst)
    beats = np.cumsum(rng.normal(60 / traits["heart_rate"], 0.05, int(n / fs * 1.6)))
    beats = beats[beats < n / fs - 1]
    t = _times(fs, 0.12)
    qrs = (np.exp(-(((t - 0.05) / 0.012) ** 2)) - 0.3 * np.exp(-(((t - 0.08) / 0.02) ** 2)))[0]
    night.canvas.add("ecg", beats, np.broadcast_to(qrs, (len(beats), len(qrs))))
    return emg


def _draw_artifacts(night: _Night) -> None:
    """Body movements (all channels), electrode pops and sweat drifts (EEG and EOG), as often
    as the center's ``artifact_rate`` says."""
    rng, fs, n, spec, ch = night.rng, night.fs, night.n, night.spec, night.channels
    on = _draw_onsets(rng, night.rate("movement") * spec.artifact_rate, min_gap=30.0)
    k = len(on)
    dur = rng.uniform(2.0, 15.0, k)
    t = _times(fs, 15.0)
    env = _window(t, dur[:, None], 0.3)
    slow = np.sin(2 * np.pi * rng.uniform(0.3, 1.5, (k, 1)) * t + rng.uniform(0, 6, (k, 1)))
    for role, scale in (("eeg", 150.0), ("eog", 200.0), ("emg", 60.0)):
        noise = rng.standard_normal(env.shape) * (0.3 if role != "emg" else 1.0)
        w = (slow * (role != "emg") + noise) * env * scale * rng.uniform(0.5, 1.5, (k, 1))
        night.canvas.add("art_" + role, on, w)
        amplitude = _p2p(w) * _role_gain(spec, role) if k else []
        night.events.add("artifact", ch[role], on, dur, amplitude)
    hours_rec = n / fs / 3600
    for role in ("eeg", "eog"):
        m = rng.poisson(1.5 * spec.artifact_rate * hours_rec)
        on = np.sort(rng.uniform(0, n / fs - 2, m))
        tau = rng.uniform(0.2, 0.8, (m, 1))
        t = _times(fs, 2.0)
        w = rng.choice([-1.0, 1.0], (m, 1)) * np.exp(-t / tau) * (1 - t / 2.0)
        w *= rng.uniform(150, 500, (m, 1))
        night.canvas.add("art_" + role, on, w)
        night.events.add("artifact", ch[role], on, 2.0, _p2p(w) * spec.gain if m else [])
        m = rng.poisson(0.5 * spec.artifact_rate * hours_rec)
        on = np.sort(rng.uniform(0, max(n / fs - 90, 1), m))
        dur = rng.uniform(20.0, 90.0, m)
        t = _times(fs, 90.0)
        w = np.sin(2 * np.pi * t / dur[:, None]) * (t < dur[:, None])
        w *= rng.uniform(40, 150, (m, 1))
        night.canvas.add("art_" + role, on, w)
        night.events.add("artifact", ch[role], on, dur, _p2p(w) * spec.gain if m else [])


def _mix_channels(night: _Night, eeg: np.ndarray, emg: np.ndarray) -> dict[str, np.ndarray]:
    """The layers mixed into each role's channel: the EOG sees the frontal EEG, the EEG sees
    the eyes, the EEG and the chin see the heart. The second eye, where the center records one,
    is drawn last, so that the other channels do not depend on it."""
    spec, rng, canvas = night.spec, night.rng, night.canvas
    eye_in_eeg = 0.2 if spec.frontal else 0.06
    ecg_in_emg = rng.uniform(0.3, 1.5)
    eog_own = _eye_channel_noise(rng, night.n, night.fs)
    eeg_mix = {"eeg": 1, "eye": eye_in_eeg, "blink": eye_in_eeg, "ecg": 1.5, "art_eeg": 1}
    signals = {
        "eeg": eeg + canvas.render(eeg_mix),
        "eog": 0.55 * eeg
        + canvas.render({"eeg": 0.55, "eye": 1, "blink": 1, "art_eog": 1})
        + eog_own,
        "emg": emg + canvas.render({"emg": 1, "ecg": ecg_in_emg, "art_emg": 1}),
    }
    if SECOND_EYE in spec.channels:
        signals[SECOND_EYE] = _second_eye(rng, canvas, eeg, night.n, night.fs)
    return signals


def _record(
    night: _Night, signals: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each channel through the amplifier: gain, hardware filters, resampling to the center's
    rate, noise floor and mains. Returns the signals and rates by channel name."""
    spec, rng = night.spec, night.rng
    out: dict[str, np.ndarray] = {}
    sfreq: dict[str, float] = {}
    for role, x in signals.items():
        native = spec.rates[role]
        y = signal.sosfilt(_hardware(spec, role, night.fs), x) * _role_gain(spec, role)
        if native != night.fs:
            y = signal.resample_poly(y, int(native), int(night.fs))
        y = y.astype(np.float32)
        y += rng.standard_normal(len(y), dtype=np.float32) * spec.noise_floor
        if spec.line_freq < native / 2:
            level = rng.uniform(0.7, 1.3) * spec.line_noise * (2.0 if role == "emg" else 1.0)
            y += _mains(len(y), native, spec.line_freq, level, rng.uniform(0, 2 * np.pi))
        out[spec.channels[role]] = y
        sfreq[spec.channels[role]] = native
    return out, sfreq


def simulate_night(center: str, subject: int, seed: int = 0, hours: float = 8.0) -> Recording:
    """One simulated PSG night of ``subject`` (an int) at ``center`` ("dcsm", "shhs", "isruc").

    Deterministic in (center, subject, seed); the subject's traits (age, spindle density, alpha,
    slow-wave amplitude, EMG tone...) depend on (center, subject) only, so ``seed`` gives another
    night of the same person. Signals are µV at the center's native rates; ``events`` lists every
    drawn waveform; ``stages`` is scorer 1, ``other_scorers["truth"]`` the generating stage (and,
    for two-scorer centers, ``other_scorers["scorer2"]``). The sections draw from one random
    stream in a fixed order (EEG, eyes, chin, artifacts, mixing, amplifier): reordering them
    changes every night.
    """
    _check_night(center, subject, seed, hours)
    spec = CENTERS[center]
    n_epochs = int(round(hours * 3600 / EPOCH_S))
    traits, rng, truth, eyes, partner, weight = _night_course(center, subject, seed, n_epochs)
    scorers = _night_scorers(center, subject, seed, truth, partner, weight, spec.n_scorers)
    signature = _person_signature(_stream(center, subject, 3), spec)
    par = _epoch_params(truth, partner, weight, eyes, traits, spec, rng, signature)
    fs = spec.rates["eeg"]
    n = int(round(n_epochs * EPOCH_S * fs))
    night = _Night(spec, traits, rng, truth, par, fs, n, _Canvas(n, fs), _Events())

    eeg = _draw_eeg_background(night)
    _draw_spindles(night)
    _draw_kcomplexes(night)
    _draw_slow_waves(night, partner, weight)
    _draw_vertex_waves(night)
    af = traits["alpha_freq"]
    alpha_gain = (0.6 if spec.frontal else 0.85) * traits["alpha_amp"]
    _draw_bursts(night, "alpha", af - 0.6, af + 0.6, 1.5, 8.0, 20 * alpha_gain, 55 * alpha_gain)
    _draw_bursts(night, "theta", 4.0, 7.5, 1.0, 3.0, 25, 60)
    _draw_bursts(night, "sawtooth", 2.0, 5.0, 1.0, 4.0, 25, 65)
    arousals = _draw_arousals(night)
    _draw_eye_movements(night)
    _draw_slow_eye_movements(night)
    emg = _draw_emg(night, arousals)
    _draw_artifacts(night)
    out, sfreq = _record(night, _mix_channels(night, eeg, emg))

    other = {"truth": truth}
    if spec.n_scorers > 1:
        other["scorer2"] = scorers[1]
    return Recording(
        dataset=center,
        subject=f"sim-{center}-s{int(subject):03d}",
        night="n1" if seed == 0 else f"n{int(seed) + 1}",
        signals=out,
        sfreq=sfreq,
        stages=scorers[0],
        roles=dict(spec.channels),
        hypnogram_offset=0.0,
        source=f"simulate_night({center!r}, {int(subject)}, seed={int(seed)}, hours={hours})",
        line_freq=spec.line_freq,
        events=night.events.table(),
        other_scorers=other,
        simulated=True,
    )
