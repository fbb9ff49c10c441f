"""One 30-s epoch as a picture: EEG, EOG and chin EMG stacked at a fixed physical scale.

Every image uses the same µV per division for a channel role (:data:`SCALES`), never a scale
fitted to the epoch, so amplitude criteria stay readable: the EEG lane carries a ±37.5 µV
reference band (:data:`REFERENCE_BAND_UV`) that a 75 µV peak-to-peak slow wave spans, and
chin EMG atonia is a thin line. Values beyond a lane are clipped to it with a mark; missing
samples (NaN) are left as gaps. Neighbouring epochs can be drawn lighter on either side.

Two renderers draw the same layout. :func:`render_png` rasterises directly with numpy: the
static layout (grid, band, labels) is drawn once per option set and cached, each trace is a
per-pixel-column min/max envelope (3000 samples into ~380 columns), and the PNG is indexed
color with fixed settings, so the same input gives the same bytes. :func:`reference_png` is
the obvious matplotlib figure of the same layout, kept as the slow baseline that
:func:`parity_score` compares against. :func:`render_dataset` fills a content-addressed image
store from an epoch store, serially or on Dask.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from sleepvlm.cache import cache_dir, content_hash, source_hash
from sleepvlm.data.records import EPOCH_S, ROLES, DataError
from sleepvlm.pipeline import EpochStore, SerialExecutor
from sleepvlm.signal import EPOCH_SAMPLES, TARGET_SFREQ, Epochs

#: Version of the drawing; images are named after it and this module's source hash
#: (:func:`renderer_version`), so an edited renderer never reuses stale images.
RENDERER_VERSION = "1"


@dataclass(frozen=True)
class ChannelScale:
    """Fixed vertical scale of one lane: µV per grid division, divisions above the baseline."""

    uv_per_div: float
    half_divisions: int

    @property
    def limit_uv(self) -> float:
        """Largest |value| (µV) inside the lane; beyond it a trace is clipped."""
        return self.uv_per_div * self.half_divisions


#: One scale per role. EEG ±150 µV keeps N3 slow waves (75–200 µV peak to peak) mostly inside
#: the lane; EOG ±300 µV holds wake and REM eye movements; chin EMG ±30 µV makes wake tone a
#: thick band and REM atonia (~1 µV) a thin line.
SCALES: dict[str, ChannelScale] = {
    "eeg": ChannelScale(uv_per_div=50.0, half_divisions=3),
    "eog": ChannelScale(uv_per_div=100.0, half_divisions=3),
    "emg": ChannelScale(uv_per_div=10.0, half_divisions=3),
}
#: Half-height (µV) of the EEG reference band: the AASM slow-wave criterion is 75 µV p2p.
REFERENCE_BAND_UV = 37.5
#: Share of the lanes' height given to each role (EEG carries most of the staging cues).
LANE_SHARES: dict[str, float] = {"eeg": 0.44, "eog": 0.28, "emg": 0.28}
#: Under autoscale (demonstration only) a lane spans this many standard deviations of the
#: epoch's own channel on each side: per-epoch z-scoring, as many deep-learning pipelines do.
AUTOSCALE_SD = 3.0
#: Manifest columns that name a night.
NIGHT_KEYS = ["dataset", "subject", "night"]
#: zlib level of the PNG writer; fixed so that the bytes are reproducible.
PNG_COMPRESS_LEVEL = 1

#: Palette of every image (RGB); grayscale images use the luma of each entry.
COLORS: dict[str, tuple[int, int, int]] = {
    "background": (255, 255, 255),
    "frame": (160, 160, 160),
    "grid_minor": (228, 228, 228),
    "grid_major": (195, 195, 195),
    "baseline": (185, 185, 185),
    "band": (255, 234, 200),
    "band_edge": (235, 165, 90),
    "separator": (90, 90, 90),
    "context": (165, 165, 165),
    "clip": (225, 0, 170),
    "text": (40, 40, 40),
    "eeg": (20, 40, 150),
    "eog": (0, 110, 40),
    "emg": (150, 30, 30),
}
#: Shades between background and text color kept for anti-aliased text.
_TEXT_SHADES = 12
#: Height (px) of a clipping mark at the edge of a lane; it is widened by half that on each side.
_CLIP_MARK_PX = 4


@dataclass(frozen=True)
class ImageOptions:
    """Everything that changes an image besides the data (part of the image's name)."""

    width: int = 448  # pixels, as in SleepVLM
    height: int = 224
    line_width: int = 1  # trace thickness in pixels
    context: int = 0  # neighbouring epochs drawn on each side of the scored one
    grayscale: bool = False
    autoscale: bool = False  # lanes at ±3 SD of the epoch: only to show why it is not used
    # µV RMS at which the night's median chin EMG is drawn (0: as recorded). The AASM reads
    # chin tone against the whole recording, and chin EMG levels differ more between labs
    # (electrodes, filters, amplifier noise) than between sleep stages.
    chin_reference_uv: float = 0.0

    def __post_init__(self) -> None:
        if not (200 <= self.width <= 4000 and 100 <= self.height <= 2000):
            raise ValueError(
                f"image size {self.width}x{self.height} px is outside 200-4000 x 100-2000"
            )
        if not 1 <= self.line_width <= 8:
            raise ValueError(f"line_width must be 1-8 px, got {self.line_width}")
        if not 0 <= self.context <= 3:
            raise ValueError(f"context must be 0-3 epochs on each side, got {self.context}")
        if not 0 <= self.chin_reference_uv <= SCALES["emg"].limit_uv:
            raise ValueError(
                f"chin_reference_uv must be 0 (as recorded) to {SCALES['emg'].limit_uv:g} µV, "
                f"got {self.chin_reference_uv}"
            )


def image_options(options: ImageOptions | None = None, **kwargs: Any) -> ImageOptions:
    """``options`` with ``kwargs`` applied (``ImageOptions(**kwargs)`` when none is given)."""
    if options is None:
        return ImageOptions(**kwargs)
    return ImageOptions(**(asdict(options) | kwargs)) if kwargs else options


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of an image: where the plot, each lane and each epoch slot lie."""

    width: int
    height: int
    plot_left: int  # first column of the plot (left of it: labels and scales)
    slot_width: int  # columns per epoch; the scored epoch is the middle slot
    slots: int
    lanes: dict[str, tuple[int, int]]  # role -> (top row, height in rows)
    axis_top: int  # first row of the time axis
    font_size: int

    @property
    def plot_width(self) -> int:
        return self.slot_width * self.slots

    @property
    def center_columns(self) -> tuple[int, int]:
        """Start and stop column of the scored epoch."""
        start = self.plot_left + self.slot_width * (self.slots // 2)
        return start, start + self.slot_width

    def row_of(self, role: str, value_uv: float | np.ndarray, limit_uv: float) -> np.ndarray:
        """Continuous row coordinate (0 at the top of the image) of a value in a lane."""
        top, height = self.lanes[role]
        return top + height / 2 - np.asarray(value_uv) * (height / 2) / limit_uv


@lru_cache(maxsize=32)
def layout(options: ImageOptions) -> Layout:
    """Geometry of the images drawn with ``options``."""
    font_size = max(8, round(options.height / 24))
    font = _font(font_size)
    widest = max(font.getbbox(text)[2] for role in ROLES for text, _ in _lane_labels(role, options))
    left = max(round(options.width * 0.1), widest + 6)
    slots = 2 * options.context + 1
    right = font_size  # room for half of the last time label
    slot_width = (options.width - left - right) // slots
    if slot_width > EPOCH_SAMPLES:
        raise ValueError(f"an epoch slot of {slot_width} px is wider than {EPOCH_SAMPLES} samples")
    top, gap = 2, 3
    axis_top = options.height - (font_size + 6)
    available = axis_top - top - gap * (len(ROLES) - 1)
    heights = [round(available * LANE_SHARES[r]) for r in ROLES[:-1]]
    heights.append(available - sum(heights))
    lanes = {}
    for role, lane_height in zip(ROLES, heights, strict=True):
        lanes[role] = (top, lane_height)
        top += lane_height + gap
    return Layout(
        options.width, options.height, left, slot_width, slots, lanes, axis_top, font_size
    )


def _palette_names() -> list[str]:
    return [*COLORS, *(f"text_{i}" for i in range(_TEXT_SHADES))]


def _palette_rgb() -> np.ndarray:
    """(n, 3) uint8: the named colors, then text shades from background to text color."""
    named = np.array(list(COLORS.values()), dtype=np.float64)
    weights = np.linspace(0, 1, _TEXT_SHADES + 2)[1:-1, None]
    shades = (1 - weights) * named[0] + weights * np.array(COLORS["text"])
    return np.round(np.vstack([named, shades])).astype(np.uint8)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of RGB uint8 values (the grey level of each color)."""
    rgb = np.asarray(rgb, dtype=np.int64)
    return ((rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000).astype(
        np.uint8
    )


_INDEX = {name: i for i, name in enumerate(_palette_names())}
_PALETTE = _palette_rgb()
_GREY_PALETTE = luma(_PALETTE)


def palette(options: ImageOptions) -> np.ndarray:
    """Color of each palette index: (n, 3) RGB, or (n,) grey levels for grayscale images."""
    return _GREY_PALETTE if options.grayscale else _PALETTE


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, shipped with matplotlib: it has "µ" and "±" (Pillow's default font has
    not), and the reference renderer uses it too."""
    import matplotlib

    return ImageFont.truetype(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf", size)


def _grid_seconds(slot: int, center_slot: int) -> range:
    """Grid lines (s from the slot start): every second in the scored epoch, every 5 s in
    its neighbours (a 1-s grid there would grey out the narrow slots)."""
    return range(1, int(EPOCH_S)) if slot == center_slot else range(5, int(EPOCH_S), 5)


def _time_labels(lay: Layout, context: int) -> list[tuple[float, str]]:
    """(seconds from the scored epoch's start, text) of each time-axis label."""
    px_per_s = lay.slot_width / EPOCH_S
    step = next(s for s in (5, 10, 15, 30) if s * px_per_s >= 4 * lay.font_size)
    first, last = -context * EPOCH_S, (context + 1) * EPOCH_S
    return [(t, f"{t:g}") for t in np.arange(first, last + 1e-9, step)]


def _scale_text(role: str, options: ImageOptions) -> str:
    if options.autoscale:
        return "auto scale"
    return f"{SCALES[role].uv_per_div:g} µV/div"


def _lane_labels(role: str, options: ImageOptions) -> list[tuple[str, tuple[int, int, int]]]:
    """Lines of text left of a lane, with their colors: channel, scale, reference band."""
    labels = [(role.upper(), COLORS[role]), (_scale_text(role, options), COLORS["text"])]
    if role == "eeg" and not options.autoscale:
        labels.append((f"±{REFERENCE_BAND_UV:g} µV", COLORS["band_edge"]))
    if role == "emg" and options.chin_reference_uv:
        labels.append((f"night {options.chin_reference_uv:g} µV", COLORS["text"]))
    return labels


def _x_of(lay: Layout, seconds: float, context: int) -> int:
    """Column of a time given in s from the start of the scored epoch."""
    return lay.plot_left + round((seconds + context * EPOCH_S) * lay.slot_width / EPOCH_S)


def _draw_layout(options: ImageOptions) -> Image.Image:
    lay = layout(options)
    image = Image.new("RGB", (lay.width, lay.height), COLORS["background"])
    draw = ImageDraw.Draw(image)
    font = _font(lay.font_size)
    x0, x1 = lay.plot_left, lay.plot_left + lay.plot_width - 1
    center_slot = lay.slots // 2
    for role in ROLES:
        top, height = lay.lanes[role]
        bottom = top + height - 1
        scale = SCALES[role]
        if role == "eeg" and not options.autoscale:
            band_top, band_bottom = lay.row_of(
                role, np.array([REFERENCE_BAND_UV, -REFERENCE_BAND_UV]), scale.limit_uv
            )
            draw.rectangle([x0, int(band_top), x1, int(band_bottom)], fill=COLORS["band"])
        for slot in range(lay.slots):
            for s in _grid_seconds(slot, center_slot):
                x = lay.plot_left + slot * lay.slot_width + round(s * lay.slot_width / EPOCH_S)
                color = COLORS["grid_major" if s % 5 == 0 else "grid_minor"]
                draw.line([x, top, x, bottom], fill=color)
        for d in range(1, scale.half_divisions):
            for sign in (1, -1):
                y = int(lay.row_of(role, sign * d * scale.uv_per_div, scale.limit_uv))
                draw.line([x0, y, x1, y], fill=COLORS["grid_minor"])
        if role == "eeg" and not options.autoscale:
            for y in (band_top, band_bottom):
                draw.line([x0, int(y), x1, int(y)], fill=COLORS["band_edge"])
        baseline = int(lay.row_of(role, 0.0, scale.limit_uv))
        draw.line([x0, baseline, x1, baseline], fill=COLORS["baseline"])
        for slot in range(1, lay.slots):
            x = lay.plot_left + slot * lay.slot_width
            draw.line([x, top, x, bottom], fill=COLORS["separator"])
        draw.rectangle([x0, top, x1, bottom], outline=COLORS["frame"])
        for line, (text, color) in enumerate(_lane_labels(role, options)):
            draw.text((2, top + 1 + line * (lay.font_size + 1)), text, fill=color, font=font)
    for seconds, text in _time_labels(lay, options.context):
        x = _x_of(lay, seconds, options.context)
        draw.line([x, lay.axis_top, x, lay.axis_top + 2], fill=COLORS["frame"])
        draw.text((x, lay.axis_top + 3), text, fill=COLORS["text"], font=font, anchor="mt")
    draw.text((2, lay.axis_top + 3), "1 s/div", fill=COLORS["text"], font=font)
    return image


#: Palette entries that only traces use: anti-aliased text must never be mapped to them.
_TRACE_ONLY = ("context", "clip")


@lru_cache(maxsize=32)
def static_layout(options: ImageOptions) -> np.ndarray:
    """Palette indices (H, W) of the image without traces, drawn once per option set."""
    rgb = np.asarray(_draw_layout(options), dtype=np.int64)
    allowed = np.array([i for name, i in _INDEX.items() if name not in _TRACE_ONLY])
    # Nearest palette entry: exact for the drawn colors, a text shade for anti-aliased text.
    candidates = _PALETTE[allowed].astype(np.int64)
    distances = ((rgb[:, :, None, :] - candidates[None, None]) ** 2).sum(axis=-1)
    indices = allowed[distances.argmin(axis=-1)].astype(np.uint8)
    indices.flags.writeable = False
    return indices


def _as_epoch(epoch: Any, what: str) -> np.ndarray:
    array = np.asarray(epoch, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != len(ROLES):
        raise DataError(
            f"{what}: expected an array of {len(ROLES)} channels ({', '.join(ROLES)}) x "
            f"{EPOCH_SAMPLES} samples, got shape {array.shape}; take epochs from "
            "sleepvlm.signal.epoch_recording"
        )
    if array.shape[1] != EPOCH_SAMPLES:
        raise DataError(
            f"{what}: expected {EPOCH_SAMPLES} samples per channel ({EPOCH_S:g} s at "
            f"{TARGET_SFREQ} Hz), got {array.shape[1]}; resample with "
            "sleepvlm.signal.preprocess_channel first"
        )
    return array


def _neighbours(epochs: Any, count: int, keep: str, what: str) -> list[np.ndarray]:
    """``count`` neighbouring epochs (nearest last for ``keep='last'``), NaN where missing."""
    missing = np.full((len(ROLES), EPOCH_SAMPLES), np.nan)
    if epochs is None or count == 0:
        return [missing] * count
    array = np.asarray(epochs, dtype=np.float64)
    stack = [array] if array.ndim == 2 else list(array)
    stack = [_as_epoch(e, what) for e in stack]
    stack = stack[-count:] if keep == "last" else stack[:count]
    pad = [missing] * (count - len(stack))
    return pad + stack if keep == "last" else stack + pad


def epoch_window(
    epoch: Any, before: Any = None, after: Any = None, context: int = 0, sfreq: float = TARGET_SFREQ
) -> np.ndarray:
    """(2·context+1, 3, 3000) float64: the epoch between its neighbours (NaN where absent).

    ``before``/``after`` are one epoch (3, 3000) or a stack (k, 3, 3000) in time order; the
    ones nearest the scored epoch are used.
    """
    if sfreq != TARGET_SFREQ:
        raise DataError(
            f"epoch sampled at {sfreq:g} Hz; images are drawn from {TARGET_SFREQ} Hz epochs: "
            "resample with sleepvlm.signal.preprocess_channel first"
        )
    center = _as_epoch(epoch, "epoch")
    previous = _neighbours(before, context, "last", "previous epochs")
    following = _neighbours(after, context, "first", "next epochs")
    return np.stack([*previous, center, *following])


def lane_limit(role: str, center: np.ndarray, options: ImageOptions) -> float:
    """Largest |value| (µV) a lane shows: the role's fixed limit, or under ``autoscale``
    :data:`AUTOSCALE_SD` standard deviations of the scored epoch's own channel."""
    if options.autoscale and np.isfinite(center).sum() > 1:
        spread = float(np.nanstd(center))
        if spread > 0:
            return AUTOSCALE_SD * spread
    return SCALES[role].limit_uv


def _column_envelope(rows: np.ndarray, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest continuous row of each pixel column, joined to the previous sample.

    NaN where a column holds no finite sample (a gap). Each column also takes in the last
    sample of the column before, so consecutive columns connect like a polyline.
    """
    starts = -((-np.arange(n_columns) * len(rows)) // n_columns)
    low = np.fmin.reduceat(rows, starts)
    high = np.fmax.reduceat(rows, starts)
    drawn = np.isfinite(low)
    previous = np.concatenate([[np.nan], rows[starts[1:] - 1]])
    low = np.where(drawn, np.fmin(low, previous), np.nan)
    high = np.where(drawn, np.fmax(high, previous), np.nan)
    return low, high


def _widen_columns(columns: np.ndarray, by: int = _CLIP_MARK_PX // 2) -> np.ndarray:
    """Boolean columns grown by ``by`` on each side (a one-column mark would be missed)."""
    grown = columns.copy()
    for shift in range(1, by + 1):
        grown[shift:] |= columns[:-shift]
        grown[:-shift] |= columns[shift:]
    return grown


def _draw_trace(
    indices: np.ndarray, lay: Layout, role: str, signal: np.ndarray, limit: float, lw: int
) -> None:
    top, height = lay.lanes[role]
    rows = lay.row_of(role, signal, limit)
    low, high = _column_envelope(rows, lay.plot_width)
    drawn = np.isfinite(low)
    over = drawn & (low < top)
    under = drawn & (high >= top + height)
    first = np.where(drawn, np.floor(np.clip(low, top, top + height - 1)), height + top + 1)
    last = np.where(drawn, np.floor(np.clip(high, top, top + height - 1)), top - 1)
    first, last = first - (lw - 1) // 2, last + lw // 2
    lane_rows = np.arange(top, top + height)[:, None]
    mask = (lane_rows >= first[None, :]) & (lane_rows <= last[None, :])
    if lw > 1:
        wide = mask.copy()
        for shift in range(-((lw - 1) // 2), lw // 2 + 1):
            if shift > 0:
                wide[:, shift:] |= mask[:, :-shift]
            elif shift < 0:
                wide[:, :shift] |= mask[:, -shift:]
        mask = wide
    lane = indices[top : top + height, lay.plot_left : lay.plot_left + lay.plot_width]
    center = np.zeros(lay.plot_width, dtype=bool)
    center[lay.slot_width * (lay.slots // 2) : lay.slot_width * (lay.slots // 2 + 1)] = True
    lane[mask & ~center] = _INDEX["context"]
    lane[mask & center] = _INDEX[role]
    mark = min(_CLIP_MARK_PX, height)
    lane[:mark, _widen_columns(over)] = _INDEX["clip"]
    lane[height - mark :, _widen_columns(under)] = _INDEX["clip"]


def _rasterize(window: np.ndarray, options: ImageOptions) -> np.ndarray:
    lay = layout(options)
    indices = static_layout(options).copy()
    center = window[options.context]
    for c, role in enumerate(ROLES):
        limit = lane_limit(role, center[c], options)
        _draw_trace(indices, lay, role, window[:, c].ravel(), limit, options.line_width)
    return indices


def _single_epoch_options(options: ImageOptions | None, kwargs: dict) -> ImageOptions:
    opts = image_options(options, **kwargs)
    if opts.chin_reference_uv:
        raise DataError(
            "chin_reference_uv draws the chin EMG against its night's level, which one epoch "
            "does not give: render whole nights with render_dataset"
        )
    return opts


def render_image(
    epoch: Any,
    before: Any = None,
    after: Any = None,
    options: ImageOptions | None = None,
    sfreq: float = TARGET_SFREQ,
    **kwargs: Any,
) -> np.ndarray:
    """Pixels of the fast renderer: (H, W, 3) uint8 RGB, or (H, W) grey levels if grayscale.

    ``epoch`` is (3, 3000) µV at 100 Hz in (EEG, EOG, EMG) order; ``before``/``after`` are
    the neighbouring epochs drawn when ``context`` > 0. Options: :class:`ImageOptions`.
    """
    opts = _single_epoch_options(options, kwargs)
    window = epoch_window(epoch, before, after, opts.context, sfreq)
    return palette(opts)[_rasterize(window, opts)]


def _encode(indices: np.ndarray, options: ImageOptions) -> bytes:
    if options.grayscale:
        image = Image.fromarray(_GREY_PALETTE[indices], mode="L")
    else:
        image = Image.fromarray(indices, mode="P")
        image.putpalette(_PALETTE.tobytes())
    buffer = io.BytesIO()
    # No pnginfo, no optimize pass: Pillow then writes no text or time chunks, only pixels.
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def render_png(
    epoch: Any,
    before: Any = None,
    after: Any = None,
    options: ImageOptions | None = None,
    sfreq: float = TARGET_SFREQ,
    **kwargs: Any,
) -> bytes:
    """PNG bytes of the fast renderer (indexed color, or 8-bit grey); same input, same bytes."""
    opts = _single_epoch_options(options, kwargs)
    window = epoch_window(epoch, before, after, opts.context, sfreq)
    return _encode(_rasterize(window, opts), opts)


def decode_png(data: bytes, grayscale: bool = False) -> np.ndarray:
    """Pixels of a PNG as (H, W, 3) RGB or (H, W) grey uint8."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L" if grayscale else "RGB"))


def _mpl_color(name_or_rgb: str | tuple[int, int, int], options: ImageOptions) -> tuple:
    """A palette color (by name, or RGB) as matplotlib wants it, grey in grayscale mode."""
    rgb = np.array(COLORS.get(name_or_rgb) if isinstance(name_or_rgb, str) else name_or_rgb)
    if options.grayscale:
        return (float(luma(rgb)) / 255,) * 3
    return tuple(float(v) / 255 for v in rgb)


def reference_png(
    epoch: Any,
    before: Any = None,
    after: Any = None,
    options: ImageOptions | None = None,
    sfreq: float = TARGET_SFREQ,
    **kwargs: Any,
) -> bytes:
    """PNG bytes of the matplotlib reference: a figure with one axes per lane, same layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    opts = image_options(options, **kwargs)
    window = epoch_window(epoch, before, after, opts.context, sfreq)
    lay = layout(opts)
    dpi = 100
    px = 72 / dpi  # points per pixel
    fig = Figure(figsize=(lay.width / dpi, lay.height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor(_mpl_color("background", opts))
    k = opts.context
    t = np.arange(window.shape[0] * EPOCH_SAMPLES) / TARGET_SFREQ - k * EPOCH_S
    center = (t >= 0) & (t < EPOCH_S)
    for c, role in enumerate(ROLES):
        top, height = lay.lanes[role]
        ax = fig.add_axes(
            (
                lay.plot_left / lay.width,
                1 - (top + height) / lay.height,
                lay.plot_width / lay.width,
                height / lay.height,
            )
        )
        y = window[:, c].ravel()
        limit = lane_limit(role, window[k, c], opts)
        scale = SCALES[role]
        ax.set_xlim(-k * EPOCH_S, (k + 1) * EPOCH_S)
        ax.set_ylim(-limit, limit)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor(_mpl_color("background", opts))
        for spine in ax.spines.values():
            spine.set(color=_mpl_color("frame", opts), linewidth=px)
        if role == "eeg" and not opts.autoscale:
            ax.axhspan(-REFERENCE_BAND_UV, REFERENCE_BAND_UV, color=_mpl_color("band", opts), lw=0)
            for edge in (-REFERENCE_BAND_UV, REFERENCE_BAND_UV):
                ax.axhline(edge, color=_mpl_color("band_edge", opts), lw=px)
        seconds = np.arange(-k * EPOCH_S + 1, (k + 1) * EPOCH_S)
        in_center = (seconds > 0) & (seconds < EPOCH_S)
        shown = (seconds % EPOCH_S != 0) & (in_center | (seconds % 5 == 0))
        major = shown & (seconds % 5 == 0)
        for grid, where in (("grid_minor", shown & ~major), ("grid_major", major)):
            ax.vlines(seconds[where], -limit, limit, color=_mpl_color(grid, opts), lw=px)
        divisions = np.arange(1, scale.half_divisions) * limit / scale.half_divisions
        ax.hlines(
            np.concatenate([divisions, -divisions]),
            -k * EPOCH_S,
            (k + 1) * EPOCH_S,
            color=_mpl_color("grid_minor", opts),
            lw=px,
        )
        ax.axhline(0, color=_mpl_color("baseline", opts), lw=px)
        separators = np.arange(1, window.shape[0]) * EPOCH_S - k * EPOCH_S
        ax.vlines(separators, -limit, limit, color=_mpl_color("separator", opts), lw=px)
        lw = opts.line_width * px
        ax.plot(t, np.where(center, np.nan, y), color=_mpl_color("context", opts), lw=lw)
        ax.plot(t, np.where(center, y, np.nan), color=_mpl_color(role, opts), lw=lw)
        mark = _CLIP_MARK_PX * limit * 2 / height
        mark_lw = (2 * (_CLIP_MARK_PX // 2) + 1) * px
        over, under = y > limit, y < -limit
        ax.vlines(t[over], limit - mark, limit, color=_mpl_color("clip", opts), lw=mark_lw)
        ax.vlines(t[under], -limit, -limit + mark, color=_mpl_color("clip", opts), lw=mark_lw)
        for line, (text, rgb) in enumerate(_lane_labels(role, opts)):
            fig.text(
                2 / lay.width,
                1 - (top + 1 + line * (lay.font_size + 1)) / lay.height,
                text,
                color=_mpl_color(rgb, opts),
                fontsize=lay.font_size * px,
                va="top",
            )
    fig.text(
        2 / lay.width,
        1 - (lay.axis_top + 3) / lay.height,
        "1 s/div",
        color=_mpl_color("text", opts),
        fontsize=lay.font_size * px,
        va="top",
    )
    for seconds, text in _time_labels(lay, k):
        fig.text(
            _x_of(lay, seconds, k) / lay.width,
            1 - (lay.axis_top + 3) / lay.height,
            text,
            color=_mpl_color("text", opts),
            fontsize=lay.font_size * px,
            ha="center",
            va="top",
        )
    buffer = io.BytesIO()
    # Software=None drops the only metadata Agg writes that could change between versions.
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def reference_image(
    epoch: Any,
    before: Any = None,
    after: Any = None,
    options: ImageOptions | None = None,
    sfreq: float = TARGET_SFREQ,
    **kwargs: Any,
) -> np.ndarray:
    """Pixels of :func:`reference_png`, in the same form as :func:`render_image`."""
    opts = image_options(options, **kwargs)
    return decode_png(reference_png(epoch, before, after, opts, sfreq), opts.grayscale)


def _blank_epoch() -> np.ndarray:
    """An epoch with every sample missing: drawn, it is a renderer's layout without traces."""
    return np.full((len(ROLES), EPOCH_SAMPLES), np.nan)


@lru_cache(maxsize=8)
def _blank_fast(options: ImageOptions) -> np.ndarray:
    return render_image(_blank_epoch(), options=options)


@lru_cache(maxsize=8)
def _blank_images(options: ImageOptions) -> tuple[np.ndarray, np.ndarray]:
    return _blank_fast(options), reference_image(_blank_epoch(), options=options)


#: A pixel belongs to a trace when it differs from the blank layout by more than this (0-255):
#: about half the contrast of a trace on white, so that anti-aliased fringes do not count.
TRACE_THRESHOLD = 100


def _trace_masks(image: np.ndarray, blank: np.ndarray, options: ImageOptions) -> dict:
    """Per lane, which pixels of the scored epoch's columns (frame columns left out) belong to
    a trace: those that differ from the blank layout by more than :data:`TRACE_THRESHOLD` in
    some color channel."""
    lay = layout(options)
    start, stop = lay.center_columns
    diff = np.abs(image.astype(np.int16) - blank.astype(np.int16))
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    masks = {}
    for role in ROLES:
        top, height = lay.lanes[role]
        masks[role] = diff[top : top + height, start + 1 : stop - 1] > TRACE_THRESHOLD
    return masks


def trace_spans(image: np.ndarray, blank: np.ndarray, options: ImageOptions) -> dict[str, Any]:
    """Per lane, the top and bottom trace row of each column of the scored epoch (NaN: none).

    Trace pixels are those that differ from the renderer's own blank layout (the image of an
    all-NaN epoch) by more than :data:`TRACE_THRESHOLD` in some color channel; the frame
    columns at both ends of the epoch are left out.
    """
    spans = {}
    for role, trace in _trace_masks(image, blank, options).items():
        height = trace.shape[0]
        rows = np.arange(height)[:, None]
        has = trace.any(axis=0)
        first = np.where(has, np.where(trace, rows, height).min(axis=0), np.nan)
        last = np.where(has, np.where(trace, rows, -1).max(axis=0), np.nan)
        spans[role] = (first, last)
    return spans


def lane_ink(png: bytes, options: ImageOptions | None = None, **kwargs: Any) -> dict[str, float]:
    """Share of each lane's pixels in the scored epoch that its trace covers, for a PNG of the
    fast renderer drawn with ``options``: how much of a lane a trace fills (a dense or thick
    trace turns into a bar; a silent chin into a line)."""
    opts = image_options(options, **kwargs)
    image = decode_png(png, opts.grayscale)
    # The chin's night level only rescales a trace: the blank layout is drawn without it.
    # Only the fast renderer's blank is needed (the matplotlib one is the slow half).
    blank = _blank_fast(image_options(opts, chin_reference_uv=0.0))
    masks = _trace_masks(image, blank, opts)
    return {role: float(mask.mean()) for role, mask in masks.items()}


#: A lane whose trace touches at most this many pixel rows, the same rows in every column of
#: the scored epoch, holds a flat line: a channel that recorded nothing (the quietest real chin
#: of the cohort's test nights still touched 3 rows, and varied from column to column).
FLAT_ROWS = 2


def lane_problems(png: bytes, options: ImageOptions | None = None, **kwargs: Any) -> dict:
    """What makes ``png`` unreadable as an image the fast renderer drew with ``options``: an
    ``"image"`` of another size (drawn at another scale, or not by this renderer), or a lane
    with no trace in the scored epoch or only a flat line (a missing or disconnected channel).
    Empty when the image reads as drawn; a problem is a sentence naming the lane."""
    opts = image_options(options, **kwargs)
    try:
        image = decode_png(png, opts.grayscale)
    except OSError:
        return {"image": "the image is not a readable PNG"}
    size = (image.shape[1], image.shape[0])
    if size != (opts.width, opts.height):
        return {
            "image": f"the image is {size[0]}x{size[1]} px, not the {opts.width}x{opts.height} "
            "px this model reads (draw it with sleepvlm.render at the model's options)"
        }
    blank = _blank_fast(image_options(opts, chin_reference_uv=0.0))
    problems = {}
    for role, trace in _trace_masks(image, blank, opts).items():
        rows = trace.any(axis=1)
        if not rows.any():
            problems[role] = f"the {role.upper()} lane holds no trace"
        elif rows.sum() <= FLAT_ROWS and (trace == trace[:, :1]).all():
            problems[role] = f"the {role.upper()} lane holds only a flat line"
    return problems


def stored_lane_ink(
    source: Any,
    row: int,
    out_dir: str | Path | None = None,
    options: ImageOptions | None = None,
    **kwargs: Any,
) -> tuple[bytes, dict[str, float]]:
    """One epoch of ``source`` (an epoch store or :class:`Epochs`, manifest row ``row``) drawn
    as :func:`render_dataset` draws it (its night's chin level included), as PNG bytes, with
    :func:`lane_ink` measured under the same options it was drawn with."""
    opts = image_options(options, **kwargs)
    drawn = render_dataset(source, [row], out_dir=out_dir, options=opts)
    png = Path(drawn["image"].iloc[0]).read_bytes()
    return png, lane_ink(png, opts)


def _widen(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spans over each column and its two neighbours: an anti-aliased 1-px stroke spills into
    the next column on steep slopes, a column envelope does not."""
    pad = [np.nan]
    first, last = np.concatenate([pad, first, pad]), np.concatenate([pad, last, pad])
    return (
        np.fmin(np.fmin(first[:-2], first[1:-1]), first[2:]),
        np.fmax(np.fmax(last[:-2], last[1:-1]), last[2:]),
    )


def lane_parity(
    fast: np.ndarray,
    reference: np.ndarray,
    options: ImageOptions | None = None,
    tolerance_px: int = 2,
    **kwargs: Any,
) -> dict[str, float]:
    """Agreement of the two renderers' traces in each lane (see :func:`parity_score`)."""
    opts = image_options(options, **kwargs)
    blank_fast, blank_reference = _blank_images(opts)
    spans_fast = trace_spans(fast, blank_fast, opts)
    spans_reference = trace_spans(reference, blank_reference, opts)
    scores = {}
    for role in ROLES:
        top_a, bottom_a = _widen(*spans_fast[role])
        top_b, bottom_b = _widen(*spans_reference[role])
        considered = np.isfinite(top_a) | np.isfinite(top_b)
        with np.errstate(invalid="ignore"):
            agree = (np.abs(top_a - top_b) <= tolerance_px) & (
                np.abs(bottom_a - bottom_b) <= tolerance_px
            )
        scores[role] = float(agree[considered].mean()) if considered.any() else 1.0
    return scores


def parity_score(
    fast: np.ndarray,
    reference: np.ndarray,
    options: ImageOptions | None = None,
    tolerance_px: int = 2,
    **kwargs: Any,
) -> float:
    """How closely a fast image matches the matplotlib reference of the same epoch (0 to 1).

    For every lane and every pixel column of the scored epoch, each image's trace covers a
    vertical span (its top and bottom trace pixel, found against that renderer's blank
    layout; :func:`trace_spans`), taken over the column and its two neighbours. A column
    agrees when both images draw the trace there and both ends of the spans are within
    ``tolerance_px`` pixels; columns where neither image draws (NaN gaps) are left out. The
    score is the share of agreeing columns in the worst lane (an average would let two
    near-flat lanes, which any two epochs share, hide a wrong EEG): 1 means the same traces
    everywhere; a trace drawn at another scale or from other data scores low.
    """
    return min(lane_parity(fast, reference, options, tolerance_px, **kwargs).values())


@lru_cache(maxsize=1)
def renderer_version() -> str:
    """:data:`RENDERER_VERSION`, this module's source hash and the Pillow version (the PNG
    encoder's bytes may change with it)."""
    import PIL

    return f"{RENDERER_VERSION}-{source_hash(sys.modules[__name__])}-{PIL.__version__}"


def image_name(window: np.ndarray, options: ImageOptions) -> str:
    """Content address of an image: hash of the epoch window, the options and the renderer."""
    data = np.ascontiguousarray(window, dtype=np.float32).tobytes()
    return content_hash(data, asdict(options), renderer_version(), length=24) + ".png"


def image_path(root: Path, name: str) -> Path:
    """Where an image lives in a store: sharded by the first two characters of its name."""
    return root / name[:2] / name


class _RenderBatch:
    """Picklable batch renderer for executors: windows in, PNG bytes out (written by the caller,
    so that remote workers need no shared disk)."""

    def __init__(self, options: ImageOptions) -> None:
        self.options = options

    def __call__(self, batch: tuple[list[str], np.ndarray]) -> tuple[list[str], list[bytes]]:
        names, windows = batch
        return names, [_encode(_rasterize(w, self.options), self.options) for w in windows]


def _source_access(source: Any) -> tuple[pd.DataFrame, Any]:
    if isinstance(source, EpochStore):
        return source.manifest(), source.read
    if isinstance(source, Epochs):
        return source.manifest.reset_index(drop=True), lambda rows: source.data[rows]
    raise TypeError(f"render_dataset needs an EpochStore or Epochs, got {type(source).__name__}")


def _neighbour_rows(manifest: pd.DataFrame, rows: np.ndarray, context: int) -> np.ndarray:
    """(n, 2·context+1) manifest rows of each epoch's window; -1 where a neighbour is absent
    (excluded, or outside the night)."""
    lookup = pd.Series(
        np.arange(len(manifest)),
        index=pd.MultiIndex.from_frame(
            manifest[[*NIGHT_KEYS, "epoch"]].astype({"epoch": np.int64})
        ),
    )
    chosen = manifest.iloc[rows]
    nights = [chosen[k].to_numpy() for k in NIGHT_KEYS]
    columns = []
    for offset in range(-context, context + 1):
        wanted = pd.MultiIndex.from_arrays([*nights, chosen["epoch"].to_numpy(np.int64) + offset])
        columns.append(lookup.reindex(wanted).fillna(-1).to_numpy(np.int64))
    return np.stack(columns, axis=1)


def _assemble_windows(read: Any, windows_rows: np.ndarray) -> np.ndarray:
    """(n, 2·context+1, 3, 3000) float64 windows of manifest rows (NaN where -1)."""
    wanted = np.unique(windows_rows[windows_rows >= 0])
    data = read(wanted).astype(np.float64)
    position = {int(r): i for i, r in enumerate(wanted)}
    windows = np.full((*windows_rows.shape, len(ROLES), EPOCH_SAMPLES), np.nan)
    for (n, slot), row in np.ndenumerate(windows_rows):
        if row >= 0:
            windows[n, slot] = data[position[int(row)]]
    return windows


def chin_level(emg: np.ndarray) -> float:
    """Median over epochs of the chin EMG RMS (µV) of (n, 3000) epochs (NaN if none has EMG)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # epochs or nights without chin EMG
        return float(np.nanmedian(np.nanstd(emg, axis=1)))


def _night_ids(manifest: pd.DataFrame) -> np.ndarray:
    parts = [manifest[k].astype(str) for k in NIGHT_KEYS]
    return (parts[0] + "/" + parts[1] + "/" + parts[2]).to_numpy()


def _chin_levels(read: Any, ids: np.ndarray, nights: np.ndarray) -> dict[str, float]:
    """:func:`chin_level` of each of ``nights`` (ids of :func:`_night_ids`), over all its epochs."""
    emg = ROLES.index("emg")
    return {
        night: chin_level(read(np.flatnonzero(ids == night))[:, emg].astype(np.float64))
        for night in nights
    }


def night_chin_levels(source: Any, rows: Sequence[int] | np.ndarray | None = None) -> pd.DataFrame:
    """:func:`chin_level` (µV) of each night of ``source`` (an EpochStore or Epochs) that holds
    one of ``rows`` (all by default), over every epoch of that night: one row per night."""
    manifest, read = _source_access(source)
    ids = _night_ids(manifest)
    wanted = np.unique(ids if rows is None else ids[np.asarray(rows, dtype=np.int64)])
    levels = _chin_levels(read, ids, wanted)
    first = manifest.iloc[[int(np.argmax(ids == night)) for night in wanted]][NIGHT_KEYS]
    table = first.assign(chin_uv=[levels[night] for night in wanted], id=wanted)
    return table.reset_index(drop=True)


def _chin_gains(manifest: pd.DataFrame, read: Any, rows: np.ndarray, reference_uv: float):
    """Gain of the chin EMG of each row: ``reference_uv`` over its night's :func:`chin_level`
    (1 for a night without chin EMG)."""
    ids = _night_ids(manifest)
    of_rows = ids[rows]
    levels = _chin_levels(read, ids, np.unique(of_rows))
    level = np.array([levels[night] for night in of_rows])
    usable = np.isfinite(level) & (level > 0)
    return np.where(usable, reference_uv / np.where(usable, level, 1.0), 1.0)


def _pending_batches(
    read: Any,
    windows_rows: np.ndarray,
    names_out: list[str],
    root: Path,
    options: ImageOptions,
    batch_size: int,
    chin_gains: np.ndarray | None = None,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Batches of windows whose images are not in the store yet (chin EMG times ``chin_gains``
    when given); names every row on the way."""
    for start in range(0, len(windows_rows), batch_size):
        names, windows = [], []
        block = _assemble_windows(read, windows_rows[start : start + batch_size])
        if chin_gains is not None:
            block[:, :, ROLES.index("emg")] *= chin_gains[start : start + batch_size, None, None]
        for window in block:
            name = image_name(window, options)
            names_out.append(name)
            if not image_path(root, name).exists():
                names.append(name)
                windows.append(window)
        if names:
            yield names, np.stack(windows)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_bytes(data)
    os.replace(partial, path)


def render_dataset(
    source: Any,
    indices: Sequence[int] | np.ndarray | None = None,
    out_dir: str | Path | None = None,
    executor: Any = None,
    batch_size: int = 64,
    options: ImageOptions | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Render the epochs at manifest rows ``indices`` (all by default) into an image store.

    ``source`` is an :class:`~sleepvlm.pipeline.EpochStore` or an :class:`Epochs`. Each image
    is saved as ``<out_dir>/<ab>/<name>.png``, its name the hash of the epoch window, the
    options and :func:`renderer_version` (default folder: the cache's ``images``); images
    already there are not drawn again. Batches of ``batch_size`` epochs run on ``executor``
    (serial by default). Returns the manifest rows asked for (index: manifest row) with
    ``image`` (path) and ``rendered`` (True if drawn by this call).
    """
    opts = image_options(options, **kwargs)
    manifest, read = _source_access(source)
    rows = np.arange(len(manifest)) if indices is None else np.asarray(indices, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(manifest)):
        raise IndexError(f"rows must lie in [0, {len(manifest)}), got {rows.min()}..{rows.max()}")
    root = Path(out_dir) if out_dir else cache_dir("images")
    windows_rows = _neighbour_rows(manifest, rows, opts.context)
    gains = None
    if opts.chin_reference_uv:
        gains = _chin_gains(manifest, read, rows, opts.chin_reference_uv)
    names: list[str] = []
    rendered: set[str] = set()
    batches = _pending_batches(read, windows_rows, names, root, opts, batch_size, gains)
    for done_names, pngs in (executor or SerialExecutor()).imap(_RenderBatch(opts), batches):
        for name, png in zip(done_names, pngs, strict=True):
            _write_atomically(image_path(root, name), png)
            rendered.add(name)
    table = manifest.iloc[rows].copy()
    table["image"] = [str(image_path(root, n)) for n in names]
    table["rendered"] = [n in rendered for n in names]
    return table
