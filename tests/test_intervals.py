"""Bootstrap intervals of the benchmark (components/method/intervals.py): pure numpy, exact checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.method.intervals import (
    Bootstrap,
    benchmark_intervals,
    best_of_n_intervals,
    difference,
    f1_statistic,
    mean_statistic,
    processbench_strata,
)
from components.method.metrics import mean_f1, processbench_f1


def records(n: int, subsets: tuple[str, ...] = ("a",)) -> tuple[list[str], list[int]]:
    """n records per subset, half erroneous (first error at step 1), half error-free."""
    names = [s for s in subsets for _ in range(n)]
    golds = [(1 if i % 2 else -1) for _ in subsets for i in range(n)]
    return names, golds


def test_the_statistic_on_the_whole_sample_is_the_headline_f1() -> None:
    names, golds = records(10, ("a", "b"))
    rng = np.random.default_rng(3)
    preds = [g if rng.random() < 0.6 else int(rng.integers(-1, 3)) for g in golds]
    full = np.arange(len(golds))[None, :]
    by_subset = {
        s: processbench_f1(
            [g for g, n in zip(golds, names, strict=True) if n == s],
            [p for p, n in zip(preds, names, strict=True) if n == s],
        )
        for s in ("a", "b")
    }
    assert f1_statistic(golds, preds, names)(full)[0] == pytest.approx(mean_f1(by_subset))


def test_a_perfect_predictor_has_a_zero_width_interval_and_chance_a_wide_one() -> None:
    names, golds = records(40)
    boot = Bootstrap(processbench_strata(names, golds), rounds=500, seed=0)
    assert boot.interval(f1_statistic(golds, golds, names)) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    noisy = [g if rng.random() < 0.5 else (-1 if g != -1 else 0) for g in golds]
    lo, hi = boot.interval(f1_statistic(golds, noisy, names))
    point = f1_statistic(golds, noisy, names)(np.arange(len(golds))[None, :])[0]
    assert lo < point < hi and hi - lo > 0.1


def test_strata_keep_both_groups_so_no_resample_is_undefined() -> None:
    names, golds = records(2)  # one erroneous, one error-free record
    boot = Bootstrap(processbench_strata(names, golds), rounds=200, seed=1)
    values = f1_statistic(golds, [-1, 1], names)(boot.indices)
    assert not np.isnan(values).any() and set(values.tolist()) == {1.0}


def test_the_interval_narrows_with_more_records() -> None:
    widths = []
    for n in (40, 400):
        names, golds = records(n)
        preds = [g if i % 3 else 0 for i, g in enumerate(golds)]
        lo, hi = Bootstrap(processbench_strata(names, golds), 500, 0).interval(
            f1_statistic(golds, preds, names)
        )
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_a_paired_contrast_is_tighter_than_the_separate_intervals() -> None:
    rng = np.random.default_rng(5)
    base = (rng.random(200) < 0.6).astype(float)
    better = np.where(rng.random(200) < 0.1, 1.0, base)  # the same problems, a few more right
    boot = Bootstrap([0] * 200, 1000, 0)
    lo, hi = boot.interval(difference(mean_statistic(better), mean_statistic(base)))
    a_lo, a_hi = boot.interval(mean_statistic(better))
    assert 0 <= lo < hi and hi - lo < (a_hi - a_lo) / 2
    same = boot.interval(difference(mean_statistic(base), mean_statistic(base)))
    assert same == (0.0, 0.0)


def test_benchmark_intervals_layout() -> None:
    names, golds = records(20)
    ids = [str(i) for i in range(len(golds))]
    recs = list(zip(names, ids, golds, strict=True))
    perfect = dict(zip(ids, golds, strict=True))
    says_ok = dict.fromkeys(ids, -1)
    predictions = {
        "genprm": {"maj@1": says_ok, "maj@8": perfect},
        "genprm_no_code": {"maj@1": says_ok},
    }
    bon = {"synthetic": {"majority": [1.0, 0.0] * 10, "prm_min": [1.0] * 20, "random": [0.5] * 20}}
    out = benchmark_intervals(recs, predictions, bon, rounds=300)
    pb = out["processbench"]
    assert pb["f1"]["genprm"]["maj@8"] == {"lo": 100.0, "hi": 100.0}
    assert pb["f1"]["genprm"]["maj@1"] == {"lo": 0.0, "hi": 0.0}  # never finds an error: F1 0
    gain = pb["contrasts"]["genprm_maj@8_minus_maj@1"]
    assert gain == {"value": 100.0, "lo": 100.0, "hi": 100.0}
    assert pb["contrasts"]["genprm_code_on_minus_off"]["value"] == 0.0
    assert "genprm_minus_direct" not in pb["contrasts"]  # no direct system scored: no contrast
    minus = out["best_of_n"]["synthetic"]["minus_majority"]
    assert set(minus) == {"prm_min"} and minus["prm_min"]["value"] == 50.0
    assert minus["prm_min"]["lo"] > 20 and out["rounds"] == 300


def test_empty_problem_sets_are_left_out() -> None:
    assert best_of_n_intervals({"empty": {"majority": []}}) == {}
    assert math.isnan(Bootstrap([0, 0], 10).interval(lambda idx: np.full(idx.shape[0], np.nan))[0])
