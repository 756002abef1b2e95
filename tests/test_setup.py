"""`make run` sets up only what the pipeline needs; `make test` adds the test tools and system packages.

The setup's plan mode (``GENPRM_SETUP_PLAN=1``) prints every command a setup on a fresh machine would
run (no .venv, no chromium, no postgresql, root with apt) and changes nothing. ``make run``'s own setup
target runs in that mode with fake ``apt-get``/``apt``/``dpkg``/``sudo`` first on PATH, which record
any call: a system package install added to the run path, through the plan's ``step`` or around it,
fails here.

    python -m pytest -q tests/test_setup.py
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEM_TOOLS = ("apt-get", "apt", "dpkg", "sudo", "snap")


@pytest.fixture
def fake_system(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PATH starts with recording stand-ins for the system package tools."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in SYSTEM_TOOLS:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexit 1\n')
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GENPRM_SETUP_PLAN": "1"}
    return env, log


def make(target: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        ["make", "-s", "-C", str(REPO), target], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_make_run_uses_the_run_setup() -> None:
    """`make -n run` (print, run nothing): its setup is `setup.sh run` and nothing of the test setup."""
    proc = subprocess.run(["make", "-n", "-C", str(REPO), "run"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    recipe = proc.stdout
    assert "scripts/setup.sh run" in recipe
    assert "setup.sh test" not in recipe and "apt" not in recipe
    assert recipe.index("scripts/setup.sh run") < recipe.index("dvc repro")


def test_make_run_setup_installs_no_system_packages(fake_system: tuple[dict[str, str], Path]) -> None:
    env, log = fake_system
    plan = make("setup-run", env)
    commands = [line for line in plan.splitlines() if line.startswith("plan: ")]
    assert any("-r requirements/run.lock" in c for c in commands), plan
    assert not log.exists(), f"make run's setup called a system package tool: {log.read_text()}"
    for word in ("apt", "dpkg", "chromium", "postgresql", "playwright", "test.lock", "[dev"):
        assert word not in plan, f"make run's setup plan mentions {word!r}:\n{plan}"
    pins = (REPO / "requirements" / "run.lock").read_text()
    for tool in ("pytest", "ruff", "mypy", "playwright", "psycopg2"):
        assert f"\n{tool}" not in pins


def test_make_test_setup_plans_the_test_tools(fake_system: tuple[dict[str, str], Path]) -> None:
    """The contrast that keeps the test above honest: the test setup does plan them."""
    env, log = fake_system
    plan = make("setup-test", env)
    assert "-r requirements/test.lock" in plan
    assert "apt-get install -y -qq --no-install-recommends chromium" in plan
    assert "apt-get install -y -qq --no-install-recommends postgresql" in plan
    assert not log.exists(), "plan mode ran a system package tool"


def test_plan_mode_changes_nothing(fake_system: tuple[dict[str, str], Path]) -> None:
    env, _ = fake_system
    stamp = REPO / ".venv" / ".genprm-setup"
    before = stamp.read_text() if stamp.exists() else None
    make("setup-run", env)
    assert (stamp.read_text() if stamp.exists() else None) == before


def test_unknown_mode_is_refused() -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh"), "all"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "usage: scripts/setup.sh [run|test]" in proc.stderr
