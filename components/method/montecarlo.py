"""Monte Carlo step estimates and the labels built on them (DESIGN.md §3), used by the ``label`` stage.

For a path with steps s_1..s_T of a problem with gold answer g:

- MC_0 is given (``Unit.mc0``: a rollout problem's pass rate, with ``label.mc0: rollout``) or estimated
  by the completer (``Unit.mc0`` None; wave 0: ``mc0_samples`` completions of the bare prompt with the
  ``Step 1: `` prefill, graded like every other wave); K is chosen from MC_0 by ``k_for``.
- MC_t for t < T is the fraction of K completions, prefilled with ``Step 1: s_1 ... Step t: s_t\\n``
  (the policy then writes ``Step t+1: ...`` itself), whose final answer (``extract_answer`` on prefix +
  completion) is equivalent to g. A completion without an answer counts as wrong and is counted.
- MC_T is 1 if the path's own final answer is correct, else 0.
- Once some MC_t = 0 for t >= 1, every later MC is 0 without sampling.
- MC_0 = 0 stops nothing. It says the completer did not solve the bare problem in its samples, not that
  step 1 is wrong (the path being labelled may well be correct), so wave 1 is sampled as for any MC_0
  (with K = ``k_low``) and the steps are labelled from their own MC values (see ``rpe_labels``).

``estimate`` does this for all paths of one problem in waves: wave t is ONE backend call holding the
step-t prefixes of the paths still alive (identical prefixes once), n=K, each prefix's request seeded
by its own stream (``prefix_seed``: the run's seed, the unit and the prefix text). A call never mixes
problems, so its samples depend only on the problem (not on sharding or resuming). The cost of a
shared prefix is charged to the first path needing it.

``label.sampling: sequential`` samples the same prefixes in chunks until their labels are decided
(``components.method.sequential``); ``components.method.binarysearch`` is the binary-search baseline.

``rpe_labels``: label_t = 1 iff MC_t >= epsilon * MC_{t-1} with MC_{t-1} > 0 (ratio test), and
label_t = 0 after a step with MC 0 (t >= 2: that step was the first error). Step 1 with MC_0 = 0 has no
earlier step to blame and no ratio: it is labelled 1 iff MC_1 > 0 (the completer reaches the answer
after step 1 although it did not from the bare problem: the step made progress), i.e. its hard-MC
label. That is the ratio test in the limit MC_0 -> 0+ (any MC_1 > 0 passes it), so a correct path of a
problem the completer found too hard from scratch is labelled by what its steps achieve, never wholesale
wrong for the completer's sake. ``hard_labels``: label_t = 1 iff MC_t > 0.
Hard-MC equals RPE in the limit epsilon -> 0+.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from components.backends import Backend, GenerationRequest, SamplingParams
from components.data.journal import unit_seed

RATIO_TOLERANCE = 1e-9
"""MC_t / MC_{t-1} >= epsilon is tested as ratio >= epsilon - RATIO_TOLERANCE (0.4 / 0.5 is 0.8)."""


class MCSettings(Protocol):
    """The settings ``estimate`` reads (``LabelConfig`` has them all)."""

    @property
    def k_low(self) -> int: ...
    @property
    def k_mid(self) -> int: ...
    @property
    def k_high(self) -> int: ...
    @property
    def low_threshold(self) -> float: ...
    @property
    def high_threshold(self) -> float: ...
    @property
    def mc0_samples(self) -> int: ...
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def seed(self) -> int: ...


@dataclass(frozen=True)
class PathInput:
    """A solution to label: its steps, whether its final answer is right, and a gold first error if any."""

    path_id: str
    steps: list[str]
    correct: bool
    label: int | None = None


@dataclass(frozen=True)
class Unit:
    """One problem with the paths to label; ``mc0`` None means: estimate it (wave 0)."""

    kind: Literal["rollout", "processbench"]
    problem_id: str
    problem: str
    gold: str
    mc0: float | None
    paths: list[PathInput]

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.problem_id}"


@dataclass
class Spend:
    """Generation cost: completions sampled, tokens generated, completions without a final answer."""

    completions: int = 0
    tokens: int = 0
    no_answer: int = 0

    def add(self, other: Spend) -> None:
        self.completions += other.completions
        self.tokens += other.tokens
        self.no_answer += other.no_answer


@dataclass
class Estimate:
    """A unit's MC_0, K, and per path: MC_1..MC_T and the cost charged to it."""

    mc0: float
    k: int
    mc: list[list[float]]
    spend: list[Spend] = field(default_factory=list)


def k_for(mc0: float, cfg: MCSettings) -> int:
    """K from MC_0 by the schedule (paper: 128 below 0.1, 64 below 0.9, else 32)."""
    if mc0 < cfg.low_threshold:
        return cfg.k_low
    return cfg.k_mid if mc0 < cfg.high_threshold else cfg.k_high


def prefix_text(steps: list[str], t: int) -> str:
    """The assistant prefill holding the first ``t`` steps, ending at the newline before ``Step t+1:``."""
    from components.method.prompts import solution_text

    return solution_text(steps[:t]) + "\n"


def score_samples(gold: str, prefill: str, texts: list[str]) -> tuple[int, int]:
    """(completions reaching ``gold``, completions with no answer) among ``texts`` continuing ``prefill``."""
    from components.method.grading import extract_answer, is_equivalent

    answers = [extract_answer(prefill + text) for text in texts]
    hits = sum(a is not None and is_equivalent(gold, a) for a in answers)
    return hits, sum(a is None for a in answers)


def prefix_seed(cfg: MCSettings, unit: Unit, prefill: str) -> int:
    """The seed of a prefix's completion stream: completion ``i`` (0-based) is seeded ``prefix_seed + i``."""
    from components.backends.base import derive_seed

    seed = derive_seed(cfg.seed, unit.key, prefill)
    assert seed is not None
    return seed


def sample_counts(
    backend: Backend, cfg: MCSettings, unit: Unit, prefills: list[str], n: int, drawn: list[int] | None = None
) -> list[tuple[int, Spend]]:
    """ONE backend call: completions ``drawn[i] .. drawn[i] + n - 1`` of each prefill's stream (request
    seed ``prefix_seed + drawn[i]``; ``drawn`` None: from 0); (completions reaching gold, cost) per prefill.

    On a backend seeding per request (vLLM, ``hf`` with ``seeds: request``) completion ``i`` of a prefix
    is the same draw in every mode, so sequential and binary search read fixed K's own first samples.
    """
    from components.method.prompts import chat_messages

    messages = chat_messages(unit.problem)
    offsets = drawn if drawn is not None else [0] * len(prefills)
    requests = [
        GenerationRequest(messages=messages, prefill=p, seed=prefix_seed(cfg, unit, p) + o)
        for p, o in zip(prefills, offsets, strict=True)
    ]
    params = SamplingParams(
        n=n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.max_tokens,
        seed=unit_seed(cfg.seed, unit.key),
    )
    scored = []
    for prefill, result in zip(prefills, backend.generate(requests, params), strict=True):
        hits, no_answer = score_samples(unit.gold, prefill, [s.text for s in result.samples])
        tokens = sum(s.num_generated_tokens for s in result.samples)
        scored.append((hits, Spend(len(result.samples), tokens, no_answer)))
    return scored


def sample_prefixes(
    backend: Backend, cfg: MCSettings, unit: Unit, prefills: list[str], k: int
) -> list[tuple[float, Spend]]:
    """ONE backend call: the first K completions of each prefill; (fraction reaching gold, cost) each."""
    return [(hits / k, cost) for hits, cost in sample_counts(backend, cfg, unit, prefills, k)]


def wave_zero(backend: Backend, cfg: MCSettings, unit: Unit, spend: list[Spend]) -> float:
    """MC_0: the unit's given value, or wave 0 (``mc0_samples`` of the bare prompt, charged to path 0)."""
    from components.method.prompts import STEP_PREFILL

    if unit.mc0 is not None:
        return unit.mc0
    [(mc0, cost)] = sample_prefixes(backend, cfg, unit, [STEP_PREFILL], cfg.mc0_samples)
    spend[0].add(cost)
    return mc0


def estimate(backend: Backend, cfg: MCSettings, unit: Unit) -> Estimate:
    """MC values of every path of ``unit``, wave by wave, stopping each path at its first MC of 0."""
    spend = [Spend() for _ in unit.paths]
    mc0 = wave_zero(backend, cfg, unit, spend)
    k = k_for(mc0, cfg)
    sampled: list[list[float]] = [[] for _ in unit.paths]
    alive = set(range(len(unit.paths)))  # MC_0 = 0 stops nothing (module docstring)
    for wave in range(1, max(len(p.steps) for p in unit.paths)):
        owners: dict[str, list[int]] = {}
        for i, path in enumerate(unit.paths):
            if i in alive and wave < len(path.steps):
                owners.setdefault(prefix_text(path.steps, wave), []).append(i)
        if not owners:
            break
        results = sample_prefixes(backend, cfg, unit, list(owners), k)
        for paths, (value, cost) in zip(owners.values(), results, strict=True):
            spend[paths[0]].add(cost)
            for i in paths:
                sampled[i].append(value)
                if value == 0:
                    alive.discard(i)
    mc = [
        finish(p, values, i in alive) for i, (p, values) in enumerate(zip(unit.paths, sampled, strict=True))
    ]
    return Estimate(mc0, k, mc, spend)


def finish(path: PathInput, sampled: list[float], alive: bool) -> list[float]:
    """MC_1..MC_T from the sampled MC_1..MC_{T-1}: the last-step rule, or zeros after an MC of 0."""
    if alive:
        return [*sampled, float(path.correct)]
    return sampled + [0.0] * (len(path.steps) - len(sampled))


def rpe_labels(mc0: float, mc: list[float], epsilon: float) -> list[int]:
    """label_t = 1 iff MC_t / MC_{t-1} >= epsilon; after a step with MC 0 it is 0.

    Step 1 with MC_0 = 0 is labelled 1 iff MC_1 > 0 (no step before it to blame; module docstring).
    """
    labels, previous = [], mc0
    for t, value in enumerate(mc, start=1):
        if previous > 0:
            labels.append(int(value / previous >= epsilon - RATIO_TOLERANCE))
        else:
            labels.append(int(t == 1 and value > 0))
        previous = value
    return labels


def hard_labels(mc: list[float]) -> list[int]:
    """Hard-MC baseline: label_t = 1 iff MC_t > 0."""
    return [int(value > 0) for value in mc]
