#!/usr/bin/env bash
# Create (or reuse) the project environment in .venv: CPU torch first, then the project with its
# dev and serving extras. Idempotent: a second run only checks that nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
STAMP=.venv/.genprm-setup
WANT=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
  echo "setup: .venv is up to date"
else
  echo "setup: installing CPU torch, then the project (.[dev,serve]); this takes a few minutes"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # The CPU wheel first: an open torch requirement could otherwise pull a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet torch==2.13.0
  .venv/bin/python -m pip install --quiet -e '.[dev,serve]'
  echo "$WANT" > "$STAMP"
  echo "setup: done"
fi
