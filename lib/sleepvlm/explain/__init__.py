"""Explainable staging: MASS-EX-style rule annotations of every epoch, SleepVLM-mini (a small
rule-grounded VLM trained here) and the automatic scoring of rationales against ground truth."""

import warnings

from .mini import MiniConfig, MiniError, MiniModel
from .train import default_model_dir, train_mini

# transformers (imported when a model is built or loaded) draws progress bars with tqdm.auto,
# whose import warns in a notebook kernel without ipywidgets, as in the book's chapters; the
# bars themselves are switched off where models are saved and loaded.
warnings.filterwarnings("ignore", message="IProgress not found")

__all__ = ["MiniConfig", "MiniError", "MiniModel", "default_model_dir", "train_mini"]
