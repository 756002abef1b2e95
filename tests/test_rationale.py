"""The rationale format: writing it, parsing verdicts and code, the verdict probability, conversations."""

from __future__ import annotations

import math

import pytest

from components.backends.base import Sample, TokenLogprob
from components.method.prompts import GENPRM_SYSTEM_PROMPT
from components.method.rationale import (
    code_blocks,
    code_output_block,
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
    no_verdict = [TokenLogprob("nothing", lp(0.9), {"nothing": lp(0.9), "No": lp(0.05)})]
    assert verdict_probability(Sample("nothing", "stop", 1, 1, no_verdict)) is None


def test_a_fence_and_verdict_printed_by_the_code_are_not_the_verdict() -> None:
    # The code prints a closing fence, then a verdict: its output must not close the block early.
    printed = "```\n\\boxed{Yes}"
    turn = format_turn(1, "x", [("print('```'); print('\\\\boxed{Yes}')", printed)], None)
    assert "\\boxed{Yes}" in turn and parse_verdict(turn) is None
    assert parse_verdict(turn + "\n" + "<output>\n**Judgement**: $\\boxed{No}$\n</output>") == 0
    block = code_output_block(printed)
    assert block.count("```") == 2  # only the block's own fences


def test_not_none_now_are_not_no() -> None:
    tokens = [
        TokenLogprob("$\\boxed{", lp(0.9), {}),
        TokenLogprob(
            "Yes", lp(0.5), {"Yes": lp(0.5), "Not": lp(0.2), "None": lp(0.1), "Now": lp(0.1), "No": lp(0.05)}
        ),
        TokenLogprob("}$", lp(0.99), {}),
    ]
    sample = Sample("".join(t.token for t in tokens), "stop", 1, 3, tokens)
    assert verdict_probability(sample) == pytest.approx(0.5 / 0.55)
    # Alternatives continuing the same text: "{No}" and " No" are No, "{Nothing" is not.
    merged = [
        TokenLogprob("$\\boxed", lp(0.9), {}),
        TokenLogprob(
            "{Yes", lp(0.6), {"{Yes": lp(0.6), "{Nothing": lp(0.2), "{No}": lp(0.1), "{Ye": lp(0.1)}
        ),
    ]
    assert verdict_probability(Sample("$\\boxed{Yes", "length", 1, 2, merged)) == pytest.approx(0.6 / 0.7)


def test_a_side_missing_from_the_top_k_gets_the_smallest_top_k_probability() -> None:
    tokens = [
        TokenLogprob("\\boxed{", lp(0.9), {}),
        TokenLogprob("Yes", lp(0.9), {"Yes": lp(0.9), "Maybe": lp(0.06), "Perhaps": lp(0.04)}),
    ]
    assert verdict_probability(Sample("\\boxed{Yes", "stop", 1, 2, tokens)) == pytest.approx(0.9 / 0.94)
    only = [TokenLogprob("\\boxed{", lp(0.9), {}), TokenLogprob("No", lp(0.8), {})]  # top-0: the token only
    assert verdict_probability(Sample("\\boxed{No", "stop", 1, 2, only)) == 0.0


def test_the_verdict_is_found_in_the_token_texts_not_at_a_text_offset() -> None:
    # A character split over byte tokens: the text has one replacement character per byte, the tokens
    # have none (vLLM's completions API) - offsets into the text would miss the verdict token.
    tokens = [
        TokenLogprob("caf", lp(0.9), {}),
        TokenLogprob("", lp(0.9), {}),
        TokenLogprob("é ok. $\\boxed{", lp(0.9), {}),
        TokenLogprob("No", lp(0.7), {"No": lp(0.7), "Yes": lp(0.2)}),
        TokenLogprob("}$", lp(0.9), {}),
    ]
    text = "caf" + "\ufffd" * 4 + " ok. $\\boxed{No}$"  # 4 bytes shown, where the tokens hold 1 char
    assert verdict_probability(Sample(text, "stop", 1, 5, tokens)) == pytest.approx(0.2 / 0.9)


def test_verdict_probability_after_a_prefill() -> None:
    # The forced verdict round: the prefill ends in \boxed, the model writes "{Yes}$".
    tokens = [
        TokenLogprob("{Yes", lp(0.8), {"{Yes": lp(0.8), "{No": lp(0.2)}),
        TokenLogprob("}$", lp(0.9), {}),
    ]
    sample = Sample("{Yes}$", "stop", 1, 2, tokens)
    assert verdict_probability(sample) is None  # alone, "{Yes}" is no \boxed verdict
    assert verdict_probability(sample, "<output>\n**Judgement**: $\\boxed") == pytest.approx(0.8)


def test_conversation_layout() -> None:
    steps = ["a = 1", "b = 2", "c = 3"]
    msgs = conversation("Problem?", steps, ["T1"])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == GENPRM_SYSTEM_PROMPT
    assert msgs[1]["content"] == "Problem?\na = 1"
    assert msgs[3]["content"] == "b = 2"
    full = conversation("Problem?", steps, ["T1", "T2", "T3"])
    assert [m["role"] for m in full] == ["system"] + ["user", "assistant"] * 3
