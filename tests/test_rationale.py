"""The rationale format: writing it, parsing verdicts and code, the verdict probability, conversations."""

from __future__ import annotations

import math

import pytest

from components.backends.base import Sample, TokenLogprob
from components.method.prompts import GENPRM_SYSTEM_PROMPT
from components.method.rationale import (
    code_blocks,
    conversation,
    execution_text,
    format_turn,
    open_code,
    parse_verdict,
    verdict_probability,
)
from components.sandbox import ExecutionResult


def test_format_turn_is_the_papers_layout() -> None:
    turn = format_turn(2, "It claims 3 + 4 = 7.", [("print(3 + 4 == 7)", "True")], True)
    assert turn.startswith(
        "<analyze>\nLet's analyze the Paragraph 2 step by step: It claims 3 + 4 = 7.\n</analyze>"
    )
    assert (
        "<verify>\nLet's use python code to find any potential error:\n```python\nprint(3 + 4 == 7)\n```\n"
        in turn
    )
    assert "[Code Output]\n\n```\nTrue\n```\n</verify>" in turn
    assert turn.endswith("<output>\n**Judgement**: $\\boxed{Yes}$\n</output>")
    assert code_blocks(turn) == ["print(3 + 4 == 7)"]
    assert parse_verdict(turn) == 1
    assert parse_verdict(format_turn(1, "x", [("print(1)", "1")], False)) == 0


def test_verdict_inside_code_output_is_not_the_verdict() -> None:
    code = "```python\nprint('\\\\boxed{Yes}')\n```\n"
    text = "<verify>\n" + code + "[Code Output]\n\n```\n\\boxed{Yes}\n```\n</verify>"
    assert parse_verdict(text) is None
    assert parse_verdict(text + "<output>\n**Judgement**: $\\boxed{ No }$\n</output>") == 0
    assert parse_verdict("no verdict at all") is None


def test_open_code_finds_only_an_unclosed_block() -> None:
    assert open_code("<verify>\n```python\nx = 1\nprint(x)") == "x = 1\nprint(x)"
    assert open_code("```python\nx = 1\n```\n[Code Output]") is None
    assert open_code("just text") is None


@pytest.mark.parametrize(
    ("status", "stderr", "expected"),
    [
        ("ok", "", "42"),
        (
            "error",
            "Traceback...\nNameError: name 'y' is not defined\n",
            "42\nNameError: name 'y' is not defined",
        ),
        ("timeout", "", "42\nTimeoutError: the code ran past its time limit"),
        ("killed", "", "42\nKilled: the code exceeded a resource limit"),
    ],
)
def test_execution_text(status: str, stderr: str, expected: str) -> None:
    result = ExecutionResult(stdout="42\n", stderr=stderr, status=status, duration_s=0.1)  # type: ignore[arg-type]
    assert execution_text(result) == expected


def lp(p: float) -> float:
    return math.log(p)


def test_verdict_probability_reads_the_token_covering_the_verdict() -> None:
    tokens = [
        TokenLogprob("**Judgement**: $\\boxed{", lp(0.9), {}),
        TokenLogprob("Yes", lp(0.6), {"Yes": lp(0.6), "No": lp(0.3), "Maybe": lp(0.1)}),
        TokenLogprob("}$", lp(0.99), {}),
    ]
    sample = Sample("".join(t.token for t in tokens), "stop", 10, 3, tokens)
    assert verdict_probability(sample) == pytest.approx(0.6 / 0.9)


def test_verdict_probability_with_merged_tokens_and_without_logprobs() -> None:
    tokens = [
        TokenLogprob("$\\boxed", lp(0.9), {}),
        TokenLogprob("{No}", lp(0.7), {"{No}": lp(0.7), "{Yes}": lp(0.1)}),
    ]
    sample = Sample("$\\boxed{No}", "stop", 1, 2, tokens)
    assert verdict_probability(sample) == pytest.approx(0.1 / 0.8)
    assert verdict_probability(Sample("$\\boxed{No}", "stop", 1, 2, None)) is None
    assert verdict_probability(Sample("nothing", "stop", 1, 2, tokens)) is None


def test_conversation_layout() -> None:
    steps = ["a = 1", "b = 2", "c = 3"]
    msgs = conversation("Problem?", steps, ["T1"])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == GENPRM_SYSTEM_PROMPT
    assert msgs[1]["content"] == "Problem?\na = 1"
    assert msgs[3]["content"] == "b = 2"
    full = conversation("Problem?", steps, ["T1", "T2", "T3"])
    assert [m["role"] for m in full] == ["system"] + ["user", "assistant"] * 3
