"""Teachers: whoever writes the per-step critiques with code that the GenPRM learns from (DESIGN.md §4).

Two implementations behind one interface, picked from the plain dict ``TEACHERS``:

- ``program``: reads only the problem text and the steps (never the generator's hidden truth). For each
  step it writes Python that recomputes every arithmetic claim, runs it in the sandbox, and judges the
  step from the printed output. Two code styles (``code_style``):

  - ``claim``: one ``print(a op b == c)`` per claim, so each number of the step is copied once into
    the code and the output the verdict rests on is a lone ``True``/``False`` just above it;
  - ``provenance``: also checks that each operand is a number from the problem or a result verified in
    an earlier paragraph (one session per solution: the set of known values carries across steps). It
    catches a wrong operand, at the price of copying the problem's numbers and every operand two or
    three more times, which a small GenPRM gets wrong (see README, "How good the small-world GenPRM is").

  Both miss logic errors that keep the arithmetic right (e.g. a wrong operation), as real teachers do; the
  consensus filter against the RPE labels catches those.
- ``llm``: the paper's prompt through any generation backend, with the execute-and-continue loop of
  ``components/method/critique.py``. A step without a parseable verdict is recorded as -1 and the solution is
  dropped by the filter, never guessed.

    teacher = make_teacher(cfg.teacher, sandbox)
    critiques = teacher.critique([(problem, steps), ...])
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from tqdm import tqdm

from components.backends.base import BackendConfig, make_backend
from components.method.critique import Chain, CritiqueSettings, TurnResult, run_chains
from components.method.prompts import GENPRM_SYSTEM_PROMPT
from components.method.rationale import execution_text, format_turn
from components.platform.config import option, section
from components.platform.errors import ConfigError

if TYPE_CHECKING:
    from components.sandbox import Sandbox, Session

TEACHER_INSTRUCTIONS = (
    " For each paragraph, first analyze it inside <analyze></analyze>. Then inside <verify></verify> write "
    "Python code in a ```python block that checks every calculation and every number the paragraph uses; "
    "the code will be run and its output shown after [Code Output]. Finally give your judgement inside "
    "<output></output> as **Judgement**: $\\boxed{Yes}$ if the paragraph is correct or $\\boxed{No}$ if not."
)

_NUMBER = r"-?\d+(?:\.\d+)?"
_CLAIM = re.compile(rf"({_NUMBER})\s*([-+*/×x÷])\s*({_NUMBER})\s*=\s*({_NUMBER})")
_BOXED = re.compile(rf"\\boxed\{{\s*({_NUMBER})\s*\}}")
_OPS = {"×": "*", "x": "*", "÷": "/"}


@dataclass(frozen=True)
class TeacherConfig:
    """Which teacher writes the rationales, and how it samples when it is a model."""

    kind: Literal["program", "llm"] = option(
        "program", help="program: the offline code teacher; llm: a model."
    )
    code_style: Literal["claim", "provenance"] = option(
        "claim",
        help="program only: claim (print(a op b == c) per claim) | provenance (also checks each operand "
        "is a problem number or an earlier verified result; three times the copying)",
    )
    model: BackendConfig = section(BackendConfig, help="llm only: the teacher model (paper: QwQ-32B).")
    temperature: float = option(0.0, help="llm only: sampling temperature of the critiques.")
    max_tokens: int = option(1024, help="llm only: tokens per generation round.")
    max_rounds: int = option(3, help="Code executions allowed per step before the verdict.")
    threads: int = option(4, help="Solutions critiqued (or code blocks run) concurrently.")

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.max_rounds < 1 or self.threads < 1:
            raise ConfigError("synthesize.teacher: max_tokens, max_rounds and threads must be at least 1")
        if self.temperature < 0:
            raise ConfigError("synthesize.teacher.temperature: must be >= 0")


@dataclass
class Critique:
    """A teacher's rationale for one solution: a turn, verdict (1/0, -1 unparseable) and rounds per step."""

    turns: list[str]
    verdicts: list[int]
    rounds: list[int]
    statuses: list[str]

    @classmethod
    def from_turns(cls, turns: list[TurnResult]) -> Critique:
        return cls(
            turns=[t.text for t in turns],
            verdicts=[-1 if t.verdict is None else t.verdict for t in turns],
            rounds=[t.rounds for t in turns],
            statuses=[status for t in turns for status in t.statuses],
        )


class Teacher(Protocol):
    name: str

    def critique(self, solutions: list[tuple[str, list[str]]]) -> list[Critique]: ...


# --------------------------------------------------------------------------------------------- program


def _num(text: str) -> str:
    """A number as Python source (ints stay ints; 4.0 stays a float)."""
    return text.lstrip("+")


def problem_numbers(problem: str) -> list[str]:
    """Every number written in the problem text, in order, without repeats."""
    return list(dict.fromkeys(_num(n) for n in re.findall(_NUMBER, problem)))


def claim_code(step: str) -> tuple[str, str]:
    """The analysis and the code of the ``claim`` style: each claim printed as one truth value."""
    claims = [(f"{_num(a)} {_OPS.get(op, op)} {_num(b)}", _num(c)) for a, op, b, c in _CLAIM.findall(step)]
    if not claims:
        return "The paragraph states no calculation.", 'print("no calculation to check")'
    described = " and ".join(f"{expr} = {result}" for expr, result in claims)
    lines = [f"print({expr} == {result})" for expr, result in claims]
    return f"The paragraph claims {described}. Recompute each calculation with Python.", "\n".join(lines)


def step_code(problem: str, step: str, first: bool, style: str = "claim") -> tuple[str, str]:
    """The analysis and the verification code for one step, in the ``claim`` or ``provenance`` style."""
    if style == "claim":
        return claim_code(step)
    lines: list[str] = []
    if first:
        given = ", ".join(problem_numbers(problem)) or ""
        lines.append(f"known = {{{given}}}  # numbers given in the problem" if given else "known = set()")
    claims = _CLAIM.findall(step)
    described = []
    for left, op, right, result in claims:
        op = _OPS.get(op, op)
        expr, left, right, result = f"{_num(left)} {op} {_num(right)}", _num(left), _num(right), _num(result)
        described.append(f"{expr} = {result}")
        lines += [
            f"check = {expr} == {result}",
            f"source = {{{left}, {right}}} <= known",
            f'print(f"{expr} == {result}: {{check}}; operands known: {{source}}")',
            "if check and source:",
            f"    known.add({result})",
        ]
    boxed = _BOXED.findall(step)
    if boxed:
        answer = _num(boxed[-1])
        lines.append(f'print(f"answer {answer} is a verified result: {{{answer} in known}}")')
    if not claims and not boxed:
        lines.append('print("no calculation to check")')
    analysis = _analysis(described, boxed)
    return analysis, "\n".join(lines)


def _analysis(claims: list[str], boxed: list[str]) -> str:
    what = "claims " + " and ".join(claims) if claims else "states no calculation"
    parts = [
        f"The paragraph {what}.",
        "Recompute each calculation and check that every operand is a number from the problem or a "
        "result verified in an earlier paragraph.",
    ]
    if boxed:
        parts.append(f"It gives the final answer {boxed[-1]}, which must be a verified result.")
    return " ".join(parts)


def judge_output(output: str) -> int:
    """The verdict from the printed checks: any False means the paragraph is wrong."""
    return 0 if "False" in output else 1


class ProgramTeacher:
    """The offline teacher: code that recomputes claims and checks operand provenance, run in the sandbox."""

    name = "program"

    def __init__(self, sandbox: Sandbox, threads: int = 4, code_style: str = "claim") -> None:
        self.sandbox = sandbox
        self.threads = threads
        self.code_style = code_style

    def critique(self, solutions: list[tuple[str, list[str]]]) -> list[Critique]:
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            jobs = pool.map(lambda item: self.critique_one(*item), solutions)
            return list(tqdm(jobs, total=len(solutions), desc="program teacher"))

    def critique_one(self, problem: str, steps: list[str]) -> Critique:
        turns, verdicts, statuses = [], [], []
        with self.sandbox.session() as session:
            for index, step in enumerate(steps):
                turn, verdict, status = self._turn(session, problem, step, index)
                turns.append(turn)
                verdicts.append(verdict)
                statuses.append(status)
        return Critique(turns=turns, verdicts=verdicts, rounds=[1] * len(steps), statuses=statuses)

    def _turn(self, session: Session, problem: str, step: str, index: int) -> tuple[str, int, str]:
        analysis, code = step_code(problem, step, first=index == 0, style=self.code_style)
        result = session.run(code)
        output = execution_text(result)
        # A run that did not finish gives no evidence: no verdict, and the filter drops the solution.
        verdict = judge_output(output) if result.status == "ok" else -1
        turn = format_turn(index + 1, analysis, [(code, output)], None if verdict < 0 else verdict == 1)
        return turn, verdict, result.status


# ------------------------------------------------------------------------------------------------- llm


class LLMTeacher:
    """The paper's prompt through a generation backend, with code executed between rounds."""

    name = "llm"

    def __init__(self, cfg: TeacherConfig, sandbox: Sandbox) -> None:
        self.cfg = cfg
        self.sandbox = sandbox

    def critique(self, solutions: list[tuple[str, list[str]]]) -> list[Critique]:
        settings = CritiqueSettings(
            temperature=self.cfg.temperature,
            max_tokens=self.cfg.max_tokens,
            max_rounds=self.cfg.max_rounds,
            system=GENPRM_SYSTEM_PROMPT + TEACHER_INSTRUCTIONS,
            seed=0,
        )
        chains = [Chain(problem, steps) for problem, steps in solutions]
        with make_backend(self.cfg.model) as backend:
            run_chains(backend, chains, settings, self.sandbox, self.cfg.threads, desc="llm teacher")
        return [Critique.from_turns(chain.turns) for chain in chains]


TEACHERS: dict[str, Callable[[TeacherConfig, Sandbox], Teacher]] = {
    "program": lambda cfg, sandbox: ProgramTeacher(sandbox, cfg.threads, cfg.code_style),
    "llm": LLMTeacher,
}


def make_teacher(cfg: TeacherConfig, sandbox: Sandbox) -> Teacher:
    """The configured teacher, picked from ``TEACHERS``."""
    return TEACHERS[cfg.kind](cfg, sandbox)
