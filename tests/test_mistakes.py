"""Tests for components.world.mistakes: the error kinds a later step recovers from, and the error mix.

The checks read the rendered steps as text (every ``a op b = c`` claim, the boxed answer) and compare
them with the generator's hidden truth; the program teacher, given only the problem text and the steps,
finds each error at its labelled step.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator

import pytest

from components.method.grading import extract_answer
from components.method.teachers import ProgramTeacher
from components.platform.errors import ConfigError
from components.sandbox import Sandbox, SandboxConfig
from components.stages.bootstrap import BootstrapConfig
from components.stages.prepare import PrepareConfig
from components.world.mistakes import (
    ALL_KINDS,
    RECOVERED_KINDS,
    check_weights,
    correct_solution,
    draw_mistake,
    processbench_record,
    write_mistake,
)
from components.world.synthetic import (
    SyntheticConfig,
    WorldProblem,
    apply_op,
    generate_problems,
    gold_steps,
    problem_text,
)

CFG = SyntheticConfig()
CLAIM = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def problems() -> list[WorldProblem]:
    return generate_problems(CFG, 200, seed=17)


def claims(step: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in CLAIM.findall(step)]


def true(claim: tuple[int, str, int, int]) -> bool:
    left, op, right, result = claim
    return apply_op(op, left, right) == result


def first_false_step(steps: list[str]) -> int:
    """The first step holding a false claim, read from the text alone; -1 if none."""
    return next((i for i, s in enumerate(steps) if not all(true(c) for c in claims(s))), -1)


def mistakes(problems: list[WorldProblem], kind: str) -> Iterator[tuple[WorldProblem, int, list[str]]]:
    rng = random.Random(3)
    for problem in problems:
        for index in range(len(problem.operations)):
            mistake = write_mistake(problem, rng, CFG, kind, index)
            if mistake is not None:
                assert mistake.kind == kind and mistake.label == index
                assert mistake.final_answer_correct
                yield problem, index, mistake.steps


@pytest.mark.parametrize("kind", RECOVERED_KINDS)
def test_recovered_errors_have_exact_labels_and_a_right_answer(
    problems: list[WorldProblem], kind: str
) -> None:
    made = 0
    for problem, index, steps in mistakes(problems, kind):
        made += 1
        gold = gold_steps(problem)
        assert steps[:index] == gold[:index], "steps before the error are the gold ones"
        assert first_false_step(steps) == index, "the labelled step holds the only false claim"
        assert extract_answer(steps[-1]) == str(problem.answer), "the final answer is right"
        assert all("\\boxed" not in s for s in steps[:-1])
        (left, op, right, stated), *rest = claims(steps[index])
        assert (left, op, right) == claims(gold[index])[0][:3], "the error step starts from the right value"
        if kind == "unused_wrong":
            assert stated == problem.values[index + 1] and len(rest) == 1 and not true(rest[0])
            assert steps[index].startswith(gold[index].split(" The answer")[0])
            assert steps[index + 1 :] == gold[index + 1 :], "nothing after the remark changes"
        elif kind == "silent_fix":
            assert stated != problem.values[index + 1] and not rest
            assert steps[index + 1 :] == gold[index + 1 :], "the next step goes on from the right value"
            assert claims(steps[index + 1])[0][0] == problem.values[index + 1] != stated
        else:
            assert len(steps) == len(gold) + 1 and not rest
            recheck = claims(steps[index + 1])
            assert recheck == [(left, op, right, problem.values[index + 1])], "a new step recomputes it"
            assert f"not {stated}" in steps[index + 1]
            assert steps[index + 2 :] == gold[index + 1 :]
    assert made >= 150, f"{kind}: only {made} made"


def test_a_silent_fix_needs_a_later_step(problems: list[WorldProblem]) -> None:
    rng = random.Random(0)
    assert all(write_mistake(p, rng, CFG, "silent_fix", len(p.operations) - 1) is None for p in problems)


def test_correct_remarks_are_true_and_change_nothing_else(problems: list[WorldProblem]) -> None:
    rng = random.Random(4)
    remarked = 0
    for problem in problems:
        steps = correct_solution(problem, rng, remark_rate=1.0)
        gold = gold_steps(problem)
        assert first_false_step(steps) == -1 and extract_answer(steps[-1]) == str(problem.answer)
        changed = [i for i, (a, b) in enumerate(zip(steps, gold, strict=True)) if a != b]
        assert len(changed) == 1 and len(claims(steps[changed[0]])) == 2
        remarked += 1
    assert remarked == len(problems)
    assert correct_solution(problems[0], rng, remark_rate=0.0) == gold_steps(problems[0])


def test_the_mix_follows_the_weights(problems: list[WorldProblem]) -> None:
    rng = random.Random(5)
    weights = {"arithmetic": 1.0, "silent_fix": 3.0, "operand": 0.0}
    kinds = Counter()
    for problem in problems * 3:
        mistake = draw_mistake(problem, rng, CFG, weights)
        assert mistake is not None
        kinds[mistake.kind] += 1
    assert set(kinds) == {"arithmetic", "silent_fix"}
    assert 0.65 <= kinds["silent_fix"] / sum(kinds.values()) <= 0.85, kinds


def test_records_carry_the_kind_label_and_final_answer() -> None:
    rng = random.Random(6)
    world = generate_problems(CFG, 300, seed=6)
    records = [processbench_record(p, rng, CFG, True, dict.fromkeys(ALL_KINDS, 1.0)) for p in world]
    assert {r.generator for r in records} == {f"synthetic-{k}" for k in ALL_KINDS}
    for record, problem in zip(records, world, strict=True):
        kind = record.generator.removeprefix("synthetic-")
        assert record.final_answer_correct == (kind in RECOVERED_KINDS)
        assert record.final_answer_correct == (extract_answer(record.steps[-1]) == str(problem.answer))
        if kind not in ("operand", "operation"):  # these keep every claim true: a logic error
            assert first_false_step(record.steps) == record.label


@pytest.mark.parametrize(
    "weights", [{"typo": 1.0}, {"arithmetic": -1.0, "operand": 1.0}, {"arithmetic": 0.0}, {}]
)
def test_bad_weights_are_refused(weights: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="where"):
        check_weights(weights, "where")
    with pytest.raises(ConfigError, match=r"prepare\.processbench_error_kinds"):
        PrepareConfig(processbench_error_kinds=weights)
    with pytest.raises(ConfigError, match=r"bootstrap\.error_kinds"):
        BootstrapConfig(error_kinds=weights)


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"prepare\.processbench_remark_rate"):
        PrepareConfig(processbench_remark_rate=1.5)
    with pytest.raises(ConfigError, match=r"bootstrap\.skills_fraction"):
        BootstrapConfig(skills_fraction=-0.1)


def test_the_program_teacher_finds_each_kind_from_the_text_alone() -> None:
    """The teacher gets (problem text, steps) and nothing else; its first No is the labelled step."""
    rng = random.Random(7)
    world = generate_problems(CFG, 60, seed=7)
    weights = dict.fromkeys(RECOVERED_KINDS, 1.0)
    records = [
        processbench_record(p, rng, CFG, i % 3 != 0, weights, remark_rate=1.0) for i, p in enumerate(world)
    ]
    with Sandbox(SandboxConfig(workers=2)) as box:
        critiques = ProgramTeacher(box, threads=2).critique(
            [(problem_text(p), r.steps) for p, r in zip(world, records, strict=True)]
        )
    found = Counter()
    for record, critique in zip(records, critiques, strict=True):
        first_no = next((i for i, v in enumerate(critique.verdicts) if v == 0), -1)
        found[(record.generator, first_no == record.label)] += 1
    assert found[("synthetic-gold-remark", True)] >= 15, found  # no false alarm on a correct remark
    for kind in RECOVERED_KINDS:
        assert found[(f"synthetic-{kind}", True)] >= 5, found
    assert not [key for key, n in found.items() if not key[1]], found
