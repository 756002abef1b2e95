"""Replay: fixed K against sequential labelling on a whole label table, with Bernoulli completions.

    python benchmarks/labeling_replay.py [--labels data/label] [--scale 1] [--seeds 3]
                                         [--delta 0.05 ...] [--chunk 4]

``benchmarks/labeling.py`` runs the real policy, which on CPU affords a few problems. This replays a
finished label stage instead: each step prefix of ``labels.parquet`` and ``processbench_labels.parquet``
(``--labels``) becomes a Bernoulli source whose rate is the MC value the stage measured there (MC_0 for
the bare prompt), and the real ``estimate`` / ``estimate_sequential`` sample it through the ``Backend``
interface (a completion is ``\\boxed{gold}`` with that probability). So the decision rule and its call
pattern are the real ones on realistic rates, on every path. ``--scale`` multiplies every K (4: the
paper's 128/64/32). Printed per seed: completions of fixed K and of a second fixed-K run (other seed),
then for each sequential rule (``decide``: interval, predictive) its completions, the ratio, the
step-label agreement with fixed K and the ProcessBench label F1s. The replay is seeded per request, so
every mode reads the same completion stream of a prefix (as on vLLM, or ``hf`` with ``seeds: request``).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from components.backends import Backend, GenerationRequest, SamplingParams  # noqa: E402
from components.backends.base import GenerationResult, Sample  # noqa: E402
from components.data.journal import unit_seed  # noqa: E402
from components.method.metrics import first_error_from_labels, processbench_f1  # noqa: E402
from components.method.montecarlo import PathInput, Unit, estimate, prefix_text, rpe_labels  # noqa: E402
from components.method.sequential import estimate_sequential  # noqa: E402
from components.stages.label import LabelConfig  # noqa: E402


class Replay(Backend):
    """Completions that reach ``gold`` with the rate measured for their prefill, seeded per request:
    completion ``i`` of a request with seed ``s`` is the draw ``s + i``, as on vLLM (``seeding`` request),
    so every mode reads the same completion stream of a prefix."""

    seeding = "request"

    def __init__(self, rates: dict[str, tuple[float, str]]) -> None:
        self.rates = rates

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        results = []
        for request in requests:
            rate, gold = self.rates[request.prefill or ""]
            seed = request.seed or 0
            draws = [random.Random(unit_seed(seed + i)).random() for i in range(params.n)]
            texts = [f"\\boxed{{{gold}}}" if u < rate else "no" for u in draws]
            results.append(GenerationResult([Sample(t, "stop", 1, 1) for t in texts]))
        return results


def load(folder: Path) -> tuple[list[Unit], dict[str, tuple[float, str]], list[int]]:
    """Units (MC_0 left to wave 0), the rate of every prefix, and the gold first errors."""
    import pandas as pd

    units, rates, gold = [], {}, []
    for name, kind in (("labels", "rollout"), ("processbench_labels", "processbench")):
        frame = pd.read_parquet(folder / f"{name}.parquet")
        for pid, group in frame.groupby("problem_id", sort=False):
            paths = []
            for rec in group.to_dict(orient="records"):
                steps, mc = [str(s) for s in rec["steps"]], list(rec["mc"])
                for t in range(1, len(steps)):
                    key = prefix_text(steps, t) + f"\x1f{kind}:{pid}"
                    rates.setdefault(key, (float(mc[t - 1]), str(rec["gold_answer"])))
                label = int(rec["label"]) if kind == "processbench" else None
                paths.append(PathInput(str(rec["path_id"]), steps, bool(rec["correct"]), label))
                if label is not None:
                    gold.append(label)
            rates[f"Step 1: \x1f{kind}:{pid}"] = (
                float(group["mc0"].iloc[0]),
                str(group["gold_answer"].iloc[0]),
            )
            problem, answer = str(group["problem"].iloc[0]), str(group["gold_answer"].iloc[0])
            units.append(Unit(kind, str(pid), problem, answer, None, paths))
    return units, rates, gold


class Keyed(Backend):
    """Names each prefill by its unit, so that equal prefixes of different problems keep their own rate."""

    def __init__(self, inner: Replay, key: str) -> None:
        self.inner, self.key = inner, key

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        keyed = [dataclasses.replace(r, prefill=(r.prefill or "") + "\x1f" + self.key) for r in requests]
        return self.inner.generate(keyed, params)


def labels_of(method, replay: Replay, cfg: LabelConfig, units: list[Unit]):  # type: ignore[no-untyped-def]
    """(RPE labels per path, completions, ProcessBench-path labels) of one mode."""
    rpe, pb, completions = [], [], 0
    for unit in units:
        est = method(Keyed(replay, unit.key), cfg, unit)
        completions += sum(s.completions for s in est.spend)
        for mc in est.mc:
            rpe.append(rpe_labels(est.mc0, mc, cfg.epsilon))
            if unit.kind == "processbench":
                pb.append(rpe[-1])
    return rpe, completions, pb


def agree(labels: list[list[int]], target: list[list[int]]) -> str:
    """The share of steps whose labels agree with ``target``'s."""
    pairs = [(a, b) for x, y in zip(labels, target, strict=True) for a, b in zip(x, y, strict=True)]
    return f"{sum(a == b for a, b in pairs) / len(pairs):.1%}"


def f1(labels: list[list[int]], gold: list[int]) -> str:
    """ProcessBench F1 (percent) of the first errors of ``labels``."""
    return f"{100 * processbench_f1(gold, [first_error_from_labels(x) for x in labels])['f1']:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labels", type=Path, default=Path("data/label"))
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--delta", type=float, nargs="+", default=[0.05], help="one or more deltas (each rule, each delta)"
    )
    parser.add_argument("--chunk", type=int, default=4)
    args = parser.parse_args(argv)
    units, rates, gold = load(args.labels)
    replay = Replay(rates)
    base = LabelConfig(k_low=32 * args.scale, k_mid=16 * args.scale, k_high=8 * args.scale)
    base = dataclasses.replace(base, sampling="sequential", chunk=args.chunk)
    print(f"{len(units)} units, K x {args.scale}, delta {args.delta}, chunk {args.chunk}")
    for seed in range(args.seeds):
        cfg = dataclasses.replace(base, seed=2 * seed)
        fixed, c_fixed, pb_fixed = labels_of(estimate, replay, cfg, units)
        other, c_other, pb_other = labels_of(
            estimate, replay, dataclasses.replace(cfg, seed=2 * seed + 1), units
        )
        print(
            f"seed {seed}: completions fixed {c_fixed}, fixed (other seed) {c_other}; step agreement of "
            f"the other seed with fixed {agree(other, fixed)}; F1 fixed {f1(pb_fixed, gold)}, other seed "
            f"{f1(pb_other, gold)}"
        )
        for decide, delta in [(d, x) for x in args.delta for d in ("interval", "predictive")]:
            rule = dataclasses.replace(cfg, decide=decide, delta=delta)
            seq, c_seq, pb_seq = labels_of(estimate_sequential, replay, rule, units)
            print(
                f"  sequential ({decide}, delta {delta}): completions {c_seq} "
                f"(fixed/sequential {c_fixed / c_seq:.2f}x), step agreement with fixed {agree(seq, fixed)}, "
                f"F1 {f1(pb_seq, gold)}"
            )


if __name__ == "__main__":
    main()
