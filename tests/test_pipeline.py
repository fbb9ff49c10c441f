"""Tests of the executors, the on-disk epoch store and streaming a dataset into it."""

import h5py
import numpy as np
import pandas as pd
import pytest

from sleepvlm import pipeline
from sleepvlm.data.records import DataError, Recording
from sleepvlm.pipeline import (
    DaskExecutor,
    EpochStore,
    SerialExecutor,
    epoch_source,
    get_executor,
    preprocess_dataset,
)
from sleepvlm.signal import EPOCH_SAMPLES, EXCLUSION_REASONS, QualityWarning, epoch_recording

CHANNELS = {"eeg": "F4-M1", "eog": "E1-M2", "emg": "CHIN"}


def noise_night(subject, n_epochs=4, sfreq=256.0, roles=("eeg", "eog", "emg"), seed=0):
    rng = np.random.default_rng(seed)
    n = int(30 * n_epochs * sfreq)
    return Recording(
        dataset="dcsm",
        subject=subject,
        night="1",
        signals={CHANNELS[r]: 20 * rng.standard_normal(n) for r in roles},
        sfreq={CHANNELS[r]: sfreq for r in roles},
        stages=np.asarray((["W", "N2", "MOVE", "REM"] * n_epochs)[:n_epochs], dtype=object),
        roles={r: CHANNELS[r] for r in roles},
        source_hash=f"hash-{subject}",
        line_freq=50.0,
        simulated=True,
    )


@pytest.fixture(scope="module")
def nights():
    return [
        noise_night("s1", seed=1),
        noise_night("s2", n_epochs=5, sfreq=200.0, seed=2),
        noise_night("s3", roles=("eeg",), seed=3),
    ]


@pytest.fixture(scope="module")
def dask_executor():
    with DaskExecutor(n_workers=2) as executor:
        yield executor


def test_store_round_trip(tmp_path, nights):
    store = EpochStore(tmp_path / "dcsm.h5", dataset="dcsm")
    parts = [epoch_recording(rec) for rec in nights]
    assert all(store.append(part) for part in parts)
    everything = np.concatenate([p.data for p in parts])
    assert len(store) == len(everything) == 3 + 4 + 3
    manifest = store.manifest()
    expected = pd.concat([p.manifest for p in parts], ignore_index=True)
    pd.testing.assert_frame_equal(manifest, expected, check_dtype=False)
    rows = [7, 0, 7, 3]
    np.testing.assert_array_equal(store.read(rows), everything[rows])
    again = store.read_record("s2", "1")
    np.testing.assert_array_equal(again.data, parts[1].data)
    assert list(again.manifest["epoch"]) == list(parts[1].manifest["epoch"])
    assert again.exclusions == parts[1].exclusions and again.source_hash == "hash-s2"
    assert store.exclusions()["movement"] == 3
    assert set(store.exclusions()) == set(EXCLUSION_REASONS)


def test_store_reopens_from_disk(tmp_path, nights):
    path = tmp_path / "dcsm.h5"
    EpochStore(path).append(epoch_recording(nights[0]))
    reopened = EpochStore(path)
    assert reopened.dataset == "dcsm"
    assert "hash-s1" in reopened and len(reopened) == 3


def test_same_recording_is_stored_once(tmp_path, nights):
    store = EpochStore(tmp_path / "dcsm.h5")
    epochs = epoch_recording(nights[0])
    assert store.append(epochs)
    assert not store.append(epochs)
    assert len(store) == len(epochs) and len(store.records()) == 1


def test_store_is_chunked_by_epochs_and_uncompressed(tmp_path, nights):
    store = EpochStore(tmp_path / "dcsm.h5")
    epochs = epoch_recording(nights[2])
    store.append(epochs)
    with h5py.File(store.path, "r") as fh:
        # a few epochs read at random touch a few small chunks and decompress nothing
        assert fh["data"].compression is None
        assert fh["data"].chunks == (pipeline._CHUNK_EPOCHS, *epochs.data.shape[1:])
    rows = [len(epochs) - 1, 0]
    np.testing.assert_array_equal(store.read(rows), epochs.data[rows])


def test_recording_with_no_kept_epoch_is_registered(tmp_path):
    rec = noise_night("s9", n_epochs=1)
    rec.stages = np.asarray(["MOVE"], dtype=object)
    store = EpochStore(tmp_path / "dcsm.h5")
    assert store.append(epoch_recording(rec))
    assert len(store) == 0 and "hash-s9" in store
    assert store.exclusions()["movement"] == 1
    assert store.read_record("s9", "1").data.shape == (0, 3, EPOCH_SAMPLES)


def test_store_refuses_another_dataset(tmp_path, nights):
    path = tmp_path / "dcsm.h5"
    EpochStore(path).append(epoch_recording(nights[0]))
    other = epoch_recording(nights[1])
    other.dataset = "shhs"
    with pytest.raises(DataError, match="one store per dataset"):
        EpochStore(path).append(other)
    with pytest.raises(DataError, match="holds dataset 'dcsm'"):
        EpochStore(path, dataset="shhs")


def test_store_errors_name_the_problem(tmp_path, nights):
    store = EpochStore(tmp_path / "dcsm.h5")
    store.append(epoch_recording(nights[0]))
    with pytest.raises(DataError, match="no recording s7/1"):
        store.read_record("s7", "1")
    with pytest.raises(IndexError):
        store.read([99])
    bad = epoch_recording(nights[1])
    bad.data = bad.data[:, :2]
    with pytest.raises(DataError, match="expected"):
        store.append(bad)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not an hdf5 file")
    with pytest.raises(DataError, match="corrupt.h5"):
        EpochStore(corrupt)


def test_get_executor():
    assert isinstance(get_executor("serial"), SerialExecutor)
    executor = get_executor("dask", n_workers=3)
    assert isinstance(executor, DaskExecutor) and executor.n_workers == 3
    with pytest.raises(ValueError, match="serial"):
        get_executor("spark")


def test_serial_map_keeps_input_order():
    with SerialExecutor() as executor:
        assert executor.map(str, [3, 1, 2]) == ["3", "1", "2"]


def test_dask_requires_context():
    with pytest.raises(RuntimeError, match="with DaskExecutor"):
        DaskExecutor().map(str, [1])


def test_serial_and_dask_give_identical_epochs(nights, dask_executor):
    with SerialExecutor() as serial:
        expected = serial.map(epoch_recording, nights)
    got = dask_executor.map(epoch_recording, nights)
    assert [e.label for e in got] == [e.label for e in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
        pd.testing.assert_frame_equal(a.manifest, b.manifest)
        assert a.exclusions == b.exclusions


def test_preprocess_dataset_serial_and_dask_fill_identical_stores(tmp_path, nights, dask_executor):
    serial_store = EpochStore(tmp_path / "serial.h5")
    dask_store = EpochStore(tmp_path / "dask.h5")
    serial_summary = preprocess_dataset(nights, serial_store)
    dask_summary = preprocess_dataset(nights, dask_store, dask_executor)
    pd.testing.assert_frame_equal(serial_summary, dask_summary)
    assert serial_summary["appended"].all()
    pd.testing.assert_frame_equal(serial_store.manifest(), dask_store.manifest())
    rows = np.arange(len(serial_store))
    np.testing.assert_array_equal(serial_store.read(rows), dask_store.read(rows))
    again = preprocess_dataset(nights, dask_store, dask_executor)
    assert not again["appended"].any() and len(dask_store) == len(serial_store)


def test_preprocess_dataset_with_loader_and_quality_warning(tmp_path):
    library = {"s1": noise_night("s1"), "s2": noise_night("s2", seed=5)}
    library["s2"].signals["CHIN"][:3000] = np.nan

    store = EpochStore(tmp_path / "dcsm.h5")
    with pytest.warns(QualityWarning, match="dcsm/s2/1"):
        summary = preprocess_dataset(["s1", "s2"], store, load=library.__getitem__)
    assert list(summary["label"]) == ["dcsm/s1/1", "dcsm/s2/1"]
    assert list(summary["nan"]) == [0, 1]
    assert store.exclusions()["nan"] == 1


def test_epoch_source_accepts_loaders_and_rejects_bare_paths():
    rec = noise_night("s1")
    assert len(epoch_source(lambda: rec)) == len(epoch_source(rec))
    with pytest.raises(DataError, match="load="):
        epoch_source("/data/s1/psg.h5")
