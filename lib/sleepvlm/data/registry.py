"""Registry of the small real PSG excerpts used to check our code and simulated cohort against
real signals: found in ``../shared/data/real`` (or ``$SLEEPVLM_REAL_DATA``), verified by SHA-256,
and downloaded with pooch from their origin on a machine that has the internet."""

from __future__ import annotations

import os
from pathlib import Path

import pooch

from ..cache import cache_dir, project_root
from .records import DataError, file_sha256

REAL_DATA_ENV = "SLEEPVLM_REAL_DATA"
_YASA = "https://raw.githubusercontent.com/raphaelvallat/yasa/d5c663a8dd6c355abfe02159b21b4643eb607480/notebooks/"
_EDFIO = "https://raw.githubusercontent.com/the-siesta-group/edfio/3b437f738e295fb415c168ea58e3136c2df0ba46/tests/TEST_DATA/"

#: name → (sha256, origin URL or None when the file was converted by us; see SOURCES.md).
REAL_EXCERPTS: dict[str, tuple[str, str | None]] = {
    "yasa_data_N2_spindles_15sec_200Hz.txt": (
        "b1bd7ffaf27d63549273fa95300adbf6eef1403f5e062e847da36d3a95655ff1",
        _YASA + "data_N2_spindles_15sec_200Hz.txt",
    ),
    "yasa_data_N3_no-spindles_30sec_100Hz.txt": (
        "ac897cb30fa116a0814ac4373afe02fc16bfe46464a77f92d85ef2784621f078",
        _YASA + "data_N3_no-spindles_30sec_100Hz.txt",
    ),
    "yasa_data_full_6hrs_100Hz_hypno_30s.txt": (
        "57049e59e2bec7459fc7203ffe30436ecabf786b570f34a3d48aa56f8ccab763",
        _YASA + "data_full_6hrs_100Hz_hypno_30s.txt",
    ),
    "yasa_data_resting_EO_200Hz_raw.fif": (
        "f01432bcd80bd6e52888db2941efd8ee1ac5ec56f161c576ba07558489facd1c",
        _YASA + "data_resting_EO_200Hz_raw.fif",
    ),
    "yasa_sub-02_hypno_30s.txt": (
        "cb85705a04932489eff993f4ed7e436af0c78c06f02efec35b218a87413ee920",
        _YASA + "sub-02_hypno_30s.txt",
    ),
    "sleepedf_SC4001E0-PSG_first300s.edf": (
        "ff05447a6a4df29979b119d0643fd655a9c1641e8955f1fa020b4103295cd4ba",
        _EDFIO + "short_psg.edf",
    ),
    "sleepedf_SC4001EC-Hypnogram.edf": (
        "a4cf67694ade1b52a0ddd06d5817fd45d2d3e8bac5302f640f3e9cfbbf12a996",
        _EDFIO + "SC4001EC-Hypnogram.edf",
    ),
    "sleepedf_SC4001EC-Hypnogram.csv": (
        "ab02f0b891e187265f63dd75fb5d03d3f052869775cdb33aa533b2651dbd1c23",
        None,
    ),
    "sleepedf_SC4001E0_fullnight_1Hz.edf": (
        "08ff34f797148cdf7d3c8d024765af7edc66cdd63931628ae6499004a344bf53",
        None,
    ),
}


def real_data_dirs() -> list[Path]:
    """Folders searched for the excerpts, in order."""
    dirs = [Path(os.environ[REAL_DATA_ENV])] if os.environ.get(REAL_DATA_ENV) else []
    return dirs + [project_root().parent / "shared" / "data" / "real", cache_dir("real")]


def real_excerpt(name: str, download: bool = True) -> Path:
    """Path of a verified real excerpt; downloads it (pooch, hash-checked) if not found locally."""
    if name not in REAL_EXCERPTS:
        raise DataError(f"unknown real excerpt {name!r}; known: {', '.join(sorted(REAL_EXCERPTS))}")
    sha256, url = REAL_EXCERPTS[name]
    for folder in real_data_dirs():
        path = folder / name
        if path.is_file():
            if file_sha256(path) != sha256:
                raise DataError(
                    f"{path}: SHA-256 differs from the registry; the file was changed or "
                    "truncated. Delete it to download a fresh copy."
                )
            return path
    if not (download and url):
        raise DataError(
            f"real excerpt {name} not found in {', '.join(map(str, real_data_dirs()))}; "
            f"set ${REAL_DATA_ENV} to the folder that holds it"
            + ("" if url else " (it was converted for this project and has no download URL)")
        )
    return Path(
        pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=name, path=cache_dir("real"))
    )
