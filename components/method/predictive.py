"""The predictive stopping rule of ``label.sampling: sequential`` (``label.decide: predictive``).

The interval rule (``components.method.sequential``) decides the label of the TRUE MC values, which near
the RPE threshold takes about K samples whatever the mode. The fixed-K run does not know the true values
either: its label is the ratio test on its own K-sample estimates. This rule decides THAT label. With n of
K completions of a prefix drawn and h of them hits, the hits H of all K completions are h plus a
Beta-Binomial draw over the K - n still to come (a Jeffreys prior, Beta(1/2, 1/2), on the prefix's
success rate). A step's label is decided when the fixed-K label, under the predictive distributions of
its two MC values (independent prefixes), equals the label of the current estimates with probability at
least 1 - delta. This is a posterior probability, valid at whichever look the sampling stops (no
correction for repeated looks is needed, unlike a frequentist interval), and it is a statement about
agreement with fixed K, the equivalence the label stage needs before a cheaper mode may replace it.

On a backend seeding per request (``montecarlo.prefix_seed``) the n completions drawn are fixed K's first
n, so a stopped step disagrees with fixed K only when the K - n it skipped would have flipped the test.

    p_fixed_passes(previous=(h1, n1), current=(h2, n2), k=32, epsilon=0.8)   # P(H2 >= epsilon * H1)
"""

from __future__ import annotations

import math
from functools import lru_cache

from components.method.montecarlo import RATIO_TOLERANCE

PRIOR = 0.5
"""Jeffreys prior Beta(PRIOR, PRIOR) on a prefix's success rate."""


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


@lru_cache(maxsize=65536)
def future_hits(hits: int, n: int, remaining: int) -> tuple[float, ...]:
    """P(j more hits among ``remaining`` completions) for j = 0..remaining, after ``hits`` of ``n``."""
    a, b = PRIOR + hits, PRIOR + n - hits
    base = _log_beta(a, b)
    return tuple(
        math.exp(
            math.lgamma(remaining + 1)
            - math.lgamma(j + 1)
            - math.lgamma(remaining - j + 1)
            + _log_beta(a + j, b + remaining - j)
            - base
        )
        for j in range(remaining + 1)
    )


def final_hits(hits: int, n: int, k: int) -> dict[int, float]:
    """The distribution of a prefix's hits among all K completions (exact once n = K)."""
    return {hits + j: p for j, p in enumerate(future_hits(hits, n, max(k - n, 0)))}


def _at_least(dist: dict[int, float], threshold: int) -> float:
    return math.fsum(p for h, p in dist.items() if h >= threshold)


def p_fixed_passes(
    previous: tuple[int, int] | float, current: tuple[int, int] | float, k: int, epsilon: float
) -> float:
    """P(fixed K's ratio test MC_t >= epsilon * MC_{t-1} passes), each MC given as (hits, n) of a prefix
    sampled K times in fixed K, or as an exact value (MC_0 given, the last step's own answer)."""
    now = {round(current * k): 1.0} if isinstance(current, float) else final_hits(*current, k)
    if isinstance(previous, float):
        exact, before = True, {previous: 1.0}
    else:
        exact, before = False, {h / k: p for h, p in final_hits(*previous, k).items()}
    total = 0.0
    for value, p in before.items():
        if value == 0 and not exact:
            continue  # fixed K's path died at the previous step: this step is labelled 0
        needed = math.ceil((epsilon - RATIO_TOLERANCE) * value * k - 1e-9)
        total += p * _at_least(now, max(needed, 0))
    return total
