"""The GenPRM-as-critic refinement: the paper's protocol, the turn loop, the stage's outputs and the
feedback conversations the small world's policy learns from."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest_backends import build_tiny_model

from components.backends.base import BackendConfig, make_backend
from components.data.records import Problem
from components.method.paths import SampledPath, given_path
from components.method.refine import (
    Flag,
    analysis_after_colon,
    feedback_text,
    first_flag,
    refine_conversation,
)
from components.method.refine_loop import LoopSettings, run_critic, summarize
from components.platform.errors import DataError
from components.stages.refine import gain_interval, read_solutions, refine_metrics
from components.world.feedback import analysis_of, feedback_example
from components.world.synthetic import SyntheticConfig, generate_problems, gold_steps

REPO = Path(__file__).resolve().parents[1]

TURN = (
    "<analyze>\nLet's analyze the Paragraph 2 step by step: The paragraph claims 3 + 4 = 8: wrong.\n"
    "</analyze>\n<verify>\n...\n</verify>\n<output>\n**Judgement**: $\\boxed{No}$\n</output>"
)


def test_feedback_turn_is_the_papers_word_for_word() -> None:
    flag = Flag(1, "Tom has 3 + 4 = 8 apples.", analysis_after_colon(TURN))
    assert flag.analysis == "The paragraph claims 3 + 4 = 8: wrong."  # after the FIRST colon only
    assert feedback_text(flag) == (
        "There might be some problem in this paragraph of your reasoning, please rethink and refine your "
        "answer:\n>Tom has 3 + 4 = 8 apples.\n\nThe paragraph claims 3 + 4 = 8: wrong."
    )
    assert feedback_text(Flag(0, "a", "")).endswith(">a"), "the direct critic gives no analysis"
    messages = refine_conversation("P?", ["a", "b"], flag)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == "Step 1: a\nStep 2: b" and messages[1]["content"] == "P?"
    assert analysis_after_colon("no tags here") == "" and analysis_after_colon("<analyze>x</analyze>") == ""


def test_first_flag_is_the_first_step_below_one_half() -> None:
    steps = ["s1", "s2", "s3"]
    assert first_flag([0.9, 0.5, 0.7], steps, None) is None, "0.5 (no verdict) is not below 0.5"
    flag = first_flag([0.9, 0.2, 0.1], steps, ["", TURN, ""])
    assert flag == Flag(1, "s2", "The paragraph claims 3 + 4 = 8: wrong.")


@dataclass
class Scored:
    values: list[float]
    critiques: list[str]

    def rewards(self) -> list[float]:
        return self.values


class ScriptedCritic:
    """A critic whose verdicts are given: it flags step 1 of every solution whose answer is wrong."""

    def __init__(self, gold: dict[str, str]) -> None:
        self.gold = gold
        self.calls: list[int] = []

    def score(self, solutions: list[tuple[str, list[str]]], samples: int, desc: str) -> list[Scored]:
        self.calls.append(len(solutions))
        out = []
        for problem, steps in solutions:
            wrong = given_path(steps, self.gold[problem]).correct is False
            out.append(Scored([0.1 if wrong else 0.9] + [0.9] * (len(steps) - 1), [TURN] * len(steps)))
        return out


def _problems(count: int) -> list[Problem]:
    return [
        Problem(id=f"p{i}", source="t", problem=f"What is {i} + 1?", answer=str(i + 1)) for i in range(count)
    ]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = build_tiny_model(tmp_path_factory.mktemp("policy") / "model")
    with make_backend(BackendConfig(backend="hf", model=str(path), batch_size=8)) as backend:
        yield backend


def test_loop_refines_flagged_solutions_and_keeps_accepted_ones(tiny_policy: Any) -> None:
    problems = _problems(4)
    initial = [given_path([f"{i} + 1 = {i + 1}. \\boxed{{{i + 1}}}"], str(i + 1)) for i in range(2)]
    initial += [given_path([f"{i} + 1 = 0. \\boxed{{0}}"], str(i + 1)) for i in range(2, 4)]
    critic = ScriptedCritic({p.problem: p.answer for p in problems})
    settings = LoopSettings(turns=2, max_tokens=8)
    rows = run_critic(tiny_policy, "genprm", critic, problems, initial, settings)
    assert len(rows) == 4 * 3 and [r["turn"] for r in rows[:4]] == [0, 0, 0, 0]
    turn1 = [r for r in rows if r["turn"] == 1]
    assert [r["flagged"] for r in turn1] == [False, False, True, True]
    assert [r["refined"] for r in turn1] == [False, False, True, True]
    assert turn1[2]["feedback"].startswith("There might be some problem") and turn1[2]["flagged_step"] == 0
    # The two accepted solutions are final: turn 2 critiques only what turn 1 refined.
    assert critic.calls[0] == 4 and critic.calls[1] <= 2
    assert all(not r["critiqued"] for r in rows if r["turn"] == 2 and r["problem_id"] in ("p0", "p1"))
    summary = summarize(rows, 2)
    assert summary["accuracy"]["turn_0"] == 50.0 and summary["critiques"] == 4 + critic.calls[1]
    flagged = sum(r["flagged"] for r in rows)
    assert summary["flag_rate"] == round(100 * flagged / summary["critiques"], 2) and flagged >= 2


def test_no_critic_resamples_every_solution(tiny_policy: Any) -> None:
    problems = _problems(3)
    initial = [given_path(["1 + 1 = 2. \\boxed{2}"], p.answer) for p in problems]
    rows = run_critic(tiny_policy, "none", None, problems, initial, LoopSettings(turns=1, max_tokens=8))
    assert all(r["refined"] and not r["flagged"] and not r["critiqued"] for r in rows if r["turn"] == 1)
    assert summarize(rows, 1)["flag_rate"] == 0.0


def _row(pid: str, turn: int, correct: bool, refined: bool = False) -> dict[str, Any]:
    return {"problem_id": pid, "turn": turn, "correct": correct, "flagged": refined, "critiqued": turn > 0,
            "refined": refined, "right_to_wrong": False, "wrong_to_right": refined and correct,
            "set": "synthetic", "critic": "genprm"}  # fmt: skip


def test_metrics_layout_and_gain_interval() -> None:
    rows = [_row(f"p{i}", 0, i < 1) for i in range(4)] + [
        _row(f"p{i}", 1, i < 3, refined=i in (1, 2)) for i in range(4)
    ]
    from components.stages.refine import RefineConfig

    cfg = RefineConfig(critics=["genprm"], turns=1)
    metrics = refine_metrics(rows, {"synthetic": _problems(4)}, cfg)
    assert metrics["accuracy"] == {"synthetic": {"genprm": {"turn_0": 25.0, "turn_1": 75.0}}}
    assert (
        metrics["gain"]["synthetic"]["genprm"] == 50.0
        and metrics["wrong_to_right"]["synthetic"]["genprm"] == 100.0
    )
    low, high = gain_interval(rows, 1)
    assert low < 50.0 < high


def test_read_solutions_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2", "steps": ["1 + 1 = 2. \\boxed{2}"]}) + "\n")
    problems, paths = read_solutions(path)
    assert problems[0].id == "mine-1" and paths[0].correct
    path.write_text(path.read_text() + json.dumps({"problem": "x", "steps": ["a"]}) + "\n")
    with pytest.raises(DataError, match=r"mine\.jsonl:2: missing field 'answer'"):
        read_solutions(path)
    path.write_text(json.dumps({"problem": "x", "answer": "1", "steps": "a"}) + "\n")
    with pytest.raises(DataError, match=r"mine\.jsonl:1: 'steps' must be a non-empty list"):
        read_solutions(path)


def test_feedback_conversations_revise_into_the_gold_solution() -> None:
    world = SyntheticConfig()
    rng = random.Random(0)
    examples = [feedback_example(p, rng, world) for p in generate_problems(world, 40, seed=3, prefix="c")]
    made = [e for e in examples if e is not None]
    assert len(made) >= 30
    for messages, revised in made:
        assert messages[-1]["role"] == "user" and messages[-1]["content"].startswith("There might be")
        assert revised.startswith("Step 1: ")
    wrong = [m for m, r in made if m[2]["content"] != r]
    assert wrong and len(wrong) < len(made), "both erroneous and right solutions get feedback"
    assert "claims" in analysis_of("Tom has 3 + 4 = 7 apples.") and "7" in analysis_of("3 + 4 = 7")
    assert gold_steps(generate_problems(world, 1, seed=3, prefix="c")[0])


@pytest.mark.slow
def test_refine_your_own_solutions_from_the_command_line(tmp_path: Path) -> None:
    policy = build_tiny_model(tmp_path / "policy")
    params = tmp_path / "params.yaml"
    params.write_text(
        "refine:\n"
        f"  policy: {{backend: hf, model: {policy}}}\n"
        f"  genprm: {{model: {{backend: hf, model: {policy}}}, max_tokens: 16, max_rounds: 1, threads: 1,"
        " sandbox: {workers: 1}}\n"
        "  turns: 1\n  max_tokens: 16\n"
    )
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"problem": "1+1?", "answer": "2", "steps": ["1 + 1 = 3. \\boxed{3}"]}) + "\n")
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "components.platform.cli", "refine", "--params", str(params), "--data",
               str(data), "--critic", "genprm", "--critic", "none", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "mine genprm: turn_0 0.0%" in proc.stdout and "mine none:" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["critic"], r["turn"]) for r in rows} == {
        ("genprm", 0),
        ("genprm", 1),
        ("none", 0),
        ("none", 1),
    }
    bad = subprocess.run(
        [*command[:-2], "--data", str(tmp_path / "nope.jsonl")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "nope.jsonl" in bad.stderr


def test_sampled_path_round_trips_through_the_journal() -> None:
    from dataclasses import asdict

    path = given_path(["2 + 2 = 4. \\boxed{4}"], "4")
    assert SampledPath(**json.loads(json.dumps(asdict(path)))) == path
