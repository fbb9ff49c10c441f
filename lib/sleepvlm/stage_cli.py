"""``sleepvlm stage``: stage any EDF with the rule-based AASM stager, no hypnogram needed.

The named channels are read at their native rates, preprocessed like the benchmark's epochs
(:func:`sleepvlm.signal.preprocess_channel`: notch, 100 Hz, band-pass per role) and cut into
30-s epochs from the signal start. EOG and EMG are optional: without them the rules that need
them are listed as not evaluable in every row and the stage comes from what is left. A channel
sampled too slowly for its detectors (e.g. Sleep-EDF's 1-Hz EMG RMS envelope) is left out with
a message saying so, as if it were absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sleepvlm.data.edf import edf_labels, open_edf, read_channels
from sleepvlm.data.records import ChannelNotFoundError, DataError, Recording
from sleepvlm.rules.table import RULES, setting
from sleepvlm.signal import TARGET_SFREQ, preprocess_channel

#: Per role, the detector setting whose ``min_sfreq`` a channel's native rate must reach.
RATE_NEEDED_BY: dict[str, str] = {"eeg": "band_power", "eog": "eye_movements", "emg": "emg_tone"}


def min_rate(role: str) -> float:
    """Lowest native rate (Hz) at which the detectors of ``role`` can read a channel."""
    return float(setting(RATE_NEEDED_BY[role], "min_sfreq"))


def _check_names(path: Path, labels: list[str], names: dict[str, str]) -> None:
    for role, name in names.items():
        if name not in labels:
            raise ChannelNotFoundError(
                f"{path}: no channel {name!r} for the {role.upper()} (channels present: "
                f"{', '.join(labels)}); pass one of them with --{role}"
            )


def usable_roles(
    rates: dict[str, float], roles: dict[str, str], source: str
) -> tuple[dict[str, str], list[str]]:
    """The roles whose channel is sampled fast enough for its detectors, and a note for each
    EOG or EMG left out; an EEG too slow for them is a DataError."""
    kept, notes = {}, []
    for role, name in roles.items():
        if rates[name] >= min_rate(role):
            kept[role] = name
            continue
        message = (
            f"{source}: {role.upper()} {name!r} is sampled at {rates[name]:g} Hz, below the "
            f"{min_rate(role):g} Hz its detectors need"
        )
        if role == "eeg":
            raise DataError(f"{message}; stage a recording with a raw EEG channel")
        notes.append(
            f"{message} (a derived envelope, not the raw signal?); staged without the "
            f"{role.upper()}: the rules that need it are marked not evaluable"
        )
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
        filtered[name] = preprocess_channel(signals[name], rates[name], role, line_freq)
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
) -> tuple[Recording, list[str]]:
    """Read and preprocess the named channels of an EDF (:func:`preprocessed_recording`);
    returns the Recording and the notes on channels left out (:func:`usable_roles`)."""
    path = Path(path)
    edf = open_edf(path)
    names = {r: n for r, n in (("eeg", eeg), ("eog", eog), ("emg", emg)) if n}
    _check_names(path, edf_labels(edf), names)
    signals, rates = read_channels(edf, list(dict.fromkeys(names.values())), path)
    kept, notes = usable_roles(rates, names, str(path))
    rec = preprocessed_recording(signals, rates, kept, path.stem, line_freq, progress)
    rec.source = str(path)
    return rec, notes


def cmd_stage(args: argparse.Namespace) -> int:
    from sleepvlm.rules.evidence import detect_all
    from sleepvlm.rules.stager import stage_detection, write_hypnogram

    steps = 1 + sum(bool(n) for n in (args.eog, args.emg)) + 2
    with tqdm(total=steps, desc="staging", unit="step", file=sys.stderr) as progress:
        try:
            rec, notes = load_for_staging(
                args.recording, args.eeg, args.eog, args.emg, args.line_freq, progress
            )
        except DataError as err:
            progress.close()
            print(f"error: {err}", file=sys.stderr)
            return 1
        for note in notes:
            progress.update()
            tqdm.write(f"note: {note}", file=sys.stderr)
        progress.set_description("detecting")
        try:
            detection = detect_all(rec)
        except DataError as err:
            progress.close()
            print(f"error: {err}", file=sys.stderr)
            return 1
        progress.update()
        progress.set_description("staging")
        staged = stage_detection(detection)
        write_hypnogram(staged, args.output)
        progress.update()
    counts = staged["stage"].value_counts().to_dict()
    summary = ", ".join(f"{s} {counts[s]}" for s in counts)
    print(f"{args.output}: {len(staged)} epochs ({summary})")
    if detection.not_evaluable:
        rules = [r for r in RULES if r in detection.not_evaluable]
        print(f"rules not evaluable: {', '.join(rules)}", file=sys.stderr)
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
    parser.add_argument("--eog", help="EOG channel label (optional)")
    parser.add_argument("--emg", help="chin EMG channel label (optional)")
    parser.add_argument(
        "--line-freq", type=float, help="mains frequency to notch (50 or 60 Hz; default: none)"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="CSV hypnogram to write")
    parser.set_defaults(func=cmd_stage)
    return parser
