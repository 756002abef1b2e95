"""The ``label`` stage: Monte Carlo estimates per step prefix, then RPE and hard-MC step labels.

DESIGN.md §3 (Monte Carlo estimate, RPE label); the method and its wave schedule are in
``components.method.montecarlo``. Labels every kept path of the rollout table and every record of a
ProcessBench-format file with gold ``answer`` fields, so that label quality can be measured against the
true first errors.

MC_0, RPE's first denominator (P_1 = MC_1 / MC_0), comes from ``label.mc0``:

- ``completer`` (default): estimated by the completer, wave 0 (``mc0_samples`` completions of the bare
  prompt with the ``Step 1: `` prefill), exactly as ProcessBench records always get it. Then every MC of
  the ratio comes from one model, one sampling setting and one grading rule, so P_1 measures step 1 and
  nothing else. Costs one call of ``mc0_samples`` per problem (its paths share it), a fraction of the
  K-per-prefix waves that follow.
- ``rollout``: the problem's rollout pass rate, free but biased as a denominator. It is the policy's
  rate, not the completer's (at paper scale Qwen2.5-7B-Instruct vs Qwen2.5-Math-7B-Instruct: a stronger
  completer inflates every P_1, a weaker one deflates it); sampling stopped as soon as the problem was
  balanced (the stopping rule depends on the outcomes); and it counts a path cut by ``max_tokens`` as a
  failure, which MC_1.. do not. Kept for comparison and for runs whose policy is the completer.

A correct path whose MC_0 is 0 (only possible with ``completer``: a kept problem has a correct rollout)
is not labelled wrong for it: MC_0 = 0 stops no sampling, and step 1 is labelled 1 iff MC_1 > 0 (the
ratio test in the limit MC_0 -> 0+, see ``components.method.montecarlo``).

    genprm label                                # -> data/label/labels.parquet, processbench_labels.parquet
    genprm label --set label.shard=1/4          # one shard -> data/label/shards/*-1of4.*
    genprm label --set label.shard=merge        # the n shards -> the final tables and metrics

Cost: wave t of a problem is ONE backend call (n=K) holding the step-t prefixes of its paths still alive,
identical prefixes once; paths stop at their first MC of 0. ``label.sampling: sequential`` samples each
prefix in chunks until its labels are decided (``delta``, ``chunk``; ``components.method.sequential``).
``benchmarks/labeling.py`` compares both with the naive Math-Shepherd loop and a binary search.

Determinism, shards, crash safety: a call never mixes problems and is seeded with
``unit_seed(seed, unit key, wave)``, so its samples depend only on its problem, never on sharding or
resuming: one run, a resumed run and n merged shards give the same tables. Each finished problem is one
line of ``<output_dir>/.progress-<i>of<n>.jsonl`` (a ``Journal`` fingerprinted by the config, input files
and model files); a restarted run skips the problems found there. Tables are written atomically at the
end, then the journal is removed.

Outputs: ``labels.parquet`` (one row per path: ``LABEL_COLUMNS``), ``processbench_labels.parquet`` (the
same plus the gold first-error ``label``), ``metrics/label.json`` (ProcessBench F1 of RPE and hard-MC
labels, counts and cost) and ``plots/label_epsilon.json`` (F1 for each of ``epsilon_sweep``, recomputed
from the same MC values, next to hard-MC).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from components.backends import Backend, BackendConfig, make_backend
from components.data.journal import (
    Journal,
    ShardSpec,
    shard,
)
from components.data.label_units import MC0Source, load_units, processbench_units, rollout_units
from components.data.quality import QualityConfig, check
from components.data.records import LABEL_COLUMNS, PROCESSBENCH_COLUMNS
from components.data.shards import ShardedStage, run_fingerprint
from components.data.workers import check_workers, parallel, run_and_merge
from components.method.metrics import first_error_from_labels, processbench_f1
from components.method.montecarlo import Estimate, Unit, estimate, hard_labels, rpe_labels
from components.method.sequential import estimate_sequential
from components.platform.config import option, section, to_dict
from components.platform.errors import ConfigError, DataError

log = logging.getLogger(__name__)

METRICS_PATH = Path("metrics/label.json")
PLOT_PATH = Path("plots/label_epsilon.json")
TABLES = {"rollout": "labels", "processbench": "processbench_labels"}
Sampling = Literal["fixed", "sequential"]
Decide = Literal["interval", "predictive"]
__all__ = ["LabelConfig", "load_units", "main", "processbench_units", "rollout_units", "run"]


@dataclass(frozen=True)
class LabelConfig:
    """The ``label`` section of params.yaml."""

    completer: BackendConfig = section(BackendConfig, help="The completer that continues step prefixes.")
    k_low: int = option(32, help="K (completions per prefix) when MC_0 < low_threshold (paper: 128).")
    k_mid: int = option(16, help="K when low_threshold <= MC_0 < high_threshold (paper: 64).")
    k_high: int = option(8, help="K when MC_0 >= high_threshold (paper: 32).")
    low_threshold: float = option(0.1, help="MC_0 below this gets k_low.")
    high_threshold: float = option(0.9, help="MC_0 at or above this gets k_high.")
    mc0: MC0Source = option(
        "completer",
        help="Where a rollout problem's MC_0 (RPE's first denominator) comes from: 'completer' samples "
        "mc0_samples completions of the bare prompt with the completer, like MC_1.. and like ProcessBench "
        "records; 'rollout' takes the rollout pass rate (the policy's samples, early-stopped once balanced).",
    )
    mc0_samples: int = option(
        16, help="Completions of the bare prompt estimating MC_0 (ProcessBench records; mc0: completer)."
    )
    sampling: Sampling = option(
        "fixed",
        help="'fixed': every live step prefix gets its K completions; 'sequential': completions in chunks "
        "of `chunk`, stopping once the step's labels are decided with confidence >= 1 - delta (never "
        "past K; components/method/sequential.py).",
    )
    decide: Decide = option(
        "interval",
        help="sequential: 'interval' decides the label of the true MC values (Clopper-Pearson, "
        "P(wrong) <= delta); 'predictive' decides the label fixed K would write (posterior "
        "P(it differs) <= delta; components/method/predictive.py).",
    )
    delta: float = option(0.05, help="sequential: error probability bound of a decided RPE label.")
    chunk: int = option(4, help="sequential: completions per prefix per round (must divide every K).")
    epsilon: float = option(0.8, help="RPE: step t is right iff MC_t / MC_{t-1} >= epsilon (0 < epsilon).")
    epsilon_sweep: list[float] = option([0.5, 0.8, 1.0], help="Epsilons whose ProcessBench F1 is plotted.")
    temperature: float = option(0.7, help="Completer sampling temperature.")
    top_p: float = option(1.0, help="Completer nucleus sampling threshold (1 = off).")
    max_tokens: int = option(128, help="Generation budget of one completion.")
    seed: int = option(0, help="Base seed; wave t of a unit gets unit_seed(seed, unit key, t).")
    threads: int = option(0, help="torch CPU threads for in-process generation (0: torch's default).")
    shard: str = option(
        "0/1",
        help="'i/n': this run's share of the units (problems), written to <output_dir>/shards/ when "
        "n > 1; 'merge': combine the n shard outputs into the final tables and metrics.",
    )
    workers: int = option(
        1,
        help="Processes running the shards at once (one torch thread each), then merged "
        "(components/data/workers.py); the same tables as one process (an explicit shard: one).",
    )
    input: str | None = option(
        "data/rollout/rollouts.parquet", help="The rollout table; its kept paths are labelled (null: none)."
    )
    processbench_input: str | None = option(
        "data/prepared/processbench.jsonl",
        help="A ProcessBench-format jsonl with gold answers, labelled to measure label quality (null: none).",
    )
    processbench_max_records: int | None = option(
        150, help="Label only the first this many ProcessBench records (null: all)."
    )
    output_dir: str = option("data/label", help="Directory of the label tables, shards and progress.")

    def __post_init__(self) -> None:
        for key in ("k_low", "k_mid", "k_high", "mc0_samples", "max_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"label.{key}: must be at least 1, got {getattr(self, key)}")
        if not 0.0 <= self.low_threshold <= self.high_threshold <= 1.0:
            raise ConfigError("label.low_threshold/high_threshold: need 0 <= low <= high <= 1")
        if not all(e > 0 for e in [self.epsilon, *self.epsilon_sweep]):
            raise ConfigError("label.epsilon/epsilon_sweep: every epsilon must be > 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("label: need temperature >= 0 and 0 < top_p <= 1")
        if self.processbench_max_records is not None and self.processbench_max_records < 1:
            raise ConfigError("label.processbench_max_records: must be at least 1 or null")
        if self.input is None and self.processbench_input is None:
            raise ConfigError("label: input and processbench_input are both null: nothing to label")
        if self.shard != "merge":
            ShardSpec.parse(self.shard, "label.shard")
        check_workers(self.workers, "label")
        if not 0 < self.delta < 1 or self.chunk < 1:
            raise ConfigError("label.delta/chunk: need 0 < delta < 1 and chunk >= 1")
        if self.sampling == "sequential" and any(
            k % self.chunk for k in (self.k_low, self.k_mid, self.k_high)
        ):
            raise ConfigError(f"label.chunk: {self.chunk} must divide k_low, k_mid and k_high (never past K)")


def unit_records(unit: Unit, est: Estimate, epsilon: float) -> list[dict[str, Any]]:
    """One output row per path of ``unit`` (plus ``kind``, which picks the table)."""
    rows = []
    for path, mc, spend in zip(unit.paths, est.mc, est.spend, strict=True):
        row: dict[str, Any] = {
            "kind": unit.kind, "path_id": path.path_id, "problem_id": unit.problem_id,
            "problem": unit.problem, "gold_answer": unit.gold, "steps": list(path.steps),
            "correct": path.correct, "mc0": est.mc0, "k": est.k, "mc": mc,
            "rpe_labels": rpe_labels(est.mc0, mc, epsilon), "hard_labels": hard_labels(mc),
            "completions": spend.completions, "tokens_generated": spend.tokens,
            "no_answer_count": spend.no_answer,
        }  # fmt: skip
        if path.label is not None:
            row["label"] = path.label
        rows.append(row)
    return rows


def run(
    cfg: LabelConfig, units: list[Unit], journal: Journal, backend: Backend | None = None
) -> list[dict[str, Any]]:
    """Label ``units`` not yet in ``journal`` (each appended when done); all their rows, in unit order.

    The completer is loaded only when some unit is left to do (unless ``backend`` is given).
    """
    from tqdm import tqdm

    pending = [u for u in units if u.key not in journal.done]
    if pending:
        log.info("label: %d units, %d already done", len(units), len(units) - len(pending))
        owned = backend is None
        active = make_backend(cfg.completer) if backend is None else backend
        try:
            bar = tqdm(pending, "label", len(units), initial=len(units) - len(pending), unit="problem")
            for unit in bar:
                est = (estimate_sequential if cfg.sampling == "sequential" else estimate)(active, cfg, unit)
                journal.append(unit.key, unit_records(unit, est, cfg.epsilon))
        finally:
            if owned:
                active.close()
    return journal.records(order=[u.key for u in units])


# ------------------------------------------------------------------------------------ tables and metrics


def tables(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """The two output tables (rollout labels, ProcessBench labels) from unit rows."""
    rows = {kind: [r for r in records if r["kind"] == kind] for kind in TABLES}
    return {
        "rollout": pd.DataFrame(rows["rollout"], columns=LABEL_COLUMNS),
        "processbench": pd.DataFrame(rows["processbench"], columns=PROCESSBENCH_COLUMNS),
    }


def _clean(value: float) -> float | None:
    """JSON-safe rounded number: NaN (undefined) becomes null."""
    return None if math.isnan(value) else round(value, 4)


def table_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts and cost of one label table."""
    steps = [label for labels in frame["rpe_labels"] for label in labels]
    hard = [label for labels in frame["hard_labels"] for label in labels]
    return {
        "paths": len(frame),
        "problems": int(frame["problem_id"].nunique()),
        "steps": len(steps),
        "mean_k": _clean(float(frame["k"].mean())) if len(frame) else None,
        "completions": int(frame["completions"].sum()),
        "tokens_generated": int(frame["tokens_generated"].sum()),
        "no_answer": int(frame["no_answer_count"].sum()),
        "rpe_positive_rate": _clean(sum(steps) / len(steps)) if steps else None,
        "hard_positive_rate": _clean(sum(hard) / len(hard)) if hard else None,
    }


def quality(frame: pd.DataFrame, epsilons: list[float]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """ProcessBench F1 of RPE (at each epsilon) and hard-MC labels, and the epsilon-sweep plot rows."""
    gold = [int(label) for label in frame["label"]]
    mc0s, mcs = list(frame["mc0"]), [list(mc) for mc in frame["mc"]]

    def scores(labels: list[list[int]]) -> dict[str, float | None]:
        pred = [first_error_from_labels(step_labels) for step_labels in labels]
        return {key: _clean(value) for key, value in processbench_f1(gold, pred).items()}

    hard = scores([list(labels) for labels in frame["hard_labels"]])
    rpe = scores([list(labels) for labels in frame["rpe_labels"]])
    plot = []
    for e in epsilons:
        swept = scores([rpe_labels(m0, mc, e) for m0, mc in zip(mc0s, mcs, strict=True)])
        plot.append({"epsilon": e, "rpe_f1": swept["f1"], "hard_mc_f1": hard["f1"]})
    return {"rpe": rpe, "hard_mc": hard}, plot


def write_final(
    cfg: LabelConfig, quality_cfg: QualityConfig, frames: dict[str, pd.DataFrame], seconds: float, shards: int
) -> dict[str, Any]:
    """Check, then write both tables, ``metrics/label.json`` and ``plots/label_epsilon.json``."""
    from components.data.io import write_json, write_parquet

    out = Path(cfg.output_dir)
    checks = {
        kind: check(name, frames[kind], quality_cfg, source=out / f"{name}.parquet")
        for kind, name in TABLES.items()
    }
    for kind, name in TABLES.items():
        write_parquet(out / f"{name}.parquet", frames[kind])
    metrics: dict[str, Any] = {"rollouts": table_summary(frames["rollout"]), "shards": shards}
    metrics["quality"] = checks
    metrics["seconds"] = round(seconds, 1)
    plot: list[dict[str, Any]] = []
    bench = frames["processbench"]
    if len(bench):
        scores, plot = quality(bench, cfg.epsilon_sweep)
        metrics["processbench"] = {**table_summary(bench), **scores, "epsilon": cfg.epsilon}
    write_json(METRICS_PATH, metrics)
    write_json(PLOT_PATH, plot)
    log.info("label: %s", metrics)
    return metrics


# ------------------------------------------------------------------------------------- shards and I/O


KIND_OF_TABLE = {name: kind for kind, name in TABLES.items()}


def sharded(cfg: LabelConfig) -> ShardedStage:
    """The label stage's shard outputs: both tables, rows named by their unit (``<kind>:<problem_id>``)."""
    return ShardedStage(
        Path(cfg.output_dir),
        tuple(TABLES.values()),
        lambda table, frame: KIND_OF_TABLE[table] + ":" + frame["problem_id"].astype(str),
    )


def merge(
    cfg: LabelConfig, quality_cfg: QualityConfig, units: list[Unit], seconds: float | None = None
) -> dict[str, Any]:
    """``shard: merge``: the n shard outputs, in canonical unit order -> the final tables and metrics;
    ``seconds``: the wall time of parallel workers (else the sum of the shards' times)."""
    stage = sharded(cfg)
    merged, shard_metrics = stage.merge(stage_fingerprint(cfg), [u.key for u in units])
    frames = {kind: merged[name] for kind, name in TABLES.items()}
    for kind in TABLES:
        expected = [p.path_id for u in units if u.kind == kind for p in u.paths]
        if list(frames[kind]["path_id"]) != expected:
            raise DataError(f"{stage.shards_dir}: the {kind} shards do not hold every path exactly once")
    if seconds is None:
        seconds = sum(float(m.get("seconds", 0.0)) for m in shard_metrics)
    return write_final(cfg, quality_cfg, frames, seconds, len(shard_metrics))


def run_parallel(
    cfg: LabelConfig, quality_cfg: QualityConfig, units: list[Unit], params_path: Path, overrides: list[str]
) -> dict[str, Any]:
    """``workers: n``: the n shards as n processes at once, then the merge (components/data/workers.py)."""
    keys, fp = [u.key for u in units], stage_fingerprint(cfg)
    merged = partial(merge, cfg, quality_cfg, units)  # merged(seconds): the workers' wall time
    return run_and_merge(sharded(cfg), "label", params_path, overrides, cfg.workers, fp, keys, merged)


def stage_fingerprint(cfg: LabelConfig) -> str:
    """What a journal's progress depends on: the config, the input files and the completer's weights."""
    inputs = [Path(p) for p in (cfg.input, cfg.processbench_input) if p]
    return run_fingerprint(to_dict(cfg), inputs, [cfg.completer.model])


def main(params_path: Path, overrides: list[str]) -> dict[str, Any]:
    """Entry point for dvc, flows and the CLI: label one shard (or merge), write outputs atomically."""
    from components.platform.params import load_params

    params = load_params(params_path, overrides, ["label", "quality"])
    cfg: LabelConfig = params["label"]
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    units = load_units(cfg)
    if cfg.shard == "merge":
        return merge(cfg, params["quality"], units)
    if parallel(cfg.workers, cfg.shard):
        return run_parallel(cfg, params["quality"], units, params_path, overrides)
    spec = ShardSpec.parse(cfg.shard, "label.shard")
    mine = shard(units, spec, key=lambda u: u.key)
    stage, fp = sharded(cfg), stage_fingerprint(cfg)
    journal = stage.journal(spec, fp)
    frames = tables(run(cfg, mine, journal))
    seconds = time.perf_counter() - started
    if spec.count == 1:
        metrics = write_final(cfg, params["quality"], frames, seconds, shards=1)
    else:
        metrics = {kind: table_summary(frames[kind]) for kind in TABLES} | {"seconds": round(seconds, 1)}
        named = {TABLES[kind]: frame for kind, frame in frames.items()}
        stage.write_shard(spec, fp, named, [u.key for u in mine], metrics)
    journal.remove()
    return metrics
