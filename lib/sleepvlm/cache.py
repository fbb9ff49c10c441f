"""Where generated data lives: a git-ignored cache folder keyed by content hashes, so chapters
reuse each other's work and a rerun is cheap."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

CACHE_ENV = "SLEEPVLM_CACHE"


def project_root() -> Path:
    """The repository this package is installed from (editable install: lib/sleepvlm → root)."""
    return Path(__file__).resolve().parents[2]


def cache_dir(*parts: str) -> Path:
    """``$SLEEPVLM_CACHE`` or ``data/cache`` under the working directory, created on demand."""
    base = Path(os.environ.get(CACHE_ENV) or Path.cwd() / "data" / "cache")
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_hash(*items: object, length: int = 16) -> str:
    """Stable hash of JSON-serialisable items, bytes, or files (given as Path)."""
    digest = hashlib.sha256()
    for item in items:
        if isinstance(item, Path):
            digest.update(item.read_bytes())
        elif isinstance(item, bytes):
            digest.update(item)
        else:
            digest.update(json.dumps(item, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:length]


def source_hash(*modules: object) -> str:
    """Hash of the source files of modules, so cached products follow code changes."""
    return content_hash(*(Path(m.__file__) for m in modules))


@functools.cache
def library_hash() -> str:
    """Hash of every library source and data file (code, prompt templates, registry, measured
    lever records), taken once per process."""
    package = Path(__file__).parent
    suffixes = (".py", ".md", ".yaml", ".json")
    files = [p for p in package.rglob("*") if p.suffix in suffixes and p.is_file()]
    return content_hash(*sorted(files))
