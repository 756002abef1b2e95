"""Compute estimate for the paper-scale run: generated tokens and GPU-hours per stage, from a params file.

    python infra/paper/estimate.py                                   # infra/paper/params.yaml, defaults
    python infra/paper/estimate.py --tokens-per-s-7b 9000 --gpus 8   # plug in a measured throughput
    python infra/paper/estimate.py --json                            # the same numbers as JSON

Generation cost = calls x tokens per call / throughput, stage by stage:

- rollout: problems x samples_per_round x expected rounds x tokens per solution (policy, 7B);
- label: kept solutions x sampled step prefixes x K x tokens per completion (completer, 7B), with K from
  the params (k_low/k_mid/k_high) weighted by the share of kept problems in each MC_0 band, plus
  mc0_samples per kept problem with ``label.mc0: completer``, plus the synthetic ProcessBench set
  (mc0_samples + one K per step per record);
- synthesize: kept solutions x steps x rationale tokens (teacher, 32B);
- train: 6 x parameters x SFT tokens x epochs FLOPs at an assumed model-FLOPs utilisation.

``--label-token-ratio R`` divides the completions per step prefix (not MC_0's wave 0) by R: the measured
ratio of fixed-K generated tokens to those of ``label.sampling: sequential`` (``benchmarks/labeling.py``,
column fixed/mode; 1 = fixed K).

K, samples, rounds and paths come from the params file; everything else is an assumption printed with
the table and settable by a flag. The default throughputs are public figures, not measurements of ours:
~12,500 output tokens/s for an 8B model (BF16) on one H100 80GB with vLLM at high concurrency (third-
party vLLM benchmarks, 2025-2026), and ~1,500 tokens/s per GPU for a 32B model with tensor parallelism 2.
`infra/gpu_smoke.sh` measures the real figure on your GPU; pass it with --tokens-per-s-7b.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere in the checkout

from components.platform.config import build_config, read_params  # noqa: E402
from components.stages.label import LabelConfig  # noqa: E402
from components.stages.rollout import RolloutConfig  # noqa: E402

H100_BF16_FLOPS = 989e12  # dense BF16 peak of one H100 SXM


@dataclass(frozen=True)
class Assumptions:
    """What the params file does not say; each is a command-line flag."""

    problems: int = 7500  # MATH train
    rounds: float = 1.3  # expected sampling rounds per problem (most stop after the first)
    kept_fraction: float = 0.6  # problems with enough correct and incorrect paths
    solution_tokens: int = 450  # policy tokens per solution on MATH
    steps: float = 8.0  # steps per solution
    sampled_fraction: float = 0.75  # share of step prefixes sampled (no sampling past MC = 0)
    completion_tokens: int = 250  # completer tokens per continuation (the rest of a solution)
    k_band_shares: tuple[float, float, float] = (0.05, 0.9, 0.05)  # MC_0 < low, mid, >= high
    rationale_tokens: int = 700  # teacher tokens per step: analysis, code, output, verdict
    kept_after_consensus: float = 0.49  # the paper kept ~49% of solutions
    epochs: int = 3
    tokens_per_s_7b: float = 12500.0  # per GPU
    tokens_per_s_32b: float = 1500.0  # per GPU (tensor parallel 2 -> 3,000 per server)
    mfu: float = 0.4
    gpus: int = 8
    label_token_ratio: float = 1.0  # fixed-K label tokens / the chosen mode's (benchmarks/labeling.py)


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    stage: str
    model: str
    calls: float
    tokens: float
    gpu_hours: float


def expected_k(label: LabelConfig, shares: tuple[float, float, float]) -> float:
    """Mean K over kept problems: each MC_0 band's K weighted by its share."""
    low, mid, high = shares
    return (low * label.k_low + mid * label.k_mid + high * label.k_high) / (low + mid + high)


def generation_rows(rollout: RolloutConfig, label: LabelConfig, a: Assumptions) -> list[Row]:
    """rollout, label (training paths and ProcessBench), synthesize: tokens and GPU-hours."""
    samples = a.problems * rollout.samples_per_round * a.rounds
    solutions = a.problems * a.kept_fraction * rollout.num_paths
    prefixes = solutions * max(a.steps - 1, 1) * a.sampled_fraction
    k = expected_k(label, a.k_band_shares) / a.label_token_ratio  # completions per prefix, on average
    mc0_calls = a.problems * a.kept_fraction * label.mc0_samples if label.mc0 == "completer" else 0.0
    pb = label.processbench_max_records or 0
    pb_calls = pb * (label.mc0_samples + a.steps * a.sampled_fraction * label.k_mid / a.label_token_ratio)
    teacher_calls = solutions * a.steps
    rows = [
        Row("rollout", rollout.policy.model, samples, samples * a.solution_tokens, 0.0),
        Row(
            "label",
            label.completer.model,
            prefixes * k + mc0_calls,
            (prefixes * k + mc0_calls) * a.completion_tokens,
            0.0,
        ),
        Row("label (ProcessBench)", label.completer.model, pb_calls, pb_calls * a.completion_tokens, 0.0),
    ]
    rows = [Row(r.stage, r.model, r.calls, r.tokens, r.tokens / a.tokens_per_s_7b / 3600) for r in rows]
    teacher_tokens = teacher_calls * a.rationale_tokens
    rows.append(
        Row(
            "synthesize",
            "teacher (32B)",
            teacher_calls,
            teacher_tokens,
            teacher_tokens / a.tokens_per_s_32b / 3600,
        )
    )
    return rows


def train_rows(rollout: RolloutConfig, a: Assumptions) -> list[Row]:
    """SFT of the 1.5B and the 7B GenPRM on the consensus-filtered conversations."""
    conversations = a.problems * a.kept_fraction * rollout.num_paths * a.kept_after_consensus
    tokens = conversations * a.steps * (a.rationale_tokens + a.solution_tokens / a.steps) * a.epochs
    rows = []
    for name, params in (("GenPRM-1.5B", 1.5e9), ("GenPRM-7B", 7.6e9)):
        hours = 6 * params * tokens / (H100_BF16_FLOPS * a.mfu) / 3600
        rows.append(Row(f"train ({a.epochs} epochs)", name, conversations, tokens, hours))
    return rows


def estimate(params_path: Path, a: Assumptions) -> list[Row]:
    """Every row of the table for the params file at ``params_path``."""
    raw = read_params(params_path)
    rollout = build_config(RolloutConfig, raw.get("rollout"), "rollout")
    label = build_config(LabelConfig, raw.get("label"), "label")
    return generation_rows(rollout, label, a) + train_rows(rollout, a)


def render(rows: list[Row], a: Assumptions) -> str:
    """The table, the totals and the assumptions, as text."""
    lines = [
        f"{'stage':<22} {'model':<30} {'calls':>12} {'tokens':>15} {'GPU-h':>9} {'h on ' + str(a.gpus):>9}"
    ]
    for r in rows:
        lines.append(
            f"{r.stage:<22} {r.model:<30} {r.calls:>12,.0f} {r.tokens:>15,.0f} {r.gpu_hours:>9,.1f}"
            f" {r.gpu_hours / a.gpus:>9,.1f}"
        )
    gen = sum(r.gpu_hours for r in rows if not r.stage.startswith("train"))
    lines.append(f"generation total: {gen:,.1f} GPU-hours ({gen / a.gpus:,.1f} h on {a.gpus} GPUs)")
    lines.append("assumptions: " + ", ".join(f"{k}={v}" for k, v in asdict(a).items()))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[Path, Assumptions, bool]:
    """The params path, the assumptions (defaults overridden by flags) and whether to print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "infra/paper/params.yaml")
    parser.add_argument("--json", action="store_true", help="Print rows and assumptions as JSON.")
    defaults = Assumptions()
    for key, value in asdict(defaults).items():
        if not isinstance(value, tuple):
            parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    values = {k: getattr(args, k) for k in asdict(defaults) if hasattr(args, k)}
    return args.params, Assumptions(**values), args.json


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the estimate; return it as a dict (rows, assumptions)."""
    params_path, assumptions, as_json = parse_args(argv)
    rows = estimate(params_path, assumptions)
    result = {"rows": [asdict(r) for r in rows], "assumptions": asdict(assumptions)}
    print(json.dumps(result, indent=2) if as_json else render(rows, assumptions))
    return result


if __name__ == "__main__":
    main()
