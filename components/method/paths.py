"""A sampled solution path, graded: its text, steps, final answer, correctness and validity.

The rollout stage and the benchmark's Best-of-N both grade policy samples with :func:`make_path`, so a
path means the same thing wherever it is sampled (DESIGN.md §3 Rollout).
"""

from __future__ import annotations

from dataclasses import dataclass

from components.backends.base import Sample
from components.data.records import StepSplit, split_steps


@dataclass(frozen=True)
class SampledPath:
    """One sampled solution of a problem, graded; ``index`` is its position among the problem's paths."""

    index: int
    round: int
    text: str
    steps: list[str]
    answer: str | None
    correct: bool
    valid: bool
    finish_reason: str
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0


def make_path(index: int, round_: int, sample: Sample, gold: str, mode: StepSplit) -> SampledPath:
    """Grade one sample: text = prefill + generated text, its steps, answer, correctness, validity."""
    from components.method.grading import extract_answer, is_equivalent
    from components.method.prompts import STEP_PREFILL

    text = STEP_PREFILL + sample.text
    steps = split_steps(text, mode)
    answer = extract_answer(text)
    return SampledPath(
        index=index,
        round=round_,
        text=text,
        steps=steps,
        answer=answer,
        correct=is_equivalent(gold, answer),
        valid=sample.finish_reason == "stop" and len(steps) >= 2,
        finish_reason=sample.finish_reason,
        num_prompt_tokens=sample.num_prompt_tokens,
        num_generated_tokens=sample.num_generated_tokens,
    )


def given_path(steps: list[str], gold: str) -> SampledPath:
    """A solution given as steps (not sampled), graded like a sampled one; it stopped by itself."""
    from components.method.grading import extract_answer, is_equivalent
    from components.method.prompts import solution_text

    text = solution_text(steps)
    answer = extract_answer(text)
    correct = is_equivalent(gold, answer)
    return SampledPath(0, 0, text, list(steps), answer, correct, len(steps) >= 1, "stop")
