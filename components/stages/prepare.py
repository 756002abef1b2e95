"""The ``prepare`` stage: load problems, deduplicate, split; write the synthetic ProcessBench test set.

Sources (``prepare.source``): ``synthetic`` (the seeded small world), ``file`` (jsonl/parquet with a
field mapping, e.g. the benchmark files in ../shared/data) and ``hf`` (``datasets`` at a pinned
revision). Answer formats (``prepare.file.answer_format``: gsm8k, float, latex, boxed for answers only
inside a solution's ``\\boxed{}``, list answers) are ``components/data/sources.py``'s. Problems are
deduplicated by normalized text and split with a seeded shuffle so that no problem is in both splits.

    genprm prepare [--set prepare.source=file --set prepare.file.path=../shared/data/gsm8k_test.jsonl]

Outputs ``data/prepared/{train,test}.parquet`` (id, source, problem, answer, metadata),
``data/prepared/processbench.jsonl`` and ``metrics/prepare.json``.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from components.data.quality import QualityConfig, check
from components.data.records import Problem, ProcessBenchRecord, normalize_text
from components.data.sources import FileSourceConfig, HFSourceConfig, load_file_problems, load_hf_problems
from components.platform.config import option
from components.platform.errors import ConfigError
from components.world.mistakes import DEFAULT_KIND_WEIGHTS, KINDS_HELP, REMARK_HELP, check_weights
from components.world.synthetic import (
    SyntheticConfig,
    generate_problems,
    generate_processbench,
    problem_text,
    to_problem,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    """The ``prepare`` section of params.yaml."""

    source: Literal["synthetic", "file", "hf"] = option("synthetic", help="Where problems come from.")
    seed: int = option(0, help="Seed for synthetic problems and the split.")
    num_problems: int = option(1200, help="Synthetic problems to generate (source=synthetic).")
    max_problems: int | None = option(None, help="Keep at most this many problems (file/hf), after dedup.")
    test_fraction: float = option(0.2, help="Fraction of problems held out as the test split (0..1).")
    processbench_size: int = option(400, help="Records in the synthetic ProcessBench-format test set.")
    processbench_error_fraction: float = option(
        0.5, help="Fraction of ProcessBench records with one injected error (the rest are correct)."
    )
    processbench_error_kinds: dict[str, float] = option(DEFAULT_KIND_WEIGHTS, help=KINDS_HELP)
    processbench_remark_rate: float = option(0.2, help=REMARK_HELP)
    file: FileSourceConfig | None = option(None, help="File source settings (source=file).")
    hf: HFSourceConfig | None = option(None, help="Hugging Face datasets source settings (source=hf).")
    output_dir: str = option("data/prepared", help="Directory for the problem tables and test set.")

    def __post_init__(self) -> None:
        check_weights(self.processbench_error_kinds, "prepare.processbench_error_kinds")
        for key in ("test_fraction", "processbench_error_fraction", "processbench_remark_rate"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"prepare.{key}: must be in [0, 1], got {getattr(self, key)}")
        for key in ("num_problems", "processbench_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"prepare.{key}: must be at least 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class PreparedData:
    """What ``run`` produces: the two splits and the synthetic ProcessBench records."""

    train: list[Problem]
    test: list[Problem]
    processbench: list[ProcessBenchRecord]
    metrics: dict[str, Any]


def deduplicate(problems: list[Problem]) -> list[Problem]:
    """Keep the first problem of each normalized text."""
    seen: set[str] = set()
    unique = []
    for problem in problems:
        key = normalize_text(problem.problem)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique


def split(problems: list[Problem], test_fraction: float, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Seeded shuffle, then the first ``test_fraction`` go to test; both keep the input order."""
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    num_test = round(len(problems) * test_fraction)
    test_idx = set(order[:num_test])
    train = [p for i, p in enumerate(problems) if i not in test_idx]
    test = [p for i, p in enumerate(problems) if i in test_idx]
    return train, test


def load_problems(cfg: PrepareConfig, world: SyntheticConfig) -> list[Problem]:
    """Problems from the configured source."""
    if cfg.source == "synthetic":
        return [to_problem(p) for p in generate_problems(world, cfg.num_problems, seed=cfg.seed)]
    if cfg.source == "file":
        if cfg.file is None:
            raise ConfigError("prepare.file: required when prepare.source is 'file'")
        return load_file_problems(cfg.file)
    if cfg.hf is None:
        raise ConfigError("prepare.hf: required when prepare.source is 'hf'")
    return load_hf_problems(cfg.hf)


def synthetic_processbench(
    cfg: PrepareConfig, world: SyntheticConfig, exclude: set[str]
) -> list[ProcessBenchRecord]:
    """The synthetic ProcessBench-format test set, on fresh problems none of which is in ``exclude``."""
    candidates = generate_problems(world, cfg.processbench_size * 2, seed=cfg.seed + 7919, prefix="pb")
    fresh = [p for p in candidates if normalize_text(problem_text(p)) not in exclude]
    return generate_processbench(
        world,
        fresh[: cfg.processbench_size],
        cfg.seed,
        cfg.processbench_error_fraction,
        kinds=cfg.processbench_error_kinds,
        remark_rate=cfg.processbench_remark_rate,
    )


def processbench_mix(records: list[ProcessBenchRecord]) -> dict[str, Any]:
    """Share of records per generator (``synthetic-<kind>``) and of erroneous records with a right answer."""
    counts = Counter(r.generator for r in records)
    errors = [r for r in records if r.label != -1]
    return {
        "processbench_kinds": {g: round(n / len(records), 4) for g, n in sorted(counts.items())},
        "processbench_error_final_answer_correct": round(
            sum(r.final_answer_correct for r in errors) / len(errors), 4
        )
        if errors
        else 0.0,
    }


def run(cfg: PrepareConfig, world: SyntheticConfig) -> PreparedData:
    """Load, deduplicate, cap, split; build the synthetic ProcessBench set held out from training."""
    loaded = load_problems(cfg, world)
    deduped = deduplicate(loaded)
    unique = deduped if cfg.max_problems is None else deduped[: cfg.max_problems]
    train, test = split(unique, cfg.test_fraction, cfg.seed)
    processbench = synthetic_processbench(cfg, world, {normalize_text(p.problem) for p in train})
    num_errors = sum(r.label != -1 for r in processbench)
    metrics = {
        "loaded": len(loaded),
        "duplicates_removed": len(loaded) - len(deduped),
        "train": len(train),
        "test": len(test),
        "processbench": len(processbench),
        "processbench_with_error": num_errors,
        **processbench_mix(processbench),
    }
    log.info("prepare: %s", metrics)
    return PreparedData(train, test, processbench, metrics)


def main(params_path: Path, overrides: list[str]) -> dict[str, Any]:
    """Entry point for dvc, flows and the CLI: read params, run, write outputs atomically."""
    from components.data.io import write_json, write_jsonl, write_parquet
    from components.data.records import problems_to_frame
    from components.platform.params import load_params

    params = load_params(params_path, overrides, ["prepare", "world", "quality"])
    cfg: PrepareConfig = params["prepare"]
    data = run(cfg, params["world"])
    out = Path(cfg.output_dir)
    frames = {"train": problems_to_frame(data.train), "test": problems_to_frame(data.test)}
    bench = [r.to_dict() for r in data.processbench]
    metrics = {**data.metrics, "quality": check_outputs(params["quality"], out, frames, bench)}
    write_parquet(out / "train.parquet", frames["train"])
    write_parquet(out / "test.parquet", frames["test"])
    write_jsonl(out / "processbench.jsonl", bench)
    write_json(Path("metrics/prepare.json"), metrics)
    return metrics


def check_outputs(
    cfg: QualityConfig, out: Path, frames: dict[str, pd.DataFrame], bench: list[dict[str, Any]]
) -> dict[str, Any]:
    """Quality checks of the outputs before they are written; the train split against this run's test sets."""
    held_out = [*frames["test"]["problem"], *(r["problem"] for r in bench)]
    train = check(
        "problems",
        frames["train"],
        cfg,
        source=out / "train.parquet",
        holdout=False,
        test_problems=held_out,
        name="problems_train",
    )
    test = check(
        "problems", frames["test"], cfg, source=out / "test.parquet", holdout=True, name="problems_test"
    )
    processbench = check("processbench", pd.DataFrame(bench), cfg, source=out / "processbench.jsonl")
    return {"train": train, "test": test, "processbench": processbench}
