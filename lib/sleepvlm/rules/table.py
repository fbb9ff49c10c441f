"""The AASM v2.6 sleep-staging rules as data, and every threshold the rule detectors use.

Each :class:`Rule` restates one criterion of the AASM manual (Berry et al. 2020, bib key
``berry2020aasm``) in our own words, with the numbers a detector needs to evaluate it. The
numbers that the manual does not give (how far a spindle must stand out from its background, what
counts as "low" chin tone...) are operating settings of our detectors; they live here too, in
:data:`SETTINGS`, so that this module is the only place a threshold is written down.

Both tables are read-only. Detectors, the evidence and the stager take them as one value, a
:class:`RuleSet` (default :data:`DEFAULT_RULES`); a variant is made with
:meth:`RuleSet.with_settings` or :meth:`RuleSet.with_thresholds` and passed where it is meant
(``detect_all(night, rules=variant)``), so nothing changes behind a caller's back, and a cache
of detector output keys on :meth:`RuleSet.values`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pandas as pd

#: Bib key of the AASM manual version 2.6 in the book's references.
CITATION_KEY = "berry2020aasm"
_MANUAL = "Berry et al. 2020, AASM Scoring Manual v2.6"
_STAGING = f"{_MANUAL}, ch. IV (Sleep staging rules), part 1 (adults)"


@dataclass(frozen=True)
class Rule:
    """One scoring criterion of the AASM manual.

    ``stage`` is the stage the rule supports (one of records.STAGES; "any" for rules about epochs
    of any stage). ``role`` is the channel role on which the criterion is read, ``needs`` every
    role without which it cannot be evaluated. ``context`` is True when the rule also depends on
    neighbouring epochs (the criterion a detector can check in one epoch is only part of it).
    ``detectors`` names the detectors (keys of :data:`SETTINGS`) whose output is the evidence.
    """

    id: str
    stage: str
    criterion: str
    role: str
    thresholds: dict[str, Any]
    needs: tuple[str, ...]
    context: bool
    citation: str
    detectors: tuple[str, ...] = field(default=())


_RULE_LIST: tuple[Rule, ...] = (
    Rule(
        "W.alpha",
        "W",
        "Alpha rhythm (trains of 8-13 Hz waves, occipital, blocked by eye opening) is present "
        "during more than half of the epoch.",
        "eeg",
        {"band_hz": (8.0, 13.0), "min_epoch_fraction": 0.5},
        ("eeg",),
        False,
        f"{_STAGING}, scoring of stage W; ch. IV definitions (alpha rhythm)",
        ("alpha",),
    ),
    Rule(
        "W.eyes",
        "W",
        "Without an alpha rhythm: eye blinks (0.5-2 Hz), reading eye movements, or irregular "
        "conjugate rapid eye movements together with normal or high chin muscle tone.",
        "eog",
        {"blink_rate_hz": (0.5, 2.0), "min_blinks": 1, "min_rems": 1, "min_tone_quantile": 0.5},
        ("eog", "emg"),
        False,
        f"{_STAGING}, scoring of stage W",
        ("eye_movements", "emg_tone"),
    ),
    # W.fast: "more than half of the epoch" as for W.alpha. Its per-second test (alpha + beta
    # >= theta, detectors.fast_seconds) has no tuned number: it was checked on real EEG (YASA's
    # eyes-open resting wake; the W and N2 epochs of the DREAMS excerpts) and on the held-out
    # simulated nights, where the stager's kappa did not fall with it (all channels, EEG only)
    Rule(
        "W.fast",
        "W",
        "Eyes open, without an alpha rhythm: the EEG is not slowed (alpha and beta activity "
        "together outweigh 4-7 Hz theta) during more than half of the epoch, with a chin tone "
        "that is not atonic.",
        "eeg",
        {"min_epoch_fraction": 0.5},
        ("eeg",),
        False,
        f"{_STAGING}, scoring of stage W (eyes open, alpha attenuated) and of stage N1 (slowing "
        "of the background by 1 Hz or more)",
        ("fast", "emg_tone"),
    ),
    Rule(
        "N1.lamf",
        "N1",
        "In people who produce alpha: the alpha rhythm fades and is replaced by low-amplitude, "
        "mixed-frequency activity (mostly 4-7 Hz) for more than half of the epoch.",
        "eeg",
        {"band_hz": (4.0, 8.0), "min_epoch_fraction": 0.5},
        ("eeg",),
        False,
        f"{_STAGING}, scoring of stage N1; ch. IV definitions (LAMF activity, theta)",
        ("lamf", "alpha"),
    ),
    Rule(
        "N1.vertex",
        "N1",
        "Vertex sharp waves: sharply contoured waves lasting under 0.5 s, maximal over the "
        "central region, standing out from the background.",
        "eeg",
        {"max_duration_s": 0.5, "min_count": 1},
        ("eeg",),
        False,
        f"{_STAGING}, scoring of stage N1; ch. IV definitions (vertex sharp waves)",
        ("vertex",),
    ),
    Rule(
        "N1.sem",
        "N1",
        "Slow eye movements: conjugate, fairly regular sinusoidal eye movements whose initial "
        "deflection usually lasts more than 500 ms.",
        "eog",
        {"min_deflection_s": 0.5, "min_count": 1},
        ("eog",),
        False,
        f"{_STAGING}, scoring of stage N1; ch. IV definitions (slow eye movements)",
        ("sem",),
    ),
    Rule(
        "N2.spindle",
        "N2",
        "One or more sleep spindles (a train of distinct 11-16 Hz waves, most often 12-14 Hz, "
        "lasting at least 0.5 s, maximal centrally) in the first half of the epoch or the last "
        "half of the previous one, with N3 criteria not met.",
        "eeg",
        {"band_hz": (11.0, 16.0), "min_duration_s": 0.5, "max_duration_s": 2.0, "min_count": 1},
        ("eeg",),
        True,
        f"{_STAGING}, scoring of stage N2; ch. IV definitions (sleep spindle)",
        ("spindle",),
    ),
    Rule(
        "N2.kcomplex",
        "N2",
        "One or more K complexes not associated with an arousal (a well-delineated negative sharp "
        "wave followed at once by a positive component, standing out from the background, "
        "lasting at least 0.5 s, maximal frontally) in the first half of the epoch or the last "
        "half of the previous one, with N3 criteria not met. A K complex counts as associated "
        "with an arousal when the arousal starts no more than 1 s after the K complex ends. "
        "It is a wave of sleep: in an epoch that W.fast reads as awake a wave of its "
        "shape is an eye movement or a blink seen on a frontal lead.",
        "eeg",
        {"min_duration_s": 0.5, "max_duration_s": 2.5, "arousal_gap_s": 1.0, "min_count": 1},
        ("eeg",),
        True,
        f"{_STAGING}, scoring of stage N2; ch. IV definitions (K complex)",
        ("kcomplex", "arousal"),
    ),
    Rule(
        "N2.cont",
        "N2",
        "Epochs of low-amplitude mixed-frequency EEG without K complexes or spindles stay N2 "
        "when they follow N2 epochs that had K complexes (not arousal-related) or spindles, until "
        "an arousal, a major body movement, or a transition to W, N3 or R.",
        "eeg",
        {},
        ("eeg",),
        True,
        f"{_STAGING}, scoring of stage N2 (continuation)",
        ("spindle", "kcomplex", "arousal", "movement"),
    ),
    Rule(
        "N2.arousal_end",
        "N2",
        "N2 ends at an arousal: the epochs after it are scored N1 until a K complex (not "
        "arousal-related) or a spindle appears.",
        "eeg",
        {},
        ("eeg",),
        True,
        f"{_STAGING}, scoring of stage N2 (end of N2); ch. V (arousal rule)",
        ("arousal",),
    ),
    Rule(
        "N3.sw20",
        "N3",
        "Slow-wave activity (waves of 0.5-2 Hz with a peak-to-peak amplitude above 75 µV over "
        "the frontal or central EEG) fills 20 % of the epoch or more.",
        "eeg",
        {"band_hz": (0.5, 2.0), "min_ptp_uv": 75.0, "min_epoch_fraction": 0.2},
        ("eeg",),
        False,
        f"{_STAGING}, scoring of stage N3; ch. IV definitions (slow-wave activity)",
        ("slow_wave",),
    ),
    Rule(
        "R.rem",
        "REM",
        "Rapid eye movements: conjugate, irregular, sharply peaked eye movements whose initial "
        "deflection usually lasts under 500 ms.",
        "eog",
        {"max_deflection_s": 0.5, "min_count": 1},
        ("eog",),
        False,
        f"{_STAGING}, scoring of stage R; ch. IV definitions (rapid eye movements)",
        ("eye_movements",),
    ),
    Rule(
        "R.atonia",
        "REM",
        "Low chin EMG tone: the baseline chin EMG is no higher than in any other stage, usually "
        "the lowest of the recording.",
        "emg",
        {"band_hz": (10.0, 45.0)},
        ("emg",),
        False,
        f"{_STAGING}, scoring of stage R; ch. IV definitions (low chin EMG tone)",
        ("emg_tone",),
    ),
    Rule(
        "R.sawtooth",
        "REM",
        "Sawtooth waves: trains of sharply contoured or triangular, often serrated 2-6 Hz waves, "
        "maximal centrally, often before a burst of rapid eye movements (supportive only).",
        "eeg",
        {"band_hz": (2.0, 6.0), "min_count": 1},
        ("eeg",),
        False,
        f"{_STAGING}, scoring of stage R; ch. IV definitions (sawtooth waves)",
        ("sawtooth",),
    ),
    Rule(
        "R.cont",
        "REM",
        "Epochs without rapid eye movements stay R when they follow R epochs, the EEG stays "
        "low-amplitude mixed-frequency without K complexes or spindles, and chin tone stays low.",
        "eeg",
        {},
        ("eeg", "emg"),
        True,
        f"{_STAGING}, scoring of stage R (continuation)",
        ("lamf", "spindle", "kcomplex", "emg_tone"),
    ),
    Rule(
        "R.arousal_end",
        "REM",
        "R ends at a transition to W or N3, at a rise of chin tone to the level of NREM, or at an "
        "arousal (or major body movement) followed by low-amplitude mixed-frequency EEG and slow "
        "eye movements (then score N1).",
        "eeg",
        {},
        ("eeg", "eog", "emg"),
        True,
        f"{_STAGING}, scoring of stage R (end of R); ch. V (arousal rule)",
        ("arousal", "movement", "sem", "emg_tone"),
    ),
    Rule(
        "arousal",
        "any",
        "Arousal: an abrupt shift of EEG frequency (theta, alpha and/or above 16 Hz, not "
        "spindles) lasting at least 3 s after at least 10 s of stable sleep; in R it also needs "
        "a rise of chin EMG lasting at least 1 s.",
        "eeg",
        {"min_duration_s": 3.0, "min_prior_sleep_s": 10.0, "rem_emg_rise_s": 1.0},
        ("eeg",),
        True,
        f"{_MANUAL}, ch. V (arousal rule)",
        ("arousal",),
    ),
    Rule(
        "major_body_movement",
        "any",
        "Major body movement: movement and muscle artifact hide the EEG for more than half of the "
        "epoch. Score W if any alpha is seen or if a W epoch comes before or after it, otherwise "
        "the stage of the epoch that follows.",
        "eeg",
        {"min_epoch_fraction": 0.5},
        ("eeg",),
        True,
        f"{_STAGING}, major body movements",
        ("movement",),
    ),
    Rule(
        "epoch.majority",
        "any",
        "When an epoch holds features of two or more stages, score the stage that fills the "
        "greater part of it.",
        "eeg",
        {"epoch_s": 30.0},
        ("eeg",),
        False,
        f"{_STAGING}, general scoring of sleep stages",
        (),
    ),
)


def _frozen_rule(rule: Rule) -> Rule:
    return dataclasses.replace(rule, thresholds=MappingProxyType(dict(rule.thresholds)))


#: Every rule by ID, in the order of the book's table (read-only).
RULES: Mapping[str, Rule] = MappingProxyType({r.id: _frozen_rule(r) for r in _RULE_LIST})

#: Frequency bands (Hz) of the per-second band powers, after the AASM definitions (delta below
#: 4 Hz, theta 4-7.99 Hz, alpha 8-13 Hz, spindle band 11-16 Hz; beta up to 30 Hz as displayed).
BANDS: dict[str, tuple[float, float]] = {
    "delta": (0.5, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "sigma": (11.0, 16.0),
    "beta": (16.0, 30.0),
}

#: A frequency is held by a recording when it lies below sfreq / NYQUIST_MARGIN: the Nyquist
#: frequency less the transition band of the anti-aliasing filter (a filter edge above that is
#: moved down to it, see :func:`sleepvlm.rules.detectors.bandpass`).
NYQUIST_MARGIN = 2.2


def rate_for(hz: float) -> float:
    """Lowest sampling rate (Hz) of a recording that holds ``hz`` (see NYQUIST_MARGIN)."""
    return round(NYQUIST_MARGIN * hz, 6)


#: Operating settings of each detector (not given by the AASM manual; chosen on simulated
#: tuning nights, subjects 0-2 of each center, and checked on the real excerpts). ``min_sfreq``
#: is the lowest sampling rate (Hz) a detector accepts: :func:`rate_for` the highest frequency
#: its criterion cannot do without. Bands that reach higher (the spindle detector's broad
#: reference band, beta, the chin EMG band) are read as far as the recording holds them, so an
#: older archive at 50 Hz still runs every detector.
_SETTINGS: dict[str, dict[str, Any]] = {
    # band powers up to the spindle band's 16 Hz; beta (16-30 Hz) and the 0.5-30 Hz total are
    # summed as far as the recording holds them
    "band_power": {"window_s": 2.0, "step_s": 1.0, "min_sfreq": rate_for(16.0)},
    "alpha": {
        # an alpha second: alpha band holds this share of 2-30 Hz power and beats theta
        "min_relative_power": 0.3,
        "min_run_s": 2.0,
        "min_sfreq": rate_for(16.0),  # reads the band powers
    },
    "fast": {"min_sfreq": rate_for(16.0)},  # reads the band powers
    "lamf": {
        # low amplitude: 1-s RMS of the EEG under this many µV; mixed frequency: theta band is
        # the strongest of theta/alpha/sigma/beta and delta does not dominate
        "max_rms_uv": 25.0,
        "max_delta_share": 0.75,
        "min_sfreq": rate_for(16.0),  # compares theta with alpha, sigma and beta
    },
    "spindle": {
        # dual threshold on the 11-16 Hz envelope, relative to its moving median. The three
        # thresholds were tuned together on the four DREAMS excerpts against expert 1
        # (validation.expert_agreement_table): chosen for being good on each excerpt, not
        # best on one (the leave-one-out choice is the same); lower envelope thresholds find
        # the weak spindles experts mark, a stricter sigma share removes what they add.
        "reference_s": 30.0,
        "broad_band_hz": (4.0, 30.0),
        "upper_factor": 2.75,
        "lower_factor": 1.5,
        "min_ptp_uv": 12.0,
        "min_relative_power": 0.45,
        "relative_window_s": 1.0,
        "smooth_s": 0.1,
        "merge_gap_s": 0.3,
        # reported extent: where the envelope reaches this fraction of the spindle's own peak
        "peak_fraction": 0.5,
        "filter_order": 4,
        "min_sfreq": rate_for(16.0),  # the spindle band must fit; the broad band is capped
    },
    "slow_wave": {
        "lowpass_hz": 4.0,
        "highpass_hz": 0.3,
        "filter_order": 2,
        "min_sfreq": rate_for(4.0),
    },
    "kcomplex": {
        # a K complex: a 0.5-2.5 s negative-then-positive wave whose p2p is this many times the
        # median p2p of the waves in the surrounding window, and at least min_ptp_uv
        "min_ptp_uv": 100.0,
        "min_contrast": 3.0,
        "background_s": 30.0,
        "max_neg_duration_s": 1.0,
        # no K complex where the other slow waves fill the N3 fraction of this window
        "context_s": 30.0,
        "min_sfreq": rate_for(4.0),  # reads the slow-wave band
    },
    "vertex": {
        "band_hz": (1.0, 10.0),
        "min_ptp_uv": 40.0,
        "min_contrast": 3.0,
        "background_s": 10.0,
        "max_half_wave_s": 0.25,
        "filter_order": 2,
        "min_sfreq": rate_for(10.0),
    },
    "eye_movements": {
        # a rapid deflection: the band-passed EOG moves by min_ptp_uv at a peak slope of at
        # least min_slope_uv_s, from where the slope rises above edge_fraction of that peak to
        # where it falls below it (each within max_deflection_s); a blink is followed by a
        # return covering return_fraction of its height, steepest within blink_return_s of
        # the blink's top
        "band_hz": (0.3, 8.0),
        "min_ptp_uv": 40.0,
        "min_slope_uv_s": 600.0,
        "edge_fraction": 0.2,
        "blink_return_s": 0.15,
        "return_fraction": 0.5,
        "refractory_s": 0.15,
        # both eyes: a rapid eye movement's common part (LOC + ROC) / 2 is at most this share
        # of its conjugate part (LOC - ROC) / 2, and a blink's conjugate part at most this
        # share of its common part: each eye then moves at least a third of what the other
        # does, (1 - share) / (1 + share); not tuned (no real two-eye REM sleep here)
        "max_common_share": 0.5,
        "filter_order": 2,
        "min_sfreq": rate_for(8.0),
    },
    "sem": {
        "band_hz": (0.15, 0.8),
        "min_ptp_uv": 40.0,
        "max_half_wave_s": 4.0,
        "filter_order": 2,
        "min_sfreq": rate_for(0.8),
    },
    "emg_tone": {
        # per-second RMS of the 10-45 Hz chin EMG, median per epoch; low tone: under
        # low_factor x the night's low_quantile epoch value
        "low_quantile": 0.1,
        "low_factor": 2.0,
        "filter_order": 4,
        # tone is judged against the same night, so a band cut short by the recording (10-22.7
        # Hz at 50 Hz) still ranks the epochs; it needs at least the 10-20 Hz octave of it.
        # A channel slower than this is no raw EMG (Sleep-EDF stores a 1-Hz RMS envelope).
        "min_sfreq": rate_for(20.0),
    },
    "sawtooth": {
        "min_ptp_uv": 20.0,
        "min_duration_s": 1.0,
        "min_slope_skew": 1.0,
        "smooth_s": 0.5,
        "filter_order": 2,
        "min_sfreq": rate_for(6.0),
    },
    "arousal": {
        # fast share (theta + alpha + beta, sigma excluded) rises to this many times its median
        # over the preceding baseline for at least the rule's minimum duration
        "min_rise": 2.0,
        "baseline_s": 10.0,
        "min_sfreq": rate_for(16.0),  # a rise of the fast share, relative to its own baseline
    },
    "movement": {
        "max_abs_uv": 250.0,
        "min_beta_rms_uv": 15.0,
        # muscle artifact is broadband: 16-20 Hz of the beta band at least shows it
        "min_sfreq": rate_for(20.0),
    },
    "quality": {"flat_ptp_uv": 0.5, "clip_fraction": 0.01},
}


#: The detectors' settings by detector (read-only).
SETTINGS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {detector: MappingProxyType(values) for detector, values in _SETTINGS.items()}
)


@dataclass(frozen=True)
class RuleSet:
    """The rules' thresholds and the detectors' settings, as one value passed to whatever
    detects or stages. :data:`DEFAULT_RULES` is the table above; a variant changes a few
    values and leaves the default as it is."""

    rules: Mapping[str, Rule] = field(default_factory=lambda: RULES)
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: SETTINGS)

    def threshold(self, rule_id: str, name: str) -> Any:
        """A threshold of one rule (a ``KeyError`` names the rule if it has none such)."""
        try:
            return self.rules[rule_id].thresholds[name]
        except KeyError:
            raise KeyError(f"rule {rule_id!r} has no threshold {name!r}") from None

    def setting(self, detector: str, name: str) -> Any:
        """An operating setting of one detector."""
        try:
            return self.settings[detector][name]
        except KeyError:
            raise KeyError(f"detector {detector!r} has no setting {name!r}") from None

    def with_settings(self, detector: str, **values: Any) -> RuleSet:
        """A copy with some settings of ``detector`` changed (an exercise's what-if)."""
        unknown = sorted(set(values) - set(self.settings.get(detector, {})))
        if detector not in self.settings or unknown:
            raise KeyError(
                f"detector {detector!r} has no setting(s) {unknown}; see settings_frame()"
            )
        changed = MappingProxyType({**self.settings[detector], **values})
        return dataclasses.replace(
            self, settings=MappingProxyType({**self.settings, detector: changed})
        )

    def with_thresholds(self, rule_id: str, **values: Any) -> RuleSet:
        """A copy with some thresholds of rule ``rule_id`` changed."""
        rule = self.rules[rule_id]
        unknown = sorted(set(values) - set(rule.thresholds))
        if unknown:
            raise KeyError(f"rule {rule_id!r} has no threshold(s) {unknown}; see rules_frame()")
        changed = dataclasses.replace(
            rule, thresholds=MappingProxyType({**rule.thresholds, **values})
        )
        return dataclasses.replace(self, rules=MappingProxyType({**self.rules, rule_id: changed}))

    def __reduce__(self):
        # read-only mappings do not pickle: a rule set travels to worker processes as values
        return (RuleSet.from_values, (self.values(),))

    @staticmethod
    def from_values(values: Mapping[str, Any]) -> RuleSet:
        """The rule set whose :meth:`values` are ``values`` (rules as in the table)."""
        rules = {
            rule_id: dataclasses.replace(RULES[rule_id], thresholds=MappingProxyType(dict(t)))
            for rule_id, t in values["thresholds"].items()
        }
        settings = {d: MappingProxyType(dict(v)) for d, v in values["settings"].items()}
        return RuleSet(MappingProxyType(rules), MappingProxyType(settings))

    def values(self) -> dict[str, Any]:
        """Every threshold and setting as plain data: what a cache key of detector output must
        hold (two rule sets with equal values detect alike)."""
        return {
            "thresholds": {rule_id: dict(r.thresholds) for rule_id, r in self.rules.items()},
            "settings": {detector: dict(v) for detector, v in self.settings.items()},
        }


#: The rule table and the detectors' settings as written above.
DEFAULT_RULES = RuleSet()


def _format_thresholds(values: dict[str, Any]) -> str:
    return "; ".join(f"{k} = {v}" for k, v in values.items())


def rules_frame(rules: RuleSet = DEFAULT_RULES) -> pd.DataFrame:
    """The rule table as the book shows it: one row per rule."""
    return pd.DataFrame(
        [
            {
                "id": r.id,
                "stage": r.stage,
                "criterion": r.criterion,
                "channel": r.role.upper(),
                "thresholds": _format_thresholds(r.thresholds),
                "needs": ", ".join(x.upper() for x in r.needs),
                "context": r.context,
                "evidence": ", ".join(r.detectors),
                "citation": r.citation,
            }
            for r in rules.rules.values()
        ]
    )


def settings_frame(rules: RuleSet = DEFAULT_RULES) -> pd.DataFrame:
    """The detectors' operating settings, one row per (detector, setting)."""
    return pd.DataFrame(
        [
            {"detector": d, "setting": k, "value": v}
            for d, values in rules.settings.items()
            for k, v in values.items()
        ]
    )
