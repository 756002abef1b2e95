"""Tests for the data quality checks (components/data/quality.py) with real Great Expectations.

Clean fixtures of every hand-off pass; each corrupted fixture (one per expectation family) fails with
the right expectation (type and column) and its offending row named in the DataError; warnings do
not stop a stage; validation results and the Data Docs site are written under ``reports_dir``; the
prepare stage checks its outputs before it writes them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from components.data.quality import QualityConfig, check
from components.data.quality_turns import final_verdict, verify_counts
from components.method.prompts import GENPRM_SYSTEM_PROMPT
from components.platform.errors import ConfigError, DataError
from components.platform.params import load_params

TEST_PROBLEM = "A tank holds 9 liters. Ada adds 2 liters. How many liters are in the tank?"
PB_PROBLEM = "Bo has 4 apples and eats 1. How many apples are left?"


def problem(i: int) -> str:
    return f"Cy has {i} coins and finds {i + 1} more. How many coins does Cy have now?"


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> QualityConfig:
    """Bounds of 1..6 steps; test sets: one test split problem and one ProcessBench problem."""
    root = tmp_path_factory.mktemp("quality")
    pd.DataFrame([{"id": "t0", "problem": TEST_PROBLEM}]).to_parquet(root / "test.parquet")
    (root / "processbench.jsonl").write_text(json.dumps({"id": "pb0", "problem": PB_PROBLEM}) + "\n")
    return QualityConfig(
        reports_dir=str(root / "reports"),
        max_steps=6,
        kept_rate_min=0.2,
        data_docs=False,  # built once, in test_reports_and_data_docs: 0.3 s a check
        test_sets=[str(root / "test.parquet"), str(root / "processbench.jsonl")],
    )


def problems_frame() -> pd.DataFrame:
    rows = [
        {
            "id": f"p{i}",
            "source": "synthetic",
            "problem": problem(i),
            "answer": str(2 * i + 1),
            "metadata": "{}",
        }
        for i in range(3)
    ]
    return pd.DataFrame(rows)


def rollouts_frame() -> pd.DataFrame:
    rows = []
    for i in range(3):
        for j, correct in enumerate((True, False)):
            steps = [f"{i} + {i + 1} = {2 * i + 1}.", f"The answer is \\boxed{{{2 * i + 1 + j}}}."]
            rows.append({
                "problem_index": i, "problem_id": f"p{i}", "problem": problem(i),
                "gold_answer": str(2 * i + 1), "path_id": f"p{i}/{j}", "round": 0,
                "text": "\n".join(steps), "steps": steps, "num_steps": 2,
                "answer": str(2 * i + 1 + j), "correct": correct, "valid": True, "finish_reason": "stop",
                "num_prompt_tokens": 30, "num_generated_tokens": 20, "kept": True, "problem_status": "kept",
                "pass_rate": 0.5,
            })  # fmt: skip
    return pd.DataFrame(rows)


def labels_frame() -> pd.DataFrame:
    frame = rollouts_frame()[["path_id", "problem_id", "problem", "gold_answer", "steps", "correct"]].copy()
    frame["mc0"] = 0.5
    frame["k"] = 8
    frame["mc"] = [[0.75, 1.0 - 0.5 * (i % 2)] for i in range(len(frame))]
    frame["rpe_labels"] = [[1, 1 - i % 2] for i in range(len(frame))]
    frame["hard_labels"] = frame["rpe_labels"]
    frame["completions"] = 16
    frame["tokens_generated"] = 300
    frame["no_answer_count"] = 0
    return frame


def turn(claim: int, verdict: bool, code: bool = True, output: bool = True) -> str:
    """A rationale turn in the paper's format: analyze, verify (code, [Code Output]), output."""
    block = f"```python\nprint({claim} == {claim})\n```\n" if code else "The claim looks right.\n"
    ran = "[Code Output]\n\n```\nTrue\n```\n" if code and output else ""
    word = "Yes" if verdict else "No"
    return (
        f"<analyze>\nLet's analyze the Paragraph: it claims {claim}.\n</analyze>\n"
        f"<verify>\nLet's use python code to find any potential error:\n{block}{ran}</verify>\n"
        f"<output>\n**Judgement**: $\\boxed{{{word}}}$\n</output>"
    )


def direct_turn(verdict: bool) -> str:
    return f"<output>\n**Judgement**: $\\boxed{{{'Yes' if verdict else 'No'}}}$\n</output>"


def rationales_frame() -> pd.DataFrame:
    frame = labels_frame()[["path_id", "problem_id", "problem", "gold_answer", "steps", "correct"]].copy()
    labels = [[1, 1 - i % 2] for i in range(len(frame))]
    frame["rpe_labels"] = labels
    frame["hard_labels"] = labels
    frame["labels"] = labels
    frame["verdicts"] = labels
    frame["turns"] = [[turn(i, bool(v)) for v in row] for i, row in enumerate(labels)]
    frame["rounds"] = [[1, 1] for _ in labels]
    frame["code_runs"] = 2
    frame["code_errors"] = 0
    frame["code_timeouts"] = 0
    frame["parse_failed"] = False
    frame["kept"] = [True] * (len(frame) - 1) + [False]
    frame["consensus"] = True
    frame["teacher"] = "program"
    return frame


def sft_records(direct: bool = False) -> list[dict[str, Any]]:
    records = []
    for i, row in enumerate(rationales_frame().itertuples()):
        messages = [{"role": "system", "content": GENPRM_SYSTEM_PROMPT}]
        for k, (step, label) in enumerate(zip(row.steps, row.rpe_labels, strict=True)):
            messages.append({"role": "user", "content": f"{row.problem}\n{step}" if k == 0 else step})
            messages.append(
                {"role": "assistant", "content": direct_turn(bool(label)) if direct else turn(i, bool(label))}
            )
        records.append(
            {
                "id": row.path_id,
                "problem_id": row.problem_id,
                "labels": list(row.rpe_labels),
                "messages": messages,
            }
        )
    return records  # fmt: skip


def processbench_frame() -> pd.DataFrame:
    rows = [
        {"id": "pb0", "generator": "g", "problem": PB_PROBLEM, "steps": ["4 - 1 = 3.", "\\boxed{3}"],
         "final_answer_correct": True, "label": -1, "answer": "3"},
        {"id": "pb1", "generator": "g", "problem": TEST_PROBLEM, "steps": ["9 + 2 = 12.", "\\boxed{12}"],
         "final_answer_correct": False, "label": 0, "answer": "11"},
    ]  # fmt: skip
    return pd.DataFrame(rows)


CLEAN = {
    "problems": problems_frame,
    "rollouts": rollouts_frame,
    "labels": labels_frame,
    "rationales": rationales_frame,
    "sft": lambda: pd.DataFrame(sft_records()),
    "sft_direct": lambda: pd.DataFrame(sft_records(direct=True)),
    "processbench": processbench_frame,
}


def failure(handoff: str, frame: pd.DataFrame, cfg: QualityConfig) -> str:
    with pytest.raises(DataError) as info:
        check(handoff, frame, cfg, source=f"data/{handoff}.parquet")
    return str(info.value)


# ------------------------------------------------------------------------------------------------ clean


@pytest.mark.parametrize("handoff", sorted(CLEAN))
def test_clean_fixtures_pass(handoff: str, cfg: QualityConfig) -> None:
    summary = check(handoff, CLEAN[handoff](), cfg, source=f"data/{handoff}.parquet")
    assert summary["failed"] == {"critical": 0, "warning": 0}
    assert summary["evaluated"]["critical"] >= 10 and summary["skipped"] == 0


def test_processbench_labels_are_a_test_artifact(cfg: QualityConfig) -> None:
    frame = labels_frame()
    frame["problem"] = TEST_PROBLEM
    frame["label"] = [-1, 1] * 3
    summary = check("processbench_labels", frame, cfg, source="data/label/processbench_labels.parquet")
    assert summary["failed"]["critical"] == 0, "test problems are expected in the test artifact"
    assert "expect_column_values_to_be_null(column=test_problem)" in failure(
        "labels", frame.drop(columns="label"), cfg
    )


def test_reports_and_data_docs(cfg: QualityConfig) -> None:
    cfg = dataclasses.replace(cfg, data_docs=True)
    check("labels", labels_frame(), cfg, source="data/label/labels.parquet")
    started = time.perf_counter()
    check("labels", labels_frame(), cfg, source="data/label/labels.parquet")
    seconds = time.perf_counter() - started
    reports = Path(cfg.reports_dir)
    report = json.loads((reports / "labels.json").read_text())
    assert report["summary"]["handoff"] == "labels" and set(report["results"]) == {"rows", "steps"}
    assert report["results"]["steps"]["success"] is True
    index = (reports / "data_docs" / "index.html").read_text()
    assert "labels.rows" in index and "labels.steps" in index
    pages = list((reports / "data_docs" / "validations" / "labels").rglob("*.html"))
    assert len(pages) == 2, "only the latest validation of each suite is kept"
    assert seconds < 10, f"one check (GE already imported) took {seconds:.1f} s"


# ------------------------------------------------------------------------------------------ corrupted


def corrupt(frame: pd.DataFrame, row: int, column: str, value: Any) -> pd.DataFrame:
    frame = frame.copy()
    frame[column] = frame[column].astype(object)
    frame.at[row, column] = value
    return frame


def too_many_steps(frame: pd.DataFrame) -> pd.DataFrame:
    for column, value in (("steps", "a step."), ("mc", 1.0), ("rpe_labels", 1), ("hard_labels", 1)):
        frame = corrupt(frame, 1, column, [value] * 7)
    return frame


def kept_disagreement(frame: pd.DataFrame) -> pd.DataFrame:
    """A kept path whose teacher said Yes (consistently in turns and verdicts) where RPE says No."""
    return corrupt(corrupt(frame, 1, "verdicts", [1, 1]), 1, "turns", [turn(1, True)] * 2)


PAIR = "expect_column_pair_values_to_be_equal"
CASES: list[tuple[str, str, Any, str, str]] = [
    # (case, hand-off, corruption, expectation named, offending row named)
    ("missing column", "rollouts", lambda f: f.drop(columns="problem"),
     "expect_column_to_exist(column=problem)", ""),
    ("null problem", "problems", lambda f: corrupt(f, 1, "problem", None),
     "expect_column_values_to_not_be_null(column=problem)", "id='p1'"),
    ("wrong type", "rollouts", lambda f: corrupt(f, 2, "finish_reason", 3),
     "expect_column_values_to_be_of_type(column=finish_reason)", "path_id='p1/0': finish_reason=3"),
    ("duplicate id", "labels", lambda f: corrupt(f, 3, "path_id", "p0/0"),
     "expect_column_values_to_be_unique(column=path_id)", "path_id='p0/0'"),
    ("label 2", "labels", lambda f: corrupt(f, 4, "rpe_labels", [1, 2]),
     "expect_column_values_to_be_in_set(column=rpe_labels)", "path_id='p2/0', step=1: rpe_labels=2"),
    ("mc 1.5", "labels", lambda f: corrupt(f, 0, "mc", [1.5, 1.0]),
     "expect_column_values_to_be_between(column=mc)", "path_id='p0/0', step=0: mc=1.5"),
    ("too many steps", "labels", too_many_steps,
     "expect_column_values_to_be_between(column=num_steps)", "path_id='p0/1': num_steps=7"),
    ("mismatched list lengths", "labels", lambda f: corrupt(f, 2, "mc", [0.5]),
     f"{PAIR}(column_A=mc_len, column_B=num_steps)", "path_id='p1/0': mc_len=1, num_steps=2"),
    ("kept rate out of bounds", "rationales", lambda f: f.assign(kept=[True] + [False] * 5),
     "expect_column_mean_to_be_between(column=kept)", "observed 0.166"),
    ("verdict disagrees with RPE on a kept path", "rationales", kept_disagreement,
     f"{PAIR}(column_A=filtered_verdicts, column_B=kept_labels)", "path_id='p0/1', step=1"),
    ("rationale without code", "rationales", lambda f: corrupt(f, 0, "turns", [turn(0, True, False)] * 2),
     "expect_column_values_to_be_between(column=python_blocks)", "path_id='p0/0', step=0"),
    ("test problem leaked into rollouts", "rollouts", lambda f: corrupt(f, 5, "problem", f" {TEST_PROBLEM}"),
     "expect_column_values_to_be_null(column=test_problem)", "path_id='p2/1': test_problem='a tank"),
    ("ProcessBench problem leaked into problems", "problems", lambda f: corrupt(f, 0, "problem", PB_PROBLEM),
     "expect_column_values_to_be_null(column=test_problem)", "id='p0'"),
    ("first error past the last step", "processbench", lambda f: corrupt(f, 1, "label", 2),
     "expect_column_pair_values_a_to_be_greater_than_b(column_A=num_steps, column_B=label)", "id='pb1'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "handoff", "mutate", "expectation", "row"), CASES, ids=[c[0] for c in CASES]
)
def test_corrupted_fixture_fails_the_right_expectation(
    case: str, handoff: str, mutate: Any, expectation: str, row: str, cfg: QualityConfig
) -> None:
    message = failure(handoff, mutate(CLEAN[handoff]()), cfg)
    assert f"hand-off '{handoff}' (data/{handoff}.parquet)" in message
    lines = message.splitlines()[1:]
    assert len(lines) == 1 and expectation in lines[0], f"{case}: {message}"
    assert row in lines[0], f"{case}: offending row not named: {message}"


def sft_with(direct: bool, index: int, change: Any) -> pd.DataFrame:
    records = sft_records(direct)
    change(records[index])
    return pd.DataFrame(records)


def set_turn(position: int, content: str) -> Any:
    return lambda rec: rec["messages"][position].update(content=content)


SFT_CASES: list[tuple[str, bool, Any, str, str]] = [
    ("verify block without code", False, set_turn(2, turn(0, True, code=False)),
     "expect_column_values_to_be_between(column=python_blocks)", "id='p0/0', step=0: python_blocks=0"),
    ("code without [Code Output]", False, set_turn(4, turn(0, True, output=False)),
     f"{PAIR}(column_A=code_outputs, column_B=python_blocks)", "id='p0/0', step=1: code_outputs=0"),
    ("broken turn order", False, lambda r: r["messages"].insert(2, r["messages"].pop(1)),
     "expect_column_values_to_match_regex(column=roles)", "id='p0/0'"),
    ("verdict not matching labels", False, set_turn(4, turn(0, False)),
     f"{PAIR}(column_A=turn_verdict, column_B=labels)", "id='p0/0', step=1: turn_verdict=0, labels=1"),
    ("a pair missing", False, lambda r: r["messages"].__delitem__(slice(3, 5)),
     f"{PAIR}(column_A=user_turns, column_B=num_steps)", "id='p0/0': user_turns=1, num_steps=2"),
    ("test problem leaked into sft", False, set_turn(1, f"{TEST_PROBLEM}\n9 + 2 = 11."),
     "expect_column_values_to_be_null(column=test_problem)", "id='p0/0'"),
    ("rationale in a direct record", True, set_turn(2, turn(0, True)),
     "expect_column_values_to_match_regex(column=assistant)", "id='p0/0', step=0"),
    ("label 2 in a direct record", True, lambda r: r.update(labels=[1, 2]),
     "expect_column_values_to_be_in_set(column=labels)", "id='p0/0', step=1: labels=2"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "direct", "change", "expectation", "row"), SFT_CASES, ids=[c[0] for c in SFT_CASES]
)
def test_corrupted_sft_record_fails_the_right_expectation(
    case: str, direct: bool, change: Any, expectation: str, row: str, cfg: QualityConfig
) -> None:
    handoff = "sft_direct" if direct else "sft"
    message = failure(handoff, sft_with(direct, 0, change), cfg)
    assert expectation in message and row in message, f"{case}: {message}"


def test_at_most_five_rows_are_named(cfg: QualityConfig) -> None:
    frame = pd.concat([labels_frame()] * 3, ignore_index=True)  # every path id three times
    message = failure("labels", frame, cfg)
    line = next(ln for ln in message.splitlines() if "to_be_unique(column=path_id)" in ln)
    assert "18 of 18 rows unexpected" in line and line.count("path_id=") == 5


def test_warning_does_not_stop(cfg: QualityConfig) -> None:
    frame = processbench_frame()
    frame.at[0, "steps"] = ["a step."] * 9  # longer than max_steps: a warning on a test set
    summary = check("processbench", frame, cfg, source="data/prepared/processbench.jsonl")
    assert summary["failed"] == {"critical": 0, "warning": 1}


# ----------------------------------------------------------------------------------- helpers and config


def test_verify_counts_and_final_verdict() -> None:
    assert verify_counts(turn(1, True)) == (1, 1)
    assert verify_counts(turn(1, True, output=False)) == (1, 0)
    assert verify_counts(turn(1, True, code=False)) == (0, 0)
    two = turn(1, True).replace(
        "</verify>", "```python\nprint(2)\n```\n[Code Output]\n\n```\n2\n```\n</verify>"
    )
    assert verify_counts(two) == (2, 2)
    assert (final_verdict(turn(1, True)), final_verdict(direct_turn(False))) == (1, 0)
    assert final_verdict(turn(1, True) + "\nBut wait, more text.") is None


def test_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"quality\.max_steps"):
        QualityConfig(min_steps=5, max_steps=2)
    with pytest.raises(ConfigError, match=r"quality\.kept_rate_min"):
        QualityConfig(kept_rate_min=1.5)
    params = tmp_path / "params.yaml"
    params.write_text("quality:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match=r"quality\.max_steps"):
        load_params(params)


def test_disabled_checks_nothing(cfg: QualityConfig) -> None:
    off = QualityConfig(reports_dir=cfg.reports_dir, enabled=False)
    assert check("labels", pd.DataFrame({"x": [1]}), off, source="x") == {"enabled": False}


@pytest.mark.slow
def test_prepare_reports_its_checks(repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from components.stages.prepare import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((repo_root / "params.yaml").read_text())
    metrics = main(Path("params.yaml"), ["prepare.num_problems=60", "prepare.processbench_size=10"])
    assert {k: v["failed"]["critical"] for k, v in metrics["quality"].items()} == {
        "train": 0, "test": 0, "processbench": 0,
    }  # fmt: skip
    reports = tmp_path / "reports" / "quality"
    assert {p.name for p in reports.glob("*.json")} == {
        "problems_train.json",
        "problems_test.json",
        "processbench.json",
    }
    assert (reports / "data_docs" / "index.html").exists()


def test_rollout_merge_checks_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard holding a test problem: the merge fails with the leak named and writes no table."""
    from components.data.journal import ShardSpec
    from components.data.records import Problem, problems_to_frame
    from components.platform.params import load_params
    from components.stages.rollout import main, sharded, stage_fingerprint

    monkeypatch.chdir(tmp_path)
    frame = rollouts_frame()
    pd.DataFrame([{"id": "t0", "problem": TEST_PROBLEM}]).to_parquet(tmp_path / "test.parquet")
    inputs = [Problem(f"p{i}", "t", problem(i), str(2 * i + 1)) for i in range(3)]
    problems_to_frame(inputs).to_parquet(tmp_path / "train.parquet")
    params = (
        "rollout:\n  shard: merge\n  threads: 0\n  output_dir: .\n  input: train.parquet\n"
        "quality:\n  test_sets: [test.parquet]\n"
    )
    (tmp_path / "params.yaml").write_text(params)
    cfg = load_params(Path("params.yaml"), [], ["rollout"])["rollout"]
    fp = stage_fingerprint(cfg)
    sharded(cfg).write_shard(ShardSpec(0, 2), fp, {"rollouts": frame.iloc[[0, 1, 4, 5]]}, ["p0", "p2"], {})
    leaked = corrupt(frame.iloc[2:4], 3, "problem", TEST_PROBLEM)  # p1/1
    sharded(cfg).write_shard(ShardSpec(1, 2), fp, {"rollouts": leaked}, ["p1"], {})
    with pytest.raises(DataError, match=r"expect_column_values_to_be_null\(column=test_problem\).*p1/1"):
        main(Path("params.yaml"), [])
    assert not (tmp_path / "rollouts.parquet").exists()
    assert not main(Path("params.yaml"), ["quality.test_sets=[]"])["quality"]["failed"]["critical"]
    assert (tmp_path / "rollouts.parquet").exists()
