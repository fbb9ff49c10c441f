"""environment.yml and pyproject.toml must name the same dependencies with the same bounds."""

import tomllib

import yaml
from packaging.requirements import Requirement

from sleepvlm.cache import project_root


def _normalise(spec: str) -> tuple[str, str, str]:
    req = Requirement(spec)
    extras = ",".join(sorted(req.extras))
    return req.name.lower().replace("_", "-"), extras, str(req.specifier)


def pyproject_requirements() -> set[tuple[str, str, str]]:
    project = tomllib.loads((project_root() / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {_normalise(s) for s in specs}


def environment_requirements() -> set[tuple[str, str, str]]:
    env = yaml.safe_load((project_root() / "environment.yml").read_text())
    specs = []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            specs += [s for s in entry["pip"] if not s.startswith("-")]
        elif entry != "pip" and not entry.startswith("python="):
            specs.append(entry)
    return {_normalise(s) for s in specs}


def test_environment_yml_matches_pyproject():
    assert environment_requirements() == pyproject_requirements()


def test_environment_pins_the_python_of_pyproject():
    env = yaml.safe_load((project_root() / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
