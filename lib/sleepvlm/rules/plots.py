"""Figures of detector output: staged epochs with the events each detector found shaded on
the trace (the book draws them; nothing else imports matplotlib from here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sleepvlm.data.records import EPOCH_S, ROLES, Recording
from sleepvlm.rules.evidence import Detection, rule_event_kinds

#: Color of each detected event kind in the book's figures.
KIND_COLORS: dict[str, str] = {
    "alpha": "tab:orange",
    "spindle": "tab:green",
    "kcomplex": "tab:purple",
    "slow_wave": "tab:blue",
    "vertex": "tab:pink",
    "sawtooth": "tab:olive",
    "rem": "tab:red",
    "blink": "tab:brown",
    "sem": "tab:cyan",
    "arousal": "gold",
    "artifact": "black",
}


def plot_staged_epochs(
    recording: Recording,
    detection: Detection,
    staged: pd.DataFrame,
    role: str = "eeg",
    other: Sequence[str] | None = None,
    other_name: str = "other",
):
    """One row per staged epoch: the ``role`` channel of ``recording`` (the signal the
    detectors read), the events detected on it shaded by kind, and the epoch's stage with the
    rules that decided it; ``other`` adds another stager's label per epoch (``other_name``).
    Returns the figure."""
    import matplotlib.pyplot as plt  # only the book draws

    channel = recording.roles[role]
    x, fs = recording.signals[channel], recording.sfreq[channel]
    events = detection.events[detection.events["channel"] == channel]
    fig, axes = plt.subplots(
        len(staged), 1, figsize=(11, 0.75 * len(staged) + 1.0), sharex=True, sharey=True
    )
    axes = np.atleast_1d(axes)
    for k, (ax, row) in enumerate(zip(axes, staged.itertuples(index=False), strict=True)):
        start = float(row.onset)
        seg = x[int(round(start * fs)) : int(round((start + EPOCH_S) * fs))]
        ax.plot(np.arange(len(seg)) / fs, seg - np.median(seg), lw=0.4, color="0.2")
        # events overlapping the epoch, cut at its edges (alpha runs cross them)
        inside = events[
            (events["onset"] < start + EPOCH_S) & (events["onset"] + events["duration"] > start)
        ]
        for ev in inside.itertuples(index=False):
            ax.axvspan(
                max(ev.onset - start, 0.0),
                min(ev.onset - start + ev.duration, EPOCH_S),
                color=KIND_COLORS.get(ev.kind, "grey"),
                alpha=0.35,
                lw=0,
            )
        label = f"{row.epoch}: {row.stage}"
        if other is not None:
            label += f" ({other_name} {other[k]})"
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
        ax.text(1.0, 0.5, ", ".join(row.rules), transform=ax.transAxes, fontsize=7, va="center")
        ax.tick_params(labelsize=7)
    kinds = [k for k in KIND_COLORS if k in set(events["kind"])]
    handles = [plt.Rectangle((0, 0), 1, 1, color=KIND_COLORS[k], alpha=0.35) for k in kinds]
    if kinds:
        fig.legend(handles, kinds, loc="upper center", fontsize=7, ncol=len(kinds), frameon=False)
    axes[-1].set_xlim(0, EPOCH_S)
    axes[-1].set_xlabel(f"time in the epoch (s); {channel}, µV")
    fig.subplots_adjust(left=0.16, right=0.84, top=1 - 0.5 / fig.get_figheight(), hspace=0.1)
    return fig


def rule_example_epoch(
    rule_id: str, detection: Detection, staged: pd.DataFrame, rng: np.random.Generator
) -> int | None:
    """An epoch (not the first: the figure shows the one before) that the stager decided with
    ``rule_id``, else one where its criterion is met, drawn with ``rng``; None when there is
    none."""
    used = staged.loc[staged["rules"].map(lambda r: rule_id in r), "epoch"].to_numpy()
    met = detection.criteria.index[detection.criteria[rule_id].fillna(False).to_numpy(bool)]
    candidates = used if len(used) else met.to_numpy()
    candidates = candidates[candidates > 0]
    return int(rng.choice(candidates)) if len(candidates) else None


def plot_rule_example(
    rule_id: str,
    epoch: int,
    recording: Recording,
    detection: Detection,
    staged: pd.DataFrame,
    scored: pd.Series,
    extra: str = "",
):
    """``epoch`` and the one before it on every channel of ``recording``, the events that are
    ``rule_id``'s evidence shaded, titled with the scored stage (``scored``, by epoch) and the
    stager's stage and rules (``extra`` is added to the title). Returns the figure."""
    import matplotlib.pyplot as plt  # only the book draws

    start = float(detection.epochs.loc[epoch, "onset"]) - EPOCH_S
    stop = start + 2 * EPOCH_S
    events = detection.events
    events = events[
        events["kind"].isin(rule_event_kinds(rule_id))
        & (events["onset"] + events["duration"] > start)
        & (events["onset"] < stop)
    ]
    roles = [r for r in ROLES if r in recording.roles]
    fig, axes = plt.subplots(len(roles), 1, figsize=(11, 1.6 * len(roles) + 0.6), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, role in zip(axes, roles, strict=True):
        channel = recording.roles[role]
        fs = recording.sfreq[channel]
        x = recording.signals[channel][int(start * fs) : int(stop * fs)]
        ax.plot(np.arange(len(x)) / fs, x - np.median(x), lw=0.5, color="0.2")
        for ev in events[events["channel"] == channel].itertuples():
            ax.axvspan(
                ev.onset - start,
                ev.onset - start + ev.duration,
                alpha=0.3,
                color=KIND_COLORS.get(ev.kind, "grey"),
                lw=0,
            )
        ax.axvline(EPOCH_S, color="0.6", lw=1)
        ax.set_ylabel(f"{channel}\n(µV)", fontsize=8)
    axes[-1].set_xlabel("time (s) — previous epoch | example epoch")
    row = staged.set_index("epoch").loc[epoch]
    fig.suptitle(
        f"{rule_id}: epoch {epoch}, scored {scored[epoch]}, stager {row['stage']} "
        f"({', '.join(row['rules'])}){extra}",
        fontsize=9,
    )
    return fig
