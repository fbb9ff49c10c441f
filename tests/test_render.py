"""Tests of the epoch images: fixed scales, reference band, clipping, gaps, context, the parity
of the fast renderer with the matplotlib reference, and the content-addressed image store."""

import dataclasses
import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sleepvlm import render
from sleepvlm.data.records import STAGES, DataError
from sleepvlm.data.simulate import simulate_night
from sleepvlm.pipeline import DaskExecutor, EpochStore, SerialExecutor
from sleepvlm.signal import EPOCH_SAMPLES, TARGET_SFREQ, Epochs, QualityWarning, epoch_recording

T = np.arange(EPOCH_SAMPLES) / TARGET_SFREQ


@pytest.fixture(scope="module")
def night() -> Epochs:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QualityWarning)
        # long enough to hold REM: real REM latency is one to three hours
        return epoch_recording(simulate_night("dcsm", 0, hours=3.0))


def quiet_epoch(eeg=None, eog=None, emg=None) -> np.ndarray:
    epoch = np.zeros((3, EPOCH_SAMPLES))
    for c, x in enumerate((eeg, eog, emg)):
        if x is not None:
            epoch[c] = x
    return epoch


def color_mask(image: np.ndarray, name: str) -> np.ndarray:
    return (image == np.array(render.COLORS[name], dtype=np.uint8)).all(axis=-1)


def lane_rows(image: np.ndarray, role: str, options=None) -> np.ndarray:
    """Rows (relative to the lane top) where the plot holds the role's trace color."""
    lay = render.layout(options or render.ImageOptions())
    top, height = lay.lanes[role]
    lane = image[top : top + height, lay.plot_left :]
    return np.flatnonzero(color_mask(lane, role).any(axis=1))


def png_chunk_types(data: bytes) -> list[bytes]:
    types, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        types.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return types


def test_same_epoch_gives_the_same_png_bytes(night):
    first = render.render_png(night.data[5])
    assert first == render.render_png(night.data[5].copy())
    assert first != render.render_png(night.data[6])
    # Only pixel data: no text, time or physical-size chunks that could vary between runs.
    assert set(png_chunk_types(first)) == {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
    assert render.reference_png(night.data[5]) == render.reference_png(night.data[5])


def test_image_size_and_mode(night):
    with Image.open(io.BytesIO(render.render_png(night.data[0]))) as image:
        assert image.size == (448, 224) and image.mode == "P"
    with Image.open(io.BytesIO(render.render_png(night.data[0], width=600, height=300))) as image:
        assert image.size == (600, 300)
    assert render.render_image(night.data[0]).shape == (224, 448, 3)
    assert render.reference_image(night.data[0]).shape == (224, 448, 3)


def test_75_uv_peak_to_peak_sine_spans_the_reference_band():
    blank = render.render_image(quiet_epoch())
    lay = render.layout(render.ImageOptions())
    top, height = lay.lanes["eeg"]
    plot = blank[top : top + height, lay.plot_left :]
    edge_rows = np.flatnonzero(color_mask(plot, "band_edge").any(axis=1))
    band_top, band_bottom = edge_rows.min(), edge_rows.max()
    assert band_bottom - band_top > 15  # the band is drawn, and wide enough to read

    # Near-silent EOG and EMG: an autoscaled image would blow the EEG up to the lane's height.
    sine = render.render_image(quiet_epoch(eeg=37.5 * np.sin(2 * np.pi * T), eog=T * 0.1))
    rows = lane_rows(sine, "eeg")
    assert abs(rows.min() - band_top) <= 1 and abs(rows.max() - band_bottom) <= 1

    double = lane_rows(render.render_image(quiet_epoch(eeg=75 * np.sin(2 * np.pi * T))), "eeg")
    assert np.ptp(double) == pytest.approx(2 * np.ptp(rows), abs=2)

    # Per-epoch scaling (±3 SD) would draw any sine at the same height, unrelated to the band.
    for amplitude in (37.5, 75):
        auto = render.render_image(
            quiet_epoch(eeg=amplitude * np.sin(2 * np.pi * T)), autoscale=True
        )
        expected = height * amplitude / (render.AUTOSCALE_SD * amplitude / np.sqrt(2))
        assert np.ptp(lane_rows(auto, "eeg")) == pytest.approx(expected, abs=2)


def test_scale_is_fixed_low_and_high_amplitude_epochs_differ_in_extent():
    noise = np.random.default_rng(0).standard_normal((3, EPOCH_SAMPLES))
    limits = np.array([render.SCALES[role].limit_uv for role in ("eeg", "eog", "emg")])
    noise *= limits[:, None]  # unit: each lane's half-height
    low, high = render.render_image(0.05 * noise), render.render_image(0.2 * noise)
    for role in ("eeg", "eog", "emg"):
        assert np.ptp(lane_rows(high, role)) > 2.5 * np.ptp(lane_rows(low, role))
    auto_low = render.render_image(0.05 * noise, autoscale=True)
    auto_high = render.render_image(0.2 * noise, autoscale=True)
    assert np.ptp(lane_rows(auto_low, "eeg")) == pytest.approx(
        np.ptp(lane_rows(auto_high, "eeg")), abs=2
    )


def test_out_of_range_values_are_clipped_with_a_mark():
    eeg = 20 * np.sin(2 * np.pi * T)
    eeg[(T >= 10) & (T < 11)] = 400.0  # far above the EEG lane's +150 µV
    emg = np.zeros(EPOCH_SAMPLES)
    emg[(T >= 20) & (T < 20.5)] = -200.0  # below the EMG lane's -30 µV
    image = render.render_image(quiet_epoch(eeg=eeg, emg=emg))
    lay = render.layout(render.ImageOptions())
    start, stop = lay.center_columns
    px_per_s = lay.slot_width / 30
    for role, seconds, edge in (("eeg", 10.5, "top"), ("emg", 20.25, "bottom")):
        top, height = lay.lanes[role]
        marks = color_mask(image[top : top + height, start:stop], "clip")
        rows, cols = np.nonzero(marks)
        assert rows.size, f"no clipping mark in the {role} lane"
        assert (rows < 5).all() if edge == "top" else (rows >= height - 5).all()
        assert np.abs(cols - seconds * px_per_s).max() < px_per_s
    assert not color_mask(render.render_image(quiet_epoch(eeg=20 * np.sin(T))), "clip").any()


def test_nan_samples_are_drawn_as_a_gap():
    eeg = 20 * np.sin(2 * np.pi * T)
    eeg[(T >= 10) & (T < 20)] = np.nan
    image = render.render_image(quiet_epoch(eeg=eeg))
    lay = render.layout(render.ImageOptions())
    start = lay.center_columns[0]
    top, height = lay.lanes["eeg"]
    drawn = color_mask(image[top : top + height], "eeg").any(axis=0)
    drawn[: lay.plot_left] = False
    px_per_s = lay.slot_width / 30
    gap = slice(start + int(10 * px_per_s) + 1, start + int(20 * px_per_s) - 1)
    assert not drawn[gap].any()
    assert drawn[start + 1 : start + int(9 * px_per_s)].all()
    assert drawn[start + int(21 * px_per_s) : start + lay.slot_width].all()


def test_grayscale_images_are_single_channel(night):
    pixels = render.render_image(night.data[3], grayscale=True)
    assert pixels.ndim == 2 and pixels.shape == (224, 448)
    trace_grey = render.luma(np.array(render.COLORS["eeg"]))
    lay = render.layout(render.ImageOptions(grayscale=True))
    top, height = lay.lanes["eeg"]
    assert (pixels[top : top + height] == trace_grey).sum() > 300
    with Image.open(io.BytesIO(render.render_png(night.data[3], grayscale=True))) as image:
        assert image.mode == "L"
        assert np.array_equal(np.asarray(image), pixels)


def test_line_width_thickens_the_trace(night):
    thin = color_mask(render.render_image(night.data[3]), "eeg").sum()
    thick = color_mask(render.render_image(night.data[3], line_width=3), "eeg").sum()
    assert thick > 1.5 * thin


def test_context_epochs_share_the_width_and_are_drawn_lighter(night):
    epoch, before, after = night.data[10], night.data[9], night.data[11]
    alone = render.render_image(epoch)
    wide = render.render_image(epoch, before, after, context=1)
    lay = render.layout(render.ImageOptions(context=1))
    plot = slice(lay.plot_left, None)
    center_columns = color_mask(wide[:, plot], "eeg").any(axis=0)
    assert center_columns.sum() < 0.4 * color_mask(alone[:, plot], "eeg").any(axis=0).sum()
    center_columns = np.concatenate([np.zeros(lay.plot_left, bool), center_columns])
    start, stop = lay.center_columns
    assert not center_columns[:start].any() and not center_columns[stop:].any()
    context_columns = color_mask(wide, "context").any(axis=0)
    assert context_columns[:start].sum() > 0.9 * lay.slot_width
    assert context_columns[stop:].sum() > 0.9 * lay.slot_width
    # A missing neighbour (first epoch of a night) leaves its slot empty.
    first = color_mask(render.render_image(epoch, None, after, context=1), "context")
    assert not first.any(axis=0)[:start].any()


@pytest.mark.parametrize("stage", STAGES)
def test_fast_renderer_matches_the_matplotlib_reference(night, stage):
    rows = np.flatnonzero(night.manifest["stage"].to_numpy() == stage)
    assert rows.size, f"the simulated hour has no {stage} epoch"
    for row in rows[:: max(1, rows.size // 2)][:2]:
        fast = render.render_image(night.data[row])
        reference = render.reference_image(night.data[row])
        assert render.parity_score(fast, reference) > 0.9


def test_parity_score_fails_for_a_wrong_image(night):
    fast = render.render_image(night.data[20])
    other_epoch = render.reference_image(night.data[40])
    double_scale = render.reference_image(2 * night.data[20])
    assert render.parity_score(fast, other_epoch) < 0.5
    assert render.parity_score(fast, double_scale) < 0.5


def test_bad_input_raises_data_error(night):
    with pytest.raises(DataError, match="3 channels"):
        render.render_png(night.data[0][:2])
    with pytest.raises(DataError, match="3000 samples"):
        render.render_png(np.zeros((3, 2560)))
    with pytest.raises(DataError, match="256 Hz"):
        render.render_png(night.data[0], sfreq=256)
    with pytest.raises(DataError, match="previous epochs"):
        render.render_png(night.data[1], np.zeros((3, 100)), context=1)
    with pytest.raises(DataError, match="3 channels"):
        render.reference_png(np.zeros(EPOCH_SAMPLES))
    with pytest.raises(ValueError, match="context"):
        render.render_png(night.data[0], context=9)
    with pytest.raises(TypeError):
        render.render_png(night.data[0], color="red")


def subset(night: Epochs, n: int) -> Epochs:
    return Epochs(
        data=night.data[:n],
        manifest=night.manifest.iloc[:n].reset_index(drop=True),
        dataset=night.dataset,
        subject=night.subject,
        night=night.night,
        source_hash=night.source_hash,
    )


def test_render_dataset_is_content_addressed_and_skips_existing_images(night, tmp_path):
    epochs = subset(night, 6)
    table = render.render_dataset(epochs, [0, 2, 4], tmp_path)
    assert list(table.index) == [0, 2, 4] and table["rendered"].all()
    assert table["stage"].tolist() == epochs.manifest["stage"].iloc[[0, 2, 4]].tolist()
    for row, path in zip(table.index, table["image"], strict=True):
        assert open(path, "rb").read() == render.render_png(epochs.data[row])
    again = render.render_dataset(epochs, [0, 2, 4], tmp_path)
    assert not again["rendered"].any() and again["image"].tolist() == table["image"].tolist()
    Path(table["image"].iloc[1]).unlink()
    third = render.render_dataset(epochs, [0, 2, 4], tmp_path)
    assert third["rendered"].tolist() == [False, True, False]
    grey = render.render_dataset(epochs, [0], tmp_path, grayscale=True)
    assert grey["image"].iloc[0] != table["image"].iloc[0] and grey["rendered"].all()


def test_render_dataset_draws_neighbours_from_the_store(night, tmp_path):
    store = EpochStore(tmp_path / "epochs.h5")
    store.append(subset(night, 5))
    table = render.render_dataset(store, [0, 2], tmp_path / "images", context=1)
    data = store.read([0, 1, 2, 3])
    assert open(table["image"].iloc[0], "rb").read() == render.render_png(
        data[0], None, data[1], context=1
    )
    assert open(table["image"].iloc[1], "rb").read() == render.render_png(
        data[2], data[1], data[3], context=1
    )


def test_a_night_drawn_against_its_chin_level_looks_the_same_at_any_chin_gain(night, tmp_path):
    epochs = subset(night, 12)
    louder = dataclasses.replace(epochs, data=epochs.data * np.array([1, 1, 1.7])[:, None])
    relative = {"context": 1, "chin_reference_uv": 2.0}
    quiet_night = render.render_dataset(epochs, [3, 7], tmp_path / "a", **relative)
    loud_night = render.render_dataset(louder, [3, 7], tmp_path / "b", **relative)
    read = [[open(p, "rb").read() for p in t["image"]] for t in (quiet_night, loud_night)]
    assert read[0] == read[1]
    levels = [render.night_chin_levels(e)["chin_uv"].item() for e in (epochs, louder)]
    assert levels[1] == pytest.approx(1.7 * levels[0])
    as_recorded = render.render_dataset(louder, [3, 7], tmp_path / "c", context=1)
    assert [open(p, "rb").read() for p in as_recorded["image"]] != read[1]


def test_chin_level_is_the_median_epoch_rms_and_skips_missing_chin():
    rng = np.random.default_rng(0)
    emg = rng.normal(0, 1, (5, EPOCH_SAMPLES)) * np.array([1, 2, 3, 4, 100])[:, None]
    assert render.chin_level(emg) == pytest.approx(3, rel=0.05)
    emg[4] = np.nan
    assert render.chin_level(emg) == pytest.approx(2.5, rel=0.05)
    assert np.isnan(render.chin_level(np.full((2, EPOCH_SAMPLES), np.nan)))


def test_one_epoch_cannot_be_drawn_against_its_night(night):
    with pytest.raises(DataError, match="render whole nights with render_dataset"):
        render.render_png(night.data[0], chin_reference_uv=2.0)
    with pytest.raises(ValueError, match="chin_reference_uv"):
        render.ImageOptions(chin_reference_uv=-1)


def test_serial_and_dask_give_the_same_image_files(night, tmp_path):
    epochs = subset(night, 8)
    serial = render.render_dataset(epochs, None, tmp_path / "serial", SerialExecutor(), 3)
    with DaskExecutor(n_workers=1) as executor:
        dask = render.render_dataset(epochs, None, tmp_path / "dask", executor, batch_size=3)
    assert dask["rendered"].all() and len(dask) == 8
    for a, b in zip(serial["image"], dask["image"], strict=True):
        assert a.split("/")[-1] == b.split("/")[-1]
        assert open(a, "rb").read() == open(b, "rb").read()


def test_lane_ink_grows_with_the_trace_and_is_zero_for_a_gap(night):
    epoch = night.data[0].copy()
    thin = render.lane_ink(render.render_png(epoch))
    thick = render.lane_ink(render.render_png(epoch, line_width=3))
    assert all(0 < thin[role] < thick[role] < 1 for role in render.ROLES)
    louder = epoch.copy()
    louder[2] *= 8  # a chin eight times as loud covers more of its lane, the others unchanged
    loud = render.lane_ink(render.render_png(louder))
    assert loud["emg"] > thin["emg"] and loud["eeg"] == thin["eeg"]
    epoch[1] = np.nan  # a missing EOG is a gap, not ink
    assert render.lane_ink(render.render_png(epoch))["eog"] == 0
    grey = render.lane_ink(render.render_png(epoch, grayscale=True), grayscale=True)
    assert grey["eeg"] > 0


def test_a_stored_epoch_is_measured_as_it_was_drawn(night, tmp_path):
    row = int(np.flatnonzero(night.manifest["stage"].to_numpy() == "N2")[0])
    png, recorded = render.stored_lane_ink(night, row, out_dir=tmp_path)
    drawn = render.render_dataset(night, [row], out_dir=tmp_path)
    assert png == Path(drawn["image"].iloc[0]).read_bytes()
    assert recorded == render.lane_ink(png)
    _, against_night = render.stored_lane_ink(night, row, out_dir=tmp_path, chin_reference_uv=2.0)
    assert against_night["emg"] != recorded["emg"] and against_night["eeg"] == recorded["eeg"]


def _noise_epoch(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, [[20.0], [30.0], [3.0]], (3, EPOCH_SAMPLES))


def _white_png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, "PNG")
    return buffer.getvalue()


def test_lane_problems_name_the_lane_that_holds_nothing_and_the_wrong_size():
    opts = render.ImageOptions(width=448, height=224, context=1)
    window = [_noise_epoch(k) for k in range(3)]
    assert (
        render.lane_problems(render.render_png(window[1], window[0], window[2], opts), opts) == {}
    )
    flat, missing = window[1].copy(), window[1].copy()
    flat[2], missing[1] = 0.0, np.nan
    flat_png = render.render_png(flat, window[0], window[2], opts)
    assert render.lane_problems(flat_png, opts) == {"emg": "the EMG lane holds only a flat line"}
    missing_png = render.render_png(missing, window[0], window[2], opts)
    assert render.lane_problems(missing_png, opts) == {"eog": "the EOG lane holds no trace"}
    assert set(render.lane_problems(_white_png((448, 224)), opts)) == set(render.ROLES)
    assert (
        "is 224x224 px, not the 448x224"
        in render.lane_problems(_white_png((224, 224)), opts)["image"]
    )
    assert render.lane_problems(b"not a png", opts) == {"image": "the image is not a readable PNG"}


def test_a_quiet_chin_is_not_a_flat_line():
    """REM atonia: a chin of 0.3 µV RMS, below the quietest amplifier's noise floor in the
    cohort (0.5 µV), still draws a trace that moves, even at the absolute scale."""
    opts = render.ImageOptions(width=448, height=224, context=1)
    quiet = _noise_epoch(1)
    quiet[2] *= 0.1
    png = render.render_png(quiet, _noise_epoch(0), _noise_epoch(2), opts)
    assert "emg" not in render.lane_problems(png, opts)
