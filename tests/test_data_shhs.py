"""SHHS loader: NSRR and Profusion XML (told apart by the root tag), native 50-Hz EOG."""

from __future__ import annotations

import numpy as np
import pytest

from sleepvlm.data.edf import write_edf
from sleepvlm.data.records import CorruptFileError, DataError
from sleepvlm.data.shhs import load_shhs, subject_and_night, visit_name

NSRR = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<PSGAnnotation>
<SoftwareVersion>Compumedics</SoftwareVersion>
<EpochLength>30</EpochLength>
<ScoredEvents>
<ScoredEvent>
<EventType/>
<EventConcept>Recording Start Time</EventConcept>
<Start>0</Start>
<Duration>240.0</Duration>
<ClockTime>00.00.00 22.00.00</ClockTime>
</ScoredEvent>
<ScoredEvent>
<EventType>Stages|Stages</EventType>
<EventConcept>Wake|0</EventConcept>
<Start>0.0</Start>
<Duration>60.0</Duration>
</ScoredEvent>
<ScoredEvent>
<EventType>Respiratory|Respiratory</EventType>
<EventConcept>Hypopnea|Hypopnea</EventConcept>
<Start>65.2</Start>
<Duration>14.1</Duration>
<SignalLocation>ABDO RES</SignalLocation>
</ScoredEvent>
<ScoredEvent>
<EventType>Stages|Stages</EventType>
<EventConcept>Stage 4 sleep|4</EventConcept>
<Start>60.0</Start>
<Duration>60.0</Duration>
</ScoredEvent>
<ScoredEvent>
<EventType>Stages|Stages</EventType>
<EventConcept>{concept}</EventConcept>
<Start>120.0</Start>
<Duration>30.0</Duration>
</ScoredEvent>
<ScoredEvent>
<EventType>Stages|Stages</EventType>
<EventConcept>REM sleep|5</EventConcept>
<Start>150.0</Start>
<Duration>90.0</Duration>
</ScoredEvent>
</ScoredEvents>
</PSGAnnotation>
"""

PROFUSION = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<CMPStudyConfig>
<EpochLength>{epoch}</EpochLength>
<ScoredEvents></ScoredEvents>
<SleepStages>
<SleepStage>0</SleepStage>
<SleepStage>1</SleepStage>
<SleepStage>3</SleepStage>
<SleepStage>4</SleepStage>
<SleepStage>6</SleepStage>
<SleepStage>5</SleepStage>
<SleepStage>9</SleepStage>
<SleepStage>2</SleepStage>
</SleepStages>
</CMPStudyConfig>
"""


@pytest.fixture
def edf_path(tmp_path):
    rng = np.random.default_rng(7)
    rates = {"EEG(sec)": 125.0, "EEG": 125.0, "EOG(L)": 50.0, "EOG(R)": 50.0, "EMG": 125.0}
    signals = {n: rng.normal(0, 25, round(240 * fs)) for n, fs in rates.items()}
    return write_edf(tmp_path / "shhs1-200123.edf", signals, rates)


def test_nsrr_xml_with_native_rates_and_stage_4_as_n3(edf_path, tmp_path):
    xml = tmp_path / "shhs1-200123-nsrr.xml"
    xml.write_text(NSRR.format(concept="Movement|6"))
    rec = load_shhs(edf_path, xml)
    assert (rec.subject, rec.night, rec.line_freq) == ("200123", "shhs1", 60)
    assert rec.roles == {"eeg": "EEG", "eog": "EOG(L)", "eog2": "EOG(R)", "emg": "EMG"}
    assert rec.sfreq == {"EEG": 125.0, "EOG(L)": 50.0, "EOG(R)": 50.0, "EMG": 125.0}
    assert len(rec.signals["EOG(L)"]) == 50 * 240
    assert list(rec.stages) == ["W", "W", "N3", "N3", "MOVE", "REM", "REM", "REM"]


def test_profusion_xml_is_recognised_by_its_root(edf_path, tmp_path):
    xml = tmp_path / "shhs1-200123-profusion.xml"
    xml.write_text(PROFUSION.format(epoch=30))
    rec = load_shhs(edf_path, xml)
    assert list(rec.stages) == ["W", "N1", "N3", "N3", "MOVE", "REM", "UNKNOWN", "N2"]
    assert rec.unknown_codes == {}


def test_unknown_concepts_are_counted(edf_path, tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(NSRR.format(concept="Stage 5 sleep|7"))
    with pytest.warns(UserWarning, match=r"a.xml: unrecognised stage codes 'Stage 5 sleep\|7' ×1"):
        rec = load_shhs(edf_path, xml)
    assert rec.unknown_codes == {"Stage 5 sleep|7": 1}
    assert rec.stages[4] == "UNKNOWN"


def test_user_can_pick_the_secondary_eeg(edf_path, tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(PROFUSION.format(epoch=30))
    assert load_shhs(edf_path, xml, channels={"eeg": "EEG(sec)"}).roles["eeg"] == "EEG(sec)"


def test_bad_xml_files(edf_path, tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<PSGAnnotation><ScoredEvents>")
    with pytest.raises(CorruptFileError, match="a.xml: not well-formed XML"):
        load_shhs(edf_path, xml)
    xml.write_text("<Annotations></Annotations>")
    with pytest.raises(CorruptFileError, match="root <Annotations> is neither NSRR"):
        load_shhs(edf_path, xml)
    xml.write_text(PROFUSION.format(epoch=20))
    with pytest.raises(DataError, match="epochs of 20 s"):
        load_shhs(edf_path, xml)
    with pytest.raises(DataError, match="SHHS annotation file .* does not exist"):
        load_shhs(edf_path, tmp_path / "none.xml")


def test_visit_and_subject_names():
    assert subject_and_night("shhs2-204567.edf") == ("204567", "shhs2")
    assert subject_and_night("shhs1-sim-shhs-s001.edf") == ("sim-shhs-s001", "shhs1")
    assert visit_name("2") == "shhs2" and visit_name("shhs1") == "shhs1"
    assert visit_name("n2") == "shhs2"
    with pytest.raises(DataError, match="not 'baseline'"):
        visit_name("baseline")
