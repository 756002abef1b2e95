"""GenPRM scoring throughput: solutions advanced in lockstep (batched) vs one solution at a time.

Both sides run the same scorer, model, sandbox and solutions in this process; the baseline calls
``GenPRMScorer.score`` once per solution (the naive loop: one critique conversation at a time), ours
scores them all in one call, so each generation round is one batched ``generate`` over every open
conversation. Prints solutions/s, generated tokens/s and the ratio.

    python benchmarks/scorer.py --model models/genprm --solutions 32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from components.backends.base import BackendConfig
from components.method.processbench import load_subset
from components.method.scorer import GenPRMScorer, ScorerConfig
from components.platform.config import build_config


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/genprm")
    parser.add_argument("--data", default="data/prepared/processbench.jsonl")
    parser.add_argument("--solutions", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    records = load_subset(Path(args.data), args.solutions)
    solutions = [(r.problem, r.steps) for r in records]
    model = build_config(BackendConfig, {"model": args.model, "batch_size": 64}, "benchmark.model")
    cfg = ScorerConfig(model=model, temperature=0.0, max_tokens=192)
    with GenPRMScorer(cfg) as scorer:
        scorer.score(solutions[:2])  # warm-up: model load, sandbox start
        naive, naive_s = timed(lambda: [scorer.score([s], desc="one at a time")[0] for s in solutions])
        ours, ours_s = timed(lambda: scorer.score(solutions, desc="lockstep"))
    tokens = sum(s.tokens for s in ours)
    same = sum(a.rewards() == b.rewards() for a, b in zip(naive, ours, strict=True))
    steps = sum(len(s) for _, s in solutions)
    print(f"solutions: {len(solutions)}, steps: {steps}, generated tokens: {tokens}")
    print(f"one at a time: {len(solutions) / naive_s:.2f} solutions/s ({naive_s:.1f} s)")
    rate = f"{len(solutions) / ours_s:.2f} solutions/s ({ours_s:.1f} s, {tokens / ours_s:.0f} tok/s)"
    print(f"lockstep:      {rate}")
    print(f"ratio: {naive_s / ours_s:.1f}x   identical rewards (greedy): {same}/{len(solutions)}")


if __name__ == "__main__":
    main()
