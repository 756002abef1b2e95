"""The GenPRM scorer: step rewards for a problem and its steps, with code execution (DESIGN.md §3).

For every solution the scorer runs the per-step critique conversation (``components/method/critique.py``): the
model writes its analysis and code, generation stops at the closing code fence, the code runs in the
sandbox (one session per solution and sample), ``[Code Output]`` is appended, generation continues (at
most ``max_rounds`` executions per step), and the verdict is read.

- Reward of a step = p(Yes) / (p(Yes) + p(No)) at the verdict token, from the backend's top-k logprobs,
  read from the generated piece that holds the verdict. Where a backend gives no logprobs (e.g.
  ``transformers serve``), the reward is 1 / 0 from the verdict text. Each turn says which
  (``reward_source``: logprobs, verdict_text, none), and every ``ScoredSolution`` counts them.
- Missing verdicts. A turn that ends without one gets the paper's forced verdict round (see
  ``components/method/critique.py``), so a verdict is missing only when the model answers neither Yes nor
  No even then. Such a sample is left out of the Maj@N mean of its step (the step's reward is the mean
  over the samples that judged it); a step that no sample judged scores ``missing_verdict_reward``, by
  default 0.0: a step the GenPRM could not verify is not vouched for, so failures count as wrong, never
  as correct. (The paper's code gives 0.5, which the "wrong if < 0.5" rule reads as correct: set
  ``missing_verdict_reward: 0.5`` to reproduce it.) The benchmark reports the missing-verdict rate and
  the reward sources, and ``register`` rejects a version above ``register.max_missing_verdict_rate``.
- Maj@N: N sampled critique conversations per solution, each with its own seed (derived from
  ``seed``, the solution's text and the sample index); a step's reward is the mean over them. The first
  of the N samples alone is Pass@1, so one run with N samples gives every Maj@n for n <= N.
- ``execute=False`` is the no-code ablation: the model writes its code and imagines the output.
- All solutions and samples advance together in batched generation calls.

    scorer = GenPRMScorer(cfg)                      # loads cfg.model, starts the sandbox
    [scored] = scorer.score([(problem, steps)], samples=8)
    scored.rewards(4)                                # Maj@4 step rewards
    scorer.close()
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from components.backends.base import BackendConfig, derive_seed, make_backend
from components.method.critique import Chain, CritiqueSettings, Decoding, Loop, run_chains
from components.platform.config import option, section
from components.platform.errors import ConfigError
from components.sandbox import SandboxConfig

if TYPE_CHECKING:
    from components.backends.base import Backend
    from components.sandbox import Sandbox

log = logging.getLogger(__name__)

NO_VERDICT_REWARD = 0.0
"""The default reward of a step no sample judged (``ScorerConfig.missing_verdict_reward``)."""
REWARD_SOURCES = ("logprobs", "verdict_text", "none")


@dataclass(frozen=True)
class ScorerConfig:
    """How a GenPRM scores steps: the model, sampling of the critiques, and code execution."""

    model: BackendConfig = section(
        BackendConfig, help="The trained GenPRM (a local dir, hub id or served name)."
    )
    temperature: float = option(0.7, help="Sampling temperature of the critiques (Maj@N needs > 0).")
    top_p: float = option(1.0, help="Nucleus sampling threshold of the critiques.")
    max_tokens: int = option(320, help="Tokens per generation round (a round ends at a code fence).")
    max_rounds: int = option(2, help="Code executions per step before the verdict.")
    execute: bool = option(True, help="Run the model's code in the sandbox (false: the no-code ablation).")
    logprobs: int = option(20, help="Top-k logprobs requested for the verdict token (0: verdict text only).")
    seed: int = option(0, help="Base seed of the critique sampling.")
    missing_verdict_reward: float = option(
        NO_VERDICT_REWARD,
        help="Reward of a step that no sample judged (0: counted wrong; the paper's code gives 0.5, which "
        "counts as correct). Samples without a verdict are left out of a step's Maj@N mean.",
    )
    threads: int = option(4, help="Threads running code blocks between generation rounds.")
    decoding: Decoding = option(
        "free",
        help="free: the model writes each turn on its own (a round ends at a closing code fence; a turn "
        "without a verdict gets the forced verdict round). paper: the paper's genprm_inference.py: "
        "prefill '<analyze>' with 'Let's analyze the Paragraph k step by step:' (the paper's trailing space "
        "left to the model, which writes it fused with the next word; stop at "
        "'</analyze>'), prefill '<verify>' and the opening code fence (stop at the closing fence, run, "
        "continue to '</verify>'), then prefill '<output>\\n**Judgement**: $\\boxed' for every verdict.",
    )
    loop: Loop = option(
        "continuous",
        help="continuous: continuous batching with KV reuse across rounds (hf backend; other backends "
        "fall back to lockstep). lockstep: every open chain takes one round per batched generate call.",
    )
    sandbox: SandboxConfig = section(SandboxConfig, help="Limits for the model's code.")

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.max_rounds < 0 or self.logprobs < 0 or self.threads < 1:
            raise ConfigError("scorer: need max_tokens >= 1, max_rounds >= 0, logprobs >= 0, threads >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("scorer: need temperature >= 0 and 0 < top_p <= 1")
        if not 0 <= self.missing_verdict_reward <= 1:
            raise ConfigError("scorer.missing_verdict_reward: must be in [0, 1]")


@dataclass
class ScoredSolution:
    """Rewards of one solution: ``samples[j][t]`` is sample j's reward for step t (None: no verdict).

    ``source_counts``: turns per reward source (logprobs, verdict_text, none) over all samples.
    """

    samples: list[list[float | None]]
    sources: list[str]
    missing_verdicts: int
    critiques: list[str]
    tokens: int
    code_runs: int
    code_failures: int
    source_counts: dict[str, int] = field(default_factory=dict)
    missing_reward: float = NO_VERDICT_REWARD

    def rewards(self, n: int | None = None) -> list[float]:
        """Maj@n step rewards: the mean over the first ``n`` samples (all when None) that judged the step;
        ``missing_reward`` where none of them did."""
        used = self.samples[: n or len(self.samples)]
        out = []
        for column in zip(*used, strict=True):
            judged = [r for r in column if r is not None]
            out.append(sum(judged) / len(judged) if judged else self.missing_reward)
        return out


def scored_solution(chains: list[Chain], missing_reward: float = NO_VERDICT_REWARD) -> ScoredSolution:
    """Collect the N chains of one solution into its rewards."""
    turns = [turn for chain in chains for turn in chain.turns]
    statuses = [status for turn in turns for status in turn.statuses]
    counts = {source: sum(t.reward_source == source for t in turns) for source in REWARD_SOURCES}
    counts["cut"] = sum(t.cut for t in turns)  # missing because the conversation outgrew the context
    return ScoredSolution(
        samples=[[t.reward for t in chain.turns] for chain in chains],
        sources=sorted({t.reward_source for t in turns if t.reward is not None}),
        missing_verdicts=sum(t.reward is None for t in turns),
        critiques=[t.text for t in chains[0].turns],
        tokens=sum(t.tokens for t in turns),
        code_runs=len(statuses),
        code_failures=sum(s != "ok" for s in statuses),
        source_counts=counts,
        missing_reward=missing_reward,
    )


def verdict_stats(counts: list[dict[str, int]]) -> dict[str, Any]:
    """Turns critiqued, missing verdicts (count, fraction, and how many of them the context window cut)
    and turns per reward source, summed over ``counts`` (``ScoredSolution.source_counts`` of each
    solution).

    ``reward_source`` names the one source of every judged turn ("logprobs" or "verdict_text"), "mixed"
    when both occur, "none" when no turn was judged: two benchmarks compare only on the same source.
    """
    total = {source: sum(int(c.get(source, 0)) for c in counts) for source in REWARD_SOURCES}
    turns = sum(total.values())
    judged = [source for source in ("logprobs", "verdict_text") if total[source]]
    return {
        "turns": turns,
        "missing": total["none"],
        "missing_rate": total["none"] / turns if turns else 0.0,
        "cut_by_context": sum(int(c.get("cut") or 0) for c in counts),
        "sources": total,
        "reward_source": judged[0] if len(judged) == 1 else ("mixed" if judged else "none"),
    }


class GenPRMScorer:
    """Scores solutions step by step with a GenPRM; owns its backend and sandbox unless given them."""

    def __init__(
        self, cfg: ScorerConfig, backend: Backend | None = None, sandbox: Sandbox | None = None
    ) -> None:
        from components.sandbox import Sandbox

        self.cfg = cfg
        self._own_backend = backend is None
        self.backend = backend if backend is not None else make_backend(cfg.model)
        self._own_sandbox = sandbox is None and cfg.execute
        self.sandbox = sandbox if sandbox is not None else (Sandbox(cfg.sandbox) if cfg.execute else None)

    def settings(self, execute: bool | None = None) -> CritiqueSettings:
        return CritiqueSettings(
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            max_tokens=self.cfg.max_tokens,
            max_rounds=self.cfg.max_rounds,
            execute=self.cfg.execute if execute is None else execute,
            logprobs=self.cfg.logprobs or None,
            seed=self.cfg.seed,
            decoding=self.cfg.decoding,
            loop=self.cfg.loop,
        )

    def score(
        self,
        solutions: list[tuple[str, list[str]]],
        samples: int = 1,
        desc: str = "genprm",
        progress: bool = True,
    ) -> list[ScoredSolution]:
        """Rewards for every step of every solution, from ``samples`` critique conversations each
        (``progress``: show a progress bar)."""
        if samples < 1:
            raise ConfigError(f"scorer: samples must be at least 1, got {samples}")
        chains = [
            Chain(problem, list(steps), seed=derive_seed(self.cfg.seed, problem, *steps, j))
            for problem, steps in solutions
            for j in range(samples)
        ]
        settings = self.settings()
        run_chains(self.backend, chains, settings, self.sandbox, self.cfg.threads, desc, progress)
        grouped = [chains[i : i + samples] for i in range(0, len(chains), samples)]
        return [scored_solution(group, self.cfg.missing_verdict_reward) for group in grouped]

    def close(self) -> None:
        if self._own_backend:
            self.backend.close()
        if self._own_sandbox and self.sandbox is not None:
            self.sandbox.close()

    def __enter__(self) -> GenPRMScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
