"""The registry of params.yaml sections and the one loader every entry point uses.

    params = load_params(Path("params.yaml"), ["bootstrap.train.steps=100"])
    params["bootstrap"]  # a frozen BootstrapConfig

Every section is validated on every load, so a typo anywhere in params.yaml fails fast, naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.bootstrap import BootstrapConfig
from components.config import apply_overrides, build_config, read_params
from components.errors import ConfigError
from components.prepare import PrepareConfig
from components.synthetic import SyntheticConfig

SECTIONS: dict[str, type] = {
    "world": SyntheticConfig,
    "prepare": PrepareConfig,
    "bootstrap": BootstrapConfig,
}


def load_params(params_path: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Every section of ``params_path`` (with ``overrides``) as its frozen config."""
    raw = apply_overrides(read_params(Path(params_path)), overrides or [])
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{params_path}: unknown section {unknown[0]!r} (known: {', '.join(sorted(SECTIONS))})"
        )
    return {name: build_config(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
