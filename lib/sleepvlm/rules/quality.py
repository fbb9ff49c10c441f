"""Rule-based quality control of scored epochs: flag the labels that strong rule evidence
contradicts (an N3 epoch without a single slow wave, a W epoch with rapid eye movements over
atonia...), and the epochs whose signals cannot be read (a flat or clipped channel, movement
artifact over most of the EEG).

Flags are reported, never acted on by default: :func:`quality_table` gives one row per epoch
beside the dataset's manifest, :func:`quality_report` counts the flags per dataset and stage,
and only :func:`exclude_flagged` with an explicit ``exclude_flags`` removes epochs (and says
how many, by a warning).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sleepvlm.data.records import ROLES, STAGES, DataError
from sleepvlm.rules.evidence import Detection, detect_all, rule_event_kinds
from sleepvlm.rules.table import DEFAULT_RULES, RuleSet
from sleepvlm.signal import QualityWarning
from sleepvlm.splits import MANIFEST_KEY


@dataclass(frozen=True)
class Contradiction:
    """A scored label that rule evidence speaks against.

    Raised on epochs scored ``stage`` where every rule in ``met`` has its criterion met and the
    detectors of every rule in ``no_evidence`` found no event at all (each rule involved must be
    evaluable in the epoch)."""

    flag: str
    stage: str
    met: tuple[str, ...]
    no_evidence: tuple[str, ...]
    description: str


#: The contradictions checked, keyed by flag.
CONTRADICTIONS: dict[str, Contradiction] = {
    c.flag: c
    for c in (
        Contradiction(
            "N3_without_slow_waves",
            "N3",
            (),
            ("N3.sw20",),
            "scored N3, but not one slow wave (0.5-2 Hz, > 75 µV) was detected in the epoch",
        ),
        Contradiction(
            "N1_with_slow_waves",
            "N1",
            ("N3.sw20",),
            (),
            "scored N1, but slow waves fill at least 20 % of the epoch (N3 criterion)",
        ),
        Contradiction(
            "N2_with_alpha",
            "N2",
            ("W.alpha",),
            (),
            "scored N2, but alpha rhythm fills more than half of the epoch (W criterion)",
        ),
        Contradiction(
            "W_with_rem_signs",
            "W",
            ("R.rem", "R.atonia"),
            (),
            "scored W, but rapid eye movements occur over a chin tone at the night's lowest "
            "(R criteria)",
        ),
        Contradiction(
            "REM_with_slow_waves",
            "REM",
            ("N3.sw20",),
            (),
            "scored R, but slow waves fill at least 20 % of the epoch (N3 criterion)",
        ),
    )
}
#: Flags about the signals rather than the label.
SIGNAL_FLAGS: dict[str, str] = {
    **{
        f"unusable_{role}": f"the {role.upper()} is flat or clipped here (usable elsewhere)"
        for role in ROLES
    },
    "artifact": "movement or muscle artifact hides more than half of the EEG "
    "(major body movement criterion)",
}
#: Every flag, in the order of the quality table's columns.
QUALITY_FLAGS: tuple[str, ...] = (*CONTRADICTIONS, *SIGNAL_FLAGS)


def flags_frame() -> pd.DataFrame:
    """The flags as the book shows them: one row per flag, with its rules."""
    rows = [
        {
            "flag": c.flag,
            "scored": c.stage,
            "rules met": ", ".join(c.met),
            "no evidence of": ", ".join(c.no_evidence),
            "meaning": c.description,
        }
        for c in CONTRADICTIONS.values()
    ]
    rows += [
        {"flag": f, "scored": "any", "rules met": "", "no evidence of": "", "meaning": m}
        for f, m in SIGNAL_FLAGS.items()
    ]
    return pd.DataFrame(rows)


def _event_count(detection: Detection, rule_id: str) -> np.ndarray:
    """Per epoch: events found by the detectors that give ``rule_id`` its evidence."""
    kinds = rule_event_kinds(rule_id)
    columns = [f"n_{k}" for k in kinds if f"n_{k}" in detection.epochs]
    return detection.epochs[columns].sum(axis=1).to_numpy()


def _contradiction(detection: Detection, c: Contradiction, stages: np.ndarray) -> np.ndarray:
    flagged = stages == c.stage
    for rule_id in c.met:
        flagged &= detection.criteria[rule_id].fillna(False).to_numpy(bool)
    for rule_id in c.no_evidence:
        evaluable = detection.criteria[rule_id].notna().to_numpy()
        flagged &= evaluable & (_event_count(detection, rule_id) == 0)
    return flagged


def quality_flags(detection: Detection, stages: Sequence[str]) -> pd.DataFrame:
    """One row per epoch of ``detection`` (``stages``: its scored labels, in the same order):
    ``epoch``, ``onset``, ``stage``, one boolean column per flag (:data:`QUALITY_FLAGS`) and
    ``flags``, the raised flags ';'-joined."""
    stages = np.asarray(stages, dtype=str)
    if len(stages) != len(detection.epochs):
        raise DataError(
            f"{detection.label}: {len(stages)} scored labels for {len(detection.epochs)} "
            "epochs; pass the labels of the epochs the detectors ran on"
        )
    out = pd.DataFrame(
        {
            "epoch": detection.epochs.index.to_numpy(np.int64),
            "onset": detection.epochs["onset"].to_numpy(float),
            "stage": stages,
        }
    )
    for flag, c in CONTRADICTIONS.items():
        out[flag] = _contradiction(detection, c, stages)
    for role in ROLES:
        ok = detection.epochs[f"{role}_ok"].to_numpy(bool)
        # a channel that is absent or unusable all night is reported once, not per epoch
        out[f"unusable_{role}"] = ~ok if ok.any() else False
    out["artifact"] = detection.criteria["major_body_movement"].fillna(False).to_numpy(bool)
    flags = out[list(QUALITY_FLAGS)].to_numpy(bool)
    out["flags"] = [";".join(np.asarray(QUALITY_FLAGS)[row]) for row in flags]
    return out


def quality_table(
    prepared, records: Sequence[tuple[str, str]] | None = None, rules: RuleSet = DEFAULT_RULES
) -> pd.DataFrame:
    """Quality flags of every stored epoch of a prepared dataset
    (:func:`sleepvlm.prepare.prepare_dataset`), or of the given ``(subject, night)`` records:
    the manifest's key columns (dataset, subject, night, epoch) and ``split``, then the
    columns of :func:`quality_flags`."""
    manifest = prepared.manifest
    if records is None:
        records = list(manifest[["subject", "night"]].drop_duplicates().itertuples(index=False))
    parts = []
    for subject, night in records:
        epochs = prepared.store.read_record(subject, night)
        table = quality_flags(detect_all(epochs, rules=rules), epochs.manifest["stage"])
        table.insert(0, "night", night)
        table.insert(0, "subject", subject)
        table.insert(0, "dataset", prepared.dataset)
        parts.append(table)
    out = pd.concat(parts, ignore_index=True)
    split = manifest.set_index(MANIFEST_KEY)["split"]
    out.insert(4, "split", split.reindex(pd.MultiIndex.from_frame(out[MANIFEST_KEY])).to_numpy())
    return out


def quality_report(quality: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and scored stage: epochs checked, epochs with any flag, and the count of
    each flag."""
    counts = quality.groupby(["dataset", "stage"])[list(QUALITY_FLAGS)].sum().astype(int)
    counts.insert(
        0,
        "any flag",
        quality.groupby(["dataset", "stage"])["flags"].agg(lambda f: int((f != "").sum())),
    )
    counts.insert(0, "epochs", quality.groupby(["dataset", "stage"]).size())
    order = {s: i for i, s in enumerate(STAGES)}
    return counts.sort_index(key=lambda idx: idx.map(lambda v: order.get(v, v)))


def exclude_flagged(
    manifest: pd.DataFrame, quality: pd.DataFrame, exclude_flags: Sequence[str] = ()
) -> pd.DataFrame:
    """The manifest without the epochs that carry any of ``exclude_flags`` (none by default).

    Every manifest row must have a quality row (else DataError: an epoch never checked would
    be kept silently); the number of epochs removed per flag is reported by a QualityWarning."""
    unknown = sorted(set(exclude_flags) - set(QUALITY_FLAGS))
    if unknown:
        raise DataError(f"unknown quality flags {unknown}; choose among {', '.join(QUALITY_FLAGS)}")
    if not exclude_flags:
        return manifest
    key = pd.MultiIndex.from_frame(manifest[MANIFEST_KEY])
    checked = quality.set_index(MANIFEST_KEY)
    missing = ~key.isin(checked.index)
    if missing.any():
        first = manifest[missing].iloc[0]
        raise DataError(
            f"{int(missing.sum())} manifest epochs have no quality row (first: "
            f"{first['dataset']}/{first['subject']}/{first['night']} epoch {first['epoch']}); "
            "run quality_table on their records before excluding"
        )
    flags = checked.loc[key, list(exclude_flags)].to_numpy(bool)
    drop = flags.any(axis=1)
    per_flag = ", ".join(f"{f}: {n}" for f, n in zip(exclude_flags, flags.sum(axis=0), strict=True))
    warnings.warn(
        f"excluded {int(drop.sum())} of {len(manifest)} epochs by quality flags ({per_flag})",
        QualityWarning,
        stacklevel=2,
    )
    return manifest[~drop]
