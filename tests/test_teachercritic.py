"""The program teacher as a refinement critic: it flags the first slip, with the teacher's analysis."""

from __future__ import annotations

from components.method.refine import flags_from_scores
from components.method.teachercritic import TeacherCritic
from components.sandbox import SandboxConfig

PROBLEM = "A tank holds 7 liters of water. Uma drains 3 liters. Then a pipe adds 5 liters. How many liters?"
RIGHT = [
    "Removing 3 liters leaves 7 - 3 = 4 liters.",
    "Adding 5 gives 4 + 5 = 9 liters. The answer is \\boxed{9}.",
]
SLIP = [
    "Removing 3 liters leaves 7 - 3 = 4 liters.",
    "Adding 5 gives 4 + 5 = 8 liters. The answer is \\boxed{8}.",
]


def test_teacher_critic_flags_the_slip_and_accepts_the_right_solution() -> None:
    critic = TeacherCritic(SandboxConfig(workers=1))
    try:
        scored = critic.score([(PROBLEM, RIGHT), (PROBLEM, SLIP)], samples=4)
    finally:
        critic.close()
    assert [s.rewards(1) for s in scored] == [[1.0, 1.0], [1.0, 0.0]]
    right, slip = flags_from_scores(scored, [RIGHT, SLIP], with_analysis=True)
    assert right is None
    assert slip is not None and slip.index == 1 and slip.step == SLIP[1]
    assert slip.analysis.startswith("The paragraph claims 4 + 5 = 8.")
