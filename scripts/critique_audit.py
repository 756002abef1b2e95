"""Read a GenPRM's critiques by number: does it copy the step's claim, and does its verdict follow its code?

The benchmark writes every critique it scored to ``data/benchmark/processbench_scores.parquet`` (one row
per system and record: the steps' critiques of each sample). For every step that states one calculation
``a op b = c`` this script checks three things the critique format asks of the model:

- the analysis names the claim (``The paragraph claims a op b = c``) with the step's own numbers;
- the code checks that very claim (``print(a op b == c)``, or ``check = a op b == c`` in the provenance
  code style);
- the verdict follows the code's printed output (``False`` printed -> No, otherwise Yes).

A model that follows its output but copies wrong numbers into its code says No to right steps: that is
the small world's GenPRM failure this script was written to measure (see the README, issue 13).

    python scripts/critique_audit.py                                  # every system of the benchmark
    python scripts/critique_audit.py --scores other/processbench_scores.parquet --system genprm
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLAIM = re.compile(r"(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)")
ANALYSIS_CLAIM = re.compile(r"claims\s+(\d+\s*[-+*/]\s*\d+\s*=\s*\d+)")
CODE_CHECK = re.compile(r"(?:check\s*=\s*|print\()(\d+\s*[-+*/]\s*\d+)\s*==\s*(\d+)")
VERDICT = re.compile(r"\\boxed\{(Yes|No)\}")


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@dataclass
class Audit:
    """Counts over the audited steps (those stating exactly one calculation)."""

    steps: int = 0
    analysis_copies: int = 0
    code_copies: int = 0
    judged_outputs: int = 0
    verdict_follows: int = 0

    def add(self, step: str, critique: str) -> None:
        claims = CLAIM.findall(step)
        if len(claims) != 1:
            return
        a, op, b, c = claims[0]
        self.steps += 1
        named = ANALYSIS_CLAIM.search(critique)
        self.analysis_copies += bool(named and _squash(named.group(1)) == f"{a}{op}{b}={c}")
        code = CODE_CHECK.search(critique)
        self.code_copies += bool(code and _squash(code.group(1)) == f"{a}{op}{b}" and code.group(2) == c)
        after = critique.split("[Code Output]")
        verdict = VERDICT.search(after[-1]) if len(after) > 1 else None
        if verdict and ("True" in after[-1] or "False" in after[-1]):
            self.judged_outputs += 1
            self.verdict_follows += ("False" in after[-1]) == (verdict.group(1) == "No")

    def rates(self) -> dict[str, float | int]:
        def pct(part: int, whole: int) -> float:
            return round(100 * part / whole, 1) if whole else float("nan")

        return {
            "steps": self.steps,
            "analysis_copies_claim": pct(self.analysis_copies, self.steps),
            "code_copies_claim": pct(self.code_copies, self.steps),
            "verdict_follows_output": pct(self.verdict_follows, self.judged_outputs),
            "judged_outputs": self.judged_outputs,
        }


def audit(pairs: Iterable[tuple[list[str], list[str]]]) -> Audit:
    """Audit (steps, critiques of one sample) pairs."""
    result = Audit()
    for steps, critiques in pairs:
        for step, critique in zip(steps, critiques, strict=False):
            result.add(step, critique)
    return result


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", type=Path, default=Path("data/benchmark/processbench_scores.parquet"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared/processbench.jsonl"))
    parser.add_argument("--system", action="append", help="only these systems (default: all but teacher)")
    args = parser.parse_args(argv)
    if not args.scores.is_file() or not args.data.is_file():
        print(f"critique_audit: need {args.scores} and {args.data} (run the benchmark stage first)")
        return 2
    steps = dict(pd.read_json(args.data, lines=True)[["id", "steps"]].itertuples(index=False))
    scores = pd.read_parquet(args.scores)
    systems = args.system or [s for s in dict.fromkeys(scores.system) if s != "teacher"]
    for system in systems:
        rows = scores[scores.system == system]
        pairs = [
            (list(steps[r.id]), [str(c) for c in r.critique]) for r in rows.itertuples() if r.id in steps
        ]
        print(f"{system}: {audit(pairs).rates()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
