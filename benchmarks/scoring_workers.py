"""GenPRM scoring in worker processes (``benchmark.workers``) against one process, in one run.

The baseline is one process with ``--threads`` torch threads (the benchmark stage before workers); the
candidate is a ``ScoringPool`` of ``--workers`` processes with one thread each
(``components/method/scorerpool.py``). Both score the same ProcessBench records with the same scorer
settings (paper decoding, continuous loop, code execution). Each repeat times both in alternating order
and prints critiques (step turns) per second; the summary gives the mean ratio and its spread, and how
many step rewards agree between the two (they should: chains are seeded by their content).

    python benchmarks/scoring_workers.py --model models/genprm --solutions 40 --samples 2 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from components.backends.base import BackendConfig
from components.method.processbench import load_subset
from components.method.scorer import GenPRMScorer, ScoredSolution, ScorerConfig
from components.method.scorerpool import ScoringPool
from components.platform.config import build_config
from components.sandbox import SandboxConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="models/genprm")
    parser.add_argument("--data", default="data/prepared/processbench.jsonl")
    parser.add_argument("--solutions", type=int, default=40)
    parser.add_argument("--samples", type=int, default=2, help="critiques per solution (Maj@N)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the one-process baseline")
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args()


def rewards(scored: list[ScoredSolution]) -> list[float | None]:
    return [r for s in scored for row in s.samples for r in row]


def one_process(
    cfg: ScorerConfig, solutions: list[tuple[str, list[str]]], samples: int
) -> list[ScoredSolution]:
    with GenPRMScorer(cfg) as scorer:
        return scorer.score(solutions, samples, desc="one process")


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    solutions = [(r.problem, r.steps) for r in load_subset(Path(args.data), args.solutions)]
    model = build_config(BackendConfig, {"model": args.model, "batch_size": 64}, "benchmark.model")
    cfg = ScorerConfig(model=model, decoding="paper", sandbox=SandboxConfig(timeout_s=5.0, workers=2))
    critiques = sum(len(steps) for _, steps in solutions) * args.samples
    ratios: list[float] = []
    agree: list[float] = []
    with ScoringPool(args.workers) as pool:
        pool.scorer(cfg).score(solutions[: args.workers], 1, desc="warm-up")  # loads the model per worker
        for repeat in range(args.repeats):
            seconds: dict[str, float] = {}
            results: dict[str, list[ScoredSolution]] = {}
            for arm in ("one", "pool") if repeat % 2 == 0 else ("pool", "one"):
                start = time.perf_counter()
                if arm == "one":
                    results[arm] = one_process(cfg, solutions, args.samples)
                else:
                    results[arm] = pool.scorer(cfg).score(solutions, args.samples, desc="pool")
                seconds[arm] = time.perf_counter() - start
            ratios.append(seconds["one"] / seconds["pool"])
            a, b = rewards(results["one"]), rewards(results["pool"])
            agree.append(
                sum(
                    x == y or (x is not None and y is not None and abs(x - y) < 1e-3)
                    for x, y in zip(a, b, strict=True)
                )
                / len(a)
            )
            print(
                f"repeat {repeat + 1}: one process ({args.threads} threads) {critiques / seconds['one']:.2f} "
                f"critiques/s, {args.workers} workers {critiques / seconds['pool']:.2f} critiques/s; "
                f"ratio {ratios[-1]:.2f}x; step rewards equal {100 * agree[-1]:.1f}%",
                flush=True,
            )
    print(f"solutions {len(solutions)} x {args.samples} samples = {critiques} critiques per arm and repeat")
    print(
        f"{args.workers} workers / one process critiques per second: {statistics.mean(ratios):.2f}x "
        f"(spread {min(ratios):.2f} - {max(ratios):.2f} over {len(ratios)} repeats); "
        f"step rewards equal {100 * min(agree):.1f}% or more"
    )


if __name__ == "__main__":
    main()
