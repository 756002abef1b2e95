"""The pipeline as DVC sees it: stage order, a stage's paths, the hashes of the data it reads.

Read through DVC's own API (``dvc.repo.Repo``: its index of stages with ``${...}`` resolved from
params.yaml, the dependency graph, the hashes ``dvc.lock`` records), never by parsing ``dvc.yaml`` by
hand. The Prefect flow derives its task order from here (never a hard-coded stage list) and the MLflow
adapter (``components/platform/tracking.py``) finds a stage's metrics, plots and reports to log, and
the DVC hashes of the data a stage reads. Outside a DVC project (``genprm prepare`` in a scratch
directory) a stage has no paths and the order is empty: the stage still runs and is tracked.

    order = stage_order(Path("dvc.yaml"))                 # ['prepare', 'bootstrap', ...]
    paths = stage_paths(Path("dvc.yaml"), "label")        # deps, outs, metrics, plots
    inputs = stage_inputs(Path("."), "bootstrap")         # [(path, md5), ...] of upstream outputs
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any


@dataclass(frozen=True)
class StagePaths:
    """The paths a stage names in dvc.yaml (``${...}`` resolved by DVC), relative to the project."""

    deps: list[PurePosixPath] = field(default_factory=list)
    outs: list[PurePosixPath] = field(default_factory=list)
    metrics: list[PurePosixPath] = field(default_factory=list)
    plots: list[PurePosixPath] = field(default_factory=list)

    @property
    def produced(self) -> list[PurePosixPath]:
        return self.outs + self.metrics + self.plots


@contextlib.contextmanager
def _repo(project_dir: Path) -> Iterator[Any]:
    """DVC's repo rooted exactly at ``project_dir`` (None when that is not a DVC project)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    root = Path(project_dir).resolve()
    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        yield None
        return
    with repo:
        yield repo if Path(repo.root_dir).resolve() == root else None


def _pipeline_stages(repo: Any, dvc_yaml: Path) -> list[Any]:
    """The stages defined in ``dvc_yaml``, in file order."""
    target = Path(dvc_yaml).resolve()
    return [s for s in repo.index.stages if s.cmd and Path(s.path).resolve() == target]


def _rel(path: Any, repo: Any) -> PurePosixPath:
    return PurePosixPath(Path(path.fs_path).resolve().relative_to(Path(repo.root_dir).resolve()).as_posix())


def _paths(stage: Any, repo: Any) -> StagePaths:
    outs = [o for o in stage.outs if not (o.metric or o.plot)]
    return StagePaths(
        deps=[_rel(d, repo) for d in stage.deps],
        outs=[_rel(o, repo) for o in outs],
        metrics=[_rel(o, repo) for o in stage.outs if o.metric],
        plots=[_rel(o, repo) for o in stage.outs if o.plot],
    )


def read_stages(dvc_yaml: Path) -> list[str]:
    """The stage names of ``dvc_yaml`` in file order (none outside a DVC project)."""
    with _repo(Path(dvc_yaml).parent) as repo:
        return [] if repo is None else [s.name for s in _pipeline_stages(repo, dvc_yaml)]


def stage_paths(dvc_yaml: Path, stage: str) -> StagePaths:
    """The deps, outs, metrics and plots of ``stage``; an unknown stage has none."""
    with _repo(Path(dvc_yaml).parent) as repo:
        if repo is None:
            return StagePaths()
        found = [s for s in _pipeline_stages(repo, dvc_yaml) if s.name == stage]
        return _paths(found[0], repo) if found else StagePaths()


def stage_order(dvc_yaml: Path) -> list[str]:
    """The stages of ``dvc_yaml`` in dependency order (ties keep file order); a cycle is a ValueError."""
    import networkx as nx
    from dvc.exceptions import CyclicGraphError

    with _repo(Path(dvc_yaml).parent) as repo:
        if repo is None:
            return []
        stages = _pipeline_stages(repo, dvc_yaml)
        position = {s.name: i for i, s in enumerate(stages)}
        try:
            graph = repo.index.graph.subgraph(stages).reverse()  # edges: a stage -> what it needs
        except CyclicGraphError as exc:
            raise ValueError(f"{dvc_yaml}: the stages depend on each other in a cycle ({exc})") from exc
        return [s.name for s in nx.lexicographical_topological_sort(graph, key=lambda s: position[s.name])]


def stage_inputs(project_dir: Path, stage: str) -> list[tuple[str, str]]:
    """``(path, md5)`` of each upstream output ``stage`` reads, as DVC recorded it in ``dvc.lock``.

    Upstream stages finish (and are locked) before ``stage`` runs, so their recorded hashes describe the
    data this run reads. Source files (deps that no stage produces) are not datasets and are left out.
    """
    with _repo(Path(project_dir)) as repo:
        if repo is None:
            return []
        by_name = {s.name: s for s in _pipeline_stages(repo, Path(project_dir) / "dvc.yaml")}
        if stage not in by_name:
            return []
        found = {}
        for upstream in repo.index.graph.successors(by_name[stage]):
            for out in upstream.outs:
                if out.hash_info and out.hash_info.value:
                    found[str(_rel(out, repo))] = str(out.hash_info.value)
        deps = [_rel(d, repo) for d in by_name[stage].deps]
        return sorted((p, h) for p, h in found.items() if any(_overlaps(d, PurePosixPath(p)) for d in deps))


def _overlaps(dep: PurePosixPath, out: PurePosixPath) -> bool:
    """A dep needs an out when it is the out, lies inside it, or contains it."""
    return dep == out or out in dep.parents or dep in out.parents
