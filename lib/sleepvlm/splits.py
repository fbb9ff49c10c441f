"""Subject-level train/val/test splits and seeded class-balanced sampling of epochs.

Subjects are split before any sampling, so no subject's epochs reach two splits; every sample
is saved as a manifest (dataset, subject, night, epoch, stage, source hash) that later chapters
load, and running twice gives the same manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .cache import content_hash
from .data.records import STAGES, DataError

SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
MANIFEST_KEY = ["dataset", "subject", "night", "epoch"]


def split_subjects(subjects, seed: int = 0, fractions: dict[str, float] = SPLIT_FRACTIONS):
    """Map each subject to train/val/test by a seeded permutation of the sorted subject ids."""
    unique = sorted(set(subjects))
    if len(unique) < len(fractions):
        raise DataError(
            f"{len(unique)} subject(s) cannot be split into {', '.join(fractions)}; "
            "a subject-level split needs at least one subject per split"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    sizes = {name: max(1, round(frac * len(unique))) for name, frac in fractions.items()}
    sizes["train"] = len(unique) - sum(v for k, v in sizes.items() if k != "train")
    assignment, start = {}, 0
    for name in ("test", "val", "train"):
        for i in order[start : start + sizes[name]]:
            assignment[unique[i]] = name
        start += sizes[name]
    return assignment


def assign_splits(manifest: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Add a ``split`` column, splitting the subjects of each dataset separately."""
    out = manifest.copy()
    out["split"] = ""
    for _, rows in out.groupby("dataset"):
        mapping = split_subjects(rows["subject"], seed=seed)
        out.loc[rows.index, "split"] = rows["subject"].map(mapping)
    return out


def balanced_sample(
    manifest: pd.DataFrame, counts: dict[str, int], split: str = "test", seed: int = 0
) -> pd.DataFrame:
    """Draw exactly ``counts[stage]`` epochs per stage from one split, without replacement.

    Each stage uses its own seeded generator, so the draw of one stage does not depend on the
    others; the result is sorted by subject, night and epoch.
    """
    pool = manifest[manifest["split"] == split]
    datasets = ", ".join(sorted(pool["dataset"].unique())) or "no dataset"
    parts = []
    for k, stage in enumerate(STAGES):
        want = counts.get(stage, 0)
        rows = pool[pool["stage"] == stage]
        if len(rows) < want:
            raise DataError(
                f"{datasets}: the {split} split holds {len(rows)} {stage} epochs but {want} were "
                "requested; use a larger cohort (more subjects or nights) or smaller counts"
            )
        rng = np.random.default_rng([seed, k])
        parts.append(rows.iloc[np.sort(rng.choice(len(rows), size=want, replace=False))])
    return pd.concat(parts).sort_values(MANIFEST_KEY).reset_index(drop=True)


def night_keys(frame: pd.DataFrame) -> pd.Series:
    """The (subject, night) pair of each row of ``frame``."""
    pairs = zip(frame["subject"].astype(str), frame["night"].astype(str), strict=True)
    return pd.Series(list(pairs), index=frame.index, dtype=object)


def nights_of(frame: pd.DataFrame, max_nights: int | None = None, seed: int = 0) -> list:
    """The (subject, night) pairs of ``frame``, or a seeded choice of ``max_nights`` of them."""
    nights = sorted(set(night_keys(frame)))
    if max_nights is not None and len(nights) > max_nights:
        chosen = np.random.default_rng(seed).choice(len(nights), max_nights, replace=False)
        nights = [nights[i] for i in sorted(chosen)]
    return nights


def stage_table(manifest: pd.DataFrame, by: str = "dataset") -> pd.DataFrame:
    """Epoch counts per stage (columns in STAGES order) and a Total column."""
    table = pd.crosstab(manifest[by], manifest["stage"]).reindex(columns=list(STAGES), fill_value=0)
    table["Total"] = table.sum(axis=1)
    return table


def manifest_hash(manifest: pd.DataFrame) -> str:
    """Content hash of the sample's identity (which epochs, with which labels)."""
    cols = MANIFEST_KEY + ["stage"]
    return content_hash(manifest[cols].astype(str).to_numpy().tolist())


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(path, index=False)
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: manifest not found; run chapter 01 (or `sleepvlm book --only 01`)"
        )
    return pd.read_csv(path, dtype={"subject": str, "night": str})
