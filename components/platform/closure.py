"""The project modules a stage runs: its import closure, which ``dvc.yaml`` must list as the stage's deps.

A stage runs ``genprm <stage>``: the CLI's entry (``cli.py`` at module level and ``run_entry``, which
opens the stage's MLflow run) and the stage module ``components/stages/<stage>.py``, then everything
they import, transitively: imports at module level and inside functions (lazy imports run too), and
modules a subprocess is started with (``from components.sandbox.zygote import main`` in a command
string). Imports under ``if TYPE_CHECKING:`` never run and are left out. A package's ``__init__.py``
runs before any of its modules, so it is in the closure too.

    python -m components.platform.closure            # every stage's closure, as dvc.yaml deps lines
    python -m components.platform.closure --check    # exit 1 naming each stage whose deps differ
    python -m components.platform.closure --write    # rewrite the source deps of dvc.yaml in place

``tests/test_dvc_deps.py`` runs the check, so a code change cannot leave a stale stage "up to date".
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "components"
# Module names quoted in command strings that a subprocess imports (the sandbox's fork server).
_QUOTED_IMPORT = re.compile(r"(?:from|import)\s+(components(?:\.\w+)+)")
# What the CLI runs for every stage command, beside its module-level imports.
CLI_MODULE = "components.platform.cli"
CLI_FUNCTIONS = ("run_entry",)
# dvc.yaml stages whose command runs another stage's module.
STAGE_MODULES = {"train_direct": "train"}


def module_path(name: str, root: Path = ROOT) -> Path | None:
    """The file of project module ``name`` (a module or a package's ``__init__.py``), None if none."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def _walk(nodes: Iterable[ast.AST]) -> Iterable[ast.AST]:
    """Every node under ``nodes``, skipping ``if TYPE_CHECKING:`` bodies (their else branch runs)."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if _is_type_checking(node):
            stack.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        stack.extend(ast.iter_child_nodes(node))


def _names(node: ast.AST) -> list[str]:
    """Project module names an import node (or a string constant) may load."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _QUOTED_IMPORT.findall(node.value)
    return []


def imported(path: Path, functions: tuple[str, ...] | None = None, root: Path = ROOT) -> set[str]:
    """Project modules imported by the file at ``path`` (only module level and ``functions`` if given)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if functions is None:
        nodes: list[ast.AST] = [tree]
    else:
        top = [n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        picked = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in functions]
        nodes = [*top, *picked]
    found = set()
    for node in _walk(nodes):
        for name in _names(node):
            if name.split(".")[0] == PACKAGE and module_path(name, root) is not None:
                found.add(name)
    return found


def _with_packages(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(stage: str, root: Path = ROOT) -> list[str]:
    """The repository-relative files ``genprm <stage>`` runs, sorted."""
    module = f"{PACKAGE}.stages.{STAGE_MODULES.get(stage, stage)}"
    if module_path(module, root) is None:
        raise ValueError(f"dvc stage {stage!r}: no module {module}")
    cli = module_path(CLI_MODULE, root)
    assert cli is not None
    seen = set(_with_packages(CLI_MODULE))
    todo = [module, *imported(cli, CLI_FUNCTIONS, root)]
    while todo:
        for name in _with_packages(todo.pop()):
            if name not in seen and (path := module_path(name, root)) is not None:
                seen.add(name)
                todo.extend(imported(path, None, root))
    files = {module_path(name, root) for name in seen}
    return sorted(str(p.relative_to(root)) for p in files if p is not None)


def declared(deps: Iterable[str], root: Path = ROOT) -> list[str]:
    """The project source files among a stage's deps (directories expanded to their ``.py`` files)."""
    files: set[str] = set()
    for dep in deps:
        path = root / dep
        if not str(dep).startswith(PACKAGE + "/"):
            continue
        if path.is_dir():
            files.update(str(p.relative_to(root)) for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        else:
            files.add(str(Path(dep)))
    return sorted(files)


def stage_deps(root: Path = ROOT) -> dict[str, list[str]]:
    """Each dvc.yaml stage's declared deps, read with DVC's own API (``${...}`` resolved by DVC)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {
            stage.name: [str(Path(dep.def_path)) for dep in stage.deps]
            for stage in repo.index.stages
            if stage.cmd
        }


def differences(root: Path = ROOT) -> dict[str, tuple[list[str], list[str]]]:
    """Per stage whose deps differ from its closure: (files missing from deps, deps it does not run)."""
    found = {}
    for stage, deps in stage_deps(root).items():
        want, have = set(closure(stage, root)), set(declared(deps, root))
        if want != have:
            found[stage] = (sorted(want - have), sorted(have - want))
    return found


def compact(files: list[str], root: Path = ROOT) -> list[str]:
    """``files`` with each package whose every ``.py`` file is listed written as its directory."""
    listed = set(files)
    packages = sorted({str(Path(f).parent) for f in files}, key=len)
    whole: list[str] = []
    for package in packages:
        inside = {str(p.relative_to(root)) for p in (root / package).glob("*.py")}
        nested = [p for p in (root / package).iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
        if package != PACKAGE and not nested and inside <= listed:
            whole.append(package)
    covered = {f for f in files if str(Path(f).parent) in whole}
    return sorted([*whole, *(f for f in files if f not in covered)])


def rewrite(dvc_yaml: Path, root: Path = ROOT) -> str:
    """``dvc_yaml``'s text with each stage's ``components/...`` deps replaced by its closure."""
    lines, out = dvc_yaml.read_text().splitlines(), list[str]()
    stage: str | None = None
    in_deps = wrote = False
    for line in lines:
        stripped = line.strip()
        if line.startswith("  ") and not line.startswith("   ") and stripped.endswith(":"):
            stage, in_deps = stripped[:-1], False
        elif line.startswith("    ") and not line.startswith("     ") and stripped:
            in_deps, wrote = stripped == "deps:", False
        elif in_deps and stripped.startswith(f"- {PACKAGE}/") and stage is not None:
            if not wrote:
                out.extend(f"      - {path}" for path in compact(closure(stage, root), root))
                wrote = True
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if "--write" in argv:
        (ROOT / "dvc.yaml").write_text(rewrite(ROOT / "dvc.yaml"))
        return 0
    if "--check" in argv:
        diff = differences()
        for stage, (missing, extra) in diff.items():
            print(f"dvc.yaml stage {stage!r}: missing deps {missing}, deps it does not import {extra}")
        return 1 if diff else 0
    for stage in stage_deps():
        print(f"{stage}:")
        for path in compact(closure(stage)):
            print(f"      - {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
