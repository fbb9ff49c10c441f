"""Teaching versions of a chapter (``sleepvlm teach``): a student notebook without the worked
solutions and an instructor notebook with everything, both without outputs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from .book import BookError, chapter_notebooks, select_chapters
from .cache import project_root
from .data.records import DataError

#: Cells tagged with this are solutions as a whole and left out of the student version.
SOLUTION_TAG = "solution"
STUDENT_NOTE_TAG = "student-note"
#: Where the versions go by default, under the project root (git-ignored with the build).
DEFAULT_OUT = Path("_build") / "teach"

# A MyST directive or code fence opening: ```{admonition} Solution, :::{dropdown} ..., ```python
FENCE_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|:{3,})\s*(?P<info>.*?)\s*$")
DIRECTIVE = re.compile(r"^\{(?P<name>[\w:.-]+)\}\s*(?P<title>.*)$")
#: Directives whose content is a solution whatever their title.
SOLUTION_DIRECTIVES = {"solution"}
#: Directives that are a solution when their title starts with "Solution".
TITLED_DIRECTIVES = {"admonition", "dropdown"}


class TeachError(DataError):
    """A chapter could not be found or read for a teaching version."""


def is_solution_fence(info: str) -> bool:
    directive = DIRECTIVE.match(info)
    if not directive:
        return False
    name, title = directive["name"], directive["title"].strip().lower()
    return name in SOLUTION_DIRECTIVES or (
        name in TITLED_DIRECTIVES and title.startswith("solution")
    )


def closing_line(lines: list[str], start: int, fence: str) -> int:
    """Index of the line closing ``fence`` (same character, at least as long), or the last
    line: an unclosed fence runs to the end of the cell, as in CommonMark."""
    closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
    for index in range(start, len(lines)):
        if closing.match(lines[index]):
            return index
    return len(lines) - 1


def split_solutions(markdown: str) -> tuple[str, list[str]]:
    """The markdown without its solution blocks, and the blocks removed (fences included).
    Code fences are skipped whole, so a solution-like line inside code is left alone."""
    lines = markdown.splitlines(keepends=True)
    kept, removed, index = [], [], 0
    while index < len(lines):
        opening = FENCE_OPEN.match(lines[index])
        if not opening or not opening["info"]:  # plain text, or a fence that closes
            kept.append(lines[index])
            index += 1
            continue
        end = closing_line(lines, index + 1, opening["fence"])
        if is_solution_fence(opening["info"]):
            removed.append("".join(lines[index : end + 1]))
            index = end + 1
        elif DIRECTIVE.match(opening["info"]):
            kept.append(lines[index])  # a directive's content is MyST: scan inside it
            index += 1
        else:
            kept.extend(lines[index : end + 1])
            index = end + 1
    text = re.sub(r"\n{3,}", "\n\n", "".join(kept)).strip("\n")
    return text, removed


def clear_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)  # papermill's timings
    return nb


def student_note(chapter: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(
        f"**Student version of chapter {chapter}.** The worked solutions have been removed; "
        "the exercises are kept for you to solve. Run the notebook from the top; the settings "
        "you may change are in the cell tagged `parameters` near the top.",
        metadata={"tags": [STUDENT_NOTE_TAG]},
    )


def student_version(nb: nbformat.NotebookNode, chapter: str) -> nbformat.NotebookNode:
    """Without solution cells and solution blocks, outputs cleared, a note on top."""
    student = copy.deepcopy(nb)
    cells = []
    for cell in student.cells:
        if SOLUTION_TAG in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "markdown":
            cell.source = split_solutions(cell.source)[0]
            if not cell.source.strip():
                continue
        cells.append(cell)
    student.cells = [student_note(chapter), *cells]
    return clear_outputs(student)


def instructor_version(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Everything kept, outputs cleared."""
    return clear_outputs(copy.deepcopy(nb))


def find_chapter(chapter: str, root: Path | None = None) -> Path:
    """The chapter's notebook source, by number ("03" or "3") or stem ("03_aasm_rules")."""
    name = chapter.zfill(2) if chapter.isdigit() else chapter
    try:
        return select_chapters(chapter_notebooks(root or project_root()), [name])[0]
    except BookError as err:
        raise TeachError(
            f"{err}. Give a chapter number like 03 or a name like 03_aasm_rules."
        ) from None


def read_chapter(path: Path) -> nbformat.NotebookNode:
    try:
        return nbformat.read(path, as_version=4)
    except Exception as err:  # nbformat raises JSON, validation and OS errors alike
        raise TeachError(
            f"{path}: not a readable notebook ({type(err).__name__}: {err}); restore it from git"
        ) from err


def write_teaching_versions(
    chapter: str, out: Path | None = None, root: Path | None = None
) -> dict[str, Path]:
    """Write ``out/student/<chapter>.ipynb`` and ``out/instructor/<chapter>.ipynb``."""
    root = Path(root or project_root())
    source = find_chapter(chapter, root)
    nb = read_chapter(source)
    out = Path(out or root / DEFAULT_OUT)
    versions = {
        "student": student_version(nb, source.stem),
        "instructor": instructor_version(nb),
    }
    paths = {}
    for kind, version in versions.items():
        path = out / kind / source.name
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(version, path)
        paths[kind] = path
    return paths
