"""The model registry policy: the evidence a version needs, the champion decision, the store lock.

The ``register`` stage (``components/stages/register.py``) runs these steps:

1. **Evidence.** The benchmark metrics file must exist, be valid JSON, hold every ``register.required``
   key and the compared ``register.metric`` with finite numbers, and describe the model directory as it
   is now (``register.consistency``): the model fingerprint recorded in the metrics (key
   ``model_fingerprint``, see :func:`model_dir_fingerprint`), else the ``benchmark`` entry of ``dvc.lock``
   when it records this very metrics file (its md5 of the model dir must match), else the metrics file
   must be newer than every model file. Otherwise nothing is registered and the stage exits 2.
2. **Version.** ``mlflow.pyfunc.log_model`` with :class:`components.platform.pyfunc.GenPRMPyfunc`, the
model dir
   as artifact, the benchmark's scorer settings, ``components/`` as code and pinned pip requirements
   (never torchvision), registered as a new version of ``register.name``. A model and metrics pair that
   is already registered is not registered twice.
3. **Decision** (tags ``genprm.decision`` = promoted | kept_champion | rejected, ``genprm.reason``,
   ``genprm.metric``, ``genprm.previous_champion``, the run id, git commit, fingerprints). The alias
   moves only when the metric beats the champion's (its version tag) by more than ``register.margin``,
   or when there is no champion; below ``register.min_metric`` a version is rejected, and so is a version
   whose GenPRM left more than ``register.max_missing_verdict_rate`` percent of its ProcessBench turns
   without a verdict (``verdicts.genprm.missing_rate`` in the metrics; a missing verdict scores as a
   wrong step, and a model that fails to judge must not win on the steps it did judge). Neither
   ``register.force`` overrides these. A champion whose rewards came from another source
   (``verdicts.genprm.reward_source``: logprobs or verdict_text) is not comparable: kept, as for
   another metric key.

Concurrency: for sqlite and file stores the read-compare-set runs under a file lock next to the store
(``<db>.register.lock``) and re-reads the champion after acquiring it, so two runs finishing together
serialize. A remote server (http/https) has no shared lock: there, after setting the alias every run
re-reads the promoted versions and points the alias at the best one (promotions only ever go up, so
this is the serialized outcome); run ``register`` with a concurrency limit of 1 (a Prefect tag limit)
to close the remaining window. To roll back, tag the bad version ``genprm.decision=revoked`` and set
the alias by hand; a revoked version is never restored.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from components.platform.config import option
from components.platform.errors import ConfigError, GenPRMError

TAG = "genprm."
DEFAULT_REQUIREMENTS = [
    "mlflow",
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "pandas",
    "sympy",
    "pyyaml",
    "math-verify",
    "httpx",
]


@dataclass(frozen=True)
class RegisterConfig:
    """The ``register`` section of params.yaml."""

    name: str = option("genprm", help="Registered model name in the MLflow model registry.")
    alias: str = option("champion", help="Alias of the best version (moved only on a better metric).")
    model_dir: str = option("models/genprm", help="The trained GenPRM directory (save_pretrained).")
    metrics_file: str = option("metrics/benchmark.json", help="The benchmark metrics of that model.")
    metric: str = option("headline.f1_maj@1", help="Dotted key compared between versions; higher is better.")
    required: list[str] = option(
        ["headline", "processbench.genprm"],
        help="Dotted keys the metrics file must hold; every number under them must be finite.",
    )
    margin: float = option(0.0, help="Promote only when the metric beats the champion's by more than this.")
    min_metric: float | None = option(
        None, help="Versions below this are registered as rejected (null: none)."
    )
    max_missing_verdict_rate: float | None = option(
        5.0,
        help="Versions whose GenPRM left more than this percent of its ProcessBench turns without a verdict "
        "(metrics verdicts.genprm.missing_rate) are registered as rejected, forced or not (null: no check).",
    )
    consistency: Literal["auto", "fingerprint", "dvc_lock", "mtime"] = option(
        "auto",
        help="How the metrics are tied to the model dir: auto tries fingerprint, dvc_lock, then mtime.",
    )
    force: bool = option(False, help="Promote whatever the comparison (a manual promotion).")
    samples: int = option(1, help="Default critiques per step of predict() (params={'samples': N}).")
    pip_requirements: list[str] = option(
        DEFAULT_REQUIREMENTS, help="Requirements of the logged model; bare names are pinned to this env."
    )
    lock_timeout_s: float = option(600.0, help="Seconds to wait for another register's store lock.")

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.alias.strip():
            raise ConfigError("register.name/register.alias: must not be empty")
        if self.margin < 0:
            raise ConfigError(f"register.margin: must be >= 0, got {self.margin}")
        if self.max_missing_verdict_rate is not None and not 0 <= self.max_missing_verdict_rate <= 100:
            raise ConfigError("register.max_missing_verdict_rate: a percentage in [0, 100], or null")
        if self.samples < 1 or self.lock_timeout_s <= 0:
            raise ConfigError("register.samples/lock_timeout_s: need samples >= 1 and a positive timeout")
        if any(r.strip().lower().startswith("torchvision") for r in self.pip_requirements):
            raise ConfigError("register.pip_requirements: torchvision breaks the CPU torch (DESIGN.md §6)")


# The evidence a version needs (components/platform/evidence.py), re-exported for the stage and tests.
from components.platform.evidence import (  # noqa: E402
    FINGERPRINT_KEY,
    MISSING_RATE_KEY,
    REWARD_SOURCE_KEY,
    WEIGHT_FILES,
    Evidence,
    check_model_dir,
    consistent,
    dvc_dir_md5,
    file_md5,
    gather_evidence,
    lock_entry,
    lookup,
    model_dir_fingerprint,
    non_finite,
    read_metrics,
    verdict_evidence,
)

__all__ = [
    "FINGERPRINT_KEY",
    "MISSING_RATE_KEY",
    "REWARD_SOURCE_KEY",
    "WEIGHT_FILES",
    "Champion",
    "Evidence",
    "RegisterConfig",
    "check_model_dir",
    "compare_and_set",
    "consistent",
    "decide",
    "dvc_dir_md5",
    "file_md5",
    "gather_evidence",
    "lock_entry",
    "lookup",
    "model_dir_fingerprint",
    "non_finite",
    "read_champion",
    "read_metrics",
    "store_lock",
    "verdict_evidence",
]


# ------------------------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class Champion:
    version: str
    metric: float | None
    metric_key: str | None
    reward_source: str | None = None


def decide(
    cfg: RegisterConfig,
    value: float,
    champion: Champion | None,
    missing_rate: float | None = None,
    reward_source: str | None = None,
) -> tuple[str, str]:
    """(decision, reason) for a new version with ``value`` (and its GenPRM's missing-verdict rate in
    percent and reward source) against the current champion."""
    if cfg.min_metric is not None and value < cfg.min_metric:
        return "rejected", f"{cfg.metric}={value:g} is below register.min_metric={cfg.min_metric:g}"
    limit = cfg.max_missing_verdict_rate
    if limit is not None and missing_rate is not None and missing_rate > limit:
        return "rejected", (
            f"{missing_rate:g}% of the GenPRM's turns have no verdict (scored as wrong steps), above "
            f"register.max_missing_verdict_rate={limit:g}%"
        )
    if cfg.force:
        return "promoted", "forced (register.force=true)"
    if champion is None:
        return "promoted", f"no {cfg.alias} yet; {cfg.metric}={value:g}"
    if champion.metric_key != cfg.metric or champion.metric is None:
        return "kept_champion", (
            f"{cfg.alias} v{champion.version} was measured on {champion.metric_key!r}, not {cfg.metric!r}: "
            "not comparable (promote with register.force=true)"
        )
    if None not in (champion.reward_source, reward_source) and champion.reward_source != reward_source:
        return "kept_champion", (
            f"{cfg.alias} v{champion.version}'s rewards came from {champion.reward_source}, these from "
            f"{reward_source}: not comparable (promote with register.force=true)"
        )
    if value > champion.metric + cfg.margin:
        return "promoted", (
            f"{cfg.metric}={value:g} beats {cfg.alias} v{champion.version} ({champion.metric:g}) "
            f"by more than margin {cfg.margin:g}"
        )
    return "kept_champion", (
        f"{cfg.metric}={value:g} does not beat {cfg.alias} v{champion.version} ({champion.metric:g}) "
        f"by more than margin {cfg.margin:g}"
    )


def float_or_none(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def read_champion(client: Any, cfg: RegisterConfig) -> Champion | None:
    """The version the alias points at, with the metric it was promoted on (None: no champion)."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(cfg.name, cfg.alias)
    except MlflowException:  # no such model or alias yet
        return None
    tags = version.tags or {}
    return Champion(
        str(version.version),
        float_or_none(tags.get(TAG + "metric")),
        tags.get(TAG + "metric_key"),
        tags.get(TAG + "reward_source"),
    )


# ------------------------------------------------------------------------------------------ the store


def lock_path(uri: str) -> Path | None:
    """The lock file beside a sqlite or file store; None for a remote server."""
    from urllib.parse import urlparse

    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").split("?")[0])
        return db.with_name(db.name + ".register.lock")
    if uri.startswith("file:"):
        return Path(urlparse(uri).path) / ".register.lock"
    if "://" not in uri:
        return Path(uri) / ".register.lock"
    return None


@contextlib.contextmanager
def store_lock(uri: str, timeout_s: float) -> Iterator[Path | None]:
    """Hold the store's register lock (no-op for a remote server; see the module docstring)."""
    from filelock import FileLock, Timeout

    path = lock_path(uri)
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path), timeout=timeout_s):
            yield path
    except Timeout as exc:
        raise GenPRMError(f"{path}: another register held the lock for {timeout_s:g} s") from exc


def versions(client: Any, name: str) -> list[Any]:
    return list(client.search_model_versions(f"name='{name}'"))


def already_registered(client: Any, cfg: RegisterConfig, evidence: Evidence) -> Any | None:
    """A version of the same model files registered on the same metrics file, if there is one."""
    for version in versions(client, cfg.name):
        tags = version.tags or {}
        if (tags.get(TAG + "model_fingerprint"), tags.get(TAG + "metrics_md5")) == (
            evidence.fingerprint,
            evidence.metrics_md5,
        ):
            return version
    return None


def best_promoted(client: Any, cfg: RegisterConfig) -> str | None:
    """The promoted version with the best metric since the last forced promotion (ties: the newest)."""
    promoted = [
        v
        for v in versions(client, cfg.name)
        if (v.tags or {}).get(TAG + "decision") == "promoted"
        and (v.tags or {}).get(TAG + "metric_key") == cfg.metric
    ]
    forced = [int(v.version) for v in promoted if (v.tags or {}).get(TAG + "forced") == "true"]
    since = max(forced, default=0)
    eligible = [v for v in promoted if int(v.version) >= since]
    if not eligible:
        return None
    best = max(
        eligible, key=lambda v: (float_or_none(v.tags.get(TAG + "metric")) or -math.inf, int(v.version))
    )
    return str(best.version)


def repair_alias(client: Any, cfg: RegisterConfig) -> str | None:
    """Point the alias at the best promoted version if a concurrent run left it elsewhere; the version set."""
    current = read_champion(client, cfg)
    best = best_promoted(client, cfg)
    if best is None or (current is not None and current.version == best):
        return None
    client.set_registered_model_alias(cfg.name, cfg.alias, best)
    client.set_model_version_tag(cfg.name, best, TAG + "alias_repaired", "true")
    return best


def compare_and_set(
    client: Any,
    cfg: RegisterConfig,
    version: str,
    value: float,
    missing_rate: float | None = None,
    reward_source: str | None = None,
) -> dict[str, Any]:
    """Decide against the champion read now, tag the version, move the alias if promoted, then verify."""
    champion = read_champion(client, cfg)
    decision, reason = decide(cfg, value, champion, missing_rate, reward_source)
    tags = {
        "decision": decision,
        "reason": reason,
        "previous_champion": champion.version if champion else "none",
        "previous_metric": "none" if champion is None or champion.metric is None else str(champion.metric),
        "forced": str(cfg.force and decision == "promoted").lower(),
    }
    for key, text in tags.items():  # tags before the alias: a concurrent verify must see the promotion
        client.set_model_version_tag(cfg.name, version, TAG + key, text)
    if decision == "promoted":
        client.set_registered_model_alias(cfg.name, cfg.alias, version)
    repaired = repair_alias(client, cfg)
    final = read_champion(client, cfg)
    return {
        "decision": decision,
        "reason": reason,
        "previous_champion": int(champion.version) if champion else None,
        "champion": int(final.version) if final else None,
        "alias_repaired": repaired is not None,
    }
