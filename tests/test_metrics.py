"""ProcessBench metrics (components/method/metrics.py) pinned on hand-computed cases (DESIGN.md §3)."""

from __future__ import annotations

import math

import pytest

from components.method.metrics import (
    first_error_from_labels,
    first_error_from_rewards,
    harmonic_f1,
    mean_f1,
    processbench_f1,
)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [([1, 1, 1], -1), ([0, 1, 1], 0), ([1, 0, 0], 1), ([1, 1, 0], 2), ([1, 0, 1], 1), ([], -1)],
)
def test_first_error_from_labels(labels: list[int], expected: int) -> None:
    assert first_error_from_labels(labels) == expected


def test_first_error_from_rewards() -> None:
    assert first_error_from_rewards([0.9, 0.4, 0.8]) == 1
    assert first_error_from_rewards([0.5, 0.6]) == -1, "0.5 is not below 0.5"
    assert first_error_from_rewards([0.7, 0.6], threshold=0.65) == 1


def test_perfect_predictions() -> None:
    gold = [-1, 0, 2, -1, 1]
    assert processbench_f1(gold, gold) == {"acc_error": 1.0, "acc_correct": 1.0, "f1": 1.0}


def test_always_minus_one_finds_no_error() -> None:
    # 2 error-free samples right, 2 erroneous samples wrong: acc_error 0, acc_correct 1, F1 0.
    scores = processbench_f1([-1, -1, 0, 3], [-1, -1, -1, -1])
    assert scores == {"acc_error": 0.0, "acc_correct": 1.0, "f1": 0.0}


def test_always_zero() -> None:
    # erroneous: gold 0, 0, 2 -> right, right, wrong = 2/3; error-free: wrong -> 0; F1 0.
    scores = processbench_f1([-1, 0, 0, 2], [0, 0, 0, 0])
    assert scores["acc_error"] == pytest.approx(2 / 3)
    assert scores["acc_correct"] == 0.0
    assert scores["f1"] == 0.0


def test_mixed() -> None:
    gold = [-1, -1, -1, 1, 2, 0]
    pred = [-1, 1, -1, 1, 1, -1]
    # error-free: 2 of 3 predicted -1; erroneous: only gold 1 hit exactly (a late or early guess is wrong)
    scores = processbench_f1(gold, pred)
    assert scores["acc_correct"] == pytest.approx(2 / 3)
    assert scores["acc_error"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * (2 / 3) * (1 / 3) / (2 / 3 + 1 / 3))  # 4/9


def test_all_correct_set_has_no_error_accuracy() -> None:
    # Only error-free samples: acc_error is undefined (NaN), and so is F1.
    scores = processbench_f1([-1, -1], [-1, 0])
    assert scores["acc_correct"] == 0.5
    assert math.isnan(scores["acc_error"]) and math.isnan(scores["f1"])


def test_all_erroneous_set_has_no_correct_accuracy() -> None:
    scores = processbench_f1([0, 2, 1], [0, 1, 1])
    assert scores["acc_error"] == pytest.approx(2 / 3)
    assert math.isnan(scores["acc_correct"]) and math.isnan(scores["f1"])


def test_harmonic_f1_edges() -> None:
    assert harmonic_f1(0.0, 0.0) == 0.0
    assert harmonic_f1(1.0, 0.5) == pytest.approx(2 / 3)
    assert math.isnan(harmonic_f1(math.nan, 1.0))


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        processbench_f1([-1, 0], [-1])


def test_mean_f1_is_the_plain_mean_over_subsets() -> None:
    subsets = {
        "gsm8k": {"acc_error": 0.5, "acc_correct": 0.5, "f1": 0.5},
        "math": {"acc_error": 1.0, "acc_correct": 1.0, "f1": 1.0},
        "olympiad": {"acc_error": 0.0, "acc_correct": 1.0, "f1": 0.0},
    }
    assert mean_f1(subsets) == pytest.approx(0.5)
    assert math.isnan(mean_f1({}))
