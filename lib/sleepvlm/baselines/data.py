"""Training data for the baselines: one split's epochs read from the epoch store in contiguous
chunks (only the channels the model uses), windows of consecutive epochs of one night, and a
sampler that makes every mini-batch class-balanced."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from ..data.records import STAGES
from ..prepare import PreparedDataset
from ..signal import EPOCH_SAMPLES
from .models import BaselineConfig, BaselineError

#: Rows per store read: contiguous reads decompress each HDF5 chunk once.
READ_CHUNK = 1024
STAGE_INDEX = {s: i for i, s in enumerate(STAGES)}


@dataclass
class SplitData:
    """The epochs of one split, in store order (night by night, epochs in time order).

    ``x`` (n, channels, 3000) µV holds the configured channels only, in half precision: its
    rounding (0.05 %) lies far below the signals' noise and it halves the memory; ``rows`` are the
    store rows (the prepared manifest's index), ``night`` numbers the nights, ``y`` the stages.
    """

    dataset: str
    split: str
    x: np.ndarray
    y: np.ndarray
    rows: np.ndarray
    night: np.ndarray
    subjects: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def night_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """First row and one-past-last row (positions in this split) of each epoch's night."""
        change = np.flatnonzero(np.diff(self.night)) + 1
        starts = np.concatenate([[0], change])
        stops = np.concatenate([change, [len(self.night)]])
        per_night = np.repeat(np.arange(len(starts)), stops - starts)
        return starts[per_night], stops[per_night]


def ordered_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """``manifest`` sorted night by night and by epoch, so neighbours in time are neighbours
    in the array (gaps left by excluded epochs are bridged: the epochs on both sides of a
    left-out movement epoch become neighbours)."""
    return manifest.sort_values(["subject", "night", "epoch"], kind="stable")


def read_rows(
    prepared: PreparedDataset, rows: np.ndarray, channels: list[int], dtype=np.float32
) -> np.ndarray:
    """Store rows (any order) with only ``channels`` kept, read in sorted contiguous chunks."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), len(channels), EPOCH_SAMPLES), dtype)
    order = np.argsort(rows, kind="stable")
    for start in range(0, len(rows), READ_CHUNK):
        part = order[start : start + READ_CHUNK]
        out[part] = prepared.store.read(rows[part])[:, channels]
    return out


def load_split(prepared: PreparedDataset, split: str, config: BaselineConfig) -> SplitData:
    """Every epoch of one split (subject-level: ``prepared.manifest['split']``), configured
    channels only, in half precision: the training split of a full simulated center is about
    30 000 epochs, 180 MB per channel, where the whole three-channel store holds 1.3 GB."""
    manifest = prepared.manifest
    if "split" not in manifest:
        raise BaselineError(f"{prepared.dataset}: the manifest has no split column")
    chosen = ordered_rows(manifest[manifest["split"] == split])
    if chosen.empty:
        raise BaselineError(
            f"{prepared.dataset}: no epochs in the {split!r} split; splits present: "
            f"{sorted(manifest['split'].unique())}"
        )
    night_keys = chosen["subject"].astype(str) + "/" + chosen["night"].astype(str)
    return SplitData(
        dataset=prepared.dataset,
        split=split,
        x=read_rows(prepared, chosen.index.to_numpy(), config.channel_index, np.float16),
        y=chosen["stage"].map(STAGE_INDEX).to_numpy(np.int64),
        rows=chosen.index.to_numpy(np.int64),
        night=pd.factorize(night_keys)[0],
        subjects=chosen["subject"].astype(str).to_numpy(),
    )


def window_starts(data: SplitData, anchors: np.ndarray, length: int) -> np.ndarray:
    """First position of the ``length``-epoch window around each anchor, inside its night:
    centered on the anchor, shifted inwards at the night's edges (a night shorter than the
    window gives the whole night)."""
    first, stop = data.night_bounds()
    anchors = np.asarray(anchors)
    starts = anchors - length // 2
    return np.clip(starts, first[anchors], np.maximum(first[anchors], stop[anchors] - length))


class WindowDataset(Dataset):
    """Index-based dataset: item ``i`` is the window of ``seq_len`` consecutive epochs around
    anchor ``i`` (DeepSleepNet) or the single epoch ``i`` (AttnSleep), with its stages."""

    def __init__(self, data: SplitData, config: BaselineConfig) -> None:
        self.data = data
        self.length = config.seq_len if config.sequence else 1
        self.sequence = config.sequence
        if self.sequence:
            nights, sizes = np.unique(data.night, return_counts=True)
            if sizes.max() < self.length:
                raise BaselineError(
                    f"{data.dataset}/{data.split}: the longest night holds {sizes.max()} "
                    f"epochs, fewer than seq_len={self.length}; lower seq_len"
                )
            self.usable = sizes[data.night] >= self.length
        else:
            self.usable = np.ones(len(data), dtype=bool)

    def __len__(self) -> int:
        return len(self.data)

    def window_rows(self, anchors: np.ndarray) -> np.ndarray:
        """Positions in the split of each anchor's window: (n, seq_len), or (n,) for epochs."""
        anchors = np.asarray(anchors)
        if not self.sequence:
            return anchors
        return window_starts(self.data, anchors, self.length)[:, None] + np.arange(self.length)

    def __getitems__(self, anchors: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.window_rows(np.asarray(anchors))
        x = torch.from_numpy(self.data.x[rows].astype(np.float32))
        return x, torch.from_numpy(self.data.y[rows])

    def __getitem__(self, anchor: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([anchor])
        return x[0], y[0]


class BalancedBatchSampler(Sampler[list[int]]):
    """Mini-batches with the same number of anchors of every stage (the remainder of
    ``batch_size`` / 5 goes to stages drawn at random). Each stage's anchors are cycled through
    seeded permutations, so rare stages repeat and common ones are subsampled; ``batches`` per
    pass. The anchor's stage is balanced; a DeepSleepNet window's other epochs are whatever
    surrounds it."""

    def __init__(
        self, labels: np.ndarray, usable: np.ndarray, batch_size: int, batches: int, seed: int
    ) -> None:
        self.pools = [np.flatnonzero((labels == k) & usable) for k in range(len(STAGES))]
        missing = [STAGES[k] for k, pool in enumerate(self.pools) if len(pool) == 0]
        if missing:
            raise BaselineError(
                f"no training epochs of stage(s) {missing}: a class-balanced batch needs every "
                "stage; use a larger cohort"
            )
        self.batch_size = batch_size
        self.batches = batches
        self.rng = np.random.default_rng(seed)
        self._queues: list[list[int]] = [[] for _ in STAGES]

    def _take(self, k: int, n: int) -> list[int]:
        queue = self._queues[k]
        while len(queue) < n:
            queue.extend(self.rng.permutation(self.pools[k]).tolist())
        taken, self._queues[k] = queue[:n], queue[n:]
        return taken

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        k = len(STAGES)
        for _ in range(self.batches):
            per_stage = np.full(k, self.batch_size // k)
            per_stage[self.rng.choice(k, self.batch_size % k, replace=False)] += 1
            batch = [i for s in range(k) for i in self._take(s, int(per_stage[s]))]
            yield self.rng.permutation(batch).tolist()
