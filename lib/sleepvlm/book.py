"""Builds the book: papermill executes each chapter's parameterized notebook into ``book/``
(skipping chapters whose notebook, parameters and library did not change), then Jupyter Book 1
renders ``_build/html`` without executing anything, warnings as errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat

from .cache import content_hash, library_hash, project_root

NOTEBOOKS = "notebooks"
BOOK = "book"
RUNS = "_runs"
#: Files at the top of the project that Jupyter Book needs beside book/.
BOOK_FILES = ("_config.yml", "_toc.yml", "references.bib")
KERNEL = "python3"


class BookError(RuntimeError):
    """A chapter failed to execute or the HTML build failed; earlier chapters are kept."""


@dataclass
class ChapterRun:
    chapter: str
    status: str  # "ran", "skipped" or "failed"
    seconds: float
    key: str
    parameters: dict


def chapter_notebooks(root: Path) -> list[Path]:
    return sorted((root / NOTEBOOKS).glob("[0-9][0-9]_*.ipynb"))


def select_chapters(notebooks: list[Path], only: Iterable[str] | None) -> list[Path]:
    """Keep the chapters named in ``only`` by number ("01") or stem ("01_data")."""
    if not only:
        return notebooks
    wanted = set(only)
    chosen = [nb for nb in notebooks if nb.stem in wanted or nb.stem.split("_")[0] in wanted]
    unknown = wanted - {nb.stem for nb in chosen} - {nb.stem.split("_")[0] for nb in chosen}
    if unknown:
        names = ", ".join(nb.stem for nb in notebooks)
        raise BookError(f"no chapter {', '.join(sorted(unknown))}; chapters are: {names}")
    return chosen


def run_key(notebook: Path, parameters: dict) -> str:
    """A chapter reruns when its notebook, its parameters or the library changed."""
    return content_hash(notebook, parameters, library_hash())


def dirty_notebooks(folder: Path) -> list[str]:
    """Problems that make a notebook source unfit to commit: outputs, or no parameters cell."""
    problems = []
    for path in sorted(folder.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        with_output = sum(1 for c in code if c.get("outputs") or c.get("execution_count"))
        if with_output:
            problems.append(f"{path}: {with_output} code cell(s) carry outputs; clear them")
        if not any("parameters" in c.metadata.get("tags", []) for c in code):
            problems.append(f"{path}: no code cell tagged 'parameters'")
    return problems


def execute_chapter(
    notebook: Path, build: Path, parameters: dict, force: bool = False
) -> ChapterRun:
    """Execute one chapter into ``build/book`` unless an identical run is already there."""
    import papermill

    out = build / BOOK / f"{notebook.stem}.ipynb"
    record = build / BOOK / RUNS / f"{notebook.stem}.json"
    key = run_key(notebook, parameters)
    if not force and out.is_file() and record.is_file():
        previous = json.loads(record.read_text())
        if previous.get("key") == key and previous.get("status") == "ran":
            return ChapterRun(notebook.stem, "skipped", previous["seconds"], key, parameters)
    record.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        partial = Path(tmp) / out.name
        try:
            papermill.execute_notebook(
                str(notebook),
                str(partial),
                parameters=parameters,
                kernel_name=KERNEL,
                cwd=str(build),
                progress_bar=False,
            )
        except papermill.PapermillExecutionError as err:
            failed = record.with_suffix(".failed.ipynb")
            shutil.copyfile(partial, failed)
            run = ChapterRun(notebook.stem, "failed", time.perf_counter() - start, key, parameters)
            record.write_text(json.dumps(asdict(run), indent=1))
            raise BookError(
                f"chapter {notebook.stem} failed in cell [{err.exec_count}] (execution count in "
                f"the notebook below): {err.ename}: "
                f"{err.evalue}\nThe executed notebook with the error is {failed}; "
                "earlier chapters are kept."
            ) from None
        shutil.move(partial, out)
    run = ChapterRun(notebook.stem, "ran", time.perf_counter() - start, key, parameters)
    record.write_text(json.dumps(asdict(run), indent=1))
    return run


def copy_book_sources(root: Path, build: Path) -> None:
    """Lay the non-executed parts of the book beside the executed notebooks in ``build``."""
    (build / BOOK).mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        shutil.copyfile(root / name, build / name)
    for page in (root / BOOK).glob("*.md"):
        shutil.copyfile(page, build / BOOK / page.name)


def build_html(build: Path) -> Path:
    """Render the executed book with Jupyter Book 1; any Sphinx warning fails the build."""
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jupyter_book), "build", str(build), "--warningiserror", "--nitpick", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BookError(f"jupyter-book build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}")
    return build / "_build" / "html"


def run_book(
    smoke: bool = False,
    only: Iterable[str] | None = None,
    parameters: dict | None = None,
    build: Path | None = None,
    force: bool = False,
    html: bool = True,
    log=print,
) -> list[ChapterRun]:
    """Execute the selected chapters (all by default) and build the HTML book in ``build``."""
    root = project_root()
    build = Path(build or root).resolve()
    if build != root:
        copy_book_sources(root, build)
    params = {"smoke": smoke, **(parameters or {})}
    runs = []
    for notebook in select_chapters(chapter_notebooks(root), only):
        run = execute_chapter(notebook, build, params, force=force)
        log(f"{run.chapter}: {run.status} ({run.seconds:.1f} s)")
        runs.append(run)
    if html:
        log(f"HTML: {build_html(build)}")
    return runs
