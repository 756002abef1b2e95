"""The ``register`` stage: log the trained GenPRM as an MLflow model and decide who is ``champion``.

    genprm register                          # dvc repro register does the same
    genprm register --set register.margin=0.5
    genprm register --set register.force=true   # a manual promotion (still checked for completeness)

The evidence, the decision and the store lock are ``components/platform/registry.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.platform.config import to_dict
from components.platform.registry import (
    TAG,
    Evidence,
    RegisterConfig,
    already_registered,
    compare_and_set,
    gather_evidence,
    read_champion,
    store_lock,
)


def provenance(evidence: Evidence, cfg: RegisterConfig, run_id: str) -> dict[str, str]:
    from components.platform.tracking import project_tags

    tags = {
        "metric_key": cfg.metric,
        "metric": repr(evidence.value),
        "run_id": run_id,
        "model_fingerprint": evidence.fingerprint,
        "metrics_md5": evidence.metrics_md5,
        "consistency": evidence.method,
        "model_dir": cfg.model_dir,
    }
    if evidence.missing_rate is not None:
        tags["missing_verdict_rate"] = repr(evidence.missing_rate)
    if evidence.reward_source is not None:
        tags["reward_source"] = evidence.reward_source
    tags |= {k.removeprefix(TAG): v for k, v in project_tags(Path(".")).items()}
    return tags


def register(cfg: RegisterConfig, settings: dict[str, Any], uri: str) -> dict[str, Any]:
    """Check the evidence, log and register a version, then decide the alias under the store lock."""
    from mlflow import MlflowClient

    from components.platform.pyfunc import log_genprm
    from components.platform.tracking import process_run

    evidence = gather_evidence(cfg)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    existing = already_registered(client, cfg, evidence)
    if existing is not None:
        champion = read_champion(client, cfg)
        return {
            "decision": "unchanged",
            "reason": f"these model files and metrics are already version {existing.version}",
            "version": int(existing.version),
            "champion": int(champion.version) if champion else None,
            "metric": evidence.value,
        }
    with process_run("register", required=True) as run_id:
        assert run_id is not None
        info = log_genprm(Path(cfg.model_dir), settings, cfg.pip_requirements, cfg.samples, cfg.name)
        version = str(info.registered_model_version)
        for key, text in provenance(evidence, cfg, run_id).items():
            client.set_model_version_tag(cfg.name, version, TAG + key, text)
        with store_lock(uri, cfg.lock_timeout_s):
            outcome = compare_and_set(
                client, cfg, version, evidence.value, evidence.missing_rate, evidence.reward_source
            )
        client.set_tag(run_id, TAG + "registered", f"{cfg.name} v{version}: {outcome['decision']}")
    return {"version": int(version), "metric": evidence.value, "consistency": evidence.method, **outcome}


def main(params_path: Path, overrides: list[str]) -> dict[str, Any]:
    """Entry point for dvc, flows and the CLI: register the GenPRM; write metrics/register.json."""
    import logging

    from components.data.io import write_json
    from components.method.scorer import ScorerConfig
    from components.platform.params import load_params, load_value
    from components.platform.tracking import tracking_uri

    cfg: RegisterConfig = load_params(params_path, overrides, ["register"])["register"]
    settings = to_dict(load_value(params_path, overrides, "benchmark.genprm", ScorerConfig))
    result = register(cfg, settings, tracking_uri(Path(".")))
    logging.getLogger(__name__).info(
        "%s v%s: %s (%s)", cfg.name, result["version"], result["decision"], result["reason"]
    )
    write_json(Path("metrics/register.json"), result)
    return result
