"""One entry point for every dataset format: the loader and writer registries, a dispatcher, and
``discover``, which lists every night of a dataset folder laid out as the real dataset is."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from . import dcsm, isruc, mass, shhs, sleepedf
from .records import DataError, Recording

LOADERS: dict[str, Callable[..., Recording]] = {
    "sleepedf": sleepedf.load_sleepedf,
    "dcsm": dcsm.load_dcsm,
    "isruc": isruc.load_isruc,
    "shhs": shhs.load_shhs,
    "mass": mass.load_mass,
}

WRITERS: dict[str, Callable[[Recording, str | Path], list[Path]]] = {
    "sleepedf": sleepedf.write_sleepedf,
    "dcsm": dcsm.write_dcsm,
    "isruc": isruc.write_isruc,
    "shhs": shhs.write_shhs,
    "mass": mass.write_mass,
}


def _check_dataset(dataset: str) -> None:
    if dataset not in LOADERS:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(LOADERS)}")


def load_recording(
    dataset: str,
    *paths: str | Path,
    channels: Mapping[str, str | Sequence[str]] | None = None,
    **named_paths: object,
) -> Recording:
    """Load one night with the dataset's loader, e.g. ``load_recording('dcsm', folder)`` or
    ``load_recording(entry['dataset'], **entry['paths'])`` for an entry of :func:`discover`."""
    _check_dataset(dataset)
    return LOADERS[dataset](*paths, channels=channels, **named_paths)


def load_entry(entry: dict, channels: Mapping[str, str | Sequence[str]] | None = None) -> Recording:
    """Load one night found by :func:`discover` (picklable with ``functools.partial``)."""
    return load_recording(entry["dataset"], channels=channels, **entry["paths"])


def write_recording(rec: Recording, root: str | Path, dataset: str | None = None) -> list[Path]:
    """Write a night in the format of ``dataset`` (default: its own) under ``root``."""
    dataset = dataset or rec.dataset
    _check_dataset(dataset)
    return WRITERS[dataset](rec, root)


def _entry(dataset: str, subject: str, night: str, **paths: Path) -> dict:
    return {"dataset": dataset, "subject": subject, "night": night, "paths": paths}


def _unpaired(path: Path, what: str) -> None:
    warnings.warn(f"{path}: no {what} found beside it; night skipped", stacklevel=3)


def discover_sleepedf(root: Path) -> list[dict]:
    entries = []
    for psg in sorted(root.rglob("*-PSG.edf")):
        # SC4001E0-PSG.edf ↔ SC4001EC-Hypnogram.edf: the 7th/8th letters differ.
        hypnograms = sorted(psg.parent.glob(f"{psg.name[:6]}*-Hypnogram.edf"))
        if not hypnograms:
            _unpaired(psg, "*-Hypnogram.edf")
            continue
        subject, night = sleepedf.subject_and_night(psg)
        entries.append(
            _entry("sleepedf", subject, night, psg_path=psg, hypnogram_path=hypnograms[0])
        )
    return entries


def discover_dcsm(root: Path) -> list[dict]:
    entries = []
    for psg in sorted(root.glob(f"*/{dcsm.PSG_FILE}")):
        if not (psg.parent / dcsm.HYPNOGRAM_FILE).is_file():
            _unpaired(psg, dcsm.HYPNOGRAM_FILE)
            continue
        entries.append(_entry("dcsm", psg.parent.name, "1", subject_dir=psg.parent))
    return entries


def discover_isruc(root: Path) -> list[dict]:
    entries = []
    for rec_path in sorted(root.rglob("*.rec")):
        scorers = isruc.scorer_files(rec_path)
        if not scorers:
            _unpaired(rec_path, "<stem>_1.txt scorer file")
            continue
        subject, night = isruc.subject_and_night(rec_path)
        entries.append(_entry("isruc", subject, night, rec_path=rec_path, scorer_paths=scorers))
    return entries


def discover_shhs(root: Path) -> list[dict]:
    base = root / "polysomnography" if (root / "polysomnography").is_dir() else root
    entries = []
    for edf in sorted(base.glob("edfs/*/*.edf")):
        visit = edf.parent.name
        candidates = [
            base / "annotations-events-nsrr" / visit / f"{edf.stem}-nsrr.xml",
            base / "annotations-events-profusion" / visit / f"{edf.stem}-profusion.xml",
        ]
        xml = next((p for p in candidates if p.is_file()), None)
        if xml is None:
            _unpaired(edf, "NSRR or Profusion annotation file")
            continue
        subject, night = shhs.subject_and_night(edf)
        entries.append(_entry("shhs", subject, night, edf_path=edf, xml_path=xml))
    return entries


def discover_mass(root: Path) -> list[dict]:
    bases = {
        p.name[: -len(mass.BASE_SUFFIX)]: p for p in sorted(root.rglob(f"*{mass.BASE_SUFFIX}"))
    }
    entries = []
    for psg in sorted(root.rglob(f"*{mass.PSG_SUFFIX}")):
        subject = mass.subject_of(psg)
        if subject not in bases:
            _unpaired(psg, f"'{subject}{mass.BASE_SUFFIX}'")
            continue
        entries.append(_entry("mass", subject, "1", psg_path=psg, base_path=bases[subject]))
    return entries


DISCOVERERS: dict[str, Callable[[Path], list[dict]]] = {
    "sleepedf": discover_sleepedf,
    "dcsm": discover_dcsm,
    "isruc": discover_isruc,
    "shhs": discover_shhs,
    "mass": discover_mass,
}


def discover(dataset: str, root: str | Path) -> list[dict]:
    """Every complete night under ``root``: dicts with dataset, subject, night and ``paths``
    (the keyword arguments of the dataset's loader). Files without a partner are skipped with
    a warning."""
    _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass the root of the {dataset} dataset")
    return DISCOVERERS[dataset](root)
