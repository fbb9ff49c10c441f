"""Run every detector on a night and tell, per 30-s epoch, which AASM rules' criteria are met
and by which events: the evidence a rule-based stager works from.

:func:`detect_all` takes a :class:`~sleepvlm.data.records.Recording` (channels at their native
rates, detectors see the whole night) or preprocessed :class:`~sleepvlm.signal.Epochs` (100 Hz;
runs of consecutive epochs are joined, and events crossing a join between non-consecutive
epochs are dropped). Rules whose channel is missing, flat, clipped or sampled too slowly are
reported as not evaluable (``<NA>`` in :attr:`Detection.criteria`); the others still run.
"Too slowly" is judged per detector on the rate the channel was recorded at
(:func:`rate_shortfalls`): a 50-Hz EEG runs every detector, a 1-Hz EMG envelope none.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sleepvlm.data.records import (
    EPOCH_S,
    EVENT_COLUMNS,
    ROLES,
    SECOND_EYE,
    DataError,
    Recording,
)
from sleepvlm.rules import detectors as det
from sleepvlm.rules.table import DEFAULT_RULES, RULES, RuleSet
from sleepvlm.signal import TARGET_SFREQ, Epochs

#: Event kinds each detector reports (the evidence of the rules that name the detector).
DETECTOR_KINDS: dict[str, tuple[str, ...]] = {
    "alpha": ("alpha",),
    "spindle": ("spindle",),
    "kcomplex": ("kcomplex",),
    "slow_wave": ("slow_wave",),
    "vertex": ("vertex",),
    "sawtooth": ("sawtooth",),
    "arousal": ("arousal",),
    "movement": ("artifact",),
    "eye_movements": ("rem", "blink"),
    "sem": ("sem",),
    "lamf": (),
    "fast": (),
    "emg_tone": (),
}
#: Role each detector reads.
DETECTOR_ROLE: dict[str, str] = {
    **{d: "eeg" for d in DETECTOR_KINDS},
    "eye_movements": "eog",
    "sem": "eog",
    "emg_tone": "emg",
}
#: Detectors that read per-second band powers of the EEG (they cannot run without them).
_READ_BAND_POWERS = ("alpha", "lamf", "fast", "movement", "arousal")
#: What a channel slower than every detector of its role likely is.
_SLOW_CHANNEL_HINT = "a derived signal such as an RMS envelope or 1-s means, not the raw signal?"
#: Rules whose evidence window is the first half of the epoch plus the last half of the previous.
_HALF_WINDOW_RULES = ("N2.spindle", "N2.kcomplex")


def rule_event_kinds(rule_id: str) -> list[str]:
    """Kinds of the detected events that are the evidence of ``rule_id``."""
    return [k for d in RULES[rule_id].detectors for k in DETECTOR_KINDS.get(d, ())]


@dataclass
class Detection:
    """Detector output of one night.

    ``epochs``: one row per scored epoch (index: epoch number as in the hypnogram), with
    ``onset`` (s from the signal start), per-band EEG power (µV²), ``alpha_fraction``,
    ``lamf_fraction``, ``fast_fraction`` (seconds not slowed), ``movement_fraction``,
    ``sw_coverage`` (share of the epoch covered by slow waves), ``n_<kind>`` event counts,
    chin tone (``emg_rms``, ``emg_rel``, ``emg_quantile``, ``emg_low``) and ``<role>_ok``
    quality flags. ``events``: every detected event (EVENT_COLUMNS, onset in s from the signal
    start) with its ``epoch``. ``criteria``:
    per epoch and rule, whether the rule's criterion is met in that epoch (for context rules:
    the part one epoch can show), ``<NA>`` when it cannot be evaluated. ``not_evaluable``:
    rule ID or detector name -> why. ``read_in_part``: rule ID -> what was read of a rule
    whose optional part could not be (W.eyes without chin EMG: blinks alone; R.rem from one
    eye when the second is missing), and why; such a
    rule is evaluated, not listed in ``not_evaluable``. ``seconds``: run time of each detector.
    """

    label: str
    epochs: pd.DataFrame
    events: pd.DataFrame
    criteria: pd.DataFrame
    not_evaluable: dict[str, str] = field(default_factory=dict)
    read_in_part: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def rules_met(self, epoch: int) -> list[str]:
        """IDs of the rules whose criterion is met in ``epoch``."""
        row = self.criteria.loc[epoch]
        return [rule for rule, met in row.items() if met is True or met is np.True_]

    def evidence(self, epoch: int, rule_id: str) -> pd.DataFrame:
        """The detected events that support ``rule_id`` in ``epoch`` (empty for rules read from
        per-epoch values, such as chin tone)."""
        kinds = rule_event_kinds(rule_id)
        start = float(self.epochs.loc[epoch, "onset"])
        if rule_id in _HALF_WINDOW_RULES:
            start, stop = start - EPOCH_S / 2, start + EPOCH_S / 2
        else:
            stop = start + EPOCH_S
        ev = self.events
        inside = (
            ev["kind"].isin(kinds) & (ev["onset"] < stop) & (ev["onset"] + ev["duration"] > start)
        )
        if rule_id in _HALF_WINDOW_RULES:
            inside &= (ev["onset"] >= start) & (ev["onset"] < stop)
        return ev[inside].reset_index(drop=True)


@dataclass
class _Night:
    """Channels as 1-D signals on one time axis, and where each scored epoch lies on it."""

    label: str
    signals: dict[str, tuple[np.ndarray, float, str]]  # role -> (x, sfreq, channel)
    epoch_ids: np.ndarray
    starts: np.ndarray  # epoch starts on the signal's time axis (s)
    onsets: np.ndarray  # epoch onsets in the recording (s)
    joins: np.ndarray  # times (s) where non-consecutive epochs were joined
    missing: dict[str, str]


def _from_recording(rec: Recording, roles: tuple[str, ...]) -> _Night:
    signals, missing = {}, {}
    for role in roles:
        channel = rec.roles.get(role)
        if channel is None or channel not in rec.signals:
            missing[role] = f"{rec.label}: no {role.upper()} channel in the recording"
            continue
        signals[role] = (rec.signals[channel], float(rec.sfreq[channel]), channel)
    if "eeg" not in signals:
        raise DataError(f"{rec.label}: detect_all needs an EEG channel; {missing['eeg']}")
    second = rec.roles.get(SECOND_EYE)
    if "eog" in signals and second in rec.signals:
        signals[SECOND_EYE] = (rec.signals[second], float(rec.sfreq[second]), second)
    duration = min(len(x) / fs for x, fs, _ in signals.values())
    if duration < EPOCH_S + rec.hypnogram_offset:
        raise DataError(
            f"{rec.label}: {duration:.1f} s of signal holds no full {EPOCH_S:g}-s epoch after the "
            f"hypnogram offset ({rec.hypnogram_offset:g} s); detectors work on whole epochs"
        )
    n_fit = int((duration - rec.hypnogram_offset) // EPOCH_S)
    n = min(len(rec.stages), n_fit) if len(rec.stages) else n_fit
    ids = np.arange(n)
    starts = rec.hypnogram_offset + EPOCH_S * ids
    return _Night(rec.label, signals, ids, starts, starts, np.zeros(0), missing)


def _from_epochs(epochs: Epochs, roles: tuple[str, ...]) -> _Night:
    data = np.asarray(epochs.data)
    if data.ndim != 3 or data.shape[1] != len(ROLES) or data.shape[2] < EPOCH_S * TARGET_SFREQ:
        raise DataError(
            f"{epochs.label}: epochs of shape {data.shape} are not (n, 3, >= "
            f"{int(EPOCH_S * TARGET_SFREQ)}) at {TARGET_SFREQ} Hz; epochs shorter than "
            f"{EPOCH_S:g} s cannot be scored, re-run sleepvlm.signal.epoch_recording"
        )
    if len(data) == 0:
        raise DataError(f"{epochs.label}: no epochs to run detectors on")
    man = epochs.manifest
    present = {"eeg": True, "eog": bool(man["has_eog"].all()), "emg": bool(man["has_emg"].all())}
    signals, missing = {}, {}
    for role in roles:
        if not present[role]:
            missing[role] = f"{epochs.label}: no {role.upper()} channel (zeros in the epochs)"
            continue
        x = data[:, ROLES.index(role), : int(EPOCH_S * TARGET_SFREQ)].reshape(-1)
        signals[role] = (x, float(TARGET_SFREQ), role.upper())
    ids = man["epoch"].to_numpy(np.int64)
    starts = EPOCH_S * np.arange(len(ids))
    joins = starts[1:][np.diff(ids) != 1]
    return _Night(epochs.label, signals, ids, starts, man["onset"].to_numpy(float), joins, missing)


def role_detectors(role: str) -> tuple[str, ...]:
    """The detectors that read the channel of ``role`` (the EEG's band powers included; the
    second eye's EOG is read by the eye-movement detector)."""
    if role == SECOND_EYE:
        return ("eye_movements",)
    named = tuple(d for d, r in DETECTOR_ROLE.items() if r == role)
    return ("band_power", *named) if role == "eeg" else named


def rate_shortfalls(
    channels: Mapping[str, str],
    rates: Mapping[str, float],
    source: str,
    rules: RuleSet = DEFAULT_RULES,
) -> tuple[dict[str, str], dict[str, str]]:
    """What the sampling rates of a recording leave out.

    ``channels`` and ``rates`` map roles to the channel name and the rate (Hz) it was recorded
    at. Returns the roles no detector can read (role -> why; such a channel is left out) and,
    for the other roles, the detectors that cannot read theirs (detector -> why)."""
    roles_out, detectors_out = {}, {}
    for role, channel in channels.items():
        why = {
            d: det.rate_shortfall(d, channel, rates[role], rules=rules)
            for d in role_detectors(role)
        }
        if all(why.values()):
            lowest = min(rules.setting(d, "min_sfreq") for d in why)
            roles_out[role] = (
                f"{source}: {role.upper()} {channel!r} is sampled at {rates[role]:g} Hz, below "
                f"the {lowest:g} Hz any of its detectors needs ({_SLOW_CHANNEL_HINT})"
            )
        else:
            detectors_out.update({d: f"{source}: {w}" for d, w in why.items() if w})
    return roles_out, detectors_out


def _leave_out_slow(
    night: _Night,
    native_sfreq: Mapping[str, float],
    runner: _Runner,
    *,
    rules: RuleSet,
) -> None:
    """Judge each channel by the rate it was recorded at (``native_sfreq``, role -> Hz; the
    rate of the signal handed over otherwise): a channel no detector can read leaves the
    night, a detector that cannot read its channel is marked failed before it runs."""
    channels = {role: channel for role, (_, _, channel) in night.signals.items()}
    rates = {
        role: min(fs, native_sfreq.get(role, fs)) for role, (_, fs, _) in night.signals.items()
    }
    roles_out, detectors_out = rate_shortfalls(channels, rates, night.label, rules=rules)
    if runner.strict and roles_out:
        raise DataError(next(iter(roles_out.values())))
    for role, why in roles_out.items():
        night.missing[role] = why
        del night.signals[role]
    runner.skip(detectors_out)


def _second_eye(night: _Night, ok: Mapping[str, np.ndarray]) -> tuple[np.ndarray | None, str]:
    """The second eye's signal for the eye-movement detectors (rapid and slow), or None and
    why rapid eye movements are read from one eye (the detector's fallback, reported as R.rem
    read in part)."""
    _, eog_fs, eog_ch = night.signals["eog"]
    fallback = f"one eye ({eog_ch}), blinks and EEG told from eye movements by their shape"
    if SECOND_EYE not in night.signals:
        return None, f"{fallback}: no second EOG channel"
    x, fs, channel = night.signals[SECOND_EYE]
    if fs != eog_fs:
        return (
            None,
            f"{fallback}: the second eye {channel!r} is sampled at {fs:g} Hz, not {eog_fs:g}",
        )
    if not ok[SECOND_EYE].any():
        return None, f"{fallback}: the second eye {channel!r} is flat or clipped"
    return x, ""


def _quality(x: np.ndarray, sfreq: float, starts: np.ndarray, *, rules: RuleSet) -> np.ndarray:
    """Per epoch: usable (not flat, not clipped at the channel's extreme values)."""
    n = int(round(EPOCH_S * sfreq))
    idx = np.round(starts * sfreq).astype(np.int64)
    windows = x[np.clip(idx[:, None] + np.arange(n), 0, len(x) - 1)]
    flat = np.ptp(windows, axis=1) < rules.setting("quality", "flat_ptp_uv")
    at_rail = (windows >= x.max()) | (windows <= x.min())
    clipped = at_rail.mean(axis=1) >= rules.setting("quality", "clip_fraction")
    return ~flat & ~clipped


def _epoch_position(night: _Night, t: np.ndarray) -> np.ndarray:
    """Row of the epoch holding each time (-1 outside every epoch)."""
    pos = np.searchsorted(night.starts, t, side="right") - 1
    inside = (pos >= 0) & (t < night.starts[np.clip(pos, 0, None)] + EPOCH_S)
    return np.where(inside, pos, -1)


def _place_events(night: _Night, events: pd.DataFrame) -> pd.DataFrame:
    """Events on the recording's time axis, with their epoch; those outside every epoch or
    across a join of non-consecutive epochs are dropped."""
    on = events["onset"].to_numpy(float)
    off = on + events["duration"].to_numpy(float)
    pos = _epoch_position(night, on)
    crosses = np.zeros(len(on), dtype=bool)
    if len(night.joins):
        k = np.searchsorted(night.joins, on, side="right")
        crosses = (k < len(night.joins)) & (night.joins[np.clip(k, 0, len(night.joins) - 1)] < off)
    keep = (pos >= 0) & ~crosses
    out = events[keep].copy()
    p = pos[keep]
    out["onset"] = night.onsets[p] + (on[keep] - night.starts[p])
    out["epoch"] = night.epoch_ids[p]
    return out.reset_index(drop=True)


def _per_epoch(night: _Night, seconds_t: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of per-second values over each epoch (NaN where an epoch has none)."""
    pos = _epoch_position(night, seconds_t + 0.5)
    ok = pos >= 0
    total = np.bincount(pos[ok], values[ok].astype(float), minlength=len(night.starts))
    count = np.bincount(pos[ok], minlength=len(night.starts))
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def epoch_coverage(epoch_onsets: np.ndarray, onset: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """Share of each 30-s epoch (given by its onset, sorted) covered by events no longer than an
    epoch (overlapping events count twice; the result is capped at 1)."""
    starts = np.asarray(epoch_onsets, dtype=float)
    on = np.asarray(onset, dtype=float)
    off = on + np.asarray(duration, dtype=float)
    cover = np.zeros(len(starts))
    first = np.searchsorted(starts, on, side="right") - 1
    for shift in (0, 1):  # an event can run into the next epoch
        p = first + shift
        valid = (p >= 0) & (p < len(starts))
        p = p[valid]
        overlap = np.minimum(off[valid], starts[p] + EPOCH_S) - np.maximum(on[valid], starts[p])
        np.add.at(cover, p, np.clip(overlap, 0, None) / EPOCH_S)
    return np.clip(cover, 0, 1)


def _window_count(event_onsets: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    srt = np.sort(event_onsets)
    return np.searchsorted(srt, stops, side="left") - np.searchsorted(srt, starts, side="left")


class _Runner:
    """Runs detectors, keeping their time and the reason when one cannot run."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.seconds: dict[str, float] = {}
        self.failed: dict[str, str] = {}

    def skip(self, reasons: Mapping[str, str]) -> None:
        """Mark detectors that must not run (detector -> why); strict: raise the first."""
        if self.strict and reasons:
            raise DataError(next(iter(reasons.values())))
        self.failed.update(reasons)

    def __call__(self, name: str, fn: Callable[[], object]):
        if name in self.failed:
            return None
        start = time.perf_counter()
        try:
            return fn()
        except DataError as err:
            if self.strict:
                raise
            self.failed[name] = str(err)
            return None
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def detect_all(
    source: Recording | Epochs,
    roles: tuple[str, ...] = ROLES,
    strict: bool = False,
    native_sfreq: Mapping[str, float] | None = None,
    rules: RuleSet = DEFAULT_RULES,
) -> Detection:
    """Run every detector whose channel is present; see :class:`Detection` for the output.

    ``native_sfreq`` (role -> Hz) gives the rate each channel was recorded at when ``source``
    holds it resampled (``sleepvlm stage`` brings a 50-Hz EEG to 100 Hz, which adds no
    frequency above 25 Hz): what a detector can read is judged on that rate
    (:func:`rate_shortfalls`). With ``strict`` a detector that cannot run (e.g. a sampling rate
    below its minimum) raises its :class:`DataError` instead of being reported in
    ``not_evaluable``. ``rules`` holds every threshold and setting the detectors and the
    criteria use (:class:`~sleepvlm.rules.table.RuleSet`)."""
    night = (
        _from_recording(source, roles)
        if isinstance(source, Recording)
        else _from_epochs(source, roles)
    )
    run = _Runner(strict)
    _leave_out_slow(night, native_sfreq or {}, run, rules=rules)
    if "eeg" not in night.signals:
        raise DataError(f"{night.label}: detect_all needs an EEG channel; {night.missing['eeg']}")
    n = len(night.starts)
    ok = {r: np.zeros(n, dtype=bool) for r in ROLES}
    for role, (x, fs, _) in night.signals.items():
        ok[role] = _quality(np.asarray(x, dtype=np.float64), fs, night.starts, rules=rules)
        if not ok[role].any():
            night.missing[role] = f"{night.label}: {role.upper()} channel is flat or clipped"

    ev_parts, table = [], pd.DataFrame({"epoch": night.epoch_ids, "onset": night.onsets})
    eeg, eeg_fs, eeg_ch = night.signals["eeg"]
    powers = run("band_power", lambda: det.band_powers(eeg, eeg_fs, eeg_ch, rules=rules))
    per_second = {
        "alpha": lambda p: det.alpha_seconds(p, rules=rules),
        "lamf": lambda p: det.lamf_seconds(p, rules=rules),
        "fast": det.fast_seconds,  # no setting: alpha + beta against theta
        "movement": lambda p: det.movement_seconds(p, rules=rules),
    }
    if powers is not None:
        t = powers["time"].to_numpy()
        for band in ("delta", "theta", "alpha", "sigma", "beta", "rms"):
            table[band if band == "rms" else f"{band}_power"] = _per_epoch(
                night, t, powers[band].to_numpy()
            )
        for name, fn in per_second.items():
            if name not in run.failed:
                table[f"{name}_fraction"] = _per_epoch(night, t, fn(powers))
    else:
        for name in _READ_BAND_POWERS:
            run.failed.setdefault(name, run.failed["band_power"])

    eeg_detectors = {
        "alpha": det.detect_alpha,
        "spindle": det.detect_spindles,
        "kcomplex": det.detect_kcomplexes,
        "slow_wave": det.detect_slow_waves,
        "vertex": det.detect_vertex_waves,
        "sawtooth": det.detect_sawtooth,
        "arousal": det.detect_arousals,
        "movement": det.detect_movements,
    }
    for name, fn in eeg_detectors.items():
        ev_parts.append(run(name, lambda fn=fn: fn(eeg, eeg_fs, eeg_ch, rules=rules)))
    one_eye = ""
    if "eog" in night.signals:
        eog, eog_fs, eog_ch = night.signals["eog"]
        other, one_eye = _second_eye(night, ok)
        ev_parts.append(
            run(
                "eye_movements",
                lambda: det.detect_eye_movements(
                    eog, eog_fs, eog_ch, eeg, eeg_fs, other, rules=rules
                ),
            )
        )
        ev_parts.append(
            run(
                "sem",
                lambda: det.detect_slow_eye_movements(
                    eog, eog_fs, eog_ch, eeg, eeg_fs, other, rules=rules
                ),
            )
        )
    emg_rms = np.full(n, np.nan)
    if "emg" in night.signals:
        emg, emg_fs, emg_ch = night.signals["emg"]
        per_sec = run("emg_tone", lambda: det.emg_seconds_rms(emg, emg_fs, emg_ch, rules=rules))
        if per_sec is not None:
            sec = np.arange(len(per_sec), dtype=float)
            pos = _epoch_position(night, sec + 0.5)
            frame = pd.DataFrame({"pos": pos, "rms": per_sec})[pos >= 0]
            emg_rms[:] = frame.groupby("pos")["rms"].median().reindex(range(n)).to_numpy()
            emg_rms[~ok["emg"]] = np.nan
    table = pd.concat([table, det.emg_tone(emg_rms, rules=rules)], axis=1)

    found = [e for e in ev_parts if e is not None and len(e)]
    events = pd.concat(found, ignore_index=True) if found else det.events_frame("", "", [], [], [])
    # a detector may report one deflection twice (two slope peaks, same extent): count it once
    events = events[list(EVENT_COLUMNS)].drop_duplicates(ignore_index=True)
    events = _place_events(night, events)
    events = events.sort_values(["onset", "kind"], ignore_index=True)
    for kinds in DETECTOR_KINDS.values():
        for kind in kinds:
            table[f"n_{kind}"] = np.bincount(
                np.searchsorted(night.epoch_ids, events.loc[events["kind"] == kind, "epoch"]),
                minlength=n,
            )
    slow = events[events["kind"] == "slow_wave"]
    table["sw_coverage"] = epoch_coverage(night.onsets, slow["onset"], slow["duration"])
    for role in ROLES:
        table[f"{role}_ok"] = ok[role]
    for fraction in ("alpha_fraction", "lamf_fraction", "fast_fraction", "movement_fraction"):
        if fraction not in table:
            table[fraction] = np.nan
    table = table.set_index("epoch")
    events["epoch"] = events["epoch"].astype(np.int64)

    criteria, reasons, partial = _criteria(table, events, night, run.failed, rules=rules)
    if one_eye and "R.rem" not in reasons and "eye_movements" not in run.failed:
        partial["R.rem"] = one_eye
    return Detection(
        label=night.label,
        epochs=table,
        events=events,
        criteria=criteria,
        not_evaluable={**run.failed, **reasons},
        read_in_part=partial,
        seconds=run.seconds,
    )


def _local_criteria(
    table: pd.DataFrame, events: pd.DataFrame, *, rules: RuleSet
) -> dict[str, pd.Series]:
    """What each rule asks of one epoch, from the epoch table (NaN inputs give False here;
    not-evaluable epochs are blanked afterwards)."""
    onset = table["onset"].to_numpy(float)
    half = EPOCH_S / 2

    def in_half_window(kind_events: pd.DataFrame) -> np.ndarray:
        return _window_count(kind_events["onset"].to_numpy(float), onset - half, onset + half)

    kcs = events[events["kind"] == "kcomplex"]
    arousal_on = np.sort(events.loc[events["kind"] == "arousal", "onset"].to_numpy(float))
    kc_end = (kcs["onset"] + kcs["duration"]).to_numpy(float)
    # a K complex goes with an arousal that starts during it or within arousal_gap_s after it
    first = np.searchsorted(arousal_on, kcs["onset"].to_numpy(float), side="left")
    last = np.searchsorted(
        arousal_on, kc_end + rules.threshold("N2.kcomplex", "arousal_gap_s"), side="right"
    )
    free_kcs = kcs[last - first == 0]

    alpha = table["alpha_fraction"].to_numpy(float)
    lamf = table["lamf_fraction"].to_numpy(float)
    movement = table["movement_fraction"].to_numpy(float)
    low_tone = table["emg_low"].to_numpy(float) == 1
    no_nrem_marks = (table["n_spindle"] == 0) & (table["n_kcomplex"] == 0)
    awake_eeg = (
        table["fast_fraction"].to_numpy(float) > rules.threshold("W.fast", "min_epoch_fraction")
    ) & ~low_tone
    eyes_open = (table["n_blink"] >= rules.threshold("W.eyes", "min_blinks")) | (
        table["n_rem"] >= rules.threshold("W.eyes", "min_rems")
    )
    return {
        "W.alpha": alpha > rules.threshold("W.alpha", "min_epoch_fraction"),
        "W.fast": awake_eeg,
        "W.eyes": eyes_open
        & (table["emg_quantile"] >= rules.threshold("W.eyes", "min_tone_quantile")),
        "N1.lamf": (lamf > rules.threshold("N1.lamf", "min_epoch_fraction"))
        & (alpha <= rules.threshold("W.alpha", "min_epoch_fraction")),
        "N1.vertex": table["n_vertex"] >= rules.threshold("N1.vertex", "min_count"),
        "N1.sem": table["n_sem"] >= rules.threshold("N1.sem", "min_count"),
        "N2.spindle": in_half_window(events[events["kind"] == "spindle"])
        >= rules.threshold("N2.spindle", "min_count"),
        # a K complex is a wave of sleep: where W.fast reads the EEG as awake, a wave of its
        # shape is an eye movement or a blink on a frontal lead
        "N2.kcomplex": (in_half_window(free_kcs) >= rules.threshold("N2.kcomplex", "min_count"))
        & ~awake_eeg,
        "N2.cont": no_nrem_marks
        & (table["n_arousal"] == 0)
        & (movement <= rules.threshold("major_body_movement", "min_epoch_fraction")),
        "N2.arousal_end": table["n_arousal"] >= 1,
        "N3.sw20": table["sw_coverage"] >= rules.threshold("N3.sw20", "min_epoch_fraction"),
        "R.rem": table["n_rem"] >= rules.threshold("R.rem", "min_count"),
        "R.atonia": pd.Series(low_tone, index=table.index),
        "R.sawtooth": table["n_sawtooth"] >= rules.threshold("R.sawtooth", "min_count"),
        "R.cont": no_nrem_marks
        & low_tone
        & (lamf > rules.threshold("N1.lamf", "min_epoch_fraction")),
        "R.arousal_end": (table["n_arousal"] >= 1) | (movement > 0) | ~low_tone,
        "arousal": table["n_arousal"] >= 1,
        "major_body_movement": movement
        > rules.threshold("major_body_movement", "min_epoch_fraction"),
    }


def _blinks_alone(table: pd.DataFrame, rules: RuleSet) -> pd.Series:
    return table["n_blink"] >= rules.threshold("W.eyes", "min_blinks")


#: Rules read in part when one role of theirs cannot be read: rule -> (that role, what is read
#: without it, the criterion then). W.eyes: the manual ties rapid eye movements, not blinks, to
#: chin tone, so without the chin EMG blinks alone show wake.
_PARTIAL: dict[str, tuple[str, str, Callable[[pd.DataFrame, RuleSet], pd.Series]]] = {
    "W.eyes": ("emg", "blinks alone", _blinks_alone),
}


def _unread(rule_id: str, night: _Night, failed: dict[str, str], roles: Iterable[str]) -> str:
    """Why ``rule_id`` cannot be read on ``roles`` in this night ('' when it can)."""
    rule = RULES[rule_id]
    why = [night.missing[r] for r in rule.needs if r in roles and r in night.missing]
    why += [
        f"{d}: {failed[d]}" for d in rule.detectors if d in failed and DETECTOR_ROLE[d] in roles
    ]
    return "; ".join(dict.fromkeys(why))


def _usable(table: pd.DataFrame, roles: Iterable[str]) -> np.ndarray:
    return np.logical_and.reduce([table[f"{r}_ok"].to_numpy() for r in roles])


def _criteria(
    table: pd.DataFrame,
    events: pd.DataFrame,
    night: _Night,
    failed: dict[str, str],
    *,
    rules: RuleSet,
) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """Per epoch and rule: met, not met or <NA>; the rules not evaluable (rule -> why) and
    those read in part (rule -> what was read and why, see :data:`_PARTIAL`)."""
    local = _local_criteria(table, events, rules=rules)
    out = pd.DataFrame(index=table.index)
    reasons: dict[str, str] = {}
    partial: dict[str, str] = {}
    for rule_id, met in local.items():
        needs = RULES[rule_id].needs
        column = pd.Series(np.asarray(met, dtype=bool), index=table.index, dtype="boolean")
        why = _unread(rule_id, night, failed, needs)
        optional, what, criterion = _PARTIAL.get(rule_id, (None, "", None))
        rest = [r for r in needs if r != optional]
        if optional and not _unread(rule_id, night, failed, rest):
            # where only the optional role is unread (all night, or in some epochs), the rest
            # of the criterion decides
            lacking = np.ones(len(table), dtype=bool) if why else ~_usable(table, [optional])
            column[lacking] = np.asarray(criterion(table, rules), dtype=bool)[lacking]
            column[~_usable(table, rest)] = pd.NA
            if why:
                partial[rule_id] = f"{what} ({why})"
        elif why:
            reasons[rule_id] = why
            column[:] = pd.NA
        else:
            column[~_usable(table, needs)] = pd.NA
        out[rule_id] = column
    return out, reasons, partial
