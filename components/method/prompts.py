"""Prompts shared across stages (DESIGN.md §3): the policy's rollout prompt and the GenPRM's system turn."""

from __future__ import annotations

POLICY_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
STEP_PREFILL = "Step 1: "
GENPRM_SYSTEM_PROMPT = (
    "You are a math teacher. Your task is to review and critique the paragraphs in solution step by step."
)


def chat_messages(problem: str) -> list[dict[str, str]]:
    """The rollout prompt: the policy's system prompt and the problem as the user turn."""
    return [{"role": "system", "content": POLICY_SYSTEM_PROMPT}, {"role": "user", "content": problem}]


def solution_text(steps: list[str]) -> str:
    """Steps joined with ``Step k:`` markers: what the policy writes, starting with the prefill."""
    return "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, start=1))
