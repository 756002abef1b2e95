"""Best-of-N on held-out problems: the policy samples N solutions, the GenPRM scores every step, and
the selectors of ``components/method/bestofn.py`` pick (the ``benchmark`` stage's ``best_of_n`` part).

Problem sets: the held-out synthetic problems (``synthetic``) and each real file of
``benchmark.best_of_n.files`` that exists (by its stem). The policy samples max(n_values) solutions per
problem once; accuracy at a smaller N uses the first N of them.

    results, per_problem = best_of_n(cfg, scorer_cfg)   # cfg: BestOfNConfig
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from components.backends.base import BackendConfig
from components.method.bestofn import Candidate
from components.method.scorer import ScorerConfig
from components.method.scorerpool import Scorer, ScoringPool, open_scorer
from components.platform.config import option, section
from components.platform.errors import ConfigError


@dataclass(frozen=True)
class BestOfNConfig:
    """Best-of-N: which policy samples, on which problems, and how many."""

    policy: BackendConfig = section(BackendConfig, help="The policy sampling the N candidate solutions.")
    n_values: list[int] = option(
        [1, 2, 4, 8], help="N values of the accuracy-vs-N curve (the largest is sampled)."
    )
    problems: str | None = option("data/prepared/test.parquet", help="Held-out problems table (null: none).")
    max_problems: int = option(48, help="Held-out problems used.")
    files: list[str] = option(
        [], help="Real problem files (e.g. ../shared/data/math500.jsonl); a missing file is skipped."
    )
    file_max_problems: int = option(8, help="Problems used from each real file.")
    temperature: float = option(0.7, help="Policy sampling temperature.")
    max_tokens: int = option(160, help="Policy generation budget per solution.")
    vote_score: Literal["last", "min", "mean"] = option(
        "min", help="Solution score used by weighted voting: last, min or mean."
    )
    seed: int = option(0, help="Policy sampling seed.")

    def __post_init__(self) -> None:
        if not self.n_values or min(self.n_values) < 1:
            raise ConfigError("benchmark.best_of_n.n_values: need at least one N, all >= 1")


def bon_problem_sets(cfg: BestOfNConfig) -> dict[str, list[Any]]:
    """Held-out synthetic problems and the real files that exist, each cut to its configured size."""
    from components.data.sources import problem_sets

    return problem_sets(
        cfg.problems, cfg.max_problems, cfg.files, cfg.file_max_problems, "benchmark.best_of_n"
    )


def sample_solutions(cfg: BestOfNConfig, problems: list[Any]) -> list[list[Any]]:
    """max(n_values) graded policy samples per problem."""
    from components.backends.base import GenerationRequest, SamplingParams, make_backend
    from components.method.paths import make_path
    from components.method.prompts import STEP_PREFILL, chat_messages

    n = max(cfg.n_values)
    params = SamplingParams(n=n, temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed)
    requests = [GenerationRequest(messages=chat_messages(p.problem), prefill=STEP_PREFILL) for p in problems]
    with make_backend(cfg.policy) as policy:
        results = policy.generate(requests, params)
    return [
        [make_path(j, 0, sample, p.answer, "step_marker") for j, sample in enumerate(result.samples)]
        for p, result in zip(problems, results, strict=True)
    ]


def candidate_table(scorer: Scorer, problems: list[Any], paths: list[list[Any]], tag: str) -> list[list[Any]]:
    """Every sampled solution as a ``Candidate`` with its GenPRM step rewards (Pass@1)."""
    flat = [(p.problem, path.steps) for p, row in zip(problems, paths, strict=True) for path in row]
    scored = iter(scorer.score(flat, 1, desc=f"best-of-n {tag}"))
    return [[Candidate(path.answer, path.correct, next(scored).rewards()) for path in row] for row in paths]


def best_of_n(
    cfg: BestOfNConfig, scorer_cfg: ScorerConfig, pool: ScoringPool | None = None
) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """Accuracy vs N for every selector on every problem set, and each selector's per-problem score at
    the largest N (for the confidence intervals). ``pool``: score in its worker processes."""
    from components.method.bestofn import SELECTORS, accuracy, select

    sets = bon_problem_sets(cfg)
    sampled = {name: sample_solutions(cfg, problems) for name, problems in sets.items()}
    results: dict[str, Any] = {}
    per_problem: dict[str, dict[str, list[float]]] = {}
    largest = max(cfg.n_values)
    vote = cfg.vote_score
    with open_scorer(scorer_cfg, pool) as scorer:
        for name, problems in sets.items():
            table = candidate_table(scorer, problems, sampled[name], name)
            results[name] = {
                sel: {str(n): accuracy(table, sel, n, vote) for n in cfg.n_values} for sel in SELECTORS
            } | {"problems": len(problems)}
            per_problem[name] = {
                sel: [select(row[:largest], sel, vote) for row in table] for sel in SELECTORS
            }
    return results, per_problem
