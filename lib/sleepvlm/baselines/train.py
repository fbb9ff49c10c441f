"""Training the baselines: class-balanced mini-batches from the training subjects, model
selection and early stopping on the validation subjects only, seeded; checkpoints in
safetensors with a JSON sidecar, cached by content hash so that a rebuild reuses them."""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..cache import cache_dir, content_hash, source_hash
from ..data.records import STAGES
from ..metrics import classification_metrics
from ..prepare import PreparedDataset
from . import data as data_module
from . import models as models_module
from . import predict as predict_module
from .data import BalancedBatchSampler, SplitData, WindowDataset, load_split, read_rows
from .models import BaselineConfig, BaselineError, build_model, class_aware_weights
from .predict import resolve_device, split_logits

#: Largest gradient norm; the LSTM's gradients can spike early in training.
MAX_GRAD_NORM = 5.0
#: Validation epochs scored after each pass (a seeded subset of the validation nights).
VAL_EPOCHS = 2000


@dataclass
class TrainedBaseline:
    """A trained model with what defines it and how its training went."""

    model: nn.Module
    config: BaselineConfig
    dataset: str  # the center it was trained on
    data_key: str  # identity of the training data (store and subject split)
    history: pd.DataFrame  # one row per pass: loss, validation metrics, seconds
    train_seconds: float  # wall time of the training run that produced the weights
    best_pass: int
    key: str  # cache key: data key + config + source

    @property
    def name(self) -> str:
        return f"{self.config.model}-{self.dataset}-{self.key}"


def data_key(prepared: PreparedDataset) -> str:
    """Identity of a prepared dataset's training data: its store and its subject split."""
    split = prepared.manifest.groupby("subject")["split"].first().sort_index()
    return content_hash(prepared.store.path.name, split.to_dict())


def baseline_key(prepared: PreparedDataset, config: BaselineConfig) -> str:
    """Cache key of a trained model: data, config and the baseline source code."""
    return content_hash(
        data_key(prepared),
        config.to_dict(),
        source_hash(models_module, data_module, predict_module, sys.modules[__name__]),
    )


#: Every how many epochs the input scale is measured over (a tenth of the night is plenty).
SCALE_EVERY = 10


def input_scale(x: np.ndarray) -> torch.Tensor:
    """Per-channel standard deviation (µV) over the epochs ``x`` (n, channels, samples); 1 for
    a channel of zeros (a role the recordings lack)."""
    std = x.std(axis=(0, 2), dtype=np.float64)
    return torch.tensor(np.where(std > 0, std, 1.0), dtype=torch.float32)


def with_center_scale(trained: TrainedBaseline, prepared: PreparedDataset) -> TrainedBaseline:
    """A copy of ``trained`` whose input scale is measured on ``prepared``'s own recordings
    (every :data:`SCALE_EVERY`-th epoch of its manifest) instead of its training center's:
    scored on that center, it shows how much of the cross-center loss is amplitude alone."""
    rows = prepared.manifest.index.to_numpy()[::SCALE_EVERY]
    model = copy.deepcopy(trained.model)
    x = read_rows(prepared, rows, trained.config.channel_index)
    model.input_scale.scale.copy_(input_scale(x))
    return replace(trained, model=model)


def _loss_function(config: BaselineConfig) -> nn.Module:
    if config.model == "attnsleep":
        # Class-aware loss from the class counts the loss sees: batches are balanced, so the
        # counts are equal and the weights reduce to the authors' mu factors (N1 highest).
        return nn.CrossEntropyLoss(weight=class_aware_weights(np.ones(len(STAGES))))
    return nn.CrossEntropyLoss()


def validation_positions(val: SplitData, n: int = VAL_EPOCHS, seed: int = 0) -> np.ndarray:
    """A seeded subset of at most ``n`` validation epochs, in order."""
    if len(val) <= n:
        return np.arange(len(val))
    return np.sort(np.random.default_rng([seed, 1]).choice(len(val), n, replace=False))


def validation_scores(
    model: nn.Module,
    config: BaselineConfig,
    val: SplitData,
    positions: np.ndarray,
    device: torch.device,
) -> dict:
    logits = split_logits(model, config, val.x, val.night, positions, device)
    predicted = np.asarray(STAGES)[logits.argmax(axis=1)]
    scores = classification_metrics(np.asarray(STAGES)[val.y[positions]], predicted)
    return {f"val_{k}": scores[k] for k in ("accuracy", "macro_f1", "kappa")}


def train_baseline(
    prepared: PreparedDataset,
    config: BaselineConfig,
    device: str = "cpu",
    progress: bool = True,
    train: SplitData | None = None,
    val: SplitData | None = None,
) -> TrainedBaseline:
    """Train ``config.model`` on the training subjects of ``prepared``; after each pass score
    the validation subjects, keep the weights with the best ``config.select_by`` and stop after
    ``config.patience`` passes without improvement. The test subjects are never read.
    ``train``/``val`` may be given already loaded (:func:`load_split`) to share them between
    models."""
    started = time.perf_counter()
    torch_device = resolve_device(device)
    train = train if train is not None else load_split(prepared, "train", config)
    val = val if val is not None else load_split(prepared, "val", config)
    for part, name in ((train, "train"), (val, "val")):
        if part.split != name or part.x.shape[1] != len(config.channels):
            raise BaselineError(
                f"the {name} data given holds split {part.split!r} with {part.x.shape[1]} "
                f"channel(s); load it with load_split(prepared, {name!r}, config)"
            )
    model = build_model(config)  # seeds torch: initial weights, then dropout, are seeded
    model.input_scale.scale.copy_(input_scale(train.x[::SCALE_EVERY]))
    model.to(torch_device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = _loss_function(config).to(torch_device)
    dataset = WindowDataset(train, config)
    batches = max(1, config.samples_per_pass // config.batch_size)
    sampler = BalancedBatchSampler(
        train.y, dataset.usable, config.batch_size, batches, seed=config.seed
    )
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=lambda batch: batch)
    # A short budget converges steadily only if the step size comes down by its end: a brief
    # warm-up, then cosine decay over every planned step.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.passes * batches, pct_start=0.1
    )
    positions = validation_positions(val, seed=config.seed)
    history, best_score, best_state, waited = [], -np.inf, None, 0
    # One update per pass: a notebook keeps every refresh of a bar as output.
    bar = tqdm(
        total=config.passes, desc=f"{config.model} on {prepared.dataset}", disable=not progress
    )
    for n_pass in range(1, config.passes + 1):
        model.train()
        losses = []
        for x, y in loader:
            logits = model(x.to(torch_device))
            loss = loss_fn(logits.reshape(-1, len(STAGES)), y.to(torch_device).reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        scores = validation_scores(model, config, val, positions, torch_device)
        score = scores[f"val_{config.select_by}"]
        score = -np.inf if score is None else score  # None: one stage only was predicted
        improved = best_state is None or score > best_score
        if improved:
            best_score, best_state, waited = score, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
        history.append(
            {
                "pass": n_pass,
                "steps": n_pass * batches,
                "train_loss": float(np.mean(losses)),
                **scores,
                "best": improved,
                "seconds": time.perf_counter() - started,
            }
        )
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_kappa=f"{scores['val_kappa']:.3f}")
        bar.update()
        if waited >= config.patience:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    table = pd.DataFrame(history)
    return TrainedBaseline(
        model=model.cpu(),
        config=config,
        dataset=prepared.dataset,
        data_key=data_key(prepared),
        history=table,
        train_seconds=time.perf_counter() - started,
        best_pass=int(table.loc[table["best"], "pass"].iloc[-1]),
        key=baseline_key(prepared, config),
    )


def save_checkpoint(trained: TrainedBaseline, stem: str | Path) -> Path:
    """Write ``<stem>.safetensors`` (the weights) and ``<stem>.json`` (config, data identity,
    history, training time); returns the JSON path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
    save_file(state, str(stem.with_suffix(".safetensors")), metadata={"model": trained.name})
    meta = {
        "config": trained.config.to_dict(),
        "dataset": trained.dataset,
        "data_key": trained.data_key,
        "key": trained.key,
        "train_seconds": trained.train_seconds,
        "best_pass": trained.best_pass,
        "history": trained.history.to_dict(orient="list"),
        "torch": torch.__version__,
    }
    path = stem.with_suffix(".json")
    path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return path


def load_checkpoint(stem: str | Path) -> TrainedBaseline:
    """The model saved by :func:`save_checkpoint` at ``stem`` (on the CPU, in eval mode)."""
    stem = Path(stem)
    weights, sidecar = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for path in (weights, sidecar):
        if not path.is_file():
            raise BaselineError(f"{path}: checkpoint file missing; retrain the model")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        config = BaselineConfig.from_dict(meta["config"])
        state = load_file(str(weights))
    except (json.JSONDecodeError, KeyError, TypeError, SafetensorError, OSError) as err:
        raise BaselineError(
            f"{stem}: unreadable checkpoint ({type(err).__name__}: {err}); delete "
            f"{weights.name} and {sidecar.name} and retrain"
        ) from err
    model = build_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise BaselineError(
            f"{weights}: weights do not fit a {config.model} of width {config.width} "
            f"({err}); delete the checkpoint and retrain"
        ) from err
    model.eval()
    return TrainedBaseline(
        model=model,
        config=config,
        dataset=meta["dataset"],
        data_key=meta["data_key"],
        history=pd.DataFrame(meta["history"]),
        train_seconds=float(meta["train_seconds"]),
        best_pass=int(meta["best_pass"]),
        key=meta["key"],
    )


def checkpoint_stem(prepared: PreparedDataset, config: BaselineConfig) -> Path:
    """Where the model of ``config`` trained on ``prepared`` is cached (without suffix)."""
    key = baseline_key(prepared, config)
    return cache_dir("models") / f"{config.model}-{prepared.dataset}-{key}"


def trained_baseline(
    prepared: PreparedDataset,
    config: BaselineConfig,
    device: str = "cpu",
    progress: bool = True,
    retrain: bool = False,
    **splits: SplitData,
) -> TrainedBaseline:
    """The model of ``config`` trained on ``prepared``: loaded from ``cache_dir('models')`` when
    the same data, config and code were trained before, else trained and saved there."""
    stem = checkpoint_stem(prepared, config)
    if not retrain and stem.with_suffix(".json").is_file():
        return load_checkpoint(stem)
    trained = train_baseline(prepared, config, device=device, progress=progress, **splits)
    save_checkpoint(trained, stem)
    return trained


def trained_baselines(
    prepared: PreparedDataset,
    configs: list[BaselineConfig],
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, TrainedBaseline]:
    """:func:`trained_baseline` for several models of one center (keyed by model name), reading
    the training and validation epochs once for all of them, and only if one is not cached."""
    names = [c.model for c in configs]
    if len(set(names)) != len(names):
        raise BaselineError(f"one config per model, got {names}")
    loaded: dict[tuple[str, ...], dict[str, SplitData]] = {}
    out = {}
    for config in configs:
        splits = {}
        if not checkpoint_stem(prepared, config).with_suffix(".json").is_file():
            if config.channels not in loaded:
                loaded[config.channels] = {
                    split: load_split(prepared, split, config) for split in ("train", "val")
                }
            splits = loaded[config.channels]
        out[config.model] = trained_baseline(prepared, config, device, progress, **splits)
    return out
