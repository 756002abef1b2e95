"""Feedback conversations for the small world's pretraining: the policy learns to act on a critique.

A real instruction-tuned policy can revise a solution when told which paragraph may be wrong; the
small world's policy learns it from conversations of exactly the refinement protocol's shape
(``components/method/refine.py``): the problem, a solution, the feedback turn on one paragraph with a
short analysis, and the revised solution. They are made by the world's own generator from corpus
problems (never a test problem, never the pipeline's labels or rationales):

- an erroneous solution (one error of a kind drawn by the corpus's error mix, ``mistakes.draw_mistake``)
  flagged at its first wrong paragraph, revised into the gold solution;
- a correct solution flagged at a random paragraph (a critic's false alarm), "revised" into the same
  gold solution, so that feedback on a right solution does not break it.

The analysis names what the paragraph claims (as a critic's analysis does), never the correction.
"""

from __future__ import annotations

import random
import re
from typing import Any

from components.method.prompts import solution_text
from components.method.refine import Flag, refine_conversation
from components.world.mistakes import DEFAULT_KIND_WEIGHTS, draw_mistake
from components.world.synthetic import WorldProblem, gold_steps, problem_text

_CLAIM = re.compile(r"(\d+\s*[-+*/×÷]\s*\d+\s*=\s*\d+)")


def analysis_of(step: str) -> str:
    """A short analysis of a paragraph: what it claims, to be checked (never the correct value)."""
    claims = _CLAIM.findall(step)
    if not claims:
        return "The paragraph states no calculation; check that it follows from the problem."
    return f"The paragraph claims {' and '.join(claims)}. Check this calculation and its operands."


def feedback_example(
    problem: WorldProblem,
    rng: random.Random,
    world: Any,
    error_share: float = 0.6,
    kinds: dict[str, float] | None = None,
) -> tuple[list[dict[str, str]], str] | None:
    """(conversation up to the feedback turn, revised solution) for one corpus problem, or None.

    ``kinds`` weighs the error kinds of the erroneous solutions (default: every kind equally).
    """
    gold = gold_steps(problem)
    if rng.random() < error_share:
        mistake = draw_mistake(problem, rng, world, DEFAULT_KIND_WEIGHTS if kinds is None else kinds, tries=1)
        if mistake is None:
            return None
        steps, index = mistake.steps, mistake.label
    else:
        steps, index = gold, rng.randrange(len(gold))
    flag = Flag(index, steps[index], analysis_of(steps[index]))
    return refine_conversation(problem_text(problem), steps, flag), solution_text(gold)
