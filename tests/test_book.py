import html
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from sleepvlm import cli, params
from sleepvlm.book import (
    META,
    NEEDS,
    RUN_COMMAND_TAG,
    BookError,
    chapter_notebooks,
    chapter_parameters,
    check_parameters_declared,
    data_statement,
    dirty_notebooks,
    execute_chapter,
    notebook_defaults,
    rerun_command,
    run_book,
    run_key,
    select_chapters,
    start_order,
    without_folders,
)
from sleepvlm.cache import library_hash, project_root
from sleepvlm.cli import book_parameters, build_parser, lab_build_dir
from sleepvlm.data.registry import real_data_dirs
from sleepvlm.environment import lock_hash
from sleepvlm.models import USER_REGISTRY_ENV

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
    assert RUN_COMMAND_TAG in out.cells[1].metadata.tags  # right under the title
    assert "papermill notebooks/01_tiny.ipynb out.ipynb -p value 3" in out.cells[1].source
    assert out.cells[1].source.startswith("**Data: simulated**")
    source = nbformat.read(tiny_chapter, as_version=4)
    assert not any(RUN_COMMAND_TAG in c.metadata.get("tags", []) for c in source.cells)
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


def test_rerun_command_leaves_out_defaults_and_keeps_types(tmp_path):
    nb = write_notebook(
        tmp_path / "07_x.ipynb",
        [
            new_markdown_cell("# X"),
            parameters_cell(
                'dataset: str = ""  # one dataset\nseed: int = 0  # seed\n'
                "models: list = ['chance']  # models\nsmoke: bool = False  # tiny run"
            ),
        ],
    )
    params = {"smoke": False, "dataset": "dcsm", "seed": 0, "models": ["a b"], "tag": "1"}
    assert rerun_command(nb, params) == (
        "papermill notebooks/07_x.ipynb out.ipynb -p dataset dcsm "
        """-y 'models: ["a b"]' -r tag 1"""
    )


def fake_project(root, chapters: dict[str, str], needs: dict[str, list[str]] | None = None):
    """A project whose chapters are one parameters cell and one code cell each; ``needs``
    declares the chapters some of them wait for."""
    (root / "notebooks").mkdir(parents=True)
    for name, code in chapters.items():
        path = write_notebook(
            root / "notebooks" / f"{name}.ipynb",
            [
                new_markdown_cell(f"# {name}"),
                parameters_cell('marks: str = ""  # folder'),
                new_code_cell(code),
            ],
        )
        if needs and name in needs:
            nb = nbformat.read(path, as_version=4)
            nb.metadata[META] = {NEEDS: needs[name]}
            nbformat.write(nb, path)
    return root


def count_run(name):
    return f"import pathlib\nwith open(pathlib.Path(marks) / '{name}', 'a') as f:\n    f.write('x')"


def wait_for(path, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_book_killed_in_the_second_chapter_resumes_without_rerunning_the_first(
    tmp_path, monkeypatch
):
    # both processes see one library version, even while the library is being edited
    monkeypatch.setattr("sleepvlm.book.library_hash", lambda: "pinned")
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "slow").touch()
    slow_second = (
        count_run("02")
        + "\nimport time\nwhile (pathlib.Path(marks) / 'slow').exists():\n    time.sleep(0.2)"
    )
    root = fake_project(
        tmp_path / "project", {"01_first": count_run("01"), "02_second": slow_second}
    )
    params = {"marks": str(marks)}
    script = (
        "import sleepvlm.book as book\n"
        "book.library_hash = lambda: 'pinned'\n"
        f"book.run_book(root={str(root)!r}, parameters={params!r}, html=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, start_new_session=True)
    try:
        wait_for(marks / "02")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (marks / "slow").unlink()  # the kernel left behind exits when it sees its parent gone
    assert (root / "book" / "01_first.ipynb").is_file()
    assert not (root / "book" / "02_second.ipynb").exists()

    runs = run_book(root=root, parameters=params, html=False, log=lambda _: None)
    assert [(r.chapter, r.status) for r in runs] == [("01_first", "skipped"), ("02_second", "ran")]
    assert (marks / "01").read_text() == "x"  # executed once, before the kill
    assert (root / "book" / "02_second.ipynb").is_file()
    log = (root / "book" / "build_log.md").read_text()
    assert "| 01_first | skipped |" in log and "| 02_second | ran |" in log


def test_failing_chapter_stops_the_book_and_keeps_earlier_chapters(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    root = fake_project(
        tmp_path / "project",
        {
            "01_ok": count_run("01"),
            "02_bad": "raise ValueError('bad input in chapter two')",
            "03_after": count_run("03"),
        },
    )
    with pytest.raises(BookError, match=r"02_bad failed in cell \[3\].*ValueError: bad input"):
        run_book(root=root, parameters={"marks": str(marks)}, html=False, log=lambda _: None)
    assert (root / "book" / "01_ok.ipynb").is_file()
    assert not (marks / "03").exists() and not (root / "book" / "03_after.ipynb").exists()
    log = (root / "book" / "build_log.md").read_text()
    assert "| 01_ok | ran |" in log and "| 02_bad | failed |" in log
    assert "| 03_after | not run | — | — |" in log
    seconds = float(log.split("| 01_ok | ran | ")[1].split(" |")[0])
    share = log.split("| 01_ok | ran | ")[1].split(" | ")[1]
    assert share == f"{100 * seconds / (45 * 60):.0f} %"  # of the cold build's 45 minutes
    assert "of the 45-min budget of a cold full build" in log
    assert "papermill notebooks/01_ok.ipynb out.ipynb -p marks" in log


def meets(me, other):
    """Chapter code that marks ``me`` and fails unless ``other`` runs at the same time."""
    return count_run(me) + (
        f"\nimport time\nfor _ in range(300):\n    if (pathlib.Path(marks) / '{other}').exists():"
        "\n        break\n    time.sleep(0.1)\nelse:\n    raise RuntimeError('ran alone')"
    )


def test_chapters_run_side_by_side_once_the_chapters_they_need_are_done(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    after_both = "import os\nassert sorted(os.listdir(marks)) == ['01', '02', '03']"
    root = fake_project(
        tmp_path / "project",
        {
            "01_first": count_run("01"),
            "02_left": meets("02", "03") + "\nassert (pathlib.Path(marks) / '01').exists()",
            "03_right": meets("03", "02"),
            "04_last": after_both,
        },
        needs={"02_left": ["01"], "03_right": ["01"]},
    )
    runs = run_book(root=root, parameters={"marks": str(marks)}, html=False, jobs=2, log=print)
    assert {r.chapter: r.status for r in runs} == {
        "01_first": "ran",
        "02_left": "ran",
        "03_right": "ran",
        "04_last": "ran",
    }
    assert runs[-1].chapter == "04_last"
    assert "up to 2 at once" in (root / "book" / "build_log.md").read_text()


def test_a_failure_among_parallel_chapters_lets_the_others_finish_and_starts_none(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    root = fake_project(
        tmp_path / "project",
        {
            "01_first": count_run("01"),
            "02_bad": "import time\ntime.sleep(1)\nraise ValueError('bad input in chapter two')",
            "03_slow": count_run("03") + "\nimport time\ntime.sleep(3)",
            "04_after": count_run("04"),
        },
        needs={"02_bad": ["01"], "03_slow": ["01"]},
    )
    with pytest.raises(BookError, match=r"02_bad failed.*ValueError: bad input"):
        run_book(root=root, parameters={"marks": str(marks)}, html=False, jobs=2, log=print)
    assert (root / "book" / "03_slow.ipynb").is_file()
    assert not (marks / "04").exists()
    log = (root / "book" / "build_log.md").read_text()
    assert "| 02_bad | failed |" in log and "| 03_slow | ran |" in log
    assert "| 04_after | not run |" in log


@pytest.mark.slow
def test_smoke_book_builds_with_warnings_as_errors_and_leaks_no_key(smoke_book):
    assert {r.status for r in smoke_book.runs} == {"ran"}
    for run in smoke_book.runs:
        page = (smoke_book.html / "book" / f"{run.chapter}.html").read_text()
        assert "Traceback" not in page
        text = html.unescape(re.sub(r"<[^>]+>", "", page))  # the code is split into tokens
        assert f"papermill notebooks/{run.chapter}.ipynb out.ipynb -p smoke True" in text
        # launch buttons are plain links to the executed chapters the book workflow pushes to
        # the `executed` branch; nothing is fetched at build time
        assert "https://mybinder.org/v2/gh/sleepvlm/sleepvlm/executed?urlpath=" in page
        colab = "https://colab.research.google.com/github/sleepvlm/sleepvlm/blob/executed/book/"
        assert f"{colab}{run.chapter}.ipynb" in page
    assert (smoke_book.html / "index.html").is_file()
    written = [p for p in smoke_book.base.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    leaks = [p for p in written if smoke_book.key in p.read_text(errors="ignore")]
    assert written and not leaks


@pytest.mark.slow
def test_smoke_chapters_show_no_warnings_or_local_paths(smoke_book):
    """What a chapter writes to stderr (warnings, progress bars) and the builder's own paths
    are noise to a reader: an executed chapter shows neither."""
    local = (
        str(Path.home()),
        str(project_root()),
        str(smoke_book.base),
        "site-packages",
        *(str(folder.resolve()) for folder in real_data_dirs()),  # the real excerpts' folders
    )
    for run in smoke_book.runs:
        executed = nbformat.read(smoke_book.build / "book" / f"{run.chapter}.ipynb", as_version=4)
        for index, cell in enumerate(executed.cells):
            for output in cell.get("outputs", []):
                where = f"{run.chapter}, cell {index}"
                assert output.get("name") != "stderr", f"{where}: {output.get('text', '')[:300]}"
                shown = json.dumps(output)
                assert not [p for p in local if p in shown], f"{where} shows a local path"


@pytest.mark.slow
def test_smoke_book_has_its_build_log_and_teaching_pages(smoke_book):
    log = (smoke_book.html / "book" / "build_log.html").read_text()
    for run in smoke_book.runs:
        assert f"<td><p>{run.chapter}</p></td>\n<td><p>ran</p></td>" in log
    assert library_hash() in log
    assert lock_hash() and lock_hash() in log  # the dependency lock the chapters ran with
    assert (smoke_book.html / "book" / "teaching.html").is_file()


def test_every_chapter_draws_one_share_of_the_papers_counts_set_in_one_place():
    chapters = chapter_notebooks(project_root())
    defaults = [notebook_defaults(nb) for nb in chapters]
    shares = [d["count_scale"] for d in defaults if "count_scale" in d]
    assert len(shares) >= 7 and set(shares) == {params.BOOK_COUNT_SCALE}
    # (chapter 13's empty list means every dataset on record)
    centers = [d[k] for d in defaults for k in ("datasets", "eval_datasets", "centers") if d.get(k)]
    assert len(centers) >= 7 and all(c == list(params.PAPER_CENTERS) for c in centers)
    # written as the library's constants, not as literals that could drift apart
    for nb in chapters:
        cell = next(
            c for c in nbformat.read(nb, 4).cells if "parameters" in c.metadata.get("tags", [])
        )
        assert "count_scale: float = 0" not in cell.source, nb.name
        assert '["dcsm", "shhs", "isruc"]' not in cell.source, nb.name


def test_the_failure_chapter_replays_the_real_models_answers_of_the_text_chapter():
    # chapter 12 analyses the answers chapter 08 stored: a different subsample would ask anew
    defaults = {nb.stem[:2]: notebook_defaults(nb) for nb in chapter_notebooks(project_root())}
    assert defaults["08"]["real_llm_per_stage"] == defaults["12"]["real_llm_per_stage"] > 0
    assert defaults["08"]["real_llm"] == defaults["12"]["real_llm"] != ""


def test_launch_buttons_open_the_branch_the_book_workflow_publishes():
    root = project_root()
    branch = yaml.safe_load((root / "_config.yml").read_text())["repository"]["branch"]
    workflow = yaml.safe_load((root / ".github" / "workflows" / "book.yml").read_text())
    script = "\n".join(step.get("run", "") for step in workflow["jobs"]["build"]["steps"])
    assert "git add -f book/*.ipynb" in script
    assert f"git checkout -B {branch}" in script and f"git push -f origin {branch}" in script
    assert workflow["permissions"]["contents"] == "write"


TEXT_SUFFIXES = {".ipynb", ".html", ".json", ".jsonl", ".csv", ".txt", ".md", ".log"}


def test_chapters_that_others_wait_for_start_first():
    needs = {
        "02_a": {"01_x"},
        "03_b": {"01_x"},
        "04_c": {"03_b"},
        "05_d": {"04_c"},
        "06_e": {"01_x", "02_a", "03_b", "04_c", "05_d"},
    }
    ready = [Path(f"{stem}.ipynb") for stem in ("02_a", "03_b")]
    assert [p.stem for p in start_order(ready, needs)] == ["03_b", "02_a"]
    level = [Path(f"{stem}.ipynb") for stem in ("06_e", "02_a")]
    assert [p.stem for p in start_order(level, needs)] == ["02_a", "06_e"]


def test_a_labs_registry_reruns_chapters_when_it_changes_and_a_broken_one_stops_the_book(
    tmp_path, monkeypatch, capsys
):
    notebook = tmp_path / "01_x.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), notebook)
    lab = tmp_path / "lab.yaml"
    lab.write_text(
        "models:\n  lab-vlm: {backend: openai_compatible, model_id: m, base_url: http://h/v1}\n"
    )
    monkeypatch.setenv(USER_REGISTRY_ENV, str(lab))
    first = run_key(notebook, {})
    lab.write_text(lab.read_text().replace("model_id: m", "model_id: m2"))
    assert run_key(notebook, {}) != first
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [1]")
    assert cli.main(["book", "--registry", str(broken), "--only", "01", "--no-html"]) == 1
    assert "--registry" in capsys.readouterr().err


def test_a_labs_book_parameters_reach_the_chapters_that_declare_them(tmp_path):
    folder = tmp_path / "my_dcsm"
    folder.mkdir()
    argv = ["book", "--data-dir", str(folder), "--dataset", "dcsm", "--models", "lab-vlm"]
    argv += ["--base-url", "http://gpu:8000/v1", "--api-key-env", "LAB_KEY"]
    argv += ["-y", "seed: 3", "-p", "seed", "5"]
    params = book_parameters(build_parser().parse_args(argv))
    assert params == {
        "data_dir": str(folder.resolve()),
        "dataset": "dcsm",
        "models": "lab-vlm",
        "base_url": "http://gpu:8000/v1",
        "api_key_env": "LAB_KEY",
        "seed": 5,  # -p wins over -y
    }
    notebooks = {nb.stem[:2]: nb for nb in chapter_notebooks(project_root())}
    # every chapter that reads recordings takes the folder; the one that reads records does not
    for number, notebook in notebooks.items():
        passed = chapter_parameters(notebook, params)
        assert ("data_dir" in passed) == (number != "13"), notebook.name
    assert "models" in chapter_parameters(notebooks["07"], params)
    assert {"base_url", "api_key_env"} <= set(chapter_parameters(notebooks["09"], params))
    assert "models" not in chapter_parameters(notebooks["01"], params)
    check_parameters_declared(list(notebooks.values()), params)
    with pytest.raises(BookError, match="no selected chapter has the parameter"):
        check_parameters_declared([notebooks["13"]], {"data_dri": "x"})


def test_a_labs_book_needs_its_dataset_named_and_its_folder_present(tmp_path):
    parser = build_parser()
    with pytest.raises(ValueError, match="name it with --dataset"):
        book_parameters(parser.parse_args(["book", "--data-dir", str(tmp_path)]))
    args = parser.parse_args(["book", "--data-dir", str(tmp_path / "no"), "--dataset", "dcsm"])
    with pytest.raises(ValueError, match="no such folder"):
        book_parameters(args)
    assert lab_build_dir("dcsm") == project_root() / "_lab" / "dcsm"


def test_every_page_says_whether_its_data_are_real_and_which_dataset():
    real = data_statement({"data_dir": "/home/lab/downloads/my_dcsm", "dataset": "dcsm"})
    assert real == "**Data: real** — the `dcsm` dataset in `my_dcsm/`."  # no local path
    assert data_statement({"data_dir": "", "dataset": "dcsm"}).startswith("**Data: simulated**")


#: Words that make a comparative or qualitative verdict, checked in the chapters' prose: each
#: must stand in a glued phrase chosen by the data, or be listed in VERDICTS_ALLOWED with why
#: it cannot go false.
VERDICT_WORDS = re.compile(
    r"\b(exactly|well beyond|commonest|trails|beats|outperforms?|are flat|better than|"
    r"worse than|hardest|easiest)\b",
    re.IGNORECASE,
)
VERDICTS_ALLOWED = {
    # (chapter, text around the word): why it cannot go false
    ("01", "finds hardest {cite"): "the literature's finding, cited",
    ("03", "power and beats theta"): "the rule's definition",
    ("03", "around the neighbouring beats"): "heartbeats, not a comparison",
    ("04", "dataset exactly as the models"): "the same renderer, by construction",
    ("04", "sine of exactly 75"): "a synthetic test signal",
    ("04", "becomes hardest to"): "an exercise question",
    ("06", "make exactly one token"): "asserted by tests/test_sequence.py (token table)",
    ("10", "easiest and ISRUC hardest"): "the paper's finding, with its numbers glued",
    ("13", "have exactly the paper"): "a glued count precedes it",
}


def typed_verdicts(notebook: Path) -> list[tuple[str, str]]:
    """(chapter, text around the word) of each verdict word in the prose outside glued
    phrases and solutions."""
    found = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "markdown":
            continue
        text = re.sub(r"\{glue(:\w+)?\}`[^`]*`", "GLUE", cell.source)
        text = re.sub(r"```\{admonition\} Solution.*?```", "", text, flags=re.DOTALL)
        text = " ".join(text.split())
        for match in VERDICT_WORDS.finditer(text):
            found.append((notebook.name[:2], text[max(0, match.start() - 40) : match.end() + 30]))
    return found


def test_no_chapter_types_a_verdict_its_numbers_could_contradict():
    found = [v for nb in chapter_notebooks(project_root()) for v in typed_verdicts(nb)]
    unexplained = [
        (chapter, text)
        for chapter, text in found
        if not any(c == chapter and allowed in text for c, allowed in VERDICTS_ALLOWED)
    ]
    assert not unexplained, "glue these (a phrase chosen by the data) or allow them with a reason"
    # every allowance is still needed: a stale one would hide nothing, but says what is untrue
    for chapter, allowed in VERDICTS_ALLOWED:
        assert any(c == chapter and allowed in t for c, t in found), (chapter, allowed)


def test_every_chapter_opens_with_an_overview_and_a_prerequisites_table():
    """As teaching books do: an Overview heading under the title, and what to know first as a
    table of chapters, concepts and time."""
    for notebook in chapter_notebooks(project_root()):
        opening = nbformat.read(notebook, as_version=4).cells[0].source
        lines = opening.splitlines()
        assert lines[0].startswith("# ") and "## Overview" in lines[1:4], notebook.name
        table = opening.split("**Prerequisites**", 1)[-1]
        assert "| Chapters | Concepts | Time to learn |" in table, notebook.name
        rows = [line for line in table.splitlines() if line.startswith("| ")]
        row = rows[1]  # the one under the header (the |---| line does not start with "| ")
        assert all(cell.strip() for cell in row.strip("|").split("|")), (notebook.name, row)


def test_a_message_is_shown_with_its_file_name_and_without_this_machines_folders():
    message = "/work/shared/data/real/hyp.edf: truncated; see https://physionet.org/a/b, 50 µV/s"
    assert without_folders(message) == "hyp.edf: truncated; see https://physionet.org/a/b, 50 µV/s"
    assert without_folders("in '/tmp/x1/rec.json' and C:/d") == "in 'rec.json' and C:/d"
    assert without_folders("no path here: 2/3 of N2") == "no path here: 2/3 of N2"
    made = "/tmp/tmpk3x9/"
    said = "left out 1 malformed record(s) in /tmp/tmpk3x9: /tmp/tmpk3x9/a.json"
    assert without_folders(said, {made: "FOLDER"}) == (
        "left out 1 malformed record(s) in FOLDER: FOLDER/a.json"
    )
