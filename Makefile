# The single entry point: the README, CI and contributors all go through these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install run test lint format check-types bench clean

# Optional pieces add their own targets and test prerequisites (TEST_PREREQS) here.
-include deploy/deploy.mk $(wildcard mk/*.mk)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# llama-cpp-python compiles from source here (about 8 minutes on 2 cores, once).
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/twice serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint $(TEST_PREREQS)
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/passthrough.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
