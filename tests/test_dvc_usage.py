"""DVC as users run it, in a throwaway git repo holding a copy of the project with tiny params.

``dvc repro label`` (prepare, bootstrap, rollout, label), commit, ``dvc push`` to the default local
remote of ``.dvc/config`` (a folder beside the checkout), a fresh ``git clone`` + ``dvc pull`` gets the
same data; ``dvc exp run -S label.epsilon=0.5 label`` runs an experiment; ``dvc params diff`` /
``dvc metrics diff`` compare it with the commit and ``dvc plots show`` renders the plots.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest_project import copy_project, project_env

pytestmark = pytest.mark.slow


def _proc(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), cwd=cwd, env=project_env(cwd), capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _run(cwd: Path, *args: str) -> str:
    proc = _proc(cwd, *args)
    return proc.stdout + proc.stderr


def _json(cwd: Path, *args: str) -> Any:
    return json.loads(_proc(cwd, *args).stdout)  # stderr may warn about stages that never ran


def _git(cwd: Path, *args: str) -> str:
    return _run(cwd, "git", "-c", "user.email=t@t", "-c", "user.name=t", *args)


def _md5s(root: Path, rels: list[str]) -> dict[str, str]:
    return {rel: hashlib.md5((root / rel).read_bytes()).hexdigest() for rel in rels}


def test_remote_experiments_and_comparisons(repo_root: Path, tmp_path: Path) -> None:
    project = copy_project(repo_root, tmp_path / "project")
    _run(project, "dvc", "repro", "label")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "pipeline at epsilon 0.8")

    # dvc push to the default remote (beside the checkout), dvc pull from a fresh clone
    assert "pushed" in _run(project, "dvc", "push")
    assert any((tmp_path / "genprm-dvc-remote").rglob("*"))
    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(project), str(clone))
    _run(clone, "dvc", "pull", "prepare", "bootstrap", "rollout", "label")
    data = ["data/prepared/train.parquet", "models/policy/config.json", "data/label/labels.parquet"]
    assert _md5s(clone, data) == _md5s(project, data)

    # an experiment with a changed param: only label reruns
    out = _run(project, "dvc", "exp", "run", "-S", "label.epsilon=0.5", "label")
    assert "Running stage 'label'" in out and "Running stage 'rollout'" not in out
    params = _json(project, "dvc", "params", "diff", "--json")
    change = params["params.yaml"]["label.epsilon"]
    assert (change["old"], change["new"]) == (0.8, 0.5)
    metrics = _json(project, "dvc", "metrics", "diff", "--all", "--json")
    assert any("rpe" in key for key in metrics["metrics/label.json"])
    shown = _json(project, "dvc", "exp", "show", "--json")
    exps = [e for rev in shown for e in rev.get("experiments") or []]
    assert any(
        rev["data"]["params"]["params.yaml"]["data"]["label"]["epsilon"] == 0.5
        for e in exps
        for rev in e["revs"]
    )

    # plots: the bootstrap loss curve and the label F1 by epsilon, rendered to HTML
    out = _run(project, "dvc", "plots", "show", "-o", "plots_html")
    html = (project / "plots_html" / "index.html").read_text()
    assert "bootstrap_loss" in html and "label_epsilon" in html
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["label"]["params"]["params.yaml"]["label"]["epsilon"] == 0.5
