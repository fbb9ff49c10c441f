"""``sleepvlm stage``: stage any EDF with the rule-based AASM stager, no hypnogram needed.

The named channels are read at their native rates, preprocessed like the benchmark's epochs
(:func:`sleepvlm.signal.preprocess_channel`: notch, 100 Hz, band-pass per role) and cut into
30-s epochs from the signal start. EOG and EMG are optional: without them the rules that need
them are listed as not evaluable in every row and the stage comes from what is left. With both
eyes (``--eog`` LOC, ``--eog2`` ROC) rapid eye movements are read from their phase; with one,
the rule is reported read in part. With the ECG (``--ecg``) the heart's field is subtracted
from every channel first (:mod:`sleepvlm.cardiac`): ear-referenced EOGs can show each QRS
complex as a blink. Each
detector is judged on the rate its channel was recorded at: at 50 Hz (older archives, home
devices) every detector runs; one that cannot read its channel is reported with the reason, and
a channel no detector can read (e.g. Sleep-EDF's 1-Hz EMG RMS envelope) is left out as if it
were absent. The EEG must hold the spindle band (35.2 Hz or more).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from sleepvlm.cardiac import heartbeats, remove_cardiac_field
from sleepvlm.data.edf import edf_labels, open_edf, read_channels
from sleepvlm.data.records import SECOND_EYE, ChannelNotFoundError, DataError, Recording
from sleepvlm.rules.detectors import rate_shortfall
from sleepvlm.rules.evidence import Detection, rate_shortfalls
from sleepvlm.rules.table import DEFAULT_RULES, RULES, RuleSet
from sleepvlm.signal import TARGET_SFREQ, preprocess_channel

#: The detector an EEG must be fast enough for: without band powers (alpha, LAMF, beta) the
#: stager cannot tell W from N1, nor spindles from the background.
EEG_NEEDED_BY = "band_power"


def _check_names(path: Path, labels: list[str], names: dict[str, str]) -> None:
    for role, name in names.items():
        if name not in labels:
            raise ChannelNotFoundError(
                f"{path}: no channel {name!r} for the {role.upper()} (channels present: "
                f"{', '.join(labels)}); pass one of them with --{role}"
            )


def check_eeg_rate(
    rates: Mapping[str, float],
    roles: Mapping[str, str],
    source: str,
    rules: RuleSet = DEFAULT_RULES,
) -> None:
    """DataError when the EEG is too slow for the band powers the stager reads."""
    shortfall = rate_shortfall(EEG_NEEDED_BY, roles["eeg"], rates[roles["eeg"]], rules=rules)
    if shortfall:
        raise DataError(
            f"{source}: EEG {shortfall}; stage a recording with a raw EEG channel sampled at "
            f">= {rules.setting(EEG_NEEDED_BY, 'min_sfreq'):g} Hz"
        )


def usable_roles(
    rates: dict[str, float], roles: dict[str, str], source: str, rules: RuleSet = DEFAULT_RULES
) -> tuple[dict[str, str], list[str]]:
    """The roles whose channel at least one of its detectors can read, and a note for each EOG
    or EMG left out; an EEG too slow for the stager is a DataError (:func:`check_eeg_rate`)."""
    check_eeg_rate(rates, roles, source, rules=rules)
    by_role = {role: rates[name] for role, name in roles.items()}
    left_out, _ = rate_shortfalls(roles, by_role, source, rules=rules)
    kept = {role: name for role, name in roles.items() if role not in left_out}
    notes = [
        f"{why}; staged without the {role.upper()}: the rules that need it are marked not evaluable"
        for role, why in left_out.items()
    ]
    return kept, notes


def preprocessed_recording(
    signals: dict[str, np.ndarray],
    rates: dict[str, float],
    roles: dict[str, str],
    label: str = "signal",
    line_freq: float | None = None,
    progress: tqdm | None = None,
) -> Recording:
    """A Recording without hypnogram of the ``roles`` channels (role -> channel name),
    preprocessed as the benchmark's epochs are (notch, 100 Hz, band-pass per role)."""
    filtered = {}
    for role, name in roles.items():
        # the second eye is filtered as the first
        band = "eog" if role == SECOND_EYE else role
        filtered[name] = preprocess_channel(
            signals[name], rates[name], band, line_freq, source=f"{label}: {role.upper()} {name!r}"
        )
        if progress is not None:
            progress.update()
    return Recording(
        dataset="edf",
        subject=label,
        night="",
        signals=filtered,
        sfreq=dict.fromkeys(filtered, float(TARGET_SFREQ)),
        stages=[],
        roles=dict(roles),
        line_freq=line_freq,
    )


def load_for_staging(
    path: str | Path,
    eeg: str,
    eog: str | None = None,
    emg: str | None = None,
    line_freq: float | None = None,
    progress: tqdm | None = None,
    eog2: str | None = None,
    ecg: str | None = None,
    rules: RuleSet = DEFAULT_RULES,
) -> tuple[Recording, dict[str, float]]:
    """Read and preprocess the named channels of an EDF (:func:`preprocessed_recording`);
    returns the Recording and the rate (Hz) each role was recorded at, which decides what
    its detectors can read (:func:`sleepvlm.rules.evidence.detect_all`'s ``native_sfreq``).
    ``eog2`` names the second eye's EOG (ROC), read beside ``eog`` (LOC); ``ecg`` an ECG
    whose heartbeats locate the cardiac field removed from every channel before
    preprocessing (:func:`sleepvlm.cardiac.remove_cardiac_field`)."""
    path = Path(path)
    if eog2 and not eog:
        raise DataError(f"{path}: a second eye ({eog2!r}) needs the first: pass --eog too")
    edf = open_edf(path)
    pairs = (("eeg", eeg), ("eog", eog), (SECOND_EYE, eog2), ("emg", emg))
    names = {r: n for r, n in pairs if n}
    wanted = {**names, "ecg": ecg} if ecg else names
    _check_names(path, edf_labels(edf), wanted)
    signals, rates = read_channels(edf, list(dict.fromkeys(wanted.values())), path)
    check_eeg_rate(rates, names, str(path), rules=rules)
    if ecg:
        beats = heartbeats(signals[ecg], rates[ecg], f"{path}: ECG {ecg!r}")
        signals = {
            n: remove_cardiac_field(signals[n], rates[n], beats) for n in set(names.values())
        }
    rec = preprocessed_recording(signals, rates, names, path.stem, line_freq, progress)
    rec.source = str(path)
    return rec, {role: rates[name] for role, name in names.items()}


def stage_edf(
    path: str | Path,
    eeg: str,
    eog: str | None = None,
    emg: str | None = None,
    line_freq: float | None = None,
    progress: tqdm | None = None,
    eog2: str | None = None,
    ecg: str | None = None,
    rules: RuleSet = DEFAULT_RULES,
) -> tuple[pd.DataFrame, Detection]:
    """What ``sleepvlm stage`` does: the staged night (see
    :func:`~sleepvlm.rules.stager.stage_detection`) and the detection it came from."""
    from sleepvlm.rules.evidence import detect_all
    from sleepvlm.rules.stager import stage_detection

    rec, rates = load_for_staging(path, eeg, eog, emg, line_freq, progress, eog2, ecg, rules=rules)
    if progress is not None:
        progress.set_description("detecting")
    detection = detect_all(rec, native_sfreq=rates, rules=rules)
    if progress is not None:
        progress.update()
    return stage_detection(detection), detection


def dreams_psg_agreement(
    excerpt: int = 3,
    eeg: str = "C3-A1",
    eog: str | None = "EOG1-A1",
    emg: str | None = "EMG1",
    eog2: str | None = None,
    ecg: str | None = None,
    rules: RuleSet = DEFAULT_RULES,
) -> dict:
    """``sleepvlm stage`` on a DREAMS PSG (excerpt 3: 50 Hz; its eyes: EOG1-A1 and EOG2-A1; its
    ECG: ECG)
    against the file's own hypnogram
    (5-s R&K steps, 30-s epochs by majority, :func:`~sleepvlm.data.dreams.to_30s_epochs`):
    the :func:`~sleepvlm.rules.stager.hypnogram_agreement` metrics (κ, accuracy, n...), with
    the staged night under ``staged``, the reference labels under ``reference`` and the number
    of events of each kind the detectors found under ``events``."""
    from sleepvlm.data import dreams
    from sleepvlm.rules.stager import hypnogram_agreement

    staged, detection = stage_edf(
        dreams.dreams_psg(excerpt), eeg, eog, emg, eog2=eog2, ecg=ecg, rules=rules
    )
    reference = dreams.to_30s_epochs(dreams.read_dreams_hypnogram(excerpt))
    return {
        **hypnogram_agreement(staged, reference),
        "staged": staged,
        "reference": reference,
        "events": detection.events["kind"].value_counts().to_dict(),
    }


def dreams_cardiac_field(
    excerpt: int = 3,
    channels: tuple[str, ...] = ("EOG1-A1", "EOG2-A1", "C3-A1", "EMG1"),
    ecg: str = "ECG",
) -> pd.DataFrame:
    """How the heart's field reaches each of ``channels`` of a DREAMS PSG, from the channel
    averaged around the R peaks found on ``ecg`` (:func:`~sleepvlm.cardiac.beat_locked_average`):
    its peak-to-peak size (µV), and its correlation with the first channel's (near 1: the
    same deflection, in the same direction). ``attrs`` holds the number of beats and the heart
    rate (per minute)."""
    from sleepvlm.cardiac import beat_locked_average
    from sleepvlm.data import dreams

    path = dreams.dreams_psg(excerpt)
    signals, rates = read_channels(open_edf(path), [*channels, ecg], path)
    beats = heartbeats(signals[ecg], rates[ecg], f"{path}: ECG {ecg!r}")
    averages = {name: beat_locked_average(signals[name], rates[name], beats) for name in channels}
    first = averages[channels[0]]
    field = pd.DataFrame(
        {
            name: {
                "heart's field (µV, peak to peak)": float(np.ptp(average)),
                f"correlation with {channels[0]}": float(np.corrcoef(first, average)[0, 1])
                if len(average) == len(first)
                else np.nan,
            }
            for name, average in averages.items()
        }
    ).T
    field.attrs = {"beats": len(beats), "bpm": 60 * len(beats) / (len(signals[ecg]) / rates[ecg])}
    return field


#: YASA's eyes-open resting EEG (a real excerpt): 6 min of a person awake, F4-A1 and CZ-A2.
RESTING_WAKE = "yasa_data_resting_EO_200Hz_raw.fif"
#: Per-epoch shares (of its seconds) shown beside the stage of a real wake epoch.
_WAKE_SHARES = {
    "not slowed": "fast_fraction",
    "alpha": "alpha_fraction",
    "LAMF": "lamf_fraction",
}


def read_resting_wake() -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The signals (µV) and sampling rates (Hz) of :data:`RESTING_WAKE`, by channel."""
    import mne

    from sleepvlm.data.registry import real_excerpt

    raw = mne.io.read_raw_fif(real_excerpt(RESTING_WAKE), verbose=False)
    signals = dict(zip(raw.ch_names, raw.get_data(units="uV"), strict=True))
    return signals, dict.fromkeys(raw.ch_names, float(raw.info["sfreq"]))


def resting_wake(channel: str, rules: RuleSet = DEFAULT_RULES) -> dict:
    """What ``sleepvlm stage --eeg CHANNEL`` and YASA's pretrained stager make of one channel
    of :data:`RESTING_WAKE`, where every epoch is wake: ``staged``, ``detection``,
    ``recording`` (preprocessed as the command does), ``yasa`` (YASA's label per epoch) and
    ``w_share`` (share of W epochs by ``stager`` and by ``yasa``)."""
    from sleepvlm.data.realism import yasa_predict
    from sleepvlm.rules.evidence import detect_all
    from sleepvlm.rules.stager import stage_detection

    signals, rates = read_resting_wake()
    rec = preprocessed_recording(signals, rates, {"eeg": channel}, f"resting wake {channel}")
    detection = detect_all(rec, native_sfreq={"eeg": rates[channel]}, rules=rules)
    staged = stage_detection(detection)
    yasa = yasa_predict(signals, rates, {"eeg": channel})[: len(staged)]
    return {
        "staged": staged,
        "detection": detection,
        "recording": rec,
        "yasa": yasa,
        "w_share": {
            "stager": float((staged["stage"] == "W").mean()),
            "yasa": float((yasa == "W").mean()),
        },
    }


def wake_epochs_table(result: dict) -> pd.DataFrame:
    """One row per epoch of a :func:`resting_wake` result: the stager's stage and rules,
    YASA's stage, the share of the epoch's seconds that are not slowed, alpha and LAMF (%),
    and how many events of each kind the detectors found in it (kinds found at all)."""
    staged, epochs = result["staged"], result["detection"].epochs
    table = pd.DataFrame(
        {
            "stager": staged["stage"].to_numpy(),
            "rules": staged["rules"].map(", ".join).to_numpy(),
            "YASA": result["yasa"],
        },
        index=pd.Index(staged["epoch"].to_numpy(), name="epoch"),
    )
    for name, column in _WAKE_SHARES.items():
        table[f"{name} (%)"] = (100 * epochs.loc[table.index, column]).round().astype(int)
    counts = result["detection"].events.groupby(["epoch", "kind"]).size().unstack(fill_value=0)
    return table.join(counts.reindex(table.index, fill_value=0))


def evaluability_lines(detection: Detection) -> list[str]:
    """What the night summary says about rules that could not be read: one line per reason
    for the rules not evaluable, one per rule read in part."""
    by_reason: dict[str, list[str]] = {}
    for rule in RULES:
        if rule in detection.not_evaluable:
            by_reason.setdefault(detection.not_evaluable[rule], []).append(rule)
    lines = [f"rules not evaluable: {', '.join(rules)}: {why}" for why, rules in by_reason.items()]
    lines += [f"rule read in part: {rule}: {how}" for rule, how in detection.read_in_part.items()]
    return lines


def cmd_stage(args: argparse.Namespace) -> int:
    from sleepvlm.rules.stager import write_hypnogram

    steps = 1 + sum(bool(n) for n in (args.eog, args.eog2, args.emg)) + 2
    with tqdm(total=steps, desc="staging", unit="step", file=sys.stderr) as progress:
        try:
            staged, detection = stage_edf(
                args.recording,
                args.eeg,
                args.eog,
                args.emg,
                args.line_freq,
                progress,
                args.eog2,
                args.ecg,
            )
        except DataError as err:
            progress.close()
            print(f"error: {err}", file=sys.stderr)
            return 1
        progress.set_description("staging")
        write_hypnogram(staged, args.output)
        progress.update()
    counts = staged["stage"].value_counts().to_dict()
    summary = ", ".join(f"{s} {counts[s]}" for s in counts)
    print(f"{args.output}: {len(staged)} epochs ({summary})")
    for line in evaluability_lines(detection):
        print(line, file=sys.stderr)
    return 0


def add_stage_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``stage`` to the ``sleepvlm`` command's subparsers."""
    parser = subparsers.add_parser(
        "stage",
        help="stage an EDF with the rule-based AASM stager (one row per 30-s epoch)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recording", type=Path, help="EDF/EDF+ file (any extension)")
    parser.add_argument("--eeg", required=True, help="EEG channel label, e.g. 'C4-A1'")
    parser.add_argument("--eog", help="EOG channel label (optional; the left eye, LOC/E1)")
    parser.add_argument(
        "--eog2",
        help="the other eye's EOG channel (optional, with --eog; ROC/E2): rapid eye movements "
        "are then read as the two eyes moving in opposite directions",
    )
    parser.add_argument("--emg", help="chin EMG channel label (optional)")
    parser.add_argument(
        "--ecg",
        help="ECG channel label (optional): the heart's field, located by its R peaks, is "
        "subtracted from every channel before staging",
    )
    parser.add_argument(
        "--line-freq", type=float, help="mains frequency to notch (50 or 60 Hz; default: none)"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="CSV hypnogram to write")
    parser.set_defaults(func=cmd_stage)
    return parser
