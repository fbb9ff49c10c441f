"""End to end, as a sleep lab runs the book: its own download, in each of the five formats the
loaders read, and a model of its own behind an OpenAI-compatible server (the project's test
server stands in for the lab's vLLM), through every chapter of the smoke book with the
commands the README gives. The downloads are simulated nights written as the provider lays
them out with every truth sidecar removed, so the chapters see only what a real download has."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from sleepvlm import cli
from sleepvlm.book import RUNS, chapter_notebooks, missing_glue
from sleepvlm.cache import project_root
from sleepvlm.data.cohort import DOWNLOAD_SOURCE_CENTER
from sleepvlm.models import register_local_model
from sleepvlm.models.local import chance
from sleepvlm.models.server import running_server

#: The lab's own model: not in any registry, described by the command line alone.
LAB_MODEL = "lab-vlm"
#: The options of ``sleepvlm simulate`` and ``sleepvlm book`` the end-to-end test runs.
END_TO_END_OPTIONS = (
    "--size", "--as-download", "--out", "--smoke", "--data-dir", "--dataset", "--models",
    "--base-url", "--build-dir", "--no-html",
)  # fmt: skip


@pytest.fixture(scope="module")
def lab_server():
    register_local_model(LAB_MODEL, chance, replace=True)
    with running_server() as server:
        yield server


def outputs(nb, kind: str):
    return [
        (i, o)
        for i, cell in enumerate(nb.cells)
        for o in cell.get("outputs", [])
        if o.output_type == kind or (kind == "stderr" and o.get("name") == "stderr")
    ]


@pytest.mark.parametrize("dataset", list(DOWNLOAD_SOURCE_CENTER))
def test_a_labs_download_and_model_run_through_every_chapter(
    dataset, tmp_path, lab_server, monkeypatch
):
    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))  # the chapters inherit it
    folder = tmp_path / "downloads" / dataset
    simulate = ["simulate", "--size", "small", "--as-download", dataset, "--out", str(folder)]
    assert cli.main(simulate) == 0
    build = tmp_path / "lab_book"
    book = ["book", "--smoke", "--data-dir", str(folder), "--dataset", dataset]
    book += ["--models", LAB_MODEL, "--base-url", lab_server.url]
    book += ["--build-dir", str(build), "--no-html"]
    assert {a for a in simulate + book if a.startswith("--")} == set(END_TO_END_OPTIONS)
    assert cli.main(book) == 0

    chapters = [nb.stem for nb in chapter_notebooks(project_root())]
    runs = {c: json.loads((build / "book" / RUNS / f"{c}.json").read_text()) for c in chapters}
    assert {c: r["status"] for c, r in runs.items()} == dict.fromkeys(chapters, "ran")
    for chapter in chapters:
        executed = build / "book" / f"{chapter}.ipynb"
        nb = nbformat.read(executed, as_version=4)
        assert nb.cells[1].source.startswith(f"**Data: real** — the `{dataset}` dataset")
        assert not outputs(nb, "error") and not outputs(nb, "stderr"), chapter
        assert missing_glue(executed) == [], chapter

    records = [json.loads(p.read_text()) for p in sorted((build / "results").glob("*.json"))]
    assert records and {(r["dataset"], r["data"]) for r in records} == {(dataset, "real")}
    lab = [r for r in records if r["model"] == LAB_MODEL]
    assert {r["modality"] for r in lab} == {"image", "text", "sequence"}
    assert {r["registry"] for r in lab} == {"parameters"}


def readme_lab_commands() -> list[list[str]]:
    """The ``sleepvlm`` commands of the README's "Your own data" section, as argument lists."""
    text = (project_root() / "README.md").read_text()
    section = text.split("## Your own data")[1].split("\n## ")[0]
    prefix = ".venv/bin/sleepvlm "
    return [
        shlex.split(line[len(prefix) :]) for line in section.splitlines() if line.startswith(prefix)
    ]


def test_the_readmes_lab_commands_are_the_ones_run_end_to_end():
    commands = readme_lab_commands()
    assert len(commands) == 4
    parser = cli.build_parser()
    for argv in commands:
        args = parser.parse_args(argv)  # every command is valid as written
        assert args.command in ("book", "simulate")
    # the end-to-end test runs each of these options, with these values for the try-it pair
    used = {a for argv in commands for a in argv if a.startswith("--")}
    assert used <= set(END_TO_END_OPTIONS)
    simulate, smoke = commands[2:]
    assert simulate[:4] == ["simulate", "--size", "small", "--as-download"]
    assert smoke[:2] == ["book", "--smoke"] and smoke[smoke.index("--dataset") + 1] == simulate[4]


def readme_own_model() -> tuple[str, list[str]]:
    """The registry file and the two commands of the README's "Your own model" section."""
    text = (project_root() / "README.md").read_text()
    section = text.split("## Your own model")[1].split("\n## ")[0]
    registry = section.split("<<'YAML'\n")[1].split("\nYAML\n")[0]
    commands = [line for line in section.splitlines() if ".venv/bin/" in line]
    return registry, commands


def test_the_readmes_own_model_commands_run_a_labs_model_from_its_file(
    tmp_path, lab_server, monkeypatch
):
    registry_text, (papermill_line, book_line) = readme_own_model()
    registry = yaml.safe_load(registry_text)
    ((name, entry),) = registry["models"].items()
    # the lab's server is the test server, serving the lab's model under its own id
    register_local_model(entry["model_id"], chance, replace=True)
    entry["base_url"] = lab_server.url
    lab_file = tmp_path / "lab_models.yaml"
    lab_file.write_text(yaml.safe_dump(registry))
    key = "lab-" + "k3y-never-written"  # assembled: no key-like literal is tracked
    monkeypatch.setenv(entry["api_key_env"], key)
    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "downloads" / "dcsm"
    assert (
        cli.main(["simulate", "--size", "small", "--as-download", "dcsm", "--out", str(folder)])
        == 0
    )
    on_the_lab_data = [
        "-p",
        "smoke",
        "True",
        "-p",
        "data_dir",
        str(folder),
        "-p",
        "dataset",
        "dcsm",
    ]

    env_part, command = papermill_line.split(" ", 1)
    variable, value = env_part.split("=")
    argv = shlex.split(
        command.replace(".venv/bin/papermill", str(Path(sys.executable).parent / "papermill"))
    )
    argv = [str(tmp_path / a) if a == "out.ipynb" else a for a in argv]
    env = {**os.environ, variable: str(lab_file) if value == "lab_models.yaml" else value}
    here = ["--cwd", str(tmp_path)]  # the chapter's results land in the test's folder
    subprocess.run(
        [*argv, *on_the_lab_data, *here],
        cwd=project_root(),
        env=env,
        check=True,
        capture_output=True,
    )
    executed = (tmp_path / "out.ipynb").read_text()
    assert key not in executed

    book = shlex.split(book_line.replace(".venv/bin/sleepvlm ", ""))
    book = [str(lab_file) if a == "lab_models.yaml" else a for a in book]
    build = tmp_path / "lab_book"
    lab_options = ["--smoke", "--data-dir", str(folder), "--dataset", "dcsm", "--only", "08"]
    assert cli.main([*book, *lab_options, "--build-dir", str(build), "--no-html"]) == 0
    records = [json.loads(p.read_text()) for p in (build / "results").glob("*.json")]
    lab = [r for r in records if r["model"] == name]
    assert lab and {r["registry"] for r in lab} == {str(lab_file)}
    assert {(r["dataset"], r["data"]) for r in lab} == {("dcsm", "real")}
    assert all(
        key not in p.read_text()
        for p in build.rglob("*.*")
        if p.suffix in (".json", ".ipynb", ".md")
    )
