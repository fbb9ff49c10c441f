import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from sleepvlm.data import cohort, formats
from sleepvlm.data.channels import BENCHMARK_CHANNELS
from sleepvlm.data.cohort import (
    COHORT_SIZES,
    NO_EXAMPLE_NIGHTS,
    CohortSize,
    build_cohort,
    cohort_key,
    cohort_nights,
    example_nights,
    plot_example_hypnograms,
    write_simulated_download,
)
from sleepvlm.data.records import EPOCH_S, MOVEMENT, Recording


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
    examples = example_nights(root, ["shhs", "dcsm"])
    assert list(examples) == ["shhs", "dcsm"]
    assert examples["dcsm"].subject == cohort_nights(root, "dcsm")[0]["subject"]


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


def night(center: str, stages: list[str]) -> Recording:
    return Recording(center, "s1", "1", signals={}, sfreq={}, stages=stages, simulated=True)


def test_example_hypnograms_draw_each_night_with_wake_on_top():
    stages = ["W", "N1", "N2", "N3", "REM", MOVEMENT]
    fig = plot_example_hypnograms({"dcsm": night("dcsm", stages), "shhs": night("shhs", stages)})
    assert [ax.get_ylabel() for ax in fig.axes] == ["dcsm", "shhs"]
    for ax in fig.axes:
        (line,) = ax.get_lines()
        np.testing.assert_allclose(line.get_ydata(), [4, 3, 2, 1, 0, np.nan])  # movement: a gap
        np.testing.assert_allclose(line.get_xdata(), np.arange(6) * EPOCH_S / 3600)  # hours
        assert [t.get_text() for t in ax.get_yticklabels()] == ["REM", "N3", "N2", "N1", "W"]
    plt.close(fig)


def test_no_example_night_says_so_instead_of_drawing(capsys):
    nights = example_nights(None, ["dcsm"])  # a chapter reading a real dataset has no cohort
    assert nights == {} and plot_example_hypnograms(nights) is None
    assert capsys.readouterr().out == NO_EXAMPLE_NIGHTS + "\n"


@pytest.mark.parametrize("dataset", list(cohort.DOWNLOAD_SOURCE_CENTER))
def test_a_simulated_download_holds_only_what_a_real_download_has(dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(COHORT_SIZES, "tiny", CohortSize(subjects=2, hours=0.25))
    folder = write_simulated_download(dataset, tmp_path / dataset, "tiny")
    names = [p.name for p in folder.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith((".events.csv", ".truth.txt"))]
    entries = formats.discover(dataset, folder)
    assert len(entries) == 2
    rec = formats.load_entry(entries[0])
    assert not rec.simulated and rec.events.empty and "truth" not in rec.other_scorers
    assert "sim" not in rec.subject  # named as the provider names subjects
    # the benchmark's own channels, as the dataset spells them
    assert rec.roles == {role: names[0] for role, names in BENCHMARK_CHANNELS[dataset].items()}
    assert ("scorer2" in rec.other_scorers) == (dataset == "isruc")


def test_a_simulated_download_of_an_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'edfx'; choose one of dcsm"):
        write_simulated_download("edfx", tmp_path)
