"""Epochs as sequences of numbers or symbols, for text LLMs and for the time-series LLM ChatTS.

One preprocessed epoch (3 x 3000 samples, µV at 100 Hz, EEG/EOG/EMG) becomes, per channel:

* **raw**: the signal decimated to ``rate`` Hz (anti-aliased by the polyphase FIR of
  :func:`scipy.signal.resample_poly`, never plain slicing) and rounded to ``decimals`` µV
  decimals;
* **symbolic**: a SAX-like string. The epoch is averaged over segments (piecewise aggregate
  approximation, PAA) to ``rate`` Hz, i.e. ``30 * rate`` segments, and each segment mean is
  mapped to one of ``alphabet`` letters by **fixed µV bins per role**. Per-record (or
  per-epoch) z-normalisation, as in classic SAX, is deliberately not used: it would erase the
  absolute amplitude that the AASM rules read (a slow wave must reach 75 µV peak to peak).
  ``bins="uniform"`` splits ``±SYMBOL_RANGE_UV[role]`` into equal bins (values beyond are
  clipped to the outer bins); ``bins="gaussian"`` uses the SAX breakpoints of a normal
  distribution scaled by the fixed ``SYMBOL_SCALE_UV[role]`` (finer bins near zero, open
  outer bins). Each symbol decodes to its bin center (uniform) or to the normal's conditional
  mean in the bin (gaussian).

Three output formats (:data:`FORMATS`): ``"chatts"`` (prompt text with one ``<ts><ts/>`` per
channel, arrays passed alongside as ChatTS expects), ``"text"`` (numbers inline for general
LLMs) and ``"symbolic"``. Token counts are **rule-based estimates** (see :func:`count_tokens`);
no tokenizer is downloaded. :func:`information_kept` measures what each encoding loses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import signal as sps
from scipy import stats

from sleepvlm.data.records import EPOCH_S, ROLES, DataError
from sleepvlm.rules.table import BANDS as RULE_BANDS
from sleepvlm.signal import EPOCH_SAMPLES, FLAT_PTP_UV, TARGET_SFREQ

#: Rates (Hz) offered by default, highest first; each divides :data:`TARGET_SFREQ`.
RATES: tuple[int, ...] = (100, 50, 25, 10)
#: Decimal places of µV offered by default for raw sequences, most precise first.
DECIMALS: tuple[int, ...] = (1, 0)
#: Output formats of :func:`encode_epoch`.
FORMATS: tuple[str, ...] = ("chatts", "text", "symbolic")
#: Symbol alphabet, lowest value first; its length bounds the alphabet size.
SYMBOLS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Half-range (µV) of the uniform symbol bins per role. Chosen from the preprocessed simulated
#: cohort: 99.9 % of EEG samples lie within ±142 µV (N3 slow waves reach ±150), EOG ±220 µV
#: (eye movements), chin EMG ±36 µV.
SYMBOL_RANGE_UV: dict[str, float] = {"eeg": 200.0, "eog": 300.0, "emg": 50.0}
#: Fixed µV scale of the gaussian symbol bins per role: about one overall standard deviation
#: of the role in the preprocessed cohort (EEG 25, EOG 23, EMG 4 µV), never fitted per record.
SYMBOL_SCALE_UV: dict[str, float] = {"eeg": 25.0, "eog": 25.0, "emg": 5.0}
#: Bin kinds of the symbolic encoding.
BIN_KINDS: tuple[str, ...] = ("uniform", "gaussian")
#: Frequency bands (Hz) whose power :func:`information_kept` compares: the rule table's.
AASM_BANDS: dict[str, tuple[float, float]] = RULE_BANDS
#: Tokenizer families of :func:`count_tokens` and the models that use them.
TOKENIZER_FAMILIES: dict[str, str] = {
    "single_digit": "Qwen2 / Qwen2.5 (ChatTS-14B's base, Qwen2.5-VL): one token per digit",
    "three_digit": "GPT-4o o200k, cl100k, Llama 3: digits grouped by up to three",
}
#: Time-series tokens of ChatTS: one per patch of this many samples (ChatTS-14B's ``ts``
#: config; the processor pads the last patch). ChatTS recommends 64-1024 samples per series.
CHATTS_PATCH_SIZE = 16
CHATTS_MAX_LENGTH = 1024
#: A channel whose samples sit at its own max or min this often is flagged as clipped.
CLIP_FRACTION = 0.01
#: Names of the channels in prompts, in :data:`ROLES` order.
CHANNEL_NAMES: dict[str, str] = {"eeg": "EEG", "eog": "EOG", "emg": "EMG"}


class SequenceError(DataError):
    """An epoch or an encoding setting that cannot be turned into a sequence."""


class BudgetError(SequenceError):
    """No candidate encoding fits the token budget."""


@dataclass(frozen=True)
class SequenceConfig:
    """How one epoch becomes a sequence.

    ``kind`` is ``"raw"`` (numbers at ``rate`` Hz with ``decimals`` µV decimals) or
    ``"symbolic"`` (PAA to ``rate`` Hz, ``alphabet`` letters over fixed µV ``bins``).
    """

    kind: str = "raw"
    rate: float = 25
    decimals: int = 0
    alphabet: int = 16
    bins: str = "uniform"

    def __post_init__(self) -> None:
        if self.kind not in ("raw", "symbolic"):
            raise SequenceError(f"encoding kind {self.kind!r} unknown; use 'raw' or 'symbolic'")
        decimation_factor(self.rate)
        if self.kind == "raw" and not 0 <= self.decimals <= 3:
            raise SequenceError(f"decimals must be 0-3 (µV precision), got {self.decimals}")
        if self.kind == "symbolic":
            if not 2 <= self.alphabet <= len(SYMBOLS):
                raise SequenceError(
                    f"alphabet size must be 2-{len(SYMBOLS)} (letters a-z, A-Z), "
                    f"got {self.alphabet}"
                )
            if self.bins not in BIN_KINDS:
                raise SequenceError(f"bins {self.bins!r} unknown; use {' or '.join(BIN_KINDS)}")

    @property
    def length(self) -> int:
        """Values (or symbols) per channel per epoch."""
        return int(round(EPOCH_S * self.rate))

    @property
    def name(self) -> str:
        if self.kind == "raw":
            return f"raw {self.rate:g} Hz, {self.decimals} dec"
        return f"symbolic {self.rate:g} Hz, {self.alphabet} {self.bins}"


def decimation_factor(rate: float) -> int:
    """Integer ``q`` with ``TARGET_SFREQ / q == rate``; PAA segments need whole samples."""
    q = TARGET_SFREQ / rate if rate > 0 else 0.0
    if q < 1 or abs(q - round(q)) > 1e-9:
        raise SequenceError(
            f"rate {rate} Hz must divide {TARGET_SFREQ} Hz into a whole factor "
            f"(e.g. {', '.join(map(str, RATES))})"
        )
    return int(round(q))


def raw_configs(rates=RATES, decimals=DECIMALS) -> list[SequenceConfig]:
    """Raw encodings in order of preference: highest rate first, then most decimals.

    Rate before precision: a decimal of µV lies below the amplifier noise floor, while a
    higher rate keeps spindles (sigma) and muscle (beta) that a lower one removes.
    """
    rates = sorted(rates, reverse=True)
    return [SequenceConfig("raw", r, d) for r in rates for d in sorted(decimals, reverse=True)]


# --- input checks -------------------------------------------------------------------------


def check_epoch(epoch: np.ndarray, sfreq: float = TARGET_SFREQ) -> np.ndarray:
    """``epoch`` as float64 (3, 3000) µV, or a :class:`SequenceError` saying what is wrong."""
    x = np.asarray(epoch, dtype=np.float64)
    if sfreq != TARGET_SFREQ:
        raise SequenceError(
            f"epoch sampled at {sfreq} Hz; sequences start from {TARGET_SFREQ} Hz epochs "
            "(run sleepvlm.signal.epoch_recording first)"
        )
    if x.ndim != 2 or x.shape[0] != len(ROLES):
        raise SequenceError(
            f"epoch has shape {x.shape}; expected ({len(ROLES)}, {EPOCH_SAMPLES}) with channels "
            f"{', '.join(ROLES)} in that order"
        )
    if x.shape[1] != EPOCH_SAMPLES:
        raise SequenceError(
            f"epoch has {x.shape[1]} samples per channel, not {EPOCH_SAMPLES} "
            f"(30 s at {TARGET_SFREQ} Hz); wrong sampling rate or epoch length"
        )
    bad = [ROLES[i] for i in range(len(ROLES)) if not np.isfinite(x[i]).all()]
    if bad:
        raise SequenceError(
            f"epoch has NaN/inf samples on {', '.join(r.upper() for r in bad)}; such epochs "
            "are excluded by preprocessing and cannot be encoded"
        )
    return x


def channel_flags(x: np.ndarray) -> list[str]:
    """Quality flags of one channel: ``flat`` (peak-to-peak below ``FLAT_PTP_UV``) and
    ``clipped`` (a held extreme: many samples exactly at the channel's max or min)."""
    flags = []
    if np.ptp(x) < FLAT_PTP_UV:
        flags.append("flat")
    elif np.mean((x == x.max()) | (x == x.min())) >= CLIP_FRACTION:
        flags.append("clipped")
    return flags


# --- encode and decode one channel --------------------------------------------------------


def downsample(x: np.ndarray, rate: float) -> np.ndarray:
    """Anti-aliased decimation of 100 Hz samples (last axis) to ``rate`` Hz."""
    q = decimation_factor(rate)
    if q == 1:
        return np.asarray(x, dtype=np.float64)
    # 'line' padding: the epoch is cut from a longer night, so its ends are not at zero.
    return sps.resample_poly(x, 1, q, axis=-1, padtype="line")


def upsample(y: np.ndarray, rate: float) -> np.ndarray:
    """Band-limited interpolation of ``rate`` Hz samples back to 100 Hz (to compare)."""
    q = decimation_factor(rate)
    return (
        np.asarray(y, dtype=np.float64)
        if q == 1
        else sps.resample_poly(y, q, 1, axis=-1, padtype="line")
    )


def quantize(x: np.ndarray, decimals: int) -> np.ndarray:
    """µV rounded to ``decimals`` places, with -0 made 0 so it prints without a sign."""
    return np.round(x, decimals) + 0.0


def paa(x: np.ndarray, length: int) -> np.ndarray:
    """Piecewise aggregate approximation: means of ``length`` equal segments (last axis)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] % length:
        raise SequenceError(f"{x.shape[-1]} samples do not split into {length} equal segments")
    return x.reshape(*x.shape[:-1], length, x.shape[-1] // length).mean(axis=-1)


def breakpoints(role: str, alphabet: int, bins: str = "uniform") -> np.ndarray:
    """The ``alphabet - 1`` fixed µV boundaries between symbols of ``role``."""
    if bins == "uniform":
        r = SYMBOL_RANGE_UV[role]
        return np.linspace(-r, r, alphabet + 1)[1:-1]
    return stats.norm.ppf(np.arange(1, alphabet) / alphabet) * SYMBOL_SCALE_UV[role]


def symbol_levels(role: str, alphabet: int, bins: str = "uniform") -> np.ndarray:
    """µV value each symbol decodes to: bin center, or the normal's mean within the bin."""
    if bins == "uniform":
        r = SYMBOL_RANGE_UV[role]
        edges = np.linspace(-r, r, alphabet + 1)
        return (edges[:-1] + edges[1:]) / 2
    z = stats.norm.ppf(np.arange(alphabet + 1) / alphabet)
    mass = np.diff(stats.norm.cdf(z))
    return (stats.norm.pdf(z[:-1]) - stats.norm.pdf(z[1:])) / mass * SYMBOL_SCALE_UV[role]


def symbolize(values: np.ndarray, role: str, alphabet: int, bins: str = "uniform") -> np.ndarray:
    """Symbol index (0 = lowest) of each µV value."""
    return np.searchsorted(breakpoints(role, alphabet, bins), values, side="right")


def encode_channel(x: np.ndarray, role: str, config: SequenceConfig) -> np.ndarray:
    """One 100 Hz channel as the numbers its sequence carries: µV values (raw) or symbol
    indices (symbolic), ``config.length`` of them."""
    if config.kind == "raw":
        return quantize(downsample(x, config.rate), config.decimals)
    segments = paa(x, config.length)
    return symbolize(segments, role, config.alphabet, config.bins)


def decode_channel(values: np.ndarray, role: str, config: SequenceConfig) -> np.ndarray:
    """µV at the sequence's own rate from what :func:`encode_channel` returned."""
    if config.kind == "raw":
        return np.asarray(values, dtype=np.float64)
    return symbol_levels(role, config.alphabet, config.bins)[np.asarray(values, dtype=int)]


def reconstruct_channel(x: np.ndarray, role: str, config: SequenceConfig) -> np.ndarray:
    """Encode then decode one channel, back at 100 Hz: raw sequences are interpolated
    band-limited, symbols held over their segment (the usual SAX reconstruction)."""
    y = decode_channel(encode_channel(x, role, config), role, config)
    if config.kind == "raw":
        return upsample(y, config.rate)
    return np.repeat(y, decimation_factor(config.rate))


# --- text -----------------------------------------------------------------------------------


def format_numbers(values: np.ndarray, decimals: int) -> str:
    """Comma-separated numbers without spaces (each space would cost a token)."""
    if decimals == 0:
        return ",".join(map(str, np.asarray(values).astype(np.int64)))
    return ",".join(f"{v:.{decimals}f}" for v in values)


def format_symbols(indices: np.ndarray) -> str:
    """Space-separated letters: a space plus one letter is one token in both families,
    while unseparated letters would be merged into unpredictable BPE pieces."""
    return " ".join(SYMBOLS[i] for i in indices)


def symbol_legend(role: str, config: SequenceConfig) -> str:
    """What the letters of ``role`` mean, short enough to repeat in every prompt."""
    levels = symbol_levels(role, config.alphabet, config.bins)
    last = SYMBOLS[config.alphabet - 1]
    if config.bins == "uniform":
        step = levels[1] - levels[0]
        return f"a={levels[0]:g} to {last}={levels[-1]:g} µV in steps of {step:g} µV"
    return "a.." + last + " = " + ",".join(f"{v:.0f}" for v in levels) + " µV"


def channel_header(role: str, config: SequenceConfig, fmt: str) -> str:
    name = CHANNEL_NAMES[role]
    if fmt == "symbolic":
        return (
            f"{name} ({config.length} symbols, {config.rate:g} per s, "
            f"{symbol_legend(role, config)})"
        )
    return f"{name} (µV, {config.rate:g} Hz, {config.length} samples)"


def chatts_line(role: str, config: SequenceConfig) -> str:
    """One channel in ChatTS's multivariate style: name, rate, unit, length, placeholder."""
    return (
        f"{CHANNEL_NAMES[role]}, sampled at {config.rate:g} Hz in µV, "
        f"is of length {config.length}: <ts><ts/>"
    )


def chatts_text(config: SequenceConfig) -> str:
    lines = "; ".join(chatts_line(role, config) for role in ROLES)
    return f"There are {len(ROLES)} time series from one 30-s epoch of sleep: {lines}."


def chatts_value_prefix(values: np.ndarray) -> str:
    """The value-preserving text ChatTS's processor puts before each series (its ``sp``
    encoding: offset = -mean, scaling = max |x - mean| / 3 when that exceeds 3)."""
    centered = values - values.mean()
    peak = np.max(np.abs(centered))
    scale = peak / 3.0 if peak >= 3.0 else 1.0
    return f"[Value Offset: {-values.mean():.4f}|Value Scaling: {scale:.4f}]"


_HEADER = re.compile(r"^(EEG|EOG|EMG) \((.*?)\): (.*)$")


def decode_text(text: str, config: SequenceConfig) -> dict[str, np.ndarray]:
    """Channel values (µV, at ``config.rate``) read back from a ``text`` or ``symbolic`` prompt."""
    out = {}
    names = {v: k for k, v in CHANNEL_NAMES.items()}
    for line in text.splitlines():
        match = _HEADER.match(line)
        if not match:
            continue
        role, body = names[match.group(1)], match.group(3)
        if config.kind == "raw":
            out[role] = np.array([float(v) for v in body.split(",")])
        else:
            indices = np.array([SYMBOLS.index(s) for s in body.split(" ")])
            out[role] = decode_channel(indices, role, config)
    if set(out) != set(ROLES):
        raise SequenceError(f"text holds channels {sorted(out)}, expected {', '.join(ROLES)}")
    return out


# --- token estimates -------------------------------------------------------------------------

# The GPT-2-style pre-tokenizer pattern shared by Qwen2, cl100k/o200k and Llama 3, written with
# the stdlib re (letters = [^\W\d_]): digit runs, words with one leading non-letter character,
# punctuation runs with an optional leading space, newlines, other whitespace. Non-capturing, so
# findall counts pre-tokens in C (sequence prompts hold thousands of them).
_PRETOKEN = re.compile(
    r"\d+"
    r"|(?:[^\w\r\n]|_)?[^\W\d_]+"
    r"| ?(?:[^\w\s]|_)+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+"
)
_DIGIT_RUN = re.compile(r"\d+")


def token_counts(text: str) -> dict[str, int]:
    """Rule-based **estimates** of the tokens ``text`` costs in each tokenizer family.

    No tokenizer is downloaded here; the rules follow the pre-tokenizers of the two common
    families (:data:`TOKENIZER_FAMILIES`) and are exact for digits, separators and signs:

    * ``single_digit`` (Qwen2/Qwen2.5, hence ChatTS-14B and Qwen2.5-VL): every digit is its own
      token;
    * ``three_digit`` (GPT-4o's o200k, cl100k, Llama 3): a run of ``n`` digits costs
      ``ceil(n / 3)`` tokens (split from the left);
    * in both, a run of punctuation (``,`` ``-`` ``.`` ``,-``) is one token, a space or newline
      run one token, and a word with at most one leading space or bracket is counted as one
      token. The last rule is approximate (long or non-ASCII words can take several), but words
      occur only in the short channel headers.
    """
    # A maximal digit run is always one pre-token (no other alternative consumes digits).
    runs = _DIGIT_RUN.findall(text)
    others = len(_PRETOKEN.findall(text)) - len(runs)
    return {
        "single_digit": others + sum(map(len, runs)),
        "three_digit": others + sum((len(r) + 2) // 3 for r in runs),
    }


def count_tokens(text: str, family: str = "single_digit") -> int:
    """:func:`token_counts` of ``text`` in one tokenizer ``family``."""
    if family not in TOKENIZER_FAMILIES:
        raise SequenceError(
            f"tokenizer family {family!r} unknown; use {', '.join(TOKENIZER_FAMILIES)}"
        )
    return token_counts(text)[family]


def chatts_series_tokens(length: int) -> int:
    """Time-series tokens ChatTS spends on one series of ``length`` samples (one per patch)."""
    return math.ceil(length / CHATTS_PATCH_SIZE)


# --- whole epochs ------------------------------------------------------------------------------


@dataclass
class EncodedEpoch:
    """One epoch ready for a model: ``text`` to send, ``timeseries`` (one float list per
    channel in :data:`ROLES` order: the values the text carries, or for ``chatts`` the arrays
    to pass alongside the ``<ts><ts/>`` placeholders), and what the encoding costs.

    ``tokens`` holds rule-based estimates (:func:`count_tokens`) per tokenizer family; for
    ``chatts`` the count adds ChatTS's value prefixes (text) and one token per patch.
    ``flags`` lists quality flags per role (``flat``, ``clipped``, ``out_of_range`` for
    symbols past the uniform range); ``notes`` says what a model may not expect.
    """

    text: str
    timeseries: list[list[float]]
    format: str
    config: SequenceConfig
    tokens: dict[str, int]
    flags: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [len(ts) for ts in self.timeseries]

    def chatts_inputs(self) -> dict:
        """The vLLM request body ChatTS's registration patch expects (chat template not
        applied): ``{"prompt": text, "multi_modal_data": {"timeseries": [...]}}``."""
        if self.format != "chatts":
            raise SequenceError(f"a {self.format!r} encoding has no ChatTS arrays; use 'chatts'")
        return {"prompt": self.text, "multi_modal_data": {"timeseries": self.timeseries}}


def natural_format(config: SequenceConfig) -> str:
    """``symbolic`` for symbolic encodings, ``text`` for raw ones."""
    return "symbolic" if config.kind == "symbolic" else "text"


def _flags(x: np.ndarray, config: SequenceConfig) -> dict[str, list[str]]:
    flags = {}
    for i, role in enumerate(ROLES):
        found = channel_flags(x[i])
        if config.kind == "symbolic" and config.bins == "uniform":
            if np.any(np.abs(paa(x[i], config.length)) > SYMBOL_RANGE_UV[role]):
                found.append("out_of_range")
        if found:
            flags[role] = found
    return flags


def _token_estimates(text: str, values: list[np.ndarray], fmt: str) -> dict[str, int]:
    if fmt != "chatts":
        return token_counts(text)
    prefixes = "".join(chatts_value_prefix(v) for v in values)
    patches = sum(chatts_series_tokens(len(v)) for v in values)
    # ChatTS is built on Qwen2.5, so only the single-digit family applies.
    return {"single_digit": count_tokens(text + prefixes, "single_digit") + patches}


def encode_epoch(
    epoch: np.ndarray,
    config: SequenceConfig = SequenceConfig(),
    fmt: str | None = None,
    sfreq: float = TARGET_SFREQ,
) -> EncodedEpoch:
    """Encode one (3, 3000) µV epoch in format ``fmt`` (:data:`FORMATS`; default
    :func:`natural_format`). ``text`` and ``chatts`` take raw configs (ChatTS reads numbers,
    not letters), ``symbolic`` symbolic ones. ``sfreq`` is the epoch's rate, checked.
    """
    fmt = fmt or natural_format(config)
    if fmt not in FORMATS:
        raise SequenceError(f"format {fmt!r} unknown; use {', '.join(FORMATS)}")
    if (fmt == "symbolic") != (config.kind == "symbolic"):
        raise SequenceError(
            f"format {fmt!r} does not take a {config.kind} encoding; symbolic encodings go "
            "with the 'symbolic' format, raw ones with 'text' or 'chatts'"
        )
    x = check_epoch(epoch, sfreq)
    encoded = [encode_channel(x[i], role, config) for i, role in enumerate(ROLES)]
    values = [decode_channel(e, role, config) for e, role in zip(encoded, ROLES, strict=True)]
    if fmt == "chatts":
        text = chatts_text(config)
    else:
        bodies = [
            format_symbols(e) if fmt == "symbolic" else format_numbers(e, config.decimals)
            for e in encoded
        ]
        text = "\n".join(
            f"{channel_header(role, config, fmt)}: {body}"
            for role, body in zip(ROLES, bodies, strict=True)
        )
    notes = []
    if fmt == "chatts" and config.length > CHATTS_MAX_LENGTH:
        notes.append(
            f"{config.length} samples per series exceed ChatTS's recommended {CHATTS_MAX_LENGTH}"
        )
    return EncodedEpoch(
        text=text,
        timeseries=[v.tolist() for v in values],
        format=fmt,
        config=config,
        tokens=_token_estimates(text, values, fmt),
        flags=_flags(x, config),
        notes=notes,
    )


# --- budgets -----------------------------------------------------------------------------------


def token_table(
    epochs: np.ndarray, configs: list[SequenceConfig], fmt: str | None = None
) -> pd.DataFrame:
    """Length and estimated token cost per epoch of each config (rows) over ``epochs``
    (n, 3, 3000), in ``fmt`` (default: each config's :func:`natural_format`): samples per
    channel, characters, and mean / max tokens per tokenizer family."""
    rows = []
    for config in configs:
        encoded = [encode_epoch(e, config, fmt) for e in epochs]
        row = {
            "encoding": config.name,
            "samples_per_channel": config.length,
            "characters": float(np.mean([len(e.text) for e in encoded])),
        }
        for family in encoded[0].tokens:
            counts = [e.tokens[family] for e in encoded]
            row[f"tokens_{family}"] = float(np.mean(counts))
            row[f"tokens_{family}_max"] = int(np.max(counts))
        rows.append(row)
    return pd.DataFrame(rows).set_index("encoding")


def choose_config(
    epochs: np.ndarray,
    budget: int,
    family: str = "single_digit",
    candidates: list[SequenceConfig] | None = None,
    fmt: str | None = None,
) -> SequenceConfig:
    """The first of ``candidates`` (default :func:`raw_configs`: highest rate, then precision)
    whose most expensive epoch in ``epochs`` fits ``budget`` tokens per epoch in ``family``.

    The cost is measured on the given epochs, since it depends on the values (a 3-digit
    slow wave costs more than a 1-digit wake trace); pass epochs from every stage.
    """
    epochs = np.asarray(epochs)
    if epochs.ndim == 2:
        epochs = epochs[None]
    costs = []
    for config in candidates or raw_configs():
        cost = max(encode_epoch(e, config, fmt).tokens[family] for e in epochs)
        if cost <= budget:
            return config
        costs.append(f"{config.name}: {cost}")
    raise BudgetError(
        f"no encoding fits {budget} tokens per epoch ({family}); cheapest costs were "
        f"{'; '.join(costs[-3:])}. Raise the budget or offer lower rates or symbolic encodings"
    )


# --- information kept ------------------------------------------------------------------------


def band_powers(x: np.ndarray, sfreq: float = TARGET_SFREQ) -> dict[str, float]:
    """Welch power (µV², 4-s windows) of each AASM band of one channel."""
    freqs, psd = sps.welch(x, sfreq, nperseg=int(4 * sfreq))
    df = freqs[1] - freqs[0]
    return {
        band: float(psd[(freqs >= lo) & (freqs <= hi)].sum() * df)
        for band, (lo, hi) in AASM_BANDS.items()
    }


def epoch_information(x: np.ndarray, role: str, config: SequenceConfig) -> dict[str, float]:
    """What one channel keeps through ``config``: relative band-power error (%) per band,
    peak-to-peak error (µV, decoded minus original) and correlation at 100 Hz. A decoded
    trace that rounding made flat (a small chin EMG at whole µV) keeps none of the epoch's
    variation: its correlation is 0, not undefined; a flat original has none to keep (NaN)."""
    y = reconstruct_channel(x, role, config)
    original, decoded = band_powers(x), band_powers(y)
    row = {
        f"{band}_error_pct": 100 * (decoded[band] - p) / p if p > 0 else np.nan
        for band, p in original.items()
    }
    row["p2p_error_uv"] = float(np.ptp(y) - np.ptp(x))
    if np.ptp(x) == 0:
        row["correlation"] = np.nan
    elif np.ptp(y) == 0:
        row["correlation"] = 0.0
    else:
        row["correlation"] = float(np.corrcoef(x, y)[0, 1])
    return row


def information_kept(
    epochs: np.ndarray, configs: list[SequenceConfig], role: str = "eeg"
) -> pd.DataFrame:
    """Median over ``epochs`` (n, 3, 3000) of :func:`epoch_information` for each config,
    with the Nyquist frequency above which the sequence holds nothing."""
    i = ROLES.index(role)
    rows = []
    for config in configs:
        per_epoch = pd.DataFrame(
            [epoch_information(check_epoch(e)[i], role, config) for e in epochs]
        )
        row = per_epoch.median().to_dict()
        rows.append({"encoding": config.name, "nyquist_hz": config.rate / 2, **row})
    return pd.DataFrame(rows).set_index("encoding")


def slow_wave_p2p(config: SequenceConfig, p2p_uv: float = 75.0, freq: float = 1.0) -> float:
    """Decoded peak-to-peak (µV) of a ``p2p_uv`` sine at ``freq`` Hz on the EEG: does a
    slow wave that just meets the 75 µV N3 criterion still meet it after encoding?"""
    t = np.arange(EPOCH_SAMPLES) / TARGET_SFREQ
    wave = p2p_uv / 2 * np.sin(2 * np.pi * freq * t)
    return float(np.ptp(reconstruct_channel(wave, "eeg", config)))


def spectrum_comparison(x: np.ndarray, role: str, config: SequenceConfig) -> pd.DataFrame:
    """Welch spectra (µV²/Hz) of one channel before and after ``config``, at 100 Hz."""
    freqs, original = sps.welch(x, TARGET_SFREQ, nperseg=4 * TARGET_SFREQ)
    _, decoded = sps.welch(
        reconstruct_channel(x, role, config), TARGET_SFREQ, nperseg=4 * TARGET_SFREQ
    )
    return pd.DataFrame({"frequency": freqs, "original": original, "decoded": decoded})
