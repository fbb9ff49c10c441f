"""Scoring the baselines the way the language models are scored: on each dataset's
class-balanced test sample (the same epochs) and on every epoch of the test nights, across
centers (train on one, test on each), with results records in the shared schema, and the
inference speed on a full night."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from ..data.records import STAGES
from ..metrics import SUMMARY_METRICS, evaluate, result_record
from ..prepare import PreparedDataset, test_night_manifest
from ..splits import manifest_hash
from .data import ordered_rows, read_rows
from .models import BaselineError
from .predict import night_logits, resolve_device
from .train import TrainedBaseline

#: The results records' backend and modality for the supervised baselines.
BACKEND = "local"
MODALITY = "signal"
#: Names of the two evaluations: the language models' epochs, and every test epoch.
SAMPLE, NIGHTS = "balanced sample", "test nights"


def predict_manifest(
    trained: TrainedBaseline,
    prepared: PreparedDataset,
    manifest: pd.DataFrame,
    device: str = "cpu",
) -> pd.Series:
    """Predicted stage of every row of ``manifest`` (rows of ``prepared.manifest``, any
    subset). DeepSleepNet reads each night that holds a row whole and scores the row with its
    neighbours; AttnSleep reads only the rows."""
    torch_device = resolve_device(device)
    model, config = trained.model.to(torch_device), trained.config
    unknown = manifest.index.difference(prepared.manifest.index)
    if len(unknown):
        raise BaselineError(
            f"{len(unknown)} manifest rows are not rows of the {prepared.dataset} store "
            "(was the sample drawn from another dataset?)"
        )
    labels = pd.Series(index=manifest.index, dtype=object)
    if not config.sequence:
        x = read_rows(prepared, manifest.index.to_numpy(), config.channel_index)
        logits = night_logits(model, config, x, torch_device)
        labels[:] = np.asarray(STAGES)[logits.argmax(axis=1)]
        return labels
    full = prepared.manifest
    for (subject, night), rows in manifest.groupby(["subject", "night"]):
        whole = ordered_rows(full[(full["subject"] == subject) & (full["night"] == night)])
        x = read_rows(prepared, whole.index.to_numpy(), config.channel_index)
        predicted = np.asarray(STAGES)[night_logits(model, config, x, torch_device).argmax(1)]
        labels[rows.index] = pd.Series(predicted, index=whole.index)[rows.index].to_numpy()
    return labels


def sample_rows(prepared: PreparedDataset, sample: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``prepared.manifest`` (store rows as index) of a sample manifest such as the
    class-balanced test sample, matched on subject, night and epoch."""
    key = ["subject", "night", "epoch"]
    full = prepared.manifest.reset_index(names="row")
    matched = (
        sample[key]
        .astype({"subject": str, "night": str})
        .merge(full.astype({"subject": str, "night": str}), on=key, how="left")
    )
    if matched["row"].isna().any():
        missing = matched[matched["row"].isna()][key].head(3).to_dict(orient="records")
        raise BaselineError(
            f"{matched['row'].isna().sum()} sampled epochs are not in the {prepared.dataset} "
            f"store, e.g. {missing}; redraw the sample from this prepared dataset"
        )
    return prepared.manifest.loc[matched["row"].astype(int).to_numpy()]


def test_nights(prepared: PreparedDataset) -> pd.DataFrame:
    """Every epoch of the test subjects' nights."""
    return test_night_manifest(prepared)


def _evaluate(manifest: pd.DataFrame, predicted: pd.Series, n_boot: int) -> dict:
    return evaluate(
        manifest["stage"].tolist(),
        predicted[manifest.index].tolist(),
        subjects=manifest["subject"].astype(str).tolist(),
        n_boot=n_boot,
    )


def score(
    trained: TrainedBaseline,
    prepared: PreparedDataset,
    sample: pd.DataFrame,
    test_nights_too: bool = False,
    device: str = "cpu",
    n_boot: int = 1000,
) -> dict[str, tuple[pd.DataFrame, dict]]:
    """:func:`sleepvlm.metrics.evaluate` (subject-bootstrap intervals included) of the model on
    ``sample`` (rows of ``prepared.manifest``, e.g. the class-balanced test sample) and, with
    ``test_nights_too``, on every epoch of the test nights, predicted once for both. Keyed
    ``"balanced sample"`` and ``"test nights"``, each value (manifest, evaluation)."""
    needed = test_nights(prepared) if test_nights_too else sample
    if test_nights_too and not sample.index.isin(needed.index).all():
        raise BaselineError(
            f"the sample holds epochs outside the {prepared.dataset} test nights: draw it from "
            "the test split"
        )
    predicted = predict_manifest(trained, prepared, needed, device=device)
    scored = {SAMPLE: (sample, _evaluate(sample, predicted, n_boot))}
    if test_nights_too:
        scored[NIGHTS] = (needed, _evaluate(needed, predicted, n_boot))
    return scored


def baseline_record(
    trained: TrainedBaseline, prepared: PreparedDataset, manifest: pd.DataFrame, evaluation: dict
) -> dict:
    """The results record of one evaluation: ``prompt`` says which center trained the model
    (``trained-on-<dataset>``), ``model_id`` names the checkpoint."""
    return result_record(
        dataset=prepared.dataset,
        modality=MODALITY,
        prompt=f"trained-on-{trained.dataset}",
        model=trained.config.model,
        backend=BACKEND,
        model_id=trained.name,
        data="simulated" if prepared.simulated else "real",
        evaluation=evaluation,
        manifest_hash=manifest_hash(manifest),
        prompt_hash=trained.key,
        decoding={"width": trained.config.width, "channels": list(trained.config.channels)},
    )


def summary_row(evaluation: dict) -> dict:
    """Summary metrics, per-class F1, ``n`` and the confusion matrix (stages x stages and
    invalid, as lists) of one evaluation as one row."""
    metrics = evaluation["metrics"]
    row = {name: metrics[name] for name in SUMMARY_METRICS}
    row.update({f"f1_{s}": metrics["per_class_f1"][s] for s in STAGES})
    row["n"] = evaluation["n"]
    row["confusion"] = metrics["confusion"]
    return row


def cross_dataset(
    models: dict[str, TrainedBaseline],
    prepared: dict[str, PreparedDataset],
    samples: dict[str, pd.DataFrame],
    device: str = "cpu",
    n_boot: int = 1000,
) -> tuple[pd.DataFrame, list[dict]]:
    """Every model (keyed by training center) on every center's test sample (keyed by test
    center; rows of ``prepared[center].manifest``), and on all test nights of its own center.
    Returns one row per (train, test, epochs) with the summary metrics, and the results
    records."""
    rows, records = [], []
    for train_center, trained in models.items():
        for test_center, sample in samples.items():
            target = prepared[test_center]
            scored = score(trained, target, sample, train_center == test_center, device, n_boot)
            for epochs, (manifest, evaluation) in scored.items():
                rows.append(
                    {
                        "model": trained.config.model,
                        "train": train_center,
                        "test": test_center,
                        "epochs": epochs,
                        **summary_row(evaluation),
                    }
                )
                records.append(baseline_record(trained, target, manifest, evaluation))
    return pd.DataFrame(rows), records


def inference_speed(
    trained: TrainedBaseline, epochs: np.ndarray, device: str = "cpu", repeats: int = 3
) -> float:
    """Epochs per second to stage one whole night ``epochs`` (n, 3, 3000) in the store's
    layout, best of ``repeats`` runs (channel selection included, reading excluded)."""
    torch_device = resolve_device(device)
    model, config = trained.model.to(torch_device), trained.config
    x = np.ascontiguousarray(epochs[:, config.channel_index])
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        night_logits(model, config, x, torch_device)
        if torch_device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return len(x) / best
