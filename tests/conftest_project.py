"""A throwaway copy of the project for the flow and end-to-end tests, with a tiny params.yaml.

``copy_project(repo_root, dest)`` copies the git-tracked files (``git ls-files``: sources, ``dvc.yaml``,
``.dvc/config``; not ``.venv``, outputs or caches) into ``dest``, runs ``git init`` there so DVC finds
its SCM, and writes :func:`tiny_params` as ``params.yaml``. ``project_env(dest)`` is the environment
for subprocesses run in the copy: ``.venv/bin`` first on PATH (``dvc`` and the ``genprm`` script),
the copy first on PYTHONPATH (so ``genprm`` imports the copy's ``components``), one CPU thread, offline.

Import it from a test module (``from conftest_project import copy_project``); it is not a conftest
that pytest loads by itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

FIXTURE_LABELS = "data/fixture/labels.parquet"

# Tiny overrides of the shipped params.yaml: every stage finishes in seconds on one thread.
TINY_OVERRIDES = [
    "prepare.num_problems=100",
    "prepare.processbench_size=40",
    "bootstrap.corpus_size=300",
    "bootstrap.vocab_size=300",
    "bootstrap.threads=1",
    "bootstrap.model.hidden_size=32",
    "bootstrap.model.num_layers=2",
    "bootstrap.model.num_heads=2",
    "bootstrap.model.num_kv_heads=2",
    "bootstrap.model.intermediate_size=64",
    "bootstrap.train.steps=20",
    "bootstrap.train.batch_size=8",
    "bootstrap.train.warmup_steps=5",
    "bootstrap.train.log_every=5",
    "bootstrap.train.bf16_autocast=false",
    "bootstrap.critic.steps=10",
    "bootstrap.critic.batch_size=8",
    "bootstrap.critic.warmup_steps=2",
    "bootstrap.critic.corpus_size=100",
    "bootstrap.critic.probe_problems=8",
    "bootstrap.eval.num_problems=10",
    "bootstrap.eval.max_new_tokens=60",
    "bootstrap.eval.batch_size=10",
    "rollout.max_problems=8",
    "rollout.max_rounds=1",
    "rollout.samples_per_round=4",
    "rollout.max_tokens=32",
    "rollout.threads=1",
    "label.k_low=2",
    "label.k_mid=2",
    "label.k_high=2",
    "label.mc0_samples=2",
    "label.max_tokens=32",
    "label.processbench_max_records=6",
    "label.threads=1",
    # A tiny policy solves nothing, so no rollout path is kept: synthesize reads a fixture label table of
    # real small-world paths instead (written by copy_project), and everything downstream runs on it.
    f"synthesize.input={FIXTURE_LABELS}",
    "synthesize.teacher.threads=1",
    "train.max_steps=3",
    "train.batch_size=2",
    "train.max_length=768",
    "train.logging_steps=1",
    "train.threads=1",
    "benchmark.genprm.max_tokens=24",
    "benchmark.genprm.max_rounds=1",
    "benchmark.genprm.threads=1",
    "benchmark.samples=[1, 2]",
    "benchmark.processbench.max_records=3",
    "benchmark.best_of_n.max_problems=2",
    "benchmark.best_of_n.n_values=[1, 2]",
    "benchmark.best_of_n.files=[]",
    "benchmark.best_of_n.max_tokens=32",
    "refine.genprm.max_tokens=24",
    "refine.genprm.max_rounds=1",
    "refine.genprm.threads=1",
    "refine.max_problems=2",
    "refine.turns=1",
    "refine.files=[]",
    "refine.max_tokens=32",
]


def tiny_params(repo_root: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """The shipped params.yaml with :data:`TINY_OVERRIDES` (and ``extra``) applied."""
    from components.platform.config import apply_overrides, read_params

    return apply_overrides(read_params(repo_root / "params.yaml"), TINY_OVERRIDES + (extra or []))


def write_params(dest: Path, params: dict[str, Any]) -> Path:
    path = dest / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def project_env(dest: Path) -> dict[str, str]:
    """Environment for ``dvc``/``genprm`` subprocesses run inside the copy at ``dest``."""
    from conftest import QUIET_ENV

    env = dict(os.environ)
    env.update(QUIET_ENV)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(dest), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env


def copy_project(repo_root: Path, dest: Path, params: dict[str, Any] | None = None) -> Path:
    """Copy the tracked files of ``repo_root`` into ``dest``, ``git init`` it, write tiny params."""
    listed = subprocess.run(
        ["git", "-C", str(repo_root), "ls-files", "-z"], capture_output=True, text=True, check=True
    ).stdout
    for rel in filter(None, listed.split("\0")):
        source = repo_root / rel
        if source.is_file():  # a tracked file deleted in the working tree is skipped
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # Untracked-but-new sources the lead has not committed yet (flows/) must travel too.
    for package in ("components", "flows"):
        for source in (repo_root / package).rglob("*.py"):
            target = dest / source.relative_to(repo_root)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    subprocess.run(["git", "init", "-q", str(dest)], check=True)
    write_params(dest, params if params is not None else tiny_params(repo_root))
    write_fixture_labels(dest / FIXTURE_LABELS)
    return dest


def fixture_label_rows(count: int = 12, seed: int = 11) -> list[dict[str, Any]]:
    """Label-table rows of real small-world paths with known labels, per problem: the gold solution
    (all 1), one with an arithmetic slip (1 until the slip, then 0), and the gold steps with a wrong last
    label (a path the consensus filter must drop)."""
    import random

    from components.world.synthetic import (
        SyntheticConfig,
        generate_problems,
        gold_steps,
        inject_error,
        problem_text,
    )

    cfg, rng, rows = SyntheticConfig(), random.Random(seed), []
    for p in generate_problems(cfg, count, seed=seed, prefix="fixture"):
        text, gold = problem_text(p), gold_steps(p)
        index = rng.randrange(len(gold))
        wrong = inject_error(p, rng, cfg, "arithmetic", index)
        paths = [(gold, [1] * len(gold), True), (gold, [1] * (len(gold) - 1) + [0], True)]
        if wrong is not None:
            paths.insert(1, (wrong, [1] * index + [0] * (len(wrong) - index), False))
        for k, (steps, labels, correct) in enumerate(paths):
            rows.append({
                "path_id": f"{p.uid}/{k}", "problem_id": p.uid, "problem": text, "gold_answer": str(p.answer),
                "steps": steps, "correct": correct, "rpe_labels": labels, "hard_labels": [1] * len(steps),
            })  # fmt: skip
    return rows


def write_fixture_labels(path: Path) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(fixture_label_rows()).to_parquet(path)
    return path
