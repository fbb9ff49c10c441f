"""The published numbers of the seed papers (SleepVLM-Bench and SleepVLM), kept in one place.

They are shown only as the paper's, beside what this project measures; nothing here is ever
used as a result of ours."""

from __future__ import annotations

#: SleepVLM-Bench, dataset table: class-balanced test epochs per dataset (W, N1, N2, N3, REM).
BALANCED_COUNTS: dict[str, dict[str, int]] = {
    "dcsm": {"W": 453, "N1": 585, "N2": 606, "N3": 486, "REM": 572},
    "shhs": {"W": 327, "N1": 494, "N2": 605, "N3": 472, "REM": 492},
    "isruc": {"W": 460, "N1": 443, "N2": 499, "N3": 447, "REM": 400},
}

#: SleepVLM-Bench, supervised baselines on the class-balanced test sets (%): accuracy,
#: macro-F1 and macro recall per dataset.
BASELINE_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "deepsleepnet": {
        "dcsm": {"accuracy": 65.23, "macro_f1": 66.73, "macro_recall": 66.52},
        "shhs": {"accuracy": 59.01, "macro_f1": 59.66, "macro_recall": 60.57},
        "isruc": {"accuracy": 48.06, "macro_f1": 48.46, "macro_recall": 47.67},
    },
    "attnsleep": {
        "dcsm": {"accuracy": 69.34, "macro_f1": 70.52, "macro_recall": 71.22},
        "shhs": {"accuracy": 63.64, "macro_f1": 64.91, "macro_recall": 64.33},
        "isruc": {"accuracy": 56.03, "macro_f1": 56.54, "macro_recall": 56.09},
    },
}

#: The baselines' own papers, single-channel EEG on Sleep-EDF-20 (accuracy and macro-F1 in %,
#: Cohen's kappa): Supratak et al. 2017 (DeepSleepNet) and Eldele et al. 2021 (AttnSleep).
BASELINE_SLEEPEDF20: dict[str, dict[str, float]] = {
    "deepsleepnet": {"accuracy": 82.0, "macro_f1": 76.9, "kappa": 0.76},
    "attnsleep": {"accuracy": 84.4, "macro_f1": 78.1, "kappa": 0.79},
}

#: SleepVLM-Bench, zero-shot VLMs on epoch images: only the range their rows span is known
#: here (percent; near the chance floor of a balanced five-class set), not each model's row.
VLM_IMAGE_RANGE: dict[str, tuple[float, float]] = {
    "accuracy": (20.0, 24.0),
    "macro_f1": (15.0, 19.0),
}

#: SleepVLM-Bench, ChatTS-14B on raw sequences (percent): accuracy, macro-F1, macro recall.
CHATTS_14B: dict[str, dict[str, float]] = {
    "dcsm": {"accuracy": 21.63, "macro_f1": 17.19, "macro_recall": 20.60},
    "shhs": {"accuracy": 18.95, "macro_f1": 18.33, "macro_recall": 20.53},
    "isruc": {"accuracy": 21.52, "macro_f1": 21.02, "macro_recall": 21.41},
}

#: SleepVLM, Cohen's kappa of its stages against the scorers': on the held-out subjects of the
#: cohort it was trained on (MASS-SS1, within center) and on an external cohort it never saw
#: (ZUAMHCS).
SLEEPVLM_KAPPA: dict[str, float] = {"mass_ss1": 0.767, "zuamhcs": 0.743}
#: The cohort SleepVLM was trained on (the within-center key of :data:`SLEEPVLM_KAPPA`).
SLEEPVLM_TRAINED_ON = "mass_ss1"

#: SleepVLM, expert ratings of its rationales (1-5 scale): the mean of each criterion (factual
#: accuracy, evidence comprehensiveness, logical coherence) lies above this value.
SLEEPVLM_RATING_ABOVE: float = 4.0
