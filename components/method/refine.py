"""GenPRM as a critic: the refinement protocol of the paper (section 4.1, Table 2; DESIGN.md §3).

One turn, for each solution still open:

1. The critic scores the solution step by step. The first step whose reward is below 0.5 is flagged,
   with the text of that step's ``<analyze>`` block after its first colon (the paper's
   ``extract_after_first_colon``). No step below 0.5: the solution is accepted and is not refined again.
2. The policy gets its own conversation back with one more user turn,
   ``There might be some problem in this paragraph of your reasoning, please rethink and refine your
   answer:\\n>`` + step + ``\\n\\n`` + analysis, and writes a new solution (``Step 1: `` prefilled, as in
   every policy call), which replaces the old one.

Turns 2 and 3 (not in the paper's code; defined here): the refined solution is scored again, as a fresh
conversation (the problem, the refined solution, the feedback on it), never with the earlier turns in
context. Critics (``CRITICS``): ``genprm`` (the GenPRM with code execution and its analysis),
``direct`` (the direct GenPRM's verdicts: the flagged step, no analysis), ``self_refine`` (the policy
critiques its own solution in the GenPRM's format, no code execution, and gets the same feedback
prompt), ``none`` (no critic: every turn resamples the solution from the problem alone) and ``teacher``
(the program teacher's verdicts and analysis: a reference for what a near-perfect critic buys,
``components/method/teachercritic.py``; not in the default list).

    flags = flags_from_scores(scored, [steps...], with_analysis=True)
    messages = refine_messages(problem, solution_text(steps), feedback_text(flag))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from components.method.prompts import chat_messages, solution_text

Critic = Literal["genprm", "self_refine", "direct", "none", "teacher"]
CRITICS: tuple[Critic, ...] = ("genprm", "self_refine", "direct", "none", "teacher")
# The paper's feedback turn (policy_refine.py), word for word.
FEEDBACK_PROMPT = "".join(
    [
        "There might be some problem in this paragraph of your reasoning, ",
        "please rethink and refine your answer:\n",
    ]
)
WRONG_BELOW = 0.5
_ANALYZE = re.compile(r"<analyze>(.*?)(?:</analyze>|$)", re.DOTALL)


@dataclass(frozen=True)
class Flag:
    """The step a critic flags: its index, its text and the critic's analysis of it ('' for none)."""

    index: int
    step: str
    analysis: str


def analysis_after_colon(turn: str) -> str:
    """The ``<analyze>`` block of a critique turn after its first colon, stripped ('' without one)."""
    match = _ANALYZE.search(turn)
    if match is None:
        return ""
    body = match.group(1)
    colon = body.find(":")
    return body[colon + 1 :].strip() if colon >= 0 else ""


def first_flag(rewards: list[float], steps: list[str], critiques: list[str] | None) -> Flag | None:
    """The first step with reward below 0.5 and its analysis (None: every step judged right)."""
    for index, reward in enumerate(rewards):
        if reward < WRONG_BELOW:
            analysis = analysis_after_colon(critiques[index]) if critiques and index < len(critiques) else ""
            return Flag(index, steps[index], analysis)
    return None


def flags_from_scores(scored: list[Any], steps: list[list[str]], with_analysis: bool) -> list[Flag | None]:
    """One flag (or None) per scored solution (``ScoredSolution``), Pass@1 or Maj@N rewards alike."""
    return [
        first_flag(s.rewards(), st, s.critiques if with_analysis else None)
        for s, st in zip(scored, steps, strict=True)
    ]


def feedback_text(flag: Flag) -> str:
    """The paper's feedback turn for a flagged step."""
    text = FEEDBACK_PROMPT + ">" + flag.step + "\n\n"
    return text + flag.analysis if flag.analysis else text.rstrip("\n")


def refine_messages(problem: str, solution: str, feedback: str) -> list[dict[str, str]]:
    """The policy's conversation for a refinement: its prompt, its solution, the feedback."""
    return [
        *chat_messages(problem),
        {"role": "assistant", "content": solution},
        {"role": "user", "content": feedback},
    ]


def refine_conversation(problem: str, steps: list[str], flag: Flag) -> list[dict[str, str]]:
    """:func:`refine_messages` for a solution given as steps."""
    return refine_messages(problem, solution_text(steps), feedback_text(flag))
