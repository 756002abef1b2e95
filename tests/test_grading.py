"""Tests for components.method.grading: answer extraction, gold normalization, equivalence (threads,
processes)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from components.method.grading import extract_answer, is_equivalent, normalize_gold

# (unique_id, expected gold answer as stored, an equivalent rewrite a model might produce)
EQUIVALENT = [
    ("test/precalculus/807.json", r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)"),
    ("test/intermediate_algebra/1994.json", "p - q", "-q + p"),
    ("test/algebra/2584.json", r"\frac{14}{3}", r"\dfrac{14}{3}"),
    ("test/algebra/1349.json", r"\text{Evelyn}", "Evelyn"),
    ("test/precalculus/927.json", r"90^\circ", "90"),
    ("test/algebra/2036.json", r"3\sqrt{13}", r"\sqrt{117}"),
    ("test/intermediate_algebra/1197.json", r"\frac{3}{56}", "3/56"),
    ("test/precalculus/990.json", "6 - 5i", "-5i + 6"),
    ("test/algebra/2193.json", "x=5", "5"),
    ("test/intermediate_algebra/1388.json", "1,-2", "-2, 1"),
    ("test/prealgebra/1302.json", r"11\sqrt2", r"\boxed{11\sqrt{2}}"),
    ("test/algebra/1072.json", r"\frac{243}{625}", "0.3888"),
    ("test/intermediate_algebra/428.json", "3, 5, 7", "7, 5, 3"),
    ("test/prealgebra/1558.json", "1.25", r"\frac{5}{4}"),
    ("test/algebra/1265.json", r"\frac{3}{2}", "1.5"),
    ("test/intermediate_algebra/1217.json", "x^5 - x^4 + x^3 - x^2 + x - 1", "-1+x-x^2+x^3-x^4+x^5"),
    ("test/precalculus/1105.json", r"-\frac{\pi}{6}", r"-\pi/6"),
    ("test/prealgebra/572.json", "0.15", r"\frac{3}{20}"),
    ("test/precalculus/819.json", r"\text{(C)}", "C"),
    ("test/algebra/101.json", r"x \in [-2,7]", "[-2, 7]"),
    ("test/algebra/2043.json", r"(-\infty, 2) \cup (3, \infty)", r"(-\infty,2)\cup(3,\infty)"),
    ("test/number_theory/1032.json", "2220", "2,220"),
]

# (unique_id of the gold record, unique_id of a record whose answer really differs)
DIFFERENT = [
    ("test/algebra/2584.json", "test/intermediate_algebra/1197.json"),  # 14/3 vs 3/56
    ("test/prealgebra/1558.json", "test/algebra/1265.json"),  # 1.25 vs 3/2
    ("test/precalculus/990.json", "test/precalculus/779.json"),  # 6-5i vs -2+7i
    ("test/intermediate_algebra/1388.json", "test/intermediate_algebra/428.json"),  # 1,-2 vs 3,5,7
    ("test/intermediate_algebra/956.json", "test/intermediate_algebra/47.json"),  # (6,31,-1) vs (-2,1)
    ("test/precalculus/1105.json", "test/precalculus/807.json"),  # -pi/6 vs (3, pi/2)
    ("test/algebra/2036.json", "test/prealgebra/1302.json"),  # 3 sqrt 13 vs 11 sqrt 2
    ("test/algebra/2046.json", "test/intermediate_algebra/1217.json"),  # two polynomials
    ("test/algebra/1349.json", "test/prealgebra/105.json"),  # Evelyn vs east
    ("test/number_theory/1032.json", "test/intermediate_algebra/607.json"),  # 2220 vs 13535
    ("test/intermediate_algebra/134.json", "test/algebra/2193.json"),  # -50 vs x=5
    ("test/prealgebra/572.json", "test/algebra/1072.json"),  # 0.15 vs 243/625
    ("test/precalculus/1146.json", "test/algebra/2253.json"),  # 35/64 vs 3 sqrt3 / 4
    ("test/precalculus/24313.json", "test/intermediate_algebra/1994.json"),  # cot x vs p - q
    ("test/precalculus/695.json", "test/algebra/2043.json"),  # two intervals
    ("test/precalculus/819.json", "test/prealgebra/1003.json"),  # (C) vs 270/7 degrees
    ("test/prealgebra/1044.json", "test/precalculus/927.json"),  # 5.4 cents vs 90 degrees
]


@pytest.fixture(scope="module")
def math500(shared_file: Callable[[str], Path]) -> dict[str, str]:
    """unique_id -> normalized gold answer, read from the shared MATH-500 file."""
    answers = {}
    with shared_file("math500").open(encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            answers[record["unique_id"]] = normalize_gold(record["answer"], "latex")
    return answers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"So $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{\frac{a^{2}}{\sqrt{b_{1}}}}", r"\frac{a^{2}}{\sqrt{b_{1}}}"),
        (r"First \boxed{3}, then correcting: \boxed{4}.", "4"),
        (r"\boxed{\boxed{5}}", "5"),
        (r"\fbox{7}", "7"),
        (r"Step 1: \boxed{3} Step 2: \boxed{4", "3"),
        ("She makes 9 * 2 = $18.\n#### 1,018", "1018"),
        ("so the total is 12. The answer is $42$.", "42"),
        ("Thus the final answer is 3.5.", "3.5"),
        ("The answer is: 7. Next we check it.", "7"),
        ("no final answer here", None),
        (r"put your answer in \boxed{}", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("raw", "fmt", "expected"),
    [
        ("Janet sells 9 eggs.\n#### 18", "gsm8k", "18"),
        ("x\n#### 70,000", "gsm8k", "70000"),
        ("x\n#### -5", "auto", "-5"),
        (27.0, "float", "27"),
        (0.5, "float", "0.5"),
        ("27.0", "float", "27"),
        (3159.0, "auto", "3159"),
        ("$\\frac{14}{3}$", "latex", r"\frac{14}{3}"),
        (r" \text{(C)} ", "latex", r"\text{(C)}"),
        (r"\boxed{p - q}", "latex", "p - q"),
        ("204", "plain", "204"),
        (113, "plain", "113"),
    ],
)
def test_normalize_gold(raw: object, fmt: str, expected: str) -> None:
    assert normalize_gold(raw, fmt) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "fmt"),
    [
        ("no marker", "gsm8k"),
        ("x\n#### eighteen", "gsm8k"),
        ("abc", "float"),
        (float("nan"), "float"),
        (True, "float"),
        ("  $ $ ", "latex"),
        (None, "auto"),
        (["1"], "latex"),
    ],
)
def test_normalize_gold_rejects(raw: object, fmt: str) -> None:
    with pytest.raises(ValueError):
        normalize_gold(raw, fmt)  # type: ignore[arg-type]


def test_equivalence_basics() -> None:
    assert is_equivalent("18", "18")
    assert is_equivalent(r"\frac{1}{2}", "0.5")
    assert is_equivalent("27", "27.0")
    assert not is_equivalent("3", "4")
    assert not is_equivalent("3", None)
    assert not is_equivalent("3", "  ")


@pytest.mark.shared_data
def test_math500_equivalent_rewrites(math500: dict[str, str]) -> None:
    for uid, stored, rewrite in EQUIVALENT:
        gold = math500[uid]
        assert gold == stored, f"{uid}: the shared file changed ({gold!r})"
        assert is_equivalent(gold, rewrite), f"{uid}: {gold!r} vs {rewrite!r}"
        assert is_equivalent(gold, gold), uid
    assert len(EQUIVALENT) >= 15


@pytest.mark.shared_data
def test_math500_different_answers(math500: dict[str, str]) -> None:
    for uid, other in DIFFERENT:
        gold, predicted = math500[uid], math500[other]
        assert not is_equivalent(gold, predicted), f"{uid}: {gold!r} vs {other}: {predicted!r}"
    assert len(DIFFERENT) >= 15


def _sample_pairs() -> list[tuple[str, str | None]]:
    return [(r"\frac{1}{2}", "0.5"), ("3", "x=3"), ("3", "4"), ("p - q", "q - p"), ("7", None)]


EXPECTED = [True, True, False, False, False]


def test_is_equivalent_in_a_thread() -> None:
    """math-verify raises outside the main thread unless its timeouts are off; ours must not."""
    results: list[object] = []

    def work() -> None:
        try:
            results.append([is_equivalent(g, p) for g, p in _sample_pairs()])
        except Exception as exc:  # pragma: no cover - the failure being tested for
            results.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert results == [EXPECTED]
