"""Refresh the lock files that scripts/setup.sh (and so `make run`, `make test` and CI) install from.

    .venv/bin/python scripts/lock.py          # or: make lock

``pyproject.toml`` keeps version ranges for people who install the package into their own environment;
the lock files pin one resolution of them, every package of the environment with ``==``:

- ``requirements/run.lock``: what the pipeline needs (``make run``): the project's dependencies.
- ``requirements/test.lock``: that plus the extras the tests need (``make test``, CI): ``dev``, ``serve``.

Both are resolved by pip itself (``pip install --dry-run --ignore-installed --report``, nothing is
installed) for this interpreter and platform (CPython 3.11, Linux x86_64), with CPU torch (``TORCH``:
pip finds the CPU wheel where the machine's pip configuration points at it). The test set is resolved
first; the run set is resolved constrained to it, so the two agree on every package they share. After a
refresh, `scripts/setup.sh test` installs the new pins into .venv (it notices the changed lock) and
`tests/test_lock.py` checks the locks against pyproject.toml.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK_DIR = REPO / "requirements"
TORCH = "torch==2.13.0"
"""The CPU build the project is measured with (pyproject admits >=2.13,<2.15)."""
SETS: dict[str, tuple[str, ...]] = {"run": (), "test": ("dev", "serve")}
"""Lock name -> the pyproject extras it installs on top of the dependencies (scripts/setup.sh MODE)."""
TOOLS = ("pip",)
"""Installer packages pinned too (setup.sh installs them first); setuptools comes in as a dependency."""
PROJECT = "genprm-factory"


def resolve(extras: tuple[str, ...], constraints: Path | None = None) -> dict[str, str]:
    """{name: version} of a fresh resolution of the project with ``extras`` (and the tools)."""
    target = f".[{','.join(extras)}]" if extras else "."
    with tempfile.TemporaryDirectory(prefix="genprm-lock-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        cmd += ["--report", str(report), TORCH, *TOOLS, target]
        if constraints is not None:
            cmd += ["--constraint", str(constraints)]
        subprocess.run(cmd, cwd=REPO, check=True)
        installs = json.loads(report.read_text())["install"]
    pins = {}
    for item in installs:
        name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
        version = item["metadata"]["version"]
        if name != PROJECT:
            pins[name] = version.split("+")[0]  # 2.13.0+cpu -> 2.13.0 (pip still picks the CPU wheel)
    return dict(sorted(pins.items()))


def render(name: str, pins: dict[str, str]) -> str:
    """The lock file's text: a header saying what it is and how to refresh it, then one pin a line."""
    extras = SETS[name]
    what = f"the dependencies plus extras {', '.join(extras)}" if extras else "the dependencies"
    header = [
        f"# requirements/{name}.lock: {what} of pyproject.toml, resolved by pip {pip_version()} on",
        f"# {datetime.date.today().isoformat()} for CPython {platform.python_version()} on "
        f"{platform.system()} {platform.machine()}.",
        "# Installed by scripts/setup.sh with `pip install --no-deps -r` (exactly these, nothing else).",
        "# Do not edit: refresh with `make lock` (.venv/bin/python scripts/lock.py).",
    ]
    return "\n".join(header + [f"{n}=={v}" for n, v in pins.items()]) + "\n"


def pip_version() -> str:
    out = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    return out.stdout.split()[1] if out.returncode == 0 else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=LOCK_DIR, help="Directory for the lock files.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    test = resolve(SETS["test"])
    (args.out / "test.lock").write_text(render("test", test))
    run = resolve(SETS["run"], constraints=args.out / "test.lock")
    (args.out / "run.lock").write_text(render("run", run))
    print(f"lock: {len(run)} packages in {args.out / 'run.lock'}, {len(test)} in {args.out / 'test.lock'}")


if __name__ == "__main__":
    main()
