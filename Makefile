# wmdetect: `make run` (the main job) and `make test` are all a user needs on a fresh clone.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export GIT_PYTHON_REFRESH := quiet

.PHONY: setup run test lint ui bench tune soak clean

# --no-compile: no .pyc for the whole 2.5 GB environment up front (460 MB of it; Python compiles what it
# imports), --no-cache-dir: no second copy of downloaded wheels (a CI run once ended with a full disk here).
$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install -q --no-cache-dir --no-compile -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)
	@test -d .git || (git init -q && git add -A && git -c user.name=wmdetect -c user.email=wm@localhost commit -qm "initial import")
	@test -d .dvc || $(BIN)/dvc init -q
	@$(BIN)/dvc config core.analytics false
	@mkdir -p $(PREFECT_HOME)

run: setup
	$(BIN)/wm run

# The import layers first (pyproject.toml [tool.importlinter]: seconds), then the tests.
test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# Every naive-vs-optimized comparison, scaling and contention (bench/suite.py) -> bench/results/<host>-<date>.*
# and the MLflow experiment `benchmarks`. Run it on a quiet machine; `make bench QUICK=1` is a 3-minute smoke check.
bench: setup
	$(BIN)/wm bench $(if $(QUICK),--quick,) $(BENCH_ARGS)

# Measure this machine and write params-tuned.yaml (applied on request: -S tune.apply=true or --params-extra).
tune: setup
	$(BIN)/wm tune $(TUNE_ARGS)

# Long reliability runs (5,000-image screening, a real host OOM): tests marked slow, skipped by `make test`.
soak: setup
	$(BIN)/python -m pytest -q -m slow tests/reliability

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The MLflow UI of $(MLFLOW_TRACKING_URI); prints the address of the wmdetect experiment's runs table first.
ui: setup
	$(BIN)/wm ui --host 127.0.0.1 --port 5000

clean:
	rm -rf results .cache .prefect mlflow.db mlartifacts mlruns
