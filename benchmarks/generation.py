"""Benchmark: hf backend generation throughput, batched vs one request at a time, in one process.

    python benchmarks/generation.py [--model models/policy] [--prompts 32] [--batch-size 32]
                                    [--max-tokens 64] [--repeats 2] [--threads N]

Loads the policy model directory (if it does not exist, builds the tests' tiny random Qwen2 into a
temporary directory and says so), makes ``--prompts`` synthetic arithmetic chat prompts, and generates
greedily with the same prompts and ``max_tokens`` twice: all prompts through one backend with
``batch_size=--batch-size``, and one ``generate`` call per prompt. Prints generated tokens/s of both
(best of ``--repeats``) and the ratio; the target is >= 4x at batch 32.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from components.backends.base import BackendConfig, GenerationRequest, SamplingParams  # noqa: E402
from components.backends.hf import HFBackend  # noqa: E402


@dataclass
class Run:
    """One timed mode."""

    mode: str
    batch_size: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


def make_prompts(count: int, seed: int = 0) -> list[GenerationRequest]:
    """Chat prompts asking for step-by-step sums and products of 2-5 small numbers."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        terms = [str(rng.randint(1, 99)) for _ in range(rng.randint(2, 5))]
        op = rng.choice([" + ", " * ", " - "])
        question = f"Compute {op.join(terms)}. Show each step, then give the answer."
        requests.append(GenerationRequest(messages=[{"role": "user", "content": question}]))
    return requests


def resolve_model(model: str, scratch: Path) -> Path:
    """The model directory, or a freshly built tiny random model when it does not exist."""
    path = Path(model)
    if path.is_dir():
        return path
    from conftest_backends import build_tiny_model

    print(f"note: {model} does not exist; using the tests' tiny random Qwen2 (hidden 32, 2 layers) instead")
    return build_tiny_model(scratch / "tiny-model")


def timed(
    backend: HFBackend, requests: list[GenerationRequest], params: SamplingParams, batched: bool
) -> Run:
    start = time.perf_counter()
    if batched:
        results = backend.generate(requests, params)
    else:
        results = [backend.generate([r], params)[0] for r in requests]
    seconds = time.perf_counter() - start
    tokens = sum(s.num_generated_tokens for r in results for s in r.samples)
    mode = "batched" if batched else "one at a time"
    return Run(mode, backend.cfg.batch_size if batched else 1, tokens, seconds)


def best_of(repeats: int, *args: object) -> Run:
    runs = [timed(*args) for _ in range(repeats)]  # type: ignore[arg-type]
    return min(runs, key=lambda r: r.seconds)


def print_table(model: Path, runs: list[Run], max_tokens: int) -> None:
    threads = torch.get_num_threads()
    print(f"\nmodel: {model}   device: cpu   torch threads: {threads}   max_tokens: {max_tokens}")
    print(f"{'mode':<15} {'batch':>5} {'gen tokens':>10} {'seconds':>8} {'tokens/s':>10}")
    for run in runs:
        cells = f"{run.batch_size:>5} {run.tokens:>10} {run.seconds:>8.2f} {run.tokens_per_s:>10.1f}"
        print(f"{run.mode:<15} {cells}")
    ratio = runs[0].tokens_per_s / runs[1].tokens_per_s
    print(f"\nspeed-up of batched over one at a time: {ratio:.1f}x (target >= 4x)")


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="models/policy")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        model = resolve_model(args.model, Path(scratch))
        backend = HFBackend(BackendConfig(model=str(model), batch_size=args.batch_size))
        requests = make_prompts(args.prompts)
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
        backend.generate(requests[:2], SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
        runs = [
            best_of(args.repeats, backend, requests, params, True),
            best_of(args.repeats, backend, requests, params, False),
        ]
    print_table(model, runs, args.max_tokens)
    return runs[0].tokens_per_s / runs[1].tokens_per_s


if __name__ == "__main__":
    main()
