"""dvc.yaml's deps follow the code: each stage lists exactly the project modules it runs (its import
closure, components/platform/closure.py), the local models it reads, and paper-scale params parse."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest_project import project_env

from components.platform.closure import closure, compact, differences, imported, rewrite, stage_deps

REPO = Path(__file__).resolve().parents[1]


def test_every_stage_lists_exactly_its_import_closure() -> None:
    diff = differences(REPO)
    assert not diff, (
        "dvc.yaml deps differ from the modules each stage runs; regenerate them with "
        f"`python -m components.platform.closure --write`: {diff}"
    )
    assert rewrite(REPO / "dvc.yaml", REPO) == (REPO / "dvc.yaml").read_text(), "deps not in closure order"


def test_closures_are_what_the_stages_run() -> None:
    label = closure("label", REPO)
    assert "components/stages/label.py" in label and "components/method/montecarlo.py" in label
    assert "components/stages/rollout.py" not in label, "a stage never imports another stage"
    assert "components/platform/tracking.py" in label, "the CLI opens the stage's MLflow run"
    register = closure("register", REPO)
    for module in ("method/critique.py", "method/rationale.py", "sandbox/zygote.py", "platform/pyfunc.py"):
        assert f"components/{module}" in register, module  # the registered pyfunc runs the scorer
    assert closure("train_direct", REPO) == closure("train", REPO)
    for stage in stage_deps(REPO):
        runs = closure(stage, REPO)
        others = [f for f in runs if f.startswith("components/stages/") and "__init__" not in f]
        assert len(others) == 1, f"{stage} runs {others}"


def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_closure_follows_lazy_quoted_and_package_imports_but_not_type_checking(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "components/__init__.py": "",
            "components/platform/__init__.py": "",
            "components/platform/cli.py": (
                "def run_entry():\n    from components.platform import tracking\n"
                "def other():\n    from components.method import unused\n"
            ),
            "components/platform/tracking.py": "",
            "components/stages/__init__.py": "",
            "components/stages/demo.py": (
                "from typing import TYPE_CHECKING\nfrom components.method import core\n"
                "if TYPE_CHECKING:\n    from components.method import hints\n"
                "def later():\n    import components.method.lazy\n"
                "BOOT = 'from components.method.spawned import main; main()'\n"
            ),
            "components/method/__init__.py": "",
            **{f"components/method/{m}.py": "" for m in ("core", "hints", "lazy", "spawned", "unused")},
        },
    )
    got = closure("demo", root)
    assert got == sorted(
        [
            "components/__init__.py",
            "components/method/__init__.py",
            "components/method/core.py",
            "components/method/lazy.py",
            "components/method/spawned.py",
            "components/platform/__init__.py",
            "components/platform/cli.py",
            "components/platform/tracking.py",
            "components/stages/__init__.py",
            "components/stages/demo.py",
        ]
    )
    assert imported(root / "components/platform/cli.py", ("run_entry",), root) == {
        "components.platform",
        "components.platform.tracking",
    }
    assert compact(got, root)[:2] == ["components/__init__.py", "components/method/__init__.py"]


def test_a_stale_dep_list_is_reported(tmp_path: Path) -> None:
    """The check fails when a module a stage runs is missing from its deps, or an extra one is listed."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "components", copy / "components", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q", str(copy)], check=True)
    shutil.copytree(REPO / ".dvc", copy / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copy(REPO / "params.yaml", copy / "params.yaml")
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    deps = dvc["stages"]["label"]["deps"]
    deps.remove("components/method/montecarlo.py")
    deps.append("components/stages/rollout.py")
    (copy / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    diff = differences(copy)
    assert diff == {"label": (["components/method/montecarlo.py"], ["components/stages/rollout.py"])}


# The shipped params' local model directories are deps of the stages that read them (dvc.yaml names them
# through their producer's output dir); hub ids and served models would be params only.
MODEL_KEYS = {
    "rollout": [("rollout", "policy", "model")],
    "label": [("label", "completer", "model")],
    "train": [("train", "base_model")],
    "benchmark": [("benchmark", "genprm", "model", "model"), ("benchmark", "direct_model"),
                  ("benchmark", "best_of_n", "policy", "model")],
}  # fmt: skip


def test_local_models_in_params_are_stage_deps() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    deps = stage_deps(REPO)
    for stage, keys in MODEL_KEYS.items():
        for key in keys:
            value = params
            for part in key:
                value = value[part]
            assert str(Path(value)) in deps[stage], f"{'.'.join(key)}={value} is not a dep of {stage}"


@pytest.mark.slow
def test_paper_params_parse_under_dvc(tmp_path: Path) -> None:
    """`cp infra/paper/params.yaml params.yaml` then DVC reads every stage (``dvc repro --dry`` itself is
    exercised after a real run in tests/test_e2e.py: DVC's dry run needs upstream outputs to exist)."""
    copy = tmp_path / "paper"
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True)
    for rel in listed.stdout.split():
        if (REPO / rel).is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, copy / rel)
    subprocess.run(["git", "init", "-q", str(copy)], check=True)
    shutil.copy(REPO / "infra/paper/params.yaml", copy / "params.yaml")
    env = project_env(copy)
    proc = subprocess.run(["dvc", "dag", "--md"], cwd=copy, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]:
        assert stage in proc.stdout, stage
    check = subprocess.run(["genprm", "params", "check"], cwd=copy, env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
