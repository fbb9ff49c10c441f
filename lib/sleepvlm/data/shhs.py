"""SHHS (NSRR): ``polysomnography/edfs/<visit>/<visit>-<id>.edf`` with stages in the NSRR XML
(``PSGAnnotation/ScoredEvents/ScoredEvent``, EventType "Stages|Stages") or in the Compumedics
Profusion XML (``CMPStudyConfig/SleepStages/SleepStage``); the root tag tells them apart.
Channels keep their native rates (EEG 125 Hz, EOG 50 Hz, EMG 125 Hz)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from .edf import open_edf, read_roles, require_file, write_edf
from .hypnogram import align_hypnogram, annotations_to_epochs, encode_stages, map_stages, runs
from .records import EPOCH_S, CorruptFileError, DataError, Recording
from .sidecar import loaded_recording, write_sidecars

DATASET = "shhs"
LINE_FREQ = 60.0
NSRR_ROOT, PROFUSION_ROOT = "PSGAnnotation", "CMPStudyConfig"
STAGE_EVENT = "Stages|Stages"
_NAME = re.compile(r"(?P<visit>shhs\d)-(?P<subject>.+)")


def subject_and_night(edf_path: str | Path) -> tuple[str, str]:
    """('200001', 'shhs1') for shhs1-200001.edf; the stem and '1' for other names."""
    match = _NAME.match(Path(edf_path).stem)
    return (match["subject"], match["visit"]) if match else (Path(edf_path).stem, "1")


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise CorruptFileError(f"{path}: a scored event lacks <{tag}>")
    return child.text.strip()


def read_nsrr_stages(root: ET.Element, path: Path) -> tuple[float, list]:
    annotations = []
    for event in root.iter("ScoredEvent"):
        if (event.findtext("EventType") or "").strip() != STAGE_EVENT:
            continue
        try:
            start, duration = (
                float(_text(event, "Start", path)),
                float(_text(event, "Duration", path)),
            )
        except ValueError as exc:
            raise CorruptFileError(f"{path}: non-numeric Start/Duration ({exc})") from exc
        annotations.append((start, duration, _text(event, "EventConcept", path)))
    return annotations_to_epochs(annotations, str(path))


def read_profusion_stages(root: ET.Element, path: Path) -> tuple[float, list]:
    epoch = root.findtext("EpochLength")
    if epoch is not None and not math.isclose(float(epoch), EPOCH_S):
        raise DataError(f"{path}: epochs of {epoch} s; only {EPOCH_S:g}-s scoring is supported")
    stages = [(s.text or "").strip() for s in root.iterfind("SleepStages/SleepStage")]
    if not stages:
        raise DataError(f"{path}: no <SleepStages>/<SleepStage> entries")
    return 0.0, stages


def read_stage_xml(path: Path) -> tuple[float, list, str]:
    """(offset s, one code per epoch, stage table) of an NSRR or Profusion XML file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise CorruptFileError(f"{path}: not well-formed XML ({exc})") from exc
    if root.tag == NSRR_ROOT:
        return (*read_nsrr_stages(root, path), "shhs_nsrr")
    if root.tag == PROFUSION_ROOT:
        return (*read_profusion_stages(root, path), "shhs_profusion")
    raise CorruptFileError(
        f"{path}: root <{root.tag}> is neither NSRR <{NSRR_ROOT}> nor Profusion <{PROFUSION_ROOT}>"
    )


def load_shhs(
    edf_path: str | Path,
    xml_path: str | Path,
    channels: Mapping[str, str | Sequence[str]] | None = None,
) -> Recording:
    """One SHHS night with its NSRR or Profusion stage annotations."""
    xml_path = require_file(xml_path, "SHHS annotation file")
    edf = open_edf(edf_path)
    roles, signals, sfreq = read_roles(edf, edf_path, DATASET, channels)
    offset, codes, table = read_stage_xml(xml_path)
    labels, unknown = map_stages(codes, table, str(xml_path))
    duration = min(len(signals[c]) / sfreq[c] for c in signals)
    labels, offset = align_hypnogram(labels, duration, offset, str(xml_path))
    subject, night = subject_and_night(edf_path)
    return loaded_recording(
        edf_path,
        dataset=DATASET,
        subject=subject,
        night=night,
        signals=signals,
        sfreq=sfreq,
        stages=labels,
        roles=roles,
        hypnogram_offset=offset,
        line_freq=LINE_FREQ,
        unknown_codes=unknown,
    )


def _element(tag: str, value: object) -> str:
    return f"<{tag}>{escape(str(value))}</{tag}>"


def nsrr_xml(rec: Recording, duration_s: float) -> str:
    """NSRR XML text: the recording-start event, then one Stages event per run of epochs."""
    events = [
        "<ScoredEvent>\n<EventType/>\n<EventConcept>Recording Start Time</EventConcept>\n"
        f"<Start>0</Start>\n{_element('Duration', f'{duration_s:.1f}')}\n"
        "<ClockTime>00.00.00 22.00.00</ClockTime>\n</ScoredEvent>"
    ]
    for first, n, concept in runs(encode_stages(rec.stages, "shhs_nsrr", rec.label)):
        start = rec.hypnogram_offset + first * EPOCH_S
        events.append(
            f"<ScoredEvent>\n{_element('EventType', STAGE_EVENT)}\n"
            f"{_element('EventConcept', concept)}\n{_element('Start', f'{start:.1f}')}\n"
            f"{_element('Duration', f'{n * EPOCH_S:.1f}')}\n</ScoredEvent>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        f"<{NSRR_ROOT}>\n<SoftwareVersion>Compumedics</SoftwareVersion>\n"
        f"<EpochLength>{EPOCH_S:g}</EpochLength>\n<ScoredEvents>\n"
        + "\n".join(events)
        + f"\n</ScoredEvents>\n</{NSRR_ROOT}>\n"
    )


def profusion_xml(rec: Recording) -> str:
    """Profusion XML text: one <SleepStage> per epoch from the recording start."""
    lead = rec.hypnogram_offset / EPOCH_S
    if not float(lead).is_integer() or lead < 0:
        raise DataError(
            f"{rec.label}: Profusion stages start at the recording start; an offset of "
            f"{rec.hypnogram_offset} s is not a whole number of epochs"
        )
    codes = ["9"] * int(lead) + encode_stages(rec.stages, "shhs_profusion", rec.label)
    stages = "\n".join(_element("SleepStage", c) for c in codes)
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        f"<{PROFUSION_ROOT}>\n<EpochLength>{EPOCH_S:g}</EpochLength>\n<ScoredEvents>\n"
        f"</ScoredEvents>\n<SleepStages>\n{stages}\n</SleepStages>\n</{PROFUSION_ROOT}>\n"
    )


def visit_name(night: str) -> str:
    """SHHS visit folder of a night: 'shhs1', 'shhs2'; another name ending in digit n
    (e.g. '2', 'n2') gives 'shhsn'."""
    night = str(night)
    if re.fullmatch(r"shhs\d", night):
        return night
    match = re.search(r"(\d)$", night)
    if not match:
        raise DataError(f"SHHS nights are visits 'shhs1'/'shhs2' (or 1/2), not {night!r}")
    return f"shhs{match[1]}"


def write_shhs(rec: Recording, root: str | Path) -> list[Path]:
    """Write the EDF and both annotation files under ``root/polysomnography`` as NSRR does."""
    visit = visit_name(rec.night)
    base = Path(root) / "polysomnography"
    name = f"{visit}-{rec.subject}"
    edf_path = write_edf(base / "edfs" / visit / f"{name}.edf", rec.signals, rec.sfreq)
    nsrr_path = base / "annotations-events-nsrr" / visit / f"{name}-nsrr.xml"
    profusion_path = base / "annotations-events-profusion" / visit / f"{name}-profusion.xml"
    for path in (nsrr_path, profusion_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    nsrr_path.write_text(nsrr_xml(rec, rec.duration()), encoding="utf-8")
    profusion_path.write_text(profusion_xml(rec), encoding="utf-8")
    return [edf_path, nsrr_path, profusion_path, *write_sidecars(rec, edf_path)]
