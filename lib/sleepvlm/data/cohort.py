"""The embedded default data: a simulated multi-center PSG cohort written once into the cache
in the real datasets' on-disk formats, so the very loaders that read DCSM, SHHS and ISRUC read it.

Every night is simulated (see :mod:`sleepvlm.data.simulate`); the cohort's folder says so in its
``cohort.json`` and every night carries its ground truth in sidecar files."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..cache import cache_dir, content_hash, source_hash
from . import formats, simulate
from .channels import BENCHMARK_CHANNELS
from .isruc import SECOND_SCORER
from .records import Recording, empty_events
from .simulate import CENTERS, simulate_night

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class CohortSize:
    subjects: int  # per center
    hours: float  # per night


#: "small" for tests and the smoke book; "full" holds enough held-out subjects per center for
#: the paper's class-balanced test counts to be drawn exactly.
COHORT_SIZES: dict[str, CohortSize] = {
    "small": CohortSize(subjects=5, hours=3.0),
    "full": CohortSize(subjects=45, hours=8.0),
}
COHORT_FILE = "cohort.json"

#: What the data chapter says in place of the example hypnograms when it reads a real dataset.
NO_EXAMPLE_NIGHTS = (
    "No example hypnogram to draw: the examples are nights of the simulated cohort, and this run "
    "reads a real dataset (data_dir) instead."
)


def cohort_spec(size: str, seed: int = 0) -> dict:
    if size not in COHORT_SIZES:
        raise ValueError(f"unknown cohort size {size!r}; choose one of {', '.join(COHORT_SIZES)}")
    return {"size": size, "seed": seed, **asdict(COHORT_SIZES[size]), "centers": list(CENTERS)}


def cohort_key(size: str, seed: int = 0) -> str:
    """Changes with the size, the seed, and the code that simulates and writes the nights."""
    return content_hash(cohort_spec(size, seed), source_hash(simulate, formats))


def default_root(size: str, seed: int = 0) -> Path:
    return cache_dir("cohort", f"{size}-{cohort_key(size, seed)}")


@dataclass(frozen=True)
class NightTask:
    center: str
    subject: int
    seed: int
    hours: float
    folder: str

    def __call__(self) -> str:
        """Simulate and write one night, unless an earlier (interrupted) build wrote it."""
        done = Path(self.folder) / ".done" / f"{self.subject:03d}"
        if not done.is_file():
            rec = simulate_night(self.center, self.subject, seed=self.seed, hours=self.hours)
            formats.WRITERS[self.center](rec, Path(self.folder))
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text(rec.subject)
        return done.read_text()


def _run(task: NightTask) -> str:
    return task()


def build_cohort(size: str = "small", seed: int = 0, root=None, executor=None) -> Path:
    """Write (or find) the simulated cohort; returns its folder with one sub-folder per center.

    Resumable: nights already written by an interrupted build are kept.
    """
    from ..pipeline import SerialExecutor

    spec = cohort_spec(size, seed)
    root = Path(root) if root else default_root(size, seed)
    marker = root / COHORT_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("spec") == spec:
        return root
    tasks = [
        NightTask(center, i, seed, spec["hours"], str(root / center))
        for center in CENTERS
        for i in range(spec["subjects"])
    ]
    (executor or SerialExecutor()).map(_run, tasks)
    marker.write_text(json.dumps({"spec": spec, "simulated": True, "key": cohort_key(size, seed)}))
    return root


#: The simulated center whose nights stand in for a dataset the simulator has no center of (a
#: montage like it: Sleep-EDF's Fpz-Cz is frontal as DCSM's F4, MASS's C4 central as ISRUC's).
DOWNLOAD_SOURCE_CENTER = {
    "dcsm": "dcsm",
    "shhs": "shhs",
    "isruc": "isruc",
    "sleepedf": "dcsm",
    "mass": "isruc",
}


def download_subject(dataset: str, index: int) -> tuple[str, str]:
    """(subject, night) of the ``index``-th night as the provider names them."""
    names = {
        "dcsm": (f"tp{index:08x}", "1"),
        "shhs": (str(200001 + index), "shhs1"),
        "isruc": (str(index + 1), "1"),
        "sleepedf": (f"SC4{index:02d}", "1"),
        "mass": (f"01-03-{index + 1:04d}", "1"),
    }
    return names[dataset]


def as_download(rec: Recording, dataset: str, index: int) -> Recording:
    """A simulated night as a real download of ``dataset`` holds it: the dataset's benchmark
    channel names and subject naming, the scorers its format keeps, and nothing simulated (so
    no ground-truth sidecar is written and the loaders see only what a download has)."""
    names = BENCHMARK_CHANNELS[dataset]
    # a role the dataset does not record (Sleep-EDF's second eye) is left out, as a download has it
    kept_roles = {role: channel for role, channel in rec.roles.items() if role in names}
    signals = {names[role][0]: rec.signals[channel] for role, channel in kept_roles.items()}
    rates = {names[role][0]: rec.sfreq[channel] for role, channel in kept_roles.items()}
    subject, night = download_subject(dataset, index)
    # ISRUC's format holds a second scorer; the others hold one
    kept = {k: v for k, v in rec.other_scorers.items() if dataset == "isruc" and k == SECOND_SCORER}
    return replace(
        rec,
        dataset=dataset,
        subject=subject,
        night=night,
        signals=signals,
        sfreq=rates,
        roles={role: names[role][0] for role in kept_roles},
        other_scorers=kept,
        events=empty_events(),
        simulated=False,
    )


def write_simulated_download(
    dataset: str, folder: str | Path, size: str = "small", seed: int = 0
) -> Path:
    """Write simulated nights into ``folder`` laid out as a download of ``dataset`` (any format
    :mod:`~sleepvlm.data.formats` reads) with no sidecar: a stand-in for a lab's own data, to
    try (and test) every chapter's ``data_dir`` path without a real download. The nights
    come from :data:`DOWNLOAD_SOURCE_CENTER`; ``size`` is a :data:`COHORT_SIZES` name."""
    if dataset not in DOWNLOAD_SOURCE_CENTER:
        raise ValueError(
            f"unknown dataset {dataset!r}; choose one of {', '.join(DOWNLOAD_SOURCE_CENTER)}"
        )
    spec = COHORT_SIZES[size]
    folder = Path(folder)
    for index in range(spec.subjects):
        rec = simulate_night(DOWNLOAD_SOURCE_CENTER[dataset], index, seed=seed, hours=spec.hours)
        formats.write_recording(as_download(rec, dataset, index), folder)
    return folder


def cohort_nights(root: Path, center: str) -> list[dict]:
    """The nights of one simulated center, found as the real dataset's nights are found."""
    return formats.discover(center, Path(root) / center)


def example_nights(root: Path | None, centers: Sequence[str]) -> dict[str, Recording]:
    """The first night of each simulated center, read back by the loaders; none without a
    cohort (``root`` is None when a chapter reads a real dataset instead)."""
    if root is None:
        return {}
    return {center: formats.load_entry(cohort_nights(root, center)[0]) for center in centers}


def plot_example_hypnograms(nights: Mapping[str, Recording]) -> Figure | None:
    """The scored hypnogram of each night, one panel per center, time in hours, drawn with
    pyplot (``plt.show()`` shows it). With no night (a real dataset), prints
    :data:`NO_EXAMPLE_NIGHTS` instead of drawing empty axes."""
    if not nights:
        print(NO_EXAMPLE_NIGHTS)
        return None
    from .realism import plot_hypnograms  # only the book draws; writing the cohort does not

    hypnograms = {center: rec.stages for center, rec in nights.items()}
    return plot_hypnograms(hypnograms, "Scored hypnograms of one simulated night per center")


def center_table() -> pd.DataFrame:
    """What sets each simulated center apart (recording set-up, population, scoring habits),
    as the book shows it."""
    rows = {}
    for name, c in CENTERS.items():
        rows[name] = {
            **{role.upper(): f"{c.channels[role]} ({c.rates[role]:g} Hz)" for role in c.channels},
            "mains (Hz)": c.line_freq,
            "gain": c.gain,
            "chin EMG gain": c.emg_gain,
            "noise floor (µV RMS)": c.noise_floor,
            "hardware band (Hz)": f"{c.highpass:g}–{c.lowpass:g}",
            "artifact rate (x)": c.artifact_rate,
            "mean age factor": c.age_mean,
            "age concentration": c.age_concentration,
            "mean apnea severity": c.apnea_mean,
            "share with alpha in NREM": c.alpha_intrusion_share,
            "share with REM without atonia": c.rem_without_atonia_share,
            "share on a sedative": c.sedative_share,
            "share of night ambiguous": c.ambiguous_share,
            "spread between nights (x)": c.person_spread,
            "N1 / N3 / W readiness": f"{c.habits.n1_readiness:g} / {c.habits.n3_readiness:g} / "
            f"{c.habits.wake_readiness:g}",
            "scorers": c.n_scorers,
        }
    return pd.DataFrame(rows).T
