# The two commands of the README: `make run` and `make test`. Everything the project
# needs is installed from here (virtual environment, Python packages, Debian's chromium).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.PHONY: run serve test lint bench chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(RUNTIME) $@

## run: the exchange with its demo market on SQLite at http://127.0.0.1:8088
run: $(RUNTIME)
	$(BIN)/exchange demo

## serve: the exchange without demo bots
serve: $(RUNTIME)
	$(BIN)/exchange serve

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium); }

## test: every test (unit, integration on SQLite and PostgreSQL, end to end, browser)
test: $(DEV) chromium
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n 2
	@echo "the integration suite again, through an HTTP worker (exchange serve --workers N)"
	EXCHANGE_TEST_THROUGH_WORKER=1 $(BIN)/pytest -q -p no:cacheprovider tests/integration

lint: $(DEV)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(RUNTIME)
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "installing Debian's wrk (the benchmark's load generator)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) \
	  || echo "wrk unavailable: the benchmark falls back to its Python load generator"; }
	$(BIN)/exchange bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
