"""How close is the simulated cohort to real PSG? Checks used by the book's data chapter.

* :func:`yasa_staging_agreement` runs YASA's pretrained stager (:func:`yasa_predict`) on a
  night and scores it
  against the night's hypnogram (a realistic night should be staged about as well as real
  data, kappa ~0.7-0.8).
* :func:`stage_spectra` / :func:`real_excerpt_spectra` give per-stage Welch spectra of a
  recording and of the real excerpts kept in ``shared/data/real``.
* :func:`hypnogram_stats` / :func:`real_hypnograms` compare night structure.
* :func:`night_structure_goals` holds the simulated centers' whole-night statistics to the
  real DOD nights, and :func:`scorer_agreement_summary` their simulated scorers to DOD's five
  real scorers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import signal

from sleepvlm.data.edf import edf_annotations, open_edf
from sleepvlm.data.hypnogram import annotations_to_epochs, map_stages
from sleepvlm.data.nights import (
    DOD_SCORERS,
    checked_labels,
    disagreement_near_transitions,
    dod_hypnograms,
    dod_scorers,
    each_vs_rest_kappa,
    pairwise_kappa,
    scorer_confusion,
    sleep_period,
    stage_share_by_part,
    statistics_table,
    transition_matrix,
)
from sleepvlm.data.records import (
    EPOCH_S,
    EXCLUDED_LABELS,
    STAGES,
    CorruptFileError,
    DataError,
    Recording,
)
from sleepvlm.data.registry import real_excerpt
from sleepvlm.data.simulate import simulate_scoring

#: Common rate at which YASA's features are computed (it resamples to it anyway).
YASA_SFREQ = 100.0
#: Frequency range kept in spectra tables (Hz).
SPECTRUM_FMAX = 40.0
_WELCH_S = 4.0


def _resample(x: np.ndarray, sfreq: float, target: float) -> np.ndarray:
    ratio = Fraction(target / sfreq).limit_denominator(1000)
    if ratio == 1:
        return np.asarray(x, dtype=np.float64)
    return signal.resample_poly(np.asarray(x, dtype=np.float64), ratio.numerator, ratio.denominator)


def _scored_slice(rec: Recording) -> tuple[int, int]:
    """Sample window (at YASA_SFREQ) covered by whole hypnogram epochs inside the signal."""
    start = int(round(rec.hypnogram_offset * YASA_SFREQ))
    n_ep = min(len(rec.stages), int((rec.duration() - rec.hypnogram_offset) // EPOCH_S))
    if n_ep < 10:
        raise DataError(
            f"{rec.label}: only {n_ep} scored 30-s epochs overlap the signal; YASA needs a "
            "night (at least 10 epochs, ideally hours) — use a longer recording"
        )
    return start, n_ep


#: MNE channel type of each role, as YASA's stager reads them.
_YASA_TYPES = {"eeg": "eeg", "eog": "eog", "emg": "emg"}


def yasa_predict(
    signals: Mapping[str, np.ndarray],
    sfreq: Mapping[str, float],
    roles: Mapping[str, str],
    metadata: dict | None = None,
) -> np.ndarray:
    """YASA's pretrained stager on the channels that play ``roles`` (role -> channel name: the
    EEG, and the EOG and chin EMG when given; signals in µV at their ``sfreq``): one label per
    whole 30-s epoch from the first sample, spelled as STAGES (W, not WAKE). Channels are
    brought to :data:`YASA_SFREQ` and cut to the shortest."""
    import mne
    import yasa

    used = [r for r in _YASA_TYPES if r in roles]
    names = [roles[r] for r in used]
    data = [_resample(signals[ch], sfreq[ch], YASA_SFREQ) for ch in names]
    n = min(len(y) for y in data)
    # MNE keeps volts; YASA converts back to µV internally
    info = mne.create_info(names, YASA_SFREQ, ch_types=[_YASA_TYPES[r] for r in used])
    raw = mne.io.RawArray(np.vstack([y[:n] for y in data]) * 1e-6, info, verbose=False)
    staging = yasa.SleepStaging(
        raw,
        eeg_name=roles["eeg"],
        eog_name=roles.get("eog"),
        emg_name=roles.get("emg"),
        metadata=metadata,
    )
    with warnings.catch_warnings():
        # YASA's classifiers were pickled by an older scikit-learn; predictions are unaffected
        warnings.filterwarnings("ignore", message="Trying to unpickle")
        predicted = np.asarray(staging.predict().hypno.to_numpy(), dtype=object)
    predicted[predicted == "WAKE"] = "W"
    return predicted.astype(str)


def yasa_staging_agreement(rec: Recording, metadata: dict | None = None) -> dict:
    """Stage ``rec`` with YASA's pretrained classifier (EEG + EOG + EMG, :func:`yasa_predict`)
    and compare with ``rec.stages``; MOVE/UNKNOWN epochs are left out.

    Returns ``kappa``, ``accuracy``, ``f1`` (per stage), ``confusion`` (DataFrame, rows = scored,
    columns = YASA), ``n_epochs`` and ``predicted`` (YASA's label per epoch); for a simulated
    night also ``vs_truth`` (YASA against the generating stages) and ``scorer_vs_truth`` (the
    scored labels against them: the ceiling that scorer disagreement puts on any stager)."""
    roles = {r: rec.role(r) for r in ("eeg", "eog", "emg")}
    start, n_ep = _scored_slice(rec)
    stop = start + int(n_ep * EPOCH_S * YASA_SFREQ)
    data = {}
    for ch in roles.values():
        y = _resample(rec.signals[ch], rec.sfreq[ch], YASA_SFREQ)[start:stop]
        if len(y) < stop - start:
            raise DataError(f"{rec.label}: channel {ch} ends before the last scored epoch")
        data[ch] = y
    predicted = yasa_predict(data, dict.fromkeys(data, YASA_SFREQ), roles, metadata)
    scored = np.asarray(rec.stages[:n_ep], dtype=object).astype(str)
    out = _agreement(scored, predicted)
    out["predicted"] = predicted
    if "truth" in rec.other_scorers:
        truth = np.asarray(rec.other_scorers["truth"][:n_ep]).astype(str)
        out["vs_truth"] = _agreement(truth, predicted.astype(str))
        out["scorer_vs_truth"] = _agreement(truth, scored)
    return out


def _agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """κ, accuracy, per-stage F1 and confusion of ``other`` against ``reference`` (the epochs
    that the reference leaves unscored are left out)."""
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score

    keep = ~np.isin(reference, EXCLUDED_LABELS)
    y_true, y_pred = reference[keep], other[keep]
    labels = list(STAGES)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0.0)
    return {
        "kappa": float(cohen_kappa_score(y_true, y_pred, labels=labels)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": dict(zip(labels, map(float, f1), strict=True)),
        "confusion": pd.DataFrame(
            confusion_matrix(y_true, y_pred, labels=labels),
            index=pd.Index(labels, name="reference"),
            columns=pd.Index(labels, name="compared"),
        ),
        "n_epochs": int(keep.sum()),
    }


def agreement_table(results: dict) -> pd.DataFrame:
    """One row per night of :func:`yasa_staging_agreement` results keyed by (center, subject):
    YASA's κ and per-stage F1 against the scored labels, and (simulated nights) YASA's and the
    scorer's κ against the generating stages."""
    rows = {}
    for key, res in results.items():
        row = {"kappa": res["kappa"], "accuracy": res["accuracy"]}
        row.update({f"F1 {s}": v for s, v in res["f1"].items()})
        if "vs_truth" in res:
            row["kappa vs truth"] = res["vs_truth"]["kappa"]
            row["F1 N1 vs truth"] = res["vs_truth"]["f1"]["N1"]
            row["scorer kappa vs truth"] = res["scorer_vs_truth"]["kappa"]
        rows[key] = row
    columns = ["kappa", "accuracy", *(f"F1 {s}" for s in STAGES)]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=None if rows else columns)
    table.index = pd.MultiIndex.from_tuples(list(rows), names=["center", "subject"])
    return table


#: YASA's agreement with the scored labels a realistic night should reach (chapter 01).
YASA_KAPPA_GOAL = 0.7
YASA_STAGE_F1_GOAL = 0.6
#: N1's own, lower bar: scorers and stagers find it hardest on real nights too (issue 16).
YASA_N1_F1_GOAL = 0.45
#: What a goal that needs the simulated nights says when the chapter reads a real dataset.
NOT_MEASURED = "not measured (this run reads a real dataset, without simulated nights)"


def yasa_goal_texts(table: pd.DataFrame) -> dict[str, str]:
    """The chapter's sentences on YASA's agreement (:func:`agreement_table`) with its goals:
    the mean κ, whether every center's mean κ meets :data:`YASA_KAPPA_GOAL`, and which stages
    miss their F1 goal (:data:`YASA_N1_F1_GOAL` for N1, :data:`YASA_STAGE_F1_GOAL` for the
    others); :data:`NOT_MEASURED` for an empty table."""
    goals = {
        "kappa_goal_value": f"{YASA_KAPPA_GOAL:g}",
        "f1_goal_value": f"{YASA_STAGE_F1_GOAL:g} (N1: {YASA_N1_F1_GOAL:g})",
    }
    if table.empty:
        return {"yasa_kappa": "—", "kappa_goal": NOT_MEASURED, "f1_goal": NOT_MEASURED, **goals}
    per_center = table["kappa"].groupby(level="center").mean()
    missed = per_center[per_center < YASA_KAPPA_GOAL]
    stage_f1 = table[[f"F1 {s}" for s in STAGES]].mean()
    goal = {s: YASA_N1_F1_GOAL if s == "N1" else YASA_STAGE_F1_GOAL for s in STAGES}
    low = {s[3:]: v for s, v in stage_f1.items() if v < goal[s[3:]]}
    return {
        "yasa_kappa": f"{table['kappa'].mean():.2f}",
        "kappa_goal": "is met on every center"
        if missed.empty
        else "is missed on " + ", ".join(f"{c} ({v:.2f})" for c, v in missed.items()),
        "f1_goal": "every stage reaches it"
        if not low
        else "not every stage reaches it: " + ", ".join(f"{s} {v:.2f}" for s, v in low.items()),
        **goals,
    }


def _welch(x: np.ndarray, sfreq: float) -> tuple[np.ndarray, np.ndarray]:
    nper = int(_WELCH_S * sfreq)
    freqs, psd = signal.welch(x, sfreq, nperseg=nper, noverlap=nper // 2, axis=-1)
    keep = freqs <= SPECTRUM_FMAX
    return freqs[keep], psd[..., keep]


def stage_spectra(rec: Recording, role: str = "eeg") -> pd.DataFrame:
    """Median (over epochs, robust to artifacts) Welch PSD (µV²/Hz, 4-s windows) of the 30-s
    epochs of each scored stage.

    Long table with columns ``stage``, ``channel``, ``freq``, ``psd``, ``n_epochs``."""
    ch = rec.role(role)
    fs = rec.sfreq[ch]
    x = rec.signals[ch].astype(np.float64)
    start = int(round(rec.hypnogram_offset * fs))
    per = int(round(EPOCH_S * fs))
    n_ep = min(len(rec.stages), (len(x) - start) // per)
    if n_ep < 1:
        raise DataError(f"{rec.label}: channel {ch} holds no whole scored epoch")
    epochs = x[start : start + n_ep * per].reshape(n_ep, per)
    freqs, psd = _welch(epochs, fs)
    stages = np.asarray(rec.stages[:n_ep]).astype(str)
    rows = []
    for stage in STAGES:
        sel = stages == stage
        if sel.any():
            rows.append(
                pd.DataFrame(
                    {
                        "stage": stage,
                        "channel": ch,
                        "freq": freqs,
                        "psd": np.median(psd[sel], axis=0),
                        "n_epochs": int(sel.sum()),
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def _read_txt(path: Path) -> np.ndarray:
    try:
        return np.loadtxt(path, dtype=np.float64).ravel()
    except (OSError, ValueError) as err:
        raise CorruptFileError(
            f"{path}: cannot be read as whitespace-separated numbers ({err})"
        ) from err


def real_excerpt_spectra() -> pd.DataFrame:
    """Welch PSDs (µV²/Hz, 4-s windows) of the real excerpts: N2 with spindles (200 Hz), N3
    (100 Hz), resting eyes-open wake (FIF, F4-A1 and Cz-A2, 200 Hz) and the first 300 s of
    Sleep-EDF SC4001E0 (wake; Fpz-Cz, Pz-Oz, horizontal EOG, 100 Hz).

    Long table with columns ``source``, ``stage``, ``channel``, ``freq``, ``psd``."""
    import mne

    n2 = _read_txt(real_excerpt("yasa_data_N2_spindles_15sec_200Hz.txt"))
    n3 = _read_txt(real_excerpt("yasa_data_N3_no-spindles_30sec_100Hz.txt"))
    pieces: list[tuple[str, str, str, np.ndarray, float]] = [
        ("yasa N2 spindles", "N2", "EEG", n2, 200.0),
        ("yasa N3", "N3", "EEG", n3, 100.0),
    ]
    for fname, source in (
        ("yasa_data_resting_EO_200Hz_raw.fif", "yasa resting eyes open"),
        ("sleepedf_SC4001E0-PSG_first300s.edf", "sleep-edf SC4001E0 wake"),
    ):
        path = real_excerpt(fname)
        try:
            reader = mne.io.read_raw_fif if fname.endswith(".fif") else mne.io.read_raw_edf
            with warnings.catch_warnings():
                # Sleep-EDF mixes per-channel filter settings; MNE warns, the data are fine
                warnings.simplefilter("ignore", RuntimeWarning)
                raw = reader(path, preload=True, verbose=False)
        except (OSError, ValueError) as err:
            raise CorruptFileError(f"{path}: cannot be read by MNE ({err})") from err
        for ch in raw.ch_names:
            if ch.startswith(("EEG", "EOG", "F4", "CZ", "Cz")):
                x = raw.get_data(picks=[ch], units="uV")[0]
                pieces.append((source, "W", ch, x, raw.info["sfreq"]))
    rows = []
    for source, stage, ch, x, fs in pieces:
        freqs, psd = _welch(x, fs)
        table = {"source": source, "stage": stage, "channel": ch, "freq": freqs, "psd": psd}
        rows.append(pd.DataFrame(table))
    return pd.concat(rows, ignore_index=True)


def hypnogram_stats(labels) -> dict:
    """Night-structure summary of a 30-s hypnogram.

    ``shares`` (fraction of scored epochs per stage), ``transitions`` (row-normalised
    stage-to-stage probabilities between consecutive scored epochs, DataFrame), ``sleep_onset``
    (epoch index of the first sleep epoch or None), and, over the sleep period (first to last
    sleep epoch), ``n3_first_half`` / ``rem_first_half``: the fraction of that stage's epochs
    falling in the first half (N3 should be > 0.5, REM < 0.5). The fuller set of standard
    statistics is :func:`sleepvlm.data.nights.night_statistics`."""
    labels = checked_labels(labels, source="hypnogram_stats")
    n_scored = int(np.isin(labels, STAGES).sum())
    if n_scored == 0:
        raise DataError("hypnogram_stats: the hypnogram has no scored (W/N1/N2/N3/REM) epoch")
    shares = {s: float((labels == s).sum() / n_scored) for s in STAGES}
    out = {"shares": shares, "transitions": transition_matrix(labels), "n_epochs": n_scored}
    period = sleep_period(labels)
    for stage, key in (("N3", "n3_first_half"), ("REM", "rem_first_half")):
        halves = None if period is None else stage_share_by_part(labels, stage, period, 2)
        out[key] = None if halves is None else halves[0]
    out["sleep_onset"] = None if period is None else period[0]
    return out


def real_hypnograms(margin_min: float = 30.0) -> dict:
    """The real hypnograms of the registry as arrays of labels (W/N1/N2/N3/REM/UNKNOWN).

    Sleep-EDF's 24-h-long hypnogram (R&K; S3+S4 -> N3) is cut to the sleep period with
    ``margin_min`` minutes of wake on each side, as is usual for that dataset."""
    out = {}
    path = real_excerpt("yasa_data_full_6hrs_100Hz_hypno_30s.txt")
    codes = _read_txt(path).astype(int)
    if codes.min() < 0 or codes.max() > 4:
        raise CorruptFileError(f"{path}: stage codes must be 0-4, found {sorted(set(codes))}")
    out["yasa_full_6hrs"] = np.array(STAGES, dtype=object)[codes]
    text = real_excerpt("yasa_sub-02_hypno_30s.txt").read_text().split()
    out["yasa_sub-02"] = np.array([{"R": "REM"}.get(s, s) for s in text], dtype=object)
    path = real_excerpt("sleepedf_SC4001EC-Hypnogram.edf")
    _, codes = annotations_to_epochs(edf_annotations(open_edf(path)), source=str(path))
    labels, _ = map_stages(codes, "sleepedf", source=str(path))
    first, last = sleep_period(labels)
    margin = int(margin_min * 60 / EPOCH_S)
    out["sleepedf_SC4001"] = labels[max(first - margin, 0) : last + margin + 1]
    return out


# --------------------------------------------------------------------------------------------
# Night structure and scorer disagreement against real nights (DOD-H, DOD-O)
# --------------------------------------------------------------------------------------------

#: Real night groups the simulated centers are held to: every DOD night as each of its five
#: scorers scored it (a simulated night is scored by one scorer, so single scorers are the
#: like-for-like comparison; the five-scorer consensus is smoother than any one scorer).
REAL_NIGHT_GROUPS: dict[str, str] = {"DOD-H": "h", "DOD-O": "o"}
#: Statistics whose simulated median must lie inside the real nights' 10-90 % range...
NIGHT_RANGE_STATISTICS: tuple[str, ...] = (
    "tst_min",
    "sleep_efficiency",
    "sleep_onset_latency_min",
    "rem_latency_min",
    "waso_min",
    *(f"share_{s}" for s in STAGES[1:]),
    "stage_changes_per_h",
    "awakenings_per_h",
    "n3_third_1",
    "rem_third_3",
    *(f"mean_bout_{s}_min" for s in STAGES),
)
#: ...and those that must lie inside the real interquartile range.
NIGHT_IQR_STATISTICS: tuple[str, ...] = (
    "rem_latency_min",
    "n3_third_1",
    "stage_changes_per_h",
)
#: Pairwise Cohen's kappa between two scorers of the same night, DOD-H and DOD-O together.
REAL_SCORER_KAPPA = (0.63, 0.77)


def real_single_scorer_nights(which: str) -> dict[str, np.ndarray]:
    """Every night of DOD-H (``"h"``) or DOD-O (``"o"``) as each of its five scorers scored it
    (``record/scorer_k``)."""
    return {
        f"{record}/scorer_{k}": labels
        for k in range(1, len(DOD_SCORERS) + 1)
        for record, labels in dod_hypnograms(which, scorer=k).items()
    }


def simulated_scored_nights(center: str, subjects: int, hours: float, seed: int = 0) -> dict:
    """The scored hypnograms (scorer 1) of a center's simulated cohort nights, drawn without
    their signals (:func:`~sleepvlm.data.simulate.simulate_scoring`; the same labels)."""
    return {
        f"{center}/s{s:03d}": simulate_scoring(center, s, seed=seed, hours=hours)[1][0]
        for s in range(subjects)
    }


def night_structure_table(groups: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """:func:`~sleepvlm.data.nights.statistics_table` of each group's nights, one row per
    night, with a ``group`` column."""
    tables = [statistics_table(nights).assign(group=name) for name, nights in groups.items()]
    return pd.concat(tables)


def night_structure_goals(
    table: pd.DataFrame, centers: Sequence[str], real: Sequence[str] = tuple(REAL_NIGHT_GROUPS)
) -> pd.DataFrame:
    """Each simulated center's median of each statistic beside the 10, 25, 75 and 90 %
    quantiles of the real nights (groups ``real`` pooled): the goal is met when the median lies
    inside the 10-90 % range, and for :data:`NIGHT_IQR_STATISTICS` inside the interquartile
    range. One row per (center, statistic)."""
    real_nights = table[table["group"].isin(real)]
    quantiles = real_nights[list(NIGHT_RANGE_STATISTICS)].quantile([0.10, 0.25, 0.75, 0.90])
    rows = []
    for center in centers:
        medians = table.loc[table["group"] == center, list(NIGHT_RANGE_STATISTICS)].median()
        for stat in NIGHT_RANGE_STATISTICS:
            q = quantiles[stat]
            tight = stat in NIGHT_IQR_STATISTICS
            low, high = (q[0.25], q[0.75]) if tight else (q[0.10], q[0.90])
            rows.append(
                {
                    "center": center,
                    "statistic": stat,
                    "simulated median": medians[stat],
                    "real 10 %": q[0.10],
                    "real 25 %": q[0.25],
                    "real 75 %": q[0.75],
                    "real 90 %": q[0.90],
                    "goal": "inside real 25-75 %" if tight else "inside real 10-90 %",
                    "met": bool(low <= medians[stat] <= high),
                }
            )
    columns = ["center", "statistic", "simulated median", "real 10 %", "real 25 %"]
    columns += ["real 75 %", "real 90 %", "goal", "met"]
    return pd.DataFrame(rows, columns=columns).set_index(["center", "statistic"])


def night_goal_texts(goals: pd.DataFrame) -> dict[str, str]:
    """How many (center, statistic) goals of :func:`night_structure_goals` are met, and a
    verdict; :data:`NOT_MEASURED` when there is no simulated center."""
    if goals.empty:
        return {"night_goals_met": "—", "night_goals_verdict": NOT_MEASURED}
    met = int(goals["met"].sum())
    verdict = "all are met" if met == len(goals) else "the rows below are not met"
    return {"night_goals_met": f"{met} of {len(goals)}", "night_goals_verdict": verdict}


def scorer_kappa_texts(summary: pd.DataFrame, centers: Sequence[str]) -> dict[str, str]:
    """The simulated centers' mean pairwise κ (:func:`scorer_agreement_summary`) and whether it
    lies inside :data:`REAL_SCORER_KAPPA`; :data:`NOT_MEASURED` without simulated centers."""
    if not len(centers):
        return {"scorer_kappa_range": "—", "scorer_kappa_verdict": NOT_MEASURED}
    low, high = REAL_SCORER_KAPPA
    kappa = summary.loc[list(centers), "pairwise κ mean"]
    outside = kappa[~kappa.between(low, high)].index
    return {
        "scorer_kappa_range": ", ".join(f"{c} {k:.2f}" for c, k in kappa.items()),
        "scorer_kappa_verdict": "inside"
        if outside.empty
        else f"outside (for {', '.join(outside)})",
    }


def simulated_scorer_panel(
    center: str, subjects: int, hours: float, n_scorers: int = 5, seed: int = 0
) -> pd.DataFrame:
    """``n_scorers`` simulated scorers of each of a center's cohort nights, one row per epoch
    (columns ``night``, ``scorer_1`` …), the first being the cohort's own labels."""
    frames = []
    for s in range(subjects):
        _, scored = simulate_scoring(center, s, seed=seed, hours=hours, n_scorers=n_scorers)
        frame = pd.DataFrame({f"scorer_{k + 1}": labels for k, labels in enumerate(scored)})
        frames.append(frame.assign(night=f"{center}/s{s:03d}"))
    return pd.concat(frames, ignore_index=True)


def real_scorer_panel(which: str) -> pd.DataFrame:
    """The five DOD scorers of every night of DOD-H (``"h"``) or DOD-O (``"o"``), one row per
    epoch scored by all five (columns ``night``, ``scorer_1`` …)."""
    scorers = dod_scorers(which)
    scored = scorers[list(DOD_SCORERS)].isin(STAGES).all(axis=1)
    return scorers[scored].rename(columns={"record": "night"}).drop(columns="epoch")


def scorer_agreement_summary(panels: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """How the scorers of each panel (one column per scorer, ``night`` column) disagree:
    pairwise κ (min, mean, max), each scorer against the others' majority, scorer 1 against
    scorer 2 on N1 and on the W→N1 and N3→N2 confusions, and the disagreement rate (any of
    the scorers not unanimous) within one epoch of a consensus stage change and away from one.
    """
    rows = {}
    for name, panel in panels.items():
        scorers = panel.drop(columns="night")
        kappa = pairwise_kappa(scorers)["kappa"]
        confusion = scorer_confusion(scorers["scorer_1"], scorers["scorer_2"])
        near = disagreement_near_transitions(scorers, window=1, nights=panel["night"])
        rows[name] = {
            "pairwise κ min": kappa.min(),
            "pairwise κ mean": kappa.mean(),
            "pairwise κ max": kappa.max(),
            "each vs the others' majority κ": each_vs_rest_kappa(scorers)["kappa"].mean(),
            "N1 agreed (N1→N1)": confusion.loc["N1", "N1"],
            "N1→N2": confusion.loc["N1", "N2"],
            "W→N1": confusion.loc["W", "N1"],
            "N3→N2": confusion.loc["N3", "N2"],
            "disagreement near a change": near["rate_near"],
            "disagreement away from one": near["rate_away"],
        }
    return pd.DataFrame(rows).T


#: The statistics chapter 01 draws side by side (the ones real sites differ in most).
NIGHT_FIGURE_STATISTICS: dict[str, str] = {
    "rem_latency_min": "REM latency (min)",
    "stage_changes_per_h": "stage changes per hour of sleep",
    "awakenings_per_h": "awakenings per hour of sleep",
    "n3_third_1": "share of N3 in the first third",
    "share_N1": "N1 share of sleep",
    "mean_bout_N2_min": "mean N2 bout (min)",
}


def plot_night_structure(table: pd.DataFrame, statistics: dict[str, str] = NIGHT_FIGURE_STATISTICS):
    """One box plot per statistic, one box per group (simulated centers and real groups, in
    the table's order): distributions, not only medians."""
    import matplotlib.pyplot as plt  # only the book draws

    groups = list(dict.fromkeys(table["group"]))
    fig, axes = plt.subplots(2, (len(statistics) + 1) // 2, figsize=(12, 6), squeeze=False)
    for ax, (stat, title) in zip(axes.flat, statistics.items(), strict=False):
        values = [table.loc[table["group"] == g, stat].dropna() for g in groups]
        ax.boxplot(values, showfliers=False)
        ax.set_xticks(range(1, len(groups) + 1), groups, rotation=30)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_hypnograms(hypnograms: dict[str, np.ndarray], title: str):
    """Hypnograms one above the other on the same time axis (hours from the first epoch)."""
    import matplotlib.pyplot as plt  # only the book draws

    fig, axes = plt.subplots(len(hypnograms), 1, figsize=(10, 1.4 * len(hypnograms)), sharex=True)
    bottom_up = list(reversed(STAGES))  # W on top, REM at the bottom
    for ax, (name, labels) in zip(np.atleast_1d(axes), hypnograms.items(), strict=True):
        level = [bottom_up.index(s) if s in STAGES else np.nan for s in labels]
        ax.step(np.arange(len(level)) * EPOCH_S / 3600, level, where="post", lw=0.8)
        ax.set_yticks(range(len(STAGES)), bottom_up, fontsize=7)
        ax.set_ylabel(name, fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("time (h)")
    fig.suptitle(title)
    return fig


def plot_scorer_confusions(panels: dict[str, pd.DataFrame]):
    """Scorer 1 against scorer 2 of each panel, row-normalised (rows: scorer 1's stage)."""
    import matplotlib.pyplot as plt  # only the book draws

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, panel) in zip(axes[0], panels.items(), strict=True):
        confusion = scorer_confusion(panel["scorer_1"], panel["scorer_2"])
        ax.imshow(confusion.to_numpy(), vmin=0, vmax=1, cmap="Blues")
        for (i, j), value in np.ndenumerate(confusion.to_numpy()):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(STAGES)), STAGES, fontsize=7)
        ax.set_yticks(range(len(STAGES)), STAGES, fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("scorer 2")
    axes[0, 0].set_ylabel("scorer 1")
    fig.tight_layout()
    return fig
