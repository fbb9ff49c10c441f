# Two commands on a fresh machine with Python 3.11: `make book` and `make test`.
# Both install the exact versions in requirements.lock (the ones the book was built and tested
# with); `make lock` moves the lock forward on purpose, `make test-latest` tries what is newest.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
LATEST := .venv-latest
# The lock's own command line, so that a refreshed lock is made the same way each time.
COMPILE := pip-compile --quiet --extra dev --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml

.PHONY: install test lint book smoke clean lock test-latest

# The library itself is installed without dependencies and without build isolation, so that
# nothing (setuptools included) comes from outside the lock.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check lib tests notebooks
	$(BIN)/ruff format --check lib tests notebooks
	$(BIN)/sleepvlm check-notebooks notebooks
	$(BIN)/sleepvlm check-lock

test: lint
	$(BIN)/pytest

book: install
	$(BIN)/sleepvlm book --jobs 2

smoke: install
	$(BIN)/sleepvlm book --smoke --build-dir _smoke

# Newest versions pyproject.toml allows; then run `make test` and `make book` and commit the
# lock with the numbers that moved (README, "Exact versions: the lock"). After an edit of
# pyproject.toml, `make lock UPGRADE=` adds what changed and keeps the other pins.
UPGRADE ?= --upgrade
lock: install
	$(BIN)/$(COMPILE) $(UPGRADE)

# The tests against the newest versions pyproject.toml allows, in a venv of their own (not in
# CI): an upstream release that breaks us shows here before the lock is refreshed.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet --upgrade -e '.[dev]'
	$(LATEST)/bin/pip list --format freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/pytest

clean:
	rm -rf _build _smoke book/*.ipynb book/_runs book/build_log.md
