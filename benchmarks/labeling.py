"""Benchmark: Monte Carlo labelling of the same paths five ways, side by side, in one process (hf backend).

    python benchmarks/labeling.py [--model models/policy] [--rollouts data/rollout/rollouts.parquet]
                                  [--processbench data/prepared/processbench.jsonl] [--records 24]
                                  [--problems 8] [--k K] [--max-tokens 128] [--threads 2]
                                  [--delta 0.05] [--chunk 4] [--check-problems 8]

- naive (the Math-Shepherd loop): for every path and every step t < T, K calls of n=1 (one request at a
  time), no early stop, no sharing of identical prefixes. Rollout problems only (it needs MC_0 given).
- fixed (``label.sampling: fixed``, ``components.method.montecarlo.estimate``): per problem, wave t is ONE
  call holding the step-t prefixes of the paths still alive, identical prefixes once, n=K; paths stop at
  their first MC of 0.
- fixed, seed 1: the same with another seed. Its agreement with ``fixed`` is the noise floor: how far two
  fixed-K runs drawing different samples agree.
- sequential (``label.sampling: sequential``, ``components.method.sequential``): chunks of ``--chunk``
  until each step's labels are decided with confidence >= 1 - ``--delta``, never past K.
- seq. predictive (``label.decide: predictive``, ``components.method.predictive``): the same chunks, each
  step stopping once the label fixed K would write is decided with posterior probability >= 1 - delta.
- binary (``components.method.binarysearch``): hard-MC first error by binary search (a baseline; hard
  labels only).

Seeds (``--seeds``): ``request`` (the default) runs the hf backend with one generator per completion
(``seeds: request``, as vLLM does), so completion j of a prefix is the same draw in every mode
(``montecarlo.prefix_seed``): naive's samples are fixed K's, and sequential and binary search read fixed
K's first samples and differ from it only by where they stop. ``auto`` is the hf backend's one seed per
call: every mode then draws its own samples and no mode can agree with fixed K better than
``fixed, seed 1`` does.

All use the same K per problem (the label stage's schedule, or ``--k``), the same sampling settings and
the same last-step rule. Rollout problems take the pass rate as MC_0 (all modes start from the same
MC_0, and naive needs it); ProcessBench records (``--records`` of them, with gold first errors) get MC_0
from wave 0 of the completer, the same call in every mode. Printed per mode: calls, completions,
generated tokens, wall time, the token ratio against fixed K and naive, the step-label agreement with
fixed K (RPE and hard-MC labels, over every step of every path the mode labelled), and the ProcessBench
label F1 (RPE and hard-MC first errors against the gold ones). Targets (issue 18): a sequential mode
agrees with fixed on >= 97% of steps, its F1 is within 1 point, and it generates >= 2x fewer tokens.

The paths are the first ``--problems`` problems of the rollout table's kept paths when it exists;
otherwise synthetic problems, each with its gold solution and three solutions with one injected error
(MC_0 = 0.5). Without ``--model`` it falls back to the tests' tiny random model (its MC values are all 0:
use the real policy for figures worth quoting). Last, an exact check at temperature 0 with K = 1 on
``--check-problems`` problems, where fixed and naive are deterministic: their MC values on the steps
both sample, and their first errors, must coincide (batched and single greedy decoding can differ by
float rounding on near-ties; mismatches are counted).
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
from components.method.binarysearch import binary_search  # noqa: E402
from components.method.metrics import first_error_from_labels, processbench_f1  # noqa: E402
from components.method.montecarlo import (  # noqa: E402
    Estimate,
    PathInput,
    Spend,
    Unit,
    estimate,
    hard_labels,
    k_for,
    prefix_seed,
    prefix_text,
    rpe_labels,
    score_samples,
)
from components.method.sequential import estimate_sequential  # noqa: E402
from components.stages.label import LabelConfig, processbench_units, rollout_units  # noqa: E402


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
            params = SamplingParams(
                n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed
            )
            stream = prefix_seed(cfg, unit, prefill)
            for j in range(k):
                request = GenerationRequest(messages=messages, prefill=prefill, seed=stream + j)
                [result] = backend.generate([request], params)
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
    """One mode on one set of units: step labels per path (RPE None for binary), first errors, cost."""

    name: str
    rpe: list[list[int]] | None
    hard: list[list[int]]
    spend: list[Spend]
    calls: int
    seconds: float

    @property
    def completions(self) -> int:
        return sum(s.completions for s in self.spend)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.spend)


def from_estimates(
    estimates: list[Estimate], epsilon: float
) -> tuple[list[list[int]], list[list[int]], list[Spend]]:
    """RPE labels, hard labels and cost per path of ``estimates``."""
    rpe = [rpe_labels(e.mc0, mc, epsilon) for e in estimates for mc in e.mc]
    hard = [hard_labels(mc) for e in estimates for mc in e.mc]
    return rpe, hard, [s for e in estimates for s in e.spend]


def timed(name: str, mode: str, backend: Backend, cfg: LabelConfig, units: list[Unit]) -> Result:
    """Run ``mode`` (naive, fixed, sequential, binary) on ``units``, counting calls and time."""
    counting = Counting(backend)
    start = time.perf_counter()
    if mode == "binary":
        found = [binary_search(counting, cfg, unit) for unit in units]
        hard = [labels for r in found for labels in r.labels]
        spend = [s for r in found for s in r.spend]
        return Result(name, None, hard, spend, counting.calls, time.perf_counter() - start)
    method = {"naive": naive_estimate, "fixed": estimate, "sequential": estimate_sequential}[mode]
    estimates = [method(counting, cfg, unit) for unit in units]
    seconds = time.perf_counter() - start
    rpe, hard, spend = from_estimates(estimates, cfg.epsilon)
    return Result(name, rpe, hard, spend, counting.calls, seconds)


def step_agreement(mine: list[list[int]] | None, target: list[list[int]] | None) -> tuple[int, int]:
    """(steps whose labels agree, steps) between two modes' labels of the same paths."""
    if mine is None or target is None:
        return 0, 0
    pairs = [(a, b) for x, y in zip(mine, target, strict=True) for a, b in zip(x, y, strict=True)]
    return sum(a == b for a, b in pairs), len(pairs)


def label_f1(labels: list[list[int]] | None, gold: list[int]) -> float | None:
    """ProcessBench F1 (percent) of the first errors of ``labels`` against the gold first errors."""
    if labels is None or not gold:
        return None
    return 100 * processbench_f1(gold, [first_error_from_labels(x) for x in labels])["f1"]


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


def _percent(counts: tuple[int, int]) -> str:
    agree, total = counts
    return f"{agree / total:.1%}" if total else "-"


def _f1(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(runs: dict[str, dict[str, Result]], gold: list[int]) -> None:
    """The side-by-side table: cost, token ratios, agreement with fixed K, ProcessBench F1."""
    print(
        f"\n{'mode':<15} {'calls':>6} {'completions':>11} {'gen tokens':>10} {'seconds':>8} "
        f"{'fixed/mode':>10} {'naive/mode':>10} {'agree RPE':>9} {'agree hard':>10} "
        f"{'F1 RPE':>6} {'F1 hard':>7}"
    )
    fixed, naive = runs["fixed"], runs["naive"]
    for name, sets in runs.items():
        both = [k for k in sets if k in fixed]
        tokens = sum(sets[k].tokens for k in both)
        ratio_fixed = sum(fixed[k].tokens for k in both) / max(tokens, 1)
        ratio_naive = naive["rollout"].tokens / max(sets["rollout"].tokens, 1) if "rollout" in sets else None
        agree = [step_agreement(sets[k].rpe, fixed[k].rpe) for k in both]
        hard = [step_agreement(sets[k].hard, fixed[k].hard) for k in both]
        bench = sets.get("processbench")
        print(
            f"{name:<15} {sum(r.calls for r in sets.values()):>6} "
            f"{sum(r.completions for r in sets.values()):>11} {sum(r.tokens for r in sets.values()):>10} "
            f"{sum(r.seconds for r in sets.values()):>8.1f} {ratio_fixed:>9.2f}x "
            f"{'-' if ratio_naive is None else f'{ratio_naive:.2f}x':>10} "
            f"{_percent((sum(a for a, _ in agree), sum(t for _, t in agree))):>9} "
            f"{_percent((sum(a for a, _ in hard), sum(t for _, t in hard))):>10} "
            f"{_f1(label_f1(bench.rpe, gold) if bench else None):>6} "
            f"{_f1(label_f1(bench.hard, gold) if bench else None):>7}"
        )
    print(
        "fixed/mode, agreement: over the sets both ran (naive: rollout problems only); naive/mode: rollout "
        "problems. F1: ProcessBench records. Targets for sequential: agreement >= 97%, F1 within 1 point "
        "of fixed, fixed/mode >= 2x."
    )


def exact_check(backend: Backend, cfg: LabelConfig, units: list[Unit]) -> None:
    """Temperature 0, K = 1: fixed and naive are deterministic, their labels must coincide."""
    greedy = dataclasses.replace(cfg, temperature=0.0, k_low=1, k_mid=1, k_high=1, chunk=1)
    fixed, naive = (timed(m, m, backend, greedy, units) for m in ("fixed", "naive"))
    print(f"\nexact check: temperature 0, K = 1 on {len(units)} problems (fixed and naive deterministic)")
    for kind in ("rpe", "hard"):
        firsts = [
            (first_error_from_labels(a), first_error_from_labels(b))
            for a, b in zip(getattr(fixed, kind), getattr(naive, kind), strict=True)
        ]
        agree = sum(a == b for a, b in firsts)
        tokens = f"tokens {fixed.tokens} vs {naive.tokens}"
        print(f"first errors ({kind}) fixed vs naive: {agree}/{len(firsts)}; {tokens}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="models/policy")
    parser.add_argument("--rollouts", default="data/rollout/rollouts.parquet")
    parser.add_argument("--processbench", default="data/prepared/processbench.jsonl")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--records", type=int, default=24, help="ProcessBench records (label F1)")
    parser.add_argument("--k", type=int, default=None, help="K for every problem (default: the schedule)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--seeds", choices=["request", "auto"], default="request", help="hf seeding")
    parser.add_argument("--check-problems", type=int, default=8, help="problems for the greedy K=1 check")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = {"rollout": load_units(Path(args.rollouts), args.problems)}
    if Path(args.processbench).is_file() and args.records > 0:
        sets["processbench"] = processbench_units(Path(args.processbench), args.records)
    gold = [p.label for u in sets.get("processbench", []) for p in u.paths if p.label is not None]
    with tempfile.TemporaryDirectory() as scratch:
        model = resolve_model(args.model, Path(scratch))
        from components.backends import make_backend

        cfg = LabelConfig(
            completer=BackendConfig(model=str(model), seeds=args.seeds), max_tokens=args.max_tokens,
            delta=args.delta,
            chunk=args.chunk, sampling="sequential",
        )  # fmt: skip
        if args.k:
            cfg = dataclasses.replace(cfg, k_low=args.k, k_mid=args.k, k_high=args.k)
        paths = {k: sum(len(u.paths) for u in v) for k, v in sets.items()}
        print(f"model: {model}  units: { {k: len(v) for k, v in sets.items()} }  paths: {paths}")
        print(
            f"temperature {cfg.temperature}, K by the schedule, delta {cfg.delta}, chunk {cfg.chunk}, "
            f"seeds {args.seeds}"
        )
        with make_backend(cfg.completer) as backend:
            estimate(backend, cfg, sets["rollout"][0])  # warm-up
            modes = [("naive", "naive"), ("fixed", "fixed"), ("fixed, seed 1", "fixed")]
            modes += [("sequential", "sequential"), ("seq. predictive", "sequential")]
            modes += [("binary (hard)", "binary")]
            runs: dict[str, dict[str, Result]] = {}
            for name, mode in modes:
                run_cfg = dataclasses.replace(cfg, seed=1) if name == "fixed, seed 1" else cfg
                if name == "seq. predictive":
                    run_cfg = dataclasses.replace(cfg, decide="predictive")
                runs[name] = {
                    kind: timed(name, mode, backend, run_cfg, units)
                    for kind, units in sets.items()
                    if mode != "naive" or kind == "rollout"
                }
                done = {k: (r.calls, r.tokens, round(r.seconds, 1)) for k, r in runs[name].items()}
                print(f"done: {name}: (calls, generated tokens, seconds) {done}", flush=True)
            report(runs, gold)
            if args.check_problems:
                exact_check(backend, cfg, sets["rollout"][: args.check_problems])


if __name__ == "__main__":
    main()
