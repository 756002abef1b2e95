"""The pipeline as a Prefect 3 flow: each stage of ``dvc.yaml``, in DAG order, as one task.

    python -m flows.pipeline                                      # every stage, like `dvc repro`
    python -m flows.pipeline --stages prepare bootstrap           # some stages (still in DAG order)
    python -m flows.pipeline --set label.epsilon=0.5 --name eps05 # overrides, saved as a DVC experiment
    python -m flows.pipeline --shards 4                           # rollout and label as 4 mapped shards
    python -m flows.pipeline --shards 4 --shard-deployment genprm-shard/shard   # ... as deployment runs

It runs on Prefect's local ephemeral API (or the server in ``PREFECT_API_URL``); ``python -m flows.serve``
serves the deployments of ``prefect.yaml``. The flow is thin: it reads the stage graph from ``dvc.yaml``
and runs each stage through DVC (``flows/stages.py``): ``dvc repro --single-item <stage>``, so an
up-to-date stage is skipped and ``dvc.lock`` stays the truth about the outputs.

- **Overrides** (``--set`` / the ``overrides`` parameter) are validated, written into ``params.yaml``
  (comments kept) for the run, exactly what ``dvc exp run -S`` does, and the result is saved as a DVC
  experiment (``dvc exp save``; see ``dvc exp show``, ``dvc exp apply <name>``). Afterwards
  ``params.yaml`` is restored, so the next plain run rebuilds what the experiment changed. Saving an
  experiment needs a git commit in the project; without one the flow warns and skips the save.
- **Another params file** (``--params other.yaml``): each stage is ``genprm <stage> --params P`` (DVC
  cannot see that file: nothing is skipped, ``dvc.lock`` is untouched).
- **Shards** (``shards > 1``): ``rollout`` and ``label`` run as ``shards`` mapped tasks (``--set
  <stage>.shard=i/n``), then merge; on the DVC route ``dvc commit`` records the merged outputs in
  ``dvc.lock``. An up-to-date stage (``dvc status``) is skipped. With ``shard_deployment`` each shard
  is instead one flow run of that deployment (``flows/shards.py``), so its work pool spreads them.
- **Tracking**: one MLflow parent run per flow run with a nested run per stage execution
  (``components/platform/tracking.py``); a markdown artifact ``genprm-pipeline-summary`` lists each stage's
  outcome, its key metrics and the MLflow run link.
- **Failures**: a failing stage fails the flow with the stage's own stderr tail (``StageFailed``);
  transient failures are retried with backoff, user errors (exit 2) and timeouts are not. Training
  stages carry the tag ``genprm-train``, whose concurrency limit (1) is created when missing.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from components.platform import tracking
from components.platform.dvcfile import read_stages, stage_order, stage_paths
from flows.shards import run_shards_as_deployments
from flows.stages import (
    DEFAULT_TIMEOUT_S,
    TRAIN_TAG,
    USER_ERROR_EXIT,
    StageFailed,
    StageTimeout,
    executable,
    merge_stage,
    retry_unless_user_error,
    run_shard,
    run_stage,
    stage_command,
    stage_is_current,
    stage_tags,
)

__all__ = [
    "USER_ERROR_EXIT",
    "StageFailed",
    "StageTimeout",
    "main",
    "offline_pipeline",
    "retry_unless_user_error",
    "select_stages",
    "stage_command",
    "stage_order",
    "uses_dvc",
]

SHARDED_STAGES = ("rollout", "label")  # stages whose entry point takes <stage>.shard=i/n | merge
SUMMARY_KEY = "genprm-pipeline-summary"
SUMMARY_METRICS = 12  # per stage, in the markdown summary (all of them go to MLflow)


def select_stages(order: list[str], wanted: list[str] | None) -> list[str]:
    """``wanted`` (all when None) in DAG order; an unknown stage name is an error naming it."""
    if wanted is None:
        return order
    unknown = [s for s in wanted if s not in order]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r} (stages in dvc.yaml: {', '.join(order)})")
    return [s for s in order if s in wanted]


def uses_dvc(project_dir: Path, params: str) -> bool:
    """True for the ``dvc repro`` route: the project's own params.yaml (overrides are written into it)."""
    return (project_dir / params).resolve() == (project_dir / "params.yaml").resolve()


# ------------------------------------------------------------------------------- params and experiments


def check_overrides(params_path: Path, overrides: list[str]) -> None:
    """Fail before anything runs when an override names an unknown key or has a bad value."""
    from components.platform.params import load_params

    load_params(params_path, overrides)


@contextmanager
def overridden_params(params_path: Path, overrides: list[str]) -> Iterator[None]:
    """``params_path`` with ``overrides`` written in (comments kept) for the block, then restored."""
    from ruamel.yaml import YAML

    original = params_path.read_bytes()
    rt = YAML()
    rt.preserve_quotes = True
    data = rt.load(original)
    for item in overrides:
        dotted, raw = item.split("=", 1)
        *parents, last = dotted.strip().split(".")
        node = data
        for key in parents:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        node[last] = yaml.safe_load(raw) if raw.strip() else ""
    with params_path.open("w") as fh:
        rt.dump(data, fh)
    try:
        yield
    finally:
        params_path.write_bytes(original)


def experiment_files(project_dir: Path) -> list[str]:
    """``dvc.lock`` and every stage's metrics and plots files that exist (what ``dvc exp show`` reads)."""
    names = ["dvc.lock"]
    for stage in read_stages(project_dir / "dvc.yaml"):
        paths = stage_paths(project_dir / "dvc.yaml", stage)
        names += [str(p) for p in paths.metrics + paths.plots]
    return [n for n in dict.fromkeys(names) if (project_dir / n).is_file()]


def save_experiment(project_dir: Path, name: str | None, stages: list[str]) -> str | None:
    """``dvc exp save`` of the workspace (caching ``stages``' outputs); its name, or None without a commit."""
    logger = get_run_logger()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, check=False)
    if head.returncode != 0:
        logger.warning("not saved as a DVC experiment: the project has no git commit yet")
        return None
    command = [executable("dvc"), "exp", "save", "--force", *(["-n", name] if name else []), *stages]
    for path in experiment_files(project_dir):  # the experiment's results, even where git ignores them
        command += ["--include-untracked", path]
    proc = subprocess.run(command, cwd=project_dir, capture_output=True, text=True, check=False)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise RuntimeError(f"dvc exp save failed (exit {proc.returncode}): {output}")
    found = re.search(r"saved as: (\S+)", output)
    logger.info("saved as DVC experiment %s", found.group(1) if found else name)
    return found.group(1) if found else name


def ensure_tag_limit(tag: str, limit: int) -> None:
    """Create the tag concurrency limit ``tag`` (``limit`` concurrent task runs) if it is missing."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_concurrency_limit_by_tag(tag)
        except ObjectNotFound:
            client.create_concurrency_limit(tag=tag, concurrency_limit=limit)


# ------------------------------------------------------------------------------------------ stages


@dataclass(frozen=True)
class Route:
    """How stages run: through DVC (overrides written into params.yaml) or entry points with --set."""

    root: Path
    params: str
    via_dvc: bool
    overrides: list[str]  # passed as --set on each stage's command line (the entry-point route)
    experiment_overrides: list[str]  # written into params.yaml and saved as a DVC experiment
    shard_deployment: str | None = None  # shards as runs of this deployment instead of mapped tasks


def run_one(stage: str, route: Route, shards: int, env: dict[str, str], timeout_s: float) -> str:
    """Run ``stage`` (as mapped shards and a merge when ``shards > 1`` and it is shardable)."""
    options: dict[str, Any] = {"tags": stage_tags(stage)}
    root = str(route.root)
    if shards <= 1 or stage not in SHARDED_STAGES:
        command = stage_command(stage, route.params, route.overrides, route.via_dvc)
        return run_stage.with_options(**options)(stage, command, root, env, timeout_s)
    if route.via_dvc and stage_is_current(stage, root):
        get_run_logger().info("stage %s is up to date: its shards are skipped", stage)
        return "skipped"
    specs = [f"{i}/{shards}" for i in range(shards)]
    if route.shard_deployment:
        run_shards_as_deployments(
            route.shard_deployment, stage, specs, route.params, route.overrides, root, env, timeout_s
        )
        return _merge(stage, route, env, timeout_s, options)
    futures = run_shard.with_options(**options).map(
        unmapped(stage),
        specs,
        unmapped(route.params),
        unmapped(route.overrides),
        unmapped(root),
        env=unmapped(env),
        timeout_s=unmapped(timeout_s),
    )
    futures.result()  # raises the first failed shard's StageFailed
    return _merge(stage, route, env, timeout_s, options)


def _merge(stage: str, route: Route, env: dict[str, str], timeout_s: float, options: dict[str, Any]) -> str:
    args = (route.params, route.overrides, str(route.root), env, timeout_s, route.via_dvc)
    return str(merge_stage.with_options(**options)(stage, *args))


def summary_markdown(results: dict[str, str], metrics: dict[str, float], link: str | None, error: str) -> str:
    """The run's markdown summary: stage outcomes, key metrics, the MLflow link."""
    lines = ["# GenPRM pipeline", ""]
    lines.append(f"**Status**: {'failed: ' + error.splitlines()[0] if error else 'completed'}  ")
    lines.append(f"**MLflow run**: [{link}]({link})" if link else "**MLflow run**: tracking off")
    lines += ["", "| stage | outcome | metric | value |", "|---|---|---|---|"]
    for stage, outcome in results.items():
        keys = [k for k in metrics if k.startswith(f"{stage}.")][:SUMMARY_METRICS] or [""]
        for i, key in enumerate(keys):
            value = f"{metrics[key]:.4g}" if key else ""
            first = (stage, outcome) if i == 0 else ("", "")
            lines.append(f"| {first[0]} | {first[1]} | {key[len(stage) + 1 :]} | {value} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ flow


def _flow_run_name() -> str:
    try:
        return f"pipeline {get_run_context().flow_run.name}"  # type: ignore[union-attr]
    except Exception:
        return f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}"


@flow(name="offline-pipeline")
def offline_pipeline(
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    stages: list[str] | None = None,
    project_dir: str = ".",
    shards: int = 1,
    experiment: str | None = None,
    timeouts: dict[str, float] | None = None,
    shard_deployment: str | None = None,
) -> dict[str, str]:
    """Run the DVC stages (all, or ``stages``) in DAG order; returns each stage's 'ran' or 'skipped'.

    ``overrides`` (``section.key=value``) are recorded as the DVC experiment ``experiment`` (a name is
    generated when None); ``shards`` fans rollout and label out; ``timeouts`` maps a stage to seconds
    (default 6 h). ``params`` is relative to ``project_dir``, the folder holding ``dvc.yaml``.
    ``shard_deployment`` (e.g. ``genprm-shard/shard``) runs each shard as a run of that deployment.
    """
    root = Path(project_dir).resolve()
    selected = select_stages(stage_order(root / "dvc.yaml"), stages)
    via_dvc = uses_dvc(root, params)
    overrides = list(overrides or [])
    if overrides:
        check_overrides(root / params, overrides)
    logger = get_run_logger()
    logger.info("stages %s via %s", ", ".join(selected), "dvc repro" if via_dvc else "genprm entry points")
    ensure_tag_limit(TRAIN_TAG, 1)
    # On the DVC route the overrides go into params.yaml (like `dvc exp run -S`), not on command lines.
    route = Route(
        root, params, via_dvc, [] if via_dvc else overrides, overrides if via_dvc else [], shard_deployment
    )
    with (
        overridden_params(root / params, overrides) if route.experiment_overrides else _nothing(),
        tracking.pipeline_run(
            root, Path(params), _flow_run_name(), _prefect_tags(), route.overrides
        ) as parent,
    ):
        return _run_stages(selected, route, parent, shards, experiment, timeouts)


def _run_stages(
    selected: list[str],
    route: Route,
    parent: tracking.PipelineRun,
    shards: int,
    experiment: str | None,
    timeouts: dict[str, float] | None,
) -> dict[str, str]:
    env = parent.env()
    results: dict[str, str] = {}
    metrics: dict[str, float] = {}
    error = ""
    try:
        for stage in selected:
            timeout_s = float((timeouts or {}).get(stage, DEFAULT_TIMEOUT_S))
            results[stage] = run_one(stage, route, shards, env, timeout_s)
            metrics.update(parent.record_stage(stage, results[stage]))
        if route.via_dvc and route.experiment_overrides:
            saved = save_experiment(route.root, experiment, selected)
            if saved:
                results["experiment"] = saved
    except BaseException as exc:
        error = str(exc) or type(exc).__name__
        raise
    finally:
        markdown = summary_markdown(results, metrics, parent.link, error)
        create_markdown_artifact(markdown, key=SUMMARY_KEY, description="GenPRM pipeline: stages and metrics")
    return results


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _prefect_tags() -> dict[str, str]:
    try:
        run: Any = get_run_context().flow_run  # type: ignore[union-attr]
        return {"prefect.flow_run_id": str(run.id), "prefect.flow_run_name": str(run.name)}
    except Exception:
        return {}


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.pipeline [--params P] [--set k=v ...] [--stages S ...] [--shards N] [--name E]``."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--params", default="params.yaml", help="The params file (relative to the project).")
    parser.add_argument("--set", dest="overrides", action="append", help="Override section.key=value.")
    parser.add_argument("--stages", nargs="+", help="Run only these stages (in DAG order).")
    parser.add_argument("--project-dir", default=".", help="The folder holding dvc.yaml.")
    parser.add_argument("--shards", type=int, default=1, help="Shard rollout and label into N mapped tasks.")
    parser.add_argument("--name", dest="experiment", help="DVC experiment name for a run with overrides.")
    parser.add_argument(
        "--shard-deployment", help="Run each shard as a run of this deployment (genprm-shard/shard)."
    )
    args = parser.parse_args(argv)
    logging.getLogger("genprm.tracking").setLevel(logging.INFO)
    result = offline_pipeline(
        params=args.params,
        overrides=args.overrides,
        stages=args.stages,
        project_dir=args.project_dir,
        shards=args.shards,
        experiment=args.experiment,
        shard_deployment=args.shard_deployment,
    )
    print(yaml.safe_dump(result, sort_keys=False), end="")


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    main()
