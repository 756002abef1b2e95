"""Sandbox throughput: the same verification snippets run naive (a fresh ``python -c`` each) and through
``Sandbox`` (warm fork server, one fresh session per snippet), with the same number of parallel workers.

    python benchmarks/sandbox.py [--snippets 200] [--workers 2] [--naive-limit N] [--timeout 10]

Prints snippets/s for both and their ratio (target >= 10x), and checks that both printed the same
output for every snippet. ``--naive-limit`` times the naive side on the first N snippets only (its rate
is per snippet, so the ratio stays comparable) when a full naive run would take too long.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.sandbox import Sandbox, SandboxConfig


def snippet(rng: random.Random, index: int) -> str:
    """One verification snippet like a teacher writes: sympy, numpy or plain arithmetic checks."""
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
    kind = index % 3
    if kind == 0:
        return (
            "from sympy import *\n"
            f"x = Rational({a}, {c}) * {b}\n"
            f"print(x == Rational({a * b}, {c}), simplify(x - {a * b}/{c}))\n"
            f"y = symbols('y')\nprint(solve(Eq({c} * y + {a}, {b}), y))"
        )
    if kind == 1:
        return (
            "import numpy as np\n"
            f"values = np.array([{a}, {b}, {c}], dtype=float)\n"
            f"print(values.sum() == {a + b + c}, np.isclose(values.mean(), {(a + b + c) / 3!r}))"
        )
    return (
        "from fractions import Fraction\nimport math\n"
        f"total = {a} * {b} - {c}\n"
        f"print(total == {a * b - c}, Fraction(total, {c}), math.gcd({a}, {b}))"
    )


def naive_run(code: str, timeout: float) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    return done.stdout


def timed(run: Callable[[str], str], codes: list[str], workers: int) -> tuple[float, list[str]]:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        outputs = list(pool.map(run, codes))
    return time.perf_counter() - start, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snippets", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--naive-limit", type=int, default=None, help="Time naive on the first N only.")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    codes = [snippet(rng, i) for i in range(args.snippets)]
    naive_codes = codes[: args.naive_limit or len(codes)]

    naive_s, naive_out = timed(lambda c: naive_run(c, args.timeout), naive_codes, args.workers)
    start = time.perf_counter()
    config = SandboxConfig(timeout_s=args.timeout, cpu_s=args.timeout, workers=args.workers)
    with Sandbox(config) as sandbox:
        startup_s = time.perf_counter() - start
        ours_s, results = timed(lambda c: sandbox.run(c).stdout, codes, args.workers)
    mismatches = sum(a != b for a, b in zip(naive_out, results, strict=False))
    naive_rate, ours_rate = len(naive_codes) / naive_s, len(codes) / ours_s
    report = {
        "snippets": len(codes),
        "workers": args.workers,
        "naive_snippets": len(naive_codes),
        "naive_per_s": round(naive_rate, 2),
        "sandbox_per_s": round(ours_rate, 2),
        "sandbox_startup_s": round(startup_s, 2),
        "sandbox_per_s_with_startup": round(len(codes) / (ours_s + startup_s), 2),
        "ratio": round(ours_rate / naive_rate, 1),
        "output_mismatches": mismatches,
    }
    print(json.dumps(report, indent=2))
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
