"""The execute-and-continue critique loop, batched across solutions (DESIGN.md §3, Rationale).

A :class:`Chain` is one critique conversation over one solution: for each step, the model continues the
assistant turn until it closes a code block (the ``CODE_STOP`` fence); the code runs in the chain's own
sandbox session (so the namespace persists across the steps of the solution), ``[Code Output]`` and the
output are appended, and generation goes on, at most ``max_rounds`` executions per step. The verdict ends
the turn; the next step's user turn follows.

:func:`run_chains` advances many chains in lockstep, one batched ``Backend.generate`` call per round, and
runs their code in a thread pool (the sandbox bounds how many snippets execute at once). The LLM teacher
(``components/method/teachers.py``) and the GenPRM scorer (``components/method/scorer.py``) are both built
on it::

    chains = [Chain(problem, steps) for problem, steps in solutions]
    run_chains(backend, chains, CritiqueSettings(max_tokens=256), sandbox=sandbox)
    [[turn.verdict for turn in chain.turns] for chain in chains]
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tqdm import tqdm

from components.backends.base import Backend, GenerationRequest, Sample, SamplingParams
from components.method.prompts import GENPRM_SYSTEM_PROMPT
from components.method.rationale import (
    CODE_STOP,
    code_blocks,
    code_output_block,
    conversation,
    execution_text,
    open_code,
    parse_verdict,
    verdict_probability,
)

if TYPE_CHECKING:
    from components.sandbox import Sandbox, Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CritiqueSettings:
    """How each turn is sampled and how many code rounds it may run."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    max_rounds: int = 2
    execute: bool = True
    logprobs: int | None = None
    seed: int | None = None
    system: str = GENPRM_SYSTEM_PROMPT

    def sampling(self, seed: int | None) -> SamplingParams:
        return SamplingParams(
            n=1,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            # Without execution nothing is fed back, so the model writes the whole turn in one go (its
            # own imagined output fences would otherwise look like a code block closing).
            stop=[CODE_STOP] if self.execute else [],
            seed=seed,
            logprobs=self.logprobs,
        )


@dataclass
class TurnResult:
    """One critiqued step: the assistant text, its verdict, the reward, and what ran."""

    text: str
    verdict: int | None
    rounds: int
    statuses: list[str]
    reward: float | None
    reward_source: str
    tokens: int


@dataclass
class Chain:
    """One critique conversation over one solution; ``turns`` fills up as it advances."""

    problem: str
    steps: list[str]
    turns: list[TurnResult] = field(default_factory=list)
    text: str = ""
    rounds: int = 0
    statuses: list[str] = field(default_factory=list)
    tokens: int = 0
    session: Session | None = None

    @property
    def done(self) -> bool:
        return len(self.turns) >= len(self.steps)

    def request(self, system: str) -> GenerationRequest:
        """The conversation so far with the open assistant turn as the prefill."""
        history = [turn.text for turn in self.turns]
        return GenerationRequest(
            messages=conversation(self.problem, self.steps, history, system), prefill=self.text
        )

    def advance(self, sample: Sample, settings: CritiqueSettings, sandbox: Sandbox | None) -> None:
        """Take one generated piece: run the code it opened, or close the turn."""
        self.tokens += sample.num_generated_tokens
        self.text += sample.text
        code = open_code(self.text) if settings.execute and sample.finish_reason == "stop" else None
        if code is not None and self.rounds < settings.max_rounds:
            self.rounds += 1
            self.text += CODE_STOP
            if sandbox is not None:
                if self.session is None:
                    self.session = sandbox.session()
                result = self.session.run(code)
                self.statuses.append(result.status)
                self.text += code_output_block(execution_text(result))
            return
        if not settings.execute:
            self.rounds = len(code_blocks(self.text))
        self._close_turn(sample)

    def _close_turn(self, last: Sample) -> None:
        verdict = parse_verdict(self.text)
        reward = verdict_probability(last)
        source = "logprobs" if reward is not None else "text"
        if reward is None and verdict is not None:
            reward = float(verdict)
        self.turns.append(
            TurnResult(self.text, verdict, self.rounds, self.statuses, reward, source, self.tokens)
        )
        self.text, self.rounds, self.statuses, self.tokens = "", 0, [], 0
        if self.done:
            self.close()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def run_chains(
    backend: Backend,
    chains: list[Chain],
    settings: CritiqueSettings,
    sandbox: Sandbox | None = None,
    threads: int = 4,
    desc: str = "critique",
) -> None:
    """Advance every chain to its end, one batched generation call per round.

    Each chain holds a sandbox session from its first code block to its end, so chains run in groups of
    at most ``sandbox.config.max_sessions``: more would wait for a session that only a finished chain
    frees, while every chain waits for the next generation round.
    """
    total = sum(len(chain.steps) for chain in chains)
    group = sandbox.config.max_sessions if sandbox is not None else max(1, len(chains))
    rounds = 0
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, tqdm(total=total, desc=desc) as bar:
            for start in range(0, len(chains), group):
                rounds += _run_group(backend, chains[start : start + group], settings, sandbox, pool, bar)
    finally:
        for chain in chains:
            chain.close()
    log.info("%s: %d chains, %d steps in %d generation rounds", desc, len(chains), total, rounds)


def _run_group(
    backend: Backend,
    chains: list[Chain],
    settings: CritiqueSettings,
    sandbox: Sandbox | None,
    pool: ThreadPoolExecutor,
    bar: tqdm,
) -> int:
    """Lockstep rounds over ``chains`` until all are done; returns the number of rounds."""
    round_ = 0
    while active := [chain for chain in chains if not chain.done]:
        seed = None if settings.seed is None else settings.seed + round_
        results = backend.generate([c.request(settings.system) for c in active], settings.sampling(seed))
        before = sum(len(c.turns) for c in active)
        samples = [result.samples[0] for result in results]
        list(
            pool.map(
                lambda pair: pair[0].advance(pair[1], settings, sandbox), zip(active, samples, strict=True)
            )
        )
        bar.update(sum(len(c.turns) for c in active) - before)
        round_ += 1
    return round_
