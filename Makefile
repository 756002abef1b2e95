# The two front-door commands (see README.md):
#   make run   - set up .venv and run the offline pipeline end to end (dvc repro)
#   make test  - set up .venv and run lint, type checks and the whole test suite
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false

.PHONY: setup run test lint typecheck pytest

setup:
	@bash scripts/setup.sh

run: setup
	@echo "run: dvc repro (offline small world; stages already up to date are skipped)"
	dvc repro
	@echo "run: metrics"
	dvc metrics show

lint:
	ruff check .
	ruff format --check .

typecheck:
	mypy

pytest:
	python -m pytest

test: setup lint typecheck pytest
