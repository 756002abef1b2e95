"""Critique-loop throughput: the continuous loop against the lockstep loop, in one process.

Both loops run the same GenPRM (one loaded model), sandbox, solutions and scorer settings; only
``ScorerConfig.loop`` differs (``components/method/loops.py``): ``lockstep`` is the former loop (every
open chain takes one round per batched ``generate`` call, each batch runs until its longest member
stops, every round re-encodes every conversation), ``continuous`` the continuous-batching engine with
KV reuse across rounds (``components/backends/engine.py``). Each repeat times both (in alternating
order) and prints critiques (step turns) per second and the ratio; the summary gives the mean ratio
and its spread (min - max) over the repeats. With ``--temperature 0`` it also counts the steps whose
verdicts agree (greedy decoding: the same prompts must give the same verdicts).

    python benchmarks/scorer.py --model models/genprm --solutions 16 --samples 2 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from components.backends.base import BackendConfig, make_backend
from components.method.critique import Loop
from components.method.processbench import load_subset
from components.method.scorer import GenPRMScorer, ScoredSolution, ScorerConfig
from components.platform.config import build_config
from components.sandbox import Sandbox, SandboxConfig

LOOPS: tuple[Loop, Loop] = ("lockstep", "continuous")


def run_once(
    cfg: ScorerConfig, backend: Any, sandbox: Sandbox, solutions: list[tuple[str, list[str]]], samples: int
) -> tuple[list[ScoredSolution], float]:
    """Score ``solutions`` with ``cfg``; the results and the seconds it took."""
    scorer = GenPRMScorer(cfg, backend=backend, sandbox=sandbox)
    start = time.perf_counter()
    scored = scorer.score(solutions, samples, desc=cfg.loop)
    return scored, time.perf_counter() - start


def verdicts(scored: list[ScoredSolution]) -> list[int | None]:
    """Every step verdict (reward >= 0.5) of every sample, flattened; None where none was given."""
    return [None if r is None else int(r >= 0.5) for s in scored for row in s.samples for r in row]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="models/genprm")
    parser.add_argument("--data", default="data/prepared/processbench.jsonl")
    parser.add_argument("--solutions", type=int, default=16)
    parser.add_argument("--samples", type=int, default=2, help="critiques per solution (Maj@N)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--decoding", default="free", choices=["free", "paper"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    records = load_subset(Path(args.data), args.solutions)
    solutions = [(r.problem, r.steps) for r in records]
    model = build_config(
        BackendConfig, {"model": args.model, "batch_size": args.batch_size}, "benchmark.model"
    )
    base = ScorerConfig(
        model=model, temperature=args.temperature, max_tokens=args.max_tokens, decoding=args.decoding
    )
    steps = sum(len(s) for _, s in solutions) * args.samples
    backend = make_backend(model)
    ratios: list[float] = []
    with backend, Sandbox(SandboxConfig(timeout_s=5.0, workers=2)) as sandbox:
        run_once(replace(base, loop="continuous"), backend, sandbox, solutions[:2], 1)  # warm-up
        for repeat in range(args.repeats):
            order = LOOPS if repeat % 2 == 0 else LOOPS[::-1]
            runs = {
                loop: run_once(replace(base, loop=loop), backend, sandbox, solutions, args.samples)
                for loop in order
            }
            rate = {loop: steps / seconds for loop, (_, seconds) in runs.items()}
            ratios.append(rate["continuous"] / rate["lockstep"])
            tokens = {loop: sum(s.tokens for s in scored) for loop, (scored, _) in runs.items()}
            line = ", ".join(
                f"{loop} {rate[loop]:.2f} critiques/s ({runs[loop][1]:.1f} s, {tokens[loop]} tokens)"
                for loop in LOOPS
            )
            print(f"repeat {repeat + 1}: {line}; ratio {ratios[-1]:.2f}x", flush=True)
            if args.temperature == 0:
                old, new = verdicts(runs["lockstep"][0]), verdicts(runs["continuous"][0])
                same = sum(a == b for a, b in zip(old, new, strict=True))
                print(f"  greedy verdicts identical: {same}/{len(old)}")
    print(f"solutions {len(solutions)} x {args.samples} samples = {steps} critiques per loop and repeat")
    spread = f"{min(ratios):.2f} - {max(ratios):.2f}"
    mean = statistics.mean(ratios)
    print(
        f"continuous / lockstep critiques per second: {mean:.2f}x "
        f"(spread {spread} over {len(ratios)} repeats)"
    )


if __name__ == "__main__":
    main()
