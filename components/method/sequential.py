"""Sequential Monte Carlo estimation (``label.sampling: sequential``): sample until a label is decided.

The fixed-K estimate (``components.method.montecarlo.estimate``) gives every live step prefix K
completions. Here a prefix gets them in chunks of ``chunk`` and stops as soon as both labels of its step
are decided, never past K:

- **hard-MC** (MC_t > 0): decided 1 by the first completion reaching the gold answer (a hit proves
  p_t > 0), decided 0 only by K misses, exactly the fixed-K rule (no finite sample proves p_t = 0). A
  prefix with K misses ends its path (every later MC is 0), as in fixed K.
- **RPE** (MC_t / MC_{t-1} >= epsilon): each MC is a Bernoulli mean p with a two-sided Clopper-Pearson
  interval [lo, hi] at level 1 - a, a = delta / (2 L), L = K / chunk (Bonferroni over the L looks
  a prefix can take, so the interval holds at every look at once with probability >= 1 - delta / 2).
  The label is decided 1 when lo_t >= epsilon * hi_{t-1}, decided 0 when hi_t < epsilon * lo_{t-1}.
  When both intervals hold (probability >= 1 - delta by the union bound over MC_t and MC_{t-1}), a
  decided label is the label of the true p_t, p_{t-1}: the uncertainty of the denominator is counted,
  not ignored. MC_0 given by the rollout (``label.mc0: rollout``) is exact; MC_0 from the completer has
  the interval of its ``mc0_samples`` completions; the last step's MC (the path's own answer) is exact.
  A step whose previous MC is 0 is labelled by the hard rule (``rpe_labels``).

``decide: predictive`` (``components.method.predictive``) decides instead the label fixed K would
write: a step stops once that label equals the current estimates' label with posterior probability
>= 1 - delta; a step whose own prefix has K samples and is still undecided then samples the previous
prefix (its denominator).

A step's test is re-evaluated every round from the counts so far, so the labels written are always
``rpe_labels`` / ``hard_labels`` of the final point estimates (a decided label agrees with them, since a
point estimate lies in its interval); a step still undecided at K is labelled from its K-sample estimate
exactly as in fixed K. Step t+1 is opened once step t has a hit (the path is then alive at t), so the
steps of a path are sampled side by side rather than one wave after another.

Calls: round r of a unit is ONE backend call, n = chunk, holding every prefix of the unit that still
needs samples (identical prefixes of different paths once, their counts shared); a prefix with n
completions so far asks for completions n .. n + chunk - 1 of its stream (``prefix_seed``), so on a
backend seeding per request (vLLM, ``hf`` with ``seeds: request``) its samples are fixed K's first ones
and the two modes differ only by where they stop. MC_0 (wave 0) is the fixed-K call itself, so both
modes start from the same MC_0 and K. A call never mixes problems: results depend only on the problem, so
journals, shards and resumes work as in fixed K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from components.backends import Backend
from components.method.montecarlo import (
    RATIO_TOLERANCE,
    Estimate,
    MCSettings,
    PathInput,
    Spend,
    Unit,
    finish,
    k_for,
    prefix_text,
    sample_counts,
    wave_zero,
)
from components.method.predictive import p_fixed_passes


class SequentialSettings(MCSettings, Protocol):
    """The settings ``estimate_sequential`` reads beyond ``MCSettings``."""

    @property
    def epsilon(self) -> float: ...
    @property
    def delta(self) -> float: ...
    @property
    def chunk(self) -> int: ...
    @property
    def decide(self) -> str: ...


def _binomial_tail(hits: int, n: int, p: float, upper: bool) -> float:
    """P(X >= hits) (``upper``) or P(X <= hits) for X ~ Binomial(n, p)."""
    ks = range(hits, n + 1) if upper else range(0, hits + 1)
    return math.fsum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in ks)


@lru_cache(maxsize=65536)
def clopper_pearson(hits: int, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of a Bernoulli mean at level 1 - alpha (alpha / 2 per tail)."""
    if n == 0:
        return 0.0, 1.0

    def root(upper: bool) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            tail = _binomial_tail(hits, n, mid, upper)
            # the lower bound: P(X >= hits) grows with p; the upper bound: P(X <= hits) falls with p
            if (tail < alpha / 2) == upper:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    return (0.0 if hits == 0 else root(True)), (1.0 if hits == n else root(False))


@dataclass
class Counts:
    """Completions of one prefix so far and how many reached the gold answer."""

    hits: int = 0
    n: int = 0
    spend: Spend = field(default_factory=Spend)


@dataclass(frozen=True)
class Interval:
    """A point estimate of an MC value and its confidence interval."""

    value: float
    lo: float
    hi: float


def _value(mc: tuple[int, int] | float) -> float | None:
    """The point estimate of an MC given as (hits, n) or exactly; None before any sample."""
    if isinstance(mc, float):
        return mc
    hits, n = mc
    return hits / n if n else None


def rpe_decided(previous: Interval, current: Interval, epsilon: float) -> bool:
    """Whether the ratio test current / previous >= epsilon is decided by the two intervals."""
    if previous.value == 0:
        return True  # labelled by the hard rule, decided with the hard label
    passes = current.lo >= epsilon * previous.hi - RATIO_TOLERANCE
    return passes or current.hi < epsilon * previous.lo


@dataclass
class _Path:
    """One path being estimated: its prefixes (steps 1..T-1) and the interval of MC_0."""

    path: PathInput
    prefixes: list[str]


class _State:
    """The counts of every prefix of a unit and the rules that say which prefixes need samples."""

    def __init__(self, cfg: SequentialSettings, unit: Unit, mc0: float, k: int) -> None:
        self.cfg, self.k, self.mc0 = cfg, k, mc0
        self.alpha = cfg.delta / (2 * max(k // cfg.chunk, 1))
        if unit.mc0 is None:
            hits = round(mc0 * cfg.mc0_samples)
            lo, hi = clopper_pearson(hits, cfg.mc0_samples, self.alpha)
            self.mc0_interval = Interval(mc0, lo, hi)
        else:
            self.mc0_interval = Interval(mc0, mc0, mc0)
        self.paths = [_Path(p, [prefix_text(p.steps, t) for t in range(1, len(p.steps))]) for p in unit.paths]
        self.counts: dict[str, Counts] = {}
        for entry in self.paths:
            for prefix in entry.prefixes:
                self.counts.setdefault(prefix, Counts())

    def interval(self, entry: _Path, t: int) -> Interval:
        """MC_t of ``entry`` (t = 0: MC_0; t = T: the path's own answer) with its interval."""
        if t == 0:
            return self.mc0_interval
        if t == len(entry.path.steps):
            value = float(entry.path.correct)
            return Interval(value, value, value)
        c = self.counts[entry.prefixes[t - 1]]
        lo, hi = clopper_pearson(c.hits, c.n, self.alpha)
        return Interval(c.hits / c.n if c.n else 0.0, lo, hi)

    def counts_of(self, entry: _Path, t: int) -> tuple[int, int] | float:
        """MC_t of ``entry`` as (hits, n) of its prefix, or its exact value (MC_0, the last step)."""
        if t == 0:
            return self.mc0
        if t == len(entry.path.steps):
            return float(entry.path.correct)
        c = self.counts[entry.prefixes[t - 1]]
        return c.hits, c.n

    def decided(self, entry: _Path, t: int) -> bool:
        """Whether step t's RPE label is decided, by the interval or the predictive rule."""
        if self.cfg.decide == "interval":
            return rpe_decided(self.interval(entry, t - 1), self.interval(entry, t), self.cfg.epsilon)
        previous, current = self.counts_of(entry, t - 1), self.counts_of(entry, t)
        before, now = _value(previous), _value(current)
        if before == 0:
            return True  # labelled by the hard rule, decided with the hard label
        if before is None or now is None:
            return False
        label = now / before >= self.cfg.epsilon - RATIO_TOLERANCE
        passes = p_fixed_passes(previous, current, self.k, self.cfg.epsilon)
        return (passes if label else 1 - passes) >= 1 - self.cfg.delta

    def to_sample(self, entry: _Path, t: int) -> str | None:
        """The prefix an undecided step t samples next: its own (the last step: the previous one); in
        the predictive rule, the previous one once its own has K."""
        steps = len(entry.path.steps)
        own = entry.prefixes[min(t, steps - 1) - 1]
        if self.counts[own].n < self.k:
            return own
        if self.cfg.decide == "predictive" and 2 <= t < steps:
            previous = entry.prefixes[t - 2]
            return previous if self.counts[previous].n < self.k else None
        return None

    def wanted(self, entry: _Path) -> list[str]:
        """The prefixes of ``entry`` that need another chunk: an undecided label, fewer than K samples."""
        wanted: list[str] = []
        steps = len(entry.path.steps)
        for t in range(1, steps + 1):
            own = self.counts[entry.prefixes[t - 1]] if t < steps else None
            if own is not None and own.hits == 0 and own.n < self.k:
                wanted.append(entry.prefixes[t - 1])  # hard label undecided: the path waits here
                break
            if steps > 1 and not self.decided(entry, t):
                prefix = self.to_sample(entry, t)
                if prefix is not None:
                    wanted.append(prefix)
            if own is not None and own.hits == 0:
                break  # K misses: the path is dead after step t
        return wanted

    def estimate(self, spend: list[Spend]) -> list[list[float]]:
        """MC_1..MC_T of every path from the final counts; charges each prefix to its first path."""
        charged: set[str] = set()
        mcs = []
        for i, entry in enumerate(self.paths):
            sampled, alive = [], True
            for prefix in entry.prefixes:
                c = self.counts[prefix]
                if prefix not in charged:
                    charged.add(prefix)
                    spend[i].add(c.spend)
                sampled.append(c.hits / c.n if c.n else 0.0)
                if c.hits == 0:
                    alive = False
                    break
            mcs.append(finish(entry.path, sampled, alive))
        return mcs


def estimate_sequential(backend: Backend, cfg: SequentialSettings, unit: Unit) -> Estimate:
    """MC values of every path of ``unit``, each prefix sampled in chunks until its labels are decided."""
    spend = [Spend() for _ in unit.paths]
    mc0 = wave_zero(backend, cfg, unit, spend)
    k = k_for(mc0, cfg)
    state = _State(cfg, unit, mc0, k)
    for _round in range(1, 1 + sum(len(e.prefixes) for e in state.paths) * (k // cfg.chunk + 1)):
        prefixes = list(dict.fromkeys(p for entry in state.paths for p in state.wanted(entry)))
        if not prefixes:
            break
        drawn = [state.counts[p].n for p in prefixes]
        results = sample_counts(backend, cfg, unit, prefixes, cfg.chunk, drawn)
        for prefix, (hits, cost) in zip(prefixes, results, strict=True):
            counts = state.counts[prefix]
            counts.hits += hits
            counts.n += cfg.chunk
            counts.spend.add(cost)
    return Estimate(mc0, k, state.estimate(spend), spend)
