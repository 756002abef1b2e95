"""The ``benchmark`` stage: ProcessBench F1 (Pass@1 and Maj@N), Best-of-N, and the baselines.

- ProcessBench: every configured ProcessBench-format file is a subset (the synthetic test set by default;
  Qwen/ProcessBench files where a hub is reachable). The GenPRM scores each record with N sampled critique
  conversations; Maj@n uses the first n (Pass@1 is n = 1), so one pass gives the test-time scaling curve.
- Baselines, scored the same way: the direct GenPRM (trained on verdict-only records) and the GenPRM with
  code execution switched off.
- The ceiling: the teacher that wrote the training rationales (``synthesize.teacher``) judges the same
  records; its verdicts go through the same first-error and F1 code (``processbench.teacher.maj@1``).
- Best-of-N: the configured policy samples N solutions for held-out synthetic problems and for the real
  files of ``../shared/data``; the GenPRM scores them and the selectors of ``components/method/bestofn.py``
  pick.

Results: metrics/benchmark.json (DVC metrics; percentages), plots/benchmark_f1.json and
plots/benchmark_bon.json (DVC plots), PNG figures and per-record tables under ``benchmark.output_dir``.

    genprm benchmark                 # dvc repro benchmark does the same
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from components.method.bestofn_eval import BestOfNConfig, best_of_n
from components.method.scorer import ScorerConfig
from components.method.scorerpool import ScoringPool, check_pool_workers, open_scorer, scoring_pool
from components.method.teachers import TeacherConfig
from components.platform.config import option, section
from components.platform.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessBenchSetConfig:
    """Which ProcessBench-format files are scored."""

    files: list[str] = option(
        ["data/prepared/processbench.jsonl"],
        help="ProcessBench-format files; each is a subset named by its stem.",
    )
    max_records: int | None = option(
        100, help="Score only the first this many records of each file (null: all)."
    )


@dataclass(frozen=True)
class BenchmarkConfig:
    """The ``benchmark`` section of params.yaml."""

    genprm: ScorerConfig = section(ScorerConfig, help="The GenPRM under test and how it critiques.")
    samples: list[int] = option([1, 2, 4, 8], help="Maj@N values for ProcessBench (1 = Pass@1).")
    direct_model: str | None = option("models/genprm_direct", help="The direct baseline model (null: skip).")
    no_code_baseline: bool = option(True, help="Also score with code execution switched off.")
    baseline_samples: int = option(1, help="Critiques per record for the baselines.")
    teacher_ceiling: bool = option(
        True, help="Also score the teacher (synthesize.teacher) on the same records: the ceiling."
    )
    processbench: ProcessBenchSetConfig = section(ProcessBenchSetConfig, help="ProcessBench subsets.")
    best_of_n: BestOfNConfig = section(BestOfNConfig, help="Best-of-N selection.")
    bootstrap_rounds: int = option(
        1000, help="Resamples of the 95% bootstrap intervals of every F1, accuracy and contrast."
    )
    threads: int = option(1, help="torch CPU threads for in-process generation (0: torch's default).")
    workers: int = option(
        1,
        help="Processes scoring with the GenPRM at once, one torch thread each (1: this process); "
        "the same rewards, ~1.8x faster on 2 cores (components/method/scorerpool.py).",
    )
    output_dir: str = option("data/benchmark", help="Per-record tables and figures.")

    def __post_init__(self) -> None:
        if not self.samples or min(self.samples) < 1 or self.baseline_samples < 1:
            raise ConfigError("benchmark.samples/baseline_samples: every N must be at least 1")
        check_pool_workers(self.workers, self.genprm.model.backend, "benchmark")


# ------------------------------------------------------------------------------------------ ProcessBench


def score_processbench(
    cfg: BenchmarkConfig,
    scorer_cfg: ScorerConfig,
    samples: list[int],
    tag: str,
    pool: ScoringPool | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Mean and per-subset F1 for each Maj@n of ``samples``, and one row per record."""
    from components.method.processbench import evaluate, load_subset, predictions_from_rewards

    subsets = {
        Path(f).stem: load_subset(Path(f), cfg.processbench.max_records) for f in cfg.processbench.files
    }
    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    with open_scorer(scorer_cfg, pool) as scorer:
        for name, records in subsets.items():
            scored = scorer.score([(r.problem, r.steps) for r in records], max(samples), desc=f"{tag} {name}")
            for n in samples:
                preds = predictions_from_rewards(records, [s.rewards(n) for s in scored])
                results.setdefault(f"maj@{n}", {})[name] = preds
            rows += [_record_row(tag, name, r, s) for r, s in zip(records, scored, strict=True)]
    merged = {key: _merge(preds) for key, preds in results.items()}
    metrics = {key: evaluate(subsets, preds) for key, preds in merged.items()}
    return metrics | {"predictions": merged}, rows


def _merge(per_subset: dict[str, dict[str, int]]) -> dict[str, int]:
    return {rid: p for preds in per_subset.values() for rid, p in preds.items()}


def _record_row(tag: str, subset: str, record: Any, scored: Any) -> dict[str, Any]:
    return {
        "system": tag,
        "subset": subset,
        "id": record.id,
        "label": record.label,
        "samples": scored.samples,
        "reward_sources": scored.sources,
        "source_counts": scored.source_counts,
        "missing_verdicts": scored.missing_verdicts,
        "code_runs": scored.code_runs,
        "code_failures": scored.code_failures,
        "tokens": scored.tokens,
        "critique": scored.critiques,
    }


def processbench_systems(cfg: BenchmarkConfig) -> list[tuple[str, ScorerConfig, list[int]]]:
    """The GenPRM and its baselines: (name, scorer config, Maj@N values)."""
    base = [1] if cfg.baseline_samples == 1 else sorted({1, cfg.baseline_samples})
    systems = [("genprm", cfg.genprm, sorted(set(cfg.samples)))]
    if cfg.no_code_baseline:
        systems.append(("genprm_no_code", replace(cfg.genprm, execute=False), base))
    if cfg.direct_model:
        direct = replace(cfg.genprm, model=replace(cfg.genprm.model, model=cfg.direct_model), execute=False)
        systems.append(("direct", direct, base))
    return systems


def score_teacher(
    cfg: BenchmarkConfig, teacher_cfg: TeacherConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ceiling: the teacher's verdicts on the same records -> first wrong step -> the same F1 code.

    The teacher runs its code in a sandbox with the GenPRM's limits (``benchmark.genprm.sandbox``).
    """
    from components.method.processbench import evaluate, load_subset, predictions_from_verdicts
    from components.method.teachers import make_teacher
    from components.sandbox import Sandbox

    subsets = {
        Path(f).stem: load_subset(Path(f), cfg.processbench.max_records) for f in cfg.processbench.files
    }
    predictions: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    with Sandbox(cfg.genprm.sandbox) as sandbox:
        teacher = make_teacher(teacher_cfg, sandbox)
        for name, records in subsets.items():
            critiques = teacher.critique([(r.problem, r.steps) for r in records])
            predictions |= predictions_from_verdicts(records, [c.verdicts for c in critiques])
            rows += [_teacher_row(name, r, c) for r, c in zip(records, critiques, strict=True)]
    steps = sum(len(r["samples"][0]) for r in rows)
    missing = sum(r["missing_verdicts"] for r in rows)
    scores = {"maj@1": evaluate(subsets, predictions), "missing_verdict_rate": missing / max(1, steps)}
    return scores | {"predictions": {"maj@1": predictions}}, rows


def _teacher_row(subset: str, record: Any, critique: Any) -> dict[str, Any]:
    from components.method.processbench import VERDICT_REWARDS

    return {
        "system": "teacher",
        "subset": subset,
        "id": record.id,
        "label": record.label,
        "samples": [[VERDICT_REWARDS[v] for v in critique.verdicts]],
        "reward_sources": ["verdict"],
        "missing_verdicts": critique.verdicts.count(-1),
        "code_runs": len(critique.statuses),
        "code_failures": sum(s != "ok" for s in critique.statuses),
        "tokens": 0,
        "critique": critique.turns,
    }


def verdict_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per GenPRM system: turns critiqued, missing verdicts and their rate, turns per reward source.

    ``register`` reads ``verdicts.genprm.missing_rate`` (percent) and ``verdicts.genprm.reward_source``.
    """
    from components.method.scorer import verdict_stats

    systems = dict.fromkeys(r["system"] for r in rows if "source_counts" in r)
    return {
        system: verdict_stats(
            [r["source_counts"] for r in rows if r["system"] == system and "source_counts" in r]
        )
        for system in systems
    }


# ----------------------------------------------------------------------------------------------- outputs


def strip_predictions(processbench: dict[str, Any]) -> dict[str, Any]:
    """The systems' scores without their per-record predictions (those stay out of the metrics)."""
    return {
        name: {k: v for k, v in scores.items() if k != "predictions"} for name, scores in processbench.items()
    }


def benchmark_intervals(
    cfg: BenchmarkConfig, processbench: dict[str, Any], per_problem: dict[str, dict[str, list[float]]]
) -> dict[str, Any]:
    """95% bootstrap intervals of every F1, contrast and Best-of-N accuracy (method/intervals.py)."""
    from components.method import intervals
    from components.method.processbench import load_subset

    records = [
        (Path(f).stem, r.id, r.label)
        for f in cfg.processbench.files
        for r in load_subset(Path(f), cfg.processbench.max_records)
    ]
    predictions = {name: scores["predictions"] for name, scores in processbench.items()}
    return intervals.benchmark_intervals(records, predictions, per_problem, cfg.bootstrap_rounds)


def f1_plot_rows(processbench: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean F1 vs N for the GenPRM (the test-time scaling curve), baselines at their N, and the teacher's
    Pass@1 at every N (the ceiling, a flat reference line)."""
    rows = []
    for key, scores in processbench["genprm"].items():
        row = {"n": int(key.removeprefix("maj@")), "genprm": scores["mean_f1"]}
        for system in ("genprm_no_code", "direct"):
            if key in processbench.get(system, {}):
                row[system] = processbench[system][key]["mean_f1"]
        if "teacher" in processbench:
            row["teacher"] = processbench["teacher"]["maj@1"]["mean_f1"]
        rows.append(row)
    return sorted(rows, key=lambda r: r["n"])


def bon_plot_rows(bon: dict[str, Any]) -> list[dict[str, Any]]:
    """Synthetic-set accuracy vs N, one column per selector."""
    synthetic = bon.get("synthetic", {})
    ns = sorted({int(n) for sel, accs in synthetic.items() if isinstance(accs, dict) for n in accs})
    return [
        {"n": n} | {sel: accs[str(n)] for sel, accs in synthetic.items() if isinstance(accs, dict)}
        for n in ns
    ]


def save_figures(out: Path, f1_rows: list[dict[str, Any]], bon_rows: list[dict[str, Any]]) -> list[Path]:
    """PNG figures of both curves (logged to MLflow as images)."""
    from components.platform.figures import line_figure

    return [
        line_figure(out / "f1_vs_n.png", f1_rows, "n", "ProcessBench mean F1 (%)", "f1 vs n", log_x=True),
        line_figure(out / "bon_accuracy.png", bon_rows, "n", "accuracy (%)", "bon accuracy", log_x=True),
    ]


def main(params_path: Path, overrides: list[str]) -> dict[str, Any]:
    """Entry point for dvc, flows and the CLI: score ProcessBench and Best-of-N; write metrics and plots."""
    import pandas as pd

    from components.data.io import write_json, write_parquet
    from components.data.journal import fingerprint, model_fingerprint
    from components.method.processbench import as_percent
    from components.platform.params import load_params, load_value

    cfg: BenchmarkConfig = load_params(params_path, overrides, ["benchmark"])["benchmark"]
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    processbench: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    with scoring_pool(cfg.workers) as pool:
        for name, scorer_cfg, samples in processbench_systems(cfg):
            processbench[name], system_rows = score_processbench(cfg, scorer_cfg, samples, name, pool)
            rows += system_rows
        if cfg.teacher_ceiling:
            teacher_cfg = load_value(params_path, overrides, "synthesize.teacher", TeacherConfig)
            processbench["teacher"], teacher_rows = score_teacher(cfg, teacher_cfg)
            rows += teacher_rows
        bon, per_problem = best_of_n(cfg.best_of_n, cfg.genprm, pool)
    metrics = as_percent({"processbench": strip_predictions(processbench), "best_of_n": bon})
    metrics["intervals"] = benchmark_intervals(cfg, processbench, per_problem)
    genprm = metrics["processbench"]["genprm"]
    metrics["verdicts"] = as_percent(verdict_summary(rows))
    metrics["headline"] = {f"f1_maj@{n}": genprm[f"maj@{n}"]["mean_f1"] for n in cfg.samples}
    # Ties these metrics to the weights scored: `register` never promotes a model on another's numbers.
    metrics["model_fingerprint"] = fingerprint(model_fingerprint(cfg.genprm.model.model))
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(out / "processbench_scores.parquet", pd.DataFrame(rows))
    f1_rows, bon_rows = f1_plot_rows(metrics["processbench"]), bon_plot_rows(metrics["best_of_n"])
    save_figures(out, f1_rows, bon_rows)
    write_json(Path("plots/benchmark_f1.json"), f1_rows)
    write_json(Path("plots/benchmark_bon.json"), bon_rows)
    write_json(Path("metrics/benchmark.json"), metrics)
    return metrics
