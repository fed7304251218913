# disagg — developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CRD_FILE := crds/disagg.dev_disaggregatedmodels.yaml

.PHONY: help venv lint types unit e2e test crd generate dashboards demo bench bench-planner bench-convergence bench-serving bench-cluster-size clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP) ## create .venv and install the package with dev tools

lint: $(STAMP) ## ruff (lint + format check) and import-layer contracts
	$(BIN)/ruff check operator tests e2e bench docs
	$(BIN)/ruff format --check operator tests e2e bench docs
	$(BIN)/lint-imports

types: $(STAMP) ## mypy --strict on the package
	$(BIN)/mypy operator/disagg

unit: $(STAMP) ## unit tests (no cluster)
	@tmp=$$(mktemp -d /tmp/disagg-unit.XXXXXX); trap 'rm -rf "$$tmp"' EXIT; $(BIN)/pytest tests -q --basetemp="$$tmp"

e2e: $(STAMP) ## end-to-end tests on the local control plane (builds tools on first run)
	@if [ "$${DISAGG_SKIP_E2E:-0}" = "1" ]; then \
	  echo "*** DISAGG_SKIP_E2E=1: end-to-end suite NOT run (explicit opt-out) ***"; \
	else \
	  $(MAKE) --no-print-directory e2e-tools && \
	  tmp=$$(mktemp -d /tmp/disagg-e2e.XXXXXX) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(BIN)/pytest e2e -q -m e2e --basetemp="$$tmp"; \
	fi

test: lint types unit e2e ## everything CI runs: lint, types, unit and e2e tests

crd: $(STAMP) ## regenerate the CRD from the pydantic models
	$(BIN)/disagg crd -o $(CRD_FILE)

dashboards: $(STAMP) ## regenerate the Grafana dashboards (charts/disagg-operator/dashboards/) from operator/disagg/dashboards.py
	$(BIN)/python -m disagg.dashboards

generate: crd chart-crds dashboards ## regenerate every generated file (the CRD and its chart copy, the dashboards; `make manifests` renders install.yaml with helm)

clean: ## remove local build/test state (not the tool cache)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis

-include e2e/e2e.mk

demo: $(STAMP) ## the main job: local GPU cluster + operator + Llama-70B sample, with a report
	$(MAKE) --no-print-directory e2e-tools
	$(BIN)/python e2e/demo.py

bench-planner: $(STAMP) ## planner accuracy on the measured runs, and plan latency
	$(BIN)/python bench/planner_accuracy.py

bench-convergence: $(STAMP) ## time to Ready, writes and operator cost for 50/200/500 models (own clusters)
	$(MAKE) --no-print-directory e2e-tools
	$(BIN)/python bench/convergence.py

bench-serving: $(STAMP) e2e-tools ## router + sidecar latency over a direct engine, and wake-from-zero to first token (own cluster, ~8 min, root)
	$(BIN)/python bench/serving.py

bench-cluster-size: $(STAMP) e2e-tools ## per-pass operator cost at the fixture cluster and at 500 nodes / 5,000 pods (own cluster)
	$(BIN)/python bench/cluster_size.py

bench: bench-planner bench-serving bench-convergence bench-cluster-size ## every benchmark

-include charts/charts.mk
