"""The MLflow client of the tracking adapter: settings, the ``Tracker`` and the value helpers.

``components/platform/tracking.py`` is the adapter every stage uses (stage runs, pipeline runs, the
process run trainers and the registry log into); this module holds what it is built on: where the store
is (``MLFLOW_TRACKING_URI``, default ``sqlite:///mlflow.db`` at the project root; experiment
``MLFLOW_EXPERIMENT_NAME``, default ``genprm``; ``GENPRM_TRACKING=0`` turns tracking off), a best-effort
``Tracker`` bound to one store and experiment, and the flattening of params and metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

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
