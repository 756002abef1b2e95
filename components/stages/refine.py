"""The ``refine`` stage: the GenPRM as a critic of the policy, over turns (the paper's third claim).

Each problem set (the held-out synthetic problems as ``synthetic``, each real file by its stem) gets one
policy solution per problem (turn 0, shared by every critic); then, for turns 1..``turns``, each critic
scores the open solutions and the policy refines the flagged ones (protocol: ``method/refine.py``,
loop: ``method/refine_loop.py``). Critics: ``genprm`` (with code execution and its analysis),
``self_refine`` (the policy critiques itself), ``direct`` (the direct GenPRM's verdicts only) and
``none`` (resampling without feedback). The policy's first turn is its rollout prompt (system prompt
with the paper's instruction, the problem as the user turn); the feedback turn is the paper's, word
for word.

    genprm refine                                    # dvc repro refine does the same
    genprm refine --data my_solutions.jsonl --critic genprm --out refined.jsonl

Outputs: ``metrics/refine.json`` (``accuracy.<set>.<critic>.turn_<t>`` in %, and per critic the flag
rate, the refinements that turned a right answer wrong or a wrong one right, the gain turn_T - turn_0
with a 95% interval), ``plots/refine.json`` (accuracy vs turn per critic, synthetic set),
``reports/refine/refine_accuracy.png`` and ``<output_dir>/refinements.parquet`` (every problem at every
turn: solution, flag, feedback). A killed run resumes per (set, critic) from its journal.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from components.backends.base import BackendConfig
from components.data.journal import Journal
from components.data.records import Problem
from components.data.shards import run_fingerprint
from components.method.paths import SampledPath
from components.method.refine import CRITICS
from components.method.refine_loop import LoopSettings, run_critic, sample_solutions, summarize
from components.method.scorer import ScorerConfig
from components.method.scorerpool import ScoringPool, check_pool_workers, make_scorer, scoring_pool
from components.platform.config import option, section, to_dict
from components.platform.errors import ConfigError

log = logging.getLogger(__name__)

METRICS_PATH = Path("metrics/refine.json")
PLOT_PATH = Path("plots/refine.json")
FIGURE_PATH = Path("reports/refine/refine_accuracy.png")


@dataclass(frozen=True)
class RefineConfig:
    """The ``refine`` section of params.yaml."""

    policy: BackendConfig = section(BackendConfig, help="The policy that solves and refines.")
    genprm: ScorerConfig = section(ScorerConfig, help="The GenPRM critic and how it critiques.")
    direct_model: str | None = option("models/genprm_direct", help="The direct GenPRM (null: no direct).")
    critics: list[str] = option(list(CRITICS), help=f"Critics compared, from {', '.join(CRITICS)}.")
    turns: int = option(3, help="Refinement turns after the initial solution.")
    critic_samples: int = option(1, help="Critiques per solution whose mean reward flags a step (Maj@N).")
    temperature: float = option(0.7, help="Policy sampling temperature (paper, Qwen2.5-7B: 0.7).")
    top_p: float = option(0.8, help="Policy nucleus sampling (paper, Qwen2.5-7B: 0.8).")
    top_k: int = option(20, help="Policy top-k sampling (paper, Qwen2.5-7B: 20; 0 = off).")
    max_tokens: int = option(160, help="Policy generation budget per solution.")
    seed: int = option(0, help="Seed of every policy sample.")
    problems: str | None = option("data/prepared/test.parquet", help="Held-out problems table (null: none).")
    max_problems: int = option(64, help="Held-out problems used.")
    files: list[str] = option([], help="Real problem files; each is a problem set named by its stem.")
    file_max_problems: int = option(4, help="Problems used from each real file.")
    threads: int = option(1, help="torch CPU threads for in-process generation (0: torch's default).")
    workers: int = option(
        1,
        help="Processes critiquing with the GenPRM and the direct GenPRM at once, one torch thread each "
        "(1: this process); the same critiques (components/method/scorerpool.py).",
    )
    output_dir: str = option("data/refine", help="Per-problem refinement table and progress.")

    def __post_init__(self) -> None:
        unknown = [c for c in self.critics if c not in CRITICS]
        if unknown or not self.critics:
            raise ConfigError(f"refine.critics: {unknown or '[]'} not among {', '.join(CRITICS)}")
        if "direct" in self.critics and not self.direct_model:
            raise ConfigError("refine.critics: 'direct' needs refine.direct_model")
        if self.turns < 1 or self.critic_samples < 1 or self.max_tokens < 1:
            raise ConfigError("refine.turns/critic_samples/max_tokens: must be at least 1")
        check_pool_workers(self.workers, self.genprm.model.backend, "refine")

    def loop(self) -> LoopSettings:
        return LoopSettings(
            self.turns,
            self.temperature,
            self.top_p,
            self.top_k,
            self.max_tokens,
            self.critic_samples,
            self.seed,
        )


def critic_scorer(cfg: RefineConfig, critic: str, policy: Any, pool: ScoringPool | None = None) -> Any:
    """The scorer a critic critiques with (None for ``none``); ``self_refine`` uses the policy itself.
    With a ``pool`` the GenPRM and the direct GenPRM critique in its worker processes."""
    from components.method.scorer import GenPRMScorer

    if critic == "none":
        return None
    if critic == "self_refine":
        return GenPRMScorer(replace(cfg.genprm, execute=False), backend=policy)
    if critic == "direct":
        model = replace(cfg.genprm.model, model=str(cfg.direct_model))
        return make_scorer(replace(cfg.genprm, model=model, execute=False), pool)
    if critic == "teacher":  # the program teacher: a reference for a near-perfect critic
        from components.method.teachercritic import TeacherCritic

        return TeacherCritic(cfg.genprm.sandbox)
    return make_scorer(cfg.genprm, pool)


def initial_paths(
    policy: Any, name: str, problems: list[Problem], cfg: RefineConfig, journal: Journal
) -> list[SampledPath]:
    """Turn 0 of a problem set, shared by every critic (journalled, so a resume keeps it)."""
    key = f"initial:{name}"
    if key not in journal.done:
        paths = sample_solutions(policy, problems, cfg.loop())
        journal.append(key, [asdict(p) for p in paths])
    return [SampledPath(**record) for record in journal.records([key])]


def run(cfg: RefineConfig, sets: dict[str, list[Problem]], journal: Journal) -> list[dict[str, Any]]:
    """Every (set, critic): rows of every problem at every turn, each (set, critic) journalled."""
    from components.backends.base import make_backend

    rows: list[dict[str, Any]] = []
    with make_backend(cfg.policy) as policy, scoring_pool(cfg.workers) as pool:
        initial = {name: initial_paths(policy, name, probs, cfg, journal) for name, probs in sets.items()}
        for critic in cfg.critics:
            todo = [name for name in sets if f"{name}:{critic}" not in journal.done]
            scorer = critic_scorer(cfg, critic, policy, pool) if todo else None
            try:
                for name in todo:
                    log.info("refine: %s, critic %s, %d problems", name, critic, len(sets[name]))
                    found = run_critic(policy, critic, scorer, sets[name], initial[name], cfg.loop())
                    journal.append(f"{name}:{critic}", [{"set": name, "critic": critic, **r} for r in found])
            finally:
                if scorer is not None:
                    scorer.close()
            rows += journal.records([f"{name}:{critic}" for name in sets])
    return rows


def gain_interval(rows: list[dict[str, Any]], turns: int) -> list[float]:
    """95% normal interval (percentage points) of the mean per-problem gain turn_T - turn_0."""
    first = {r["problem_id"]: r["correct"] for r in rows if r["turn"] == 0}
    last = {r["problem_id"]: r["correct"] for r in rows if r["turn"] == turns}
    diffs = [int(last[k]) - int(first[k]) for k in first]
    if len(diffs) < 2:
        return [0.0, 0.0]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    half = 1.96 * sd / math.sqrt(len(diffs))
    return [round(100 * (mean - half), 2), round(100 * (mean + half), 2)]


def refine_metrics(
    rows: list[dict[str, Any]], sets: dict[str, list[Problem]], cfg: RefineConfig
) -> dict[str, Any]:
    """``metrics/refine.json``: accuracy per set, critic and turn, then the per-critic statistics."""
    metrics: dict[str, Any] = {
        k: {}
        for k in (
            "accuracy",
            "gain",
            "gain_ci95",
            "flag_rate",
            "right_to_wrong",
            "wrong_to_right",
            "refinements",
        )
    }
    for name in sets:
        for critic in cfg.critics:
            mine = [r for r in rows if r["set"] == name and r["critic"] == critic]
            summary = summarize(mine, cfg.turns)
            acc = summary["accuracy"]
            metrics["accuracy"].setdefault(name, {})[critic] = acc
            metrics["gain"].setdefault(name, {})[critic] = round(acc[f"turn_{cfg.turns}"] - acc["turn_0"], 2)
            metrics["gain_ci95"].setdefault(name, {})[critic] = gain_interval(mine, cfg.turns)
            for key in ("flag_rate", "right_to_wrong", "wrong_to_right", "refinements"):
                metrics[key].setdefault(name, {})[critic] = summary[key]
    metrics["problems"] = {name: len(probs) for name, probs in sets.items()}
    return metrics


def plot_rows(metrics: dict[str, Any], turns: int) -> list[dict[str, Any]]:
    """Accuracy vs turn per critic on the synthetic set (or the first set)."""
    accuracy = metrics["accuracy"]
    name = "synthetic" if "synthetic" in accuracy else next(iter(accuracy), None)
    if name is None:
        return []
    return [
        {"turn": t} | {c: accs[f"turn_{t}"] for c, accs in accuracy[name].items()} for t in range(turns + 1)
    ]


def save_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """A PNG of accuracy against turn per critic (logged to MLflow with the stage's reports)."""
    from components.platform.figures import line_figure

    line_figure(path, rows, "turn", "accuracy (%)", "refine: accuracy vs turn")


def write_outputs(cfg: RefineConfig, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    from components.data.io import write_json, write_parquet

    write_parquet(Path(cfg.output_dir) / "refinements.parquet", pd.DataFrame(rows))
    plot = plot_rows(metrics, cfg.turns)
    write_json(PLOT_PATH, plot)
    save_figure(plot, FIGURE_PATH)
    write_json(METRICS_PATH, metrics)


def main(params_path: Path, overrides: list[str]) -> dict[str, Any]:
    """Entry point for dvc, flows and the CLI: refine every problem set with every critic."""
    from components.data.sources import problem_sets
    from components.platform.params import load_params

    cfg: RefineConfig = load_params(params_path, overrides, ["refine"])["refine"]
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    sets = problem_sets(cfg.problems, cfg.max_problems, cfg.files, cfg.file_max_problems, "refine")
    models = [cfg.policy.model, cfg.genprm.model.model, *([cfg.direct_model] if cfg.direct_model else [])]
    inputs = [Path(f) for f in [cfg.problems or "", *cfg.files] if f and Path(f).is_file()]
    journal = Journal(Path(cfg.output_dir) / ".progress.jsonl", run_fingerprint(to_dict(cfg), inputs, models))
    rows = run(cfg, sets, journal)
    metrics = refine_metrics(rows, sets, cfg) | {"seconds": round(time.perf_counter() - started, 1)}
    write_outputs(cfg, rows, metrics)
    journal.remove()
    log.info("refine: %s", metrics["accuracy"])
    return metrics


# ------------------------------------------------------------------------------ your own solutions


def read_solutions(path: Path) -> tuple[list[Problem], list[SampledPath]]:
    """(problems, given solutions) from a jsonl of ``{problem, answer, steps[, id]}``.

    A record without a field, or with steps that are not a list of strings, is an error naming
    the file and line."""
    from components.data.io import read_jsonl
    from components.method.paths import given_path
    from components.platform.errors import DataError

    problems: list[Problem] = []
    paths: list[SampledPath] = []
    for line, record in read_jsonl(path):
        where = f"{path}:{line}"
        missing = [k for k in ("problem", "answer", "steps") if k not in record]
        if missing:
            raise DataError(f"{where}: missing field {missing[0]!r} (need problem, answer, steps)")
        steps = record["steps"]
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise DataError(f"{where}: 'steps' must be a non-empty list of strings")
        problem_id = str(record.get("id", f"{path.stem}-{line}"))
        problems.append(
            Problem(
                id=problem_id, source=path.stem, problem=str(record["problem"]), answer=str(record["answer"])
            )
        )
        paths.append(given_path(steps, str(record["answer"])))
    if not problems:
        raise DataError(f"{path}: no solutions")
    return problems, paths


def refine_file(
    params_path: Path, overrides: list[str], data: Path, critics: list[str], out: Path | None
) -> dict[str, Any]:
    """Refine the solutions in ``data`` with ``critics`` (models and sampling from the refine section)."""
    from components.backends.base import make_backend
    from components.data.io import write_jsonl
    from components.platform.params import load_params

    cfg: RefineConfig = load_params(params_path, overrides, ["refine"])["refine"]
    cfg = replace(cfg, critics=critics)
    problems, given = read_solutions(data)
    rows: list[dict[str, Any]] = []
    with make_backend(cfg.policy) as policy:
        for critic in critics:
            scorer = critic_scorer(cfg, critic, policy)
            try:
                found = run_critic(policy, critic, scorer, problems, given, cfg.loop())
            finally:
                if scorer is not None:
                    scorer.close()
            rows += [{"set": data.stem, "critic": critic, **r} for r in found]
    if out is not None:
        write_jsonl(out, rows)
    return refine_metrics(rows, {data.stem: problems}, cfg)
