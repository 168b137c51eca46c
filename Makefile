# Lumen: run `make help` for the targets.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
DEST  ?= /opt/cni/bin

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -E '^[a-z][a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-12s %s\n",$$1,$$2}'

setup: ## Install apt packages, kernel-header links for bcc, and the venv (idempotent)
	@bash scripts/setup.sh

demo: setup ## Run a three-node Lumen cluster on this machine (namespaces): pods, traffic, agents, relay UI (Ctrl-C cleans up)
	@$(PY) scripts/demo.py

test: setup ## Run every test: unit, privileged (netns, bpf), real runtimes, browser
	@$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: setup ## Run only the unprivileged unit tests
	@$(PY) -m pytest -q tests/unit

lint: setup ## ruff lint + format check, mypy on plugin, exporter and bpf (tests/unit/test_lint.py runs the same)
	@$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy plugin exporter bpf

cni-bin: ## Install the CNI plugin executable `lumen` into DEST (default /opt/cni/bin)
	@bash scripts/install-cni.sh "$(DEST)"

bench: setup ## Run the benchmarks (bench/cni, bench/datapath with policy scaling, bench/pipeline, bench/cluster, bench/history)
	@for s in bench/cni/run.py bench/datapath/run.py bench/datapath/policy.py bench/pipeline/run.py \
		bench/cluster/run.py bench/cluster/relay.py bench/history/run.py; do \
		[ -f $$s ] && $(PY) $$s; done; true

.PHONY: help setup demo test test-unit lint cni-bin bench
