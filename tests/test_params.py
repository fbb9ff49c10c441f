"""Chapter parameters as readers write them: every form the helpers accept and refuse, the
examples in the README, the book's pages and the chapters' exercises (read as papermill reads
them), and every chapter passing its list and dict parameters through the helpers."""

import ast
import re
import shlex

import nbformat
import pytest
import yaml
from papermill import cli as papermill_cli
from papermill.iorw import NoDatesSafeLoader

from sleepvlm.book import chapter_notebooks
from sleepvlm.cache import project_root
from sleepvlm.cli import _parameters, build_parser
from sleepvlm.params import (
    ParameterError,
    as_dict,
    as_list,
    datasets_to_run,
    dict_forms,
    list_forms,
    require_one_dataset,
)

# --- the list and dict forms ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["dcsm", "shhs"], ["dcsm", "shhs"]),
        (("dcsm",), ["dcsm"]),
        ([], []),
        ('["dcsm"]', ["dcsm"]),  # JSON, as papermill's -p passes it: text
        ('["gpt-4o", "chance"]', ["gpt-4o", "chance"]),
        ("[dcsm, shhs]", ["dcsm", "shhs"]),  # YAML
        ("[]", []),
        ("dcsm,shhs", ["dcsm", "shhs"]),
        (" dcsm , shhs ", ["dcsm", "shhs"]),
        ("dcsm", ["dcsm"]),  # one name, not its letters
        ("Qwen/Qwen2.5-VL-3B-Instruct", ["Qwen/Qwen2.5-VL-3B-Instruct"]),
        ("", []),
    ],
)
def test_as_list_reads_every_written_form(value, expected):
    assert as_list(value, "datasets") == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"dcsm": "/data"}, r"must be a list of names, not \{'dcsm': '/data'\} \(dict\)"),
        ("{dcsm: /data}", r"must be a list of names, not \{'dcsm': '/data'\} \(dict\)"),
        (3, r"must be a list of names, not 3 \(int\)"),
        (True, r"must be a list of names, not True \(bool\)"),
        (None, r"must be a list of names, not None \(NoneType\)"),
        ([["dcsm"]], r"\['dcsm'\] \(a nested list\) is not a name"),
        ("[[dcsm], shhs]", r"\['dcsm'\] \(a nested list\) is not a name"),
        ([1], r"1 \(int\) is not a name"),
        ("dcsm,,shhs", "an empty name"),
        ("dcsm,", "an empty name"),
        (["dcsm", " "], "an empty name"),
        ("[dcsm", "is not valid YAML"),
        ("dcsm]", r"'dcsm\]' is not a name"),
    ],
)
def test_as_list_refuses_other_values_naming_the_parameter_and_the_forms_that_work(value, problem):
    with pytest.raises(ParameterError, match=problem) as caught:
        as_list(value, "eval_datasets")
    message = str(caught.value)
    assert message.startswith("eval_datasets") and list_forms("eval_datasets") in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"dcsm": "/data/dcsm"}, {"dcsm": "/data/dcsm"}),
        ({}, {}),
        ("{dcsm: /data/dcsm, shhs: /data/shhs}", {"dcsm": "/data/dcsm", "shhs": "/data/shhs"}),
        ('{"dcsm": "/data/dcsm"}', {"dcsm": "/data/dcsm"}),
        ("{}", {}),
        ("", {}),
    ],
)
def test_as_dict_reads_a_mapping_or_its_text(value, expected):
    assert as_dict(value, "data_dirs") == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["dcsm"], r"must be a mapping, not \['dcsm'\] \(list\)"),
        ("[dcsm]", r"must be a mapping, not \['dcsm'\] \(list\)"),
        ("dcsm", r"must be a mapping, not 'dcsm' \(str\)"),
        (5, r"must be a mapping, not 5 \(int\)"),
        ("{dcsm: }", "the value of 'dcsm' must be text"),
        ({"dcsm": 5}, "the value of 'dcsm' must be text"),
        ({"": "/data"}, "an empty name"),
        ("{dcsm: /data", "is not valid YAML"),
    ],
)
def test_as_dict_refuses_other_values_naming_the_parameter_and_the_forms_that_work(value, problem):
    with pytest.raises(ParameterError, match=problem) as caught:
        as_dict(value, "data_dirs")
    message = str(caught.value)
    assert message.startswith("data_dirs") and dict_forms("data_dirs") in message


# --- read as papermill reads them -----------------------------------------------------------


def papermill_passes(options: list[str]) -> dict:
    """What a notebook receives from papermill's options: parsed by papermill's own command
    line and merged as it merges them (``-y`` first, then ``-p`` with its type guessing, then
    ``-r`` as raw text)."""
    ctx = papermill_cli.papermill.make_context("papermill", ["in.ipynb", "out.ipynb", *options])
    passed = {}
    for text in ctx.params["parameters_yaml"]:
        passed.update(yaml.load(text, Loader=NoDatesSafeLoader) or {})
    passed.update({name: papermill_cli._resolve_type(v) for name, v in ctx.params["parameters"]})
    passed.update(dict(ctx.params["parameters_raw"]))
    return passed


def options_of(command: str) -> list[str]:
    """The options of a command line or of a bare ``-p NAME VALUE`` fragment."""
    words = shlex.split(command, comments=True)
    first = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
    return words[first:]


def suggested_commands(text: str) -> list[str]:
    """The ``-p NAME VALUE`` fragments an error message suggests."""
    return re.findall(r"-p \w+ [^\s()]+", text) + re.findall(r'-y "[^"]+"', text)


def test_as_dict_refuses_a_key_it_was_not_given():
    assert as_dict("{dcsm: /d}", "data_dirs", keys=["dcsm", "shhs"]) == {"dcsm": "/d"}
    with pytest.raises(ParameterError, match=r"data_dirs: 'dscm' not among dcsm, shhs"):
        as_dict("{dscm: /d}", "data_dirs", keys=["dcsm", "shhs"])


def test_every_form_an_error_suggests_reads_as_the_list_it_shows():
    with pytest.raises(ParameterError) as caught:
        as_list(7, "models")
    suggested = suggested_commands(str(caught.value))
    assert len(suggested) == 3
    for command in suggested:
        passed = papermill_passes(options_of(command))["models"]
        assert as_list(passed, "models") in (["NAME"], ["NAME1", "NAME2"]), command


def test_every_form_a_dict_error_suggests_reads_as_the_mapping_it_shows():
    with pytest.raises(ParameterError) as caught:
        as_dict(7, "data_dirs")
    suggested = re.findall(r"-y \"[^\"]+\"|-p \w+ '[^']+'", str(caught.value))
    assert len(suggested) == 2
    for command in suggested:
        passed = papermill_passes(options_of(command))["data_dirs"]
        assert as_dict(passed, "data_dirs") == {"NAME": "VALUE"}, command


def test_a_data_dir_needs_exactly_one_dataset_and_the_suggested_fix_works():
    require_one_dataset(["dcsm"], "/data/dcsm")
    require_one_dataset(["dcsm", "shhs"], "")  # simulated: any number
    for datasets in (["dcsm", "shhs", "isruc"], []):
        with pytest.raises(ParameterError, match="data_dir '/data/dcsm' is the folder of one") as e:
            require_one_dataset(datasets, "/data/dcsm")
    (fix,) = suggested_commands(str(e.value))
    passed = papermill_passes([*options_of(fix), "-p", "data_dir", "/data/dcsm"])
    require_one_dataset(as_list(passed["datasets"], "datasets"), passed["data_dir"])


def test_one_dataset_given_is_run_alone_and_a_data_dir_needs_it():
    assert datasets_to_run(["dcsm", "shhs"], "", "") == ["dcsm", "shhs"]
    assert datasets_to_run("dcsm,shhs", "", "") == ["dcsm", "shhs"]
    assert datasets_to_run(["dcsm", "shhs"], "isruc", "/data/isruc") == ["isruc"]
    assert datasets_to_run([], " mass ", "/data/mass") == ["mass"]
    with pytest.raises(ParameterError, match="folder of one dataset"):
        datasets_to_run(["dcsm", "shhs"], "", "/data/dcsm")


# --- every example in the docs ----------------------------------------------------------------

#: A parameter with its value on a command line (a bare `-p base_url` in prose is no example).
EXAMPLE = re.compile(r"(^|\s)(-[pr] \S+ \S|-y \S)")


def chapter_parameter_kinds() -> dict[str, str]:
    """``list`` or ``dict`` for each parameter a chapter annotates so (the same in every one)."""
    kinds = {}
    for notebook in chapter_notebooks(project_root()):
        for name, kind in collection_parameters(notebook).items():
            assert kinds.setdefault(name, kind) == kind, f"{name} is a {kind} in {notebook.name}"
    return kinds


def collection_parameters(notebook) -> dict[str, str]:
    """The parameters of ``notebook`` annotated ``: list`` or ``: dict``, with that kind."""
    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {
        node.target.id: node.annotation.id
        for node in ast.parse(cell.source).body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.annotation, ast.Name)
        and node.annotation.id in ("list", "dict")
    }


def documented_commands() -> list[tuple[str, str]]:
    """(where, code) of every code span and code-block line with parameters in the README, the
    book's pages and the chapters' markdown."""
    root = project_root()
    texts = {"README.md": (root / "README.md").read_text()}
    texts.update({f"book/{p.name}": p.read_text() for p in (root / "book").glob("*.md")})
    for notebook in chapter_notebooks(root):
        cells = nbformat.read(notebook, as_version=4).cells
        texts[notebook.name] = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    found = []
    for where, text in texts.items():
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
        lines = [line for block in blocks for line in block.splitlines()] + spans
        found += [(where, code) for code in lines if EXAMPLE.search(code)]
    return found


def received(code: str) -> dict:
    """What the chapters receive from a documented command: ``sleepvlm book -p`` reads values
    as YAML, papermill as papermill does."""
    if "sleepvlm book" in code:
        args = build_parser().parse_args(["book", *options_of(code)])
        return _parameters(args.p)
    return papermill_passes(options_of(code))


def written_values(code: str) -> dict[str, str]:
    """Each parameter's value as the command line writes it (one parameter per ``-y``)."""
    words = options_of(code)
    written = {}
    for i, word in enumerate(words):
        if word in ("-p", "-r"):
            written[words[i + 1]] = words[i + 2]
        elif word == "-y":
            name, _, value = words[i + 1].partition(":")
            written[name.strip()] = value.strip()
    return written


def meant(kind: str, written: str):
    """What a reader means by ``written``: the names in it, or its ``key: value`` pairs."""
    if kind == "list":
        return re.findall(r"[^\s\[\],\"']+", written)
    return dict(re.findall(r"([^\s{}:,\"']+)\s*:\s*([^\s{},\"']+)", written))


def test_every_documented_list_or_dict_example_reads_as_the_reader_means_it():
    kinds = chapter_parameter_kinds()
    helpers = {"list": as_list, "dict": as_dict}
    checked = []
    for where, code in documented_commands():
        passed = received(code)
        for name, written in written_values(code).items():
            if name in kinds:
                value = helpers[kinds[name]](passed[name], name)
                assert value == meant(kinds[name], written), f"{where}: {code}"
                checked.append((where, f"{name} {written}"))
    # the README shows each form: one name, names with commas, a YAML list, a YAML mapping
    readme = [example for where, example in checked if where == "README.md"]
    for form in ("datasets dcsm", "datasets dcsm,shhs", "datasets [dcsm, shhs]", "data_dirs {"):
        assert any(example.startswith(form) for example in readme), form


# --- every chapter ----------------------------------------------------------------------------


def helper_calls(notebook) -> set[tuple[str, str, str]]:
    """(helper, variable, parameter name given) of each as_list/as_dict call in the chapter."""
    cells = nbformat.read(notebook, as_version=4).cells
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    calls = set()
    for node in ast.walk(ast.parse(code)):
        func = getattr(node, "func", None)
        helper = getattr(func, "id", getattr(func, "attr", None))
        if helper in ("as_list", "as_dict") and len(node.args) == 2:
            variable, name = node.args
            if isinstance(variable, ast.Name) and isinstance(name, ast.Constant):
                calls.add((helper, variable.id, name.value))
        # datasets_to_run(datasets, dataset, data_dir) reads ``datasets`` with as_list
        if helper == "datasets_to_run" and getattr(node.args[0], "id", None) == "datasets":
            calls.add(("as_list", "datasets", "datasets"))
    return calls


def test_every_chapter_passes_each_list_and_dict_parameter_through_the_helper():
    helper = {"list": "as_list", "dict": "as_dict"}
    seen = 0
    for notebook in chapter_notebooks(project_root()):
        calls = helper_calls(notebook)
        for name, kind in collection_parameters(notebook).items():
            call = (helper[kind], name, name)
            assert call in calls, f"{notebook.name}: write {call[1]} = {call[0]}({name}, {name!r})"
            seen += 1
    assert seen >= 15  # 01, 05, 07-13 hold lists (and 10 a dict)


def test_no_chapter_takes_a_list_as_comma_separated_text():
    for notebook in chapter_notebooks(project_root()):
        nb = nbformat.read(notebook, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        for node in ast.parse(cell.source).body:
            default = getattr(node, "value", None)
            if isinstance(default, ast.Constant) and isinstance(default.value, str):
                assert "," not in default.value, f"{notebook.name}: make it a list parameter"
