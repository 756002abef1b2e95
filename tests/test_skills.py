"""Tests for components.world.skills: generic Python-and-arithmetic documents for the base model.

Every snippet is run with real Python and must print exactly the output the document shows; the numbers
in the code must be the ones in the text; the closing sentence must say what the output says; and no
document may hold anything of the critique format.
"""

from __future__ import annotations

import contextlib
import io
import random
import re
from collections import Counter

import pytest

from components.method.prompts import GENPRM_SYSTEM_PROMPT
from components.world.skills import SKILLS, SKILLS_SYSTEM_PROMPT, skill_document
from components.world.synthetic import SyntheticConfig, WorldProblem, generate_problems

SNIPPET = re.compile(r"```python\n(.*?)\n```\nOutput:\n```\n(.*?)\n```", re.DOTALL)
FORBIDDEN = ("<analyze>", "<verify>", "<output>", "Judgement", "\\boxed{Yes", "\\boxed{No", "[Code Output]")


@pytest.fixture(scope="module")
def documents() -> list[tuple[str, str, str]]:
    """(skill name, user text, answer) for many problems and every skill."""
    rng = random.Random(0)
    problems: list[WorldProblem] = generate_problems(SyntheticConfig(), 120, seed=9)
    return [(skill.__name__, *skill(p, rng)) for p in problems for skill in SKILLS]


def run_python(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})
    return out.getvalue().rstrip("\n")


def test_every_snippet_prints_what_the_document_shows(documents: list[tuple[str, str, str]]) -> None:
    shown = 0
    for _, user, answer in documents:
        for code, output in SNIPPET.findall(f"{user}\n{answer}"):
            assert run_python(code) == output, (code, output)
            shown += 1
    assert shown >= len(documents)


def test_claims_are_copied_exactly_and_the_reading_agrees(documents: list[tuple[str, str, str]]) -> None:
    verdicts: Counter = Counter()
    for name, user, answer in documents:
        if name not in ("claim", "read"):
            continue
        claim = re.search(r"(\d+ [-+*/] \d+) = (\d+)", user)
        assert claim is not None
        text = user if name == "read" else answer
        assert f"print({claim.group(1)} == {claim.group(2)})" in text, "the code holds the text's numbers"
        output = SNIPPET.search(text).group(2)  # type: ignore[union-attr]
        holds = output == "True"
        assert f"is {output}" in answer
        if name == "claim":
            assert ("does not hold" in answer) == (not holds)
        else:
            assert answer.endswith("is true.") == holds
        verdicts[holds] += 1
    assert verdicts[True] >= 50 and verdicts[False] >= 50, "claims are true and false about equally"


def test_numbers_are_copied_from_the_text(documents: list[tuple[str, str, str]]) -> None:
    for name, user, answer in documents:
        if name == "numbers":
            text = user.split("\n", 1)[1]
            listed = re.search(r"numbers = \[(.*)\]", answer).group(1)  # type: ignore[union-attr]
            assert [int(n) for n in listed.split(", ")] == [int(n) for n in re.findall(r"\d+", text)]


def test_no_document_holds_the_critique_format(documents: list[tuple[str, str, str]]) -> None:
    kinds = Counter(name for name, _, _ in documents)
    assert set(kinds) == {skill.__name__ for skill in SKILLS}
    for _, user, answer in documents:
        for text in (user, answer):
            assert not [f for f in FORBIDDEN if f in text], text
            assert "Paragraph" not in text and GENPRM_SYSTEM_PROMPT not in text
    messages, _ = skill_document(generate_problems(SyntheticConfig(), 1, seed=1)[0], random.Random(1))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SKILLS_SYSTEM_PROMPT
