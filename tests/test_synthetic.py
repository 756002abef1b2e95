"""Tests for components.world.synthetic: the seeded small world, its gold solutions and injected errors.

The checks read the rendered text (problem and steps) the way a teacher would, and compare it with the
generator's hidden truth, so a rendering bug cannot hide behind a correct ``WorldProblem``.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from components.data.records import split_steps
from components.method.grading import extract_answer
from components.method.prompts import solution_text
from components.world.mistakes import ALL_KINDS
from components.world.synthetic import (
    ERROR_KINDS,
    TEMPLATES,
    SyntheticConfig,
    WorldProblem,
    apply_op,
    generate_problems,
    generate_processbench,
    gold_steps,
    inject_error,
    problem_text,
    to_problem,
)

EQUATION = re.compile(r"(-?\d+) ([-+*/]) (\d+) = (-?\d+)")
CFG = SyntheticConfig()


@pytest.fixture(scope="module")
def problems() -> list[WorldProblem]:
    return generate_problems(CFG, 300, seed=11)


def equation(step: str) -> tuple[int, str, int, int]:
    """The single ``a op b = c`` claim of a step."""
    found = EQUATION.findall(step)
    assert len(found) == 1, f"expected one equation in {step!r}"
    left, op, operand, result = found[0]
    return int(left), op, int(operand), int(result)


def holds(left: int, op: str, operand: int, result: int) -> bool:
    return apply_op(op, left, operand) == result


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


# -------------------------------------------------------------------------------------- determinism


def test_same_seed_same_problems() -> None:
    first = generate_problems(CFG, 50, seed=3)
    assert first == generate_problems(CFG, 50, seed=3)
    assert [problem_text(p) for p in first] == [problem_text(p) for p in generate_problems(CFG, 50, seed=3)]
    assert first != generate_problems(CFG, 50, seed=4)


def test_ids_are_unique_and_carry_seed_and_prefix() -> None:
    batch = generate_problems(CFG, 20, seed=5, prefix="pb")
    assert len({p.uid for p in batch}) == 20
    assert all(p.uid.startswith("pb-5-") for p in batch)


def test_processbench_is_deterministic(problems: list[WorldProblem]) -> None:
    first = generate_processbench(CFG, problems[:60], seed=2, error_fraction=0.5)
    assert first == generate_processbench(CFG, problems[:60], seed=2, error_fraction=0.5)
    assert first != generate_processbench(CFG, problems[:60], seed=3, error_fraction=0.5)


# ------------------------------------------------------------------------------------ gold solutions


@pytest.mark.parametrize(
    "cfg",
    [
        CFG,
        SyntheticConfig(min_ops=5, max_ops=6, ops=["+", "-"], value_max=60),
        SyntheticConfig(min_ops=2, max_ops=2, ops=["*", "/"], operand_max=5, start_max=20, value_max=40),
    ],
    ids=["default", "long-add-sub", "mul-div"],
)
def test_gold_solutions_are_true_chained_and_bounded(cfg: SyntheticConfig) -> None:
    for problem in generate_problems(cfg, 150, seed=1):
        text = problem_text(problem)
        steps = gold_steps(problem)
        assert cfg.min_ops <= len(steps) <= cfg.max_ops
        assert len(steps) == len(problem.operations)
        text_numbers = numbers(text)
        assert text_numbers[0] == problem.start, "the problem opens with its start value"
        previous = problem.start
        for step, operation in zip(steps, problem.operations, strict=True):
            left, op, operand, result = equation(step)
            assert holds(left, op, operand, result), step
            assert left == previous, f"step does not use the previous result: {step!r}"
            assert (op, operand) == (operation.op, operation.operand)
            assert op in cfg.ops
            assert operand in text_numbers, f"operand {operand} is not in {text!r}"
            assert 1 <= result <= cfg.value_max
            assert 1 <= operand <= cfg.operand_max
            previous = result
        assert 1 <= problem.start <= cfg.start_max
        assert list(problem.values) == [problem.start, *(equation(s)[3] for s in steps)]
        assert extract_answer(solution_text(steps)) == str(problem.answer) == str(previous)
        assert steps[-1].endswith(f"\\boxed{{{problem.answer}}}.")
        assert all("\\boxed" not in s for s in steps[:-1])


def test_problem_operands_appear_in_order(problems: list[WorldProblem]) -> None:
    for problem in problems:
        assert numbers(problem_text(problem)) == [problem.start, *(o.operand for o in problem.operations)]


def test_every_step_count_appears(problems: list[WorldProblem]) -> None:
    counts = Counter(len(p.operations) for p in problems)
    assert set(counts) == set(range(CFG.min_ops, CFG.max_ops + 1))


def test_templates_ops_and_phrasings_vary(problems: list[WorldProblem]) -> None:
    assert {p.template for p in problems} == set(range(len(TEMPLATES)))
    assert Counter(o.op for p in problems for o in p.operations).keys() == {"+", "-", "*", "/"}
    phrasings = {(p.template, o.op, o.problem_phrase) for p in problems for o in p.operations}
    available = {
        (t, op, i)
        for t, tpl in enumerate(TEMPLATES)
        for op, ph in tpl.problem_phrases.items()
        for i in range(len(ph))
    }
    assert len(phrasings) >= 0.9 * len(available)
    assert any(i > 0 for _, _, i in phrasings), "alternative phrasings are used"
    assert len({p.name for p in problems}) >= 12
    openings = {problem_text(p).split(" ")[0] for p in problems}
    assert len(openings) >= 3


def test_ops_are_roughly_balanced(problems: list[WorldProblem]) -> None:
    counts = Counter(o.op for p in problems for o in p.operations)
    total = sum(counts.values())
    for op in "+-*/":
        assert counts[op] / total > 0.1, counts


def test_to_problem_schema(problems: list[WorldProblem]) -> None:
    record = to_problem(problems[0])
    assert record.id == problems[0].uid
    assert record.source == "synthetic"
    assert record.problem == problem_text(problems[0])
    assert record.answer == str(problems[0].answer)
    assert record.metadata["gold_steps"] == gold_steps(problems[0])
    assert record.metadata["num_ops"] == len(problems[0].operations)


# ------------------------------------------------------------------------------------ injected errors


@pytest.mark.parametrize("kind", ERROR_KINDS)
def test_inject_error(problems: list[WorldProblem], kind: str) -> None:
    rng = random.Random(0)
    made = tried = 0
    for problem in problems[:150]:
        gold = gold_steps(problem)
        for index in range(len(gold)):
            tried += 1
            steps = inject_error(problem, rng, CFG, kind, index)  # type: ignore[arg-type]
            if steps is None:
                continue
            made += 1
            assert len(steps) == len(gold)
            assert steps[:index] == gold[:index], "steps before the error are the gold ones"
            assert steps[index] != gold[index]
            g_left, g_op, g_operand, g_result = equation(gold[index])
            left, op, operand, result = equation(steps[index])
            assert left == g_left, "the error step starts from the correct previous value"
            if kind == "arithmetic":
                assert (op, operand) == (g_op, g_operand)
                assert not holds(left, op, operand, result), "an arithmetic slip is a false equation"
            elif kind == "operand":
                assert op == g_op
                assert operand != g_operand, "a wrong operand differs from the problem's"
                assert holds(left, op, operand, result)
            else:
                assert operand == g_operand
                assert op != g_op
                assert holds(left, op, operand, result)
            assert result != g_result
            previous = result
            for later, gold_later in zip(steps[index + 1 :], gold[index + 1 :], strict=True):
                l_left, l_op, l_operand, l_result = equation(later)
                assert l_left == previous, "later steps carry the wrong value forward"
                assert holds(l_left, l_op, l_operand, l_result), "later steps compute correctly"
                assert (l_op, l_operand) == equation(gold_later)[1:3]
                previous = l_result
            answer = extract_answer(solution_text(steps))
            assert answer == str(previous)
            assert answer != str(problem.answer), "the final answer is wrong"
    assert made >= 0.3 * tried, f"{kind}: only {made} of {tried} injections possible"


def test_inject_error_returns_none_or_a_real_error(problems: list[WorldProblem]) -> None:
    rng = random.Random(1)
    for problem in problems[:50]:
        for kind in ERROR_KINDS:
            steps = inject_error(problem, rng, CFG, kind, len(problem.operations) - 1)
            assert steps is None or steps != gold_steps(problem)


# ----------------------------------------------------------------------------------- ProcessBench set


def test_processbench_balance_and_labels() -> None:
    world = generate_problems(CFG, 400, seed=21)
    records = generate_processbench(CFG, world, seed=21, error_fraction=0.5, remark_rate=0.2)
    assert len(records) == 400
    with_error = [r for r in records if r.label != -1]
    assert 0.4 <= len(with_error) / len(records) <= 0.6
    kinds = Counter(r.generator.removeprefix("synthetic-") for r in with_error)
    assert set(kinds) == set(ALL_KINDS), "every error kind appears by default"
    assert all(n >= 0.5 * len(with_error) / len(ALL_KINDS) for n in kinds.values()), kinds
    assert {r.generator for r in records if r.label == -1} == {"synthetic-gold", "synthetic-gold-remark"}
    recovered = [r for r in with_error if r.final_answer_correct]
    assert 0.3 <= len(recovered) / len(with_error) <= 0.7, "erroneous records with a right final answer"
    labels = Counter(r.label for r in with_error)
    assert len(labels) >= 3, "errors appear at several positions"
    by_id = {p.uid: p for p in world}
    for record in records:
        problem = by_id[record.id]
        assert record.problem == problem_text(problem)
        assert -1 <= record.label < len(record.steps)
        answer_ok = extract_answer(record.steps[-1]) == str(problem.answer)
        assert answer_ok == record.final_answer_correct
        assert record.final_answer_correct == (record.generator.removeprefix("synthetic-") not in ERROR_KINDS)
        gold = gold_steps(problem)
        if record.generator == "synthetic-gold":
            assert record.steps == gold
        elif record.label == -1:
            assert sum(a != b for a, b in zip(record.steps, gold, strict=True)) == 1
        else:
            assert record.steps[: record.label] == gold[: record.label]
            assert record.steps[record.label] != gold[record.label]


@pytest.mark.parametrize(("fraction", "low", "high"), [(0.0, 0, 0), (1.0, 0.95, 1.0), (0.2, 0.12, 0.28)])
def test_processbench_error_fraction(fraction: float, low: float, high: float) -> None:
    world = generate_problems(CFG, 200, seed=8)
    records = generate_processbench(CFG, world, seed=8, error_fraction=fraction)
    share = sum(r.label != -1 for r in records) / len(records)
    assert low <= share <= high


def test_processbench_record_round_trips() -> None:
    from components.data.records import processbench_from_dict

    world = generate_problems(CFG, 20, seed=4)
    for record in generate_processbench(CFG, world, seed=4, error_fraction=0.5):
        assert processbench_from_dict(record.to_dict(), "mem") == record


# ---------------------------------------------------------------------------------------- step text


def test_split_join_round_trip(problems: list[WorldProblem]) -> None:
    for problem in problems[:50]:
        steps = gold_steps(problem)
        text = solution_text(steps)
        assert split_steps(text) == steps
        assert text == solution_text(steps), "the policy's format and the records' format agree"
        assert text.startswith("Step 1: ")


def test_split_steps_with_preamble_and_blank_lines() -> None:
    text = "Let me think about it.\n\nStep 1: 3 + 4 = 7.\n\nStep 2: 7 * 2 = 14.\n  Step 3:  \\boxed{14}  "
    assert split_steps(text) == ["Let me think about it.", "3 + 4 = 7.", "7 * 2 = 14.", "\\boxed{14}"]


def test_split_steps_edge_cases() -> None:
    assert split_steps("no markers here") == ["no markers here"]
    assert split_steps("") == []
    assert split_steps("Step 1: a\nStep 2:\nStep 3: c") == ["a", "c"]
    assert split_steps("Step 1: a, not Step 2: inline\nStep 10: b") == ["a, not Step 2: inline", "b"]
    assert split_steps("Step 1: two\nlines\nStep 2: b") == ["two\nlines", "b"]
