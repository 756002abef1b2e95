"""The offline program teacher as a refinement critic: a reference for what a near-perfect critic buys.

The ``refine`` stage compares critics on the same policy samples (``components/method/refine.py``).
``teacher`` flags the first step the synthesize stage's program teacher judges wrong, with its analysis,
exactly as the GenPRM critic's verdict and ``<analyze>`` block are used: it separates the quality of the
critic from the policy's ability to act on feedback. It reads only the problem and the steps.

    genprm refine --set 'refine.critics=[teacher, genprm]'
"""

from __future__ import annotations

from components.method.scorer import ScoredSolution
from components.method.teachers import ProgramTeacher
from components.sandbox import Sandbox, SandboxConfig


class TeacherCritic:
    """A scorer-shaped wrapper: ``score`` returns one ``ScoredSolution`` per solution (1/0 per verdict)."""

    def __init__(self, sandbox: SandboxConfig, code_style: str = "claim", threads: int = 2) -> None:
        self.sandbox = Sandbox(sandbox)
        self.teacher = ProgramTeacher(self.sandbox, threads=threads, code_style=code_style)

    def score(
        self, solutions: list[tuple[str, list[str]]], samples: int = 1, desc: str = "teacher"
    ) -> list[ScoredSolution]:
        """The teacher's verdicts as rewards (None: its code failed); ``samples`` is ignored."""
        out = []
        for critique in self.teacher.critique(solutions):
            rewards = [None if v < 0 else float(v) for v in critique.verdicts]
            out.append(
                ScoredSolution(
                    samples=[rewards],
                    sources=["teacher"],
                    missing_verdicts=rewards.count(None),
                    critiques=critique.turns,
                    tokens=0,
                    code_runs=len(critique.statuses),
                    code_failures=sum(s != "ok" for s in critique.statuses),
                    missing_reward=1.0,
                )
            )
        return out

    def close(self) -> None:
        self.sandbox.close()
