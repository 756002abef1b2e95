"""The evidence a model version needs before ``register`` registers it (the registry's step 1).

The benchmark metrics file must exist, be valid JSON, hold every ``register.required`` key and the
compared ``register.metric`` with finite numbers, pass the missing-verdict gate, and describe the model
directory as it is now (``register.consistency``: the recorded model fingerprint, else the
``benchmark`` entry of ``dvc.lock``, else file times). See ``components/platform/registry.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

from components.platform.errors import DataError

if TYPE_CHECKING:
    from components.platform.registry import RegisterConfig

FINGERPRINT_KEY = "model_fingerprint"
MISSING_RATE_KEY = "verdicts.genprm.missing_rate"  # percent of the GenPRM's ProcessBench turns
REWARD_SOURCE_KEY = "verdicts.genprm.reward_source"  # logprobs | verdict_text | mixed | none
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class Evidence:
    """What ties a metrics file to the model dir, and the metric to compare."""

    value: float
    fingerprint: str
    metrics_md5: str
    method: str
    missing_rate: float | None = None  # percent; None: not checked
    reward_source: str | None = None


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_dir_fingerprint(model_dir: Path) -> str:
    """A short hash of the model files (names, sizes, contents); benchmark may record it in its metrics."""
    from components.data.journal import fingerprint, model_fingerprint

    return fingerprint(model_fingerprint(str(model_dir)))


def dvc_dir_md5(path: Path) -> str:
    """The md5 DVC records for a directory (``<md5 of the sorted file listing>.dir``)."""
    files = sorted((f.relative_to(path).as_posix(), f) for f in path.rglob("*") if f.is_file())
    listing = [{"md5": file_md5(f), "relpath": rel} for rel, f in files]
    text = json.dumps(listing, sort_keys=True)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest() + ".dir"


def lookup(data: Any, dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; KeyError naming the key when absent."""
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def non_finite(data: Any, prefix: str) -> list[str]:
    """Keys under ``data`` whose value is NaN, infinite or null (a run that did not finish computing)."""
    if isinstance(data, dict):
        return [k for key, value in data.items() for k in non_finite(value, f"{prefix}.{key}")]
    if data is None or (isinstance(data, float) and not math.isfinite(data)):
        return [prefix]
    return []


def read_metrics(cfg: RegisterConfig) -> tuple[dict[str, Any], float]:
    """The metrics file and the compared value; DataError naming what is missing or not finite."""
    path = Path(cfg.metrics_file)
    if not path.is_file():
        raise DataError(f"{path}: benchmark metrics not found (register.metrics_file); run benchmark first")
    try:
        metrics = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); an interrupted benchmark?") from exc
    problems: list[str] = []
    for key in [*cfg.required, cfg.metric]:
        try:
            problems += non_finite(lookup(metrics, key), key)
        except KeyError:
            problems.append(f"{key} (missing)")
    if problems:
        raise DataError(f"{path}: incomplete benchmark metrics: {', '.join(problems[:5])}")
    value = lookup(metrics, cfg.metric)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"{path}: register.metric {cfg.metric} is not a number: {value!r}")
    return metrics, float(value)


def verdict_evidence(cfg: RegisterConfig, metrics: dict[str, Any]) -> tuple[float | None, str | None]:
    """(missing-verdict rate in percent, reward source) of the GenPRM's benchmark.

    DataError when the rate is checked (``register.max_missing_verdict_rate``) but the metrics do not
    report it: a benchmark that did not count its missing verdicts cannot show it judged the steps.
    """
    try:
        rate = lookup(metrics, MISSING_RATE_KEY)
    except KeyError:
        rate = None
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate)
    ):
        raise DataError(f"{cfg.metrics_file}: {MISSING_RATE_KEY} is not a number: {rate!r}")
    if rate is None and cfg.max_missing_verdict_rate is not None:
        raise DataError(
            f"{cfg.metrics_file}: {MISSING_RATE_KEY} (missing): the benchmark did not count missing "
            "verdicts; rerun benchmark, or set register.max_missing_verdict_rate=null"
        )
    try:
        source = lookup(metrics, REWARD_SOURCE_KEY)
    except KeyError:
        source = None
    return (None if rate is None else float(rate)), (None if source is None else str(source))


def check_model_dir(model_dir: Path) -> None:
    if not (model_dir / "config.json").is_file() or not any((model_dir / w).is_file() for w in WEIGHT_FILES):
        raise DataError(f"{model_dir}: no saved model (config.json and weights) (register.model_dir)")


def lock_entry(model_dir: Path, metrics_path: Path) -> tuple[str | None, str | None]:
    """(model dir md5, metrics md5) recorded by the ``benchmark`` stage in ``dvc.lock``, where present."""
    lock = Path("dvc.lock")
    if not lock.is_file():
        return None, None
    entry = ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).get("benchmark") or {}
    digests = {
        PurePosixPath(str(item.get("path", ""))): item.get("md5")
        for item in (entry.get("deps") or []) + (entry.get("outs") or [])
    }
    return digests.get(PurePosixPath(model_dir.as_posix())), digests.get(
        PurePosixPath(metrics_path.as_posix())
    )


def consistent(cfg: RegisterConfig, metrics: dict[str, Any], fingerprint: str, metrics_md5: str) -> str:
    """The method that showed the metrics describe the current model dir; DataError when they do not."""
    model_dir, metrics_path = Path(cfg.model_dir), Path(cfg.metrics_file)
    mode = cfg.consistency
    if mode == "fingerprint" or (mode == "auto" and FINGERPRINT_KEY in metrics):
        if metrics.get(FINGERPRINT_KEY) != fingerprint:
            raise DataError(
                f"{metrics_path}: {FINGERPRINT_KEY} {metrics.get(FINGERPRINT_KEY)!r} is not that of "
                f"{model_dir} ({fingerprint}): the metrics belong to another model"
            )
        return "fingerprint"
    locked_model, locked_metrics = lock_entry(model_dir, metrics_path)
    if mode == "dvc_lock" or (mode == "auto" and locked_metrics == metrics_md5):
        if locked_metrics != metrics_md5 or locked_model != dvc_dir_md5(model_dir):
            raise DataError(
                f"dvc.lock: the benchmark stage did not record {metrics_path} for {model_dir} as they are "
                "now (changed since `dvc repro benchmark`)"
            )
        return "dvc_lock"
    newest = max((f.stat().st_mtime for f in model_dir.rglob("*") if f.is_file()), default=0.0)
    if metrics_path.stat().st_mtime < newest:
        raise DataError(f"{metrics_path}: older than {model_dir}: the model changed after its benchmark")
    return "mtime"


def gather_evidence(cfg: RegisterConfig) -> Evidence:
    """Everything that must hold before a version is registered (see the module docstring)."""
    model_dir = Path(cfg.model_dir)
    check_model_dir(model_dir)
    metrics, value = read_metrics(cfg)
    fingerprint = model_dir_fingerprint(model_dir)
    metrics_md5 = file_md5(Path(cfg.metrics_file))
    method = consistent(cfg, metrics, fingerprint, metrics_md5)
    missing_rate, reward_source = verdict_evidence(cfg, metrics)
    return Evidence(value, fingerprint, metrics_md5, method, missing_rate, reward_source)
