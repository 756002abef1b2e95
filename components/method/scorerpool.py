"""Scoring with a GenPRM in several processes at once (``benchmark.workers``).

On the 2-core machine two single-thread processes critique about twice the steps per second of one
two-thread process: the small GenPRM's matrices are too small for torch's threads to pay off, and each
process's Python loop (sampling, stop strings, the sandbox round trips) runs beside the other's.

A :class:`ScoringPool` keeps n spawned worker processes for the life of a stage. ``pool.scorer(cfg)``
gives an object with ``GenPRMScorer.score``'s signature: each call sends worker i the solutions
``i, i + n, i + 2n, ...`` and puts the answers back in order. A worker builds its ``GenPRMScorer``
(model, sandbox, one torch thread) the first time it sees a config and keeps it until the next config,
so the GenPRM and its baselines share the same processes. Chains are seeded by their content
(``GenPRMScorer.score``) and every engine row samples with its own generator, so the rewards are those
of one process scoring everything; batching other rows beside a chain changes float rounding only.

Errors: a worker's ``GenPRMError`` (an unreadable model, a bad config) is raised in the parent as it
was raised; a worker that dies (killed, out of memory) fails the call with one message. Worker 0 shows
its progress bar; the others run without one.

    with ScoringPool(2) as pool:
        scored = pool.scorer(cfg).score(solutions, samples=8)
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from components.data.workers import check_workers
from components.platform.errors import ConfigError, GenPRMError

if TYPE_CHECKING:
    from components.method.scorer import GenPRMScorer, ScoredSolution, ScorerConfig

log = logging.getLogger(__name__)

_WORKER: dict[str, Any] = {}
"""In a worker process: the config it scores with, its ``GenPRMScorer`` and that scorer's finalizer."""


class Scorer(Protocol):
    """What the benchmark needs of a scorer: ``GenPRMScorer.score``."""

    def score(
        self, solutions: list[tuple[str, list[str]]], samples: int = 1, desc: str = "genprm"
    ) -> list[ScoredSolution]: ...


def _worker_scorer(cfg: ScorerConfig) -> GenPRMScorer:
    """This worker's scorer for ``cfg``: the one it has, or a new one (the previous one closed)."""
    from multiprocessing.util import Finalize

    import torch

    from components.method.scorer import GenPRMScorer

    if _WORKER.get("cfg") != cfg:
        if "close" in _WORKER:
            _WORKER.pop("close")()  # the previous scorer's finalizer: closes it now, and not again at exit
        torch.set_num_threads(1)
        fresh = GenPRMScorer(cfg)
        # The finalizer also runs when the worker process exits: the sandbox's processes end with it.
        _WORKER.update(cfg=cfg, scorer=fresh, close=Finalize(fresh, fresh.close, exitpriority=10))
    scorer: GenPRMScorer = _WORKER["scorer"]
    return scorer


def _score_slice(
    cfg: ScorerConfig, solutions: list[tuple[str, list[str]]], samples: int, desc: str, progress: bool
) -> list[ScoredSolution]:
    """In a worker: score one slice of a call."""
    return _worker_scorer(cfg).score(solutions, samples, desc=desc, progress=progress)


class PooledScorer:
    """``GenPRMScorer.score`` on a pool's workers, for one scorer config."""

    def __init__(self, pool: ScoringPool, cfg: ScorerConfig) -> None:
        self.pool = pool
        self.cfg = cfg

    def score(
        self, solutions: list[tuple[str, list[str]]], samples: int = 1, desc: str = "genprm"
    ) -> list[ScoredSolution]:
        """Rewards for every step of every solution, the n workers scoring interleaved slices."""
        n = self.pool.workers
        slices = [solutions[i::n] for i in range(n)]
        label = f"{desc} (worker 1 of {n})"
        futures = [
            self.pool.executor.submit(_score_slice, self.cfg, part, samples, label, i == 0)
            for i, part in enumerate(slices)
            if part
        ]
        try:
            parts = [future.result() for future in futures]
        except BrokenProcessPool as exc:
            raise GenPRMError(f"{desc}: a scoring worker process died ({exc})") from exc
        out: list[Any] = [None] * len(solutions)
        for i, part in enumerate(parts):
            out[i::n] = part
        return out

    def close(self) -> None:
        """Nothing to close: the pool owns the workers (``GenPRMScorer.close``'s place in callers)."""


class ScoringPool:
    """n spawned worker processes that score with a GenPRM; a context manager."""

    def __init__(self, workers: int) -> None:
        if workers < 2:
            raise ConfigError(f"ScoringPool: needs at least 2 workers, got {workers}")
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        log.info("scoring in %d worker processes", workers)

    def scorer(self, cfg: ScorerConfig) -> PooledScorer:
        return PooledScorer(self, cfg)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_scorer(cfg: ScorerConfig, pool: ScoringPool | None) -> PooledScorer | GenPRMScorer:
    """A scorer for ``cfg`` (the caller closes it): the pool's workers where there is a pool, else a
    ``GenPRMScorer`` in this process."""
    if pool is not None:
        return pool.scorer(cfg)
    from components.method.scorer import GenPRMScorer

    return GenPRMScorer(cfg)


@contextmanager
def open_scorer(cfg: ScorerConfig, pool: ScoringPool | None) -> Iterator[Scorer]:
    """:func:`make_scorer` as a context manager: closed on exit."""
    scorer = make_scorer(cfg, pool)
    try:
        yield scorer
    finally:
        scorer.close()


def check_pool_workers(workers: int, backend: str, where: str) -> None:
    """``<where>.workers`` >= 1, and 1 with an in-process vLLM engine (each worker would start its own
    engine on the same GPU)."""
    check_workers(workers, where)
    if workers > 1 and backend == "vllm":
        raise ConfigError(f"{where}.workers: must be 1 with {where}.genprm.model.backend vllm")


@contextmanager
def scoring_pool(workers: int) -> Iterator[ScoringPool | None]:
    """A pool of ``workers`` processes, or None for ``workers`` 1 (everything in this process)."""
    check_workers(workers, "scoring_pool")
    if workers == 1:
        yield None
        return
    with ScoringPool(workers) as pool:
        yield pool
