"""The offline pipeline end to end with real DVC, in a throwaway git repo holding a copy of the project.

``dvc repro`` runs every stage, prepare to register, through the ``genprm`` console script with tiny
params (one thread), then the caching promise is checked: a second ``dvc repro`` runs nothing, and
changing a train param reruns exactly the stages downstream of it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest_project import copy_project, project_env, tiny_params, write_params

from components.platform.dvcfile import stage_order

pytestmark = pytest.mark.slow


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["dvc", *args],
        cwd=project,
        env=project_env(project),
        capture_output=True,
        text=True,
        timeout=900,  # every stage on one thread; generous for a loaded machine
        check=False,
    )
    assert proc.returncode == 0, (
        f"dvc {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


STAGES = tuple(stage_order(Path(__file__).resolve().parents[1] / "dvc.yaml"))


def _ran(proc: subprocess.CompletedProcess[str]) -> set[str]:
    out = proc.stdout + proc.stderr
    return {stage for stage in STAGES if f"Running stage '{stage}'" in out}


def test_dvc_repro_end_to_end_and_caching(repo_root: Path, tmp_path: Path) -> None:
    project = copy_project(repo_root, tmp_path / "project")

    first = _dvc(project, "repro")
    assert _ran(first) == set(STAGES)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert lock["stages"]["bootstrap"]["params"]["params.yaml"]["bootstrap"]["train"]["steps"] == 20
    for rel in (
        "data/prepared/train.parquet",
        "data/prepared/test.parquet",
        "data/prepared/processbench.jsonl",
        "data/rollout/rollouts.parquet",
        "data/label/labels.parquet",
        "data/label/processbench_labels.parquet",
        "data/synthesize/sft.jsonl",
        "data/synthesize/sft_direct.jsonl",
        "models/genprm/config.json",
        "models/genprm_direct/config.json",
        "data/benchmark/processbench_scores.parquet",
        "plots/benchmark_f1.json",
        "data/refine/refinements.parquet",
        "plots/refine.json",
    ):
        assert (project / rel).is_file(), rel
    policy = project / "models" / "policy"
    assert (policy / "config.json").is_file() and (policy / "tokenizer.json").is_file()
    assert not (project / "models" / "policy.partial").exists()
    assert (project / "plots" / "bootstrap_loss.json").is_file()

    shown = json.loads(_dvc(project, "metrics", "show", "--json").stdout)
    metrics = shown[""]["data"]
    assert set(metrics) >= {f"metrics/{stage}.json" for stage in STAGES}
    assert metrics["metrics/prepare.json"]["data"]["loaded"] == 100
    boot = metrics["metrics/bootstrap.json"]["data"]
    assert 0.0 <= boot["accuracy_greedy"] <= 1.0 and boot["parameters"] > 0
    synthesized = metrics["metrics/synthesize.json"]["data"]
    # No consensus filter by default: every fully judged path trains (the filter: tests/test_synthesize.py).
    assert 0 < synthesized["kept"] == synthesized["paths"] - synthesized["unparseable_paths"]
    assert 0.0 <= boot["claim_copy_policy"] <= 1.0 and 0.0 <= boot["claim_copy_base"] <= 1.0
    refined = metrics["metrics/refine.json"]["data"]["accuracy"]["synthetic"]
    assert set(refined) == {"genprm", "self_refine", "direct", "none"}
    assert all(set(turns) == {"turn_0", "turn_1"} for turns in refined.values())
    assert len({turns["turn_0"] for turns in refined.values()}) == 1, "every critic starts from one sample"
    headline = metrics["metrics/benchmark.json"]["data"]["headline"]
    assert set(headline) == {"f1_maj@1", "f1_maj@2"}

    # Nothing changed: every stage is skipped and the lock file is untouched.
    lock_text = (project / "dvc.lock").read_text()
    second = _dvc(project, "repro")
    out = second.stdout + second.stderr
    assert _ran(second) == set()
    assert all(f"Stage '{stage}' didn't change" in out for stage in STAGES)
    assert (project / "dvc.lock").read_text() == lock_text
    assert "up to date" in _dvc(project, "status").stdout

    # A train param changed: both training stages (they read the train section) and what reads their
    # models rerun; nothing upstream does.
    write_params(project, tiny_params(repo_root, ["train.lr=0.001"]))
    assert "train" in _dvc(project, "status").stdout
    third = _dvc(project, "repro")
    assert _ran(third) == {"train", "train_direct", "benchmark", "register", "refine"}
    assert "Stage 'bootstrap' didn't change" in third.stdout + third.stderr
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["lr"] == 0.001

    # The paper's params over the same workspace: DVC parses every stage and plans a full rerun (a dry
    # run needs the upstream outputs to exist, which this run made).
    (project / "params.yaml").write_text((repo_root / "infra/paper/params.yaml").read_text())
    dry = _dvc(project, "repro", "--dry")
    assert _ran(dry) >= {"prepare", "rollout", "label", "synthesize", "train", "benchmark"}
