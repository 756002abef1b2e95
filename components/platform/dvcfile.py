"""Reading ``dvc.yaml`` and ``dvc.lock`` without DVC: stage order, a stage's paths, recorded hashes.

The Prefect flow derives its task order from here (never a hard-coded stage list) and the MLflow
adapter (``components/platform/tracking.py``) finds a stage's metrics, plots and reports to log, and the DVC
hashes of the data a stage reads.

    order = stage_order(Path("dvc.yaml"))                       # ['prepare', 'bootstrap', ...]
    paths = stage_paths(Path("dvc.yaml"), "label", raw_params)  # ${...} resolved from params
    inputs = stage_inputs(Path("."), "bootstrap", raw_params)   # [(path, md5), ...] from dvc.lock
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

_TEMPLATE = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


@dataclass(frozen=True)
class StagePaths:
    """The paths a stage names in dvc.yaml (``${...}`` resolved where params were given)."""

    deps: list[PurePosixPath] = field(default_factory=list)
    outs: list[PurePosixPath] = field(default_factory=list)
    metrics: list[PurePosixPath] = field(default_factory=list)
    plots: list[PurePosixPath] = field(default_factory=list)

    @property
    def produced(self) -> list[PurePosixPath]:
        return self.outs + self.metrics + self.plots


def _lookup(params: dict[str, Any], dotted: str) -> str:
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return "${" + dotted + "}"  # left as written: DVC itself reports the missing key
        node = node[key]
    return str(node)


def resolve(text: str, params: dict[str, Any] | None) -> str:
    """``text`` with each ``${a.b}`` replaced by that params value (unchanged without params)."""
    if params is None:
        return text
    return _TEMPLATE.sub(lambda m: _lookup(params, m.group(1)), text)


def _paths(entries: Iterable[Any] | None, params: dict[str, Any] | None = None) -> list[PurePosixPath]:
    """Paths of dvc.yaml deps/outs entries: plain strings or one-key mappings ``{path: {options}}``."""
    paths = []
    for entry in entries or []:
        for item in entry if isinstance(entry, dict) else [entry]:
            paths.append(PurePosixPath(os.path.normpath(resolve(str(item), params))))
    return paths


def overlaps(dep: PurePosixPath, out: PurePosixPath) -> bool:
    """A dep needs an out when it is the out, lies inside it, or contains it."""
    return dep == out or out in dep.parents or dep in out.parents


def read_stages(dvc_yaml: Path) -> dict[str, Any]:
    """The ``stages`` mapping of ``dvc_yaml`` (empty when the file has none or does not exist: a stage run
    outside a DVC project, e.g. ``genprm prepare`` in a scratch directory, still runs and is tracked)."""
    if not Path(dvc_yaml).is_file():
        return {}
    return (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages") or {}


def stage_paths(dvc_yaml: Path, stage: str, params: dict[str, Any] | None = None) -> StagePaths:
    """The deps, outs, metrics and plots of ``stage``; an unknown stage has none."""
    spec = read_stages(dvc_yaml).get(stage) or {}
    return StagePaths(
        deps=_paths(spec.get("deps"), params),
        outs=_paths(spec.get("outs"), params),
        metrics=_paths(spec.get("metrics"), params),
        plots=_paths(spec.get("plots"), params),
    )


def stage_order(dvc_yaml: Path, params: dict[str, Any] | None = None) -> list[str]:
    """The stages of ``dvc_yaml`` in dependency order (ties keep file order); a cycle is an error.

    ``${...}`` paths are resolved from ``params`` (default: the params.yaml beside ``dvc_yaml``), so a
    stage reading ``${train.output_dir}`` comes after the stage writing it.
    """
    stages = read_stages(dvc_yaml)
    if params is None and (Path(dvc_yaml).parent / "params.yaml").is_file():
        params = yaml.safe_load((Path(dvc_yaml).parent / "params.yaml").read_text()) or {}
    paths = {name: stage_paths(dvc_yaml, name, params) for name in stages}
    needs = {
        name: {
            other
            for other in stages
            if other != name and any(overlaps(d, o) for d in paths[name].deps for o in paths[other].produced)
        }
        for name in stages
    }
    order: list[str] = []
    while len(order) < len(stages):
        ready = [n for n in stages if n not in order and needs[n] <= set(order)]
        if not ready:
            left = sorted(set(stages) - set(order))
            raise ValueError(f"{dvc_yaml}: the stages {left} depend on each other in a cycle")
        order.append(ready[0])
    return order


def stage_inputs(project_dir: Path, stage: str, params: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(path, md5)`` of each upstream output ``stage`` reads, as recorded in ``dvc.lock``.

    Upstream stages finish (and are locked) before ``stage`` runs, so their lock entries describe the
    data this run reads. Source files (deps that no stage produces) are not datasets and are left out.
    """
    lock_path = Path(project_dir) / "dvc.lock"
    if not lock_path.exists():
        return []
    locked = (yaml.safe_load(lock_path.read_text()) or {}).get("stages") or {}
    deps = stage_paths(Path(project_dir) / "dvc.yaml", stage, params).deps
    found: dict[str, str] = {}
    for name, entry in locked.items():
        if name == stage:
            continue
        for out in entry.get("outs") or []:
            path = PurePosixPath(os.path.normpath(str(out.get("path", ""))))
            digest = out.get("md5") or out.get("etag") or out.get("checksum")
            if digest and any(overlaps(dep, path) for dep in deps):
                found[str(path)] = str(digest)
    return sorted(found.items())
