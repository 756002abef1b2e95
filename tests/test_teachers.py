"""The program teacher on real small-world solutions: gold ones, and ones with a known injected error."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from components.method.rationale import code_blocks, parse_verdict
from components.method.teachers import ProgramTeacher, judge_output, problem_numbers, step_code
from components.sandbox import Sandbox, SandboxConfig
from components.world.synthetic import (
    SyntheticConfig,
    WorldProblem,
    generate_problems,
    gold_steps,
    inject_error,
    problem_text,
)

Case = tuple[WorldProblem, list[str], int, str]


@pytest.fixture(scope="module")
def box() -> Sandbox:
    with Sandbox(SandboxConfig(workers=2)) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def teacher(box: Sandbox) -> ProgramTeacher:
    """The provenance code style (checks operands too)."""
    return ProgramTeacher(box, threads=2, code_style="provenance")


@pytest.fixture(scope="module")
def claim_teacher(box: Sandbox) -> ProgramTeacher:
    """The default claim code style."""
    return ProgramTeacher(box, threads=2)


def test_code_for_a_step_recomputes_and_checks_provenance() -> None:
    problem = "A tank holds 7 liters of water. Uma drains 3 liters. How many liters are in the tank now?"
    assert problem_numbers(problem) == ["7", "3"]
    step = "Removing 3 liters leaves 7 - 3 = 4 liters."
    analysis, code = step_code(problem, step, first=True, style="provenance")
    assert "claims 7 - 3 = 4" in analysis
    assert code.splitlines()[0] == "known = {7, 3}  # numbers given in the problem"
    assert "check = 7 - 3 == 4" in code and "source = {7, 3} <= known" in code
    _, final = step_code(problem, "So 4 liters. The answer is \\boxed{4}.", first=False, style="provenance")
    assert "answer 4 is a verified result" in final and "known =" not in final


def test_claim_style_prints_each_claim_once() -> None:
    step = "After giving up 3, Max has 54 - 3 = 51 marbles. Check: 51 + 3 = 56."
    analysis, code = step_code("Max has 54 marbles.", step, first=True, style="claim")
    assert analysis.startswith("The paragraph claims 54 - 3 = 51 and 51 + 3 = 56.")
    assert code == "print(54 - 3 == 51)\nprint(51 + 3 == 56)"
    _, nothing = step_code("x", "So far so good.", first=False, style="claim")
    assert nothing == 'print("no calculation to check")'


def injected_cases(count: int, kinds: Callable[[random.Random], list[str]]) -> list[Case]:
    """(problem, steps, error index, kind) for ``count`` problems: one random step, each kind of ``kinds``."""
    rng = random.Random(0)
    cfg = SyntheticConfig()
    cases = []
    for p in generate_problems(cfg, count, seed=5):
        index = rng.randrange(len(p.operations))
        for kind in kinds(rng):
            steps = inject_error(p, rng, cfg, kind, index)  # type: ignore[arg-type]
            if steps is not None:
                cases.append((p, steps, index, kind))
    return cases


def test_claim_style_catches_arithmetic_errors_only(claim_teacher: ProgramTeacher) -> None:
    cases = injected_cases(40, lambda rng: ["arithmetic", "operand"])
    critiques = claim_teacher.critique([(problem_text(p), steps) for p, steps, _, _ in cases])
    outcomes: Counter = Counter()
    for (_, _, index, kind), critique in zip(cases, critiques, strict=True):
        assert all(len(code_blocks(t)) == 1 and "known" not in t for t in critique.turns)
        first_no = critique.verdicts.index(0) if 0 in critique.verdicts else -1
        outcomes[(kind, first_no)] += 1
        if kind == "arithmetic":
            assert first_no == index, critique.turns
        else:  # the arithmetic of a wrong operand is right: only the provenance style sees it
            assert first_no == -1, critique.turns
    assert outcomes.total() == len(cases) and len(cases) > 40


def test_judge_output() -> None:
    assert judge_output("7 - 3 == 4: True; operands known: True") == 1
    assert judge_output("7 - 3 == 5: False; operands known: True") == 0
    assert judge_output("2 + 2 == 4: True; operands known: False") == 0


def test_gold_solutions_are_judged_right_at_every_step(teacher: ProgramTeacher) -> None:
    problems = generate_problems(SyntheticConfig(), 20, seed=3)
    critiques = teacher.critique([(problem_text(p), gold_steps(p)) for p in problems])
    for p, critique in zip(problems, critiques, strict=True):
        assert critique.verdicts == [1] * len(gold_steps(p)), critique.turns
        assert all(parse_verdict(t) == 1 and len(code_blocks(t)) == 1 for t in critique.turns)
        assert set(critique.statuses) == {"ok"}


def test_arithmetic_and_operand_errors_are_caught_at_the_first_wrong_step(teacher: ProgramTeacher) -> None:
    cases = injected_cases(60, lambda rng: [rng.choice(["arithmetic", "operand"])])
    critiques = teacher.critique([(problem_text(p), steps) for p, steps, _, _ in cases])
    outcomes: Counter = Counter()
    for (_, steps, index, kind), critique in zip(cases, critiques, strict=True):
        assert critique.verdicts[:index] == [1] * index  # steps before the error are right
        first_no = critique.verdicts.index(0) if 0 in critique.verdicts else -1
        outcomes[(kind, first_no == index)] += 1
        if first_no == index:  # the wrong value propagates to every later step, unless it is a known number
            outcomes["propagated"] += critique.verdicts[index:] == [0] * (len(steps) - index)
    assert outcomes[("arithmetic", True)] > 0 and outcomes[("arithmetic", False)] == 0
    caught = outcomes[("arithmetic", True)] + outcomes[("operand", True)]
    assert outcomes["propagated"] >= 0.7 * caught, outcomes
    # An operand error is missed only when the wrong operand happens to be a known number.
    assert outcomes[("operand", True)] >= 2 * outcomes[("operand", False)]


def test_a_run_that_fails_gives_no_verdict(teacher: ProgramTeacher) -> None:
    # A claim whose code divides by zero: the teacher must not guess.
    [critique] = teacher.critique([("Ana has 4 apples and 0 boxes.", ["She splits them: 4 / 0 = 0 apples."])])
    assert critique.verdicts == [-1]
    assert critique.statuses == ["error"]
    assert "ZeroDivisionError" in critique.turns[0]
