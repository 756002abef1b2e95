"""ProcessBench-style step-verification metrics (DESIGN.md §3), shared by the label and benchmark stages.

A sample's gold label is the 0-based index of its first wrong step, or -1 when every step is right; a
prediction has the same form (``first_error_from_labels`` turns per-step 0/1 labels into one, and
``first_error_from_rewards`` does the same for step rewards). Per subset:

- ``acc_error``: accuracy on the samples with an error (gold != -1): right iff pred == gold;
- ``acc_correct``: accuracy on the samples without one (gold == -1): right iff pred == -1;
- ``f1``: the harmonic mean 2 * acc_error * acc_correct / (acc_error + acc_correct), 0 when both are 0.

The headline over several subsets is their plain mean (``mean_f1``). An accuracy over an empty group
(a subset with no erroneous or no error-free sample) is undefined: it is NaN, and so is the F1.

    scores = processbench_f1(gold=[-1, 2, 0], pred=[-1, 1, 0])  # acc_error 0.5, acc_correct 1.0
    mean_f1({"gsm8k": scores, "math": other})

Everything here is pure: lists in, floats out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def first_error_from_labels(labels: Sequence[int]) -> int:
    """The index of the first step labelled 0 (wrong), or -1 when every step is labelled 1."""
    return next((index for index, label in enumerate(labels) if not label), -1)


def first_error_from_rewards(rewards: Sequence[float], threshold: float = 0.5) -> int:
    """The index of the first step whose reward is below ``threshold``, or -1 (DESIGN.md §3)."""
    return next((index for index, reward in enumerate(rewards) if reward < threshold), -1)


def _accuracy(hits: list[bool]) -> float:
    return sum(hits) / len(hits) if hits else math.nan


def harmonic_f1(acc_error: float, acc_correct: float) -> float:
    """2ab/(a+b); 0 when both are 0; NaN when either is NaN."""
    if math.isnan(acc_error) or math.isnan(acc_correct):
        return math.nan
    total = acc_error + acc_correct
    return 2 * acc_error * acc_correct / total if total > 0 else 0.0


def processbench_f1(gold: Sequence[int], pred: Sequence[int]) -> dict[str, float]:
    """``acc_error``, ``acc_correct`` and their harmonic mean ``f1`` for one subset (fractions in [0, 1])."""
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length: {len(gold)} vs {len(pred)}")
    errors = [p == g for g, p in zip(gold, pred, strict=True) if g != -1]
    correct = [p == -1 for g, p in zip(gold, pred, strict=True) if g == -1]
    acc_error, acc_correct = _accuracy(errors), _accuracy(correct)
    return {"acc_error": acc_error, "acc_correct": acc_correct, "f1": harmonic_f1(acc_error, acc_correct)}


def mean_f1(subsets: Mapping[str, Mapping[str, float]]) -> float:
    """The plain mean of the subsets' ``f1`` (the ProcessBench headline); NaN for no subsets."""
    values = [float(scores["f1"]) for scores in subsets.values()]
    return sum(values) / len(values) if values else math.nan
