"""How close is the simulated cohort to real PSG? Checks used by the book's data chapter.

* :func:`yasa_staging_agreement` runs YASA's pretrained stager on a night and scores it
  against the night's hypnogram (a realistic night should be staged about as well as real
  data, kappa ~0.7-0.8).
* :func:`stage_spectra` / :func:`real_excerpt_spectra` give per-stage Welch spectra of a
  recording and of the real excerpts kept in ``shared/data/real``.
* :func:`hypnogram_stats` / :func:`real_hypnograms` compare night structure.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import signal

from sleepvlm.data.edf import edf_annotations, open_edf
from sleepvlm.data.hypnogram import annotations_to_epochs, map_stages
from sleepvlm.data.nights import (
    checked_labels,
    sleep_period,
    stage_share_by_part,
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


def yasa_staging_agreement(rec: Recording, metadata: dict | None = None) -> dict:
    """Stage ``rec`` with YASA's pretrained classifier (EEG + EOG + EMG) and compare with
    ``rec.stages``; MOVE/UNKNOWN epochs are left out.

    Returns ``kappa``, ``accuracy``, ``f1`` (per stage), ``confusion`` (DataFrame, rows = scored,
    columns = YASA), ``n_epochs`` and ``predicted`` (YASA's label per epoch); for a simulated
    night also ``vs_truth`` (YASA against the generating stages) and ``scorer_vs_truth`` (the
    scored labels against them: the ceiling that scorer disagreement puts on any stager)."""
    import mne
    import yasa

    names = [rec.role(r) for r in ("eeg", "eog", "emg")]
    start, n_ep = _scored_slice(rec)
    stop = start + int(n_ep * EPOCH_S * YASA_SFREQ)
    data = []
    for ch in names:
        y = _resample(rec.signals[ch], rec.sfreq[ch], YASA_SFREQ)[start:stop]
        if len(y) < stop - start:
            raise DataError(f"{rec.label}: channel {ch} ends before the last scored epoch")
        data.append(y)
    # MNE keeps volts; YASA converts back to µV internally
    info = mne.create_info(names, YASA_SFREQ, ch_types=["eeg", "eog", "emg"])
    raw = mne.io.RawArray(np.vstack(data) * 1e-6, info, verbose=False)
    staging = yasa.SleepStaging(
        raw, eeg_name=names[0], eog_name=names[1], emg_name=names[2], metadata=metadata
    )
    with warnings.catch_warnings():
        # YASA's classifiers were pickled by an older scikit-learn; predictions are unaffected
        warnings.filterwarnings("ignore", message="Trying to unpickle")
        predicted = np.asarray(staging.predict().hypno.to_numpy(), dtype=object)
    predicted[predicted == "WAKE"] = "W"
    scored = np.asarray(rec.stages[:n_ep], dtype=object).astype(str)
    out = _agreement(scored, predicted.astype(str))
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
    table = pd.DataFrame(rows).T
    table.index.names = ["center", "subject"]
    return table


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
