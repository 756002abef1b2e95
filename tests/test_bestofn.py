"""Best-of-N selectors on hand-made score tables, ties included."""

from __future__ import annotations

import math

import pytest

from components.method.bestofn import SELECTORS, Candidate, accuracy, answer_groups, select, solution_score


def c(answer: str | None, correct: bool, *rewards: float) -> Candidate:
    return Candidate(answer, correct, list(rewards))


def test_solution_scores() -> None:
    assert solution_score([0.9, 0.2, 0.7], "last") == 0.7
    assert solution_score([0.9, 0.2, 0.7], "min") == 0.2
    assert solution_score([0.9, 0.2, 0.7], "mean") == pytest.approx(0.6)
    assert solution_score([], "min") == 0.0


# A right answer with a weak last step but a good minimum, and a wrong one with a strong last step.
TABLE_ROW = [c("7", True, 0.6, 0.6, 0.55), c("9", False, 0.9, 0.1, 0.95), c("9", False, 0.8, 0.3, 0.9)]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("prm_last", 0.0),  # 0.95 wins: wrong
        ("prm_min", 1.0),  # 0.55 vs 0.1 vs 0.3: right
        ("prm_mean", 0.0),  # means 0.583 / 0.65 / 0.667: the third, wrong
        ("majority", 0.0),  # "9" twice
        ("pass_at_n", 1.0),
        ("random", 1 / 3),
    ],
)
def test_selectors_on_one_problem(selector: str, expected: float) -> None:
    assert select(TABLE_ROW, selector) == pytest.approx(expected)


def test_weighted_vote_sums_the_chosen_solution_score_per_answer() -> None:
    assert select(TABLE_ROW, "weighted_vote", vote_score="min") == 1.0  # "7": 0.55 > "9": 0.1 + 0.3
    assert select(TABLE_ROW, "weighted_vote", vote_score="last") == 0.0  # "7": 0.55 < "9": 0.95 + 0.9


def test_ties_go_to_the_earliest_candidate_or_first_seen_answer() -> None:
    tied = [c("1", False, 0.5, 0.8), c("2", True, 0.5, 0.8)]
    for selector in ("prm_last", "prm_min", "prm_mean"):
        assert select(tied, selector) == 0.0
        assert select(list(reversed(tied)), selector) == 1.0
    assert select(tied, "majority") == 0.0
    assert select(list(reversed(tied)), "majority") == 1.0
    assert select(tied, "weighted_vote") == 0.0


def test_unanswered_candidates_never_win_a_vote() -> None:
    row = [c(None, False, 0.99), c(None, False, 0.99), c("3", True, 0.1)]
    assert select(row, "majority") == 1.0
    assert select(row, "weighted_vote") == 1.0
    assert select(row, "prm_last") == 0.0
    assert select([c(None, False, 0.5)], "majority") == 0.0


def test_the_same_answer_counts_as_right_if_any_copy_is_graded_right() -> None:
    row = [c("1/2", True, 0.9), c("1/2", False, 0.9)]
    assert select(row, "majority") == 1.0


def test_accuracy_over_problems_uses_the_first_n() -> None:
    table = [
        [c("1", False, 0.9), c("2", True, 0.95)],
        [c("5", True, 0.7), c("6", False, 0.2)],
    ]
    assert accuracy(table, "prm_last", n=1) == 0.5
    assert accuracy(table, "prm_last", n=2) == 1.0
    assert accuracy(table, "pass_at_n", n=1) == 0.5
    assert accuracy(table, "random", n=2) == 0.5
    assert math.isnan(accuracy([], "prm_min"))


def test_unknown_selector_and_empty_rows_fail() -> None:
    with pytest.raises(ValueError, match="unknown selector"):
        select([c("1", True, 1.0)], "best")
    with pytest.raises(ValueError, match="no candidates"):
        select([], "prm_min")
    assert "prm_min" in SELECTORS


def test_votes_group_answers_by_math_equivalence() -> None:
    # 0.5, 1/2 and \frac{1}{2} are one answer (three votes), against 0.75 twice: removing spaces would
    # have counted three different answers and let 0.75 win the majority.
    row = [
        c("0.75", False, 0.9),
        c("1/2", True, 0.4),
        c("0.75", False, 0.9),
        c("0.5", True, 0.4),
        c("\\frac{1}{2}", True, 0.4),
    ]
    assert answer_groups(row) == [0, 1, 0, 1, 1]
    assert select(row, "majority") == 1.0
    assert select(row, "weighted_vote", vote_score="min") == 0.0  # 1.8 for 0.75 beats 1.2 for 1/2
    assert answer_groups([c(None, False), c("x + 1", True), c("1+x", True)]) == [None, 0, 0]
