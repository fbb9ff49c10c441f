"""Tests of the expert text features (against the detection they come from), the prompt
templates (placeholders, hashes, versions), the chat messages of every modality, and the
features-only classifier against a shuffled-label control."""

import base64
import hashlib
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from sleepvlm import text
from sleepvlm.data.records import DataError
from sleepvlm.data.simulate import simulate_night
from sleepvlm.pipeline import EpochStore
from sleepvlm.render import render_png
from sleepvlm.rules.table import RULES
from sleepvlm.sequence import SequenceConfig, encode_epoch
from sleepvlm.signal import Epochs, epoch_recording

SUBJECTS = (0, 1, 2, 3)  # 0-2 train the classifier, 3 tests it


def _epochs(subject: int, hours: float = 1.5, roles=("eeg", "eog", "emg")) -> Epochs:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return epoch_recording(simulate_night("dcsm", subject, hours=hours), roles=roles)


@pytest.fixture(scope="module")
def nights() -> dict[int, text.NightFeatures]:
    return {s: text.night_features(_epochs(s)) for s in SUBJECTS}


@pytest.fixture(scope="module")
def night(nights) -> text.NightFeatures:
    return nights[0]


def _copy(epochs: Epochs, data: np.ndarray | None = None, manifest=None) -> Epochs:
    return Epochs(
        data=epochs.data.copy() if data is None else data,
        manifest=epochs.manifest if manifest is None else manifest,
        dataset=epochs.dataset,
        subject=epochs.subject,
        night=epochs.night,
    )


def _lines(night: text.NightFeatures, epoch: int, rule: str) -> list[str]:
    return [line.render() for line in night.lines(epoch) if rule in line.rules]


# --- features ----------------------------------------------------------------------------------


def test_n2_epoch_lists_its_spindles_with_times_and_rule(night):
    det, table = night.detection, night.table
    candidates = table.index[(table["stage"] == "N2") & (table["n_spindle"] >= 1)]
    assert len(candidates), "the simulated night should hold N2 epochs with detected spindles"
    epoch = candidates[0]
    onset = det.epochs.loc[epoch, "onset"]
    spindles = det.events[(det.events["kind"] == "spindle") & (det.events["epoch"] == epoch)]
    (line,) = [
        ln
        for ln in _lines(night, epoch, "N2.spindle")
        if "previous" not in ln and "power" not in ln
    ]
    assert line.startswith("[N2.spindle] ")
    n = len(spindles)
    assert f"{n} sleep spindle{'s' if n > 1 else ''} at" in line
    for ev in spindles.head(text.MAX_LISTED).itertuples():
        start = round(ev.onset - onset, 2)
        assert f"{start:.1f}–{round(start + ev.duration, 2):.1f} s" in line


def test_slow_wave_share_follows_the_detection(night):
    det, table = night.detection, night.table
    met = det.criteria["N3.sw20"].astype("boolean")
    n3 = table.index[(table["stage"] == "N3") & met.reindex(table.index).fillna(False)]
    assert len(n3), "the simulated night should hold N3 epochs meeting the 20 % criterion"
    for epoch in (n3[0], table.index[~met.reindex(table.index).fillna(True)][0]):
        coverage = det.epochs.loc[epoch, "sw_coverage"]
        (line,) = _lines(night, epoch, "N3.sw20")[1:]  # the first is the spectrum line
        share = float(re.search(r"cover (\d+\.\d) %", line)[1])
        assert share == pytest.approx(100 * coverage, abs=0.05)
        assert (share >= 20) == bool(met[epoch])


def test_every_line_names_known_rules_and_stays_in_order(night):
    first = [line.rules for line in night.lines(night.table.index[0])]
    for epoch in night.table.index[:20]:
        lines = night.lines(epoch)
        assert [line.rules for line in lines] == first  # same lines, same order, every epoch
        for line in lines:
            assert set(line.rules) <= set(RULES)
            assert line.render().startswith("[" + ", ".join(line.rules) + "]")


def test_text_is_deterministic_with_fixed_decimals(night):
    first, again = (text.night_features(_epochs(2, hours=0.5)) for _ in range(2))
    pd.testing.assert_series_equal(again.texts(), first.texts())
    body = "\n".join(night.texts())
    assert not re.search(r"\d\.\d{2,} %", body) and not re.search(r"\d\.\d{2,} s\b", body)
    row = night.table.iloc[3].to_dict()
    assert text.feature_text(row) == night.text(night.table.index[3])


def test_missing_eog_is_reported_not_available():
    night = text.night_features(_epochs(1, hours=0.5, roles=("eeg", "emg")))
    epoch = night.table.index[2]
    for rule in ("R.rem", "N1.sem"):
        (line,) = _lines(night, epoch, rule)
        assert "not available" in line and "EOG" in line
    assert night.table[["n_rem", "n_sem", "n_blink"]].isna().all().all()
    assert "not available" not in " ".join(_lines(night, epoch, "R.atonia"))


def test_nan_channels_give_unavailable_lines_not_a_crash():
    epochs = _epochs(1, hours=0.5)
    data = epochs.data.copy()
    data[3, 1, 100:200] = np.nan  # EOG dropout in epoch 3
    data[5, 0, :] = np.nan  # EEG lost in epoch 5
    data[7, 2, 9] = np.inf
    night = text.night_features(_copy(epochs, data))
    ids = night.table.index
    assert "not available" in " ".join(_lines(night, ids[3], "R.rem"))
    assert "not available" not in " ".join(_lines(night, ids[4], "R.rem"))
    assert all("not available" in ln for ln in _lines(night, ids[5], "N2.kcomplex")[:1])
    assert night.table.loc[ids[5], list(text.FEATURES)[:12]].isna().all()
    # the next epoch's look back at epoch 5 is not available either
    context = [ln for ln in night.lines(ids[6]) if ln.context and "N2.spindle" in ln.rules]
    assert not context[0].available
    assert "not available" in " ".join(_lines(night, ids[7], "R.atonia"))
    assert not night.table.loc[ids[7], "emg_ok"] and night.table.loc[ids[6], "emg_ok"]


def test_wrong_shapes_and_inputs_raise_a_data_error():
    epochs = _epochs(1, hours=0.25)
    cases = [
        _copy(epochs, epochs.data[:, :2]),
        _copy(epochs, epochs.data[:, :, :2999]),
        _copy(epochs, manifest=epochs.manifest.iloc[:-1]),
        _copy(epochs, epochs.data[:0], epochs.manifest.iloc[:0]),
        epochs.data,
    ]
    for bad in cases:
        with pytest.raises(DataError, match="epochs|Epochs|manifest"):
            text.night_features(bad)


def test_store_features_runs_detectors_once_per_night(tmp_path, monkeypatch):
    store = EpochStore(tmp_path / "store.h5", "dcsm")
    parts = [_epochs(s, hours=0.25) for s in (0, 1)]
    for part in parts:
        store.append(part)
    calls = []
    real = text.detect_all
    monkeypatch.setattr(text, "detect_all", lambda e, **kw: calls.append(e.label) or real(e, **kw))
    table = text.store_features(store)
    assert len(calls) == 2 and len(table) == sum(len(p) for p in parts)
    assert {"subject", "night", "epoch", "stage", *text.FEATURES} <= set(table.columns)


# --- prompts -----------------------------------------------------------------------------------


def test_every_template_has_the_placeholders_it_needs():
    for modality in text.MODALITIES:
        for variant in text.VARIANTS:
            fields = text.template_fields(modality, variant)
            assert text.INPUT_FIELD[modality] in fields
            assert (text.CRITERIA_FIELD in fields) == (variant == "expert")
            prompt = text.load_prompt(modality, variant)
            assert prompt.fields == {text.INPUT_FIELD[modality]}
            assert "W, N1, N2, N3, REM" in prompt.user
            has_criteria = all(f"[{r.id}] {r.criterion}" in prompt.system for r in RULES.values())
            assert has_criteria == (variant == "expert")


def test_hash_follows_the_text_and_the_latest_version_loads(tmp_path):
    folder = tmp_path / "prompts"
    shutil.copytree(text.prompt_folder(), folder)
    original = text.load_prompt("text", "plain", folder=folder)
    assert original.sha256 == hashlib.sha256(original.text.encode()).hexdigest()
    assert original == text.load_prompt("text", "plain")
    path = folder / "text_plain.v1.md"
    path.write_text(path.read_text().replace("name its sleep stage", "name the stage"))
    edited = text.load_prompt("text", "plain", folder=folder)
    assert edited.version == original.version and edited.sha256 != original.sha256
    (folder / "text_plain.v2.md").write_text(path.read_text() + "\nBe brief.\n")
    assert text.load_prompt("text", "plain", folder=folder).version == 2
    assert text.load_prompt("text", "plain", version=1, folder=folder).sha256 == edited.sha256


def test_broken_templates_raise(tmp_path):
    (tmp_path / "text_plain.v1.md").write_text("<!-- system -->\nHi\n<!-- user -->\nNo input.\n")
    (tmp_path / "text_expert.v1.md").write_text("no sections {{features}} {{criteria}}")
    with pytest.raises(text.TextFeatureError, match="features"):
        text.load_prompt("text", "plain", folder=tmp_path)
    with pytest.raises(text.TextFeatureError, match="system"):
        text.load_prompt("text", "expert", folder=tmp_path)
    with pytest.raises(text.TextFeatureError, match="versions"):
        text.load_prompt("image", "plain", folder=tmp_path)
    with pytest.raises(text.TextFeatureError, match="modality"):
        text.load_prompt("audio", "plain")


def test_messages_of_every_modality(night):
    epoch = _epochs(0, hours=0.25).data[2]
    png = render_png(epoch)
    image = text.render_prompt(text.load_prompt("image", "expert"), image=png)
    assert [m["role"] for m in image] == ["system", "user"]
    parts = image[1]["content"]
    (url,) = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png
    assert "{{" not in " ".join(p.get("text", "") for p in parts)

    row = night.table.iloc[5]
    features = text.render_prompt(text.load_prompt("text", "plain"), features=row)
    assert night.text(night.table.index[5]) in features[1]["content"]

    inline = encode_epoch(epoch, SequenceConfig(rate=10), fmt="text")
    seq = text.render_prompt(text.load_prompt("sequence", "plain"), sequence=inline)
    assert inline.text in seq[1]["content"] and "{{" not in seq[1]["content"]
    chatts = encode_epoch(epoch, SequenceConfig(rate=10), fmt="chatts")
    seq = text.render_prompt(text.load_prompt("sequence", "expert"), sequence=chatts)
    assert seq[1]["content"].count("<ts><ts/>") == len(chatts.timeseries) == 3


def test_render_prompt_rejects_wrong_fields():
    prompt = text.load_prompt("image", "plain")
    with pytest.raises(text.TextFeatureError, match="missing"):
        text.render_prompt(prompt)
    with pytest.raises(text.TextFeatureError, match="unexpected"):
        text.render_prompt(prompt, image=b"\x89PNG\r\n\x1a\n", features="x")
    with pytest.raises(text.TextFeatureError, match="PNG"):
        text.render_prompt(prompt, image=b"GIF89a")
    with pytest.raises(text.TextFeatureError, match="text"):
        text.render_prompt(text.load_prompt("text", "plain"), features=3.0)


# --- classifier --------------------------------------------------------------------------------


def _split_table(nights) -> pd.DataFrame:
    parts = []
    for subject, night in nights.items():
        part = night.table.reset_index()
        part["split"] = "test" if subject == SUBJECTS[-1] else "train"
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def test_features_beat_a_shuffled_label_control(nights):
    table = _split_table(nights)
    result = text.features_baseline(table)
    controls = [text.features_baseline(table, shuffle_labels=True, seed=s) for s in range(3)]
    assert result.macro_f1 > 0.2 + max(c.macro_f1 for c in controls)
    assert result.kappa > max(c.kappa for c in controls)
    assert result.confusion.to_numpy().sum() == result.n_test == (table["split"] == "test").sum()
    boosted = text.features_baseline(table, model="boosting")
    assert boosted.macro_f1 > 0.2 + max(c.macro_f1 for c in controls)
    # the macro-F1 is the mean of the per-stage F1s over the stages the test split holds
    per_stage = result.per_stage_f1()
    held = per_stage[result.confusion.sum(axis=1) > 0]
    assert held.mean() == pytest.approx(result.macro_f1)
    assert ((held >= 0) & (held <= 1)).all()


@pytest.mark.parametrize("model", ["logistic", "boosting"])
def test_a_feature_no_night_has_is_left_out_of_the_classifier(nights, model):
    table = _split_table(nights)
    result = text.features_baseline(table, model=model)
    without_eyes = text.features_baseline(table.assign(n_rem=np.nan, n_sem=np.nan), model=model)
    assert without_eyes.n_test == result.n_test and 0 <= without_eyes.macro_f1 <= 1


def test_classifier_refuses_leaky_or_incomplete_tables(nights):
    table = _split_table(nights)
    leaky = table.copy()
    leaky.loc[leaky.index[:5], "split"] = "test"
    with pytest.raises(text.TextFeatureError, match="both"):
        text.features_baseline(leaky)
    with pytest.raises(text.TextFeatureError, match="split"):
        text.features_baseline(table.drop(columns="split"))
    with pytest.raises(text.TextFeatureError, match="unknown classifier"):
        text.features_baseline(table, model="forest")
