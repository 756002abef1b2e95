"""Scale-out through a work pool: n shards as n deployment runs on n real workers give one run's tables.

A real ``prefect server`` on loopback (the fixture of ``test_deployments.py``), a process work pool, the
``shard`` deployment of ``prefect.yaml`` deployed onto it, and two ``prefect worker start --limit 1``
processes. In a tiny copy of the project, ``rollout`` and ``label`` run once unsharded (the reference),
then through ``python -m flows.pipeline --shards 2 --shard-deployment genprm-shard/shard``: each shard is
its own flow run, picked up by the workers; the merged tables must equal the reference, row for row.
A shard run that fails (a bad key in its params) then fails the pipeline with the stage's own message.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from conftest_project import copy_project, project_env, tiny_params
from test_deployments import _stop, _wait, server  # noqa: F401 - `server` is a fixture used below

pytestmark = pytest.mark.slow

POOL = "genprm-shards-test"
WORKERS = 2
SMALLER = ["rollout.max_problems=4", "label.processbench_max_records=4"]
TABLES = {
    "rollout": ["data/rollout/rollouts.parquet"],
    "label": ["data/label/labels.parquet", "data/label/processbench_labels.parquet"],
}


def _run(args: list[str], project: Path, env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _reference_tables(project: Path, env: dict[str, str], dest: Path) -> None:
    """prepare, bootstrap, then rollout and label unsharded (entry points); their tables to ``dest``."""
    genprm = str(Path(sys.executable).parent / "genprm")
    for stage in ("prepare", "bootstrap", *TABLES):
        _run([genprm, stage], project, {**env, "GENPRM_TRACKING": "0"})
    for tables in TABLES.values():
        for table in tables:
            (dest / table).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / table, dest / table)
    for folder in ("data/rollout", "data/label"):  # tables and progress journals: start afresh
        shutil.rmtree(project / folder)


def _start_workers(project: Path, env: dict[str, str], logs: Path) -> list[subprocess.Popen[Any]]:
    prefect = str(Path(sys.executable).parent / "prefect")
    workers = []
    for i in range(WORKERS):
        args = [prefect, "worker", "start", "--pool", POOL, "--type", "process", "--limit", "1"]
        with (logs / f"worker-{i}.log").open("w") as log:
            workers.append(
                subprocess.Popen(
                    [*args, "--name", f"shard-worker-{i}"],
                    cwd=project,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return workers


def _shard_runs(api: httpx.Client) -> list[dict[str, Any]]:
    body = {"flows": {"name": {"any_": ["genprm-shard"]}}}
    return list(api.post("/flow_runs/filter", json=body).json())


def test_shards_on_workers_give_the_tables_of_one_run(
    repo_root: Path,
    tmp_path: Path,
    server: tuple[str, dict[str, str]],  # noqa: F811
) -> None:
    url, server_env = server
    project = copy_project(repo_root, tmp_path / "project", tiny_params(repo_root, SMALLER))
    shutil.copy2(repo_root / "prefect.yaml", project / "prefect.yaml")
    env = {**project_env(project), **{k: v for k, v in server_env.items() if k.startswith("PREFECT_")}}
    env["PREFECT_WORKER_QUERY_SECONDS"] = "1"
    prefect = str(Path(sys.executable).parent / "prefect")
    _run([prefect, "work-pool", "create", POOL, "--type", "process"], project, env)
    _run([prefect, "--no-prompt", "deploy", "--name", "shard", "--pool", POOL], project, env)
    workers = _start_workers(project, env, tmp_path)
    api = httpx.Client(base_url=url, timeout=10)
    try:
        pipeline = [sys.executable, "-m", "flows.pipeline"]
        reference = tmp_path / "reference"
        _reference_tables(project, env, reference)
        for proc in workers:
            assert proc.poll() is None, (tmp_path / "worker-0.log").read_text()
        sharded = [*pipeline, "--stages", "rollout", "label", "--shards", str(WORKERS)]
        out = _run([*sharded, "--shard-deployment", "genprm-shard/shard"], project, env, timeout=600)
        assert "rollout: ran" in out and "label: ran" in out
        for stage, tables in TABLES.items():
            rows = 0
            for table in tables:
                want, got = pd.read_parquet(reference / table), pd.read_parquet(project / table)
                pd.testing.assert_frame_equal(got, want)
                rows += len(want)
            assert rows > 0, f"{stage}: no rows to compare"  # (label: the tiny policy's paths are unkept)
        shards = sorted(p.name for p in (project / "data" / "rollout" / "shards").glob("*.parquet"))
        assert shards == ["rollouts-0of2.parquet", "rollouts-1of2.parquet"]
        runs = _shard_runs(api)
        assert sorted(r["name"] for r in runs) == ["label[0/2]", "label[1/2]", "rollout[0/2]", "rollout[1/2]"]
        assert {r["state"]["type"] for r in runs} == {"COMPLETED"}
        # Every worker ran shards, and each run ran on exactly one worker: the worker that executes a run
        # logs its page (".../flow-run/<id>"); both workers may race to submit a run, and the server
        # aborts the loser's submission, so a bare mention of the id is no proof of who ran it.
        logs = [(tmp_path / f"worker-{i}.log").read_text() for i in range(WORKERS)]
        per_worker = [sum(f"flow-run/{r['id']}" in log for r in runs) for log in logs]
        assert sum(per_worker) == len(runs) and min(per_worker) >= 1, per_worker
        _check_failing_shard_fails_the_stage(project, env, pipeline)
    finally:
        api.close()
        for proc in workers:
            _stop(proc)


def _check_failing_shard_fails_the_stage(project: Path, env: dict[str, str], pipeline: list[str]) -> None:
    """A shard run that fails (exit 2: a bad key in its params file) fails the pipeline with its message."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["rollout"]["bogus_key"] = 1
    (project / "bad.yaml").write_text(yaml.safe_dump(params))
    args = [*pipeline, "--params", "bad.yaml", "--stages", "rollout", "--shards", "2"]
    args += ["--shard-deployment", "genprm-shard/shard"]
    proc = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "stage 'rollout' failed" in proc.stderr and "'bogus_key'" in proc.stderr, proc.stderr[-3000:]
