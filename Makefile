# nextbest: `make demo` and `make test` do all set-up on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NB := $(BIN)/nextbest
PORT ?= 3000
DEMO_USERS ?= 5000
DEMO_SEED ?= 7

.PHONY: install test test-fast lint format demo demo-data serve bench clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found: install Python 3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstalls only when the dependency list or the pins change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not integration"

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

demo-data: install
	$(NB) data synth --users $(DEMO_USERS) --days 730 --seed $(DEMO_SEED)
	$(NB) features build
	$(NB) segments report

demo: demo-data

bench: install
	$(BIN)/python benchmarks/features.py

clean:
	rm -rf data reports .pytest_cache
