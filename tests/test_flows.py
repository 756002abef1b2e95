"""Flow tests: the stage graph read from dvc.yaml, the stage commands, and the Prefect flow itself.

The flow runs against a temporary Prefect API (``prefect_test_harness``, one per session: it takes
10-20 s to start) inside a throwaway copy of the project (``conftest_project.copy_project``) with tiny
params, through real ``dvc repro`` and the real ``genprm`` entry points.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from conftest_project import copy_project, tiny_params

from flows.pipeline import (
    USER_ERROR_EXIT,
    StageFailed,
    _retry_unless_user_error,
    offline_pipeline,
    select_stages,
    stage_command,
    stage_order,
    uses_dvc,
)

# ------------------------------------------------------------------------------------------ stage graph


def _dvc_yaml(tmp_path: Path, stages: dict[str, Any]) -> Path:
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return path


def test_stage_order_of_the_shipped_dvc_yaml(repo_root: Path) -> None:
    assert stage_order(repo_root / "dvc.yaml") == ["prepare", "bootstrap", "rollout", "label"]


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
    assert uses_dvc(tmp_path, "params.yaml", None)
    assert uses_dvc(tmp_path, "./params.yaml", [])
    assert not uses_dvc(tmp_path, "params.yaml", ["bootstrap.train.steps=5"])
    assert not uses_dvc(tmp_path, "other.yaml", None)
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
    assert not _retry_unless_user_error(None, None, state(user))
    assert _retry_unless_user_error(None, None, state(crash))
    assert _retry_unless_user_error(None, None, state(RuntimeError("other")))
    assert "error: bad key" in str(user) and "exit 2" in str(user)


# ------------------------------------------------------------------------------------------------ flow


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def project(repo_root: Path, tmp_path: Path) -> Path:
    return copy_project(repo_root, tmp_path / "project")


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
    # Up to date now: DVC skips the stage.
    again = offline_pipeline(stages=["prepare"], project_dir=str(project), return_state=True)
    assert again.is_completed() and again.result() == {"prepare": "skipped"}


@pytest.mark.slow
def test_flow_with_overrides_runs_the_entry_point(prefect_api: None, project: Path) -> None:
    state = offline_pipeline(
        overrides=["prepare.num_problems=50"], stages=["prepare"], project_dir=str(project), return_state=True
    )
    assert state.is_completed(), state.message
    assert state.result() == {"prepare": "ran"}
    assert json.loads((project / "metrics" / "prepare.json").read_text())["loaded"] == 50
    assert not (project / "dvc.lock").exists()  # DVC did not run; the user's params.yaml is untouched
    assert yaml.safe_load((project / "params.yaml").read_text())["prepare"]["num_problems"] == 100


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
    state = offline_pipeline(
        overrides=overrides, stages=["prepare"], project_dir=str(project), return_state=True
    )
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, StageFailed), repr(exc)
    message = str(exc)
    assert "'bogus_key'" in message and "unknown key" in message  # the stage's own error line
    assert "stage 'prepare' failed (exit 2)" in message
    assert not (project / "metrics" / "prepare.json").exists()


@pytest.mark.slow
def test_flow_rejects_an_unknown_stage(prefect_api: None, project: Path) -> None:
    state = offline_pipeline(stages=["nope"], project_dir=str(project), return_state=True)
    assert state.is_failed()
    assert "'nope'" in str(state.result(raise_on_failure=False))


@pytest.mark.slow
def test_module_entry_point(prefect_api: None, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.pipeline import main

    main(["--stages", "prepare", "--project-dir", str(project), "--set", "prepare.num_problems=40"])
    assert yaml.safe_load(capsys.readouterr().out) == {"prepare": "ran"}
    assert json.loads((project / "metrics" / "prepare.json").read_text())["loaded"] == 40
