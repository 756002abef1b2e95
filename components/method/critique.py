"""The execute-and-continue critique loop, batched across solutions (DESIGN.md §3, Rationale).

A :class:`Chain` is one critique conversation over one solution: for each step, the model continues the
assistant turn until it closes a code block (the ``CODE_STOP`` fence); the code runs in the chain's own
sandbox session (so the namespace persists across the steps of the solution), ``[Code Output]`` and the
output are appended, and generation goes on, at most ``max_rounds`` executions per step. The verdict ends
the turn; the next step's user turn follows.

:func:`run_chains` advances many chains together; ``settings.loop`` picks the scheduler
(``components/method/loops.py``): ``continuous`` (the default, on a backend with a continuous-batching
engine: hf) keeps one engine slot per open chain, runs a chain's code in a thread pool while the others
decode and reuses the KV of its earlier rounds; ``lockstep`` (every other backend) takes one batched
``Backend.generate`` call per round. The sandbox bounds how many snippets execute at once.

Decoding (``settings.decoding``). ``free``: the model writes each turn on its own. ``paper``: the turn is
built from the paper's prefills (``genprm_inference.py``, DESIGN.md §3): :func:`analyze_prefill` (stop at
``</analyze>``), ``VERIFY_PREFILL`` opening the code block (stop at the closing fence or ``</verify>``;
the code runs and generation continues, at most ``max_rounds`` executions), then the verdict prefill
for every turn. The prefills are the very strings the SFT turns hold (``rationale.format_turn``).

Reading the verdict. The chain keeps apart the text the model generated and the text the loop wrote (code
outputs, prefills), and reads the verdict only from the model's own words after the last code output, and
its probability from the very piece that holds it (not from whichever piece came last). A turn that ends
without a verdict (cut by ``max_tokens``, out of code rounds, or simply silent) gets one more round, as in
the paper's code: the loop closes what is open (the code fence, ``</verify>``) and prefills
``<output>\n**Judgement**: $\boxed``, so the model states a verdict and the reward is read from its
top-k logprobs. Only a turn still without a verdict after that is a missing verdict (``verdict=None``).

Context window. Before every round, :func:`fit_round` checks the chain's prompt plus the round's
``max_tokens`` against ``Backend.context_window()`` (``components/backends/window.py``): a round that does
not fit gives way to the forced verdict round, and a chain where not even that fits is cut short, its
remaining steps missing verdicts (``TurnResult.cut``), with a warning.

Seeds. Every chain has a seed (its own, else one derived from ``settings.seed`` and its position), and
each of its generation rounds sends ``derive_seed(chain seed, round)`` as the request's own seed: the N
chains of one solution in Maj@N start from the same prompt but never share a seed, on every backend (see
``Backend.seeding`` in ``components/backends/base.py``). The LLM teacher
(``components/method/teachers.py``) and the GenPRM scorer (``components/method/scorer.py``) are both built
on it::

    chains = [Chain(problem, steps) for problem, steps in solutions]
    run_chains(backend, chains, CritiqueSettings(max_tokens=256), sandbox=sandbox)
    [[turn.verdict for turn in chain.turns] for chain in chains]
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from tqdm import tqdm

from components.backends.base import Backend, GenerationRequest, Sample, SamplingParams, derive_seed
from components.method.prompts import GENPRM_SYSTEM_PROMPT
from components.method.rationale import (
    CODE_OPEN,
    CODE_STOP,
    VERDICT_PREFILL,
    VERIFY_INTRO,
    after_last_output,
    code_blocks,
    code_output_block,
    conversation,
    execution_text,
    iter_verdicts,
    open_code,
    verdict_probability,
)

if TYPE_CHECKING:
    from components.sandbox import Sandbox, Session

log = logging.getLogger(__name__)

RewardSource = Literal["logprobs", "verdict_text", "none"]
Phase = Literal["free", "analyze", "verify", "verdict"]
Decoding = Literal["free", "paper"]
Loop = Literal["continuous", "lockstep"]
VERDICT_MAX_TOKENS = 16  # the forced verdict round: "{Yes}$\n</output>" and a little slack
ANALYZE_STOP = "</analyze>\n"
VERIFY_STOP = "</verify>"
VERIFY_PREFILL = f"<verify>\n{VERIFY_INTRO}\n{CODE_OPEN}"


def analyze_prefill(paragraph: int) -> str:
    """The paper's prefill of a turn: ``<analyze>`` and the sentence naming the 1-based paragraph.

    Without the paper's trailing space: BPE tokenizers write it fused with the next word (`` The``), so
    a prompt ending in a lone space token is one the model never saw in training (the small world's
    GenPRM answered it with a digit, "step by step: 1 step by step: ..."). The model writes the space.
    """
    return f"<analyze>\nLet's analyze the Paragraph {paragraph} step by step:"


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
    force_verdict: bool = True
    decoding: Decoding = "free"
    loop: Loop = "continuous"

    def sampling(self, seed: int | None = None) -> SamplingParams:
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

    def verdict_sampling(self, seed: int | None = None) -> SamplingParams:
        """The forced verdict round: a few tokens after the verdict prefill."""
        return replace(self.sampling(seed), max_tokens=VERDICT_MAX_TOKENS, stop=["</output>"])

    def phase_sampling(self, phase: Phase, seed: int | None = None) -> SamplingParams:
        """The sampling of a chain's round in ``phase`` (see ``Chain.phase``)."""
        if phase == "verdict":
            return self.verdict_sampling(seed)
        if phase == "analyze":
            return replace(self.sampling(seed), stop=[ANALYZE_STOP])
        if phase == "verify":
            stops = [CODE_STOP, VERIFY_STOP] if self.execute else [VERIFY_STOP]
            return replace(self.sampling(seed), stop=stops)
        return self.sampling(seed)


@dataclass
class TurnResult:
    """One critiqued step: the assistant text, its verdict, the reward, and what ran.

    ``reward_source``: "logprobs" (p(Yes) from the verdict token's top-k), "verdict_text" (1 / 0 from the
    verdict, where the backend gave no logprobs) or "none" (no verdict: ``verdict`` and ``reward`` None).
    ``forced``: the verdict came from the forced verdict round.
    """

    text: str
    verdict: int | None
    rounds: int
    statuses: list[str]
    reward: float | None
    reward_source: RewardSource
    tokens: int
    forced: bool = False
    cut: bool = False  # never judged: the conversation outgrew the model's context window


@dataclass
class _Piece:
    """Text the model generated within the current turn: where it starts in ``Chain.text``, and the sample."""

    start: int
    sample: Sample


@dataclass
class Chain:
    """One critique conversation over one solution; ``turns`` fills up as it advances.

    ``seed``: the chain's own seed (None: ``run_chains`` derives one from ``settings.seed``).
    ``phase``: what the next round writes. Free decoding: "free" (the model writes the turn on its
    own, a round ends at a closing code fence) and "verdict" (the forced verdict round). Paper decoding
    (``genprm_inference.py``): "analyze" (after the ``<analyze>`` prefill, up to ``</analyze>``),
    "verify" (after the ``<verify>`` prefill that opens a code block, up to a closing fence or
    ``</verify>``), then "verdict" after the ``<output>`` prefill.
    """

    problem: str
    steps: list[str]
    seed: int | None = None
    turns: list[TurnResult] = field(default_factory=list)
    text: str = ""
    rounds: int = 0
    statuses: list[str] = field(default_factory=list)
    tokens: int = 0
    session: Session | None = None
    calls: int = 0
    phase: Phase = "free"
    decoding: Decoding = "free"
    pieces: list[_Piece] = field(default_factory=list)
    output_end: int = 0  # where the text after the last executed code output starts

    @property
    def done(self) -> bool:
        return len(self.turns) >= len(self.steps)

    @property
    def forcing(self) -> bool:
        """Whether the next round writes the verdict after the ``<output>`` prefill."""
        return self.phase == "verdict"

    def start(self, decoding: Decoding) -> None:
        """Open the first turn (paper decoding: with its ``<analyze>`` prefill)."""
        self.decoding = decoding
        self._open_turn()

    def _open_turn(self) -> None:
        if self.decoding == "paper" and not self.done:
            self.text, self.phase = analyze_prefill(len(self.turns) + 1), "analyze"
        else:
            self.phase = "free"

    def request(self, system: str) -> GenerationRequest:
        """The conversation so far with the open assistant turn as the prefill, seeded for this round."""
        history = [turn.text for turn in self.turns]
        return GenerationRequest(
            messages=conversation(self.problem, self.steps, history, system),
            prefill=self.text,
            seed=derive_seed(self.seed, self.calls),
        )

    def advance(self, sample: Sample, settings: CritiqueSettings, sandbox: Sandbox | None) -> None:
        """Take one generated piece: run the code it opened, prefill the next part, or close the turn."""
        self.calls += 1
        self.tokens += sample.num_generated_tokens
        self.pieces.append(_Piece(len(self.text), sample))
        self.text += sample.text
        if self.phase == "verdict":
            if "</output>" not in sample.text:
                self.text += "</output>"
            self._close_turn(forced=True)
            return
        if self.phase == "analyze":
            self.text += ("" if self.text.endswith("\n") else "\n") + ANALYZE_STOP
            if settings.execute and settings.max_rounds == 0:
                self.open_verdict()
            else:
                self.text, self.phase = self.text + VERIFY_PREFILL, "verify"
            return
        code = open_code(self.text) if settings.execute and sample.finish_reason == "stop" else None
        if code is not None and self.rounds < settings.max_rounds:
            self._run(code, sandbox)
            return
        if not settings.execute:
            self.rounds = len(code_blocks(self.text))
        if self.phase == "verify" or (settings.force_verdict and self._verdict() is None):
            self.open_verdict()
            return
        self._close_turn(forced=False)

    def _run(self, code: str, sandbox: Sandbox | None) -> None:
        """Close the code block, run it in the chain's session and append its output."""
        self.rounds += 1
        self.text += CODE_STOP
        if sandbox is not None:
            if self.session is None:
                self.session = sandbox.session()
            result = self.session.run(code)
            self.statuses.append(result.status)
            self.text += code_output_block(execution_text(result))
            self.output_end = len(self.text)

    def open_verdict(self) -> None:
        """Close what the turn left open and prefill the verdict (the next round writes it)."""
        text = self.text
        if open_code(text) is not None:
            text += CODE_STOP  # never run: the code rounds are spent, or the round was cut inside it
        for tag in ("analyze", "verify"):
            if f"<{tag}>" in text and f"</{tag}>" not in text[text.rfind(f"<{tag}>") :]:
                text += ("" if text.endswith("\n") else "\n") + f"</{tag}>\n"
        if text and not text.endswith("\n"):
            text += "\n"
        self.text = text + VERDICT_PREFILL
        self.phase = "verdict"

    def _verdict(self) -> tuple[int, _Piece] | None:
        """The last verdict the model itself wrote after the last code output, and the piece holding it."""
        # Executed: exactly where the last output ended. Not executed (the no-code ablation): after the
        # model's own imagined last output block, as in a stored turn.
        start = self.output_end if self.statuses else after_last_output(self.text)
        found = None
        for match in iter_verdicts(self.text, start):
            piece = next(
                (p for p in self.pieces if p.start <= match.start(1) < p.start + len(p.sample.text)), None
            )
            if piece is not None:
                found = (1 if match.group(1) == "Yes" else 0, piece)
        return found

    def _close_turn(self, forced: bool) -> None:
        found = self._verdict()
        verdict: int | None = None
        reward: float | None = None
        source: RewardSource = "none"
        if found is not None:
            verdict, piece = found
            reward = verdict_probability(piece.sample, self.text[: piece.start])
            source = "logprobs" if reward is not None else "verdict_text"
            if reward is None:
                reward = float(verdict)
        self.turns.append(
            TurnResult(self.text, verdict, self.rounds, self.statuses, reward, source, self.tokens, forced)
        )
        self.text, self.rounds, self.statuses, self.tokens = "", 0, [], 0
        self.pieces, self.output_end = [], 0
        self._open_turn()
        if self.done:
            self.close()

    def cut_short(self) -> None:
        """End the chain here: this turn and every later one become missing verdicts (``cut``)."""
        while not self.done:
            self.turns.append(
                TurnResult(self.text, None, self.rounds, self.statuses, None, "none", self.tokens, cut=True)
            )
            self.text, self.rounds, self.statuses, self.tokens = "", 0, [], 0
        self.pieces, self.output_end = [], 0
        self.close()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def fit_round(chain: Chain, backend: Backend, settings: CritiqueSettings, window: int | None) -> bool:
    """Whether ``chain``'s next round fits ``window`` (prompt plus ``max_tokens``); makes it fit if it can.

    A round that does not fit gives way to the forced verdict round (16 tokens) where that fits, so the
    turn is still judged; where not even that fits, the chain is cut short (``Chain.cut_short``) and its
    remaining steps are missing verdicts. Without a known window or prompt length every round fits.
    """
    if window is None:
        return True
    while True:
        used = backend.prompt_length(chain.request(settings.system))
        if used is None or used + settings.phase_sampling(chain.phase).max_tokens <= window:
            return True
        if chain.phase == "verdict":
            break
        chain.open_verdict()
    left = len(chain.steps) - len(chain.turns)
    log.warning(
        "critique: the conversation (%d prompt tokens) outgrew the context window of %d tokens; "
        "the last %d of %d steps get no verdict",
        used,
        window,
        left,
        len(chain.steps),
    )
    chain.cut_short()
    return False


def run_chains(
    backend: Backend,
    chains: list[Chain],
    settings: CritiqueSettings,
    sandbox: Sandbox | None = None,
    threads: int = 4,
    desc: str = "critique",
    progress: bool = True,
) -> None:
    """Advance every chain to its end (``settings.loop`` picks how; see ``components/method/loops.py``).

    A chain without a seed gets ``derive_seed(settings.seed, its index in chains)``; each round of a
    chain is seeded ``derive_seed(chain seed, round)`` whichever loop runs it.
    """
    from components.method.loops import run_continuous, run_lockstep, supports_continuous

    for index, chain in enumerate(chains):
        if chain.seed is None:
            chain.seed = derive_seed(settings.seed, index)
        chain.start(settings.decoding)
    total = sum(len(chain.steps) for chain in chains)
    continuous = settings.loop == "continuous" and supports_continuous(backend)
    try:
        with (
            ThreadPoolExecutor(max_workers=max(1, threads)) as pool,
            tqdm(total=total, desc=desc, disable=not progress) as bar,
        ):
            run = run_continuous if continuous else run_lockstep
            calls = run(backend, chains, settings, sandbox, pool, bar)
    finally:
        for chain in chains:
            chain.close()
    loop = "continuous" if continuous else "lockstep"
    log.info("%s: %d chains, %d steps, %s loop, %d generation calls", desc, len(chains), total, loop, calls)
