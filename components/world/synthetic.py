"""The small world: seeded arithmetic word problems with gold step-by-step solutions.

A problem is a start quantity followed by 2-6 operations (add, subtract, multiply, divide) told as a
story from one of several templates, each with several phrasings. Values stay positive integers no
larger than ``value_max`` and divisions are exact. The gold solution has one step per operation::

    Step 1: After finding 5 more, Mia has 7 + 5 = 12 marbles.
    Step 2: After giving away 3, Mia has 12 - 3 = 9 marbles. The answer is \\boxed{9}.

``inject_error`` rewrites a gold solution with exactly one error at a chosen step (an arithmetic slip, a
wrong operand, or a wrong operation), propagated to the end so the final answer is wrong. The kinds a
later step recovers from (a slip the next step silently ignores, a wrong side remark nothing uses, a
slip a new step recomputes: the final answer stays right) are in ``components/world/mistakes.py``;
``generate_processbench`` mixes them all into ProcessBench-format records with exact first-error labels.

Nothing here looks at model output; the teacher (which must not see this truth) parses step text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Literal

from components.data.records import Problem, ProcessBenchRecord
from components.platform.config import option
from components.platform.errors import ConfigError

Op = Literal["+", "-", "*", "/"]
ErrorKind = Literal["arithmetic", "operand", "operation"]
ERROR_KINDS: tuple[ErrorKind, ...] = ("arithmetic", "operand", "operation")
MAX_DRAWS = 10_000


@dataclass(frozen=True)
class SyntheticConfig:
    """How synthetic problems are drawn."""

    min_ops: int = option(2, help="Fewest operations (= solution steps) per problem; at least 2.")
    max_ops: int = option(4, help="Most operations per problem; at most 6.")
    operand_max: int = option(9, help="Operands are drawn from 1..operand_max.")
    start_max: int = option(9, help="The starting quantity is drawn from 1..start_max.")
    value_max: int = option(99, help="Every intermediate value stays within 1..value_max.")
    ops: list[Op] = option(["+", "-", "*", "/"], help="Operations to draw from (+, -, *, /).")

    def __post_init__(self) -> None:
        if not 2 <= self.min_ops <= self.max_ops <= 6:
            raise ConfigError(
                "world.min_ops/max_ops: need 2 <= min_ops <= max_ops <= 6, "
                f"got {self.min_ops} and {self.max_ops}"
            )
        for key in ("operand_max", "start_max", "value_max"):
            if getattr(self, key) < 1:
                raise ConfigError(f"world.{key}: must be at least 1, got {getattr(self, key)}")
        if self.value_max < self.start_max:
            raise ConfigError(f"world.value_max: must be at least start_max ({self.start_max})")
        if not self.ops:
            raise ConfigError("world.ops: at least one operation is needed")


@dataclass(frozen=True)
class Template:
    """A story frame: who, what, and a sentence per operation for the problem and for its step."""

    names: tuple[str, ...]
    unit: str
    start: str
    question: str
    problem_phrases: dict[str, tuple[str, ...]]
    step_phrases: dict[str, tuple[str, ...]]


TEMPLATES: tuple[Template, ...] = (
    Template(
        names=("Mia", "Leo", "Ava", "Sam", "Zoe", "Max"),
        unit="marbles",
        start="{name} has {a} marbles.",
        question="How many marbles does {name} have now?",
        problem_phrases={
            "+": ("{name} finds {k} more marbles.", "A friend gives {name} {k} marbles."),
            "-": ("{name} gives away {k} marbles.", "{name} loses {k} marbles."),
            "*": ("{name} ends up with {k} times as many marbles.",),
            "/": ("{name} shares the marbles equally among {k} bags and keeps one bag.",),
        },
        step_phrases={
            "+": ("After getting {k} more, {name} has {expr} marbles.",),
            "-": ("After giving up {k}, {name} has {expr} marbles.",),
            "*": ("With {k} times as many, {name} has {expr} marbles.",),
            "/": ("Keeping one of {k} equal bags, {name} has {expr} marbles.",),
        },
    ),
    Template(
        names=("Ana", "Ben", "Eli", "Ivy", "Noa", "Tom"),
        unit="cookies",
        start="A baker named {name} bakes {a} cookies.",
        question="How many cookies are there at the end?",
        problem_phrases={
            "+": ("{name} bakes {k} more cookies.", "{k} more cookies come out of the oven."),
            "-": ("{name} sells {k} cookies.", "{k} cookies are eaten."),
            "*": ("{name} makes {k} times as many cookies.",),
            "/": ("{name} packs the cookies into {k} equal boxes and keeps one box.",),
        },
        step_phrases={
            "+": ("Adding {k} cookies gives {expr} cookies.",),
            "-": ("Removing {k} cookies leaves {expr} cookies.",),
            "*": ("Making {k} times as many gives {expr} cookies.",),
            "/": ("One of {k} equal boxes holds {expr} cookies.",),
        },
    ),
    Template(
        names=("Kai", "Lia", "Ned", "Ora", "Pia", "Rex"),
        unit="dollars",
        start="{name} has {a} dollars.",
        question="How many dollars does {name} have in the end?",
        problem_phrases={
            "+": ("{name} earns {k} dollars.", "{name} is paid {k} dollars."),
            "-": ("{name} spends {k} dollars.", "{name} pays {k} dollars for lunch."),
            "*": ("{name} invests and gets back {k} times the money.",),
            "/": ("{name} splits the money equally with {k} people in all and keeps one share.",),
        },
        step_phrases={
            "+": ("After earning {k}, {name} has {expr} dollars.",),
            "-": ("After spending {k}, {name} has {expr} dollars.",),
            "*": ("Getting {k} times the money, {name} has {expr} dollars.",),
            "/": ("One share of {k} is {expr} dollars.",),
        },
    ),
    Template(
        names=("Uma", "Vic", "Wes", "Yan", "Ada", "Gus"),
        unit="liters",
        start="A tank holds {a} liters of water.",
        question="How many liters are in the tank now?",
        problem_phrases={
            "+": ("{k} liters are poured in.", "A pipe adds {k} liters."),
            "-": ("{k} liters leak out.", "{name} drains {k} liters."),
            "*": ("The amount of water becomes {k} times as large.",),
            "/": ("The water is split equally into {k} tanks and one tank is kept.",),
        },
        step_phrases={
            "+": ("Adding {k} liters gives {expr} liters.",),
            "-": ("Removing {k} liters leaves {expr} liters.",),
            "*": ("Making it {k} times as large gives {expr} liters.",),
            "/": ("One of {k} equal parts is {expr} liters.",),
        },
    ),
)


@dataclass(frozen=True)
class Operation:
    """One step of a problem: ``left op operand = result`` with its phrasing choices."""

    op: str
    operand: int
    problem_phrase: int
    step_phrase: int


@dataclass(frozen=True)
class WorldProblem:
    """A generated problem: the story, its operations and the gold computation."""

    uid: str
    template: int
    name: str
    start: int
    operations: tuple[Operation, ...]
    values: tuple[int, ...] = field(default=())

    @property
    def answer(self) -> int:
        return self.values[-1]


def apply_op(op: str, left: int, operand: int) -> int | None:
    """``left op operand`` as an int, or None when it is not a whole number."""
    if op == "+":
        return left + operand
    if op == "-":
        return left - operand
    if op == "*":
        return left * operand
    if op == "/":
        return left // operand if operand and left % operand == 0 else None
    raise ValueError(f"unknown operation {op!r}")


def _feasible_ops(cfg: SyntheticConfig, value: int, rng: random.Random) -> list[tuple[str, int]]:
    choices: list[tuple[str, int]] = []
    for op in cfg.ops:
        low = 2 if op in "*/" else 1
        for k in range(low, cfg.operand_max + 1):
            result = apply_op(op, value, k)
            if result is not None and 1 <= result <= cfg.value_max:
                choices.append((op, k))
    rng.shuffle(choices)
    return choices


def generate_problem(cfg: SyntheticConfig, rng: random.Random, uid: str) -> WorldProblem:
    """Draw one problem; ops are balanced by first picking an operation type, then an operand.

    Draws that run out of feasible operations are retried; settings under which (almost) none succeed
    (e.g. only ``/`` with small values) raise ConfigError instead of looping forever.
    """
    for _ in range(MAX_DRAWS):
        template_idx = rng.randrange(len(TEMPLATES))
        template = TEMPLATES[template_idx]
        start = rng.randint(1, cfg.start_max)
        num_ops = rng.randint(cfg.min_ops, cfg.max_ops)
        values = [start]
        operations = []
        for _ in range(num_ops):
            choices = _feasible_ops(cfg, values[-1], rng)
            if not choices:
                break
            op = rng.choice(sorted({c[0] for c in choices}))
            operand = rng.choice([k for o, k in choices if o == op])
            operations.append(
                Operation(
                    op=op,
                    operand=operand,
                    problem_phrase=rng.randrange(len(template.problem_phrases[op])),
                    step_phrase=rng.randrange(len(template.step_phrases[op])),
                )
            )
            values.append(apply_op(op, values[-1], operand))  # type: ignore[arg-type]
        if len(operations) == num_ops:
            return WorldProblem(
                uid=uid,
                template=template_idx,
                name=rng.choice(template.names),
                start=start,
                operations=tuple(operations),
                values=tuple(values),
            )
    raise ConfigError(
        f"world: no problem with {cfg.min_ops}..{cfg.max_ops} operations found in {MAX_DRAWS} draws; "
        "widen ops, operand_max or value_max"
    )


def problem_text(problem: WorldProblem) -> str:
    """The word problem as a reader sees it."""
    template = TEMPLATES[problem.template]
    sentences = [template.start.format(name=problem.name, a=problem.start)]
    for i, step in enumerate(problem.operations):
        phrase = template.problem_phrases[step.op][step.problem_phrase].format(
            name=problem.name, k=step.operand
        )
        if i > 0:
            phrase = "Then " + (phrase if phrase.startswith(problem.name) else phrase[0].lower() + phrase[1:])
        sentences.append(phrase)
    sentences.append(template.question.format(name=problem.name))
    return " ".join(sentences)


def render_step(template: Template, name: str, step: Operation, left: int, result: int) -> str:
    """One solution step with its equation ``left op operand = result``."""
    expr = f"{left} {step.op} {step.operand} = {result}"
    return template.step_phrases[step.op][step.step_phrase].format(name=name, k=step.operand, expr=expr)


def render_solution(problem: WorldProblem, steps: tuple[Operation, ...], values: list[int]) -> list[str]:
    """Steps for ``steps`` whose running values are ``values`` (values[0] is the start)."""
    template = TEMPLATES[problem.template]
    texts = [
        render_step(template, problem.name, step, values[i], values[i + 1]) for i, step in enumerate(steps)
    ]
    texts[-1] += f" The answer is \\boxed{{{values[-1]}}}."
    return texts


def gold_steps(problem: WorldProblem) -> list[str]:
    """The gold step-by-step solution (without ``Step k:`` markers)."""
    return render_solution(problem, problem.operations, list(problem.values))


def inject_error(
    problem: WorldProblem, rng: random.Random, cfg: SyntheticConfig, kind: ErrorKind, index: int
) -> list[str] | None:
    """The gold solution with one ``kind`` error at step ``index``, propagated; None if impossible.

    Steps before ``index`` are the gold ones; later steps compute correctly from the wrong value, and
    the final answer differs from the gold answer.
    """
    steps = list(problem.operations)
    values = list(problem.values[: index + 1])
    wrong = steps[index]
    if kind == "operand":
        others = [k for k in range(2 if wrong.op in "*/" else 1, cfg.operand_max + 1) if k != wrong.operand]
        steps[index] = replace(wrong, operand=rng.choice(others))
    elif kind == "operation":
        steps[index] = replace(wrong, op=rng.choice([o for o in "+-*/" if o != wrong.op]))
    first = apply_op(steps[index].op, values[-1], steps[index].operand)
    if first is None:
        return None
    if kind == "arithmetic":
        first = problem.values[index + 1] + rng.choice([-3, -2, -1, 1, 2, 3])
    values.append(first)
    for step in steps[index + 1 :]:
        nxt = apply_op(step.op, values[-1], step.operand)
        if nxt is None:
            return None
        values.append(nxt)
    if values[-1] == problem.answer or min(values) < 0 or values[index + 1] == problem.values[index + 1]:
        return None
    return render_solution(problem, tuple(steps), values)


def to_problem(problem: WorldProblem) -> Problem:
    """The problem in the shared problems-table schema; gold steps ride along in metadata."""
    return Problem(
        id=problem.uid,
        source="synthetic",
        problem=problem_text(problem),
        answer=str(problem.answer),
        metadata={"num_ops": len(problem.operations), "gold_steps": gold_steps(problem)},
    )


def generate_problems(cfg: SyntheticConfig, count: int, seed: int, prefix: str = "syn") -> list[WorldProblem]:
    """``count`` problems from ``seed``; the same seed always gives the same problems."""
    rng = random.Random(seed)
    return [generate_problem(cfg, rng, f"{prefix}-{seed}-{i:06d}") for i in range(count)]


def make_processbench_record(
    problem: WorldProblem,
    rng: random.Random,
    cfg: SyntheticConfig,
    with_error: bool,
    kinds: dict[str, float] | None = None,
    remark_rate: float = 0.0,
) -> ProcessBenchRecord:
    """A ProcessBench-format record for ``problem``: a correct solution, or one with a single error.

    ``kinds`` weighs the error kinds (``components/world/mistakes.py``; default: every kind equally);
    ``remark_rate`` is the chance that a correct solution carries a correct side remark.
    """
    from components.world.mistakes import DEFAULT_KIND_WEIGHTS, processbench_record

    weights = DEFAULT_KIND_WEIGHTS if kinds is None else kinds
    return processbench_record(problem, rng, cfg, with_error, weights, remark_rate)


def generate_processbench(
    cfg: SyntheticConfig,
    problems: list[WorldProblem],
    seed: int,
    error_fraction: float,
    kinds: dict[str, float] | None = None,
    remark_rate: float = 0.0,
) -> list[ProcessBenchRecord]:
    """ProcessBench-format records, ``error_fraction`` of them with one error (make_processbench_record)."""
    rng = random.Random(seed)
    return [
        make_processbench_record(p, rng, cfg, rng.random() < error_fraction, kinds, remark_rate)
        for p in problems
    ]
