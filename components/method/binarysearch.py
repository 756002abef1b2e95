"""Binary-search first-error labelling for hard-MC (OmegaPRM / EpicPRM style), a baseline of the benchmark.

Hard-MC labels of a path are 1 up to its first step with MC = 0 and 0 from there on. Assuming that a
prefix which cannot reach the gold answer stays unable to (monotonicity), the first error is found by
binary search over steps 1..T instead of a scan: probe the middle prefix; if some completion reaches
the gold answer, the first error is later, else it is here or earlier. A probe samples ``chunk``
completions at a time and stops at its first hit, or after K misses (the fixed-K rule for MC = 0). The
last step's MC is the path's own answer (known, never sampled). MC_0 and K come from wave 0 as in
fixed K.

Round r of a unit is ONE backend call, n = ``chunk``, holding every open probe of its paths (identical
prefixes once, a probe's result shared by the paths having that prefix), each probe continuing its
prefix's completion stream (``montecarlo.prefix_seed``), so its draws are fixed K's first ones on a
backend seeding per request. Where monotonicity fails (a zero step before a positive one),
the search may land on another zero step than the scan's first one: that is the cost of the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.backends import Backend
from components.method.montecarlo import Spend, Unit, k_for, prefix_text, sample_counts, wave_zero
from components.method.sequential import SequentialSettings


@dataclass
class SearchResult:
    """Per path: the first error (0-based step index, -1 for none), hard labels and cost."""

    mc0: float
    k: int
    first_errors: list[int]
    labels: list[list[int]]
    spend: list[Spend] = field(default_factory=list)


@dataclass
class _Probe:
    hits: int = 0
    n: int = 0
    spend: Spend = field(default_factory=Spend)


def _search_step(
    lo: int, hi: int, probes: dict[str, _Probe], steps: list[str], correct: bool, k: int
) -> tuple[int, int, str | None]:
    """One step of the search on [lo, hi] (1-based steps; hi = T + 1: no error): new bounds, or the
    prefix to probe (None when the bounds are final)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if mid == len(steps):  # the last step: its MC is the path's own answer
            lo, hi = (mid + 1, hi) if correct else (lo, mid)
            continue
        probe = probes.setdefault(prefix_text(steps, mid), _Probe())
        if probe.hits > 0:
            lo = mid + 1
        elif probe.n >= k:
            hi = mid
        else:
            return lo, hi, prefix_text(steps, mid)
    return lo, hi, None


def binary_search(backend: Backend, cfg: SequentialSettings, unit: Unit) -> SearchResult:
    """The hard-MC first error of every path of ``unit`` by binary search over its steps."""
    spend = [Spend() for _ in unit.paths]
    mc0 = wave_zero(backend, cfg, unit, spend)
    k = k_for(mc0, cfg)
    bounds = [(1, len(p.steps) + 1) for p in unit.paths]
    probes: dict[str, _Probe] = {}
    for _round in range(1, 1 + sum(len(p.steps) for p in unit.paths) * (k // cfg.chunk + 1)):
        wanted: list[str] = []
        for i, path in enumerate(unit.paths):
            lo, hi, prefix = _search_step(*bounds[i], probes, path.steps, path.correct, k)
            bounds[i] = (lo, hi)
            if prefix is not None:
                wanted.append(prefix)
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            break
        drawn = [probes[p].n for p in wanted]
        for prefix, (hits, cost) in zip(
            wanted, sample_counts(backend, cfg, unit, wanted, cfg.chunk, drawn), strict=True
        ):
            probes[prefix].hits += hits
            probes[prefix].n += cfg.chunk
            probes[prefix].spend.add(cost)
    charged: set[str] = set()
    firsts, labels = [], []
    for i, path in enumerate(unit.paths):
        first = bounds[i][0]  # 1-based; T + 1: no step with MC 0
        firsts.append(-1 if first > len(path.steps) else first - 1)
        labels.append([int(t < first) for t in range(1, len(path.steps) + 1)])
        for t in range(1, len(path.steps)):
            prefix = prefix_text(path.steps, t)
            if prefix in probes and prefix not in charged:
                charged.add(prefix)
                spend[i].add(probes[prefix].spend)
    return SearchResult(mc0, k, firsts, labels, spend)
