"""The critique-refine loop over turns, for many problems at once (the protocol: ``method/refine.py``).

Every policy call and every critique of one turn go to the backend together (one batched call for
the policy, one scorer pass for the critic), so a turn costs two rounds of batched generation.

    initial = sample_solutions(policy, problems, settings)             # turn 0, shared by every critic
    rows = run_critic(policy, "genprm", scorer, problems, initial, settings)
    summary = summarize(rows, settings.turns)                          # accuracy per turn, flag rates
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from components.backends.base import Backend, GenerationRequest, SamplingParams
from components.data.journal import unit_seed
from components.data.records import Problem
from components.method.paths import SampledPath, make_path
from components.method.prompts import STEP_PREFILL, chat_messages
from components.method.refine import Flag, feedback_text, flags_from_scores, refine_conversation


@dataclass(frozen=True)
class LoopSettings:
    """Policy sampling and the number of turns."""

    turns: int = 3
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_tokens: int = 160
    critic_samples: int = 1
    seed: int = 0


def _generate(
    policy: Backend,
    problems: Sequence[Problem],
    messages: list[list[dict[str, str]]],
    s: LoopSettings,
    tag: str,
) -> list[SampledPath]:
    """One policy sample per conversation (``Step 1: `` prefilled), graded against each problem's gold."""
    params = SamplingParams(
        n=1, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens, seed=s.seed
    )
    requests = [
        GenerationRequest(messages=m, prefill=STEP_PREFILL, seed=unit_seed(s.seed, tag, p.id))
        for p, m in zip(problems, messages, strict=True)
    ]
    results = policy.generate(requests, params) if requests else []
    return [
        make_path(0, 0, r.samples[0], p.answer, "step_marker") for p, r in zip(problems, results, strict=True)
    ]


def sample_solutions(
    policy: Backend, problems: Sequence[Problem], s: LoopSettings, tag: str = "turn0"
) -> list[SampledPath]:
    """A fresh solution of every problem from its prompt alone."""
    return _generate(policy, problems, [chat_messages(p.problem) for p in problems], s, tag)


def critic_flags(
    scorer: Any, problems: Sequence[Problem], paths: Sequence[SampledPath], analysis: bool, s: LoopSettings
) -> list[Flag | None]:
    """The first step each solution's critic scores below 0.5 (None: accepted); no steps: no flag."""
    scorable = [i for i, path in enumerate(paths) if path.steps]
    scored = scorer.score(
        [(problems[i].problem, paths[i].steps) for i in scorable], s.critic_samples, desc="critic"
    )
    flags: list[Flag | None] = [None] * len(paths)
    for i, flag in zip(
        scorable, flags_from_scores(scored, [paths[i].steps for i in scorable], analysis), strict=True
    ):
        flags[i] = flag
    return flags


def _row(
    problem: Problem,
    turn: int,
    path: SampledPath,
    flag: Flag | None,
    critiqued: bool,
    refined: bool,
    was: bool,
) -> dict[str, Any]:
    """One problem at one turn: its current solution, and what the critic and the policy did."""
    return {
        "problem_id": problem.id,
        "turn": turn,
        "text": path.text,
        "answer": path.answer,
        "correct": path.correct,
        "flagged": flag is not None,
        "flagged_step": None if flag is None else flag.index,
        "feedback": None if flag is None else feedback_text(flag),
        "critiqued": critiqued,
        "refined": refined,
        "right_to_wrong": bool(refined and was and not path.correct),
        "wrong_to_right": bool(refined and not was and path.correct),
    }


def run_critic(
    policy: Backend,
    critic: str,
    scorer: Any,
    problems: Sequence[Problem],
    initial: Sequence[SampledPath],
    s: LoopSettings,
) -> list[dict[str, Any]]:
    """Rows of every problem at every turn (0..turns) under ``critic`` (``scorer`` None for ``none``).

    A solution the critic accepts is final; ``none`` resamples every solution every turn.
    """
    current = list(initial)
    open_ = [True] * len(problems)
    rows = [
        _row(p, 0, path, None, False, False, path.correct) for p, path in zip(problems, current, strict=True)
    ]
    for turn in range(1, s.turns + 1):
        live = [i for i in range(len(problems)) if open_[i]]
        if critic == "none":
            flags: list[Flag | None] = [None] * len(problems)
            fresh = sample_solutions(policy, [problems[i] for i in live], s, f"none{turn}")
            refined = dict(zip(live, fresh, strict=True))
        else:
            found = critic_flags(
                scorer, [problems[i] for i in live], [current[i] for i in live], critic != "direct", s
            )
            flags = [None] * len(problems)
            for i, flag in zip(live, found, strict=True):
                flags[i], open_[i] = flag, flag is not None
            todo = [i for i in live if flags[i] is not None]
            convs = [refine_conversation(problems[i].problem, current[i].steps, flags[i]) for i in todo]  # type: ignore[arg-type]
            refined = dict(
                zip(
                    todo,
                    _generate(policy, [problems[i] for i in todo], convs, s, f"{critic}{turn}"),
                    strict=True,
                )
            )
        for i, problem in enumerate(problems):
            was = current[i].correct
            if i in refined:
                current[i] = refined[i]
            critiqued = critic != "none" and i in live
            rows.append(_row(problem, turn, current[i], flags[i], critiqued, i in refined, was))
    return rows


def summarize(rows: list[dict[str, Any]], turns: int) -> dict[str, Any]:
    """Accuracy (%) per turn, and how often the critic flagged and a refinement broke a right answer."""
    by_turn = {t: [r for r in rows if r["turn"] == t] for t in range(turns + 1)}
    accuracy = {f"turn_{t}": _pct(sum(r["correct"] for r in rs), len(rs)) for t, rs in by_turn.items()}
    critiqued = [r for r in rows if r["critiqued"]]
    refined = [r for r in rows if r["refined"]]
    return {
        "accuracy": accuracy,
        "critiques": len(critiqued),
        "flag_rate": _pct(sum(r["flagged"] for r in critiqued), len(critiqued)),
        "refinements": len(refined),
        "right_to_wrong": _pct(sum(r["right_to_wrong"] for r in refined), len(refined)),
        "wrong_to_right": _pct(sum(r["wrong_to_right"] for r in refined), len(refined)),
    }


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0
