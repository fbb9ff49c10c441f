"""Figures of detector output: staged epochs with the events each detector found shaded on
the trace (the book draws them; nothing else imports matplotlib from here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sleepvlm.data.records import EPOCH_S, Recording
from sleepvlm.rules.evidence import Detection

#: Colour of each detected event kind in the book's figures.
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
