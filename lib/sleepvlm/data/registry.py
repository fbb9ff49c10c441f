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
_DREAMS = "https://raw.githubusercontent.com/carlosloza/spindles-HMM/37c0e2c7ad991223556151c586051b283ce5af9b/DatabaseSpindles/"
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
    "dod_h_scorers.csv": (
        "db717d93a4f08a2a357499aa2e61e3382d27b650fd96e841e5904dc5789c8361",
        None,
    ),
    "dod_o_scorers.csv": (
        "b0fb08281207aad3fa1f1a22e0d64f416bcab8be08c6fe78185de9a281979488",
        None,
    ),
    "dreams_spindles/DREAMS_databases_License.txt": (
        "6fbe5ae448a1e7f3e82ae2e3567c28a9f885e47251c7f3d650bf489e67cc0763",
        _DREAMS + "DREAMS_databases_License.txt",
    ),
    "dreams_spindles/Hypnogram_excerpt1.txt": (
        "87df5588970293822d14e54546819ac7a1edd35640cf28af6f529c15e1190417",
        _DREAMS + "Hypnogram_excerpt1.txt",
    ),
    "dreams_spindles/Hypnogram_excerpt2.txt": (
        "cef3f997dcc00a2c74654549f73089eb6d2d18f1cbb55f071cd8bb230936ca87",
        _DREAMS + "Hypnogram_excerpt2.txt",
    ),
    "dreams_spindles/Hypnogram_excerpt3.txt": (
        "b6754c0e54b4df98663cd931e578111038f71fdcbde605b2df00739fb34d6ba8",
        _DREAMS + "Hypnogram_excerpt3.txt",
    ),
    "dreams_spindles/Hypnogram_excerpt4.txt": (
        "edea559666ef26f6e0c17423bed0dab9a9d01d670311c94349908e808af00995",
        _DREAMS + "Hypnogram_excerpt4.txt",
    ),
    "dreams_spindles/Visual_scoring1_excerpt1.txt": (
        "8e250f06ce94732aff585ab7db70ed34db5073bbd2300e15f183231d1e66ac20",
        _DREAMS + "Visual_scoring1_excerpt1.txt",
    ),
    "dreams_spindles/Visual_scoring1_excerpt2.txt": (
        "6893143fe97e8ebe1267c1d788ec0583b8332074f989f9986aed56aa1dfef341",
        _DREAMS + "Visual_scoring1_excerpt2.txt",
    ),
    "dreams_spindles/Visual_scoring1_excerpt3.txt": (
        "320e0945edb3e8f533a1aace7288e6caeaa6697c980d46eb17f699f392a194fa",
        _DREAMS + "Visual_scoring1_excerpt3.txt",
    ),
    "dreams_spindles/Visual_scoring1_excerpt4.txt": (
        "53ccfcad31c5272f5b14ea53b0abfc4a1e193af80ab928743d6e2d50ddda28d6",
        _DREAMS + "Visual_scoring1_excerpt4.txt",
    ),
    "dreams_spindles/Visual_scoring2_excerpt1.txt": (
        "3cadadff51f6224b41ec276e4f154e88146db4fd2f99ac163b442d52585586ae",
        _DREAMS + "Visual_scoring2_excerpt1.txt",
    ),
    "dreams_spindles/Visual_scoring2_excerpt2.txt": (
        "323afc155a9f7082af6a0d81eebe08c7a386a7212414c843b805487304b4fa23",
        _DREAMS + "Visual_scoring2_excerpt2.txt",
    ),
    "dreams_spindles/Visual_scoring2_excerpt3.txt": (
        "b862697af7c7234650af2dbf70d530aee93a197d664c769b1d8f6df388f1226d",
        _DREAMS + "Visual_scoring2_excerpt3.txt",
    ),
    "dreams_spindles/Visual_scoring2_excerpt4.txt": (
        "90584fd25c077d55836e9391c51e6ecec37990f72fca74199f19e844a052f529",
        _DREAMS + "Visual_scoring2_excerpt4.txt",
    ),
    "dreams_spindles/excerpt1.txt": (
        "8e93c48c6f4bf322e79e3efaa167d30be0c2342be44f4560a0e76055dad6e969",
        _DREAMS + "excerpt1.txt",
    ),
    "dreams_spindles/excerpt2.txt": (
        "8d541b9754096570e14f752af1f2785acdeac4af56fa5867bca5fac6538689a5",
        _DREAMS + "excerpt2.txt",
    ),
    "dreams_spindles/excerpt3.edf": (
        "c829bdca73ad29c12c965b61522a4eae74763b38d6cc6ac8724e6e70cdf56438",
        _DREAMS + "excerpt3.edf",
    ),
    "dreams_spindles/excerpt3.txt": (
        "b0049afafaabd543e75ad24f860ab3423df412f99c96a7028674a44fc14725a1",
        _DREAMS + "excerpt3.txt",
    ),
    "dreams_spindles/excerpt4.txt": (
        "843f918cba427b77594b0e8bca576e40c3e1626185b1eb858adffb85c5820ac0",
        _DREAMS + "excerpt4.txt",
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
    # names may hold a folder (dreams_spindles/excerpt1.txt): the same layout in the cache
    folder = cache_dir("real", *Path(name).parent.parts)
    return Path(
        pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=Path(name).name, path=folder)
    )
