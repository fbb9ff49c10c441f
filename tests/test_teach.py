import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from sleepvlm.book import chapter_notebooks, execute_chapter
from sleepvlm.cache import project_root
from sleepvlm.cli import main
from sleepvlm.data.records import DataError
from sleepvlm.teach import (
    SOLUTION_TAG,
    STUDENT_NOTE_TAG,
    TeachError,
    find_chapter,
    split_solutions,
    student_version,
    write_teaching_versions,
)

EXERCISE = "```{admonition} Exercise · W\nCount the W epochs.\n```"
SOLUTION = "```{admonition} Solution\n:class: dropdown\nUse `scored == 'W'`: 42 epochs.\n```"


def small_project(tmp_path):
    (tmp_path / "notebooks").mkdir()
    executed = new_code_cell("print(2)", execution_count=3)
    executed.outputs = [new_output("stream", name="stdout", text="2\n")]
    cells = [
        new_markdown_cell("# 05 · Tiny chapter\n\nIntro."),
        new_code_cell("x: int = 1  # a parameter", metadata={"tags": ["parameters"]}),
        executed,
        new_markdown_cell(f"Some text.\n\n{EXERCISE}\n\n{SOLUTION}\n\nMore text."),
        new_code_cell("answer = 42  # the worked answer", metadata={"tags": ["solution"]}),
        new_markdown_cell(SOLUTION),
    ]
    nbformat.write(new_notebook(cells=cells), tmp_path / "notebooks" / "05_tiny.ipynb")
    return tmp_path


def test_student_version_drops_solutions_keeps_exercises_and_clears_outputs(tmp_path):
    root = small_project(tmp_path)
    paths = write_teaching_versions("05", out=tmp_path / "out", root=root)
    student = nbformat.read(paths["student"], as_version=4)
    nbformat.validate(student)
    text = "\n".join(c.source for c in student.cells)
    assert "Solution" not in text and "42" not in text and ":class: dropdown" not in text
    assert EXERCISE in text and "Some text." in text and "More text." in text
    assert STUDENT_NOTE_TAG in student.cells[0].metadata.tags
    assert "Student version of chapter 05_tiny" in student.cells[0].source
    code = [c for c in student.cells if c.cell_type == "code"]
    assert [c.source for c in code] == ["x: int = 1  # a parameter", "print(2)"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    # the markdown cell that held only a solution is gone, not left empty
    assert len(student.cells) == 5


def test_instructor_version_keeps_everything_without_outputs(tmp_path):
    root = small_project(tmp_path)
    paths = write_teaching_versions("05_tiny", out=tmp_path / "out", root=root)
    assert paths["instructor"] == tmp_path / "out" / "instructor" / "05_tiny.ipynb"
    source = nbformat.read(root / "notebooks" / "05_tiny.ipynb", as_version=4)
    instructor = nbformat.read(paths["instructor"], as_version=4)
    assert [c.source for c in instructor.cells] == [c.source for c in source.cells]
    assert all(not c.get("outputs") and not c.get("execution_count") for c in instructor.cells)


def test_split_solutions_handles_colon_fences_nesting_and_code():
    text = (
        "````{admonition} Exercise\nDo it.\n```{admonition} Solution 1\nHidden.\n```\n````\n"
        ":::{dropdown} Solution\nAlso hidden.\n:::\n"
        "```python\n```{admonition} Solution\n```\n"
        "```{note}\nKept.\n```"
    )
    kept, removed = split_solutions(text)
    assert "Hidden." not in kept and "Also hidden." not in kept and len(removed) == 2
    assert "````{admonition} Exercise\nDo it.\n````" in kept
    assert "```python\n```{admonition} Solution\n```" in kept  # inside code: not a directive
    assert "Kept." in kept


def test_unknown_or_broken_chapter_is_a_clear_error(tmp_path, capsys):
    root = small_project(tmp_path)
    with pytest.raises(TeachError, match="no chapter 07; chapters are: 05_tiny") as err:
        find_chapter("7", root)
    assert isinstance(err.value, DataError)
    (root / "notebooks" / "06_broken.ipynb").write_text("{not json")
    with pytest.raises(TeachError, match="06_broken.ipynb: not a readable notebook"):
        write_teaching_versions("06", out=tmp_path / "out", root=root)
    assert main(["teach", "99"]) == 1
    assert "error: no chapter 99" in capsys.readouterr().err


# The book's own solution blocks, found independently of teach.py's parser.
BOOK_SOLUTION = re.compile(r"^```\{admonition\} Solutions?\n(.*?)^```$", re.S | re.M)


@pytest.mark.parametrize("path", chapter_notebooks(project_root()), ids=lambda p: p.stem)
def test_real_chapters_student_version_has_no_solution_text(path):
    nb = nbformat.read(path, as_version=4)
    solutions = [body for c in nb.cells for body in BOOK_SOLUTION.findall(c.source)]
    assert solutions, f"{path.name}: every chapter ends with exercises and their solutions"
    student = student_version(nb, path.stem)
    text = "\n".join(c.source for c in student.cells)
    assert "{admonition} Solution" not in text
    for body in solutions:
        for line in body.splitlines():
            if len(line.strip()) > 30:  # short lines (":class: dropdown", "1.") recur
                assert line not in text, f"{path.name}: solution line kept: {line!r}"
    exercises = sum(c.source.count("{admonition} Exercise") for c in nb.cells)
    assert text.count("{admonition} Exercise") == exercises
    # gone whole: solution code cells, and markdown cells that hold nothing but a solution
    whole = [c for c in nb.cells if SOLUTION_TAG in c.metadata.get("tags", [])]
    whole += [
        c
        for c in nb.cells
        if c.cell_type == "markdown" and not split_solutions(c.source)[0].strip()
    ]
    assert len(student.cells) == len(nb.cells) + 1 - len(whole)


def chapters_with_code_solutions() -> list:
    return [
        p
        for p in chapter_notebooks(project_root())
        if any(
            SOLUTION_TAG in c.metadata.get("tags", []) for c in nbformat.read(p, as_version=4).cells
        )
    ]


@pytest.mark.parametrize("path", chapters_with_code_solutions(), ids=lambda p: p.stem)
def test_a_student_version_runs_with_its_exercises_left_to_do(path, tmp_path):
    """Code solutions run in every build of the chapter itself (the instructor version); the
    student version, without them, must run too: no later cell may need a solution's names."""
    student = student_version(nbformat.read(path, as_version=4), path.stem)
    assert not any(SOLUTION_TAG in c.metadata.get("tags", []) for c in student.cells)
    student_path = tmp_path / path.name
    nbformat.write(student, student_path)
    run = execute_chapter(student_path, tmp_path / "build", {"smoke": True})
    assert run.status == "ran"
