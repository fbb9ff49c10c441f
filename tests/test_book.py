import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from sleepvlm.book import (
    BookError,
    chapter_notebooks,
    dirty_notebooks,
    execute_chapter,
    run_book,
    select_chapters,
)
from sleepvlm.cache import project_root

KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def write_notebook(path, cells):
    nb = new_notebook(cells=cells, metadata=KERNEL)
    nbformat.write(nb, path)
    return path


def parameters_cell(source):
    return new_code_cell(source, metadata={"tags": ["parameters"]})


@pytest.fixture
def tiny_chapter(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    return write_notebook(
        src / "01_tiny.ipynb",
        [
            new_markdown_cell("# Tiny"),
            parameters_cell("value: int = 1  # what to square"),
            new_code_cell("assert value >= 0, 'value must be non-negative'\nprint(value**2)"),
        ],
    )


def test_execute_skip_and_rerun_on_new_parameters(tiny_chapter, tmp_path):
    build = tmp_path / "build"
    first = execute_chapter(tiny_chapter, build, {"value": 3})
    assert first.status == "ran"
    out = nbformat.read(build / "book" / "01_tiny.ipynb", as_version=4)
    assert out.cells[-1].outputs[0]["text"].strip() == "9"
    assert execute_chapter(tiny_chapter, build, {"value": 3}).status == "skipped"
    assert execute_chapter(tiny_chapter, build, {"value": 4}).status == "ran"
    assert execute_chapter(tiny_chapter, build, {"value": 4}, force=True).status == "ran"


def test_failing_chapter_names_the_cell_and_keeps_earlier_output(tiny_chapter, tmp_path):
    build = tmp_path / "build"
    execute_chapter(tiny_chapter, build, {"value": 2})
    with pytest.raises(BookError, match=r"cell \[3\].*AssertionError: value must be non-negative"):
        execute_chapter(tiny_chapter, build, {"value": -1})
    kept = nbformat.read(build / "book" / "01_tiny.ipynb", as_version=4)
    assert kept.cells[-1].outputs[0]["text"].strip() == "4"
    record = json.loads((build / "book" / "_runs" / "01_tiny.json").read_text())
    assert record["status"] == "failed"
    assert (build / "book" / "_runs" / "01_tiny.failed.ipynb").is_file()
    # the failed run must not be mistaken for a finished one
    assert execute_chapter(tiny_chapter, build, {"value": 2}).status == "ran"


def test_dirty_notebooks_finds_outputs_and_missing_parameters(tmp_path):
    cell = new_code_cell("1 + 1", execution_count=1)
    write_notebook(tmp_path / "a.ipynb", [parameters_cell("x = 1"), cell])
    write_notebook(tmp_path / "b.ipynb", [new_code_cell("x = 1")])
    problems = dirty_notebooks(tmp_path)
    assert any("a.ipynb: 1 code cell(s) carry outputs" in p for p in problems)
    assert any("b.ipynb: no code cell tagged 'parameters'" in p for p in problems)


def test_select_chapters_by_number_or_name_and_unknown_is_an_error(tmp_path):
    nbs = [tmp_path / "01_data.ipynb", tmp_path / "02_signal_processing.ipynb"]
    assert select_chapters(nbs, ["02"]) == nbs[1:]
    assert select_chapters(nbs, ["01_data"]) == nbs[:1]
    assert select_chapters(nbs, None) == nbs
    with pytest.raises(BookError, match="no chapter 07; chapters are: 01_data"):
        select_chapters(nbs, ["07"])


def test_project_notebooks_are_clean_sources():
    notebooks = chapter_notebooks(project_root())
    assert notebooks, "the book has no chapter notebooks"
    assert dirty_notebooks(project_root() / "notebooks") == []


def test_parameters_cell_follows_the_imports_and_comments_each_parameter():
    for path in chapter_notebooks(project_root()):
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert "import" in code[0].source, f"{path.name}: first code cell should hold the imports"
        assert "parameters" in code[1].metadata.get("tags", []), f"{path.name}: parameters cell"
        for line in code[1].source.splitlines():
            if line.strip() and not line.startswith("#"):
                assert ":" in line.split("=")[0], f"{path.name}: untyped parameter {line!r}"
                assert "#" in line, f"{path.name}: parameter without a comment: {line!r}"


FAKE_KEY = "sk-test-" + "0123456789abcdefghij0123456789"


@pytest.mark.slow
def test_smoke_book_builds_with_warnings_as_errors_and_leaks_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    runs = run_book(smoke=True, build=tmp_path / "book", log=lambda _: None)
    assert {r.status for r in runs} == {"ran"}
    html = tmp_path / "book" / "_build" / "html"
    for run in runs:
        page = (html / "book" / f"{run.chapter}.html").read_text()
        assert "Traceback" not in page
    assert (html / "index.html").is_file()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    leaks = [p for p in written if FAKE_KEY in p.read_text(errors="ignore")]
    assert written and not leaks


TEXT_SUFFIXES = {".ipynb", ".html", ".json", ".jsonl", ".csv", ".txt", ".md", ".log"}
