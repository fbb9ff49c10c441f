"""The two supervised baselines of SleepVLM-Bench, written from their papers in plain torch:
DeepSleepNet (Supratak et al. 2017) and AttnSleep (Eldele et al. 2021). Both read 30-s epochs
at 100 Hz; ``width`` (first-layer filters, 64 in both papers) scales them down to train on a
laptop CPU. A layer table drawn from the modules themselves documents each architecture."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from ..data.records import ROLES, STAGES, DataError
from ..signal import EPOCH_SAMPLES, TARGET_SFREQ

MODELS = ("deepsleepnet", "attnsleep")
SELECTION_METRICS = ("kappa", "macro_f1")
#: Per-model settings on top of the config's defaults. DeepSleepNet's examples are windows of
#: ``seq_len`` epochs: 512 windows of 10 per pass (8 per batch) see 5120 epochs per pass.
MODEL_DEFAULTS: dict[str, dict] = {"deepsleepnet": {"samples_per_pass": 512, "batch_size": 8}}
#: AttnSleep's feed-forward width inside the encoder (the paper's d_ff).
FEED_FORWARD = 120


class BaselineError(DataError):
    """A baseline cannot be built, trained or loaded as asked; the message says what to change."""


@dataclass(frozen=True)
class BaselineConfig:
    """Everything that defines one trained baseline (it is part of the checkpoint's cache key).

    The papers' sizes are ``width=64`` (both), ``seq_len=25`` and ``lstm_hidden=512``
    (DeepSleepNet), ``afr_channels=30``, ``heads=5``, ``encoder_layers=2`` (AttnSleep).
    """

    model: str
    width: int = 8  # filters of the first convolution (64 in the papers); deeper layers 2x
    channels: tuple[str, ...] = ROLES  # input roles (the papers: EEG only), in ROLES order
    seq_len: int = 10  # DeepSleepNet: consecutive epochs of one night per training sequence
    lstm_hidden: int = 0  # DeepSleepNet: per direction; 0 means 8 x width (512 at width 64)
    afr_channels: int = 30  # AttnSleep: feature channels after recalibration (attention tokens)
    heads: int = 5  # AttnSleep: attention heads (must divide the 80 time steps of a token)
    encoder_layers: int = 2  # AttnSleep: temporal context encoder layers
    dropout: float = 0.5
    passes: int = 8  # training passes (deep-learning "epochs"), each of samples_per_pass draws
    # training examples (windows for DeepSleepNet) per pass; at half this (256 steps in all)
    # AttnSleep stopped short of learning wake on two of the three centers
    samples_per_pass: int = 4096
    batch_size: int = 64  # examples per mini-batch (windows for DeepSleepNet)
    lr: float = 1e-3
    weight_decay: float = 1e-3
    patience: int = 8  # passes without a better validation score before stopping (the step
    # size decays over all passes, so the book trains them all and keeps the best)
    select_by: str = "kappa"  # validation metric for model selection: kappa or macro_f1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        problems = []
        if self.model not in MODELS:
            problems.append(f"model {self.model!r} is not one of {MODELS}")
        if not self.channels or set(self.channels) - set(ROLES):
            problems.append(f"channels {self.channels} must be a non-empty subset of {ROLES}")
        if self.select_by not in SELECTION_METRICS:
            problems.append(f"select_by {self.select_by!r} is not one of {SELECTION_METRICS}")
        for name in ("width", "seq_len", "passes", "samples_per_pass", "batch_size", "heads"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if problems:
            raise BaselineError("invalid baseline config: " + "; ".join(problems))

    @classmethod
    def for_model(cls, model: str, **changes) -> BaselineConfig:
        """The book's settings for ``model`` (:data:`MODEL_DEFAULTS`), then ``changes``."""
        return cls(model=model, **{**MODEL_DEFAULTS.get(model, {}), **changes})

    @property
    def channel_index(self) -> list[int]:
        """Rows of the stored (3, 3000) epoch that the model reads, in ROLES order."""
        return [ROLES.index(r) for r in ROLES if r in self.channels]

    @property
    def sequence(self) -> bool:
        """Whether the model classifies sequences of epochs (DeepSleepNet) or single epochs."""
        return self.model == "deepsleepnet"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> BaselineConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise BaselineError(
                f"unknown config keys {sorted(unknown)}; the checkpoint was written by another "
                "version of sleepvlm.baselines: retrain it"
            )
        return cls(**values)


def _conv_block(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, act=None):
    return [
        nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm1d(c_out),
        act() if act else nn.ReLU(),
    ]


def _same(kernel: int, stride: int) -> int:
    """Padding that gives a strided convolution ceil(n / stride) outputs, like the "SAME"
    padding of the authors' TensorFlow code."""
    return (kernel - stride) // 2


class InputScale(nn.Module):
    """Divides each channel by its training-set standard deviation (µV), kept in the checkpoint
    so that a model applied to another center sees that center's amplitudes as they are."""

    def __init__(self, n_channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(n_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.scale[:, None]


class DeepSleepNet(nn.Module):
    """Supratak et al. 2017. Representation learning: two CNN branches over each epoch, small
    filters (Fs/2 = 0.5 s, stride Fs/16) for temporal detail and large filters (4·Fs = 4 s,
    stride Fs/2) for frequency content, concatenated. Sequence learning: a two-layer
    bidirectional LSTM over consecutive epochs, plus a fully connected shortcut from the CNN
    features added to its output (the residual connection). Input (batch, seq, channels, 3000),
    output logits (batch, seq, 5)."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        w, fs, c = config.width, int(TARGET_SFREQ), len(config.channels)
        hidden = config.lstm_hidden or 8 * w
        self.input_scale = InputScale(c)
        self.small = nn.Sequential(
            *_conv_block(c, w, fs // 2, stride=fs // 16, padding=_same(fs // 2, fs // 16)),
            nn.MaxPool1d(8, 8),
            nn.Dropout(config.dropout),
            *_conv_block(w, 2 * w, 8, padding=4),
            *_conv_block(2 * w, 2 * w, 8, padding=4),
            *_conv_block(2 * w, 2 * w, 8, padding=4),
            nn.MaxPool1d(4, 4),
            nn.Flatten(),
        )
        self.large = nn.Sequential(
            *_conv_block(c, w, 4 * fs, stride=fs // 2, padding=_same(4 * fs, fs // 2)),
            nn.MaxPool1d(4, 4),
            nn.Dropout(config.dropout),
            *_conv_block(w, 2 * w, 6, padding=3),
            *_conv_block(2 * w, 2 * w, 6, padding=3),
            *_conv_block(2 * w, 2 * w, 6, padding=3),
            nn.MaxPool1d(2, 2),
            nn.Flatten(),
        )
        n_features = _output_size(self.small, c) + _output_size(self.large, c)
        self.feature_dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            n_features,
            hidden,
            num_layers=2,
            batch_first=True,
            bidirectional=True,
            dropout=config.dropout,
        )
        self.shortcut = nn.Sequential(
            nn.Linear(n_features, 2 * hidden, bias=False), nn.BatchNorm1d(2 * hidden), nn.ReLU()
        )
        self.sequence_dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(2 * hidden, len(STAGES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """CNN features of single epochs: (n, channels, 3000) -> (n, features)."""
        x = self.input_scale(x)
        return self.feature_dropout(torch.cat([self.small(x), self.large(x)], dim=1))

    def classify_sequences(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits of sequences of CNN features: (batch, seq, features) -> (batch, seq, 5)."""
        batch, seq, n = feats.shape
        recurrent, _ = self.lstm(feats)
        shortcut = self.shortcut(feats.reshape(batch * seq, n)).reshape(batch, seq, -1)
        return self.classifier(self.sequence_dropout(recurrent + shortcut))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq = x.shape[:2]
        feats = self.features(x.reshape(batch * seq, *x.shape[2:]))
        return self.classify_sequences(feats.reshape(batch, seq, -1))


class SqueezeExcite(nn.Module):
    """Channel recalibration: global average over time, bottleneck, sigmoid gates per channel."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(channels, inner),
            nn.ReLU(),
            nn.Linear(inner, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None]


class AdaptiveFeatureRecalibration(nn.Module):
    """AttnSleep's AFR: a residual block of two 1x1 convolutions whose output is recalibrated
    by squeeze-and-excitation, projecting the CNN features to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_block(in_channels, out_channels, 1),
            nn.Conv1d(out_channels, out_channels, 1, bias=False),
            nn.BatchNorm1d(out_channels),
            SqueezeExcite(out_channels),
        )
        self.skip = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, 1, bias=False), nn.BatchNorm1d(out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class CausalConv1d(nn.Conv1d):
    """A convolution along time that sees only the present and the past (left padding)."""

    def __init__(self, channels: int, kernel: int = 7) -> None:
        super().__init__(channels, channels, kernel)
        self.left = kernel - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


class CausalAttention(nn.Module):
    """Multi-head self-attention among feature channels (tokens), each token the time course of
    one channel; keys and values come from causal convolutions along time (the queries arrive
    convolved already), which encode temporal position without a positional embedding."""

    def __init__(self, tokens: int, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.key = CausalConv1d(tokens)
        self.value = CausalConv1d(tokens)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        return x.reshape(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(query), self._split(self.key(x)), self._split(self.value(x))
        # Written out rather than F.scaled_dot_product_attention, whose CPU fallback spends
        # much of its time checking for fully masked rows, which cannot occur here.
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(query.shape))


class EncoderLayer(nn.Module):
    """One layer of the temporal context encoder: causal attention, then a position-wise
    feed-forward network, each a residual sublayer with layer normalisation before it."""

    def __init__(self, tokens: int, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.query = CausalConv1d(tokens)
        self.norm1 = nn.LayerNorm(dim)
        self.attention = CausalAttention(tokens, dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, FEED_FORWARD),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(FEED_FORWARD, dim),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.query(x)
        x = query + self.dropout(self.attention(self.norm1(query), self.norm1(x)))
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class AttnSleep(nn.Module):
    """Eldele et al. 2021. A multi-resolution CNN (a high-resolution branch with 0.5-s filters
    and a low-resolution branch with 4-s filters, GELU, joined along time), adaptive feature
    recalibration (a residual 1x1 block with squeeze-and-excitation), and a temporal context
    encoder: layers of multi-head attention with causal convolutions, then a classifier over
    the flattened output. Single epochs: (batch, channels, 3000) -> (batch, 5).

    As in the authors' code, the encoder's tokens are the ``afr_channels`` recalibrated feature
    channels and each token is that channel's time course (80 steps for a 30-s epoch at
    100 Hz), so ``heads`` must divide 80."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        w, fs, c = config.width, int(TARGET_SFREQ), len(config.channels)
        self.input_scale = InputScale(c)
        self.high = nn.Sequential(
            *_conv_block(c, w, fs // 2, stride=fs // 16, padding=fs // 4, act=nn.GELU),
            nn.MaxPool1d(8, 2, padding=4),
            nn.Dropout(config.dropout),
            *_conv_block(w, 2 * w, 8, padding=4, act=nn.GELU),
            *_conv_block(2 * w, 2 * w, 8, padding=4, act=nn.GELU),
            nn.MaxPool1d(4, 4, padding=2),
        )
        self.low = nn.Sequential(
            *_conv_block(c, w, 4 * fs, stride=fs // 2, padding=2 * fs, act=nn.GELU),
            nn.MaxPool1d(4, 2, padding=2),
            nn.Dropout(config.dropout),
            *_conv_block(w, 2 * w, 7, padding=3, act=nn.GELU),
            *_conv_block(2 * w, 2 * w, 7, padding=3, act=nn.GELU),
            nn.MaxPool1d(2, 2, padding=1),
        )
        self.feature_dropout = nn.Dropout(config.dropout)
        self.afr = AdaptiveFeatureRecalibration(2 * w, config.afr_channels)
        with torch.no_grad():
            steps = self._feature_map(torch.zeros(1, c, EPOCH_SAMPLES)).shape[-1]
        if steps % config.heads:
            raise BaselineError(
                f"heads={config.heads} does not divide the {steps} time steps each attention "
                "token holds; choose a divisor such as 5"
            )
        self.encoder = nn.Sequential(
            *(
                EncoderLayer(config.afr_channels, steps, config.heads, config.dropout)
                for _ in range(config.encoder_layers)
            )
        )
        self.encoder_norm = nn.LayerNorm(steps)
        self.classifier = nn.Linear(steps * config.afr_channels, len(STAGES))

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_scale(x)
        return self.feature_dropout(torch.cat([self.high(x), self.low(x)], dim=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.afr(self._feature_map(x))
        return self.classifier(self.encoder_norm(self.encoder(tokens)).flatten(1))


def _output_size(module: nn.Module, channels: int) -> int:
    was_training = module.training
    module.eval()
    with torch.no_grad():
        size = module(torch.zeros(1, channels, EPOCH_SAMPLES)).shape[-1]
    module.train(was_training)
    return size


def build_model(config: BaselineConfig) -> nn.Module:
    """A freshly initialised model of ``config.model``, seeded by ``config.seed``."""
    torch.manual_seed(config.seed)
    return DeepSleepNet(config) if config.model == "deepsleepnet" else AttnSleep(config)


def example_input(config: BaselineConfig, batch: int = 1) -> torch.Tensor:
    """A zero input of the shape the model takes (a sequence for DeepSleepNet)."""
    shape = (batch, len(config.channels), EPOCH_SAMPLES)
    if config.sequence:
        shape = (batch, config.seq_len, *shape[1:])
    return torch.zeros(shape)


def class_aware_weights(counts: np.ndarray, mu: tuple[float, ...] = (1.5, 2, 1.5, 1, 1.5)):
    """AttnSleep's class-aware loss weights: w_k = mu_k · max(1, log(mu_k · M / M_k)), mu in
    units of 1/K (the authors' factors for W, N1, N2, N3, REM: N1 weighted most), from the
    class counts M_k the loss sees."""
    counts = np.asarray(counts, dtype=float)
    k = len(counts)
    mu_k = np.asarray(mu, dtype=float) / k
    with np.errstate(divide="ignore"):
        score = np.log(mu_k * counts.sum() / np.maximum(counts, 1))
    return torch.tensor(mu_k * np.maximum(1.0, score), dtype=torch.float32)


def _shape(output: object) -> str:
    if isinstance(output, tuple):
        output = output[0]
    return "×".join(str(s) for s in output.shape[1:]) if torch.is_tensor(output) else ""


def layer_table(model: nn.Module, config: BaselineConfig, depth: int = 2) -> pd.DataFrame:
    """One row per module down to ``depth`` levels (deeper modules are summed into their
    parent): module name, type, output shape for one example (batch dimension left out) and
    trainable parameters, in execution order."""
    rows: dict[str, dict] = {}
    hooks = []
    for name, module in model.named_modules():
        level = name.count(".") + 1 if name else 0
        is_leaf_here = level == depth or (0 < level < depth and not list(module.children()))
        if not is_leaf_here:
            continue

        def record(mod, _inputs, output, name=name):
            rows.setdefault(
                name,
                {
                    "module": name,
                    "type": type(mod).__name__,
                    "output": _shape(output),
                    "parameters": sum(p.numel() for p in mod.parameters() if p.requires_grad),
                },
            )

        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(config))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    table = pd.DataFrame(list(rows.values()))
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    table.attrs["total_parameters"] = total
    return table


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
