"""The lock files agree with pyproject.toml, with each other, and with the installed environment.

``requirements/run.lock`` (the pipeline) and ``requirements/test.lock`` (plus the dev and serve extras)
are written by ``scripts/lock.py`` and installed by ``scripts/setup.sh``. Checked here: exact pins only;
every dependency of pyproject.toml (and of each extra setup installs) is locked at a version inside its
range; the run lock is the test lock's subset at the same versions; each lock is closed (every
requirement of every locked package, for this platform, is locked at a version that satisfies it) and
holds nothing beyond that closure; the environment running the tests has the locked versions.

    python -m pytest -q tests/test_lock.py
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from collections import deque
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([a-z0-9]+(?:-[a-z0-9]+)*)==([^\s=;]+)$")


def lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("genprm_lock", REPO / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = lock_module()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def read_lock(name: str) -> dict[str, str]:
    """{canonical name: version} of requirements/<name>.lock; any line but a pin or comment fails."""
    pins: dict[str, str] = {}
    for number, line in enumerate((REPO / "requirements" / f"{name}.lock").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"requirements/{name}.lock:{number}: not an exact pin: {line!r}"
        assert match[1] not in pins, f"requirements/{name}.lock:{number}: {match[1]} pinned twice"
        pins[match[1]] = match[2]
    return pins


def declared(name: str) -> list[Requirement]:
    """pyproject's dependencies plus those of every extra that lock ``name`` installs."""
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in LOCK.SETS[name]:
        reqs += [Requirement(r) for r in PYPROJECT["optional-dependencies"][extra]]
    return reqs


def test_lock_sets_are_the_setup_modes() -> None:
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert set(LOCK.SETS) == {"run", "test"}
    assert "requirements/$MODE.lock" in setup and "run | test)" in setup
    assert set(LOCK.SETS["test"]) <= set(PYPROJECT["optional-dependencies"])
    assert {"dev", "serve"} <= set(LOCK.SETS["test"])  # what `make test` needs


@pytest.mark.parametrize("name", ["run", "test"])
def test_pyproject_dependencies_are_locked_inside_their_ranges(name: str) -> None:
    pins = read_lock(name)
    for req in declared(name):
        key = canonicalize_name(req.name)
        assert key in pins, f"{req} (pyproject.toml) is not in requirements/{name}.lock"
        assert req.specifier.contains(pins[key], prereleases=True), (
            f"requirements/{name}.lock pins {key}=={pins[key]}, outside pyproject.toml's {req}"
        )


def test_cpu_torch_and_the_installer_are_pinned() -> None:
    for name in ("run", "test"):
        pins = read_lock(name)
        assert pins["torch"] == LOCK.TORCH.split("==")[1] == "2.13.0"
        assert "pip" in pins and "setuptools" in pins
        assert not any(key.startswith("nvidia-") for key in pins), "a CUDA build's libraries are locked"


def test_run_lock_is_the_test_lock_without_the_extras() -> None:
    run, test = read_lock("run"), read_lock("test")
    differ = {k: (v, test.get(k)) for k, v in run.items() if test.get(k) != v}
    assert not differ, f"run.lock and test.lock disagree: {differ}"
    for tool in ("pytest", "ruff", "mypy", "playwright", "psycopg2-binary"):
        assert tool in test and tool not in run


def closure(name: str) -> tuple[set[str], list[str]]:
    """Packages reachable from pyproject (markers of this platform, extras followed) and what is wrong."""
    pins, problems, seen = read_lock(name), [], set()
    queue = deque((canonicalize_name(r.name), frozenset(r.extras)) for r in declared(name))
    while queue:
        key, extras = queue.popleft()
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        try:
            installed = Version(metadata.version(key)).public  # 2.13.0+cpu -> 2.13.0
        except metadata.PackageNotFoundError:
            problems.append(f"{key} is locked but not installed (run scripts/setup.sh)")
            continue
        if installed != Version(pins.get(key, "0")).public:
            problems.append(f"{key}: installed {installed}, locked {pins.get(key)} (run scripts/setup.sh)")
        for text in metadata.requires(key) or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                continue
            dep = canonicalize_name(req.name)
            if dep not in pins:
                problems.append(f"{key} needs {req}, not in requirements/{name}.lock")
            elif not req.specifier.contains(pins[dep], prereleases=True):
                problems.append(f"{key} needs {req}, requirements/{name}.lock pins {pins[dep]}")
            else:
                queue.append((dep, frozenset(req.extras)))
    return {key for key, _ in seen}, problems


@pytest.mark.parametrize("name", ["run", "test"])
def test_lock_is_closed_minimal_and_installed(name: str) -> None:
    reached, problems = closure(name)
    assert not problems, "\n".join(problems[:20])
    extra = set(read_lock(name)) - reached - {"pip"}
    assert not extra, f"requirements/{name}.lock holds packages nothing requires: {sorted(extra)}"
