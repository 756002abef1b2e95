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
import hashlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.platform import dvcfile
from components.platform.config import apply_overrides, read_params

log = logging.getLogger("genprm.tracking")

ENV_PARENT = "GENPRM_MLFLOW_PARENT_RUN_ID"
ENV_ENABLED = "GENPRM_TRACKING"
ENV_UI = "GENPRM_MLFLOW_UI_URL"
DEFAULT_EXPERIMENT = "genprm"
DEFAULT_UI = "http://127.0.0.1:5000"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
REPORTS_DIR = "reports"


def enabled() -> bool:
    """False when ``GENPRM_TRACKING`` is 0/false/off."""
    return os.environ.get(ENV_ENABLED, "1").strip().lower() not in ("0", "false", "off", "no")


def tracking_uri(project_dir: Path = Path(".")) -> str:
    """``MLFLOW_TRACKING_URI``, else the sqlite file ``mlflow.db`` at the project root (absolute)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(project_dir) / 'mlflow.db').resolve()}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings (and lists of mappings) as ``{"a.b.c": leaf}``."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(data, list) and any(isinstance(v, dict | list) for v in data):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: data} if prefix else {"value": data}


def numeric_leaves(metrics: Any, prefix: str = "") -> dict[str, float]:
    """The numeric (non-bool) leaves of ``metrics`` flattened, lists by index; NaN-free floats."""
    if isinstance(metrics, list):
        metrics = {str(i): v for i, v in enumerate(metrics)}
    flat = flatten(metrics, prefix) if isinstance(metrics, dict) else {}
    out: dict[str, float] = {}
    for key, value in flat.items():
        if isinstance(value, list):
            out.update(numeric_leaves(value, f"{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            out[metric_key(key)] = float(value)
    return out


def metric_key(key: str) -> str:
    """``key`` with the characters MLflow rejects in metric names (e.g. ``@`` in ``f1_maj@8``) as ``_``."""
    return re.sub(r"[^\w\-. :/]", "_", key)


def file_md5(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(project_dir: Path) -> str | None:
    proc = subprocess.run(
        ["git", "-C", str(project_dir), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def project_tags(project_dir: Path) -> dict[str, str]:
    """The git commit and the md5 of ``dvc.lock`` (where they exist)."""
    tags = {
        "genprm.git_commit": git_commit(project_dir),
        "genprm.dvc_lock_md5": file_md5(project_dir / "dvc.lock"),
    }
    return {k: v for k, v in tags.items() if v}


def raw_params(params_path: Path, overrides: list[str] | None) -> dict[str, Any]:
    """params.yaml with ``overrides`` applied, unvalidated (empty when unreadable: the stage says why)."""
    try:
        return apply_overrides(read_params(Path(params_path)), overrides or [])
    except Exception:  # the stage itself reports bad params with exit 2
        return {}


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """A browser link to the run: the server itself for http(s) URIs, else ``mlflow ui``'s address."""
    base = uri if uri.startswith(("http://", "https://")) else os.environ.get(ENV_UI, DEFAULT_UI)
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


# ------------------------------------------------------------------------------------------ the store


class Tracker:
    """An MLflow client bound to one tracking URI and experiment; every call is best effort."""

    def __init__(self, uri: str, project_dir: Path) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.project_dir = Path(project_dir)
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment()

    @classmethod
    def connect(cls, project_dir: Path = Path(".")) -> Tracker | None:
        """A tracker, or None (with a warning) when tracking is off or the store cannot be reached."""
        if not enabled():
            return None
        uri = tracking_uri(project_dir)
        try:
            if uri.startswith(("http://", "https://")):
                import httpx

                httpx.get(f"{uri.rstrip('/')}/health", timeout=5.0).raise_for_status()
            return cls(uri, project_dir)
        except Exception as exc:
            log.warning("MLflow tracking off for this run: %s unreachable (%s)", uri, _short(exc))
            return None

    def _experiment(self) -> str:
        name = experiment_name()
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if self.uri.startswith("sqlite:") and "MLFLOW_TRACKING_URI" not in os.environ:
            location = (self.project_dir / "mlartifacts").resolve().as_uri()
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except Exception:  # another process created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def start(self, name: str, parent_id: str | None, tags: dict[str, str]) -> str:
        all_tags = dict(tags)
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return str(run.info.run_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(flatten(params).items())]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, 0) for k, v in sorted(metrics.items())]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start : start + 1000])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_inputs(self, run_id: str, inputs: list[tuple[str, str]]) -> None:
        """Each ``(path, md5)`` as an MLflow dataset with the DVC md5 as its digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        datasets = [
            DatasetInput(
                Dataset(
                    name=path,
                    digest=md5[:36],
                    source_type="dvc",
                    source=json.dumps({"path": path, "md5": md5}),
                ),
                tags=[InputTag("mlflow.data.context", "input")],
            )
            for path, md5 in inputs
        ]
        if datasets:
            self.client.log_inputs(run_id, datasets=datasets)
        self.set_tags(run_id, {f"genprm.input.{path}": md5 for path, md5 in inputs})

    def log_files(self, run_id: str, paths: list[Path], since: float) -> int:
        """Log the files (and files inside folders) among ``paths`` modified at or after ``since``."""
        count = 0
        for path in paths:
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                if file.is_file() and file.stat().st_mtime >= since - 1:
                    rel = file.resolve().relative_to(self.project_dir.resolve())
                    self.client.log_artifact(run_id, str(file), artifact_path=str(rel.parent) or None)
                    count += 1
        return count

    def finish(self, run_id: str, ok: bool, message: str | None = None) -> None:
        if message:
            self.set_tags(run_id, {"genprm.error": message})
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    def link(self, run_id: str) -> str:
        return run_link(self.uri, self.experiment_id, run_id)


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def guarded(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a failure is a warning naming ``what`` (tracking never fails a stage)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        log.warning("MLflow: could not %s: %s", what, _short(exc))
        return None


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


def stage_files(project_dir: Path, stage: str, params: dict[str, Any]) -> list[Path]:
    """The stage's metrics and plots files and its outputs under ``reports/`` (plus ``reports/<stage>``)."""
    paths = dvcfile.stage_paths(Path(project_dir) / "dvc.yaml", stage, params)
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
    inputs = guarded("read dvc.lock", dvcfile.stage_inputs, Path(project_dir), stage, params) or []
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
        files = stage_files(Path(project_dir), stage, params)
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
        params = raw_params(self.params_path, self.overrides)
        paths = dvcfile.stage_paths(self.project_dir / "dvc.yaml", stage, params).metrics
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
