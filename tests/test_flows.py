"""Flow tests: the stage graph read from dvc.yaml, the stage commands, and the Prefect flow itself.

The flow runs against a temporary Prefect API (``prefect_test_harness``, one per session: it takes
10-20 s to start) inside a throwaway copy of the project (``conftest_project.copy_project``) with tiny
params, through real ``dvc repro`` and the real ``genprm`` entry points, tracking into the copy's own
sqlite MLflow store (``mlflow.db``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from conftest_project import copy_project, project_env, tiny_params

from components.platform.errors import ConfigError
from flows.pipeline import (
    SUMMARY_KEY,
    USER_ERROR_EXIT,
    StageFailed,
    offline_pipeline,
    retry_unless_user_error,
    select_stages,
    stage_command,
    stage_order,
    summary_markdown,
    uses_dvc,
)
from flows.stages import TRAIN_TAG, StageTimeout, run_stage, stage_tags

# ------------------------------------------------------------------------------------------ stage graph


def _dvc_yaml(tmp_path: Path, stages: dict[str, Any]) -> Path:
    """A dvc.yaml in a fresh DVC project (stage order is read through DVC's own API)."""
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return path


def test_stage_order_of_the_shipped_dvc_yaml(repo_root: Path) -> None:
    order = stage_order(repo_root / "dvc.yaml")
    assert order[:4] == ["prepare", "bootstrap", "rollout", "label"]
    assert set(order) == set(yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"])


def test_stage_order_follows_deps_not_file_order(tmp_path: Path) -> None:
    path = _dvc_yaml(
        tmp_path,
        {
            "report": {"cmd": "x", "deps": ["metrics/train.json", "models/m"]},
            "train": {
                "cmd": "x",
                "deps": ["data/prepared/train.parquet"],  # a file inside another stage's out dir
                "outs": ["models/m"],
                "metrics": [{"metrics/train.json": {"cache": False}}],
            },
            "prepare": {"cmd": "x", "deps": ["src/prepare.py"], "outs": ["data/prepared"]},
            "lint": {"cmd": "x", "deps": ["src"]},
            "plot": {"cmd": "x", "deps": ["./data"]},  # a folder containing an out
        },
    )
    order = stage_order(path)
    assert sorted(order) == ["lint", "plot", "prepare", "report", "train"]
    assert order.index("prepare") < order.index("train") < order.index("report")
    assert order.index("prepare") < order.index("plot")
    # Among ready stages the earliest in the file goes first.
    assert order == ["prepare", "train", "report", "lint", "plot"]


def test_stage_order_rejects_a_cycle(tmp_path: Path) -> None:
    path = _dvc_yaml(
        tmp_path,
        {
            "a": {"cmd": "x", "deps": ["b.txt"], "outs": ["a.txt"]},
            "b": {"cmd": "x", "deps": ["a.txt"], "outs": ["b.txt"]},
        },
    )
    with pytest.raises(ValueError, match="cycle"):
        stage_order(path)


def test_select_stages_keeps_dag_order_and_names_unknown() -> None:
    assert select_stages(["prepare", "bootstrap"], ["bootstrap", "prepare"]) == ["prepare", "bootstrap"]
    assert select_stages(["prepare", "bootstrap"], None) == ["prepare", "bootstrap"]
    with pytest.raises(ValueError, match="'bootstrp'"):
        select_stages(["prepare", "bootstrap"], ["bootstrp"])


def test_routes(tmp_path: Path) -> None:
    assert uses_dvc(tmp_path, "params.yaml")
    assert uses_dvc(tmp_path, "./params.yaml")
    assert not uses_dvc(tmp_path, "other.yaml")
    dvc = stage_command("prepare", "params.yaml", None, via_dvc=True)
    assert Path(dvc[0]).name == "dvc" and dvc[1:] == ["repro", "--single-item", "prepare"]
    direct = stage_command("bootstrap", "p.yaml", ["a.b=1", "c.d=2"], via_dvc=False)
    assert Path(direct[0]).name == "genprm"
    assert direct[1:] == ["bootstrap", "--params", "p.yaml", "--set", "a.b=1", "--set", "c.d=2"]


def test_user_errors_are_not_retried() -> None:
    def state(exc: BaseException) -> Any:
        return SimpleNamespace(result=lambda raise_on_failure=True: exc)

    user = StageFailed("prepare", ["genprm", "prepare"], 255, USER_ERROR_EXIT, "error: bad key")
    crash = StageFailed("prepare", ["genprm", "prepare"], 255, 137, "Killed")
    timeout = StageTimeout("prepare", ["genprm", "prepare"], -9, None, "timed out after 5 s")
    assert not retry_unless_user_error(None, None, state(user))
    assert not retry_unless_user_error(None, None, state(timeout))
    assert retry_unless_user_error(None, None, state(crash))
    assert retry_unless_user_error(None, None, state(RuntimeError("other")))
    assert "error: bad key" in str(user) and "exit 2" in str(user)


def test_training_stages_share_the_one_at_a_time_tag() -> None:
    assert TRAIN_TAG in stage_tags("train") and TRAIN_TAG in stage_tags("train_direct")
    assert TRAIN_TAG not in stage_tags("prepare") and "stage:prepare" in stage_tags("prepare")


def test_summary_markdown() -> None:
    text = summary_markdown(
        {"prepare": "ran", "label": "skipped"}, {"prepare.loaded": 100.0}, "http://x/1", ""
    )
    assert "| prepare | ran | loaded | 100 |" in text and "| label | skipped |" in text
    assert "[http://x/1](http://x/1)" in text and "completed" in text
    assert "failed: stage 'x' failed" in summary_markdown({}, {}, None, "stage 'x' failed\ntail")


# ------------------------------------------------------------------------------------------------ flow


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def project(repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "GENPRM_MLFLOW_PARENT_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return copy_project(repo_root, tmp_path / "project")


def _commit(project: Path) -> None:
    git = ["git", "-C", str(project), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)


def _mlflow_runs(project: Path) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("genprm")
    assert experiment is not None
    return list(client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]))


def _summary(flow_run_id: Any) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[SUMMARY_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    return str(artifact.data)


@pytest.mark.slow
def test_flow_runs_prepare_through_dvc(prefect_api: None, project: Path) -> None:
    state = offline_pipeline(stages=["prepare"], project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == {"prepare": "ran"}
    for name in ("train.parquet", "test.parquet", "processbench.jsonl"):
        assert (project / "data" / "prepared" / name).exists()
    assert json.loads((project / "metrics" / "prepare.json").read_text())["loaded"] == 100
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert list(lock["stages"]) == ["prepare"]
    assert not (project / "models" / "policy").exists()
    # MLflow: one parent run with the stage's nested run; the parent carries the stage metrics.
    parent, stage = _mlflow_runs(project)
    assert stage.info.run_name == "prepare" and stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert stage.data.metrics["loaded"] == 100 and parent.data.metrics["prepare.loaded"] == 100
    assert parent.info.status == stage.info.status == "FINISHED"
    assert parent.data.params["prepare.num_problems"] == "100"
    # The Prefect summary artifact: the stage, its metrics and the MLflow link.
    summary = _summary(state.state_details.flow_run_id)
    assert "| prepare | ran | duplicates_removed |" in summary and "| loaded | 100 |" in summary
    assert f"/runs/{parent.info.run_id}" in summary
    # The training stages' tag concurrency limit exists (created on the first run).
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_concurrency_limit_by_tag(TRAIN_TAG).concurrency_limit == 1
    # Up to date now: DVC skips the stage; the new parent run has no stage run under it.
    again = offline_pipeline(stages=["prepare"], project_dir=str(project), return_state=True)
    assert again.is_completed() and again.result() == {"prepare": "skipped"}
    runs = _mlflow_runs(project)
    assert len(runs) == 3 and runs[-1].data.tags["genprm.stage.prepare"] == "skipped"


@pytest.mark.slow
def test_flow_overrides_are_saved_as_a_dvc_experiment(prefect_api: None, project: Path) -> None:
    _commit(project)
    before = (project / "params.yaml").read_bytes()
    state = offline_pipeline(
        overrides=["prepare.num_problems=50"],
        stages=["prepare"],
        project_dir=str(project),
        experiment="fifty",
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert state.result() == {"prepare": "ran", "experiment": "fifty"}
    assert json.loads((project / "metrics" / "prepare.json").read_text())["loaded"] == 50
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["prepare"]["num_problems"] == 50
    assert (project / "params.yaml").read_bytes() == before  # restored after the run
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"],
        cwd=project,
        env=project_env(project),
        capture_output=True,
        text=True,
    )
    exps = [e for rev in json.loads(shown.stdout) for e in rev.get("experiments") or []]
    (exp,) = [e for e in exps if e.get("name") == "fifty"]
    (revision,) = exp["revs"]
    assert revision["data"]["params"]["params.yaml"]["data"]["prepare"]["num_problems"] == 50
    assert revision["data"]["metrics"]["metrics/prepare.json"]["data"]["loaded"] == 50
    parent = _mlflow_runs(project)[0]
    assert parent.data.params["prepare.num_problems"] == "50"


@pytest.mark.slow
@pytest.mark.parametrize("route", ["dvc", "overrides"])
def test_failing_stage_fails_the_flow_with_its_message(
    prefect_api: None, repo_root: Path, project: Path, route: str
) -> None:
    params = tiny_params(repo_root)
    if route == "dvc":
        params["prepare"]["bogus_key"] = 1
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        overrides = None
    else:
        overrides = ["prepare.bogus_key=1"]
    before = (project / "params.yaml").read_text()
    state = offline_pipeline(
        overrides=overrides, stages=["prepare"], project_dir=str(project), return_state=True
    )
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    message = str(exc)
    assert "'bogus_key'" in message and "unknown key" in message  # the stage's own error line
    if route == "dvc":
        assert isinstance(exc, StageFailed), repr(exc)
        assert "stage 'prepare' failed (exit 2)" in message
        (parent, stage) = _mlflow_runs(project)
        assert parent.info.status == stage.info.status == "FAILED"
        assert "unknown key" in stage.data.tags["genprm.error"]
    else:  # a bad override is refused before anything runs or params.yaml is touched
        assert isinstance(exc, ConfigError), repr(exc)
    assert (project / "params.yaml").read_text() == before
    assert not (project / "metrics" / "prepare.json").exists()


@pytest.mark.slow
def test_shards_fan_out_and_merge_into_dvc_lock(prefect_api: None, project: Path) -> None:
    stages = ["prepare", "bootstrap", "rollout"]
    state = offline_pipeline(stages=stages, shards=2, project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == {"prepare": "ran", "bootstrap": "ran", "rollout": "ran"}
    assert sorted(p.name for p in (project / "data" / "rollout" / "shards").glob("*.parquet")) == [
        "rollouts-0of2.parquet",
        "rollouts-1of2.parquet",
    ]
    status = subprocess.run(
        ["dvc", "status", "--json", *stages],
        cwd=project,
        env=project_env(project),
        capture_output=True,
        text=True,
    )
    assert json.loads(status.stdout) == {}  # dvc.lock records the merged table: the stages are up to date
    assert json.loads((project / "metrics" / "rollout.json").read_text())["shards"] == 2
    runs = {r.info.run_name: r for r in _mlflow_runs(project)}
    parent_id = next(r.info.run_id for name, r in runs.items() if name.startswith("pipeline"))
    for name in ("rollout [0/2]", "rollout [1/2]", "rollout [merge]", "prepare", "bootstrap"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent_id
    again = offline_pipeline(stages=stages, shards=2, project_dir=str(project), return_state=True)
    assert again.result() == {"prepare": "skipped", "bootstrap": "skipped", "rollout": "skipped"}


@pytest.mark.slow
def test_stage_timeout_kills_the_command(prefect_api: None, tmp_path: Path) -> None:
    marker = tmp_path / "child-alive"
    child = tmp_path / "child.py"
    child.write_text(f"import time, pathlib\ntime.sleep(4)\npathlib.Path({str(marker)!r}).touch()\n")
    command = ["bash", "-c", f"echo started; {sys.executable} {child}"]
    started = time.monotonic()
    state = run_stage("sleepy", command, str(tmp_path), {}, 1.0, return_state=True)
    assert state.is_failed() and time.monotonic() - started < 30  # not retried
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, StageTimeout) and "timed out after 1 s" in str(exc)
    time.sleep(5)
    assert not marker.exists()  # the stage's child process died with it


@pytest.mark.slow
def test_flow_rejects_an_unknown_stage(prefect_api: None, project: Path) -> None:
    state = offline_pipeline(stages=["nope"], project_dir=str(project), return_state=True)
    assert state.is_failed()
    assert "'nope'" in str(state.result(raise_on_failure=False))


@pytest.mark.slow
def test_module_entry_point(prefect_api: None, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.pipeline import main

    main(["--stages", "prepare", "--project-dir", str(project), "--set", "prepare.num_problems=40"])
    # No git commit in this copy: the run is not saved as an experiment (a warning says so).
    assert yaml.safe_load(capsys.readouterr().out) == {"prepare": "ran"}
    assert json.loads((project / "metrics" / "prepare.json").read_text())["loaded"] == 40
