"""Tests of the rollout stage: path grading and balancing, step splitting, shards, SIGKILL resume, bad input.

The plumbing runs the real hf backend on a tiny random model (``conftest_backends``), which is rarely
correct; the balancing logic is tested on hand-made path lists through the pure selection functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from conftest import QUIET_ENV
from conftest_backends import build_tiny_model

from components.backends import Sample
from components.data.io import read_parquet, write_parquet
from components.data.records import ROLLOUT_COLUMNS, problems_to_frame, split_steps, validate_rollouts
from components.platform.config import build_config
from components.platform.errors import ConfigError, DataError, GenPRMError
from components.stages.rollout import (
    RolloutConfig,
    SampledPath,
    is_balanced,
    main,
    make_path,
    pass_rate,
    select_paths,
    sharded,
)
from components.world.synthetic import SyntheticConfig, generate_problems, to_problem

torch.set_num_threads(1)

NUM_PROBLEMS = 12
MAX_ROUNDS = 2
MAX_TOKENS = 40
ROLLOUT: dict[str, Any] = {
    "num_paths": 2,
    "samples_per_round": 4,
    "max_rounds": MAX_ROUNDS,
    "max_tokens": MAX_TOKENS,
    "max_problems": None,
    "threads": 1,
    "seed": 3,
    "input": "train.parquet",
    "output_dir": "data/rollout",
}


# ------------------------------------------------------------------------------------------ helpers


def path(index: int, correct: bool, valid: bool = True, round_: int = 0) -> SampledPath:
    """A hand-made graded path."""
    return SampledPath(index, round_, "Step 1: a\nStep 2: b", ["a", "b"], "1", correct, valid, "stop")


def make_project(root: Path, model_dir: Path | str, problems: pd.DataFrame | None = None) -> Path:
    """A folder with train.parquet and a params.yaml whose rollout section uses the tiny model."""
    root.mkdir(parents=True, exist_ok=True)
    if problems is None:
        world = generate_problems(SyntheticConfig(), NUM_PROBLEMS, seed=5, prefix="t")
        problems = problems_to_frame([to_problem(p) for p in world])
    write_parquet(root / "train.parquet", problems)
    section = {**ROLLOUT, "policy": {"model": str(model_dir), "batch_size": 8}}
    (root / "params.yaml").write_text(yaml.safe_dump({"rollout": section}))
    return root / "params.yaml"


def run_main(root: Path, *overrides: str) -> dict[str, Any]:
    with contextlib.chdir(root):
        return main(root / "params.yaml", list(overrides))


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """A rollout table with steps as tuples, so tables compare cell by cell."""
    return frame.assign(steps=frame["steps"].map(tuple)).reset_index(drop=True)


def journal_units(journal: Path) -> int:
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-policy"))


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The table of one uninterrupted, unsharded in-process run."""
    root = tmp_path_factory.mktemp("reference")
    make_project(root, tiny_model_dir)
    metrics = run_main(root)
    assert metrics["problems"] == NUM_PROBLEMS and metrics["shards"] == 1
    assert (root / "metrics" / "rollout.json").is_file()
    assert not list((root / "data" / "rollout").glob(".progress-*")), "the journal must be removed"
    return read_parquet(root / "data" / "rollout" / "rollouts.parquet")


# ------------------------------------------------------------------------------------ step splitting


def test_split_steps_on_markers() -> None:
    text = "Step 1: 3 + 4 = 7.\nStep 2: 7 * 2 = 14.\n\nStep 3: The answer is \\boxed{14}."
    assert split_steps(text) == ["3 + 4 = 7.", "7 * 2 = 14.", "The answer is \\boxed{14}."]
    assert split_steps(text, "step_marker") == split_steps(text)
    assert split_steps("Step 1: only one step") == ["only one step"]


def test_split_steps_on_blank_lines() -> None:
    text = "First, 3 + 4 = 7.\n\nThen 7 * 2 = 14.\n  \n\n\nSo \\boxed{14}.\n"
    assert split_steps(text, "blank_line") == ["First, 3 + 4 = 7.", "Then 7 * 2 = 14.", "So \\boxed{14}."]
    # single newlines do not split; a marker opening a paragraph is not step content, one inside is
    assert split_steps("Step 1: a\nStep 2: b", "blank_line") == ["a\nStep 2: b"]
    marked = "Step 1: 3 + 4 = 7.\n\nStep 2: 7 * 2 = 14.\n\n  Step 3:\nSo \\boxed{14}, not Step 4: x."
    assert split_steps(marked, "blank_line") == [
        "3 + 4 = 7.",
        "7 * 2 = 14.",
        "So \\boxed{14}, not Step 4: x.",
    ]
    assert split_steps("Step 1: \n\nb", "blank_line") == ["b"], "a bare marker is no step"
    with pytest.raises(ValueError, match="unknown step split mode"):
        split_steps("a", "lines")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- grading one sample


def test_make_path_grades_and_validates() -> None:
    good = make_path(
        0, 1, Sample("2 + 3 = 5.\nStep 2: 5 * 2 = 10. \\boxed{10}", "stop", 30, 12), "10", "step_marker"
    )
    assert good.text.startswith("Step 1: 2 + 3 = 5.") and good.steps == [
        "2 + 3 = 5.",
        "5 * 2 = 10. \\boxed{10}",
    ]
    assert (good.answer, good.correct, good.valid, good.round) == ("10", True, True, 1)
    wrong = make_path(1, 0, Sample("1 + 1 = 2.\nStep 2: \\boxed{2}", "stop", 30, 9), "10", "step_marker")
    assert (wrong.correct, wrong.valid) == (False, True)
    cut = make_path(2, 0, Sample("1 + 1 = 2.\nStep 2: \\boxed{10}", "length", 30, 40), "10", "step_marker")
    assert (cut.correct, cut.valid, cut.finish_reason) == (True, False, "length")
    one_step = make_path(3, 0, Sample("\\boxed{10}", "stop", 30, 5), "10", "step_marker")
    assert one_step.valid is False and one_step.steps == ["\\boxed{10}"]
    silent = make_path(4, 0, Sample("1 + 1 = 2.\nStep 2: done", "stop", 30, 8), "10", "step_marker")
    assert silent.answer is None and silent.correct is False and silent.valid is True
    blank = make_path(5, 0, Sample("2 + 3 = 5.\n\nSo \\boxed{5}", "stop", 30, 8), "5", "blank_line")
    # the prefill "Step 1: " is in the text, not in the first step (label renders the markers itself)
    assert blank.text.startswith("Step 1: 2 + 3 = 5.")
    assert blank.steps == ["2 + 3 = 5.", "So \\boxed{5}"] and blank.valid and blank.correct


# ------------------------------------------------------------------------------------------ balancing


def test_select_paths_kept_takes_the_first_of_each_kind() -> None:
    paths = [path(0, False), path(1, True, valid=False), path(2, True), path(3, False), path(4, True)]
    paths += [path(5, True), path(6, False)]
    assert select_paths(paths, 4) == ("kept", [0, 2, 3, 4])
    assert select_paths(paths, 2) == ("kept", [0, 2])
    assert is_balanced(paths, 4) and is_balanced(paths, 6) and not is_balanced(paths, 8)
    assert pass_rate(paths) == 3 / 7  # correct AND valid over all sampled


def test_select_paths_easy_hard_unbalanced() -> None:
    easy = [path(0, True), path(1, True), path(2, False, valid=False)]
    assert select_paths(easy, 2) == ("easy", [])
    hard = [path(0, False), path(1, True, valid=False)]
    assert select_paths(hard, 2) == ("hard", [])
    assert select_paths([path(0, True, valid=False)], 2) == ("hard", [])  # nothing valid
    assert select_paths([], 2) == ("hard", []) and pass_rate([]) == 0.0
    unbalanced = [path(0, True), path(1, False), path(2, False), path(3, False)]
    assert select_paths(unbalanced, 4) == ("unbalanced", [])
    assert select_paths(unbalanced, 2) == ("kept", [0, 1])
    assert not is_balanced(unbalanced, 4)


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"num_paths": 3}, "num_paths: must be even"),
        ({"samples_per_round": 0}, "samples_per_round: must be at least 1"),
        ({"shard": "2/2"}, "rollout.shard: need 0 <= i < n"),
        ({"shard": "half"}, "rollout.shard: expected 'i/n'"),
        ({"step_split": "lines"}, "rollout.step_split"),
    ],
)
def test_config_rejects_bad_values(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(RolloutConfig, override, "rollout")


def test_config_defaults_are_the_offline_world() -> None:
    cfg = build_config(RolloutConfig, {"shard": "merge"}, "rollout")
    assert cfg.policy.model == "models/policy" and cfg.policy.backend == "hf"
    assert (cfg.num_paths, cfg.temperature, cfg.step_split) == (4, 0.7, "step_marker")


# ------------------------------------------------------------------------------------- the real stage


@pytest.mark.slow
def test_rollout_table_schema_and_budget(reference: pd.DataFrame) -> None:
    validate_rollouts(reference)
    assert list(reference.columns) == ROLLOUT_COLUMNS
    assert reference["problem_id"].nunique() == NUM_PROBLEMS
    assert list(reference["problem_index"].drop_duplicates()) == list(range(NUM_PROBLEMS))
    assert reference["path_id"].is_unique
    assert (reference["text"].str.startswith("Step 1: ")).all()
    assert (reference["num_steps"] == reference["steps"].map(len)).all()
    assert set(reference["finish_reason"]) <= {"stop", "length"}
    assert (reference["num_generated_tokens"] <= MAX_TOKENS).all()
    assert (reference[reference["finish_reason"] == "length"]["valid"] == False).all()  # noqa: E712
    # A problem that is not kept spent the whole budget; every problem has one status and pass rate.
    per = reference.groupby("problem_id").agg(
        rounds=("round", "max"), statuses=("problem_status", "nunique"), rates=("pass_rate", "nunique")
    )
    dropped = reference.groupby("problem_id")["problem_status"].first() != "kept"
    assert (per.loc[dropped, "rounds"] == MAX_ROUNDS - 1).all()
    assert (per["statuses"] == 1).all() and (per["rates"] == 1).all()
    assert not reference.loc[reference["problem_status"] != "kept", "kept"].any()
    # Rounds are seeded apart: a problem's two rounds do not repeat each other.
    first = reference[reference["problem_id"] == reference["problem_id"].iloc[0]]
    assert first.groupby("round")["text"].apply(tuple).nunique() == first["round"].nunique()


@pytest.mark.slow
def test_two_merged_shards_equal_one_run(
    tiny_model_dir: Path, tmp_path: Path, reference: pd.DataFrame
) -> None:
    make_project(tmp_path, tiny_model_dir)
    first = run_main(tmp_path, "rollout.shard=0/2")
    second = run_main(tmp_path, "rollout.shard=1/2")
    assert first["problems"] + second["problems"] == NUM_PROBLEMS and first["shards"] == 2
    assert not (tmp_path / "metrics" / "rollout.json").exists(), "a shard writes no final metrics"
    assert not (tmp_path / "data" / "rollout" / "rollouts.parquet").exists()
    out = tmp_path / "data" / "rollout"
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "manifest-0of2.json",
        "manifest-1of2.json",
        "rollouts-0of2.parquet",
        "rollouts-1of2.parquet",
    ]

    merged_metrics = run_main(tmp_path, "rollout.shard=merge")
    assert merged_metrics["problems"] == NUM_PROBLEMS and merged_metrics["shards"] == 2
    merged = read_parquet(out / "rollouts.parquet")
    pd.testing.assert_frame_equal(comparable(merged), comparable(reference))
    assert (tmp_path / "metrics" / "rollout.json").is_file()
    assert not list(out.glob(".progress-*"))


def _cli(root: Path) -> list[str]:
    return [sys.executable, "-m", "components.platform.cli", "rollout", "--params", str(root / "params.yaml")]


def _env(repo_root: Path) -> dict[str, str]:
    env = {**os.environ, **QUIET_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    return env


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_table(
    tiny_model_dir: Path, tmp_path: Path, reference: pd.DataFrame, repo_root: Path
) -> None:
    make_project(tmp_path, tiny_model_dir)
    journal = tmp_path / "data" / "rollout" / ".progress-0of1.jsonl"
    proc = subprocess.Popen(
        _cli(tmp_path),
        cwd=tmp_path,
        env=_env(repo_root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while journal_units(journal) < 2:
        assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "no progress within 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = journal_units(journal)
    assert 2 <= done < NUM_PROBLEMS, done
    assert not (tmp_path / "data" / "rollout" / "rollouts.parquet").exists()

    resumed = subprocess.run(
        _cli(tmp_path),
        cwd=tmp_path,
        env=_env(repo_root),
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done} already done" in " ".join(resumed.stderr.split())  # rich wraps long log lines
    assert json.loads(resumed.stdout)["problems"] == NUM_PROBLEMS  # stdout: only the metrics
    table = read_parquet(tmp_path / "data" / "rollout" / "rollouts.parquet")
    assert table["path_id"].is_unique
    pd.testing.assert_frame_equal(comparable(table), comparable(reference))
    assert not journal.exists()


# ------------------------------------------------------------------------------------------ bad input


def test_missing_column_in_train_table(tmp_path: Path) -> None:
    world = generate_problems(SyntheticConfig(), 3, seed=1)
    make_project(tmp_path, "unused", problems_to_frame([to_problem(p) for p in world]).drop(columns="answer"))
    with pytest.raises(DataError, match=r"train\.parquet: missing column 'answer'"):
        run_main(tmp_path)


def test_problem_without_gold_answer(tmp_path: Path) -> None:
    frame = problems_to_frame([to_problem(p) for p in generate_problems(SyntheticConfig(), 3, seed=1)])
    frame.loc[1, "answer"] = " "
    make_project(tmp_path, "unused", frame)
    with pytest.raises(DataError, match=r"train\.parquet: row 2 .* empty answer"):
        run_main(tmp_path)


def test_missing_model_dir(tmp_path: Path) -> None:
    make_project(tmp_path, tmp_path / "no-such-model")
    with pytest.raises(GenPRMError, match=r"model directory not found: .*no-such-model"):
        run_main(tmp_path)
    assert not (tmp_path / "data" / "rollout" / ".progress-0of1.jsonl").exists()


def test_validate_rollouts_names_file_column_and_row(tmp_path: Path) -> None:
    rows = [
        {column: None for column in ROLLOUT_COLUMNS}
        | {"path_id": f"p/{i}", "kept": True, "steps": ["a", "b"]}
        for i in range(3)
    ]
    rows[2]["steps"] = []
    frame = pd.DataFrame(rows, columns=ROLLOUT_COLUMNS)
    with pytest.raises(DataError, match=r"r\.parquet: row 3 \(path 'p/2'\) is kept but has no steps"):
        validate_rollouts(frame, "r.parquet")
    with pytest.raises(DataError, match=r"r\.parquet: missing column 'steps'"):
        validate_rollouts(frame.drop(columns="steps"), "r.parquet")
    frame.loc[2, "path_id"] = "p/0"
    with pytest.raises(DataError, match=r"row 3 repeats path_id 'p/0'"):
        validate_rollouts(frame, "r.parquet")


def test_merge_needs_every_shard(tmp_path: Path) -> None:
    cfg = RolloutConfig(output_dir=str(tmp_path))
    with pytest.raises(DataError, match="no shard outputs"):
        sharded(cfg).shard_count()
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest-0of3.json").touch()
    (shards / "manifest-2of3.json").touch()
    with pytest.raises(DataError, match=r"manifest-1of3\.json: shard 1/3 is missing"):
        sharded(cfg).shard_count()
    (shards / "manifest-1of2.json").touch()
    with pytest.raises(DataError, match=r"different shard counts \[2, 3\]"):
        sharded(cfg).shard_count()


@pytest.mark.slow
def test_two_worker_processes_equal_one_run(
    tiny_model_dir: Path, tmp_path: Path, reference: pd.DataFrame
) -> None:
    make_project(tmp_path, tiny_model_dir)
    metrics = run_main(tmp_path, "rollout.workers=2")
    assert metrics["problems"] == NUM_PROBLEMS and metrics["shards"] == 2
    out = tmp_path / "data" / "rollout"
    pd.testing.assert_frame_equal(comparable(read_parquet(out / "rollouts.parquet")), comparable(reference))
    assert not (out / "shards").exists(), "the shard outputs are removed after the merge"
    assert not list(out.glob(".progress-*"))


def test_workers_start_processes_only_for_an_unsharded_run() -> None:
    from components.data.workers import parallel

    with pytest.raises(ConfigError, match=r"rollout\.workers: must be at least 1"):
        RolloutConfig(workers=0)
    assert parallel(2, "0/1") and not parallel(1, "0/1")
    assert not parallel(2, "1/2") and not parallel(2, "merge"), "an explicit shard runs in one process"
