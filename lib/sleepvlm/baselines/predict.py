"""Stage predictions of a trained baseline. DeepSleepNet scores each epoch from the window of
``seq_len`` consecutive epochs of its night centered on it (shifted inwards at the night's
edges), the way it was trained; AttnSleep scores each epoch alone."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.records import ROLES
from .models import BaselineConfig, BaselineError

#: Epochs (or windows) per forward pass at inference.
PREDICT_BATCH = 256


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device; asking for CUDA without a CUDA GPU is an error, not a
    silent fallback to the CPU, so that a timing or a run labelled "cuda" is one."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise BaselineError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
        raise BaselineError(
            f"device {str(device)!r} asked for, but torch {torch.__version__} ({build} build) "
            "sees no CUDA GPU; use device='cpu' or install a CUDA build of torch on a GPU machine"
        )
    return resolved


def _batched(model: nn.Module, inputs: torch.Tensor, device: torch.device, fn=None):
    fn = fn or model
    parts = [
        fn(inputs[i : i + PREDICT_BATCH].to(device)).cpu()
        for i in range(0, len(inputs), PREDICT_BATCH)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


def night_logits(
    model: nn.Module, config: BaselineConfig, x: np.ndarray, device: torch.device
) -> np.ndarray:
    """Logits (n, 5) of every epoch of one night, ``x`` (n, model channels, 3000) µV in time
    order (for AttnSleep, any epochs)."""
    model.eval()
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        if not config.sequence:
            return _batched(model, inputs, device).numpy()
        feats = _batched(model, inputs, device, model.features)
        n = len(feats)
        length = min(config.seq_len, n)
        starts = np.clip(np.arange(n) - length // 2, 0, n - length)
        windows = feats[torch.from_numpy(starts[:, None] + np.arange(length))]
        logits = _batched(model, windows, device, model.classify_sequences)
        return logits[torch.arange(n), torch.from_numpy(np.arange(n) - starts)].numpy()


def split_logits(
    model: nn.Module,
    config: BaselineConfig,
    x: np.ndarray,
    night: np.ndarray,
    positions: np.ndarray,
    device: torch.device,
) -> np.ndarray:
    """Logits of the epochs at ``positions`` of a split held as arrays (``night`` numbers the
    nights, epochs in time order). DeepSleepNet runs over the whole nights that hold them."""
    positions = np.asarray(positions)
    if not config.sequence:
        return night_logits(model, config, x[positions], device)
    out = np.empty((len(positions), 5), dtype=np.float32)
    for night_id in np.unique(night[positions]):
        span = np.flatnonzero(night == night_id)
        logits = night_logits(model, config, x[span[0] : span[-1] + 1], device)
        wanted = night[positions] == night_id
        out[wanted] = logits[positions[wanted] - span[0]]
    return out


def select_channels(config: BaselineConfig, epochs: np.ndarray) -> np.ndarray:
    """The model's channels of epochs in the store's layout (n, 3, 3000)."""
    if epochs.ndim != 3 or epochs.shape[1] != len(ROLES):
        raise BaselineError(
            f"epochs must be (n, {len(ROLES)}, samples) in the store's {ROLES} layout, got "
            f"{epochs.shape}"
        )
    return epochs[:, config.channel_index]
