"""The dependency lock: it agrees with pyproject.toml, environment.yml and make install use it,
and its disagreements are reported with what to do."""

import re
from importlib import metadata

import pytest
import yaml

from sleepvlm.cache import project_root
from sleepvlm.data.records import file_sha256
from sleepvlm.environment import (
    LOCK_FILE,
    LockError,
    installed_drift,
    lock_disagreements,
    lock_hash,
    locked_versions,
)

PYPROJECT = """
[project]
name = "demo"
dependencies = ["numpy>=1.26,<3", "openai>=1.40,<4"]
[project.optional-dependencies]
dev = ["pytest>=8"]
"""


def write_project(folder, lock_lines):
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (folder / LOCK_FILE).write_text("# made by pip-compile\n" + "\n".join(lock_lines) + "\n")
    return folder


def test_the_lock_agrees_with_pyproject():
    # (whether this venv runs the lock is `sleepvlm check-lock`'s, in make lint: under
    # `make test-latest` it deliberately does not)
    assert lock_disagreements() == []
    assert lock_hash() == file_sha256(project_root() / LOCK_FILE)
    assert len(lock_hash()) == 64


def test_a_lock_outside_the_declared_range_or_missing_a_package_is_reported(tmp_path):
    root = write_project(tmp_path, ["numpy==2.4.6", "    # via demo", "openai==4.0.1"])
    problems = lock_disagreements(tmp_path)
    assert "requirements.lock: openai==4.0.1 is outside pyproject.toml's '<4,>=1.40'" in problems
    assert "requirements.lock: pytest is declared but not locked" in problems
    assert not any(p.startswith("requirements.lock: numpy") for p in problems)
    assert problems[-1] == "run `make lock` to make the lock again from pyproject.toml"
    write_project(root, ["numpy==2.4.6", "openai==3.63.0", "pytest==9.2.0"])
    assert lock_disagreements(root) == []


def test_a_local_build_label_satisfies_the_plain_pin():
    # The lock holds torch's CPU build (2.13.0+cpu); pyproject.toml pins torch==2.13.0.
    assert locked_versions(project_root() / LOCK_FILE)["torch"].startswith("2.13.0")


def test_unpinned_lines_and_a_missing_lock_are_clear_errors(tmp_path):
    with pytest.raises(LockError, match=r"no lock file; make it with `make lock`"):
        locked_versions(tmp_path / LOCK_FILE)
    write_project(tmp_path, ["numpy>=2", "openai==3.63.0"])
    with pytest.raises(LockError, match=r"requirements.lock:2: 'numpy>=2' is not pinned"):
        locked_versions(tmp_path / LOCK_FILE)


def test_installed_versions_that_differ_from_the_lock_are_named(tmp_path):
    pytest_version = metadata.version("pytest")
    write_project(
        tmp_path,
        [f"pytest=={pytest_version}", "numpy==0.0.1", "no-such-package-here==1.0"],
    )
    drift = installed_drift(tmp_path)
    assert f"numpy: locked at 0.0.1, installed {metadata.version('numpy')}" in drift
    assert "no-such-package-here: locked at 1.0, not installed" in drift
    assert not any(line.startswith("pytest") for line in drift)
    assert drift[-1] == "reinstall from the lock: rm -rf .venv && make install"


def test_environment_yml_installs_the_lock_with_the_python_of_pyproject():
    env = yaml.safe_load((project_root() / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    [pip_section] = [entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict)]
    assert pip_section == [f"-r {LOCK_FILE}", "--no-deps -e ."]
    conda_packages = [e for e in env["dependencies"] if isinstance(e, str)]
    assert conda_packages == ["python=3.11", "pip"]  # no version that the lock does not decide


def test_make_installs_from_the_lock_and_has_the_refresh_targets():
    makefile = (project_root() / "Makefile").read_text()
    assert re.search(rf"^LOCK := {re.escape(LOCK_FILE)}$", makefile, re.M)
    install = makefile.split("$(STAMP): pyproject.toml $(LOCK)\n", 1)[1].split("\n\n", 1)[0]
    assert "pip install --quiet -r $(LOCK)" in install
    assert "--no-deps" in install  # the library adds nothing beside the lock
    for target in ("lock:", "test-latest:"):
        assert re.search(rf"^{target}", makefile, re.M)
    assert "$(BIN)/sleepvlm check-lock" in makefile
