"""The registry of params.yaml sections and the one loader every entry point uses.

    params = load_params(Path("params.yaml"), ["bootstrap.train.steps=100"])
    params["bootstrap"]  # a frozen BootstrapConfig

Every section is validated on every load, so a typo anywhere in params.yaml fails fast, naming the key.
A section left out of params.yaml takes its defaults. Config classes are named by import path and loaded
on use, so reading params never imports a stage's heavy dependencies.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from components.platform.config import apply_overrides, build_config, read_params
from components.platform.errors import ConfigError

SECTION_CLASSES: dict[str, str] = {
    "world": "components.world.synthetic:SyntheticConfig",
    "quality": "components.data.quality:QualityConfig",
    "prepare": "components.stages.prepare:PrepareConfig",
    "bootstrap": "components.stages.bootstrap:BootstrapConfig",
    "rollout": "components.stages.rollout:RolloutConfig",
    "label": "components.stages.label:LabelConfig",
    "synthesize": "components.stages.synthesize:SynthesizeConfig",
    "train": "components.stages.train:TrainConfig",
    "benchmark": "components.stages.benchmark:BenchmarkConfig",
    "register": "components.platform.registry:RegisterConfig",
}


def section_class(name: str) -> type:
    """The config class of section ``name``."""
    module, _, cls = SECTION_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def sections() -> dict[str, type]:
    """Every section name with its config class, in pipeline order."""
    return {name: section_class(name) for name in SECTION_CLASSES}


def load_params(params_path: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Every section of ``params_path`` (with ``overrides``) as its frozen config."""
    raw = apply_overrides(read_params(Path(params_path)), overrides or [])
    unknown = sorted(set(raw) - set(SECTION_CLASSES))
    if unknown:
        raise ConfigError(
            f"{params_path}: unknown section {unknown[0]!r} (known: {', '.join(SECTION_CLASSES)})"
        )
    return {name: build_config(cls, raw.get(name), name) for name, cls in sections().items()}
