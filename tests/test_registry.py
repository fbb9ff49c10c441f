import shutil

import pytest

from sleepvlm.data.records import DataError
from sleepvlm.data.registry import REAL_DATA_ENV, REAL_EXCERPTS, real_excerpt


def test_every_shared_excerpt_is_found_and_verified():
    for name in REAL_EXCERPTS:
        path = real_excerpt(name, download=False)
        assert path.as_posix().endswith(name) and path.stat().st_size > 0


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    name = "yasa_sub-02_hypno_30s.txt"
    copy = tmp_path / name
    shutil.copyfile(real_excerpt(name), copy)
    with copy.open("a") as fh:
        fh.write("W\n")
    monkeypatch.setenv(REAL_DATA_ENV, str(tmp_path))
    with pytest.raises(DataError, match="SHA-256 differs"):
        real_excerpt(name)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DataError, match="known: dod_h_scorers.csv, .*sleepedf_"):
        real_excerpt("nope.edf")
