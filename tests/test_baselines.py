import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from sleepvlm.baselines import (
    BalancedBatchSampler,
    BaselineConfig,
    BaselineError,
    WindowDataset,
    build_model,
    class_aware_weights,
    cross_dataset,
    inference_speed,
    layer_table,
    load_checkpoint,
    load_split,
    night_logits,
    predict_manifest,
    resolve_device,
    sample_rows,
    save_checkpoint,
    train_baseline,
    trained_baseline,
    with_center_scale,
)
from sleepvlm.baselines import train as train_module
from sleepvlm.data.records import STAGES
from sleepvlm.metrics import read_results, write_result
from sleepvlm.pipeline import EpochStore
from sleepvlm.prepare import PreparedDataset
from sleepvlm.signal import EPOCH_S, EPOCH_SAMPLES, MANIFEST_COLUMNS, Epochs
from sleepvlm.splits import assign_splits, balanced_sample

#: A night: each stage held for a run of epochs, so windows hold mostly one stage.
NIGHT = np.repeat([0, 1, 2, 3, 2, 4, 0], 6)
TINY = {"width": 4, "seq_len": 4, "afr_channels": 10, "heads": 2, "encoder_layers": 1}


def _night(dataset: str, subject: int, rng) -> Epochs:
    """An easy night: each stage is a sine of its own frequency (and amplitude) in noise."""
    t = np.arange(EPOCH_SAMPLES) / 100
    freq = np.array([10.0, 6.0, 13.0, 1.0, 4.0])[NIGHT]
    eeg = 40 * np.sin(2 * np.pi * freq[:, None] * t) + rng.normal(0, 10, (len(NIGHT), len(t)))
    data = np.zeros((len(NIGHT), 3, EPOCH_SAMPLES), dtype=np.float32)
    data[:, 0] = eeg
    data[:, 1] = rng.normal(0, 20, (len(NIGHT), len(t)))
    manifest = pd.DataFrame(
        {
            "dataset": dataset,
            "subject": f"s{subject:02d}",
            "night": "1",
            "epoch": np.arange(len(NIGHT)),
            "onset": EPOCH_S * np.arange(len(NIGHT)),
            "stage": np.asarray(STAGES)[NIGHT],
            "source_hash": f"{dataset}-{subject}",
            "has_eog": True,
            "has_emg": False,
            "simulated": True,
        },
        columns=list(MANIFEST_COLUMNS),
    )
    return Epochs(data, manifest, {}, dataset, f"s{subject:02d}", "1", f"{dataset}-{subject}")


def _prepared(folder, dataset: str = "dcsm", subjects: int = 10) -> PreparedDataset:
    store = EpochStore(folder / f"{dataset}.h5", dataset)
    rng = np.random.default_rng(1)
    for subject in range(subjects):
        store.append(_night(dataset, subject, rng))
    return PreparedDataset(dataset, store, assign_splits(store.manifest()), True, "")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and do not slow down beside other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    return _prepared(tmp_path)


def _config(model: str, **changes) -> BaselineConfig:
    values = {
        "model": model,
        **TINY,
        "passes": 2,
        "samples_per_pass": 40,
        "batch_size": 10,
        "dropout": 0.1,
        **changes,
    }
    return BaselineConfig(**values)


@pytest.mark.parametrize("model", ["deepsleepnet", "attnsleep"])
@pytest.mark.parametrize("channels", [("eeg",), ("eeg", "eog", "emg")])
def test_output_shapes(model, channels):
    config = _config(model, channels=channels)
    net = build_model(config).eval()
    x = torch.zeros(3, len(channels), EPOCH_SAMPLES)
    if config.sequence:
        assert net(x.repeat(2, 1, 1).reshape(2, 3, len(channels), -1)).shape == (2, 3, 5)
    else:
        assert net(x).shape == (3, 5)
    assert night_logits(net, config, x.numpy(), torch.device("cpu")).shape == (3, 5)


def test_layer_table_follows_the_modules():
    config = _config("attnsleep")
    net = build_model(config)
    table = layer_table(net, config)
    assert table.attrs["total_parameters"] == sum(p.numel() for p in net.parameters())
    assert table["parameters"].sum() == table.attrs["total_parameters"]
    assert table.iloc[-1]["module"] == "classifier" and table.iloc[-1]["output"] == "5"


def test_training_reduces_the_loss(prepared):
    config = _config("attnsleep", passes=4, samples_per_pass=100, lr=3e-3)
    trained = train_baseline(prepared, config, progress=False)
    losses = trained.history["train_loss"]
    assert losses.iloc[-1] < 0.8 * losses.iloc[0]
    assert trained.history["val_kappa"].max() > 0.5
    assert trained.best_pass == trained.history.loc[trained.history["val_kappa"].idxmax(), "pass"]


def test_no_test_or_validation_subject_is_ever_trained_on(prepared):
    config = _config("deepsleepnet")
    train = load_split(prepared, "train", config)
    dataset = WindowDataset(train, config)
    sampler = BalancedBatchSampler(train.y, dataset.usable, 10, 30, seed=0)
    anchors = np.concatenate(list(sampler))
    store_rows = train.rows[dataset.window_rows(anchors)].ravel()
    splits = prepared.manifest.loc[store_rows, "split"]
    assert set(splits) == {"train"}
    assert set(prepared.manifest.loc[load_split(prepared, "val", config).rows, "split"]) == {"val"}


def test_windows_stay_inside_one_night(prepared):
    config = _config("deepsleepnet", seq_len=8)
    train = load_split(prepared, "train", config)
    rows = WindowDataset(train, config).window_rows(np.arange(len(train)))
    assert (train.night[rows] == train.night[rows[:, :1]]).all()
    assert (np.diff(rows, axis=1) == 1).all()
    assert ((rows == np.arange(len(train))[:, None]).sum(axis=1) == 1).all()


def test_balanced_batches_are_balanced():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 200 + [3] * 10 + [4] * 20)
    sampler = BalancedBatchSampler(labels, np.ones(len(labels), bool), 12, 20, seed=3)
    for batch in sampler:
        counts = np.bincount(labels[batch], minlength=5)
        assert len(batch) == 12 and counts.min() >= 2 and counts.max() <= 3


def test_a_stage_missing_from_training_is_explained():
    with pytest.raises(BaselineError, match=r"stage\(s\) \['N3'\]"):
        BalancedBatchSampler(np.array([0, 1, 2, 4]), np.ones(4, bool), 5, 1, seed=0)


def test_training_is_seeded(prepared):
    config = _config("deepsleepnet")
    a = train_baseline(prepared, config, progress=False).model.state_dict()
    b = train_baseline(prepared, config, progress=False).model.state_dict()
    c = train_baseline(prepared, _config("deepsleepnet", seed=1), progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c.model.state_dict()[k]) for k in a)


def test_checkpoint_round_trip_gives_identical_predictions(prepared, tmp_path):
    trained = train_baseline(prepared, _config("deepsleepnet"), progress=False)
    path = save_checkpoint(trained, tmp_path / "ckpt" / "model")
    assert json.loads(path.read_text())["config"]["model"] == "deepsleepnet"
    loaded = load_checkpoint(tmp_path / "ckpt" / "model")
    test = prepared.manifest[prepared.manifest["split"] == "test"]
    before = predict_manifest(trained, prepared, test)
    assert before.isin(STAGES).all()
    pd.testing.assert_series_equal(before, predict_manifest(loaded, prepared, test))
    pd.testing.assert_frame_equal(loaded.history, trained.history, check_dtype=False)


def test_broken_checkpoints_are_explained(tmp_path):
    with pytest.raises(BaselineError, match="checkpoint file missing"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(BaselineError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "bad")


def test_trained_models_are_cached(prepared, monkeypatch):
    config = _config("attnsleep")
    first = trained_baseline(prepared, config, progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached checkpoint should have been loaded")

    monkeypatch.setattr(train_module, "train_baseline", no_training)
    again = trained_baseline(prepared, config, progress=False)
    assert again.key == first.key and again.train_seconds == first.train_seconds
    with pytest.raises(AssertionError, match="cached checkpoint"):
        trained_baseline(prepared, _config("attnsleep", width=5), progress=False)


def test_cuda_without_a_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BaselineError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(BaselineError, match="unknown device"):
        resolve_device("gpu please")
    assert resolve_device("cpu").type == "cpu"


def test_bad_configs_are_explained():
    with pytest.raises(BaselineError, match="model 'lstm'"):
        BaselineConfig(model="lstm")
    with pytest.raises(BaselineError, match="channels"):
        BaselineConfig(model="attnsleep", channels=("ecg",))
    with pytest.raises(BaselineError, match="heads=3 does not divide"):
        build_model(BaselineConfig(model="attnsleep", heads=3))


def test_class_aware_weights_favour_rare_classes():
    equal = class_aware_weights(np.ones(5)).numpy()
    np.testing.assert_allclose(equal, [0.3, 0.4, 0.3, 0.2, 0.3])
    skewed = class_aware_weights(np.array([100, 10, 400, 50, 100])).numpy()
    assert skewed.argmax() == 1 and skewed[1] > equal[1]


def test_cross_dataset_records_and_speed(prepared, tmp_path):
    other = _prepared(tmp_path, "isruc")
    trained = train_baseline(prepared, _config("attnsleep"), progress=False)
    counts = {s: 2 for s in STAGES}
    samples = {
        p.dataset: sample_rows(p, balanced_sample(p.manifest, counts, seed=0))
        for p in (prepared, other)
    }
    table, records = cross_dataset(
        {"dcsm": trained}, {"dcsm": prepared, "isruc": other}, samples, n_boot=10
    )
    assert list(zip(table["test"], table["epochs"], table["n"], strict=True)) == [
        ("dcsm", "balanced sample", 10),
        ("dcsm", "test nights", 2 * len(NIGHT)),
        ("isruc", "balanced sample", 10),
    ]
    for record in records:
        write_result(record, tmp_path / "results")
    results = read_results(tmp_path / "results")
    assert set(results["prompt"]) == {"trained-on-dcsm"} and set(results["modality"]) == {"signal"}
    night = prepared.store.read(np.arange(len(NIGHT)))
    assert inference_speed(trained, night, repeats=1) > 0


def test_a_model_given_another_centers_scale_reads_it_as_its_own(prepared, tmp_path):
    """An amplifier three times as sensitive: with the center's own input scale the model
    sees the same normalised input, so it predicts what it predicted at home."""
    trained = train_baseline(prepared, _config("attnsleep"), progress=False)
    store = EpochStore(tmp_path / "loud.h5", "shhs")
    rng = np.random.default_rng(1)
    for subject in range(10):
        night = _night("shhs", subject, rng)
        store.append(dataclasses.replace(night, data=3 * night.data))
    louder = PreparedDataset("shhs", store, assign_splits(store.manifest()), True, "")
    rescaled = with_center_scale(trained, louder)
    home, away = trained.model.input_scale.scale, rescaled.model.input_scale.scale
    assert torch.allclose(away[0], 3 * home[0], rtol=0.05)  # EEG
    assert trained.model.input_scale.scale is home  # the checkpoint itself is left alone
    x = prepared.store.read(np.arange(len(NIGHT)))
    same = night_logits(trained.model, trained.config, x, torch.device("cpu"))
    loud = night_logits(rescaled.model, rescaled.config, 3 * x, torch.device("cpu"))
    # the scale is measured on other epochs (every 10th of all nights, not of the training
    # ones), so the inputs match to a few per cent, and the stages exactly
    np.testing.assert_allclose(loud, same, atol=0.05)
    assert (loud.argmax(axis=1) == same.argmax(axis=1)).all()
    unscaled = night_logits(trained.model, trained.config, 3 * x, torch.device("cpu"))
    assert np.abs(unscaled - same).max() > 0.2  # without it the louder center reads otherwise
