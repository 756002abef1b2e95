"""Solutions with one error of each kind real solutions have, with the exact first-error label.

``synthetic.inject_error`` makes errors that propagate to the end (an arithmetic slip, a wrong operand,
a wrong operation: the final answer is wrong). Real solutions also hold errors the rest of the solution
recovers from, so that ``final_answer_correct`` is true although a step is wrong:

- ``silent_fix``: a step states a wrong result (an arithmetic slip) and the next step goes on from the
  correct value, saying nothing::

      Step 1: After getting 5 more, Mia has 7 + 5 = 13 marbles.
      Step 2: After giving up 3, Mia has 12 - 3 = 9 marbles. ...

- ``unused_wrong``: a step carries a side remark with a wrong value that nothing later uses::

      Step 1: After getting 5 more, Mia has 7 + 5 = 12 marbles. Check: 12 - 5 = 6.

- ``recomputed``: a step states a wrong result and a new step recomputes it before going on::

      Step 1: After getting 5 more, Mia has 7 + 5 = 13 marbles.
      Step 2: Wait, 7 + 5 = 12, not 13.
      Step 3: After giving up 3, Mia has 12 - 3 = 9 marbles. ...

Correct side remarks exist too (``with_remark``, ``wrong=False``): a remark is no sign of an error. The
first-error label is always the step that holds the (first and only) wrong statement.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from components.data.records import ProcessBenchRecord
from components.platform.errors import ConfigError
from components.world.synthetic import (
    ERROR_KINDS,
    TEMPLATES,
    SyntheticConfig,
    WorldProblem,
    gold_steps,
    inject_error,
    problem_text,
    render_step,
)

RECOVERED_KINDS: tuple[str, ...] = ("silent_fix", "unused_wrong", "recomputed")
ALL_KINDS: tuple[str, ...] = (*ERROR_KINDS, *RECOVERED_KINDS)
DEFAULT_KIND_WEIGHTS: dict[str, float] = dict.fromkeys(ALL_KINDS, 1.0)
KINDS_HELP = (
    "Relative weight of each error kind among solutions with an error: arithmetic, operand, operation "
    "(propagated to a wrong final answer), silent_fix (a slip the next step ignores, going on from the "
    "correct value), unused_wrong (a side remark with a wrong value nothing uses), recomputed (a slip a "
    "new step recomputes); the last three keep the final answer right (components/world/mistakes.py)."
)
REMARK_HELP = (
    "Fraction of error-free solutions that carry one correct side remark (e.g. 'Check: 12 - 5 = 7.'), "
    "so that a remark is no sign of an error."
)
RECHECK_PHRASES = (
    "Wait, {expr} = {right}, not {wrong}.",
    "Let me recompute that: {expr} = {right}, not {wrong}.",
    "Checking again, {expr} = {right}, not {wrong}.",
)
INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}
ANSWER = " The answer is \\boxed{"


@dataclass(frozen=True)
class Mistake:
    """A solution with one error: its steps, first wrong step and whether its final answer is right."""

    kind: str
    steps: list[str]
    label: int
    final_answer_correct: bool


def check_weights(weights: dict[str, float], where: str) -> None:
    """Raise ConfigError unless ``weights`` names known kinds with weights >= 0, at least one positive."""
    unknown = sorted(set(weights) - set(ALL_KINDS))
    if unknown:
        raise ConfigError(f"{where}: unknown error kind {unknown[0]!r} (known: {', '.join(ALL_KINDS)})")
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ConfigError(f"{where}: weights must be >= 0 with at least one positive, got {weights}")


def slipped(value: int, rng: random.Random) -> int:
    """A nearby wrong value (an arithmetic slip), never negative."""
    return rng.choice([v for v in range(value - 3, value + 4) if v >= 0 and v != value])


def _slip_text(problem: WorldProblem, index: int, wrong: int) -> str:
    """Step ``index`` of the gold solution, stating ``wrong`` as its result (no final answer)."""
    template = TEMPLATES[problem.template]
    return render_step(template, problem.name, problem.operations[index], problem.values[index], wrong)


def silent_fix(problem: WorldProblem, rng: random.Random, index: int) -> list[str] | None:
    """A slip at ``index`` that the next step ignores (it goes on from the correct value); None at the end."""
    if index >= len(problem.operations) - 1:
        return None
    steps = gold_steps(problem)
    steps[index] = _slip_text(problem, index, slipped(problem.values[index + 1], rng))
    return steps


def recomputed(problem: WorldProblem, rng: random.Random, index: int) -> list[str]:
    """A slip at ``index`` and a new step after it that recomputes the value, then the gold steps."""
    steps = gold_steps(problem)
    right = problem.values[index + 1]
    wrong = slipped(right, rng)
    step = problem.operations[index]
    fix = rng.choice(RECHECK_PHRASES).format(
        expr=f"{problem.values[index]} {step.op} {step.operand}", right=right, wrong=wrong
    )
    if index == len(steps) - 1:
        fix += f"{ANSWER}{right}}}."
    steps[index] = _slip_text(problem, index, wrong)
    steps.insert(index + 1, fix)
    return steps


def remark(problem: WorldProblem, index: int, rng: random.Random, wrong: bool) -> str:
    """A side remark on step ``index``: an inverse check, or the change since the start; nothing uses it."""
    step = problem.operations[index]
    left, result = problem.values[index], problem.values[index + 1]
    start = problem.start
    if index > 0 and result != start and rng.random() < 0.5:
        high, low = max(result, start), min(result, start)
        value = slipped(high - low, rng) if wrong else high - low
        more = "more" if result > start else "fewer"
        unit = TEMPLATES[problem.template].unit
        return f"That is {high} - {low} = {value} {unit} {more} than at the start."
    value = slipped(left, rng) if wrong else left
    return f"Check: {result} {INVERSE[step.op]} {step.operand} = {value}."


def with_remark(
    problem: WorldProblem, steps: list[str], index: int, rng: random.Random, wrong: bool
) -> list[str]:
    """``steps`` with a side remark added to step ``index`` (before its final answer, if any)."""
    out = list(steps)
    text = out[index]
    cut = text.find(ANSWER)
    body, tail = (text, "") if cut < 0 else (text[:cut], text[cut:])
    out[index] = f"{body} {remark(problem, index, rng, wrong)}{tail}"
    return out


def write_mistake(
    problem: WorldProblem, rng: random.Random, cfg: SyntheticConfig, kind: str, index: int
) -> Mistake | None:
    """A solution of ``problem`` with one ``kind`` error at step ``index``, or None if impossible there."""
    if kind in ERROR_KINDS:
        steps = inject_error(problem, rng, cfg, kind, index)  # type: ignore[arg-type]
        return None if steps is None else Mistake(kind, steps, index, False)
    if kind == "silent_fix":
        fixed = silent_fix(problem, rng, index)
        return None if fixed is None else Mistake(kind, fixed, index, True)
    if kind == "unused_wrong":
        return Mistake(kind, with_remark(problem, gold_steps(problem), index, rng, wrong=True), index, True)
    if kind == "recomputed":
        return Mistake(kind, recomputed(problem, rng, index), index, True)
    raise ValueError(f"unknown error kind {kind!r}")


def draw_mistake(
    problem: WorldProblem,
    rng: random.Random,
    cfg: SyntheticConfig,
    weights: dict[str, float],
    tries: int = 10,
) -> Mistake | None:
    """One error drawn by ``weights`` (the kind first, then a step where it is possible); None if none is.

    The kind is drawn once and only the step is retried, so the kinds' shares follow the weights.
    """
    kinds = [k for k in ALL_KINDS if weights.get(k, 0) > 0]
    for _ in range(tries):
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        for _ in range(tries):
            mistake = write_mistake(problem, rng, cfg, kind, rng.randrange(len(problem.operations)))
            if mistake is not None:
                return mistake
    return None


def correct_solution(problem: WorldProblem, rng: random.Random, remark_rate: float) -> list[str]:
    """The gold solution, with probability ``remark_rate`` carrying one correct side remark."""
    steps = gold_steps(problem)
    if remark_rate > 0 and rng.random() < remark_rate:
        return with_remark(problem, steps, rng.randrange(len(steps)), rng, wrong=False)
    return steps


def processbench_record(
    problem: WorldProblem,
    rng: random.Random,
    cfg: SyntheticConfig,
    with_error: bool,
    weights: dict[str, float],
    remark_rate: float = 0.0,
) -> ProcessBenchRecord:
    """A ProcessBench-format record: generator ``synthetic-<kind>``, exact label and final_answer_correct."""
    text, answer = problem_text(problem), str(problem.answer)
    mistake = draw_mistake(problem, rng, cfg, weights) if with_error else None
    if mistake is not None:
        return ProcessBenchRecord(
            problem.uid, f"synthetic-{mistake.kind}", text, mistake.steps,
            mistake.final_answer_correct, mistake.label, answer,
        )  # fmt: skip
    steps = correct_solution(problem, rng, remark_rate)
    generator = "synthetic-gold" if steps == gold_steps(problem) else "synthetic-gold-remark"
    return ProcessBenchRecord(problem.uid, generator, text, steps, True, -1, answer)
