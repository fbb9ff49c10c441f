"""Epochs described in words: expert features from the rule detectors, the versioned prompt
templates of every modality, and how well the features alone separate the stages.

**Features.** :func:`night_features` runs :func:`~sleepvlm.rules.evidence.detect_all` once on a
night of preprocessed epochs and turns its output into one row per epoch (:data:`FEATURES`,
plus the times of the detected events in the epoch) and, per row, a few lines of text, each
tagged with the IDs of the AASM rules it informs::

    [N2.spindle] 2 sleep spindles at 4.1–5.0 s and 17.3–18.1 s

Everything describes the epoch itself, except two things that a rule reads elsewhere and that
are marked so: the last half of the previous epoch (the N2 rules look there for spindles and
K complexes) and chin tone, ranked against the whole night (low tone is relative). A channel
that is missing, flat, clipped or holds NaN gives "not available" lines, never numbers.

**Prompts.** Six templates in ``sleepvlm/prompts`` (image, text features, sequence; each
``plain`` or ``expert``), named ``<modality>_<variant>.v<N>.md``. The expert variants get the
criteria of :func:`~sleepvlm.rules.table.rules_frame` at load time, so the criteria have one
source. :func:`load_prompt` returns the text with its version and SHA-256, to be stored with
every answer; :func:`render_prompt` fills in one epoch and returns OpenAI chat messages.

**Reference classifier.** :func:`features_baseline` trains a classifier on the feature rows of
training subjects and scores it on held-out subjects: what a text-only model could reach from
these features, if it used them perfectly in the way a trained classifier does.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sleepvlm.data.records import EPOCH_S, ROLES, STAGES, DataError
from sleepvlm.pipeline import EpochStore, SerialExecutor
from sleepvlm.rules.evidence import Detection, detect_all
from sleepvlm.rules.table import BANDS, DEFAULT_RULES, RULES, RuleSet, rules_frame
from sleepvlm.signal import EPOCH_SAMPLES, Epochs, bridge_nans


class TextFeatureError(DataError):
    """Epochs, feature rows or prompt fields that cannot be described or rendered."""


# --- features ----------------------------------------------------------------------------------

#: Event kinds whose times in the epoch are listed, with the feature-table column holding them.
SPAN_KINDS: dict[str, str] = {
    "vertex": "vertex_spans",
    "spindle": "spindle_spans",
    "kcomplex": "kcomplex_spans",
    "rem": "rem_spans",
    "sem": "sem_spans",
    "blink": "blink_spans",
    "sawtooth": "sawtooth_spans",
    "arousal": "arousal_spans",
}
#: Kinds looked for in the last half of the previous epoch (the N2 rules' window).
CONTEXT_KINDS: tuple[str, ...] = ("spindle", "kcomplex")

#: Numeric features (one column each), with the rule IDs each informs and the channel role it
#: is read on. ``*_share``: share of the band's power among the five bands of
#: :data:`~sleepvlm.rules.table.BANDS` (they overlap at 11-13 Hz, so the shares are relative
#: weights, not a partition of the spectrum); ``*_fraction``: share of the epoch's seconds.
FEATURES: dict[str, tuple[tuple[str, ...], str]] = {
    "delta_share": (("N3.sw20",), "eeg"),
    "theta_share": (("N1.lamf",), "eeg"),
    "alpha_share": (("W.alpha",), "eeg"),
    "sigma_share": (("N2.spindle",), "eeg"),
    "beta_share": (("arousal",), "eeg"),
    "eeg_rms_uv": (("N1.lamf",), "eeg"),
    "alpha_fraction": (("W.alpha",), "eeg"),
    "lamf_fraction": (("N1.lamf",), "eeg"),
    "n_vertex": (("N1.vertex",), "eeg"),
    "n_spindle": (("N2.spindle",), "eeg"),
    "n_kcomplex": (("N2.kcomplex",), "eeg"),
    "kcomplex_max_uv": (("N2.kcomplex",), "eeg"),
    "prev_n_spindle": (("N2.spindle",), "eeg"),
    "prev_n_kcomplex": (("N2.kcomplex",), "eeg"),
    "sw_fraction": (("N3.sw20",), "eeg"),
    "n_slow_wave": (("N3.sw20",), "eeg"),
    "sw_max_uv": (("N3.sw20",), "eeg"),
    "n_sawtooth": (("R.sawtooth",), "eeg"),
    "n_arousal": (("arousal", "N2.arousal_end", "R.arousal_end"), "eeg"),
    "movement_fraction": (("major_body_movement",), "eeg"),
    "n_rem": (("R.rem", "W.eyes"), "eog"),
    "n_sem": (("N1.sem",), "eog"),
    "n_blink": (("W.eyes",), "eog"),
    "emg_percentile": (("R.atonia", "W.eyes"), "emg"),
    "emg_rel": (("R.atonia",), "emg"),
}
#: Columns that identify an epoch in a feature table.
ID_COLUMNS: tuple[str, ...] = ("dataset", "subject", "night", "epoch", "stage")
#: Event times listed per line before the rest is summarised as "and N more".
MAX_LISTED = 4


@dataclass(frozen=True)
class FeatureLine:
    """One line of an epoch's description: the rules it informs and what was found.
    ``context`` marks lines read outside the epoch (previous epoch, whole night)."""

    rules: tuple[str, ...]
    text: str
    available: bool = True
    context: bool = False

    def render(self) -> str:
        return f"[{', '.join(self.rules)}] {'(context) ' if self.context else ''}{self.text}"


@dataclass
class NightFeatures:
    """Features of the kept epochs of one night: ``table`` (index: epoch number; columns
    :data:`ID_COLUMNS`, :data:`FEATURES`, the event spans of :data:`SPAN_KINDS` and the
    previous epoch's, and ``<role>_ok``) and the :class:`Detection` it came from."""

    label: str
    table: pd.DataFrame
    detection: Detection

    def lines(self, epoch: int) -> list[FeatureLine]:
        return feature_lines(self.table.loc[epoch])

    def text(self, epoch: int) -> str:
        return feature_text(self.table.loc[epoch])

    def texts(self) -> pd.Series:
        """The description of every epoch, indexed by epoch."""
        return pd.Series(
            [feature_text(row) for _, row in self.table.iterrows()],
            index=self.table.index,
            name="text",
        )


def _check_epochs(epochs: Any) -> None:
    if not isinstance(epochs, Epochs):
        raise TextFeatureError(
            f"night_features takes sleepvlm.signal.Epochs, got {type(epochs).__name__}; "
            "cut a Recording with sleepvlm.signal.epoch_recording or read one from an EpochStore"
        )
    data = np.asarray(epochs.data)
    expected = (len(ROLES), EPOCH_SAMPLES)
    if data.ndim != 3 or data.shape[1:] != expected or len(data) == 0:
        raise TextFeatureError(
            f"{epochs.label}: epochs of shape {data.shape} are not (n >= 1, {expected[0]}, "
            f"{expected[1]}) µV at 100 Hz in {'/'.join(ROLES)} order; re-run "
            "sleepvlm.signal.epoch_recording"
        )
    if len(epochs.manifest) != len(data):
        raise TextFeatureError(
            f"{epochs.label}: manifest has {len(epochs.manifest)} rows for {len(data)} epochs; "
            "keep data and manifest together"
        )


def _without_nonfinite(epochs: Epochs) -> tuple[Epochs, np.ndarray]:
    """A copy in which every (epoch, channel) holding NaN/inf is bridged by a straight line
    between its neighbours (zeros would add steps that detectors take for waves), and the mask
    of those (epoch, channel) pairs, whose features are then reported as not available."""
    bad = ~np.isfinite(epochs.data).all(axis=2)
    if not bad.any():
        return epochs, bad
    data = np.array(epochs.data, dtype=np.float32)
    data[bad] = np.nan
    for r in np.flatnonzero(bad.any(axis=0)):
        data[:, r] = bridge_nans(data[:, r].reshape(-1)).reshape(len(data), -1)
    clean = Epochs(
        data=data,
        manifest=epochs.manifest,
        exclusions=epochs.exclusions,
        dataset=epochs.dataset,
        subject=epochs.subject,
        night=epochs.night,
        source_hash=epochs.source_hash,
    )
    return clean, bad


def _spans(events: pd.DataFrame, kind: str, epochs: pd.Index, after_s: float = 0.0) -> pd.Series:
    """Per epoch: (start, end) in s from the epoch start of the ``kind`` events that start in
    it at or after ``after_s``, sorted by onset."""
    mine = events[(events["kind"] == kind) & (events["t0"] >= after_s)]
    pairs = pd.Series(
        list(zip(mine["t0"].round(2), (mine["t0"] + mine["duration"]).round(2), strict=True)),
        index=mine["epoch"].to_numpy(),
        dtype=object,
    )
    grouped = pairs.groupby(level=0).agg(tuple) if len(pairs) else pd.Series(dtype=object)
    return grouped.reindex(epochs).apply(lambda v: v if isinstance(v, tuple) else ())


def _max_amplitude(events: pd.DataFrame, kind: str, epochs: pd.Index) -> np.ndarray:
    mine = events[events["kind"] == kind]
    return mine.groupby("epoch")["amplitude"].max().reindex(epochs).to_numpy(float)


def features_from_detection(
    detection: Detection, epochs: Epochs, unusable: np.ndarray | None = None
) -> pd.DataFrame:
    """The feature table of one night from its detection (see :class:`NightFeatures`).
    ``unusable`` (epochs x roles, rows as in ``epochs.manifest``) marks channels to report as
    not available on top of the detection's own quality flags."""
    det = detection.epochs
    man = epochs.manifest.set_index("epoch")
    idx = det.index
    table = pd.DataFrame(index=idx)
    for column in ID_COLUMNS:
        if column != "epoch":
            table[column] = man[column].reindex(idx).to_numpy()
    ok = {role: det[f"{role}_ok"].to_numpy(bool).copy() for role in ROLES}
    if unusable is not None:
        rows = idx.get_indexer(epochs.manifest["epoch"].to_numpy())
        for r, role in enumerate(ROLES):
            ok[role][rows[unusable[:, r]]] = False

    powers = det[[f"{b}_power" for b in BANDS]].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = powers / powers.sum(axis=1, keepdims=True)
    for i, band in enumerate(BANDS):
        table[f"{band}_share"] = shares[:, i]
    table["eeg_rms_uv"] = det["rms"]
    table["alpha_fraction"] = det["alpha_fraction"]
    table["lamf_fraction"] = det["lamf_fraction"]
    events = detection.events.copy()
    events["t0"] = events["onset"] - det["onset"].reindex(events["epoch"]).to_numpy(float)
    for kind in ("vertex", "spindle", "kcomplex", "sawtooth", "arousal", "rem", "sem", "blink"):
        table[f"n_{kind}"] = det[f"n_{kind}"].astype(float)
    table["kcomplex_max_uv"] = _max_amplitude(events, "kcomplex", idx)
    table["sw_fraction"] = det["sw_coverage"]
    table["n_slow_wave"] = det["n_slow_wave"].astype(float)
    table["sw_max_uv"] = _max_amplitude(events, "slow_wave", idx)
    table["movement_fraction"] = det["movement_fraction"]
    table["emg_percentile"] = 100 * det["emg_quantile"]
    table["emg_rel"] = det["emg_rel"]
    # No wave in an epoch: largest amplitude 0 (NaN is kept for "not available").
    for count, largest in (("n_kcomplex", "kcomplex_max_uv"), ("n_slow_wave", "sw_max_uv")):
        table.loc[table[count] == 0, largest] = 0.0
    for kind, column in SPAN_KINDS.items():
        table[column] = _spans(events, kind, idx)

    # The N2 rules also look at the last half of the previous epoch: only when it was kept
    # and its EEG is usable.
    previous_row = idx.get_indexer(idx - 1)
    has_previous = (previous_row >= 0) & ok["eeg"][np.clip(previous_row, 0, None)]
    for kind in CONTEXT_KINDS:
        found = _spans(events, kind, idx - 1, after_s=EPOCH_S / 2).to_numpy()
        found = [p if usable else () for p, usable in zip(found, has_previous, strict=True)]
        table[f"prev_{kind}_spans"] = pd.Series(found, index=idx, dtype=object)
        table[f"prev_n_{kind}"] = np.where(has_previous, [len(p) for p in found], np.nan)
    for role in ROLES:
        table[f"{role}_ok"] = ok[role]
    # A count of zero means "looked and found none": only where the channel was usable.
    for name, (_, role) in FEATURES.items():
        if not name.startswith("prev_"):
            table.loc[~ok[role], name] = np.nan
    ordered = [c for c in ID_COLUMNS if c != "epoch"] + list(FEATURES)
    rest = [c for c in table.columns if c not in ordered]
    table = table[ordered + rest]
    table.index.name = "epoch"
    return table


def night_features(
    epochs: Epochs, detection: Detection | None = None, rules: RuleSet = DEFAULT_RULES
) -> NightFeatures:
    """Run the detectors once on a night of epochs (unless its ``detection`` is given) and
    describe every epoch. A channel holding NaN in an epoch is reported as not available
    there; wrong shapes raise :class:`TextFeatureError`."""
    _check_epochs(epochs)
    clean, nonfinite = _without_nonfinite(epochs)
    detection = detection or detect_all(clean, rules=rules)
    return NightFeatures(
        epochs.label, features_from_detection(detection, clean, nonfinite), detection
    )


def record_features(
    store: EpochStore, subject: str, night: str, rules: RuleSet = DEFAULT_RULES
) -> NightFeatures:
    """Features of one stored recording (detectors run once over the whole night)."""
    return night_features(store.read_record(subject, night), rules=rules)


@dataclass
class _RecordTask:
    """Picklable per-night job for an executor: reads its night from the store file."""

    path: str
    dataset: str | None
    rules: RuleSet = DEFAULT_RULES

    def __call__(self, key: tuple[str, str]) -> pd.DataFrame:
        features = record_features(EpochStore(self.path, self.dataset), *key, rules=self.rules)
        return features.table.reset_index()


def store_features(
    store: EpochStore,
    records: Iterable[tuple[str, str]] | None = None,
    executor=None,
    rules: RuleSet = DEFAULT_RULES,
) -> pd.DataFrame:
    """Feature rows of the ``records`` ((subject, night) pairs; default all) of a store, one
    night per task on ``executor`` (default serial), concatenated with an ``epoch`` column."""
    if records is None:
        stored = store.records()
        records = list(zip(stored["subject"], stored["night"], strict=True))
    records = list(records)
    if not records:
        raise TextFeatureError(f"{store.path}: no records to describe")
    executor = executor or SerialExecutor()
    parts = executor.map(_RecordTask(str(store.path), store.dataset, rules), records)
    return pd.concat(parts, ignore_index=True)


def prepared_features(
    prepared, per_split: Mapping[str, int | None] | None = None, executor=None
) -> pd.DataFrame:
    """Feature rows of a :class:`~sleepvlm.prepare.PreparedDataset` with each epoch's subject-
    level ``split``. ``per_split`` caps the nights read per split (e.g. ``{"train": 6,
    "test": 5}``; splits not named are skipped; None: every night), first subjects first."""
    nights = prepared.manifest[["subject", "night", "split"]].drop_duplicates()
    nights = nights.sort_values(["split", "subject", "night"])
    if per_split is not None:
        nights = pd.concat(
            [
                nights[nights["split"] == s].head(n if n is not None else len(nights))
                for s, n in per_split.items()
            ]
        )
    keys = list(zip(nights["subject"], nights["night"], strict=True))
    table = store_features(prepared.store, keys, executor)
    split = nights.set_index(["subject", "night"])["split"]
    table["split"] = split.reindex(pd.MultiIndex.from_frame(table[["subject", "night"]])).to_numpy()
    return table


# --- feature text ------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _times(spans: tuple) -> str:
    shown = [f"{a:.1f}–{b:.1f} s" for a, b in spans[:MAX_LISTED]]
    if len(spans) > MAX_LISTED:
        shown.append(f"{len(spans) - MAX_LISTED} more")
    return _join(shown)


def _events_text(spans: tuple, word: str, plural: str | None = None) -> str:
    if not spans:
        return f"no {plural or word + 's'}"
    return f"{_plural(len(spans), word, plural)} at {_times(spans)}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and np.isnan(value))


def _unavailable(rules: tuple[str, ...], what: str, role: str) -> FeatureLine:
    return FeatureLine(rules, f"{what}: not available (no usable {role.upper()})", False)


def _rules_of(*names: str) -> tuple[str, ...]:
    """Rule IDs of some features, in the order of the rule table."""
    found = {r for n in names for r in FEATURES[n][0]}
    return tuple(r for r in RULES if r in found)


def feature_lines(row: Mapping[str, Any], rules: RuleSet = DEFAULT_RULES) -> list[FeatureLine]:
    """The description of one epoch (a row of a feature table), in a fixed order and format."""
    lines = []
    spectrum = _rules_of(*(f"{b}_share" for b in BANDS))
    if _missing(row["delta_share"]):
        lines.append(_unavailable(spectrum, "EEG spectrum", "eeg"))
        eeg = False
    else:
        shares = ", ".join(f"{b} {_pct(row[f'{b}_share'])}" for b in BANDS)
        lines.append(FeatureLine(spectrum, f"EEG power: {shares}; RMS {row['eeg_rms_uv']:.1f} µV"))
        eeg = True

    def eeg_line(names: tuple[str, ...], what: str, text: Any) -> None:
        informs = _rules_of(*names)
        if not eeg or any(_missing(row[n]) for n in names):
            lines.append(_unavailable(informs, what, "eeg"))
        else:
            lines.append(FeatureLine(informs, text() if callable(text) else text))

    eeg_line(
        ("alpha_fraction",),
        "alpha rhythm",
        lambda: f"alpha rhythm in {_pct(row['alpha_fraction'])} of the epoch",
    )
    eeg_line(
        ("lamf_fraction",),
        "low-amplitude mixed-frequency EEG",
        lambda: f"low-amplitude mixed-frequency EEG in {_pct(row['lamf_fraction'])} of the epoch",
    )
    eeg_line(
        ("n_vertex",),
        "vertex sharp waves",
        lambda: _events_text(row["vertex_spans"], "vertex sharp wave"),
    )
    eeg_line(
        ("n_spindle",),
        "sleep spindles",
        lambda: _events_text(row["spindle_spans"], "sleep spindle"),
    )

    def kcomplexes() -> str:
        text = _events_text(row["kcomplex_spans"], "K complex", "K complexes")
        if row["kcomplex_spans"]:
            text += f" (largest {row['kcomplex_max_uv']:.0f} µV peak to peak)"
        return text

    eeg_line(("n_kcomplex",), "K complexes", kcomplexes)
    context_rules = _rules_of("prev_n_spindle", "prev_n_kcomplex")
    if _missing(row["prev_n_spindle"]):
        why = "previous epoch not scored or without usable EEG"
        lines.append(
            FeatureLine(context_rules, f"previous epoch: not available ({why})", False, True)
        )
    else:
        found = [
            _events_text(row["prev_spindle_spans"], "sleep spindle"),
            _events_text(row["prev_kcomplex_spans"], "K complex", "K complexes"),
        ]
        lines.append(
            FeatureLine(
                context_rules,
                f"last half of the previous epoch: {_join(found)} (times in the previous epoch)",
                context=True,
            )
        )

    def slow_waves() -> str:
        lo, hi = rules.threshold("N3.sw20", "band_hz")
        text = (
            f"slow waves ({lo:g}–{hi:g} Hz, over {rules.threshold('N3.sw20', 'min_ptp_uv'):g} µV "
            f"peak to peak) cover {_pct(row['sw_fraction'])} of the epoch"
        )
        n = int(row["n_slow_wave"])
        if n:
            text += f": {_plural(n, 'wave')}, largest {row['sw_max_uv']:.0f} µV peak to peak"
        return text

    eeg_line(("sw_fraction", "n_slow_wave"), "slow waves", slow_waves)
    eeg_line(
        ("n_sawtooth",),
        "sawtooth waves",
        lambda: _events_text(row["sawtooth_spans"], "sawtooth wave train"),
    )
    eeg_line(("n_arousal",), "arousals", lambda: _events_text(row["arousal_spans"], "arousal"))
    eeg_line(
        ("movement_fraction",),
        "movement artifact",
        lambda: f"movement artifact in {_pct(row['movement_fraction'])} of the epoch",
    )

    eye = [
        ("n_rem", "rapid eye movements", "rem_spans", "rapid eye movement"),
        ("n_sem", "slow eye movements", "sem_spans", "slow eye movement"),
        ("n_blink", "eye blinks", "blink_spans", "eye blink"),
    ]
    for name, what, spans, word in eye:
        if _missing(row[name]):
            lines.append(_unavailable(_rules_of(name), what, "eog"))
        else:
            lines.append(FeatureLine(_rules_of(name), _events_text(row[spans], word)))

    tone_rules = _rules_of("emg_percentile", "emg_rel")
    if _missing(row["emg_percentile"]):
        lines.append(_unavailable(tone_rules, "chin EMG tone", "emg"))
    else:
        lines.append(
            FeatureLine(
                tone_rules,
                f"chin EMG tone at percentile {row['emg_percentile']:.0f} of this night's "
                f"epochs, {row['emg_rel']:.2f} × the night's median",
                context=True,
            )
        )
    return lines


def feature_text(row: Mapping[str, Any], rules: RuleSet = DEFAULT_RULES) -> str:
    """The description of one epoch as text, one tagged line per feature."""
    return "\n".join(line.render() for line in feature_lines(row, rules=rules))


def _check_rule_ids() -> None:
    unknown = {r for rules, _ in FEATURES.values() for r in rules} - set(RULES)
    if unknown:
        raise KeyError(f"feature lines name rules missing from the rule table: {sorted(unknown)}")


_check_rule_ids()


# --- prompts -----------------------------------------------------------------------------------

MODALITIES: tuple[str, ...] = ("image", "text", "sequence")
VARIANTS: tuple[str, ...] = ("plain", "expert")
#: Placeholder each modality's user turn must hold (where the epoch goes).
INPUT_FIELD: dict[str, str] = {"image": "image", "text": "features", "sequence": "sequence"}
#: Placeholder of the criteria, filled from the rule table when an expert template is loaded.
CRITERIA_FIELD = "criteria"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_SECTION = re.compile(r"^<!--\s*(system|user)\s*-->\s*$", re.MULTILINE)
_NAME = re.compile(r"^(?P<modality>[a-z]+)_(?P<variant>[a-z]+)\.v(?P<version>\d+)\.md$")
_STAGE_TITLES = {
    "W": "Stage W (wake)",
    "N1": "Stage N1",
    "N2": "Stage N2",
    "N3": "Stage N3",
    "REM": "Stage R (REM)",
    "any": "Any stage",
}
_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Prompt:
    """A loaded prompt: ``system`` and ``user`` turns (the user turn still holds its input
    placeholder), ``text`` (both, as hashed), template ``version`` and ``sha256`` of ``text``
    (store it with every answer: it changes whenever the template or the criteria change)."""

    modality: str
    variant: str
    version: int
    system: str
    user: str
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.text.encode()).hexdigest())

    @property
    def text(self) -> str:
        return f"<!-- system -->\n{self.system}\n<!-- user -->\n{self.user}\n"

    @property
    def name(self) -> str:
        return f"{self.modality}_{self.variant}.v{self.version}"

    @property
    def fields(self) -> set[str]:
        """Placeholders :func:`render_prompt` must fill."""
        return set(_PLACEHOLDER.findall(self.system + self.user))


def prompt_folder() -> Path:
    """The packaged folder of prompt templates."""
    return Path(str(resources.files("sleepvlm") / "prompts"))


def prompt_versions(modality: str, variant: str, folder: Path | None = None) -> list[int]:
    """Versions of a template found in ``folder`` (default: the packaged one), ascending."""
    folder = Path(folder or prompt_folder())
    found = []
    for path in folder.glob(f"{modality}_{variant}.v*.md"):
        match = _NAME.match(path.name)
        if match:
            found.append(int(match["version"]))
    return sorted(found)


def criteria_text() -> str:
    """The AASM criteria as prompt text, stage by stage, from :func:`rules_frame`."""
    frame = rules_frame()
    blocks = []
    for stage, title in _STAGE_TITLES.items():
        rows = frame[frame["stage"] == stage]
        if rows.empty:
            continue
        items = [
            f"- [{r.id}] {r.criterion}" + (" Uses neighbouring epochs." if r.context else "")
            for r in rows.itertuples()
        ]
        blocks.append(f"{title}:\n" + "\n".join(items))
    return "\n\n".join(blocks)


def template_fields(
    modality: str, variant: str, version: int | None = None, folder: Path | None = None
) -> set[str]:
    """Placeholders written in a template file, before the criteria are filled in."""
    return set(_PLACEHOLDER.findall(_template_path(modality, variant, version, folder).read_text()))


def _template_path(modality: str, variant: str, version: int | None, folder: Path | None) -> Path:
    if modality not in MODALITIES or variant not in VARIANTS:
        raise TextFeatureError(
            f"no prompt for modality {modality!r}, variant {variant!r}; modalities: "
            f"{', '.join(MODALITIES)}; variants: {', '.join(VARIANTS)}"
        )
    folder = Path(folder or prompt_folder())
    versions = prompt_versions(modality, variant, folder)
    if not versions or (version is not None and version not in versions):
        raise TextFeatureError(
            f"{folder}: no template {modality}_{variant}.v{version or '<N>'}.md "
            f"(found versions: {versions or 'none'})"
        )
    return folder / f"{modality}_{variant}.v{version or versions[-1]}.md"


def _split_sections(text: str, path: Path) -> dict[str, str]:
    marks = list(_SECTION.finditer(text))
    if [m[1] for m in marks] != ["system", "user"]:
        raise TextFeatureError(
            f"{path}: a template needs a '<!-- system -->' line, then a '<!-- user -->' line"
        )
    return {
        "system": text[marks[0].end() : marks[1].start()].strip(),
        "user": text[marks[1].end() :].strip(),
    }


def load_prompt(
    modality: str, variant: str, version: int | None = None, folder: Path | None = None
) -> Prompt:
    """The template ``<modality>_<variant>.v<version>.md`` (default: the latest version), with
    the criteria filled in for the expert variant."""
    path = _template_path(modality, variant, version, folder)
    sections = _split_sections(path.read_text(encoding="utf-8"), path)
    written = set(_PLACEHOLDER.findall(sections["system"] + sections["user"]))
    needed = {INPUT_FIELD[modality]} | ({CRITERIA_FIELD} if variant == "expert" else set())
    if not needed <= written or INPUT_FIELD[modality] not in _PLACEHOLDER.findall(sections["user"]):
        raise TextFeatureError(
            f"{path}: template lacks placeholder(s) "
            f"{sorted(needed - written) or [INPUT_FIELD[modality]]} (write them as "
            "{{name}}; the input placeholder goes in the user turn)"
        )
    criteria = criteria_text()
    filled = {
        k: _PLACEHOLDER.sub(lambda m: criteria if m[1] == CRITERIA_FIELD else m[0], v)
        for k, v in sections.items()
    }
    match = _NAME.match(path.name)
    return Prompt(modality, variant, int(match["version"]), filled["system"], filled["user"])


def _field_text(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    text = getattr(value, "text", None)  # EncodedEpoch, or anything carrying its text
    if isinstance(text, str):
        return text
    if isinstance(value, Mapping | pd.Series) and "delta_share" in value:
        return feature_text(value)
    raise TextFeatureError(
        f"prompt field {name!r} takes text (or an encoded epoch / a feature row), "
        f"got {type(value).__name__}"
    )


def _image_url(value: Any) -> str:
    if not isinstance(value, bytes | bytearray) or not bytes(value).startswith(_PNG):
        raise TextFeatureError(
            "the image field takes PNG bytes (sleepvlm.render.render_png), got "
            f"{type(value).__name__}"
        )
    return "data:image/png;base64," + base64.b64encode(bytes(value)).decode("ascii")


def render_prompt(prompt: Prompt, **fields: Any) -> list[dict]:
    """OpenAI chat messages (system, user) for one epoch.

    ``image``: PNG bytes, sent as a base64 data URL part where ``{{image}}`` stands in the user
    turn. ``features``: text or a feature-table row. ``sequence``: text or an
    :class:`~sleepvlm.sequence.EncodedEpoch`; a ChatTS encoding puts one ``<ts><ts/>`` per
    channel in the text, and its ``timeseries`` go alongside, in that order.
    """
    needed = prompt.fields
    missing, extra = needed - set(fields), set(fields) - needed
    if missing or extra:
        raise TextFeatureError(
            f"prompt {prompt.name} needs fields {sorted(needed)}; missing {sorted(missing)}, "
            f"unexpected {sorted(extra)}"
        )
    text_fields = {k: _field_text(k, v) for k, v in fields.items() if k != "image"}

    def fill(text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: text_fields.get(m[1], m[0]), text)

    system = fill(prompt.system)
    if "image" not in fields:
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": fill(prompt.user)},
        ]
    before, after = re.split(r"\{\{\s*image\s*\}\}", prompt.user, maxsplit=1)
    parts: list[dict] = []
    if before.strip():
        parts.append({"type": "text", "text": fill(before).strip()})
    parts.append({"type": "image_url", "image_url": {"url": _image_url(fields["image"])}})
    if after.strip():
        parts.append({"type": "text", "text": fill(after).strip()})
    return [{"role": "system", "content": system}, {"role": "user", "content": parts}]


# --- features-only reference classifier --------------------------------------------------------

CLASSIFIERS: tuple[str, ...] = ("logistic", "boosting")


@dataclass
class FeatureBaseline:
    """Scores of a features-only classifier on held-out subjects (labels in :data:`STAGES`)."""

    model: str
    accuracy: float
    macro_f1: float
    kappa: float
    confusion: pd.DataFrame  # rows: scored stage, columns: predicted stage
    n_train: int
    n_test: int
    train_subjects: int
    test_subjects: int
    shuffled_labels: bool = False

    def per_stage_f1(self) -> pd.Series:
        """F1 of each stage scored in the test split (NaN for a stage neither scored nor
        predicted)."""
        hits = np.diag(self.confusion.to_numpy())
        scored, predicted = self.confusion.sum(axis=1), self.confusion.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return pd.Series(2 * hits / (scored + predicted).to_numpy(), index=self.confusion.index)

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "kappa": self.kappa,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "train_subjects": self.train_subjects,
            "test_subjects": self.test_subjects,
            "shuffled_labels": self.shuffled_labels,
        }


def _classifier(model: str, seed: int):
    if model == "boosting":  # handles NaN (unavailable channels) natively
        return HistGradientBoostingClassifier(
            max_iter=100, max_leaf_nodes=15, class_weight="balanced", random_state=seed
        )
    if model == "logistic":
        return make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(max_iter=2000, class_weight="balanced"),
        )
    raise TextFeatureError(f"unknown classifier {model!r}; choose one of {', '.join(CLASSIFIERS)}")


def _split_rows(table: pd.DataFrame, split: str) -> pd.DataFrame:
    missing = [c for c in ("split", "stage", "subject", *FEATURES) if c not in table]
    if missing:
        raise TextFeatureError(
            f"feature table lacks columns {missing}; build it with store_features and add the "
            "subject-level 'split' column of the prepared manifest"
        )
    rows = table[(table["split"] == split) & table["stage"].isin(STAGES)]
    if rows.empty:
        raise TextFeatureError(f"feature table has no scored epochs in split {split!r}")
    return rows


def features_baseline(
    table: pd.DataFrame,
    model: str = "logistic",
    train: str = "train",
    test: str = "test",
    shuffle_labels: bool = False,
    seed: int = 0,
) -> FeatureBaseline:
    """Train ``model`` (:data:`CLASSIFIERS`) on the :data:`FEATURES` of the ``train`` split's
    epochs and score it on the ``test`` split's (subjects never in both). With
    ``shuffle_labels`` the training labels are permuted (seeded): the chance-level control."""

    fit_rows, test_rows = _split_rows(table, train), _split_rows(table, test)
    shared = set(fit_rows["subject"]) & set(test_rows["subject"])
    if shared:
        raise TextFeatureError(f"subjects {sorted(shared)} are in both {train} and {test}")
    y_fit = fit_rows["stage"].to_numpy()
    if shuffle_labels:
        y_fit = np.random.default_rng(seed).permutation(y_fit)
    # A feature no training epoch has (a channel missing from every night) tells nothing, and
    # scikit-learn's gradient boosting cannot bin a column that is all NaN.
    usable = [f for f in FEATURES if fit_rows[f].notna().any()]
    classifier = _classifier(model, seed)
    # One thread: on a few thousand rows OpenMP threads mostly wait on each other, and a busy
    # machine (a book build running chapters side by side) made fits 5-10x slower.
    with threadpool_limits(1):
        classifier.fit(fit_rows[usable].to_numpy(float), y_fit)
        y_pred = classifier.predict(test_rows[usable].to_numpy(float))
    y_true = test_rows["stage"].to_numpy()
    labels = list(STAGES)
    scored = [s for s in STAGES if s in set(y_true)]  # a stage absent from the test set has no F1
    return FeatureBaseline(
        model=model,
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=scored, average="macro", zero_division=0)),
        kappa=float(cohen_kappa_score(y_true, y_pred, labels=labels)),
        confusion=pd.DataFrame(
            confusion_matrix(y_true, y_pred, labels=labels),
            index=pd.Index(labels, name="scored"),
            columns=pd.Index(labels, name="predicted"),
        ),
        n_train=len(fit_rows),
        n_test=len(test_rows),
        train_subjects=fit_rows["subject"].nunique(),
        test_subjects=test_rows["subject"].nunique(),
        shuffled_labels=shuffle_labels,
    )
