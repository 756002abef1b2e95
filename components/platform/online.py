"""Whether a run may reach the Hugging Face hub: offline by default, online only when configured so.

The ``genprm`` CLI sets ``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_OFFLINE=1`` for a stage unless that
stage's params section configures something online (telemetry is off either way; a value the user set
in the environment always wins, in both directions). Online means any of:

- a model that is not a local path (a hub id, by ``components.backends.base.looks_like_path``): a
  backend's ``model`` (hf and vllm load its weights from the hub; openai loads its tokenizer to render
  prompts), ``train.base_model``, ``benchmark.direct_model`` or any other ``*model``/``model_dir`` key;
- ``prepare.source: hf`` with a hub dataset (``prepare.hf.path`` that is no local directory);
- an ``openai`` backend whose server (``base_url``/``base_urls``) is not on this machine's loopback
  (``localhost``, ``127.0.0.0/8``, ``::1``).

So the offline small world (local model directories, the synthetic or local-file source, servers on
127.0.0.1) runs with the hub switched off, as before, and a paper-scale stage (hub ids, ``vllm-policy``
servers) can download what it is missing. ``online_reasons`` names what made a section online; the
CLI logs the first one.

    online_reasons(load_params(Path("params.yaml"), [], ["rollout"])["rollout"], "rollout")   # []
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

HUB_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
"""Set unless something online is configured (see the module docstring)."""

MODEL_KEYS = ("model", "model_dir")
"""Plain string keys naming a model: these, and every key ending in ``_model``."""


def is_loopback(url: str) -> bool:
    """Whether the server of ``url`` is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = (urlparse(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_hub_model(model: str) -> bool:
    """Whether ``model`` names a hub model rather than a local directory or file."""
    from components.backends.base import looks_like_path

    return not looks_like_path(model) and not Path(model).expanduser().exists()


def model_reasons(where: str, model: str, server_urls: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Why a model reached at ``server_urls`` (openai; none: loaded here) needs the network, if it does.

    For commands without a params section, e.g. ``configure_runtime(model_reasons("--model", m, urls))``.
    """
    reasons = [f"{where}: {model!r} is a hub id"] if is_hub_model(model) else []
    return reasons + [
        f"{where}: server {url} is not on loopback" for url in server_urls if not is_loopback(url)
    ]


def _backend_reasons(cfg: Any, where: str) -> list[str]:
    return model_reasons(f"{where}.model", cfg.model, cfg.server_urls if cfg.backend == "openai" else ())


def online_reasons(cfg: Any, where: str) -> list[str]:
    """What in config ``cfg`` (a section, at key path ``where``) needs the network, as messages."""
    from components.backends.base import BackendConfig

    if isinstance(cfg, BackendConfig):
        return _backend_reasons(cfg, where)
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        return []
    reasons = []
    source = getattr(cfg, "source", None)
    for field in dataclasses.fields(cfg):
        value, key = getattr(cfg, field.name), f"{where}.{field.name}"
        if isinstance(value, str) and (field.name in MODEL_KEYS or field.name.endswith("_model")):
            if value and is_hub_model(value):
                reasons.append(f"{key}: {value!r} is a hub id")
        elif field.name == "hf" and value is not None:
            path = str(getattr(value, "path", "") or "")
            if source == "hf" and path and not Path(path).expanduser().exists():
                reasons.append(f"{key}.path: {path!r} is a hub dataset")
        else:
            reasons += online_reasons(value, key)
    return reasons


def section_reasons(params: Path, overrides: list[str] | None, section: str) -> list[str]:
    """``online_reasons`` of one section of a params file; a file or section that does not load counts
    as offline (the stage then reports the error itself)."""
    from components.platform.errors import GenPRMError
    from components.platform.params import SECTION_CLASSES, load_params

    if section not in SECTION_CLASSES:
        return []
    try:
        cfg = load_params(Path(params), overrides or [], [section])[section]
    except (GenPRMError, OSError):
        return []
    return online_reasons(cfg, section)
