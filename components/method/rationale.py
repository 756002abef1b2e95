"""The GenPRM rationale format (DESIGN.md §3): writing it, reading it, and the execute-and-continue loop.

One assistant turn critiques one paragraph (step) of a solution::

    <analyze>
    Let's analyze the Paragraph k step by step: ...
    </analyze>
    <verify>
    Let's use python code to find any potential error:
    ```python
    ...
    ```
    [Code Output]

    ```
    ...stdout of that code...
    ```
    </verify>
    <output>
    **Judgement**: $\\boxed{Yes}$
    </output>

The program teacher writes this format with :func:`format_turn`; the execute-and-continue loop that the
LLM teacher and the GenPRM scorer run lives in ``components/method/critique.py``. The conversation around
the turns
(system prompt, problem + step 1 as the first user turn, one user turn per later step) is
:func:`conversation`, shared by the SFT records, the teachers and the scorer.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from components.method.prompts import GENPRM_SYSTEM_PROMPT

if TYPE_CHECKING:
    from components.backends.base import Sample
    from components.sandbox import ExecutionResult

CODE_OPEN = "```python\n"
CODE_CLOSE = "\n```"
# The stop string ending a round: the fence closing a code block (an opening fence is followed by "python").
CODE_STOP = "\n```\n"
OUTPUT_MARKER = "[Code Output]"
VERIFY_INTRO = "Let's use python code to find any potential error:"
MAX_OUTPUT_CHARS = 2000

# A verdict: \boxed{Yes} or \boxed{No}; a cut-off "\boxed{Yes" still counts, "\boxed{Not ...}" does not.
_VERDICT = re.compile(r"\\boxed\{\s*(Yes|No)(?![A-Za-z])")
_VERDICT_WORD = re.compile(r"\s*(Yes|No)(?![A-Za-z])")
# What the paper's code prefills to read a verdict (genprm_inference.py); the model continues "{Yes}$".
VERDICT_PREFILL = "<output>\n**Judgement**: $\\boxed"
FENCE = "```"
FENCE_ESCAPED = "` ` `"
_CODE_BLOCK = re.compile(r"```python\n(.*?)\n```", re.DOTALL)


def user_turn(problem: str, steps: list[str], index: int) -> str:
    """The user turn presenting step ``index`` (0-based): the first also carries the problem."""
    return f"{problem}\n{steps[0]}" if index == 0 else steps[index]


def conversation(
    problem: str, steps: list[str], turns: list[str], system: str = GENPRM_SYSTEM_PROMPT
) -> list[dict[str, str]]:
    """System, then a user turn per step with the matching assistant turn from ``turns``.

    With ``len(turns) < len(steps)`` it ends on the user turn of the next step to critique.
    """
    messages = [{"role": "system", "content": system}]
    for index in range(min(len(turns) + 1, len(steps))):
        messages.append({"role": "user", "content": user_turn(problem, steps, index)})
        if index < len(turns):
            messages.append({"role": "assistant", "content": turns[index]})
    return messages


def verdict_text(correct: bool) -> str:
    """The ``<output>`` block with the judgement."""
    word = "Yes" if correct else "No"
    return f"<output>\n**Judgement**: $\\boxed{{{word}}}$\n</output>"


def code_output_block(output: str) -> str:
    """``[Code Output]`` and the fenced output, as appended after a code block ran.

    A fence printed by the code is written ``` ` ` ` ```: it would end the block early, for the model and
    for :func:`parse_verdict` alike, and let the code's output pass for the model's own words.
    """
    return f"{OUTPUT_MARKER}\n\n```\n{output.rstrip().replace(FENCE, FENCE_ESCAPED)}\n```\n"


def execution_text(result: ExecutionResult) -> str:
    """What the model sees of one execution: stdout, plus the error line or the reason it stopped."""
    out = result.stdout.rstrip()
    if result.status == "error":
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        out = "\n".join(filter(None, [out, lines[-1] if lines else "Error"]))
    elif result.status == "timeout":
        out = "\n".join(filter(None, [out, "TimeoutError: the code ran past its time limit"]))
    elif result.status == "killed":
        out = "\n".join(filter(None, [out, "Killed: the code exceeded a resource limit"]))
    if len(out) > MAX_OUTPUT_CHARS:
        out = out[:MAX_OUTPUT_CHARS] + "\n... (output truncated)"
    return out


def format_turn(paragraph: int, analysis: str, code_runs: list[tuple[str, str]], correct: bool | None) -> str:
    """A whole assistant turn: analysis, each (code, output) pair, and the verdict (none when None)."""
    verify = [VERIFY_INTRO]
    for code, output in code_runs:
        verify.append(f"{CODE_OPEN}{code.rstrip()}{CODE_CLOSE}\n{code_output_block(output)}".rstrip())
    return (
        f"<analyze>\nLet's analyze the Paragraph {paragraph} step by step: {analysis.strip()}\n</analyze>\n"
        f"<verify>\n"
        + "\n".join(verify)
        + "\n</verify>"
        + ("" if correct is None else "\n" + verdict_text(correct))
    )


def after_last_output(text: str) -> int:
    """Where the text after the last ``[Code Output]`` block starts (0 when there is none).

    The block is ``[Code Output]`` + blank line + a fenced output; the output holds no fence (see
    :func:`code_output_block`), so the block ends at the first fence after its opening one.
    """
    start = text.rfind(OUTPUT_MARKER)
    if start < 0:
        return 0
    opening = text.find(FENCE, start + len(OUTPUT_MARKER))
    if opening < 0:
        return len(text)
    closing = text.find(FENCE, opening + len(FENCE))
    return len(text) if closing < 0 else closing + len(FENCE)


def iter_verdicts(text: str, start: int = 0) -> list[re.Match[str]]:
    """Every ``\\boxed{Yes|No}`` of ``text`` from ``start`` on, in order; group 1 is the word."""
    return list(_VERDICT.finditer(text, start))


def find_verdict(text: str, start: int = 0) -> re.Match[str] | None:
    """The last ``\\boxed{Yes|No}`` of ``text`` from ``start`` on; its group 1 is the word."""
    found = iter_verdicts(text, start)
    return found[-1] if found else None


def parse_verdict(text: str) -> int | None:
    """1 for Yes, 0 for No, from the last ``\\boxed{Yes|No}`` after the last code output; None if none.

    Text inside a code output block never counts: a snippet that prints a fence and ``\\boxed{Yes}``
    does not judge the step. (The critique loop knows exactly which text the model wrote and reads the
    verdict from that alone; this reads a stored turn.)
    """
    match = find_verdict(text, after_last_output(text))
    if match is None:
        return None
    return 1 if match.group(1) == "Yes" else 0


def code_blocks(text: str) -> list[str]:
    """Every closed ```python block of a turn, in order."""
    return _CODE_BLOCK.findall(text)


def open_code(text: str) -> str | None:
    """The code of a ```python block that was opened but not closed (generation stopped at its fence)."""
    start = text.rfind(CODE_OPEN)
    if start < 0 or CODE_CLOSE in text[start + len(CODE_OPEN) :]:
        return None
    return text[start + len(CODE_OPEN) :]


def verdict_probability(sample: Sample, context: str = "") -> float | None:
    """p(Yes) / (p(Yes) + p(No)) at the verdict token, from the sample's top-k logprobs; None if unknown.

    The verdict is the last ``\\boxed{Yes|No}`` whose word the sample generated; ``context`` is the text
    just before the sample (a prefill ending in ``\\boxed``, say). It is found in the sample's token
    texts themselves, not at an offset of ``sample.text``: a token holding part of a multi-byte character
    decodes differently alone, which would shift every later offset.

    The verdict token is the one covering the word's first letter. Its alternatives that continue the same
    text (the token's characters before the letter, e.g. ``{``) with the word ``Yes`` or ``No`` followed by
    no letter are summed: ``{No}``, `` No`` and ``No`` count as No, ``Not``, ``None`` and ``Now`` do not.
    A side missing from the top-k gets the smallest top-k probability (the paper's code), so a confident
    Yes is near 1, not exactly 1, when k > 1.
    """
    if not sample.logprobs:
        return None
    tail = context[-32:]
    joined = tail + "".join(token.token for token in sample.logprobs)
    match = find_verdict(joined)
    if match is None or match.start(1) < len(tail):
        return None
    target = match.start(1) - len(tail)
    offset = 0
    for token in sample.logprobs:
        end = offset + len(token.token)
        if offset <= target < end:
            return _yes_share(token.token[: target - offset], {**token.top, token.token: token.logprob})
        offset = end
    return None


def verdict_word(text: str) -> str | None:
    """``Yes`` or ``No`` when ``text`` starts (after spaces) with that word and no letter follows it."""
    match = _VERDICT_WORD.match(text)
    return match.group(1) if match else None


def _yes_share(lead: str, top: dict[str, float]) -> float | None:
    """The Yes share among the alternatives ``top`` of a verdict token; ``lead``: its text before the word."""
    words = {tok: verdict_word(tok[len(lead) :]) if tok.startswith(lead) else None for tok in top}
    yes = [lp for tok, lp in top.items() if words[tok] == "Yes"]
    no = [lp for tok, lp in top.items() if words[tok] == "No"]
    if not yes and not no:
        return None
    if len(top) > 1:  # the paper's floor for a side missing from the top-k
        floor = min(top.values())
        yes, no = yes or [floor], no or [floor]
    p_yes, p_no = sum(math.exp(lp) for lp in yes), sum(math.exp(lp) for lp in no)
    return p_yes / (p_yes + p_no)
