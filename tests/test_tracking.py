"""MLflow tracking (components/platform/tracking.py) against a real sqlite store in tmp_path.

A small project folder (params.yaml, dvc.yaml, dvc.lock, a git commit) is built per test; runs are
read back with ``MlflowClient``: parent/nested structure, flattened params, metrics, tags, inputs with
DVC hashes, artifacts, failure status, tracking off, an unreachable server, and transformers'
``MLflowCallback`` logging into the stage's active run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from components.platform import tracking

DVC_YAML = {
    "stages": {
        "prepare": {"cmd": "x", "deps": ["src.py"], "outs": ["${prepare.output_dir}"]},
        "bootstrap": {
            "cmd": "x",
            "deps": ["${prepare.output_dir}/train.txt", "src.py"],
            "outs": ["models/policy", "reports/bootstrap"],
            "metrics": [{"metrics/bootstrap.json": {"cache": False}}],
            "plots": [{"plots/loss.json": {"x": "step"}}],
        },
    }
}
LOCK = {
    "schema": "2.0",
    "stages": {"prepare": {"cmd": "x", "outs": [{"path": "data/prep", "hash": "md5", "md5": "abc123.dir"}]}},
}
PARAMS = {"prepare": {"output_dir": "data/prep", "num_problems": 10}, "bootstrap": {"train": {"lr": 0.1}}}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (root / "dvc.lock").write_text(yaml.safe_dump(LOCK))
    git = ["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    monkeypatch.chdir(root)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", tracking.ENV_PARENT, tracking.ENV_ENABLED):
        monkeypatch.delenv(name, raising=False)
    return root


def _client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def _runs(root: Path) -> dict[str, Any]:
    client = _client(root)
    experiment = client.get_experiment_by_name("genprm")
    assert experiment is not None
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_flatten_and_numeric_leaves() -> None:
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}
    metrics = {
        "f1": 0.5,
        "ok": True,
        "name": "x",
        "rpe": {"f1": 0.25},
        "sweep": [{"f1": 1}],
        "nan": float("nan"),
    }
    assert tracking.numeric_leaves(metrics) == {"f1": 0.5, "rpe.f1": 0.25, "sweep.0.f1": 1.0}


def test_pipeline_parent_with_nested_stage_run(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(project / "metrics" / "bootstrap.json", {"stale": 1})  # older than the run: not logged
    old = project / "metrics" / "bootstrap.json"
    os.utime(old, (1, 1))
    with tracking.pipeline_run(
        project, Path("params.yaml"), "pipeline test", overrides=["prepare.seed=3"]
    ) as parent:
        assert parent.run_id is not None
        env = parent.env()
        assert env[tracking.ENV_PARENT] == parent.run_id
        monkeypatch.setenv(tracking.ENV_PARENT, parent.run_id)
        with tracking.stage_run("bootstrap", Path("params.yaml"), ["bootstrap.train.lr=0.5"]) as run:
            import mlflow

            active = mlflow.active_run()
            assert active is not None and active.info.run_id == run.run_id  # trainers log into it
            _write(project / "metrics" / "bootstrap.json", {"loss": 1.5, "eval": {"acc": 0.25}, "tag": "x"})
            _write(project / "plots" / "loss.json", [{"step": 1, "loss": 2.0}])
            (project / "reports" / "bootstrap").mkdir(parents=True)
            (project / "reports" / "bootstrap" / "index.html").write_text("<html>docs</html>")
            run.log_metrics({"loss": 1.5, "eval": {"acc": 0.25}, "tag": "x"})
        assert parent.record_stage("bootstrap", "ran") == {"bootstrap.loss": 1.5, "bootstrap.eval.acc": 0.25}

    runs = _runs(project)
    top, stage = runs["pipeline test"], runs["bootstrap"]
    assert top.info.status == "FINISHED" and stage.info.status == "FINISHED"
    assert stage.data.tags["mlflow.parentRunId"] == top.info.run_id
    assert "mlflow.parentRunId" not in top.data.tags
    # params: all of params.yaml, flattened, with the overrides applied
    assert stage.data.params["bootstrap.train.lr"] == "0.5"
    assert stage.data.params["prepare.num_problems"] == "10"
    assert top.data.params["prepare.seed"] == "3"
    assert stage.data.metrics == {"loss": 1.5, "eval.acc": 0.25}
    assert top.data.metrics == {"bootstrap.loss": 1.5, "bootstrap.eval.acc": 0.25}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    lock_md5 = hashlib.md5((project / "dvc.lock").read_bytes()).hexdigest()
    for run_ in (top, stage):
        assert run_.data.tags["genprm.git_commit"] == commit.strip()
        assert run_.data.tags["genprm.dvc_lock_md5"] == lock_md5
    assert stage.data.tags["genprm.stage"] == "bootstrap" and top.data.tags["genprm.stage.bootstrap"] == "ran"
    # inputs: the upstream output it reads, with the DVC md5 from dvc.lock
    assert stage.data.tags["genprm.input.data/prep"] == "abc123.dir"
    (dataset,) = [d.dataset for d in stage.inputs.dataset_inputs]
    assert (dataset.name, dataset.digest, dataset.source_type) == ("data/prep", "abc123.dir", "dvc")
    client = _client(project)
    logged = {
        a.path
        for d in ("metrics", "plots", "reports/bootstrap")
        for a in client.list_artifacts(stage.info.run_id, d)
    }
    assert logged == {"metrics/bootstrap.json", "plots/loss.json", "reports/bootstrap/index.html"}
    assert (project / "mlartifacts").is_dir()  # the default store keeps artifacts at the project root
    assert tracking.run_link("sqlite:///x", "1", "abc") == "http://127.0.0.1:5000/#/experiments/1/runs/abc"


def test_stage_run_outside_a_pipeline_is_top_level_and_fails_cleanly(project: Path) -> None:
    with pytest.raises(ValueError, match="boom"), tracking.stage_run("prepare", Path("params.yaml"), None):
        raise ValueError("boom")
    run = _runs(project)["prepare"]
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.info.status == "FAILED" and run.data.tags["genprm.error"] == "boom"
    assert run.data.tags["genprm.shard"] == "0/1"
    with tracking.stage_run("prepare", Path("params.yaml"), ["prepare.shard=1/2"]) as shard:
        assert shard.run_id is not None
    assert _runs(project)["prepare [1/2]"].info.status == "FINISHED"


def test_tracking_off(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracking.ENV_ENABLED, "0")
    with tracking.stage_run("prepare", Path("params.yaml"), None) as run:
        run.log_metrics({"a": 1})
    assert run.run_id is None and run.logged == {"a": 1.0}
    assert not (project / "mlflow.db").exists()


def test_unreachable_server_warns_and_the_stage_runs(
    project: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    ran = False
    with caplog.at_level(logging.WARNING, "genprm.tracking"):
        with tracking.stage_run("prepare", Path("params.yaml"), None) as run:
            ran = True
        with tracking.pipeline_run(project, Path("params.yaml"), "p") as parent:
            assert parent.env() == {} and parent.link is None
    assert ran and run.run_id is None
    assert f"127.0.0.1:{port} unreachable" in caplog.text


@pytest.mark.slow
def test_transformers_mlflow_callback_logs_into_the_stage_run(project: Path, tmp_path: Path) -> None:
    from transformers import TrainingArguments
    from transformers.integrations import MLflowCallback

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], learning_rate=0.123)
    state = SimpleNamespace(is_world_process_zero=True, global_step=7)
    with tracking.stage_run("bootstrap", Path("params.yaml"), None) as run:
        callback = MLflowCallback()
        callback.setup(args, state, None)
        callback.on_log(args, state, None, logs={"train_loss": 0.75})
        callback.on_train_end(args, state, None)
    runs = _runs(project)
    assert set(runs) == {"bootstrap"}  # no separate run for the trainer
    stage = runs["bootstrap"]
    assert stage.info.run_id == run.run_id and stage.info.status == "FINISHED"
    assert stage.data.metrics["train_loss"] == 0.75
    assert stage.data.params["learning_rate"] == "0.123"


def test_process_run_uses_the_stage_defaults_and_resumes_a_launched_run(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stage logs to one place: a trainer or the registry outside a stage run (notebooks, tests)
    opens its run in the same store and experiment, and under ``accelerate launch`` the child resumes
    the stage's run named by ``MLFLOW_RUN_ID``."""
    import mlflow

    with tracking.process_run("train-genprm", {"genprm.stage": "train"}) as run_id:
        assert run_id is not None and mlflow.active_run() is not None
        mlflow.log_metric("loss", 0.5)
    assert mlflow.active_run() is None
    runs = _runs(project)  # mlflow.db at the project root, experiment "genprm"
    assert (
        runs["train-genprm"].info.run_id == run_id
        and runs["train-genprm"].data.tags["genprm.stage"] == "train"
    )

    with tracking.stage_run("bootstrap", Path("params.yaml"), None) as stage:
        pass
    mlflow.end_run()
    monkeypatch.setenv("MLFLOW_RUN_ID", str(stage.run_id))
    with tracking.process_run("ignored") as resumed:
        mlflow.log_metric("child_loss", 0.25)
    assert resumed == stage.run_id
    assert _client(project).get_run(str(stage.run_id)).data.metrics["child_loss"] == 0.25
    assert "ignored" not in _runs(project)

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)  # mlflow itself may have consumed it
    monkeypatch.setenv(tracking.ENV_ENABLED, "0")
    with tracking.process_run("off") as off:
        assert off is None
    with tracking.process_run("register", required=True) as needed:
        assert needed is not None
