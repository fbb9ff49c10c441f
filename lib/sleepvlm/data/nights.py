"""Whole-night structure of hypnograms and the disagreement between real human scorers.

* :func:`night_statistics` / :func:`statistics_table` / :func:`quantile_summary`: the standard
  PSG sleep-architecture figures of one night and their spread over many nights.
* :func:`read_dod_scorers` / :func:`dod_scorers` / :func:`dod_hypnograms`: the Dreem Open
  Datasets (Guillot et al. 2020, IEEE TNSRE 28:1955), each night scored by five sleep experts:
  DOD-H, 25 healthy adults, and DOD-O, 55 patients with obstructive sleep apnea.
* :func:`majority_consensus`, :func:`pairwise_kappa`, :func:`each_vs_rest_kappa`,
  :func:`scorer_confusion`, :func:`disagreement_near_transitions`: how (and where) scorers
  disagree. They take any two or more label arrays, so simulated scorers are measured the
  same way as the real ones.

Hypnograms are arrays of labels, one per epoch: :data:`STAGES`, or the excluded labels
(MOVE, UNKNOWN) for epochs that carry no stage.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from sleepvlm.data.hypnogram import runs
from sleepvlm.data.records import (
    EPOCH_S,
    EXCLUDED_LABELS,
    STAGES,
    UNKNOWN,
    CorruptFileError,
    DataError,
)
from sleepvlm.data.registry import real_excerpt

#: Stages that count as sleep (everything but wake).
SLEEP_STAGES: tuple[str, ...] = STAGES[1:]
#: Quantiles reported by :func:`quantile_summary`.
QUANTILES: tuple[float, ...] = (0.10, 0.25, 0.50, 0.75, 0.90)
#: Parts of the sleep period over which the N3 and REM epochs are distributed.
SLEEP_PERIOD_THIRDS = 3

#: DOD stage codes (the dreem-learning-evaluation JSON convention, kept in our CSV copies).
DOD_CODES: dict[int, str] = {-1: UNKNOWN, **dict(enumerate(STAGES))}
DOD_FILES: dict[str, str] = {"h": "dod_h_scorers.csv", "o": "dod_o_scorers.csv"}
DOD_SCORERS: tuple[str, ...] = tuple(f"scorer_{i}" for i in range(1, 6))
DOD_COLUMNS: tuple[str, ...] = ("record", "epoch", *DOD_SCORERS)
#: ``scorer`` value of :func:`dod_hypnograms` that asks for the majority of the five scorers.
CONSENSUS = "consensus"


# ---------------------------------------------------------------------------------------------
# One night
# ---------------------------------------------------------------------------------------------


def checked_labels(labels, source: str = "hypnogram") -> np.ndarray:
    """``labels`` as a str array; DataError naming ``source`` for a label that is neither a
    stage nor an excluded label."""
    labels = np.asarray(labels, dtype=object).astype(str)
    bad = sorted(set(labels.tolist()) - set(STAGES) - set(EXCLUDED_LABELS))
    if bad:
        raise DataError(
            f"{source}: unknown stage labels {bad}; map them to {STAGES} or mark the epochs "
            f"{' / '.join(EXCLUDED_LABELS)}"
        )
    return labels


def transition_matrix(labels) -> pd.DataFrame:
    """Row-normalised stage-to-stage probabilities between adjacent epochs that are both
    scored (rows = stage of epoch i, columns = stage of epoch i + 1; NaN rows for a stage
    that never occurs before another scored epoch). Labels must be valid
    (:func:`checked_labels`)."""
    labels = np.asarray(labels)
    scored = np.isin(labels, STAGES)
    pair = scored[:-1] & scored[1:]
    counts = pd.crosstab(
        pd.Categorical(labels[:-1][pair], categories=STAGES),
        pd.Categorical(labels[1:][pair], categories=STAGES),
        dropna=False,
    ).astype(float)
    counts.index, counts.columns = pd.Index(STAGES, name="from"), pd.Index(STAGES, name="to")
    return counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0)


def sleep_period(labels) -> tuple[int, int] | None:
    """(first, last) epoch index of sleep (N1/N2/N3/REM), or None for a night without sleep."""
    asleep = np.flatnonzero(np.isin(labels, SLEEP_STAGES))
    return (int(asleep[0]), int(asleep[-1])) if len(asleep) else None


def stage_share_by_part(
    labels, stage: str, period: tuple[int, int], n_parts: int
) -> tuple[float, ...] | None:
    """Fraction of the epochs of ``stage`` that fall in each of ``n_parts`` equal parts of
    ``period`` (first, last epoch), or None if the stage is absent.

    Epoch ``first + k`` of a period of L epochs lies in part ``floor(n_parts * k / L)``; when
    L is not a multiple of ``n_parts`` the parts differ by at most one epoch."""
    first, last = period
    offsets = np.flatnonzero(np.asarray(labels)[first : last + 1] == stage)
    if not len(offsets):
        return None
    parts = n_parts * offsets // (last - first + 1)
    return tuple(float(np.mean(parts == p)) for p in range(n_parts))


def _scored_span(labels: np.ndarray) -> tuple[int, int]:
    scored = np.flatnonzero(np.isin(labels, STAGES))
    return int(scored[0]), int(scored[-1])


def _changes_and_awakenings(labels: np.ndarray) -> tuple[int, int]:
    """Stage changes and sleep→W transitions between adjacent, both-scored epochs."""
    scored = np.isin(labels, STAGES)
    pair = scored[:-1] & scored[1:]
    before, after = labels[:-1][pair], labels[1:][pair]
    awakenings = np.isin(before, SLEEP_STAGES) & (after == "W")
    return int(np.sum(before != after)), int(awakenings.sum())


def _mean_bout_minutes(labels: np.ndarray, epoch_s: float) -> dict[str, float | None]:
    lengths: dict[str, list[int]] = {stage: [] for stage in STAGES}
    for _, n, label in runs(list(labels)):
        if label in lengths:
            lengths[label].append(n)
    return {stage: float(np.mean(n)) * epoch_s / 60 if n else None for stage, n in lengths.items()}


def night_statistics(labels, epoch_s: float = EPOCH_S, source: str = "hypnogram") -> dict:
    """Sleep-architecture statistics of one hypnogram (one label per ``epoch_s``-s epoch).

    Definitions (an epoch is *scored* if its label is one of W/N1/N2/N3/REM; MOVE/UNKNOWN
    epochs are *unscored*; *sleep* is N1/N2/N3/REM; durations are in minutes):

    * ``tib_min`` time in bed: the scored record, from its first to its last scored epoch
      (inclusive; unscored epochs inside count, unscored epochs at either end do not).
    * ``tst_min`` total sleep time: number of sleep epochs × epoch length.
    * ``sleep_efficiency``: TST / TIB (a fraction).
    * ``sleep_onset_latency_min``: from the first scored epoch to the first sleep epoch.
    * ``rem_latency_min``: from the first sleep epoch to the first REM epoch (None: no REM).
    * The *sleep period* runs from the first to the last sleep epoch (inclusive).
    * ``waso_min`` wake after sleep onset: W epochs inside the sleep period (the wake after the
      final awakening is not counted).
    * ``share_<stage>`` for N1, N2, N3, REM: epochs of the stage / sleep epochs (sums to 1).
    * ``stage_changes_per_h``: pairs of adjacent epochs inside the sleep period, both scored,
      with different labels (W included), per hour of TST.
    * ``awakenings_per_h``: those pairs going from a sleep stage to W, per hour of TST.
    * ``n3_third_<k>`` / ``rem_third_<k>`` (k = 1, 2, 3): fraction of the night's N3 (REM)
      epochs lying in the k-th third of the sleep period (see :func:`stage_share_by_part`;
      None when the stage is absent).
    * ``mean_bout_<stage>_min``: mean length of the runs of consecutive epochs of that stage
      inside the sleep period (an unscored epoch ends a run; W runs are thus wake bouts after
      sleep onset; None when the stage has no run there).
    * ``transitions``: :func:`transition_matrix` over the whole record (DataFrame).

    DataError (naming ``source``) for unknown labels or a hypnogram without sleep."""
    labels = checked_labels(labels, source)
    period = sleep_period(labels)
    if period is None:
        raise DataError(
            f"{source}: no sleep epoch ({'/'.join(SLEEP_STAGES)}); night statistics need a "
            "night with sleep — check the stage mapping or leave this night out"
        )
    first_scored, last_scored = _scored_span(labels)
    in_period = labels[period[0] : period[1] + 1]
    per_epoch_min = epoch_s / 60
    n_sleep = int(np.isin(labels, SLEEP_STAGES).sum())
    tst_h = n_sleep * per_epoch_min / 60
    rem = np.flatnonzero(labels == "REM")
    changes, awakenings = _changes_and_awakenings(in_period)
    out: dict = {
        "tib_min": (last_scored - first_scored + 1) * per_epoch_min,
        "tst_min": n_sleep * per_epoch_min,
        "sleep_efficiency": n_sleep / (last_scored - first_scored + 1),
        "sleep_onset_latency_min": (period[0] - first_scored) * per_epoch_min,
        "rem_latency_min": float(rem[0] - period[0]) * per_epoch_min if len(rem) else None,
        "waso_min": int(np.sum(in_period == "W")) * per_epoch_min,
        "stage_changes_per_h": changes / tst_h,
        "awakenings_per_h": awakenings / tst_h,
    }
    out.update({f"share_{s}": float(np.sum(labels == s) / n_sleep) for s in SLEEP_STAGES})
    for stage in ("N3", "REM"):
        shares = stage_share_by_part(labels, stage, period, SLEEP_PERIOD_THIRDS)
        for k in range(SLEEP_PERIOD_THIRDS):
            out[f"{stage.lower()}_third_{k + 1}"] = None if shares is None else shares[k]
    bouts = _mean_bout_minutes(in_period, epoch_s)
    out.update({f"mean_bout_{s}_min": minutes for s, minutes in bouts.items()})
    out["transitions"] = transition_matrix(labels)
    return out


# ---------------------------------------------------------------------------------------------
# Many nights
# ---------------------------------------------------------------------------------------------


def statistics_table(hypnograms: Mapping[str, object], epoch_s: float = EPOCH_S) -> pd.DataFrame:
    """One row per night (index ``night`` = the key) holding the scalar statistics of
    :func:`night_statistics` (missing ones, e.g. the REM latency of a night without REM, NaN)."""
    rows = {}
    for name, labels in hypnograms.items():
        stats = night_statistics(labels, epoch_s, source=str(name))
        stats.pop("transitions")
        rows[name] = stats
    table = pd.DataFrame.from_dict(rows, orient="index").astype(float)
    table.index.name = "night"
    return table


def _quantiles(table: pd.DataFrame) -> pd.DataFrame:
    out = table.quantile(list(QUANTILES)).T
    out.columns = [f"{q:.0%}" for q in QUANTILES]
    out.insert(0, "n", table.notna().sum())
    out.index.name = "statistic"
    return out


def quantile_summary(table: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Number of nights with a value (``n``) and the 10/25/50/75/90 % quantiles of every
    numeric column of ``table`` (e.g. :func:`statistics_table`), one row per statistic; with
    ``by`` (a column of ``table``) one block of rows per group, indexed (group, statistic)."""
    if by is None:
        return _quantiles(table.select_dtypes("number"))
    if by not in table.columns:
        raise DataError(
            f"quantile_summary: no column {by!r} to group by; columns are {list(table.columns)}"
        )
    groups = {
        group: _quantiles(part.drop(columns=by).select_dtypes("number"))
        for group, part in table.groupby(by, sort=False)
    }
    return pd.concat(groups, names=[by, "statistic"])


# ---------------------------------------------------------------------------------------------
# Dreem Open Datasets
# ---------------------------------------------------------------------------------------------


def _check_dod_columns(table: pd.DataFrame, path: Path) -> None:
    missing = [c for c in DOD_COLUMNS if c not in table.columns]
    if missing:
        raise CorruptFileError(
            f"{path}: missing columns {missing}; a DOD scorer table has the columns "
            f"{', '.join(DOD_COLUMNS)} (see shared/data/real/SOURCES.md)"
        )


def _check_dod_codes(table: pd.DataFrame, path: Path) -> None:
    for column in DOD_SCORERS:
        codes = pd.to_numeric(table[column], errors="coerce")
        bad = ~codes.isin(list(DOD_CODES))
        if bad.any():
            row = table[bad].iloc[0]
            raise CorruptFileError(
                f"{path}: column {column} holds {int(bad.sum())} codes outside "
                f"{min(DOD_CODES)}..{max(DOD_CODES)} (first: {row[column]} at record "
                f"{row['record']}, epoch {row['epoch']}); the codes are -1 not scored, "
                + ", ".join(f"{code} {label}" for code, label in DOD_CODES.items() if code >= 0)
            )


def _check_dod_epochs(table: pd.DataFrame, path: Path) -> None:
    expected = table.groupby("record", sort=False).cumcount()
    wrong = pd.to_numeric(table["epoch"], errors="coerce") != expected
    if wrong.any():
        row = table[wrong].iloc[0]
        raise CorruptFileError(
            f"{path}: record {row['record']} has epoch {row['epoch']} where epoch "
            f"{expected[wrong].iloc[0]} belongs; each record's rows must hold epochs 0, 1, 2, … "
            "in order (rows lost or reordered?)"
        )


def read_dod_scorers(path: str | Path) -> pd.DataFrame:
    """The DOD scorer table at ``path`` (columns ``record, epoch, scorer_1 … scorer_5``, one
    row per 30-s epoch, codes -1 … 4), validated, with the codes turned into labels (-1 →
    UNKNOWN). CorruptFileError naming the file for an unreadable file, a missing column, a
    code outside -1 … 4, or epochs that do not run 0, 1, 2, … within a record."""
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"{path}: cannot be read as a CSV table ({err})") from err
    _check_dod_columns(table, path)
    _check_dod_codes(table, path)
    _check_dod_epochs(table, path)
    out = table[list(DOD_COLUMNS)].copy()
    out["record"] = out["record"].astype(str)
    for column in DOD_SCORERS:
        out[column] = out[column].astype(int).map(DOD_CODES).astype(object)
    return out


def _dod_file(which: str) -> str:
    if which not in DOD_FILES:
        raise DataError(
            f"unknown DOD dataset {which!r}; use 'h' (DOD-H, healthy) or 'o' (DOD-O, apnea)"
        )
    return DOD_FILES[which]


@functools.cache
def _cached_dod_scorers(which: str) -> pd.DataFrame:
    return read_dod_scorers(real_excerpt(_dod_file(which)))


def dod_scorers(which: str) -> pd.DataFrame:
    """:func:`read_dod_scorers` of DOD-H (``which="h"``) or DOD-O (``"o"``) from the registry
    (read once per process; a fresh copy is returned each time)."""
    return _cached_dod_scorers(which).copy()


def _scored_by_all_window(scorers: pd.DataFrame) -> slice:
    """Epochs from the latest first-scored to the earliest last-scored epoch of the scorers
    (every scorer scores hours of every night of the hash-checked DOD files)."""
    scored = scorers.isin(STAGES).to_numpy()
    start = scored.argmax(axis=0).max()
    stop = len(scored) - scored[::-1].argmax(axis=0).max()
    return slice(int(start), int(stop))


def dod_hypnograms(which: str, scorer: str | int = CONSENSUS) -> dict[str, np.ndarray]:
    """record → labels of DOD-H (``which="h"``) or DOD-O (``"o"``), each night cut to the epochs
    from the latest first-scored to the earliest last-scored epoch of the five scorers, as
    DOD's evaluation code does: the scorers' lights-off differ (DOD-O: by a median of 53 min,
    almost all of it wake, so the cut keeps sleep-onset latencies from growing with it).

    ``scorer`` is 1 … 5 for one scorer's hypnogram (UNKNOWN where that scorer did not score),
    or ``"consensus"`` for :func:`majority_consensus` of the five."""
    if scorer != CONSENSUS and scorer not in range(1, len(DOD_SCORERS) + 1):
        raise DataError(
            f"unknown DOD scorer {scorer!r}; use 1 … {len(DOD_SCORERS)} or {CONSENSUS!r}"
        )
    out = {}
    for record, night in _cached_dod_scorers(which).groupby("record", sort=False):
        scorers = night[list(DOD_SCORERS)]
        scorers = scorers.iloc[_scored_by_all_window(scorers)]
        if scorer == CONSENSUS:
            out[str(record)] = majority_consensus(scorers)
        else:
            out[str(record)] = scorers[f"scorer_{scorer}"].to_numpy(dtype=object)
    return out


# ---------------------------------------------------------------------------------------------
# Scorer agreement
# ---------------------------------------------------------------------------------------------


def _stage_indices(scorers, min_scorers: int = 2) -> tuple[list[str], np.ndarray]:
    """Scorer names and an (epochs × scorers) array of indices into :data:`STAGES` (-1 for an
    unscored epoch) of ``scorers``: a DataFrame (one column per scorer, one row per epoch) or
    a mapping name → labels."""
    try:
        frame = pd.DataFrame(scorers)
    except ValueError as err:
        raise DataError(f"scorers: the label arrays must have one length ({err})") from err
    if frame.shape[1] < min_scorers:
        raise DataError(
            f"scorers: {frame.shape[1]} scorer column(s) given, {min_scorers} or more needed"
        )
    indices = np.full(frame.shape, -1)
    for j, name in enumerate(frame.columns):
        labels = checked_labels(frame[name], source=f"scorer {name}")
        for k, stage in enumerate(STAGES):
            indices[labels == stage, j] = k
    return [str(name) for name in frame.columns], indices


def _scored_by_all(indices: np.ndarray) -> np.ndarray:
    """Mask of the epochs that every scorer scored; DataError when there is none."""
    scored = (indices >= 0).all(axis=1)
    if not scored.any():
        raise DataError("scorers: no epoch is scored by all of them; nothing to compare")
    return scored


def _plurality(indices: np.ndarray) -> np.ndarray:
    """Stage index chosen by the plurality rule of :func:`majority_consensus` (-1: no vote)."""
    votes = np.stack([(indices == k).sum(axis=1) for k in range(len(STAGES))], axis=1)
    top = votes.max(axis=1)
    own_votes = np.take_along_axis(votes, np.maximum(indices, 0), axis=1)
    on_top = (indices >= 0) & (own_votes == top[:, None])
    chosen = indices[np.arange(len(indices)), on_top.argmax(axis=1)]
    return np.where(top > 0, chosen, -1)


def _as_labels(indices: np.ndarray) -> np.ndarray:
    # index -1 (no stage) picks the last entry, UNKNOWN
    return np.asarray((*STAGES, UNKNOWN), dtype=object)[indices]


def majority_consensus(scorers) -> np.ndarray:
    """Per-epoch plurality of the scorers (columns of a DataFrame or a mapping name → labels)
    among those who scored the epoch; UNKNOWN where nobody did.

    Ties go to the stage of the first scorer, in column order, who voted for one of the tied
    stages: a fixed rule that needs no data-dependent ranking (DOD's own code breaks ties by
    each scorer's soft agreement with the others). Put a trusted scorer first to favour it."""
    _, indices = _stage_indices(scorers, min_scorers=1)
    return _as_labels(_plurality(indices))


def _confusion_counts(reference: np.ndarray, compared: np.ndarray) -> np.ndarray:
    n = len(STAGES)
    return np.bincount(reference * n + compared, minlength=n * n).reshape(n, n).astype(float)


def _kappa(reference: np.ndarray, compared: np.ndarray) -> float:
    """Cohen's (1960) κ = (p_o - p_e) / (1 - p_e) of two scored stage-index arrays."""
    counts = _confusion_counts(reference, compared)
    total = counts.sum()
    observed = np.trace(counts) / total
    expected = counts.sum(axis=1) @ counts.sum(axis=0) / total**2
    return float((observed - expected) / (1 - expected))


def pairwise_kappa(scorers) -> pd.DataFrame:
    """Cohen's κ of every pair of scorers over the epochs scored by all of them.

    ``scorers``: DataFrame (one column per scorer, one row per epoch) or mapping name →
    labels. Returns one row per pair: ``scorer_a``, ``scorer_b``, ``kappa``, ``epochs``."""
    names, indices = _stage_indices(scorers)
    indices = indices[_scored_by_all(indices)]
    rows = [
        {
            "scorer_a": names[a],
            "scorer_b": names[b],
            "kappa": _kappa(indices[:, a], indices[:, b]),
            "epochs": len(indices),
        }
        for a, b in combinations(range(len(names)), 2)
    ]
    return pd.DataFrame(rows)


def each_vs_rest_kappa(scorers) -> pd.DataFrame:
    """Cohen's κ of each scorer against the :func:`majority_consensus` of the others, over the
    epochs scored by all (the human ceiling of the DOD paper: a stager is as good as a human
    when it agrees with the consensus as well as each human does). Index ``scorer``; columns
    ``kappa`` and ``epochs``."""
    names, indices = _stage_indices(scorers)
    indices = indices[_scored_by_all(indices)]
    kappas = {
        name: _kappa(indices[:, j], _plurality(np.delete(indices, j, axis=1)))
        for j, name in enumerate(names)
    }
    out = pd.DataFrame({"kappa": kappas, "epochs": len(indices)})
    out.index.name = "scorer"
    return out


def scorer_confusion(reference, compared) -> pd.DataFrame:
    """Row-normalised confusion of ``compared`` against ``reference`` over the epochs both
    scored: rows = the reference's stage, columns = the compared scorer's stage, each row the
    fractions of that reference stage's epochs (NaN for a stage the reference never gives)."""
    _, indices = _stage_indices({"reference": reference, "compared": compared})
    indices = indices[_scored_by_all(indices)]
    counts = pd.DataFrame(
        _confusion_counts(indices[:, 0], indices[:, 1]),
        index=pd.Index(STAGES, name="reference"),
        columns=pd.Index(STAGES, name="compared"),
    )
    return counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0)


def _consensus_changes(consensus: np.ndarray, nights: np.ndarray) -> np.ndarray:
    """``changes[i]``: the consensus stage changes between epochs i - 1 and i of one night."""
    changes = np.zeros(len(consensus), dtype=bool)
    changes[1:] = (
        (consensus[1:] >= 0)
        & (consensus[:-1] >= 0)
        & (consensus[1:] != consensus[:-1])
        & (nights[1:] == nights[:-1])
    )
    return changes


def _near_changes(changes: np.ndarray, nights: np.ndarray, window: int) -> np.ndarray:
    """Epochs j with a change (``changes[b]``, between b - 1 and b) at some b in
    j - window + 1 … j + window of j's night."""
    epoch = np.arange(len(changes))
    near = np.zeros(len(changes), dtype=bool)
    for shift in range(-window + 1, window + 1):
        b = epoch + shift
        inside = (b >= 0) & (b < len(changes))
        near[inside] |= changes[b[inside]] & (nights[b[inside]] == nights[inside])
    return near


def disagreement_near_transitions(
    scorers, window: int = 1, nights: Sequence | None = None
) -> dict[str, float]:
    """Is scorer disagreement concentrated at stage transitions?

    An epoch *disagrees* when the scorers do not all give it the same stage; it lies *near a
    transition* when the :func:`majority_consensus` changes stage between two of the epochs
    j - ``window`` … j + ``window`` (``window=1``: the two epochs flanking each change). Only
    epochs scored by all scorers are counted. ``nights`` (a night id per epoch, each night one
    contiguous block) keeps changes and windows inside a night when nights are stacked.

    Returns ``epochs``, ``disagreeing`` (counts), ``share_of_epochs_near`` (of all epochs),
    ``share_of_disagreement_near`` (of the disagreeing epochs; above ``share_of_epochs_near``
    when disagreement concentrates at transitions), and ``rate_near`` / ``rate_away`` (share
    of the epochs near / away from transitions that disagree)."""
    if window < 1:
        raise DataError(f"disagreement_near_transitions: window must be 1 or more, not {window}")
    _, indices = _stage_indices(scorers)
    nights = np.zeros(len(indices)) if nights is None else np.asarray(nights)
    if len(nights) != len(indices):
        raise DataError(
            f"disagreement_near_transitions: {len(nights)} night ids for {len(indices)} epochs"
        )
    near = _near_changes(_consensus_changes(_plurality(indices), nights), nights, window)
    counted = _scored_by_all(indices)
    disagree = (indices.min(axis=1) != indices.max(axis=1))[counted]
    near = near[counted]
    return {
        "epochs": int(counted.sum()),
        "disagreeing": int(disagree.sum()),
        "share_of_epochs_near": float(near.mean()),
        "share_of_disagreement_near": float(near[disagree].mean()) if disagree.any() else np.nan,
        "rate_near": float(disagree[near].mean()) if near.any() else np.nan,
        "rate_away": float(disagree[~near].mean()) if (~near).any() else np.nan,
    }
