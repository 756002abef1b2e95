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

_VERDICT = re.compile(r"\\boxed\{\s*(Yes|No)\s*\}")
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
    """``[Code Output]`` and the fenced output, as appended after a code block ran."""
    return f"{OUTPUT_MARKER}\n\n```\n{output.rstrip()}\n```\n"


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


def parse_verdict(text: str) -> int | None:
    """1 for Yes, 0 for No, from the last ``\\boxed{Yes|No}`` after the last code output; None if none."""
    tail = text.rsplit(OUTPUT_MARKER, 1)[-1]
    tail = tail.split("```", 2)[-1] if OUTPUT_MARKER in text else tail
    found = _VERDICT.findall(tail)
    if not found:
        return None
    return 1 if found[-1] == "Yes" else 0


def code_blocks(text: str) -> list[str]:
    """Every closed ```python block of a turn, in order."""
    return _CODE_BLOCK.findall(text)


def open_code(text: str) -> str | None:
    """The code of a ```python block that was opened but not closed (generation stopped at its fence)."""
    start = text.rfind(CODE_OPEN)
    if start < 0 or CODE_CLOSE in text[start + len(CODE_OPEN) :]:
        return None
    return text[start + len(CODE_OPEN) :]


def verdict_probability(sample: Sample) -> float | None:
    """p(Yes) / (p(Yes) + p(No)) at the verdict token, from the sample's top-k logprobs; None if unknown.

    The verdict token is the generated token that covers the first letter of the last ``\\boxed{Yes|No}``;
    its alternatives are sorted into Yes and No by their text, which works whatever the tokenizer merged
    (``Yes``, ``{Yes``, ``Yes}`` ...).
    """
    if not sample.logprobs:
        return None
    matches = list(_VERDICT.finditer(sample.text))
    if not matches:
        return None
    target = matches[-1].start(1)
    offset = 0
    for token in sample.logprobs:
        end = offset + len(token.token)
        if offset <= target < end:
            return _yes_share(token.top or {token.token: token.logprob})
        offset = end
    return None


def _yes_share(top: dict[str, float]) -> float | None:
    yes = sum(math.exp(lp) for tok, lp in top.items() if "Yes" in tok or tok.strip() in ("Y", "Ye"))
    no = sum(math.exp(lp) for tok, lp in top.items() if "No" in tok or tok.strip() == "N")
    return yes / (yes + no) if yes + no > 0 else None
