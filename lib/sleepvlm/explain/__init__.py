"""Explainable staging: MASS-EX-style rule annotations of every epoch, SleepVLM-mini (a small
rule-grounded VLM trained here) and the automatic scoring of rationales against ground truth."""

from .mini import MiniConfig, MiniError, MiniModel
from .train import default_model_dir, train_mini

__all__ = ["MiniConfig", "MiniError", "MiniModel", "default_model_dir", "train_mini"]
