"""Deployments (prefect.yaml) served by ``python -m flows.serve`` against a real ``prefect server``.

A server starts on a free loopback port with its own PREFECT_HOME in tmp; ``flows.serve`` creates the
process work pool, deploys both deployments from a throwaway copy of the project and runs a worker;
the test checks the nightly cron schedule, triggers the on-demand deployment with only the
``prepare`` stage and waits for the flow run to be COMPLETED (talking to the REST API with httpx).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest_project import copy_project, project_env

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(what: str, check: Any, timeout: float, procs: list[subprocess.Popen[Any]]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args} exited {proc.returncode} while waiting for {what}"
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = (tmp_path / "server.log").open("w")
    prefect = str(Path(sys.executable).parent / "prefect")
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait("the server", lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 120, [proc])
        env["PREFECT_API_URL"] = url
        yield url, env
    finally:
        _stop(proc)
        log.close()


def test_serve_deploys_and_runs_on_demand(
    repo_root: Path, tmp_path: Path, server: tuple[str, dict[str, str]]
) -> None:
    url, server_env = server
    project = copy_project(repo_root, tmp_path / "project")
    shutil.copy2(repo_root / "prefect.yaml", project / "prefect.yaml")
    env = {**project_env(project), **{k: v for k, v in server_env.items() if k.startswith("PREFECT_")}}
    env["PREFECT_WORKER_QUERY_SECONDS"] = "2"
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "flows.serve"],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = httpx.Client(base_url=url, timeout=10)
    try:

        def deployments() -> dict[str, Any] | None:
            found = {d["name"]: d for d in api.post("/deployments/filter", json={}).json()}
            return found if {"nightly", "on-demand"} <= set(found) else None

        found = _wait("the deployments", deployments, 180, [serve])
        nightly = found["nightly"]
        assert nightly["work_pool_name"] == "genprm-process"
        assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
        assert found["on-demand"]["schedules"] == []
        pool = api.get("/work_pools/genprm-process").json()
        assert pool["type"] == "process" and pool["concurrency_limit"] == 1

        def created() -> dict[str, Any] | None:
            # `flows.serve` may still be applying its deployments (an upsert): look the deployment up
            # again and retry until the server accepts the run (it answers without an id meanwhile).
            current = deployments()
            if current is None:
                return None
            response = api.post(
                f"/deployments/{current['on-demand']['id']}/create_flow_run",
                json={"parameters": {"stages": ["prepare"]}},
            )
            body = response.json() if response.status_code < 300 else {}
            return body if "id" in body else None

        run = _wait("a flow run of on-demand", created, 120, [serve])

        def final_state() -> str | None:
            state = api.get(f"/flow_runs/{run['id']}").json()["state"]["type"]
            return state if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        assert _wait("the flow run", final_state, 300, [serve]) == "COMPLETED", (
            tmp_path / "serve.log"
        ).read_text()
        assert (project / "metrics" / "prepare.json").exists()
        assert (project / "dvc.lock").exists() and (project / "mlflow.db").exists()
    finally:
        api.close()
        _stop(serve)
        log.close()
