# Two commands on a fresh machine with Python 3.11: `make book` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint book smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check lib tests
	$(BIN)/ruff format --check lib tests
	$(BIN)/sleepvlm check-notebooks notebooks

test: lint
	$(BIN)/pytest

book: install
	$(BIN)/sleepvlm book --jobs 2

smoke: install
	$(BIN)/sleepvlm book --smoke --build-dir _smoke

clean:
	rm -rf _build _smoke book/*.ipynb book/_runs book/build_log.md
