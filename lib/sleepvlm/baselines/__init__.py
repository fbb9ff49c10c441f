"""Supervised baselines of SleepVLM-Bench: DeepSleepNet and AttnSleep, trained per center on
the training subjects with class-balanced batches, selected on the validation subjects, and
scored on the same class-balanced test epochs as the language models."""

# ruff: noqa: E402 (the imports follow the OpenMP setting, which must precede torch's)
import os

# OpenMP threads that spin while waiting make torch many times slower whenever another
# process shares the cores (a book build beside a test run); passive waiting costs nothing
# on an idle machine. It is read once, when torch loads, and a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .centers import (
    CROSS_LOSS_GOAL,
    SPREAD_GOAL,
    beside_paper,
    center_goal_texts,
    center_goals,
    cross_center_loss,
    cross_center_texts,
    kappa_matrix,
    paper_within_center,
    scores_from_records,
    within_center,
)
from .data import BalancedBatchSampler, SplitData, WindowDataset, load_split
from .evaluate import (
    baseline_record,
    cross_dataset,
    inference_speed,
    predict_manifest,
    sample_rows,
    score,
    summary_row,
    test_nights,
)
from .models import (
    MODELS,
    AttnSleep,
    BaselineConfig,
    BaselineError,
    DeepSleepNet,
    build_model,
    class_aware_weights,
    layer_table,
    parameter_count,
)
from .predict import night_logits, resolve_device
from .train import (
    TrainedBaseline,
    checkpoint_stem,
    load_checkpoint,
    save_checkpoint,
    train_baseline,
    trained_baseline,
    trained_baselines,
    with_center_scale,
)

__all__ = [
    "CROSS_LOSS_GOAL",
    "MODELS",
    "SPREAD_GOAL",
    "AttnSleep",
    "BalancedBatchSampler",
    "BaselineConfig",
    "BaselineError",
    "DeepSleepNet",
    "SplitData",
    "TrainedBaseline",
    "WindowDataset",
    "baseline_record",
    "beside_paper",
    "build_model",
    "center_goal_texts",
    "center_goals",
    "checkpoint_stem",
    "class_aware_weights",
    "cross_center_loss",
    "cross_center_texts",
    "cross_dataset",
    "inference_speed",
    "kappa_matrix",
    "layer_table",
    "load_checkpoint",
    "load_split",
    "night_logits",
    "paper_within_center",
    "parameter_count",
    "predict_manifest",
    "resolve_device",
    "sample_rows",
    "save_checkpoint",
    "score",
    "scores_from_records",
    "summary_row",
    "test_nights",
    "train_baseline",
    "trained_baseline",
    "trained_baselines",
    "with_center_scale",
    "within_center",
]
