"""Best-of-N selection (DESIGN.md §3): pick one of N sampled solutions by their PRM step rewards.

A ``Candidate`` is one sampled solution: its extracted answer, whether that answer is right, and its step
rewards. Selectors, each returning whether the chosen answer is right:

- ``prm_last`` / ``prm_min`` / ``prm_mean``: the candidate with the highest solution score, where the score
  is the last, the smallest or the mean step reward;
- ``weighted_vote``: the answer whose candidates' scores (``vote_score``: last, min or mean) sum highest;
- ``majority``: the most frequent answer (no PRM);
- ``pass_at_n``: right if any candidate is right (an upper bound);
- ``random``: the expected accuracy of a uniform pick, i.e. the fraction of right candidates.

Votes group answers by math-verify equivalence (``components.method.grading.same_answer``): ``0.5``,
``1/2`` and ``\\frac{1}{2}`` are one answer, and the first one seen names the group.

Ties: among equal scores (or equal vote totals, or equal counts) the earliest candidate, or the answer
seen first, wins, so results never depend on dict or hash order. A candidate without an answer never
wins a vote, and its PRM score still counts for the PRM selectors (picking it is simply wrong).

    table = [[Candidate("7", True, [0.9, 0.8]), Candidate("5", False, [0.9, 0.2])]]
    accuracy(table, "prm_min")   # 1.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from components.method.grading import same_answer

Aggregate = Literal["last", "min", "mean"]
SELECTORS = ("prm_last", "prm_min", "prm_mean", "weighted_vote", "majority", "pass_at_n", "random")


@dataclass(frozen=True)
class Candidate:
    """One sampled solution: its answer (normalized; None if none), correctness and step rewards."""

    answer: str | None
    correct: bool
    rewards: tuple[float, ...] | list[float]


def answer_groups(candidates: Sequence[Candidate]) -> list[int | None]:
    """Each candidate's answer group (the index of the first equivalent answer seen); None: no answer."""
    heads: list[str] = []
    groups: list[int | None] = []
    for candidate in candidates:
        if candidate.answer is None:
            groups.append(None)
            continue
        group = next((k for k, head in enumerate(heads) if same_answer(head, candidate.answer)), None)
        if group is None:
            heads.append(candidate.answer)
            group = len(heads) - 1
        groups.append(group)
    return groups


def solution_score(rewards: Sequence[float], how: Aggregate) -> float:
    """The solution's score from its step rewards; 0 for a solution with no steps."""
    if not rewards:
        return 0.0
    if how == "last":
        return float(rewards[-1])
    if how == "min":
        return float(min(rewards))
    return float(sum(rewards) / len(rewards))


def _argmax_first(values: Sequence[float]) -> int:
    best = 0
    for index, value in enumerate(values):
        if value > values[best]:
            best = index
    return best


def pick_by_score(candidates: Sequence[Candidate], how: Aggregate) -> Candidate:
    """The candidate with the highest score; the earliest on ties."""
    return candidates[_argmax_first([solution_score(c.rewards, how) for c in candidates])]


def _vote(candidates: Sequence[Candidate], weight: Callable[[Candidate], float]) -> bool:
    groups = answer_groups(candidates)
    totals: dict[int, float] = {}
    for candidate, group in zip(candidates, groups, strict=True):
        if group is not None:
            totals[group] = totals.get(group, 0.0) + weight(candidate)
    if not totals:
        return False
    order = sorted(totals)  # group index order: first seen first
    winner = order[_argmax_first([totals[g] for g in order])]
    return any(c.correct for c, g in zip(candidates, groups, strict=True) if g == winner)


def select(candidates: Sequence[Candidate], selector: str, vote_score: Aggregate = "min") -> float:
    """1.0 / 0.0 for whether ``selector`` picks a right answer (``random``: the expected value)."""
    if not candidates:
        raise ValueError("best-of-n: no candidates")
    if selector in ("prm_last", "prm_min", "prm_mean"):
        how: Aggregate = selector.removeprefix("prm_")  # type: ignore[assignment]
        return float(pick_by_score(candidates, how).correct)
    if selector == "weighted_vote":
        return float(_vote(candidates, lambda c: solution_score(c.rewards, vote_score)))
    if selector == "majority":
        return float(_vote(candidates, lambda c: 1.0))
    if selector == "pass_at_n":
        return float(any(c.correct for c in candidates))
    if selector == "random":
        return sum(c.correct for c in candidates) / len(candidates)
    raise ValueError(f"best-of-n: unknown selector {selector!r} (known: {', '.join(SELECTORS)})")


def accuracy(
    table: Sequence[Sequence[Candidate]], selector: str, n: int | None = None, vote_score: Aggregate = "min"
) -> float:
    """Mean over problems of ``select`` on each problem's first ``n`` candidates (all when None)."""
    if not table:
        return float("nan")
    return sum(select(list(row[: n or len(row)]), selector, vote_score) for row in table) / len(table)
