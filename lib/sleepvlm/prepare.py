"""From dataset folders to what every chapter loads: one compressed epoch store per dataset,
the subject-level split, and the seeded class-balanced test manifests — cached by content hash,
so the first chapter pays for preprocessing and the others reuse it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from . import signal
from .cache import cache_dir, content_hash, source_hash
from .data import formats
from .data.cohort import build_cohort, cohort_key
from .data.isruc import SECOND_SCORER
from .data.records import STAGES, DataError
from .data.sidecar import TRUTH
from .metrics import classification_metrics, kappa_text
from .paper import BALANCED_COUNTS
from .pipeline import EpochStore, SerialExecutor, preprocess_dataset
from .splits import assign_splits, balanced_sample, night_keys, nights_of, write_manifest

SPLIT_SEED = 0  # the subject split is fixed; the sample's seed is a chapter parameter


@dataclass
class PreparedDataset:
    dataset: str
    store: EpochStore
    manifest: pd.DataFrame  # every kept epoch, with its subject-level split
    simulated: bool
    source: str  # the folder the nights were read from

    @property
    def source_label(self) -> str:
        """The source as a record states it: a simulated cohort by its place in the cache
        (the cache's own folder is this machine's business), a real dataset by its folder."""
        if self.simulated:
            try:
                return str(Path(self.source).relative_to(cache_dir()))
            except ValueError:
                return self.source
        return self.source


def _folder_key(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return content_hash(
        [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    )


def prepare_dataset(
    dataset: str,
    data_dir: str | Path | None = None,
    cohort_size: str = "full",
    seed: int = 0,
    executor=None,
    channels: dict | None = None,
) -> PreparedDataset:
    """Preprocess every night of ``dataset`` into its epoch store (once) and split its subjects.

    Without ``data_dir`` the dataset is the simulated center of that name in the embedded cohort.
    """
    executor = executor or SerialExecutor()
    if data_dir:
        folder, simulated = Path(data_dir), False
        key = _folder_key(folder)
    else:
        root = build_cohort(cohort_size, seed=seed, executor=executor)
        folder, simulated = root / dataset, True
        key = cohort_key(cohort_size, seed)
    store_key = content_hash(dataset, key, channels, source_hash(signal, formats))
    store = EpochStore(cache_dir("epochs") / f"{dataset}-{store_key}.h5", dataset)
    done = store.path.with_suffix(".done")
    if not done.is_file():
        nights = formats.discover(dataset, folder)
        load = partial(formats.load_entry, channels=channels)
        preprocess_dataset(nights, store, executor, load=load)
        done.write_text(json.dumps({"nights": len(nights), "source": str(folder)}))
    manifest = assign_splits(store.manifest(), seed=SPLIT_SEED)
    return PreparedDataset(dataset, store, manifest, simulated, str(folder))


def paper_counts(dataset: str) -> dict[str, int]:
    """The paper's class-balanced counts per stage for ``dataset``; a dataset the paper did not
    sample (Sleep-EDF, MASS, a lab's own) gets the mean of its three datasets' counts."""
    if dataset in BALANCED_COUNTS:
        return BALANCED_COUNTS[dataset]
    per_dataset = BALANCED_COUNTS.values()
    return {s: round(np.mean([c[s] for c in per_dataset])) for s in STAGES}


def sample_counts(dataset: str, scale: float = 1.0) -> dict[str, int]:
    """The paper's class-balanced counts for ``dataset`` (:func:`paper_counts`), times
    ``scale`` (a smoke build draws 1 %)."""
    counts = paper_counts(dataset)
    return {s: max(1, round(counts[s] * scale)) for s in STAGES}


def balanced_test_manifest(
    prepared: PreparedDataset, counts: dict[str, int], seed: int = 0
) -> pd.DataFrame:
    """Draw the class-balanced test sample from held-out subjects and save it as a manifest."""
    sample = balanced_sample(prepared.manifest, counts, split="test", seed=seed)
    name = f"{prepared.dataset}-{content_hash(prepared.store.path.name, counts, seed)}.csv"
    write_manifest(sample, cache_dir("manifests") / name)
    return sample


def test_night_manifest(
    prepared: PreparedDataset, max_nights: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """Every scored epoch of the held-out subjects' nights (the SleepVLM paper's protocol), or
    of a seeded choice of ``max_nights`` of them, in recording order."""
    pool = prepared.manifest[prepared.manifest["split"] == "test"]
    if pool.empty:
        raise DataError(f"{prepared.source}: no test nights (too few subjects to split)")
    chosen = pool[night_keys(pool).isin(nights_of(pool, max_nights, seed))]
    return chosen.sort_values(["subject", "night", "epoch"], kind="stable")


def store_rows(prepared: PreparedDataset, sample: pd.DataFrame) -> np.ndarray:
    """Row numbers in ``prepared.store`` of the sample's epochs (matched by subject, night and
    epoch)."""
    keys = ["subject", "night", "epoch"]
    stored = prepared.store.manifest()
    lookup = pd.Series(
        np.arange(len(stored)),
        index=pd.MultiIndex.from_frame(stored[keys].astype({"epoch": np.int64})),
    )
    wanted = pd.MultiIndex.from_frame(sample[keys].astype({"epoch": np.int64}))
    rows = lookup.reindex(wanted)
    if rows.isna().any():
        missing = sample[rows.isna().to_numpy()].iloc[0]
        raise DataError(
            f"{prepared.store.path}: epoch {missing['epoch']} of {missing['subject']}/"
            f"{missing['night']} is in the manifest but not in the store; delete the manifest "
            "and prepare the dataset again"
        )
    return rows.to_numpy(np.int64)


def _other_scorer(prepared: PreparedDataset, sample: pd.DataFrame, scorer: str) -> np.ndarray:
    """The labels ``scorer`` (a key of the nights' ``other_scorers``) gave the epochs of
    ``sample``, read from the dataset's files; None where a night lacks that scorer."""
    entries = {
        (e["subject"], e["night"]): e for e in formats.discover(prepared.dataset, prepared.source)
    }
    out = np.full(len(sample), None, dtype=object)
    nights = pd.DataFrame(
        {"subject": sample["subject"].astype(str), "night": sample["night"].astype(str)}
    )
    positions = nights.reset_index(drop=True).groupby(["subject", "night"]).indices
    for (subject, night), at in positions.items():
        labels = formats.load_entry(entries[(subject, night)]).other_scorers.get(scorer)
        if labels is not None:
            out[at] = np.asarray(labels, dtype=object)[sample["epoch"].to_numpy()[at].astype(int)]
    return out


def generating_stages(prepared: PreparedDataset, sample: pd.DataFrame) -> np.ndarray:
    """The stage the simulator generated each epoch of ``sample`` in (read from the truth
    sidecars of the simulated nights).

    The scorer's label departs from it on ambiguous epochs and by scorer error, as a human
    scorer's does, so agreement between the two is the ceiling of any model scored against the
    labels. Real recordings have no generating stage."""
    if not prepared.simulated:
        raise DataError(
            f"{prepared.source}: a real dataset has no generating stage; the label ceiling is "
            "only known on the simulated cohort"
        )
    truth = _other_scorer(prepared, sample, TRUTH)
    lacking = sample[pd.isna(truth)]
    if len(lacking):
        first = lacking.iloc[0]
        raise DataError(
            f"{prepared.source}: night {first['subject']}/{first['night']} has no truth "
            "sidecar; rebuild the simulated cohort (delete its cache folder)"
        )
    return truth


def second_scorer_kappa(prepared: PreparedDataset, sample: pd.DataFrame) -> float | None:
    """Cohen's κ of a real dataset's second scorer against its first (the labels) on the
    epochs of ``sample`` both scored as a stage: the human ceiling where a dataset has two
    scorers (ISRUC). None for a simulated dataset (its ceiling is :func:`label_ceiling`) or
    when no night of the sample has a second scorer."""
    if prepared.simulated:
        return None
    second = _other_scorer(prepared, sample, SECOND_SCORER)
    both = np.isin(second, STAGES)
    if not both.any():
        return None
    labels = sample["stage"].to_numpy()[both]
    return classification_metrics(labels.tolist(), second[both].tolist())["kappa"]


def label_ceiling(prepared: PreparedDataset, sample: pd.DataFrame) -> float | None:
    """Cohen's κ of the scored labels of ``sample`` against the stages the simulator generated:
    what a model that recovered every generating stage would score. None for a real dataset,
    which has no generating stage (there, agreement between expert scorers plays this role)."""
    if not prepared.simulated:
        return None
    generated = generating_stages(prepared, sample)
    return classification_metrics(sample["stage"].tolist(), generated.tolist())["kappa"]


def ceiling_note(ceilings: dict[str, float | None], scorers: dict[str, float | None]) -> str:
    """The sentence on what scorer disagreement allows: the simulated datasets' ceiling κ
    (:func:`label_ceiling`), or for real ones their two scorers' agreement where they have two
    (:func:`second_scorer_kappa`); per dataset."""
    simulated = pd.Series({d: k for d, k in ceilings.items() if k is not None}, dtype=float)
    two_scorers = pd.Series({d: k for d, k in scorers.items() if k is not None}, dtype=float)
    parts = []
    if len(simulated):
        parts.append(
            "The simulated cohort's own scorer agrees with its generating stages at κ "
            f"{kappa_text(simulated)} on these samples, so no model can be expected to go much "
            "above that here."
        )
    if len(two_scorers):
        parts.append(
            f"On real data two scorers' agreement sets that limit: κ {kappa_text(two_scorers)} "
            "between the dataset's two scorers on these samples."
        )
    if not parts:
        parts.append(
            "On real data the scorers' own agreement sets that limit; with one scorer per night "
            "it is not measured here."
        )
    return " ".join(parts)
