# linreg-sweep: `make help` lists the targets. Every target installs .venv first if missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray
# The project store, unless the environment names another (MLflow's own variable).
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
PIP_QUIET := --quiet --disable-pip-version-check

.DEFAULT_GOAL := help

SWEEP ?= faq
LAUNCHER ?= stacked
PORT ?= 5000
SWEEP_RUN ?= latest
NUM_CPUS ?=

.PHONY: help install train sweep report runs rerun ui server server-stop server-import bench test test-deps lint clean cluster cluster-stop

help: ## list the targets
	@grep -hE '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml pipeline/plugins/pyproject.toml pipeline/plugins/hydra_plugins/linreg_sweep/__init__.py
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: the CPU build on this machine; a loose requirement could pull CUDA.
	$(PY) -m pip install $(PIP_QUIET) torch==2.13.0
	$(PY) -m pip install $(PIP_QUIET) -e '.[dev,server]'
	# Hydra finds plugins only in the hydra_plugins namespace on disk: a normal install.
	$(PY) -m pip install $(PIP_QUIET) --no-deps ./pipeline/plugins
	$(PY) -c 'import torch, hydra, mlflow, pandas, matplotlib, pytest, psycopg2, playwright'
	touch $(STAMP)

install: $(STAMP) ## create .venv: torch==2.13.0 (CPU), then this package with dev tools

# The optional Ray extra (.[ray]), for the Ray targets and the tests; torch is already pinned.
$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install $(PIP_QUIET) -e '.[dev,ray]'
	$(PY) -c 'import ray, hydra_plugins.hydra_ray_launcher'
	touch $(RAY_STAMP)

cluster: $(RAY_STAMP) ## start a local Ray head on 127.0.0.1 [NUM_CPUS=n]; prints export RAY_ADDRESS=...
	$(PY) -m pipeline.cluster start $(if $(NUM_CPUS),--num-cpus $(NUM_CPUS))

cluster-stop: ## stop exactly the Ray head that make cluster started
	$(PY) -m pipeline.cluster stop

train: $(STAMP) ## one job with the default config (d2l 3.3); ARGS="model=scratch ..." for overrides
	$(PY) -m pipeline $(ARGS)

sweep: $(STAMP) $(if $(filter ray%,$(LAUNCHER)),$(RAY_STAMP)) ## the FAQ sweep: SWEEP=faq|lr|batch_size|reduction|loss|init|data_size|partial_batch|optimizers|fitting|smoke LAUNCHER=stacked|basic|joblib|ray|ray_stacked ARGS="..."
	$(PY) -m pipeline -m sweep=$(SWEEP) hydra/launcher=$(LAUNCHER) $(ARGS)

report: $(STAMP) ## the FAQ report of a sweep (SWEEP_RUN=latest|<parent run id>), logged to that run; prints its path and digest
	$(PY) -m pipeline.report --sweep $(SWEEP_RUN)

runs: $(STAMP) ## a sweep's whole run table (grid, run, outcome, cached, mse, w_error): SWEEP_RUN=latest|<parent run id>
	$(PY) -m pipeline.runs --sweep $(SWEEP_RUN)

rerun: $(STAMP) ## rerun a logged run and compare: RUN=<run id>, or SWEEP_RUN=<parent run id>
	$(PY) -m pipeline.rerun $(if $(RUN),$(RUN),--sweep $(SWEEP_RUN))

ui: $(STAMP) ## MLflow UI on 127.0.0.1:$(PORT) over $$MLFLOW_TRACKING_URI (default mlruns/)
	$(PY) -m pipeline.ui --port $(PORT)

server: $(STAMP) ## team MLflow server on 127.0.0.1:$(PORT), PostgreSQL store in mlruns/pg/ (installs it if missing)
	$(PY) -m pipeline.server start --port $(PORT) --root mlruns

server-stop: $(STAMP) ## stop the server of `make server` and its PostgreSQL
	$(PY) -m pipeline.server stop --root mlruns

server-import: $(STAMP) ## copy the SQLite store mlruns/mlflow.db into the server at $$MLFLOW_TRACKING_URI
	$(PY) -m pipeline.server_import --from sqlite:///$(CURDIR)/mlruns/mlflow.db --to $(MLFLOW_TRACKING_URI)

bench: $(RAY_STAMP) ## one table: seeds' loops, MLflow floor per run, G vs a plain Hydra+MLflow app, faq fresh and cached; then Ray, streaming memory
	$(PY) -m pipeline.bench $(ARGS)
	$(PY) -m pipeline.bench_ray
	$(PY) -m pipeline.bench_stream

# The integration tests' Debian packages: the team server's store, the browser and its driver.
TEST_PACKAGES := postgresql chromium chromium-driver

test-deps: ## the Debian packages the tests need: installed when missing (as root), else one line saying how
	@python3 -m pipeline.sysdeps $(TEST_PACKAGES)

test: test-deps $(RAY_STAMP) ## run the test suite (never touches mlruns/); installs what it needs
	$(PY) -m pytest $(ARGS)

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check pipeline tests
	$(VENV)/bin/ruff format --check pipeline tests
	$(VENV)/bin/mypy

clean: ## remove .venv and caches (keeps mlruns/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
