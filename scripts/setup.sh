#!/usr/bin/env bash
# Create (or reuse) the project environment in .venv and install the locked packages into it.
#
#   scripts/setup.sh run    what the pipeline needs (`make run`): requirements/run.lock and the project,
#                           nothing else: no dev tools, no system packages
#   scripts/setup.sh test   what the tests need (`make test`, CI): requirements/test.lock (adds the dev
#                           and serve extras), and Debian's chromium and postgresql when they are missing
#                           (only as root with apt; the tests that need them skip without them)
#   GENPRM_SETUP_PLAN=1 scripts/setup.sh MODE   print every command a setup of MODE on a fresh machine
#                           (no .venv, no chromium, no postgresql, root with apt) would run; change nothing
#
# Packages come from the lock files (exact pins, CPU torch; refresh them with `make lock`), installed
# with --no-deps so that exactly the locked set is there, then `pip check`. Idempotent: a stamp in .venv
# records the lock installed; a second run with nothing changed only compares it (well under a second).
# An environment set up for `test` also serves `run` (test.lock holds run.lock at the same versions).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-test}
case "$MODE" in
  run | test) ;;
  *) echo "usage: scripts/setup.sh [run|test]" >&2; exit 2 ;;
esac
PLAN=${GENPRM_SETUP_PLAN:-0}
PYTHON=${PYTHON:-python3}
VENV_PY=.venv/bin/python
STAMP=.venv/.genprm-setup

# Every command that changes something goes through `step`: in plan mode it is printed instead.
step() {
  if [ "$PLAN" = 1 ]; then echo "plan: $*"; else "$@"; fi
}

fingerprint() { # the installed state a lock stands for: the lock, pyproject.toml and this script
  cat "requirements/$1.lock" pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16
}

up_to_date() {
  [ "$PLAN" = 1 ] && return 1 # a plan is that of a fresh machine
  local have
  have=$(cat "$STAMP" 2>/dev/null || true)
  [ "$have" = "test $(fingerprint test)" ] || { [ "$MODE" = run ] && [ "$have" = "run $(fingerprint run)" ]; }
}

install_lock() {
  local lock="requirements/$MODE.lock"
  echo "setup: installing $lock into .venv (exact pins, CPU torch), then the project; a few minutes the first time"
  step "$VENV_PY" -m pip install --quiet --no-deps "$(grep '^pip==' "$lock")"
  step "$VENV_PY" -m pip install --quiet --no-deps -r "$lock"
  step "$VENV_PY" -m pip install --quiet --no-deps --no-build-isolation -e .
  step "$VENV_PY" -m pip check
  if [ "$PLAN" = 1 ]; then echo "plan: record '$MODE $(fingerprint "$MODE")' in $STAMP"; else
    echo "$MODE $(fingerprint "$MODE")" > "$STAMP"
  fi
  echo "setup: done ($MODE)"
}

can_apt() { [ "$PLAN" = 1 ] || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }; }

present() { # $1: a command or a glob of files that shows the package is there (a plan assumes none is)
  [ "$PLAN" != 1 ] && { command -v "$1" >/dev/null 2>&1 || compgen -G "$1" >/dev/null; }
}

apt_install() { # $1: package, $2: the test that skips without it
  echo "setup: installing Debian's $1 for $2"
  if [ "$PLAN" = 1 ]; then
    echo "plan: apt-get update -qq && apt-get install -y -qq --no-install-recommends $1"
  else
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1") \
      || echo "setup: $1 could not be installed; $2 will skip"
  fi
}

test_system_packages() {
  # Headless Chromium for tests/test_browser.py: Playwright drives Debian's build (Playwright's own
  # browser download is not reachable here).
  if present chromium; then
    echo "setup: chromium present (tests/test_browser.py)"
  elif can_apt; then
    apt_install chromium tests/test_browser.py
  fi
  # PostgreSQL server binaries for tests/test_postgres_integration.py (MLflow and Prefect on it).
  if present initdb || present '/usr/lib/postgresql/*/bin/initdb'; then
    echo "setup: postgresql present (tests/test_postgres_integration.py)"
  elif can_apt; then
    apt_install postgresql tests/test_postgres_integration.py
  fi
}

if [ "$PLAN" = 1 ] || [ ! -x "$VENV_PY" ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  step "$PYTHON" -m venv .venv
fi
if up_to_date; then
  echo "setup: .venv is up to date ($MODE)"
else
  install_lock
fi
if [ "$MODE" = test ]; then
  test_system_packages
fi
