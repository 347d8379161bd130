# linreg-sweep: `make help` lists the targets. Every target installs .venv first if missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The project store, unless the environment names another (MLflow's own variable).
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
PIP_QUIET := --quiet --disable-pip-version-check

.DEFAULT_GOAL := help

.PHONY: help install train test lint clean

help: ## list the targets
	@grep -hE '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: the CPU build on this machine; a loose requirement could pull CUDA.
	$(PY) -m pip install $(PIP_QUIET) torch==2.13.0
	$(PY) -m pip install $(PIP_QUIET) -e '.[dev]'
	$(PY) -c 'import torch, hydra, mlflow, pandas, matplotlib, pytest'
	touch $(STAMP)

install: $(STAMP) ## create .venv: torch==2.13.0 (CPU), then this package with dev tools

train: $(STAMP) ## one job with the default config (d2l 3.3); ARGS="model=scratch ..." for overrides
	$(PY) -m pipeline $(ARGS)

test: $(STAMP) ## run the test suite (never touches mlruns/)
	$(PY) -m pytest $(ARGS)

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check pipeline tests
	$(VENV)/bin/mypy

clean: ## remove .venv and caches (keeps mlruns/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
