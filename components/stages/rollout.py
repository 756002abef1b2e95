"""The ``rollout`` stage: the policy samples step-by-step solutions; balanced sets of paths are kept.

DESIGN.md §3 Rollout. Each training problem is put to the policy (any backend) with the system prompt
and the ``Step 1: `` prefill, ``samples_per_round`` paths per round, until the problem has
``num_paths/2`` correct and ``num_paths/2`` incorrect valid paths or ``max_rounds`` rounds are spent.
A path is invalid if generation did not stop by itself or it has fewer than two steps; its answer is the
last ``\\boxed{}`` (none counts as incorrect), graded against gold with math-verify in the main thread.
A problem with no correct valid path is ``hard``, with no incorrect one ``easy``, with both but too few
of one ``unbalanced``: all three are dropped (their paths stay in the table with ``kept=False``) and
counted. A kept problem keeps its first ``num_paths/2`` correct and first ``num_paths/2`` incorrect valid
paths. ``pass_rate`` (correct valid paths / all sampled paths) is the problem's MC_0 for ``label``.

    genprm rollout                              # all problems -> data/rollout/rollouts.parquet
    genprm rollout --set rollout.shard=1/4      # one shard -> data/rollout/shards/rollouts-1of4.parquet
    genprm rollout --set rollout.shard=merge    # the n shard tables -> data/rollout/rollouts.parquet

Determinism across shards: every backend call holds ONE problem and ONE round (``n=samples_per_round``)
with the seed ``unit_seed(seed, problem_id, round)``. Requests are never batched across problems: the
composition of a batch (padding, order) changes the samples, and which shard a problem lands in must
not. So one run, an interrupted and resumed run, and n merged shards give the same table.

Crash safety: each finished problem is one line of ``<output_dir>/.progress-<i>of<n>.jsonl`` (a
``Journal`` whose fingerprint covers the config, the input file and the model files, not threads); a
restarted run skips the problems found there. The table is written atomically at the end and the journal
removed.

Outputs: the rollout table (``components.data.records.ROLLOUT_COLUMNS``, one row per sampled path) and
``metrics/rollout.json``; a shard writes ``<output_dir>/shards/rollouts-<i>of<n>.parquet`` and its
manifest (``components/data/shards.py``: one naming scheme and merge for every sharded stage).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from components.backends import (
    Backend,
    BackendConfig,
    GenerationRequest,
    SamplingParams,
    make_backend,
)
from components.data.journal import Journal, ShardSpec, shard, unit_seed
from components.data.quality import QualityConfig, check
from components.data.records import ROLLOUT_COLUMNS, Problem, StepSplit, validate_rollouts
from components.data.shards import ShardedStage, run_fingerprint
from components.data.workers import check_workers, parallel, run_and_merge
from components.method.paths import SampledPath, make_path
from components.platform.config import option, section, to_dict
from components.platform.errors import ConfigError

log = logging.getLogger(__name__)

METRICS_PATH = Path("metrics/rollout.json")
ProblemStatus = Literal["kept", "easy", "hard", "unbalanced"]
STATUSES: tuple[ProblemStatus, ...] = ("kept", "easy", "hard", "unbalanced")


@dataclass(frozen=True)
class RolloutConfig:
    """The ``rollout`` section of params.yaml."""

    policy: BackendConfig = section(BackendConfig, help="The policy: generation backend and model.")
    num_paths: int = option(
        4, help="Paths kept per problem (even): num_paths/2 correct and num_paths/2 incorrect valid paths."
    )
    samples_per_round: int = option(8, help="Paths sampled per problem per round (one backend call).")
    max_rounds: int = option(4, help="Sampling rounds per problem at most (the budget).")
    temperature: float = option(0.7, help="Policy sampling temperature.")
    top_p: float = option(1.0, help="Policy nucleus sampling threshold (1 = off).")
    max_tokens: int = option(160, help="Generation budget per path; a path that hits it is invalid.")
    step_split: StepSplit = option(
        "step_marker", help="How paths are cut into steps: 'step_marker' (Step k:) or 'blank_line'."
    )
    max_problems: int | None = option(
        96, help="Use at most the first this many problems of the input (null: all of them)."
    )
    shard: str = option(
        "0/1",
        help="'i/n': this run's share of the problems (positions i, i+n, ...), written to "
        "<output_dir>/shards/ when n > 1; 'merge': combine the n shard tables into the final table.",
    )
    seed: int = option(0, help="Base seed; each (problem, round) gets unit_seed(seed, problem_id, round).")
    threads: int = option(
        1,
        help="torch CPU threads for in-process generation (0: torch's default; 1: fastest for tiny models).",
    )
    workers: int = option(
        1,
        help="Processes running the shards at once, then merged (components/data/workers.py); the same "
        "table as one process. An explicit shard or merge runs in one process.",
    )
    input: str = option("data/prepared/train.parquet", help="The problems table to roll out.")
    output_dir: str = option("data/rollout", help="Directory of the rollout table, shards and progress.")

    def __post_init__(self) -> None:
        if self.num_paths < 2 or self.num_paths % 2:
            raise ConfigError(f"rollout.num_paths: must be even and >= 2, got {self.num_paths}")
        for key in ("samples_per_round", "max_rounds", "max_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"rollout.{key}: must be at least 1, got {getattr(self, key)}")
        if self.max_problems is not None and self.max_problems < 1:
            raise ConfigError(f"rollout.max_problems: must be at least 1 or null, got {self.max_problems}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("rollout: need temperature >= 0 and 0 < top_p <= 1")
        if self.shard != "merge":
            ShardSpec.parse(self.shard, "rollout.shard")
        check_workers(self.workers, "rollout")


# ------------------------------------------------------------------------------------ paths and balance


def _valid_split(paths: list[SampledPath]) -> tuple[list[int], list[int]]:
    """Indices of the correct and of the incorrect valid paths, in sample order."""
    correct = [p.index for p in paths if p.valid and p.correct]
    incorrect = [p.index for p in paths if p.valid and not p.correct]
    return correct, incorrect


def is_balanced(paths: list[SampledPath], num_paths: int) -> bool:
    """Whether ``paths`` already hold num_paths/2 correct and num_paths/2 incorrect valid paths."""
    correct, incorrect = _valid_split(paths)
    return min(len(correct), len(incorrect)) >= num_paths // 2


def select_paths(paths: list[SampledPath], num_paths: int) -> tuple[ProblemStatus, list[int]]:
    """The problem's status and the indices of its kept paths (empty unless the status is ``kept``).

    No correct valid path: ``hard`` (also when no path is valid); else no incorrect one: ``easy``; else
    too few of either: ``unbalanced``; else ``kept`` with the first num_paths/2 of each, in sample order.
    """
    correct, incorrect = _valid_split(paths)
    half = num_paths // 2
    if not correct:
        return "hard", []
    if not incorrect:
        return "easy", []
    if len(correct) < half or len(incorrect) < half:
        return "unbalanced", []
    return "kept", sorted(correct[:half] + incorrect[:half])


def pass_rate(paths: list[SampledPath]) -> float:
    """Correct valid paths over all sampled paths (MC_0); 0 for no paths."""
    return sum(p.valid and p.correct for p in paths) / len(paths) if paths else 0.0


# ------------------------------------------------------------------------------------------ sampling


def sample_problem(backend: Backend, problem: Problem, cfg: RolloutConfig) -> list[SampledPath]:
    """Sample rounds of paths for one problem until it is balanced or the budget is spent.

    One backend call per round holding only this problem, seeded from (seed, problem id, round), so the
    paths do not depend on which other problems run in the same process (see the module docstring).
    """
    from components.method.prompts import STEP_PREFILL, chat_messages

    request = GenerationRequest(messages=chat_messages(problem.problem), prefill=STEP_PREFILL)
    paths: list[SampledPath] = []
    for round_ in range(cfg.max_rounds):
        params = SamplingParams(
            n=cfg.samples_per_round,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            seed=unit_seed(cfg.seed, problem.id, round_),
        )
        [result] = backend.generate([request], params)
        start = len(paths)
        for offset, sample in enumerate(result.samples):
            paths.append(make_path(start + offset, round_, sample, problem.answer, cfg.step_split))
        if is_balanced(paths, cfg.num_paths):
            break
    return paths


def problem_rows(
    position: int, problem: Problem, paths: list[SampledPath], num_paths: int
) -> list[dict[str, Any]]:
    """The table rows (``ROLLOUT_COLUMNS``) of one problem's paths, with its status and pass rate."""
    status, kept = select_paths(paths, num_paths)
    shared = {
        "problem_index": position,
        "problem_id": problem.id,
        "problem": problem.problem,
        "gold_answer": problem.answer,
        "problem_status": status,
        "pass_rate": pass_rate(paths),
    }
    rows = []
    for path in paths:
        fields = asdict(path)
        index = fields.pop("index")
        extra = {"path_id": f"{problem.id}/{index}", "num_steps": len(path.steps), "kept": index in kept}
        rows.append({**shared, **fields, **extra})
    return rows


def rollout_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The rollout table from row dicts, columns in ``ROLLOUT_COLUMNS`` order."""
    return pd.DataFrame(records, columns=ROLLOUT_COLUMNS)


def run(cfg: RolloutConfig, work: list[tuple[int, Problem]], journal: Journal) -> pd.DataFrame:
    """Roll out ``work`` ((input position, problem) pairs) and return the table in ``work`` order.

    Problems the ``journal`` already holds are skipped; each finished problem is appended to it at once.
    The backend is loaded only if some problem is left to do.
    """
    from tqdm import tqdm

    pending = [(i, p) for i, p in work if p.id not in journal.done]
    if pending:
        done = len(work) - len(pending)
        log.info("rollout: %d problems, %d already done", len(work), done)
        with make_backend(cfg.policy) as backend:
            for position, problem in tqdm(pending, "rollout", len(work), unit="problem", initial=done):
                paths = sample_problem(backend, problem, cfg)
                journal.append(problem.id, problem_rows(position, problem, paths, cfg.num_paths))
    return rollout_frame(journal.records(order=[p.id for _, p in work]))


def summarize(frame: pd.DataFrame) -> dict[str, Any]:
    """Metrics of a rollout table: problem counts by status, pass and valid rates, answers, tokens."""
    per_problem = frame.drop_duplicates("problem_id")
    statuses = per_problem["problem_status"].value_counts()
    paths = len(frame)
    correct_valid = int((frame["correct"].astype(bool) & frame["valid"].astype(bool)).sum())
    rounds = frame.groupby("problem_id")["round"].max() + 1 if paths else pd.Series(dtype=int)
    return {
        "problems": len(per_problem),
        **{status: int(statuses.get(status, 0)) for status in STATUSES},
        "paths_sampled": paths,
        "paths_kept": int(frame["kept"].astype(bool).sum()),
        "pass_rate": round(correct_valid / paths, 4) if paths else 0.0,
        "valid_rate": round(float(frame["valid"].astype(bool).mean()), 4) if paths else 0.0,
        "no_answer": int(frame["answer"].isna().sum()),
        "mean_rounds": round(float(rounds.mean()), 3) if paths else 0.0,
        "tokens_generated": int(frame["num_generated_tokens"].sum()),
        "tokens_prompt": int(frame["num_prompt_tokens"].sum()),
    }


# ------------------------------------------------------------------------------------ shards and I/O


def sharded(cfg: RolloutConfig) -> ShardedStage:
    """The rollout's shard outputs: one table, rows named by their problem."""
    return ShardedStage(Path(cfg.output_dir), ("rollouts",), lambda _table, frame: frame["problem_id"])


def load_problems(cfg: RolloutConfig) -> list[Problem]:
    """The first ``max_problems`` input problems, in input order (the canonical unit order)."""
    from components.data.io import read_parquet
    from components.data.records import problems_from_frame

    path = Path(cfg.input)
    return problems_from_frame(read_parquet(path), path)[: cfg.max_problems]


def load_work(cfg: RolloutConfig, spec: ShardSpec) -> list[tuple[int, Problem]]:
    """This shard's (input position, problem) pairs of the first ``max_problems`` input problems."""
    return shard(list(enumerate(load_problems(cfg))), spec, key=lambda item: item[1].id)


def stage_fingerprint(cfg: RolloutConfig) -> str:
    """What the rollout's output depends on: its settings, the input table and the policy's weights."""
    return run_fingerprint(to_dict(cfg), [Path(cfg.input)], [cfg.policy.model])


def write_final(
    cfg: RolloutConfig, quality: QualityConfig, frame: pd.DataFrame, metrics: dict[str, Any]
) -> None:
    """Check, then write the final table and ``metrics/rollout.json``."""
    from components.data.io import write_json, write_parquet

    table = Path(cfg.output_dir) / "rollouts.parquet"
    metrics["quality"] = check("rollouts", frame, quality, source=table)
    write_parquet(table, frame)
    write_json(METRICS_PATH, metrics)


def merge_main(cfg: RolloutConfig, quality: QualityConfig, seconds: float | None = None) -> dict[str, Any]:
    """``shard: merge``: combine the shard tables into the final table and metrics (checked first);
    ``seconds``: the wall time of parallel workers (else the sum of the shards' times)."""
    units = [problem.id for problem in load_problems(cfg)]
    frames, shard_metrics = sharded(cfg).merge(stage_fingerprint(cfg), units)
    frame = validate_rollouts(frames["rollouts"], f"merged shards in {sharded(cfg).shards_dir}")
    if seconds is None:
        seconds = sum(float(m.get("seconds", 0.0)) for m in shard_metrics)
    metrics = {**summarize(frame), "shards": len(shard_metrics), "seconds": round(seconds, 1)}
    write_final(cfg, quality, frame, metrics)
    log.info("rollout: merged %d shards: %s", len(shard_metrics), metrics)
    return metrics


def run_parallel(
    cfg: RolloutConfig, quality: QualityConfig, params_path: Path, overrides: list[str]
) -> dict[str, Any]:
    """``workers: n``: the n shards as n processes at once, then the merge (components/data/workers.py)."""
    units = [problem.id for problem in load_problems(cfg)]
    fp = stage_fingerprint(cfg)
    merge = partial(merge_main, cfg, quality)  # merge(seconds): the workers' wall time
    return run_and_merge(sharded(cfg), "rollout", params_path, overrides, cfg.workers, fp, units, merge)


def main(params_path: Path, overrides: list[str]) -> dict[str, Any]:
    """Entry point for dvc, flows and the CLI: roll out one shard (or merge), write outputs atomically."""
    from components.platform.params import load_params

    params = load_params(params_path, overrides, ["rollout", "quality"])
    cfg: RolloutConfig = params["rollout"]
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    if cfg.shard == "merge":
        return merge_main(cfg, params["quality"])
    if parallel(cfg.workers, cfg.shard):
        return run_parallel(cfg, params["quality"], params_path, overrides)
    started = time.perf_counter()
    spec = ShardSpec.parse(cfg.shard, "rollout.shard")
    work = load_work(cfg, spec)
    stage, fp = sharded(cfg), stage_fingerprint(cfg)
    journal = stage.journal(spec, fp)
    frame = run(cfg, work, journal)
    metrics = {**summarize(frame), "shards": spec.count, "seconds": round(time.perf_counter() - started, 1)}
    if spec.count == 1:
        write_final(cfg, params["quality"], frame, metrics)
    else:
        stage.write_shard(spec, fp, {"rollouts": frame}, [problem.id for _, problem in work], metrics)
    journal.remove()
    log.info("rollout %s: %s", spec.tag, metrics)
    return metrics
