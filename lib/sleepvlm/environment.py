"""The dependency lock: the exact versions this checkout installs (``requirements.lock``, made by
pip-tools' ``pip-compile`` from ``pyproject.toml``), its SHA-256 for results records and the
build log, and the checks that the lock, ``pyproject.toml`` and the installed packages agree."""

from __future__ import annotations

import functools
import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .cache import project_root
from .data.records import file_sha256

LOCK_FILE = "requirements.lock"
# A pinned line of a pip-compile output: ``name==version`` (extras stripped, markers allowed).
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


class LockError(Exception):
    """The lock file is missing or unreadable."""


def lock_path(root: Path | None = None) -> Path:
    return Path(root or project_root()) / LOCK_FILE


@functools.cache
def lock_hash() -> str | None:
    """SHA-256 of this checkout's lock (``sha256sum requirements.lock`` gives the same), or
    None where the package was installed without one (from a wheel into someone's own
    environment): a record then says honestly that its environment is not pinned."""
    path = lock_path()
    return file_sha256(path) if path.is_file() else None


def locked_versions(path: Path) -> dict[str, str]:
    """Package name (canonical) → pinned version, from a pip-compile lock."""
    if not path.is_file():
        raise LockError(f"{path}: no lock file; make it with `make lock` (pip-compile)")
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        match = _PIN.match(text)
        if not match:
            raise LockError(
                f"{path}:{number}: {text!r} is not pinned with '=='; regenerate the lock with "
                "`make lock` instead of editing it by hand"
            )
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def declared_requirements(root: Path | None = None) -> list[Requirement]:
    """The dependencies of ``pyproject.toml``, its ``dev`` extra included."""
    text = (Path(root or project_root()) / "pyproject.toml").read_text()
    project = tomllib.loads(text)["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(spec) for spec in specs]


def lock_disagreements(root: Path | None = None) -> list[str]:
    """Each declared dependency that the lock leaves out or pins outside its range: after an
    edit of ``pyproject.toml`` the lock must be made again before it is installed."""
    lock = lock_path(root)
    pins = locked_versions(lock)
    problems = []
    for requirement in declared_requirements(root):
        name = canonicalize_name(requirement.name)
        version = pins.get(name)
        if version is None:
            problems.append(f"{lock.name}: {requirement.name} is declared but not locked")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(
                f"{lock.name}: {requirement.name}=={version} is outside pyproject.toml's "
                f"'{requirement.specifier}'"
            )
    if problems:
        problems.append("run `make lock` to make the lock again from pyproject.toml")
    return problems


def installed_drift(root: Path | None = None) -> list[str]:
    """Each locked package whose installed version differs from the lock (or is missing): the
    environment is not the one the book was tested with."""
    problems = []
    for name, version in locked_versions(lock_path(root)).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: locked at {version}, not installed")
            continue
        if Version(installed) != Version(version):
            problems.append(f"{name}: locked at {version}, installed {installed}")
    if problems:
        problems.append("reinstall from the lock: rm -rf .venv && make install")
    return problems
