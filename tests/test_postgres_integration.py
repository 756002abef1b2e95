"""The team stack's servers for real: PostgreSQL under ``mlflow server`` and ``prefect server``, on loopback.

Debian's PostgreSQL (``scripts/setup.sh`` installs it; the test is skipped with the reason where its
binaries are absent): ``initdb`` of a throwaway cluster owned by the ``postgres`` user (we may run as
root, which PostgreSQL refuses), started on a free loopback port with databases ``mlflow`` and
``prefect``. ``mlflow server`` keeps its runs there (artifacts in a temporary folder, proxied) and
``prefect server`` its flow runs (``postgresql+asyncpg``). The offline pipeline (prepare, bootstrap and
rollout of a tiny project copy) runs against both; the test checks the flow run is COMPLETED in the
Prefect API and the MLflow parent and nested runs with their params, metrics and artifacts, then
restarts PostgreSQL and the MLflow server and checks that nothing tracked was lost. Servers and
cluster are removed even when the test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest_project import copy_project, project_env, tiny_params
from test_deployments import _free_port, _stop, _wait

pytestmark = pytest.mark.slow

STAGES = ["prepare", "bootstrap", "rollout"]
SMALLER = ["rollout.max_problems=2"]
DB_USER = "genprm"


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout), else ``initdb`` on PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)],
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass
class Cluster:
    """A PostgreSQL cluster in ``datadir`` on 127.0.0.1:``port``, run as ``as_user`` when we are root."""

    bindir: Path
    datadir: Path
    port: int
    as_user: list[str]

    def run(self, tool: str, *args: str) -> None:
        cmd = [*self.as_user, str(self.bindir / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.datadir.parent)
        assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.datadir}"
        log = str(self.datadir / "server.log")
        self.run("pg_ctl", "-D", str(self.datadir), "-l", log, "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{DB_USER}@127.0.0.1:{self.port}/{database}"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    pytest.importorskip("psycopg2", reason="psycopg2 (the dev extra's psycopg2-binary) is not installed")
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("PostgreSQL binaries not found (scripts/setup.sh installs Debian's postgresql)")
    as_user: list[str] = []
    # Outside pytest's 0700 tmp folder: the postgres user must reach the data directory.
    datadir = Path(tempfile.mkdtemp(prefix="genprm-pg-")) / "data"
    datadir.mkdir(mode=0o700)
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None or subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
            pytest.skip("running as root without runuser or a postgres user: PostgreSQL refuses root")
        as_user = [runuser, "-u", "postgres", "--"]
        shutil.chown(datadir.parent, "postgres")
        shutil.chown(datadir, "postgres")
    pg = Cluster(bindir, datadir, _free_port(), as_user)
    started = False
    try:
        pg.run("initdb", "-D", str(datadir), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-instructions")
        pg.start()
        started = True
        for database in ("mlflow", "prefect"):
            pg.run("createdb", "-h", "127.0.0.1", "-p", str(pg.port), "-U", DB_USER, database)
        yield pg
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"])
        shutil.rmtree(datadir.parent, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- servers


def _start(args: list[str], env: dict[str, str], log: Path, health: str) -> subprocess.Popen[Any]:
    with log.open("a") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(f"{args[1]} at {health}", lambda: httpx.get(health, timeout=2).status_code == 200, 180, [proc])
    except BaseException:
        _stop(proc)
        raise AssertionError(f"{' '.join(args)} did not start:\n{log.read_text()[-3000:]}") from None
    return proc


def start_mlflow(pg: Cluster, artifacts: Path, log: Path) -> tuple[subprocess.Popen[Any], str]:
    port = _free_port()
    args = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", pg.url("mlflow")]
    args += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    return _start(args, dict(os.environ), log, f"{url}/health"), url


def start_prefect(pg: Cluster, home: Path, log: Path) -> tuple[subprocess.Popen[Any], str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_DATABASE_CONNECTION_URL=pg.url("prefect", "postgresql+asyncpg"),
    )
    args = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1"]
    args += ["--port", str(port)]
    url = f"http://127.0.0.1:{port}/api"
    return _start(args, env, log, f"{url}/health"), url


# ------------------------------------------------------------------------------------------ snapshots


def tracked(uri: str) -> dict[str, Any]:
    """Everything MLflow holds about the experiment ``genprm``: per run its name, parent, status, params,
    metrics, tags and artifact paths (the content of the files too)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("genprm")
    assert experiment is not None, "no MLflow experiment 'genprm'"
    snapshot: dict[str, Any] = {}
    for run in client.search_runs([experiment.experiment_id]):
        artifacts = _artifacts(client, run.info.run_id)
        snapshot[run.info.run_id] = {
            "name": run.info.run_name,
            "parent": run.data.tags.get("mlflow.parentRunId"),
            "status": run.info.status,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
            "tags": {k: v for k, v in run.data.tags.items() if k.startswith("genprm.")},
            "artifacts": artifacts,
        }
    return snapshot


def _artifacts(client: Any, run_id: str, path: str | None = None) -> dict[str, int]:
    """Artifact path -> size in bytes, recursively, as the server lists them."""
    found: dict[str, int] = {}
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found.update(_artifacts(client, run_id, item.path))
        else:
            found[item.path] = int(item.file_size or 0)
    return found


def rows(pg: Cluster, database: str, table: str) -> int:
    """The number of rows of ``table`` in ``database``, read from PostgreSQL itself."""
    import psycopg2

    with psycopg2.connect(pg.url(database)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")  # a fixed table name from this module
        return int(cur.fetchone()[0])


def prefect_state(api: str, flow_run_id: str) -> str | None:
    resp = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=5)
    return str(resp.json()["state"]["type"]) if resp.status_code == 200 else None


def pipeline_flow_runs(api: str) -> list[dict[str, Any]]:
    body = {"flows": {"name": {"any_": ["offline-pipeline"]}}}
    return list(httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json())


# --------------------------------------------------------------------------------------------- the test


def test_pipeline_on_postgres_backed_servers_survives_restarts(
    cluster: Cluster, repo_root: Path, tmp_path: Path
) -> None:
    procs: dict[str, subprocess.Popen[Any]] = {}
    try:
        procs["mlflow"], mlflow_url = start_mlflow(cluster, tmp_path / "artifacts", tmp_path / "mlflow.log")
        procs["prefect"], api = start_prefect(cluster, tmp_path / "prefect-home", tmp_path / "prefect.log")
        project = copy_project(repo_root, tmp_path / "project", tiny_params(repo_root, SMALLER))
        env = {**project_env(project), "PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": mlflow_url}
        env["PREFECT_HOME"] = str(tmp_path / "client-home")
        proc = subprocess.run(
            [sys.executable, "-m", "flows.pipeline", "--stages", *STAGES],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        (flow_run,) = pipeline_flow_runs(api)
        assert flow_run["state"]["type"] == "COMPLETED"
        before = tracked(mlflow_url)
        _check_runs(before, project)
        assert rows(cluster, "mlflow", "runs") == len(before) == 1 + len(STAGES)  # stored in PostgreSQL
        assert rows(cluster, "prefect", "flow_run") == 1

        _stop(procs.pop("mlflow"))
        cluster.stop()
        cluster.start()
        procs["mlflow"], mlflow_url = start_mlflow(cluster, tmp_path / "artifacts", tmp_path / "mlflow.log")
        assert tracked(mlflow_url) == before
        # The Prefect server reconnects to the restarted database: its record of the run is intact.
        state = _wait("the Prefect API after the restart", lambda: prefect_state(api, flow_run["id"]), 60, [])
        assert state == "COMPLETED"
    finally:
        for proc in procs.values():
            _stop(proc)


def _check_runs(snapshot: dict[str, Any], project: Path) -> None:
    """One parent run with a nested, finished run per stage, each with params, metrics and artifacts."""
    parents = [run_id for run_id, run in snapshot.items() if run["parent"] is None]
    assert len(parents) == 1, snapshot
    parent = snapshot[parents[0]]
    assert parent["name"].startswith("pipeline") and parent["status"] == "FINISHED"
    nested = {run["name"]: run for run in snapshot.values() if run["parent"] == parents[0]}
    assert sorted(nested) == sorted(STAGES)
    assert parent["params"]["prepare.num_problems"] == "100"
    assert parent["metrics"]["prepare.loaded"] == 100
    for stage, run in nested.items():
        assert run["status"] == "FINISHED" and run["metrics"], stage
        assert run["params"]["rollout.max_problems"] == "2" and run["tags"]["genprm.stage"] == stage
        assert f"metrics/{stage}.json" in run["artifacts"], run["artifacts"]
        assert (
            run["artifacts"][f"metrics/{stage}.json"]
            == (project / "metrics" / f"{stage}.json").stat().st_size
        )
