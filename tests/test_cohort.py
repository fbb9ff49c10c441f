import json

import pytest

from sleepvlm.data import cohort, formats
from sleepvlm.data.cohort import COHORT_SIZES, CohortSize, build_cohort, cohort_key, cohort_nights


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(COHORT_SIZES, "tiny", CohortSize(subjects=3, hours=0.5))
    return "tiny"


def test_cohort_is_written_in_each_centers_real_format_and_read_back(tiny, tmp_path):
    root = build_cohort(tiny, root=tmp_path)
    meta = json.loads((root / "cohort.json").read_text())
    assert meta["simulated"] is True and meta["spec"]["subjects"] == 3
    for center in ("dcsm", "shhs", "isruc"):
        nights = cohort_nights(root, center)
        assert len(nights) == 3, center
        rec = formats.load_entry(nights[0])
        assert rec.simulated and rec.dataset == center
        assert "truth" in rec.other_scorers and len(rec.events) > 0
        assert abs(rec.duration() - 0.5 * 3600) < 31
    assert (root / "dcsm" / cohort_nights(root, "dcsm")[0]["subject"] / "psg.h5").is_file()
    assert list((root / "shhs").rglob("*-nsrr.xml"))
    assert list((root / "isruc").rglob("*_2.txt"))


def test_second_build_reuses_and_an_interrupted_build_resumes(tiny, tmp_path, monkeypatch):
    root = build_cohort(tiny, root=tmp_path)
    calls = []
    real_simulate = cohort.simulate_night
    monkeypatch.setattr(
        cohort, "simulate_night", lambda *a, **k: calls.append(a) or real_simulate(*a, **k)
    )
    build_cohort(tiny, root=root)
    assert calls == []
    (root / "cohort.json").unlink()
    (root / "shhs" / ".done" / "001").unlink()
    build_cohort(tiny, root=root)
    assert calls == [("shhs", 1)]


def test_cohort_key_follows_size_and_seed(tiny):
    assert cohort_key(tiny, 0) != cohort_key(tiny, 1)
    assert cohort_key(tiny, 0) != cohort_key("small", 0)
    with pytest.raises(ValueError, match="unknown cohort size 'huge'"):
        cohort_key("huge")
