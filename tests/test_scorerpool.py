"""Scoring in worker processes (``benchmark.workers``): the same rewards as one process, in order.

Real spawned processes, a real (tiny, random) model and the real sandbox in each worker.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest_backends import build_tiny_model

from components.backends.base import BackendConfig
from components.method.scorer import GenPRMScorer, ScorerConfig
from components.method.scorerpool import ScoringPool, open_scorer, scoring_pool
from components.platform.config import build_config
from components.platform.errors import ConfigError, GenPRMError
from components.sandbox import SandboxConfig
from components.stages.benchmark import BenchmarkConfig
from components.stages.refine import RefineConfig


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> ScorerConfig:
    model = build_tiny_model(tmp_path_factory.mktemp("tiny") / "genprm")
    return ScorerConfig(
        model=BackendConfig(model=str(model), batch_size=4),
        temperature=1.0,
        max_tokens=12,
        decoding="paper",
        sandbox=SandboxConfig(timeout_s=5, workers=1),
    )


def solutions(count: int) -> list[tuple[str, list[str]]]:
    return [
        (
            f"Tom has {i} apples and buys {i + 1} more. How many?",
            [f"{i} + {i + 1} = {2 * i + 1}", "Done."][: 1 + i % 2],
        )
        for i in range(count)
    ]


def test_the_pool_gives_one_process_rewards_in_order(cfg: ScorerConfig) -> None:
    work = solutions(5)  # odd: the two workers get 3 and 2 solutions
    with GenPRMScorer(cfg) as scorer:
        expected = scorer.score(work, samples=2)
    with ScoringPool(2) as pool:
        got = pool.scorer(cfg).score(work, samples=2)
        no_code = pool.scorer(replace(cfg, execute=False)).score(
            work[:3], samples=1
        )  # the same workers, a new config
    assert [len(s.samples[0]) for s in got] == [len(steps) for _, steps in work]
    for one, pooled in zip(expected, got, strict=True):
        assert pooled.samples == one.samples and pooled.critiques == one.critiques
    assert all(s.code_runs == 0 for s in no_code)
    assert any(s.code_runs > 0 for s in got) or all(s.missing_verdicts for s in got)


def test_a_worker_error_reaches_the_parent_as_one_message(cfg: ScorerConfig, tmp_path: Path) -> None:
    broken = replace(cfg, model=replace(cfg.model, model=str(tmp_path / "no-such-model")))
    with ScoringPool(2) as pool, pytest.raises(GenPRMError, match="no-such-model"):
        pool.scorer(broken).score(solutions(2), samples=1)


def test_one_worker_scores_in_this_process(cfg: ScorerConfig) -> None:
    with scoring_pool(1) as pool, open_scorer(cfg, pool) as scorer:
        assert pool is None and isinstance(scorer, GenPRMScorer)
    with pytest.raises(ConfigError, match="workers"), scoring_pool(0):
        pass


def test_workers_with_an_in_process_vllm_engine_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"benchmark\.workers"):
        build_config(BenchmarkConfig, {"workers": 2, "genprm": {"model": {"backend": "vllm"}}}, "benchmark")
    assert build_config(
        BenchmarkConfig, {"workers": 1, "genprm": {"model": {"backend": "vllm"}}}, "benchmark"
    )
    with pytest.raises(ConfigError, match=r"refine\.workers"):
        build_config(RefineConfig, {"workers": 2, "genprm": {"model": {"backend": "vllm"}}}, "refine")
