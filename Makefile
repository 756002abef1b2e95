# The two front-door commands (see README.md):
#   make run   - set up .venv with what the pipeline needs and run it end to end (dvc repro)
#   make test  - set up .venv with the test tools too, then lint, type checks and the whole test suite
#   make lock  - refresh requirements/*.lock from pyproject.toml's ranges (then `make test`)
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
# No HF_HUB_OFFLINE here: the genprm CLI sets it for every stage whose params configure nothing online
# (components/platform/online.py), so `make run` of a params.yaml with hub ids may download them.
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false

.PHONY: setup setup-run setup-test vllm run test lint typecheck pytest lock

# requirements/run.lock only: no dev tools, no system packages (tests/test_setup.py checks it)
setup-run:
	@bash scripts/setup.sh run

# requirements/test.lock, and Debian's chromium and postgresql for their tests when missing
setup-test:
	@bash scripts/setup.sh test

setup: setup-test

# .venv-vllm: vLLM on CPU in its own environment for tests/test_vllm.py (make run does not need it)
vllm:
	@bash scripts/setup_vllm.sh

run: setup-run
	@echo "run: dvc repro (offline small world; stages already up to date are skipped)"
	dvc repro
	@echo "run: summary (every metric: dvc metrics show)"
	genprm summary

lint:
	ruff check .
	ruff format --check .

typecheck:
	mypy

pytest:
	python -m pytest

test: setup-test vllm lint typecheck pytest

lock:
	.venv/bin/python scripts/lock.py
