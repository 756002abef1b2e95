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

# Headless Chromium for tests/test_browser.py: Playwright drives Debian's build (Playwright's own browser
# download is not reachable here). Only as root with apt, only when missing; the test skips without it.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium for the browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
    || echo "setup: chromium could not be installed; tests/test_browser.py will skip"
fi

# PostgreSQL for tests/test_postgres_integration.py (MLflow and Prefect servers on it): Debian's server
# binaries, only as root with apt, only when missing; never fatal (the test skips without them).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1 \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's postgresql for the integration test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql) \
    || echo "setup: postgresql could not be installed; tests/test_postgres_integration.py will skip"
fi
