"""MLflow tracking: the one module that calls MLflow. Stages return metric dicts; this logs them.

One pipeline execution is one **parent run**; each stage run (shards and merges included) is a
**nested run** under it. The Prefect flow opens the parent with :func:`pipeline_run` and hands its id
to the stage subprocesses in ``GENPRM_MLFLOW_PARENT_RUN_ID`` (with ``MLFLOW_TRACKING_URI``);
``genprm <stage>`` (``components.platform.cli.run_entry``) wraps the stage in :func:`stage_run`, which nests
under that parent, or opens a top-level run of its own when the stage runs outside the flow
(``dvc repro``, the CLI).

What a run holds:
- params: every key of params.yaml with the overrides applied, flattened to ``section.key``;
- metrics: the numeric leaves of the stage's metrics dict (``a.b.c``); the parent also gets them as
  ``<stage>.<key>``, so two pipeline runs compare side by side in the MLflow UI;
- artifacts: the stage's metrics and plots files and its ``reports/`` outputs (Data Docs HTML,
  rationale samples) that this run wrote (a file older than the run is not logged);
- inputs: the upstream outputs the stage reads, as MLflow datasets whose digest is the DVC md5 from
  ``dvc.lock`` (also tags ``genprm.input.<path>``);
- tags: ``genprm.stage``, ``genprm.shard``, ``genprm.git_commit``, ``genprm.dvc_lock_md5`` (the lock
  the stage started from; the parent is tagged with the lock at the end of the pipeline).

Trainers logging into the stage's run (TRL / transformers ``report_to=["mlflow"]``): while the stage's
``main`` runs, its nested run is MLflow's ACTIVE run in that process (``mlflow.start_run(run_id=...)``)
and ``MLFLOW_RUN_ID`` is removed from the environment. transformers' ``MLflowCallback`` then finds an
active run, logs its params and metrics into it and, not having started it, does not end it. (Setting
``MLFLOW_RUN_ID`` as well would make the callback call ``start_run`` again and fail on the active run.)
A trainer launched as a separate process (``accelerate launch``) should get ``MLFLOW_RUN_ID`` set to
:attr:`StageRun.run_id` in that process's environment instead.

Settings (environment): ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db`` at the project root,
artifacts in ``mlartifacts/``), ``MLFLOW_EXPERIMENT_NAME`` (default ``genprm``), ``GENPRM_TRACKING=0``
turns tracking off. Tracking is best effort: an unreachable server or a failing store logs a warning
and the stage runs on (DVC's outputs are the record of truth; a pipeline must not fail because a
dashboard is down).

    mlflow ui --backend-store-uri sqlite:///mlflow.db    # then http://127.0.0.1:5000
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.platform import dvcfile
from components.platform.tracker import (
    ENV_ENABLED,
    ENV_PARENT,
    REPORTS_DIR,
    Tracker,
    _short,
    enabled,
    experiment_name,
    flatten,
    guarded,
    numeric_leaves,
    project_tags,
    raw_params,
    run_link,
    tracking_uri,
)

__all__ = [
    "ENV_ENABLED",
    "ENV_PARENT",
    "PipelineRun",
    "StageRun",
    "Tracker",
    "enabled",
    "experiment_name",
    "flatten",
    "numeric_leaves",
    "pipeline_run",
    "process_run",
    "project_tags",
    "run_link",
    "stage_run",
    "tracking_uri",
]


# ------------------------------------------------------------------------------------------ stage runs


@dataclass
class StageRun:
    """The MLflow run of one stage execution (``run_id`` None when tracking is off)."""

    stage: str
    tracker: Tracker | None = None
    run_id: str | None = None
    logged: dict[str, float] = field(default_factory=dict)

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Log the numeric leaves of the stage's metrics dict (``a.b.c``) into this run."""
        self.logged = numeric_leaves(metrics)
        if self.tracker is not None and self.run_id is not None:
            guarded("log metrics", self.tracker.log_metrics, self.run_id, self.logged)


def stage_files(project_dir: Path, stage: str) -> list[Path]:
    """The stage's metrics and plots files and its outputs under ``reports/`` (plus ``reports/<stage>``)."""
    paths = dvcfile.stage_paths(Path(project_dir) / "dvc.yaml", stage)
    names = paths.metrics + paths.plots + [o for o in paths.outs if o.parts[:1] == (REPORTS_DIR,)]
    found = [Path(project_dir) / str(p) for p in names]
    found.append(Path(project_dir) / REPORTS_DIR / stage)
    return [p for p in dict.fromkeys(found) if p.exists()]


@contextlib.contextmanager
def _active(run_id: str, uri: str) -> Iterator[None]:
    """Make ``run_id`` the active run of this process (trainer callbacks log into it)."""
    import mlflow

    saved = os.environ.pop("MLFLOW_RUN_ID", None)
    mlflow.set_tracking_uri(uri)
    active = guarded("activate the run", mlflow.start_run, run_id=run_id)
    try:
        yield
    finally:
        if active is not None and mlflow.active_run() is not None:
            guarded("deactivate the run", mlflow.end_run)
        if saved is not None:
            os.environ["MLFLOW_RUN_ID"] = saved


def _shard_of(stage: str, params: dict[str, Any]) -> str:
    section = params.get(stage)
    return str(section.get("shard", "0/1")) if isinstance(section, dict) else "0/1"


@contextlib.contextmanager
def stage_run(
    stage: str, params_path: Path, overrides: list[str] | None, project_dir: Path = Path(".")
) -> Iterator[StageRun]:
    """Track one stage execution: nested under ``$GENPRM_MLFLOW_PARENT_RUN_ID`` or top level.

    The run ends FINISHED when the block succeeds and FAILED (tag ``genprm.error``) when it raises.
    """
    tracker = Tracker.connect(project_dir)
    run = StageRun(stage, tracker)
    if tracker is None:
        yield run
        return
    params = raw_params(params_path, overrides)
    shard = _shard_of(stage, params)
    name = stage if shard == "0/1" else f"{stage} [{shard}]"
    tags = {"genprm.stage": stage, "genprm.shard": shard, **project_tags(Path(project_dir))}
    run.run_id = guarded("start a run", tracker.start, name, os.environ.get(ENV_PARENT) or None, tags)
    if run.run_id is None:
        yield run
        return
    started = time.time()
    guarded("log params", tracker.log_params, run.run_id, params)
    inputs = guarded("read dvc.lock", dvcfile.stage_inputs, Path(project_dir), stage) or []
    guarded("log inputs", tracker.log_inputs, run.run_id, inputs)
    ok, message = False, None
    try:
        with _active(run.run_id, tracker.uri):
            yield run
        ok = True
    except BaseException as exc:
        message = _short(exc)
        raise
    finally:
        files = guarded("list the stage's files", stage_files, Path(project_dir), stage) or []
        guarded("log artifacts", tracker.log_files, run.run_id, files, started)
        guarded("end the run", tracker.finish, run.run_id, ok, message)


# --------------------------------------------------------------------------------------- pipeline runs


@dataclass
class PipelineRun:
    """The parent run of one pipeline execution (``run_id`` None when tracking is off)."""

    project_dir: Path
    params_path: Path
    tracker: Tracker | None = None
    run_id: str | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def link(self) -> str | None:
        return self.tracker.link(self.run_id) if self.tracker and self.run_id else None

    def env(self) -> dict[str, str]:
        """Environment for stage subprocesses: they nest their runs under this one."""
        if self.tracker is None or self.run_id is None:
            return {}
        return {"MLFLOW_TRACKING_URI": self.tracker.uri, ENV_PARENT: self.run_id}

    def record_stage(self, stage: str, outcome: str) -> dict[str, float]:
        """Tag the stage's outcome and log its metrics files into the parent as ``<stage>.<key>``."""
        paths = dvcfile.stage_paths(self.project_dir / "dvc.yaml", stage).metrics
        metrics: dict[str, float] = {}
        for path in paths:
            file = self.project_dir / str(path)
            if file.suffix == ".json" and file.is_file():
                metrics.update(numeric_leaves(json.loads(file.read_text()), f"{stage}."))
        if self.tracker is not None and self.run_id is not None:
            guarded("tag the stage", self.tracker.set_tags, self.run_id, {f"genprm.stage.{stage}": outcome})
            guarded("log metrics", self.tracker.log_metrics, self.run_id, metrics)
        return metrics


@contextlib.contextmanager
def pipeline_run(
    project_dir: Path,
    params_path: Path,
    name: str,
    tags: dict[str, str] | None = None,
    overrides: list[str] | None = None,
) -> Iterator[PipelineRun]:
    """Open the parent run of a pipeline execution; it ends FAILED if the block raises.

    Params are logged at the end (the flow may write overrides into params.yaml first), with the git
    commit and the md5 of the final ``dvc.lock``.
    """
    project_dir = Path(project_dir)
    tracker = Tracker.connect(project_dir)
    run = PipelineRun(project_dir, project_dir / params_path, tracker, overrides=list(overrides or []))
    if tracker is not None:
        run.run_id = guarded(
            "start a run", tracker.start, name, None, {"genprm.pipeline": "1", **(tags or {})}
        )
    ok, message = False, None
    try:
        yield run
        ok = True
    except BaseException as exc:
        message = _short(exc)
        raise
    finally:
        if tracker is not None and run.run_id is not None:
            guarded("log params", tracker.log_params, run.run_id, raw_params(run.params_path, run.overrides))
            guarded("tag the run", tracker.set_tags, run.run_id, project_tags(project_dir))
            guarded("end the run", tracker.finish, run.run_id, ok, message)


# ------------------------------------------------------------------------------------------ process runs


@contextlib.contextmanager
def process_run(
    run_name: str, tags: dict[str, str] | None = None, required: bool = False
) -> Iterator[str | None]:
    """The MLflow run this process logs into (a trainer's callback, a registered model); None when off.

    In order: the active run (``genprm <stage>`` makes its stage run active); the run named by
    ``MLFLOW_RUN_ID`` (a process under ``accelerate launch`` handed the stage's run id), resumed; else a
    new top-level run ``run_name`` in the project's store and experiment, the defaults of every stage.
    ``required`` runs even with ``GENPRM_TRACKING=0`` (the registry needs a run to log a model into).
    Asynchronous logging is flushed before the block ends.
    """
    if not (enabled() or required):
        yield None
        return
    import mlflow

    uri = tracking_uri(Path("."))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    active = mlflow.active_run()
    if active is not None:
        yield str(active.info.run_id)
        mlflow.flush_async_logging()
        return
    resume = os.environ.get("MLFLOW_RUN_ID")
    if resume:
        started = mlflow.start_run(run_id=resume)
    else:
        experiment = Tracker(uri, Path(".")).experiment_id
        started = mlflow.start_run(experiment_id=experiment, run_name=run_name, tags=tags)
    with started as run:
        yield str(run.info.run_id)
        mlflow.flush_async_logging()
