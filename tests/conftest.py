"""Shared fixtures: the smoke book is the slowest thing the suite does, so it is built once per
session and read by every test that needs it (tests/test_book.py, tests/test_html.py)."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from sleepvlm.book import ChapterRun, run_book

# Assembled so that no key-like literal is tracked; the smoke build must not leak it anywhere.
FAKE_KEY = "sk-test-" + "0123456789abcdefghij0123456789"


@dataclass
class SmokeBook:
    base: Path  # everything the build wrote: the build folder and the cache
    build: Path
    html: Path
    runs: list[ChapterRun]
    key: str  # the fake API key set while building


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory) -> SmokeBook:
    base = tmp_path_factory.mktemp("smoke")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLEEPVLM_CACHE", str(base / "cache"))
        env.setenv("OPENAI_API_KEY", FAKE_KEY)
        runs = run_book(smoke=True, build=base / "book", log=lambda _: None)
    build = base / "book"
    return SmokeBook(base, build, build / "_build" / "html", runs, FAKE_KEY)
