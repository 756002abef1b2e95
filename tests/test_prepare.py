"""Tests for the prepare stage: run() on the synthetic world, main()'s outputs, and the CLI on bad input.

Outputs are written only after the whole run has succeeded (each file atomically), so a failed run leaves
no new or partial file behind and never touches the outputs of an earlier successful run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from components.data.io import read_jsonl
from components.data.records import Problem, normalize_text, problems_from_frame, processbench_from_dict
from components.data.sources import FileSourceConfig
from components.platform.cli import app
from components.platform.errors import ConfigError, DataError
from components.stages.prepare import (
    PrepareConfig,
    deduplicate,
    main,
    run,
    split,
)
from components.world.synthetic import SyntheticConfig

WORLD = SyntheticConfig()
SMALL = PrepareConfig(num_problems=300, processbench_size=60, test_fraction=0.25, seed=5)
SHARED_ROWS = {"math500": 500, "gsm8k_test": 1319, "aime24": 30, "amc23": 40}


@pytest.fixture
def workdir(repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tmp cwd holding a copy of the shipped params.yaml whose outputs go to ``out/`` inside it."""
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["prepare"]["output_dir"] = "out"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# Not stage outputs: the quality reports (GE results, Data Docs) and the MLflow store that tracking keeps
# in the working directory (a failed run is recorded there as FAILED, by design).
NOT_OUTPUTS = {"reports", "mlflow.db", "mlartifacts"}


def _files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not NOT_OUTPUTS & set(p.relative_to(root).parts)
    }


def _problem(pid: str, text: str, answer: str = "1") -> Problem:
    return Problem(id=pid, source="t", problem=text, answer=answer)


# ------------------------------------------------------------------------------------ run(): synthetic


def test_synthetic_run_counts_and_disjoint_splits() -> None:
    data = run(SMALL, WORLD)
    metrics = data.metrics
    assert metrics["loaded"] == 300
    unique = 300 - metrics["duplicates_removed"]
    assert (metrics["train"], metrics["test"]) == (len(data.train), len(data.test))
    assert len(data.train) + len(data.test) == unique
    assert len(data.test) == round(unique * 0.25)
    assert metrics["processbench"] == len(data.processbench) == 60
    assert metrics["processbench_with_error"] == sum(r.label != -1 for r in data.processbench)
    train_texts = {normalize_text(p.problem) for p in data.train}
    test_texts = {normalize_text(p.problem) for p in data.test}
    assert not train_texts & test_texts, "no problem in both splits"
    assert len(train_texts) == len(data.train) and len(test_texts) == len(data.test)
    ids = [p.id for p in data.train + data.test]
    assert len(ids) == len(set(ids))


def test_processbench_problems_not_in_train() -> None:
    data = run(SMALL, WORLD)
    train_texts = {normalize_text(p.problem) for p in data.train}
    assert all(normalize_text(r.problem) not in train_texts for r in data.processbench)
    assert 0.3 <= sum(r.label != -1 for r in data.processbench) / len(data.processbench) <= 0.7


def test_run_is_deterministic() -> None:
    assert run(SMALL, WORLD) == run(SMALL, WORLD)


def test_synthetic_problems_carry_gold_steps() -> None:
    data = run(SMALL, WORLD)
    problem = data.train[0]
    assert problem.source == "synthetic"
    steps = problem.metadata["gold_steps"]
    assert steps[-1].endswith(f"\\boxed{{{problem.answer}}}.")


def test_validate_ranges() -> None:
    with pytest.raises(ConfigError, match=r"prepare\.test_fraction: must be in \[0, 1\]"):
        run(PrepareConfig(test_fraction=1.5), WORLD)
    with pytest.raises(ConfigError, match=r"prepare\.processbench_error_fraction"):
        run(PrepareConfig(processbench_error_fraction=-0.1), WORLD)


@pytest.mark.parametrize(("source", "key"), [("file", "prepare.file"), ("hf", "prepare.hf")])
def test_source_needs_its_section(source: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}: required when prepare\.source is '{source}'"):
        run(PrepareConfig(source=source, file=None, hf=None), WORLD)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- dedup and split


def test_normalize_text() -> None:
    assert normalize_text("  What is\t2 +  2?\n") == "what is 2 + 2?"


def test_deduplicate_keeps_first_of_each_normalized_text() -> None:
    problems = [
        _problem("a", "What is 2 + 2?"),
        _problem("b", "what is  2 + 2?"),
        _problem("c", "What is 3 + 3?"),
        _problem("d", "  WHAT IS 2 +\n2?  "),
        _problem("e", "What is 3 + 3?", answer="6"),
    ]
    assert [p.id for p in deduplicate(problems)] == ["a", "c"]
    assert deduplicate([]) == []


def test_duplicates_through_run(tmp_path: Path) -> None:
    rows = [{"problem": f"Problem number {i}.", "answer": str(i)} for i in range(10)]
    rows += [
        {"problem": "PROBLEM NUMBER 3.", "answer": "3"},
        {"problem": "problem  number 7.", "answer": "7"},
    ]
    path = _write_jsonl(tmp_path / "dups.jsonl", rows)
    cfg = PrepareConfig(source="file", file=FileSourceConfig(path=str(path)), processbench_size=10)
    data = run(cfg, WORLD)
    assert (data.metrics["loaded"], data.metrics["duplicates_removed"]) == (12, 2)
    assert len(data.train) + len(data.test) == 10


def test_max_problems_caps_after_dedup(tmp_path: Path) -> None:
    rows = [{"problem": f"P {i % 6}", "answer": "1"} for i in range(12)]
    path = _write_jsonl(tmp_path / "cap.jsonl", rows)
    cfg = PrepareConfig(
        source="file", file=FileSourceConfig(path=str(path)), max_problems=4, processbench_size=5
    )
    data = run(cfg, WORLD)
    assert len(data.train) + len(data.test) == 4
    assert data.metrics["duplicates_removed"] == 6


def test_split_is_seeded_disjoint_and_order_preserving() -> None:
    problems = [_problem(str(i), f"p{i}") for i in range(50)]
    train, test = split(problems, 0.2, seed=1)
    assert len(test) == 10 and len(train) == 40
    assert {p.id for p in train} | {p.id for p in test} == {p.id for p in problems}
    assert not {p.id for p in train} & {p.id for p in test}
    assert [int(p.id) for p in train] == sorted(int(p.id) for p in train)
    assert split(problems, 0.2, seed=1) == (train, test)
    assert split(problems, 0.2, seed=2) != (train, test)
    assert split(problems, 0.0, seed=1) == (problems, [])
    assert split(problems, 1.0, seed=1) == ([], problems)


# ----------------------------------------------------------------------------------------- main()


def test_main_writes_outputs(workdir: Path) -> None:
    overrides = ["prepare.num_problems=200", "prepare.processbench_size=40"]
    metrics = main(Path("params.yaml"), overrides)
    out = workdir / "out"
    assert _files(workdir) == {
        "params.yaml",
        "out/train.parquet",
        "out/test.parquet",
        "out/processbench.jsonl",
        "metrics/prepare.json",
    }, "no temporary or extra files"
    assert json.loads((workdir / "metrics" / "prepare.json").read_text()) == metrics
    train_frame = pd.read_parquet(out / "train.parquet")
    assert list(train_frame.columns) == ["id", "source", "problem", "answer", "metadata"]
    train = problems_from_frame(train_frame, out / "train.parquet")
    test = problems_from_frame(pd.read_parquet(out / "test.parquet"), out / "test.parquet")
    assert (len(train), len(test)) == (metrics["train"], metrics["test"])
    assert len(train) + len(test) + metrics["duplicates_removed"] == 200
    assert train[0].metadata["gold_steps"], "metadata survives the round trip"
    records = [
        processbench_from_dict(r, f"processbench.jsonl:{n}")
        for n, r in read_jsonl(out / "processbench.jsonl")
    ]
    assert len(records) == metrics["processbench"] == 40
    train_texts = {normalize_text(p.problem) for p in train}
    assert not train_texts & {normalize_text(p.problem) for p in test}
    assert all(normalize_text(r.problem) not in train_texts for r in records)


def test_main_is_reproducible(workdir: Path) -> None:
    overrides = ["prepare.num_problems=100", "prepare.processbench_size=20"]
    main(Path("params.yaml"), overrides)
    first = {name: (workdir / "out" / name).read_bytes() for name in ("train.parquet", "processbench.jsonl")}
    main(Path("params.yaml"), overrides)
    assert first == {name: (workdir / "out" / name).read_bytes() for name in first}


@pytest.mark.shared_data
@pytest.mark.parametrize("stem", sorted(SHARED_ROWS))
def test_main_on_shared_file(workdir: Path, shared_file: Callable[[str], Path], stem: str) -> None:
    path = shared_file(stem)
    overrides = ["prepare.source=file", f"prepare.file.path={path}", "prepare.processbench_size=10"]
    metrics = main(Path("params.yaml"), overrides)
    assert metrics["loaded"] == SHARED_ROWS[stem]
    unique = metrics["loaded"] - metrics["duplicates_removed"]
    assert metrics["train"] + metrics["test"] == unique
    assert metrics["test"] == round(unique * 0.2)
    train = problems_from_frame(pd.read_parquet(workdir / "out" / "train.parquet"))
    test = problems_from_frame(pd.read_parquet(workdir / "out" / "test.parquet"))
    assert {p.source for p in train + test} == {stem}
    assert all(p.problem.strip() and p.answer.strip() for p in train + test)
    assert not {normalize_text(p.problem) for p in train} & {normalize_text(p.problem) for p in test}


# -------------------------------------------------------------------------------------- CLI: bad input


runner = CliRunner()


def _prepare(*overrides: str) -> Any:
    args = ["prepare", "--params", "params.yaml"]
    for item in overrides:
        args += ["--set", item]
    return runner.invoke(app, args)


def _assert_user_error(result: Any, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_cli_prepare_ok(workdir: Path) -> None:
    result = _prepare("prepare.num_problems=60", "prepare.processbench_size=10")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["loaded"] == 60
    assert (workdir / "out" / "train.parquet").exists()


@pytest.mark.parametrize("old_outputs", [False, True], ids=["fresh", "old-outputs"])
def test_cli_malformed_jsonl_line(workdir: Path, old_outputs: bool) -> None:
    good = {"problem": "1 + 1?", "answer": "2"}
    bad = _write_jsonl(workdir / "bad.jsonl", [good, {"problem": "2 + 2?", "answer": "4"}, "{not json"])
    out = workdir / "out"
    if old_outputs:
        out.mkdir()
        for name in ("train.parquet", "test.parquet", "processbench.jsonl"):
            (out / name).write_text(f"old {name}")
    before = _files(workdir)
    result = _prepare("prepare.source=file", f"prepare.file.path={bad}")
    _assert_user_error(result, f"{bad}:3", "malformed JSON")
    assert _files(workdir) == before, "no new or partial outputs"
    if old_outputs:
        assert (out / "train.parquet").read_text() == "old train.parquet", "earlier outputs untouched"
    else:
        assert not out.exists()
    assert not (workdir / "metrics").exists()


def test_cli_failure_keeps_earlier_good_outputs(workdir: Path) -> None:
    assert _prepare("prepare.num_problems=60", "prepare.processbench_size=10").exit_code == 0
    snapshot = {p: (workdir / p).read_bytes() for p in _files(workdir)}
    result = _prepare("prepare.source=file", "prepare.file.path=absent.jsonl")
    _assert_user_error(result, "absent.jsonl: file not found")
    assert {p: (workdir / p).read_bytes() for p in _files(workdir)} == snapshot


def test_cli_unknown_params_key(workdir: Path) -> None:
    _assert_user_error(_prepare("prepare.bogus=1"), "prepare: unknown key 'bogus'")
    _assert_user_error(_prepare("prepar.seed=1"), "unknown section 'prepar'")
    assert not (workdir / "out").exists()
    # A stage checks the sections it runs; a typo in another stage's section fails that stage and
    # `genprm params check` (which the Prefect flow runs first), naming the key.
    check = runner.invoke(
        app, ["params", "check", "--params", "params.yaml", "--set", "bootstrap.model.bogus=1"]
    )
    _assert_user_error(check, "bootstrap.model: unknown key 'bogus'")


def test_cli_missing_answer_field(workdir: Path) -> None:
    path = _write_jsonl(workdir / "p.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b"}])
    result = _prepare("prepare.source=file", f"prepare.file.path={path}")
    _assert_user_error(result, f"{path}:2: missing field 'answer'")
    assert not (workdir / "out").exists()


def test_cli_empty_answer(workdir: Path) -> None:
    path = _write_jsonl(
        workdir / "p.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b", "answer": " "}]
    )
    result = _prepare("prepare.source=file", f"prepare.file.path={path}")
    _assert_user_error(result, f"{path}:2: empty answer")
    assert not (workdir / "out").exists()


def test_cli_unreadable_parquet(workdir: Path) -> None:
    path = workdir / "broken.parquet"
    path.write_bytes(b"PAR1 but not really a parquet file")
    result = _prepare("prepare.source=file", f"prepare.file.path={path}")
    _assert_user_error(result, f"{path}: unreadable parquet")
    assert not (workdir / "out").exists()


def test_cli_bad_value_type(workdir: Path) -> None:
    _assert_user_error(_prepare("prepare.seed=abc"), "prepare.seed: expected int, got 'abc'")
    _assert_user_error(_prepare("prepare.test_fraction=2"), "prepare.test_fraction: must be in [0, 1]")
    _assert_user_error(_prepare("prepare.seed"), "expected section.key=value")


def test_cli_missing_params_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _assert_user_error(_prepare(), "params.yaml: params file not found")


def test_cli_params_check(repo_root: Path, workdir: Path) -> None:
    ok = runner.invoke(app, ["params", "check", "--params", str(repo_root / "params.yaml")])
    assert ok.exit_code == 0, ok.output
    assert "ok" in ok.stdout
    bad = workdir / "bad.yaml"
    bad.write_text((repo_root / "params.yaml").read_text().replace("  seed: 0\n", "  seed: 0\n  sed: 1\n", 1))
    result = runner.invoke(app, ["params", "check", "--params", str(bad)])
    _assert_user_error(result, "prepare: unknown key 'sed'")
    result = runner.invoke(app, ["params", "check", "--params", "params.yaml", "--set", "world.ops=[x]"])
    _assert_user_error(result, "world.ops[0]")


def test_cli_params_describe() -> None:
    result = runner.invoke(app, ["params", "describe"])
    assert result.exit_code == 0, result.output
    for key in ("world.min_ops", "prepare.source", "prepare.file.path", "bootstrap.train.steps"):
        assert key in result.stdout
    one = runner.invoke(app, ["params", "describe", "prepare"])
    assert one.exit_code == 0
    assert "prepare.seed" in one.stdout and "bootstrap.train.steps" not in one.stdout
    _assert_user_error(runner.invoke(app, ["params", "describe", "nope"]), "unknown section 'nope'")


@pytest.mark.slow
def test_real_subprocess_malformed_jsonl(repo_root: Path, workdir: Path) -> None:
    bad = _write_jsonl(workdir / "bad.jsonl", [{"problem": "a", "answer": "1"}, "[1, 2"])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.platform.cli",
            "prepare",
            "--set",
            "prepare.source=file",
            "--set",
            f"prepare.file.path={bad}",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}:2" in proc.stderr and "malformed JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not (workdir / "out").exists() and not (workdir / "metrics").exists()


def test_data_errors_name_file_and_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "x.jsonl", [{"problem": "a", "answer": "1"}, "3"])
    cfg = PrepareConfig(source="file", file=FileSourceConfig(path=str(path)))
    with pytest.raises(DataError, match=r"x\.jsonl:2: expected a JSON object, got int"):
        run(cfg, WORLD)


def test_cli_boxed_answers_from_solutions(workdir: Path, repo_root: Path) -> None:
    """`prepare.file.answer_format: boxed`: the gold answer is the last \\boxed{} of the solution."""
    fixture = repo_root / "tests" / "fixtures" / "boxed_solutions.jsonl"
    file_keys = [f"prepare.file.path={fixture}", "prepare.file.answer_field=solution"]
    result = _prepare("prepare.source=file", *file_keys, "prepare.file.answer_format=boxed")
    assert result.exit_code == 0, result.output
    frames = [pd.read_parquet(workdir / "out" / f"{name}.parquet") for name in ("train", "test")]
    answers = set(pd.concat(frames)["answer"])
    assert answers == {r"\frac{1}{2}", r"\left( 3, \frac{\pi}{2} \right)", "2", r"\text{(C)}"}


def test_cli_boxed_answer_missing_names_file_and_line(workdir: Path) -> None:
    rows = [{"problem": "a", "solution": r"so $\boxed{1}$"}, {"problem": "b", "solution": "no box: 2"}]
    path = _write_jsonl(workdir / "math_train.jsonl", rows)
    keys = [f"prepare.file.path={path}", "prepare.file.answer_field=solution"]
    result = _prepare("prepare.source=file", *keys, "prepare.file.answer_format=boxed")
    _assert_user_error(result, f"{path}:2: no complete \\boxed{{...}} in field 'solution'")
    assert not (workdir / "out").exists()


def test_cli_list_answers(workdir: Path, repo_root: Path) -> None:
    """OlympiadBench-style `final_answer: ["2"]`: the first element, no 'expected a string' at line 1."""
    fixture = repo_root / "tests" / "fixtures" / "list_answers.jsonl"
    keys = ["prepare.file.problem_field=question", "prepare.file.answer_field=final_answer"]
    result = _prepare("prepare.source=file", f"prepare.file.path={fixture}", *keys)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["loaded"] == 4
