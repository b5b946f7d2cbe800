# nextbest: `make demo` and `make test` do all set-up on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NB := $(BIN)/nextbest
PORT ?= 3000
DEMO_USERS ?= 5000
DEMO_SEED ?= 7

.PHONY: install system-deps test test-fast lint format demo demo-data demo-models serve bench clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found: install Python 3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstalls only when the dependency list or the pins change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

system-deps:
	@bash .ci/system-deps

# Two workers (this machine has two cores; most integration tests wait on servers). Tests
# sharing a session fixture (the served world, the trained models) run on one worker.
test: install system-deps
	$(BIN)/pytest -q -n 2 --dist loadgroup

test-fast: install
	$(BIN)/pytest -q -m "not integration"

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# The demo marketplace spans 2024-01-01 .. 2025-12-31; features at two dates feed the
# tier migration report.
demo-data: install
	$(NB) data synth --users $(DEMO_USERS) --days 730 --seed $(DEMO_SEED)
	$(NB) features build --as-of 2025-12-01
	$(NB) features build
	$(NB) segments report --compare-to 2025-12-01

demo-models: demo-data
	$(NB) train churn
	$(NB) train propensity
	$(NB) models list

# The scheduler (delayed triggers, scheduled campaigns, event export) and the dispatcher
# (due outbox messages to their channels) run beside the service and stop with it; their
# logs are data/scheduler.log and data/dispatch.log.
demo: demo-models
	@echo "API key of the demo (scopes platform, operator, admin; shown once, only its hash is kept):"
	@$(NB) keys create --id demo --scope platform,operator,admin --replace 2>/dev/null
	@echo "serving on http://127.0.0.1:$(PORT) (OpenAPI: /docs.json), scheduler and dispatcher beside it; Ctrl-C stops"
	@$(NB) scheduler > data/scheduler.log 2>&1 & sched=$$!; \
	  $(NB) dispatch > data/dispatch.log 2>&1 & disp=$$!; \
	  trap 'kill $$sched $$disp 2>/dev/null' EXIT INT TERM; \
	  $(NB) serve --host 127.0.0.1 --port $(PORT)

serve: install
	$(NB) serve --host 127.0.0.1 --port $(PORT)

# Full-scale benchmarks: minutes each; results in benchmarks/results/*.json.
bench: install
	$(BIN)/python benchmarks/synth.py --out /tmp/bench_1m
	$(BIN)/python benchmarks/feature_build.py
	$(BIN)/python benchmarks/store.py
	$(BIN)/python benchmarks/dispatch.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/simulate.py
	$(BIN)/python benchmarks/ope_coverage.py

clean:
	rm -rf data reports .pytest_cache
