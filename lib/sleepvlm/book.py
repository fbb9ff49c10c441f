"""Builds the book: papermill executes each chapter's parameterized notebook into ``book/``
(skipping chapters whose notebook, parameters and library did not change), then Jupyter Book 1
renders ``_build/html`` without executing anything, warnings as errors."""

from __future__ import annotations

import ast
import json
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nbformat

from .cache import content_hash, library_hash, project_root
from .environment import LOCK_FILE, lock_hash
from .models.registry import USER_REGISTRY_ENV

NOTEBOOKS = "notebooks"
BOOK = "book"
RUNS = "_runs"
#: Files at the top of the project that Jupyter Book needs beside book/.
BOOK_FILES = ("_config.yml", "_toc.yml", "references.bib")
KERNEL = "python3"
BUILD_LOG = "build_log.md"
NO_LOCK = "none (not installed from the lock)"
#: Notebook metadata (``metadata.sleepvlm.needs``): the chapters, by number, whose results a
#: chapter reads; a chapter that names none waits for every chapter before it.
META = "sleepvlm"
NEEDS = "needs"
#: Tag of the cell that book.py adds to each executed chapter with its papermill command.
RUN_COMMAND_TAG = "run-command"


class BookError(RuntimeError):
    """A chapter failed to execute or the HTML build failed; earlier chapters are kept."""


@dataclass
class ChapterRun:
    chapter: str
    status: str  # "ran", "skipped" or "failed"
    seconds: float
    key: str
    parameters: dict
    finished: str = ""  # UTC time the run ended (ISO 8601)
    machine: str = field(default_factory=lambda: machine_description())
    library: str = field(default_factory=lambda: library_hash())
    lock: str | None = field(default_factory=lambda: lock_hash())


def machine_description() -> str:
    """What the timings were measured on: architecture, system and CPU cores."""
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores"


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    """A chapter reruns when its notebook, its parameters, the library, the lock or the user's
    own model registry (``$SLEEPVLM_REGISTRY``) changed."""
    user = os.environ.get(USER_REGISTRY_ENV, "").strip()
    own_models = Path(user) if user and Path(user).is_file() else None
    return content_hash(notebook, parameters, library_hash(), lock_hash(), own_models)


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

    # the page states the book's data even where the chapter only reads records (chapter 13)
    data = data_statement(parameters)
    parameters = chapter_parameters(notebook, parameters)
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
            seconds = time.perf_counter() - start
            run = ChapterRun(notebook.stem, "failed", seconds, key, parameters, now_utc())
            record.write_text(json.dumps(asdict(run), indent=1))
            raise BookError(
                f"chapter {notebook.stem} failed in cell [{err.exec_count}] (execution count in "
                f"the notebook below): {err.ename}: "
                f"{err.evalue}\nThe executed notebook with the error is {failed}; "
                "earlier chapters are kept."
            ) from None
        add_run_command_cell(partial, rerun_command(notebook, parameters), data)
        shutil.move(partial, out)
    run = ChapterRun(notebook.stem, "ran", time.perf_counter() - start, key, parameters, now_utc())
    record.write_text(json.dumps(asdict(run), indent=1))
    return run


def chapter_needs(notebook: Path, chapters: list[Path]) -> set[str]:
    """The chapters among ``chapters`` (stems) that must finish before ``notebook`` starts."""
    declared = nbformat.read(notebook, as_version=4).metadata.get(META, {}).get(NEEDS)
    earlier = [c.stem for c in chapters if c.stem < notebook.stem]
    if declared is None:
        return set(earlier)
    return {c for c in earlier if c in declared or c.split("_")[0] in declared}


def start_order(ready: list[Path], needs: dict[str, set[str]]) -> list[Path]:
    """``ready`` chapters, those that more chapters wait for (directly or not) first, so the
    longest chain of the build starts as early as it can; otherwise in chapter order."""

    def waiting_on(stem: str) -> int:
        found, frontier = set(), {stem}
        while frontier:
            frontier = {c for c, n in needs.items() if n & frontier} - found
            found |= frontier
        return len(found)

    return sorted(ready, key=lambda nb: (-waiting_on(nb.stem), nb.stem))


def _execute_sharing_cores(
    notebook: Path, build: Path, parameters: dict, force: bool, threads: int
) -> ChapterRun:
    # The chapter's kernel inherits this: chapters running side by side share the cores
    # instead of each starting a thread per core.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return execute_chapter(notebook, build, parameters, force=force)


def _execute_logged(notebook, build, parameters, statuses, force, log) -> ChapterRun:
    statuses[notebook.stem] = "failed"  # until it finishes
    run = execute_chapter(notebook, build, parameters, force=force)
    statuses[notebook.stem] = run.status
    log(f"{run.chapter}: {run.status} ({run.seconds:.1f} s)")
    return run


def execute_chapters(
    chapters: list[Path],
    build: Path,
    parameters: dict,
    statuses: dict[str, str],
    force: bool = False,
    jobs: int = 1,
    log: Callable[[str], None] = print,
) -> list[ChapterRun]:
    """Execute ``chapters`` in order, up to ``jobs`` at once, each once the chapters it needs
    (:func:`chapter_needs`) have run. After a failure no chapter starts; those running finish,
    then the first failure is raised. ``statuses`` is kept up to date for the build log."""
    if jobs < 1:
        raise BookError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1:  # in this process: a killed build leaves no chapter running behind it
        return [_execute_logged(nb, build, parameters, statuses, force, log) for nb in chapters]
    needs = {nb.stem: chapter_needs(nb, chapters) for nb in chapters}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending, running, finished = list(chapters), {}, set()
    runs: list[ChapterRun] = []
    failure: Exception | None = None
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        while pending or running:
            ready = start_order([nb for nb in pending if needs[nb.stem] <= finished], needs)
            for notebook in ready[: jobs - len(running)] if failure is None else []:
                pending.remove(notebook)
                statuses[notebook.stem] = "failed"  # until it finishes
                job = pool.submit(
                    _execute_sharing_cores, notebook, build, parameters, force, threads
                )
                running[job] = notebook
            if not running:
                break  # a failure left chapters that need it unstarted
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for job in done:
                notebook = running.pop(job)
                try:
                    run = job.result()
                except Exception as err:  # raised once the running chapters have finished
                    failure = failure or err
                    continue
                statuses[notebook.stem] = run.status
                finished.add(notebook.stem)
                runs.append(run)
                log(f"{run.chapter}: {run.status} ({run.seconds:.1f} s)")
    if failure is not None:
        raise failure
    return runs


def _parameter_assignments(notebook: Path) -> list[tuple[str, ast.expr | None]]:
    """(name, value) of each assignment in the notebook's ``parameters`` cell."""
    nb = nbformat.read(notebook, as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    assignments = []
    for node in ast.parse(cell.source if cell else "").body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name):
            assignments.append((target.id, node.value))
    return assignments


def declared_parameters(notebook: Path) -> set[str]:
    """The names the notebook's ``parameters`` cell declares."""
    return {name for name, _ in _parameter_assignments(notebook)}


#: An absolute path's folders (``/any/folder/``), as a message names a file on this machine.
_FOLDERS = re.compile(r"(?<![\w.~:/])/(?:[^\s/'\"]+/)+")


def without_folders(text: str, named: Mapping[str, str] | None = None) -> str:
    """``text`` with every absolute path cut to its file name: what a chapter shows of a
    message (a warning, an error) that names a file on the machine that built it. A folder of
    ``named`` (its path: the word shown) is written as that word first, so that a folder the
    chapter made itself (a temporary one, named anew each build) reads the same every time."""
    for folder, word in (named or {}).items():
        text = text.replace(str(folder).rstrip("/"), word)
    return _FOLDERS.sub("", text)


def _library_default(value: ast.expr):
    """The value of a default written as a constant of :mod:`sleepvlm.params` (``NAME`` or
    ``list(NAME)``), the one place a default shared by the chapters lives; else a
    ``ValueError``."""
    from sleepvlm import params

    as_list = (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id == "list"
        and len(value.args) == 1
    )
    node = value.args[0] if as_list else value
    if not (isinstance(node, ast.Name) and node.id.isupper() and hasattr(params, node.id)):
        raise ValueError(f"not a constant of sleepvlm.params: {ast.unparse(value)}")
    constant = getattr(params, node.id)
    return list(constant) if as_list else constant


def notebook_defaults(notebook: Path) -> dict:
    """The default values of the notebook's ``parameters`` cell: literals, and the shared
    defaults of :mod:`sleepvlm.params` the cell names."""
    defaults = {}
    for name, value in _parameter_assignments(notebook):
        if value is None:
            continue
        try:
            defaults[name] = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError):
            try:
                defaults[name] = _library_default(value)
            except ValueError:
                continue  # computed defaults cannot be compared; the value is always passed
    return defaults


def chapter_parameters(notebook: Path, parameters: dict) -> dict:
    """The book's parameters that ``notebook`` declares: a book of one lab's data passes
    ``data_dir`` to every chapter, and only the chapters that read data take it."""
    declared = declared_parameters(notebook)
    return {name: value for name, value in parameters.items() if name in declared}


def check_parameters_declared(chapters: list[Path], parameters: dict) -> None:
    """Stop before any chapter runs when a parameter is declared by none of ``chapters``
    (a misspelt name would otherwise change nothing without a word)."""
    declared = set().union(*(declared_parameters(nb) for nb in chapters))
    unknown = sorted(set(parameters) - declared)
    if unknown:
        raise BookError(
            f"no selected chapter has the parameter(s) {', '.join(unknown)}; each chapter's "
            "parameters are listed in its parameters cell (notebooks/NN_*.ipynb)"
        )


def papermill_option(name: str, value: object) -> str:
    """One papermill CLI option that passes ``value`` with its type (``-p`` guesses types
    from the text, so strings it would misread go raw and containers go as YAML)."""
    from papermill.cli import _resolve_type

    if isinstance(value, bool | int | float) or value is None:
        return f"-p {name} {value}"
    if isinstance(value, str):
        flag = "-p" if _resolve_type(value) == value else "-r"
        return f"{flag} {name} {shlex.quote(value)}"
    return f"-y {shlex.quote(f'{name}: {json.dumps(value)}')}"


def rerun_command(notebook: Path, parameters: dict) -> str:
    """The papermill command that reruns a chapter with ``parameters`` (values equal to the
    notebook's defaults left out), from the project root."""
    defaults = notebook_defaults(notebook)
    options = [
        papermill_option(name, value)
        for name, value in parameters.items()
        if name not in defaults or defaults[name] != value
    ]
    return " ".join(["papermill", f"{NOTEBOOKS}/{notebook.name}", "out.ipynb", *options])


def data_statement(parameters: dict) -> str:
    """What data the chapter ran on, as its page states it: a real dataset by its name and
    its folder's name (the rest of the path is the reader's machine's business), or the
    simulated cohort."""
    if parameters.get("data_dir"):
        folder = Path(str(parameters["data_dir"])).name
        return f"**Data: real** — the `{parameters.get('dataset', '?')}` dataset in `{folder}/`."
    return "**Data: simulated** — the embedded simulated cohort (chapter 01)."


#: A glue reference in a markdown cell: {glue}`name`, {glue:text}`name:.2f`, ...
GLUE_REFERENCE = re.compile(r"\{glue(?::[a-z]+)?\}`([^`:]+)(?::[^`]*)?`")


def missing_glue(executed: Path) -> list[str]:
    """Names an executed chapter's text refers to ({glue:text}`name`) that none of its cells
    glued: Jupyter Book would stop on them, after every chapter had run."""
    nb = nbformat.read(executed, as_version=4)
    glued = {
        output.get("metadata", {}).get("scrapbook", {}).get("name")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    }
    referred = {
        name
        for cell in nb.cells
        if cell.cell_type == "markdown"
        for name in GLUE_REFERENCE.findall(cell.source)
    }
    return sorted(referred - glued)


def add_run_command_cell(executed: Path, command: str, data: str) -> None:
    """Put the chapter's data (:func:`data_statement`) and its papermill command under its
    title (the first cell) in the executed notebook, so that every page says what it ran on
    and how to rerun it."""
    nb = nbformat.read(executed, as_version=4)
    cell = nbformat.v4.new_markdown_cell(
        f"{data} Run this chapter:\n\n```bash\n{command}\n```",
        metadata={"tags": [RUN_COMMAND_TAG]},
    )
    titled = nb.cells and nb.cells[0].cell_type == "markdown"
    nb.cells.insert(1 if titled else 0, cell)
    nbformat.write(nb, executed)


def copy_book_sources(root: Path, build: Path) -> None:
    """Lay the non-executed parts of the book beside the executed notebooks in ``build``."""
    (build / BOOK).mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        shutil.copyfile(root / name, build / name)
    for page in (root / BOOK).glob("*.md"):
        shutil.copyfile(page, build / BOOK / page.name)


def read_record(build: Path, chapter: str) -> dict | None:
    path = build / BOOK / RUNS / f"{chapter}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def markdown_cell_text(text: str) -> str:
    return text.replace("|", "\\|")


#: Wall time a cold full build (fresh clone, install included) must fit in on 2 cores: the
#: build log gives each chapter's share of it, so that a chapter that grows shows.
BUDGET_S = 45 * 60


def budget_share(seconds: float) -> str:
    return f"{100 * seconds / BUDGET_S:.0f} %"


def build_log_markdown(
    root: Path, build: Path, statuses: dict[str, str], wall_seconds: float, jobs: int = 1
) -> str:
    """The build log page: the wall time of this build and, per chapter, its status in this
    build and, from its run record, the seconds, parameters, time and machine of its last
    execution."""
    rows, commands, total = [], [], 0.0
    for notebook in chapter_notebooks(root):
        chapter = notebook.stem
        record = read_record(build, chapter) or {}
        status = statuses.get(chapter, "not run")
        if "seconds" in record:
            total += record["seconds"]
            seconds = f"{record['seconds']:.1f}"
            share = budget_share(record["seconds"])
            params = f"`{markdown_cell_text(json.dumps(record['parameters']))}`"
            when = f"{record.get('finished', '?')} ({record.get('machine', '?')})"
            commands.append((chapter, rerun_command(notebook, record["parameters"])))
        else:
            seconds = share = params = when = "—"
        rows.append(f"| {chapter} | {status} | {seconds} | {share} | {params} | {when} |")
    lines = [
        "# Build log",
        "",
        "How the chapters of this build were executed, written by `sleepvlm book` from the run",
        f"records in `{BOOK}/{RUNS}/`. A *skipped* chapter was unchanged (same notebook,",
        "parameters and library) and keeps the output and timing of its last run.",
        "",
        f"- built: {now_utc()}",
        f"- machine: {machine_description()}",
        f"- library hash: `{library_hash()}`",
        f"- dependency lock (`{LOCK_FILE}`, SHA-256): `{lock_hash() or NO_LOCK}`",
        f"- wall time of this build's chapters: {wall_seconds:.1f} s ({wall_seconds / 60:.1f} min),"
        f" up to {jobs} at once: {budget_share(wall_seconds)} of the {BUDGET_S / 60:.0f}-min"
        " budget of a cold full build",
        f"- total of the chapters' recorded times: {total:.1f} s ({total / 60:.1f} min)",
        "",
        f"| chapter | status | seconds | share of {BUDGET_S / 60:.0f} min | parameters "
        "| last run (machine) |",
        "|---|---|---:|---:|---|---|",
        *rows,
        "",
        "## Rerunning a chapter",
        "",
        "From the project root, with the parameters of this build (parameters equal to the",
        "notebook's defaults are left out):",
        "",
    ]
    for chapter, command in commands:
        lines += [f"{chapter}:", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def write_build_log(
    root: Path, build: Path, statuses: dict[str, str], wall_seconds: float, jobs: int = 1
) -> Path:
    path = build / BOOK / BUILD_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_log_markdown(root, build, statuses, wall_seconds, jobs))
    return path


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
    root: Path | None = None,
    jobs: int = 1,
) -> list[ChapterRun]:
    """Execute the selected chapters (all by default) of the project at ``root`` (this one by
    default), up to ``jobs`` at once, write the build log and build the HTML book in
    ``build``."""
    root = Path(root or project_root()).resolve()
    build = Path(build or root).resolve()
    if build != root:
        copy_book_sources(root, build)
    params = {"smoke": smoke, **(parameters or {})}
    chapters = select_chapters(chapter_notebooks(root), only)
    check_parameters_declared(chapters, parameters or {})
    statuses = {nb.stem: "not selected" for nb in chapter_notebooks(root)}
    statuses.update({nb.stem: "not run" for nb in chapters})
    start = time.perf_counter()
    try:
        runs = execute_chapters(chapters, build, params, statuses, force, jobs, log)
    finally:
        wall = time.perf_counter() - start
        log(f"build log: {write_build_log(root, build, statuses, wall, jobs)}")
    if html:
        log(f"HTML: {build_html(build)}")
    return runs
