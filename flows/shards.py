"""Each rollout/label shard as its own flow run of a deployment, so a work pool spreads them out.

    prefect deploy --name shard                           # genprm-shard/shard on the pool in prefect.yaml
    prefect deploy --name shard --pool my-pool            # ... or on another work pool
    python -m flows.pipeline --shards 8 --shard-deployment genprm-shard/shard

The pipeline flow (``flows/pipeline.py``) fans a sharded stage out either as mapped tasks in its own
process (the default) or, given ``shard_deployment``, as one run of that deployment per shard
(:func:`run_shards_as_deployments`, Prefect's ``run_deployment``): a Kubernetes work pool starts one
Job per shard on the GPU nodes (``infra/k8s``), a process pool one subprocess per worker slot. It waits
for every shard run, fails with the first failed shard's message, then merges as usual.

:func:`stage_shard` is the deployed flow: it runs the ``run_shard`` task of ``flows/stages.py``
(``genprm <stage> --set <stage>.shard=i/n``, same retries, timeout and log streaming) in
``project_dir``. Every shard run must see the same project folder (the pipeline passes its own path;
on a cluster, a shared volume mounted at the same path) and the MLflow settings the pipeline hands it
in ``env``, so its nested run lands under the pipeline's parent run.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import FlowRun

from flows.stages import DEFAULT_TIMEOUT_S, StageFailed, StageTimeout, run_shard, stage_tags

SHARD_FLOW = "genprm-shard"
POLL_S = 2.0
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@flow(name=SHARD_FLOW, flow_run_name="{stage}[{shard}]", log_prints=True)
def stage_shard(
    stage: str,
    shard: str,
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    project_dir: str = ".",
    env: dict[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> str:
    """Run shard ``shard`` (``i/n``) of ``stage`` in ``project_dir``; returns the shard spec."""
    options: dict[str, Any] = {"tags": stage_tags(stage)}
    task = run_shard.with_options(**options)
    return str(task(stage, shard, params, list(overrides or []), project_dir, dict(env or {}), timeout_s))


def run_shards_as_deployments(
    deployment: str,
    stage: str,
    specs: list[str],
    params: str,
    overrides: list[str],
    project_dir: str,
    env: dict[str, str],
    timeout_s: float,
) -> list[str]:
    """Start one run of ``deployment`` per shard spec, wait for all; raise on the first failed one."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    runs: list[FlowRun] = []
    for spec in specs:
        parameters = {
            "stage": stage,
            "shard": spec,
            "params": params,
            "overrides": overrides,
            "project_dir": project_dir,
            "env": env,
            "timeout_s": timeout_s,
        }
        run = run_deployment(deployment, parameters=parameters, timeout=0, flow_run_name=f"{stage}[{spec}]")
        assert isinstance(run, FlowRun)  # called from a sync flow: the run itself, not a coroutine
        runs.append(run)
        logger.info("shard %s of %s: flow run %s of %s", spec, stage, run.id, deployment)
    finals = wait_for_runs(runs, timeout_s, stage)
    failed = [(spec, run) for spec, run in zip(specs, finals, strict=True) if _state(run) != "COMPLETED"]
    if failed:
        spec, run = failed[0]
        message = run.state.message if run.state and run.state.message else "(no message)"
        command = ["flow run", str(run.id), f"of {deployment}", f"{stage}.shard={spec}"]
        raise StageFailed(stage, command, 1, None, f"{_state(run)}: {message}")
    return specs


def _state(run: FlowRun) -> str:
    return str(run.state.type.value) if run.state else "PENDING"


def wait_for_runs(runs: list[FlowRun], timeout_s: float, stage: str) -> list[FlowRun]:
    """Poll the flow runs until each is final; past ``timeout_s`` cancel the rest and raise."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            current = [client.read_flow_run(run.id) for run in runs]
            if all(_state(run) in FINAL for run in current):
                return current
            if time.monotonic() > deadline:
                for run in current:
                    if _state(run) not in FINAL:
                        client.set_flow_run_state(run.id, Cancelled(message="shard timed out"), force=True)
                raise StageTimeout(stage, ["shard flow runs"], -9, None, f"timed out after {timeout_s:g} s")
            time.sleep(POLL_S)
