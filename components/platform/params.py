"""The registry of params.yaml sections and the one loader every entry point uses.

    params = load_params(Path("params.yaml"), ["bootstrap.train.steps=100"], ["bootstrap", "world"])
    params["bootstrap"]  # a frozen BootstrapConfig
    load_value(Path("params.yaml"), [], "prepare.output_dir", str)   # one key of another section

A stage loads the sections it runs (its own and the shared ``world``/``quality``), so its import closure
is what it runs: config classes are named by import path and imported only when their section is
loaded. Every load checks that each top-level section of params.yaml is a known one; ``genprm params
check`` and the Prefect flow validate every section, so a typo anywhere fails before a pipeline starts.
A section left out of params.yaml takes its defaults.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from components.platform.config import apply_overrides, build_config, coerce_value, read_params
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
    "refine": "components.stages.refine:RefineConfig",
}


def section_class(name: str) -> type:
    """The config class of section ``name``."""
    module, _, cls = SECTION_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def sections() -> dict[str, type]:
    """Every section name with its config class, in pipeline order."""
    return {name: section_class(name) for name in SECTION_CLASSES}


T = TypeVar("T")


def raw_params(params_path: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """params.yaml with ``overrides`` applied; an unknown top-level section is a ConfigError."""
    raw = apply_overrides(read_params(Path(params_path)), overrides or [])
    unknown = sorted(set(raw) - set(SECTION_CLASSES))
    if unknown:
        raise ConfigError(
            f"{params_path}: unknown section {unknown[0]!r} (known: {', '.join(SECTION_CLASSES)})"
        )
    return raw


def load_params(
    params_path: Path, overrides: list[str] | None = None, only: Iterable[str] | None = None
) -> dict[str, Any]:
    """The sections ``only`` (default: every section) of ``params_path`` as frozen configs."""
    raw = raw_params(params_path, overrides)
    names = list(SECTION_CLASSES) if only is None else list(only)
    for name in names:
        if name not in SECTION_CLASSES:
            raise ConfigError(f"unknown params section {name!r} (known: {', '.join(SECTION_CLASSES)})")
    return {name: build_config(section_class(name), raw.get(name), name) for name in names}


def load_value(params_path: Path, overrides: list[str] | None, dotted: str, cls: type[T]) -> T:
    """One key (``prepare.output_dir``) or sub-section (``benchmark.genprm``) of another section.

    A sub-section given as a config class takes its defaults when absent; a plain value must be there.
    """
    node: Any = raw_params(params_path, overrides)
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        return build_config(cls, node, dotted)
    if node is None:
        raise ConfigError(f"{params_path}: missing key {dotted!r}")
    return coerce_value(cls, node, dotted)  # type: ignore[no-any-return]
