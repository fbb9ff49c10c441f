"""The CUDA paths (``device="cuda"``) of the baselines and of SleepVLM-mini. They run where a
CUDA device exists (a GPU machine) and are skipped elsewhere, CI included; the same code runs
on the CPU in test_baselines.py and test_explain_mini.py."""

import dataclasses

import numpy as np
import pytest
import torch

from sleepvlm.baselines import predict_manifest, train_baseline
from sleepvlm.explain import mini, train
from test_baselines import _config, _prepared
from test_explain_mini import TINY, make_examples

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.mark.parametrize("model", ["deepsleepnet", "attnsleep"])
def test_baselines_train_and_predict_on_cuda(model, tmp_path, monkeypatch):
    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    prepared = _prepared(tmp_path)
    config = _config(model, passes=3, samples_per_pass=100, lr=3e-3)
    torch.cuda.reset_peak_memory_stats()
    trained = train_baseline(prepared, config, device="cuda", progress=False)
    assert torch.cuda.max_memory_allocated() > 0  # trained there (the weights come back on CPU)
    losses = trained.history["train_loss"]
    assert losses.iloc[-1] < losses.iloc[0]
    test = prepared.manifest[prepared.manifest["split"] == "test"].head(20)
    predicted = predict_manifest(trained, prepared, test, device="cuda")
    assert len(predicted) == len(test)


def test_sleepvlm_mini_trains_and_answers_on_cuda(tmp_path):
    examples = make_examples()
    tokenizer = mini.train_tokenizer([e.targets[p] for e in examples for p in mini.PHASES])
    processor = mini.image_processor(TINY)
    model = mini.build_model(tokenizer, TINY)
    log = train.train_phases(model, tokenizer, processor, examples, TINY, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    assert np.mean(log.loss["grounding"][-3:]) < log.loss["grounding"][0]
    folder = mini.save(model, tokenizer, processor, tmp_path / "m", mini.settings_of(TINY))
    on_gpu = mini.MiniModel.load(folder, device="cuda").generate([e.image for e in examples[:4]])
    on_cpu = mini.MiniModel.load(folder).generate([e.image for e in examples[:4]])
    assert on_gpu == on_cpu  # greedy decoding of the same weights
    lora = mini.add_lora(mini.MiniModel.load(folder).model)
    grounding = dataclasses.replace(TINY, perception_steps=0, grounding_steps=6)
    log = train.train_phases(lora, tokenizer, processor, examples, grounding, device="cuda")
    assert np.isfinite(log.loss["grounding"]).all()
