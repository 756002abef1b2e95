"""Generic skills a real base model has, as pretraining documents for the small world's policy.

A real base model has read and written a great deal of short Python and arithmetic before anyone
fine-tunes it; the small world's policy (which the GenPRM is fine-tuned from) has read only word-problem
solutions. These documents give it the underlying skills, in plain chat with a generic assistant:

- ``compute``: recompute a calculation from a sentence with Python and report the value;
- ``claim``: copy a claim ``a op b = c`` from a sentence into ``print(a op b == c)``, then read the
  printed ``True``/``False`` and say whether the claim holds;
- ``numbers``: copy the numbers a text gives into a Python list and check whether a value is among them;
- ``read``: read a given snippet and its printed output and say what it shows;
- ``chain``: recompute the claims of several sentences, each from the previous result, with variables.

The sentences come from the world's own corpus problems and steps (with random slips, so claims are
false about half the time); the outputs are what Python prints. Nothing here is the critique format
(no ``<analyze>``/``<verify>``/``<output>`` tags, no judgement, no boxed verdict), and nothing comes from
the pipeline's labels or test sets.
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Callable

from components.world.synthetic import WorldProblem, gold_steps, problem_text

SKILLS_SYSTEM_PROMPT = "You are a helpful assistant."
SKILLS_HELP = (
    "Fraction of the pretraining corpus that is generic skill documents (components/world/skills.py): "
    "short Python that recomputes a sentence's calculation and its printed output, reading an output to "
    "say whether a claim holds, copying numbers from text into code. Never the critique format."
)
_OPS: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
_CLAIM = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")

Document = tuple[list[dict[str, str]], str]


def python_value(left: int, op: str, right: int) -> str:
    """What ``print(left op right)`` prints in Python (``/`` gives a float: ``12 / 3`` prints ``4.0``)."""
    return str(_OPS[op](left, right))


def code_and_output(code: str, output: str) -> str:
    """A fenced Python snippet followed by its printed output."""
    return f"```python\n{code}\n```\nOutput:\n```\n{output}\n```"


def _claims(step: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in _CLAIM.findall(step)]


def _maybe_slipped(step: str, rng: random.Random) -> str:
    """The step, or half the time with its first claim's result off by a little."""
    found = _CLAIM.search(step)
    if found is None or rng.random() < 0.5:
        return step
    result = int(found.group(4))
    wrong = rng.choice([v for v in (result - 2, result - 1, result + 1, result + 2) if v >= 0])
    return step[: found.start(4)] + str(wrong) + step[found.end(4) :]


def compute(problem: WorldProblem, rng: random.Random) -> tuple[str, str]:
    """Recompute one step's calculation with Python and state the value."""
    step = _maybe_slipped(rng.choice(gold_steps(problem)), rng)
    left, op, right, _ = _claims(step)[0]
    value = python_value(left, op, right)
    answer = code_and_output(f"print({left} {op} {right})", value)
    return f"Compute {left} {op} {right} with Python.", f"{answer}\n{left} {op} {right} is {value}."


def claim(problem: WorldProblem, rng: random.Random) -> tuple[str, str]:
    """Copy a sentence's claim into code, read the printed truth value, and say whether it holds."""
    step = _maybe_slipped(rng.choice(gold_steps(problem)), rng)
    left, op, right, result = _claims(step)[0]
    holds = _OPS[op](left, right) == result
    code = f"print({left} {op} {right} == {result})"
    verdict = "holds" if holds else f"does not hold: {left} {op} {right} is {python_value(left, op, right)}"
    reading = f"The output is {holds}, so {left} {op} {right} = {result} {verdict}."
    prompt = f"Use Python to check the calculation in this sentence.\n{step}"
    return prompt, f"{code_and_output(code, str(holds))}\n{reading}"


def numbers(problem: WorldProblem, rng: random.Random) -> tuple[str, str]:
    """Copy the numbers of a text into a list and check whether a value is one of them."""
    text = problem_text(problem)
    given = [int(n) for n in re.findall(r"\d+", text)]
    value = rng.choice(given) if rng.random() < 0.5 else rng.choice(problem.values[1:] or (0,))
    present = value in given
    code = f"numbers = [{', '.join(map(str, given))}]\nprint({value} in numbers)"
    says = "is" if present else "is not"
    return (
        f"Is {value} one of the numbers given in this text? Check with Python.\n{text}",
        f"{code_and_output(code, str(present))}\nThe output is {present}: {value} {says} given in the text.",
    )


def read(problem: WorldProblem, rng: random.Random) -> tuple[str, str]:
    """Read a snippet and its output; say whether the claim it tests holds."""
    step = _maybe_slipped(rng.choice(gold_steps(problem)), rng)
    left, op, right, result = _claims(step)[0]
    holds = _OPS[op](left, right) == result
    shown = code_and_output(f"print({left} {op} {right} == {result})", str(holds))
    word = "true" if holds else "false"
    return (
        f"This code was run:\n{shown}\nDoes {left} {op} {right} = {result} hold?",
        f"The printed output is {holds}, so the claim {left} {op} {right} = {result} is {word}.",
    )


def chain(problem: WorldProblem, rng: random.Random) -> tuple[str, str]:
    """Recompute the claims of a few consecutive steps with one variable, each from the previous result."""
    chosen = [_maybe_slipped(s, rng) for s in gold_steps(problem)[: rng.randint(2, len(problem.operations))]]
    value: int | float = problem.start
    lines, outputs, notes = [f"value = {problem.start}"], [], []
    for step in chosen:
        _, op, operand, stated = _claims(step)[0]
        value = _OPS[op](value, operand)
        lines += [f"value = value {op} {operand}", f"print(value, value == {stated})"]
        outputs.append(f"{value} {value == stated}")
        notes.append(f"{stated} is right" if value == stated else f"{stated} is wrong, it is {value}")
    prompt = f"Recompute each result with Python.\n{problem_text(problem)}\n" + "\n".join(chosen)
    answer = code_and_output("\n".join(lines), "\n".join(outputs))
    return prompt, f"{answer}\n" + "; ".join(notes) + "."


SKILLS: tuple[Callable[[WorldProblem, random.Random], tuple[str, str]], ...] = (
    compute,
    claim,
    numbers,
    read,
    chain,
)


def skill_document(problem: WorldProblem, rng: random.Random) -> Document:
    """One generic skill document on ``problem``: (system + user messages, the assistant's answer)."""
    user, answer = rng.choice(SKILLS)(problem, rng)
    return [{"role": "system", "content": SKILLS_SYSTEM_PROMPT}, {"role": "user", "content": user}], answer
