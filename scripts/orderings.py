"""The paper's orderings over seeds: queue DVC experiments, run them, gather a table and a plot.

Each seed s sets the world (``prepare.seed``: problems and the ProcessBench test set), the policy
(``bootstrap.seed``) and training (``train.seed``) to s, in three variants:

- ``base``: the paper's pipeline, the consensus filter on RPE labels (``synthesize.consensus=true``; the
  offline default turns the filter off). Its own metrics give RPE vs hard-MC label F1, Maj@8 vs Pass@1,
  code execution on vs off and the GenPRM vs the direct baseline;
- ``hard``: the consensus filter compares with hard-MC labels (``synthesize.labels=hard_labels``): the
  GenPRM trained on hard-MC labels, against ``base`` trained on RPE labels;
- ``noconsensus``: no consensus filter (``synthesize.consensus=false``, the offline default).

The variants of one seed share bootstrap, rollout and label, which DVC's run cache restores instead of
recomputing. Commands::

    python scripts/orderings.py queue --seeds 0 1 2      # dvc exp run --queue, one per seed x variant
    python scripts/orderings.py run --jobs 1             # dvc queue start, then wait for the queue
    python scripts/orderings.py gather                   # reports/orderings.md and reports/orderings.png

``gather`` reads the experiments through DVC's API (``dvc.api.exp_show``, the data of
``dvc exp show --json``) and prints, per ordering, each side's mean and spread over seeds, the paired
difference and in how many seeds the paper's side won.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every variant sets every key a variant changes, so none inherits another's from the workspace.
VARIANTS: dict[str, list[str]] = {
    "base": ["synthesize.labels=rpe_labels", "synthesize.consensus=true"],
    "hard": ["synthesize.labels=hard_labels", "synthesize.consensus=true"],
    "noconsensus": ["synthesize.labels=rpe_labels", "synthesize.consensus=false"],
}
SEED_KEYS = ("prepare.seed", "bootstrap.seed", "train.seed")
PREFIX = "ord"
BENCH, LABEL = "metrics/benchmark.json", "metrics/label.json"


@dataclass(frozen=True)
class Ordering:
    """The paper's side (``first``) against the other; each side is (variant, metrics file, key)."""

    name: str
    first: tuple[str, str, str]
    second: tuple[str, str, str]
    paper: str


def _f1(system: str, n: int = 1) -> str:
    return f"processbench.{system}.maj@{n}.mean_f1"


ORDERINGS = (
    Ordering("label F1: RPE vs hard-MC", ("base", LABEL, "processbench.rpe.f1"),
             ("base", LABEL, "processbench.hard_mc.f1"), "75.2 vs 73.2 (GenPRM trained on each)"),
    Ordering("GenPRM Pass@1 trained on RPE vs hard-MC", ("base", BENCH, _f1("genprm")),
             ("hard", BENCH, _f1("genprm")), "RPE > hard"),
    Ordering("Maj@8 vs Pass@1", ("base", BENCH, _f1("genprm", 8)), ("base", BENCH, _f1("genprm")),
             "80.5 vs 75.2 (7B)"),
    Ordering("code execution on vs off", ("base", BENCH, _f1("genprm")),
             ("base", BENCH, _f1("genprm_no_code")), "on > off"),
    Ordering("GenPRM vs direct", ("base", BENCH, _f1("genprm")), ("base", BENCH, _f1("direct")),
             "generative > direct"),
    Ordering("consensus filter on vs off", ("base", BENCH, _f1("genprm")),
             ("noconsensus", BENCH, _f1("genprm")), "on > off"),
)  # fmt: skip


def experiment_name(seed: int, variant: str) -> str:
    return f"{PREFIX}-s{seed}-{variant}"


def queue_commands(seeds: Sequence[int], variants: Sequence[str] = tuple(VARIANTS)) -> list[list[str]]:
    """One ``dvc exp run --queue`` per seed and variant."""
    commands = []
    for seed in seeds:
        for variant in variants:
            sets = [f"{key}={seed}" for key in SEED_KEYS] + VARIANTS[variant]
            flags = [arg for s in sets for arg in ("-S", s)]
            commands.append(["dvc", "exp", "run", "--queue", "-n", experiment_name(seed, variant), *flags])
    return commands


def lookup(row: dict[str, Any], file: str, key: str) -> float | None:
    """A metric of one ``exp_show`` row: the column ``key`` or, where files share it, ``file:key``."""
    for column in (f"{file}:{key}", key):
        value = row.get(column)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def by_seed(rows: list[dict[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    """seed -> variant -> row, for the experiments this script named."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        name = str(row.get("Experiment") or "")
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == PREFIX and parts[1].startswith("s") and parts[2] in VARIANTS:
            out.setdefault(int(parts[1][1:]), {})[parts[2]] = row
    return out


def _percent(value: float | None, file: str) -> float | None:
    """label.json holds fractions, benchmark.json percentages: all in percent."""
    return None if value is None else (100 * value if file == LABEL else value)


def ordering_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ordering: each side's values over seeds, the paired differences and the seeds won."""
    seeds = by_seed(rows)
    table = []
    for ordering in ORDERINGS:
        firsts, seconds = [], []
        for _, variants in sorted(seeds.items()):
            a, b = (
                _percent(lookup(variants[v], f, k), f) if v in variants else None
                for v, f, k in (ordering.first, ordering.second)
            )
            if a is not None and b is not None:
                firsts.append(a)
                seconds.append(b)
        diffs = [a - b for a, b in zip(firsts, seconds, strict=True)]
        table.append(
            {"ordering": ordering.name, "paper": ordering.paper, "first": firsts, "second": seconds,
             "diff": diffs, "won": sum(d > 0 for d in diffs), "seeds": len(diffs)}
        )  # fmt: skip
    return table


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def markdown(table: list[dict[str, Any]]) -> str:
    """The README table: mean ± standard deviation over seeds, the difference and its range."""
    lines = [
        "| ordering (paper's side first) | paper | first | second | difference (min, max) | seeds won |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        d = row["diff"]
        spread = f"{_mean_sd(d)} ({min(d):+.1f}, {max(d):+.1f})" if d else "-"
        lines.append(
            f"| {row['ordering']} | {row['paper']} | {_mean_sd(row['first'])} | {_mean_sd(row['second'])} "
            f"| {spread} | {row['won']}/{row['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], path: Path) -> None:
    """Each ordering's per-seed differences (points) and their mean (bar), in F1 / accuracy points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 * len(table) + 1.5))
    for y, row in enumerate(table):
        if row["diff"]:
            ax.barh(y, statistics.mean(row["diff"]), color="#9ecae1")
            ax.scatter(row["diff"], [y] * len(row["diff"]), color="#08519c", zorder=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set(yticks=range(len(table)), yticklabels=[r["ordering"] for r in table], xlabel="first - second")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_queue(jobs: int, poll_s: float = 30.0) -> None:
    """Start the queue's workers and wait until no experiment is queued or running."""
    subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], check=True)
    while True:
        status = subprocess.run(["dvc", "queue", "status"], capture_output=True, text=True, check=True).stdout
        if not any(word in status for word in ("Queued", "Running")):
            print(status)
            return
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    queue = sub.add_parser("queue", help="queue one experiment per seed and variant")
    queue.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    queue.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    queue.add_argument("--dry-run", action="store_true", help="print the commands only")
    run = sub.add_parser("run", help="run the queue and wait for it")
    run.add_argument("--jobs", type=int, default=1)
    gather = sub.add_parser("gather", help="table and plot from the finished experiments")
    gather.add_argument("--out", type=Path, default=Path("reports/orderings.md"))
    gather.add_argument("--plot", type=Path, default=Path("reports/orderings.png"))
    args = parser.parse_args(argv)
    if args.command == "queue":
        for command in queue_commands(args.seeds, args.variants):
            print(" ".join(command))
            if not args.dry_run:
                subprocess.run(command, check=True)
    elif args.command == "run":
        run_queue(args.jobs)
    else:
        import dvc.api

        table = ordering_rows(dvc.api.exp_show())
        text = markdown(table)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        plot(table, args.plot)
        print(text + f"\nwritten: {args.out}, {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
