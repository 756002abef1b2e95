"""Benchmark: Monte Carlo labelling of the same paths two ways, in one process, on the hf backend.

    python benchmarks/labeling.py [--model models/policy] [--rollouts data/rollout/rollouts.parquet]
                                  [--problems 8] [--k K] [--max-tokens 128] [--threads 2]
                                  [--check-problems 8]

- ours (``components.method.montecarlo.estimate``, what the label stage runs): per problem, wave t is ONE call
  holding the step-t prefixes of the paths still alive, identical prefixes once, n=K; paths stop at
  their first MC of 0.
- naive (the Math-Shepherd loop): for every path and every step t < T, K calls of n=1 (one request at a
  time), no early stop, no sharing of identical prefixes.

Both use the same K per problem (the label stage's schedule, or ``--k`` for every problem), the same
sampling settings and the same last-step rule, and their cost excludes MC_0 (given). The paths are the
first ``--problems`` problems of the rollout table's kept paths when it exists; otherwise synthetic
problems, each with its gold solution and three solutions with one injected error (MC_0 = 0.5). Without
``--model`` it falls back to the tests' tiny random model (its MC values are all 0, so early stopping
wins trivially: use the real policy for figures worth quoting).

Printed: calls, completions, generated tokens and wall time of both, and the ratios (targets: >= 2x
fewer tokens, >= 3x less time). Label agreement: at temperature > 0 the two methods draw different
samples (different call shapes and seeds), so their MC values can only agree statistically; the run
therefore reports agreement RATES at the configured temperature, and an exact check at temperature 0
with K = 1 on ``--check-problems`` problems, where both methods are deterministic: there, MC values on
the steps both sample, and the first-error predictions of RPE and hard-MC labels, must coincide
(batched and single greedy decoding can differ by float rounding on near-ties; mismatches are counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from components.backends import Backend, BackendConfig, GenerationRequest, SamplingParams  # noqa: E402
from components.backends.base import GenerationResult  # noqa: E402
from components.data.journal import unit_seed  # noqa: E402
from components.method.metrics import first_error_from_labels  # noqa: E402
from components.method.montecarlo import (  # noqa: E402
    Estimate,
    PathInput,
    Spend,
    Unit,
    estimate,
    hard_labels,
    k_for,
    prefix_text,
    rpe_labels,
    score_samples,
)
from components.stages.label import LabelConfig, rollout_units  # noqa: E402


class Counting(Backend):
    """Counts the calls made to the wrapped backend."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls = 0

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        self.calls += 1
        return self.inner.generate(requests, params)


def naive_estimate(backend: Backend, cfg: LabelConfig, unit: Unit) -> Estimate:
    """Math-Shepherd: K single-sample calls at every step prefix of every path, no early stop."""
    from components.method.prompts import chat_messages

    assert unit.mc0 is not None
    k = k_for(unit.mc0, cfg)
    messages = chat_messages(unit.problem)
    mcs, spends = [], []
    for path in unit.paths:
        spend, values = Spend(), []
        for t in range(1, len(path.steps)):
            prefill, hits = prefix_text(path.steps, t), 0
            for j in range(k):
                seed = unit_seed(cfg.seed, path.path_id, t, j)
                params = SamplingParams(
                    n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed
                )
                [result] = backend.generate([GenerationRequest(messages=messages, prefill=prefill)], params)
                sample = result.samples[0]
                hit, no_answer = score_samples(unit.gold, prefill, [sample.text])
                hits += hit
                spend.add(Spend(1, sample.num_generated_tokens, no_answer))
            values.append(hits / k)
        mcs.append([*values, float(path.correct)])
        spends.append(spend)
    return Estimate(unit.mc0, k, mcs, spends)


@dataclass
class Result:
    """One method's estimates and cost."""

    name: str
    estimates: list[Estimate]
    calls: int
    seconds: float

    @property
    def completions(self) -> int:
        return sum(s.completions for e in self.estimates for s in e.spend)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for e in self.estimates for s in e.spend)


def timed(name: str, method: object, backend: Backend, cfg: LabelConfig, units: list[Unit]) -> Result:
    counting = Counting(backend)
    start = time.perf_counter()
    estimates = [method(counting, cfg, unit) for unit in units]  # type: ignore[operator]
    return Result(name, estimates, counting.calls, time.perf_counter() - start)


def agreement(ours: Result, naive: Result, epsilon: float) -> dict[str, tuple[int, int]]:
    """(agreeing, compared) for MC values on jointly sampled steps and for first-error predictions."""
    counts = {"mc on steps both sampled": [0, 0], "first error (RPE)": [0, 0], "first error (hard)": [0, 0]}
    for ours_est, naive_est in zip(ours.estimates, naive.estimates, strict=True):
        for mine, theirs in zip(ours_est.mc, naive_est.mc, strict=True):
            zero = next((i for i, v in enumerate(mine[:-1]) if v == 0), len(mine) - 2)
            for i in range(zero + 1):  # ours sampled steps 1..first zero (never the last step)
                counts["mc on steps both sampled"][0] += mine[i] == theirs[i]
                counts["mc on steps both sampled"][1] += 1
            rpe = [first_error_from_labels(rpe_labels(ours_est.mc0, m, epsilon)) for m in (mine, theirs)]
            hard = [first_error_from_labels(hard_labels(m)) for m in (mine, theirs)]
            for key, (a, b) in (("first error (RPE)", rpe), ("first error (hard)", hard)):
                counts[key][0] += a == b
                counts[key][1] += 1
    return {key: (a, b) for key, (a, b) in counts.items()}


def synthetic_units(count: int) -> list[Unit]:
    """Problems of the small world, each with its gold solution and three one-error solutions."""
    from components.world.synthetic import (
        ERROR_KINDS,
        SyntheticConfig,
        generate_problems,
        gold_steps,
        inject_error,
        problem_text,
    )

    world, rng, units = SyntheticConfig(), random.Random(0), []
    for problem in generate_problems(world, count, seed=4242, prefix="bench"):
        paths = [PathInput(f"{problem.uid}/gold", gold_steps(problem), True)]
        while len(paths) < 4:
            steps = inject_error(
                problem, rng, world, rng.choice(ERROR_KINDS), rng.randrange(len(problem.operations))
            )
            if steps is not None and all(steps != p.steps for p in paths):
                paths.append(PathInput(f"{problem.uid}/err{len(paths)}", steps, False))
        units.append(Unit("rollout", problem.uid, problem_text(problem), str(problem.answer), 0.5, paths))
    return units


def load_units(rollouts: Path, count: int) -> list[Unit]:
    if rollouts.is_file():
        from components.data.io import read_parquet

        print(f"paths: kept paths of {rollouts}")
        # the pass rate as MC_0 (label.mc0: rollout): both methods then start from the same MC_0
        return rollout_units(read_parquet(rollouts), rollouts, mc0="rollout")[:count]
    print(f"paths: {rollouts} not found; synthetic problems with 1 gold + 3 one-error solutions each")
    return synthetic_units(count)


def resolve_model(model: str, scratch: Path) -> Path:
    path = Path(model)
    if path.is_dir():
        return path
    from conftest_backends import build_tiny_model

    print(f"note: {model} does not exist; using the tests' tiny random model (MC values will be ~0)")
    return build_tiny_model(scratch / "tiny-model")


def report(ours: Result, naive: Result, epsilon: float, title: str) -> None:
    print(f"\n{title}")
    print(f"{'method':<8} {'calls':>7} {'completions':>12} {'gen tokens':>11} {'seconds':>9}")
    for r in (ours, naive):
        print(f"{r.name:<8} {r.calls:>7} {r.completions:>12} {r.tokens:>11} {r.seconds:>9.1f}")
    token_ratio = naive.tokens / max(ours.tokens, 1)
    time_ratio = naive.seconds / max(ours.seconds, 1e-9)
    print(
        f"naive/ours: {token_ratio:.2f}x generated tokens (target >= 2x), {time_ratio:.2f}x wall time (>= 3x)"
    )
    for key, (agree, total) in agreement(ours, naive, epsilon).items():
        print(f"agreement, {key}: {agree}/{total} = {agree / max(total, 1):.1%}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="models/policy")
    parser.add_argument("--rollouts", default="data/rollout/rollouts.parquet")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--k", type=int, default=None, help="K for every problem (default: the schedule)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check-problems", type=int, default=8, help="problems for the greedy K=1 check")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    units = load_units(Path(args.rollouts), args.problems)
    with tempfile.TemporaryDirectory() as scratch:
        model = resolve_model(args.model, Path(scratch))
        from components.backends import make_backend

        cfg = LabelConfig(completer=BackendConfig(model=str(model)), max_tokens=args.max_tokens)
        if args.k:
            cfg = dataclasses.replace(cfg, k_low=args.k, k_mid=args.k, k_high=args.k)
        paths = sum(len(u.paths) for u in units)
        print(f"model: {model}  problems: {len(units)}  paths: {paths}  threads: {torch.get_num_threads()}")
        with make_backend(cfg.completer) as backend:
            estimate(backend, cfg, units[0])  # warm-up
            ours = timed("ours", estimate, backend, cfg, units)
            naive = timed("naive", naive_estimate, backend, cfg, units)
            report(ours, naive, cfg.epsilon, f"sampled at temperature {cfg.temperature}, K by the schedule")
            greedy = dataclasses.replace(cfg, temperature=0.0, k_low=1, k_mid=1, k_high=1)
            check = units[: args.check_problems]
            ours = timed("ours", estimate, backend, greedy, check)
            naive = timed("naive", naive_estimate, backend, greedy, check)
            report(ours, naive, cfg.epsilon, "exact check: temperature 0, K = 1 (both deterministic)")


if __name__ == "__main__":
    main()
