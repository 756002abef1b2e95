"""Bootstrap confidence intervals for the benchmark's figures, and for differences between systems.

Every figure of ``metrics/benchmark.json`` is an estimate from a few hundred records, so the benchmark
reports a 95% percentile-bootstrap interval beside it:

- ProcessBench F1: records are resampled with replacement *within* their stratum (subset x erroneous or
  error-free), so every resample keeps each subset's error-accuracy and correct-accuracy defined and the
  subsets' sizes fixed; the statistic is the plain mean F1 over subsets, as in the headline.
- Best-of-N accuracy: problems are resampled with replacement within their problem set.
- Contrasts (Maj@8 minus Pass@1, code on minus off, a PRM selector minus majority voting, ...): both
  systems are scored on the same records, so the interval of their difference uses the *same* resample
  for both (a paired bootstrap), which is much tighter than two separate intervals.

    strata = processbench_strata(subsets, golds)        # one stratum id per record
    boot = Bootstrap(strata, rounds=1000, seed=0)
    boot.interval(f1_statistic(golds, preds, subsets))               # (lo, hi) of mean F1
    boot.interval(difference(f1_statistic(...maj8), f1_statistic(...pass1)))

Pure numpy: arrays in, floats out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps a (rounds, n) matrix of resampled record indices to one value per round."""


class Bootstrap:
    """Stratified resamples of record indices, drawn once and shared by every statistic (paired)."""

    def __init__(self, strata: Sequence[int], rounds: int = 1000, seed: int = 0) -> None:
        if rounds < 1:
            raise ValueError("bootstrap: rounds must be >= 1")
        rng = np.random.default_rng(seed)
        strata_array = np.asarray(strata)
        columns = []
        for stratum in sorted(set(strata_array.tolist())):
            members = np.flatnonzero(strata_array == stratum)
            columns.append(rng.choice(members, size=(rounds, len(members)), replace=True))
        self.indices = np.concatenate(columns, axis=1) if columns else np.zeros((rounds, 0), dtype=int)

    def interval(self, statistic: Statistic, level: float = 0.95) -> tuple[float, float]:
        """The percentile interval of ``statistic`` over the resamples (NaN rounds are dropped)."""
        values = statistic(self.indices)
        values = values[~np.isnan(values)]
        if values.size == 0:
            return (float("nan"), float("nan"))
        tail = 100 * (1 - level) / 2
        return (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))


def processbench_strata(subsets: Sequence[str], golds: Sequence[int]) -> list[int]:
    """One stratum per (subset, erroneous or error-free) pair."""
    keys = [(subset, gold == -1) for subset, gold in zip(subsets, golds, strict=True)]
    ids = {key: k for k, key in enumerate(dict.fromkeys(keys))}
    return [ids[key] for key in keys]


def f1_statistic(golds: Sequence[int], preds: Sequence[int], subsets: Sequence[str]) -> Statistic:
    """Mean over subsets of the ProcessBench F1 (fractions) of each resample."""
    gold = np.asarray(golds)
    hit = np.asarray(preds) == gold
    names = np.asarray(subsets)
    groups = [(names == name) for name in dict.fromkeys(subsets)]

    def statistic(indices: np.ndarray) -> np.ndarray:
        f1s = []
        for in_subset in groups:
            err = _group_mean(hit, indices, in_subset & (gold != -1))
            ok = _group_mean(hit, indices, in_subset & (gold == -1))
            with np.errstate(invalid="ignore", divide="ignore"):
                f1 = np.where(err + ok > 0, 2 * err * ok / (err + ok), 0.0)
            f1s.append(f1)
        return np.mean(f1s, axis=0)

    return statistic


def _group_mean(values: np.ndarray, indices: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Per resample, the mean of ``values`` over the drawn records that are ``member``s (NaN: none)."""
    drawn = member[indices]
    counts = drawn.sum(axis=1)
    totals = (values[indices] & drawn).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def mean_statistic(values: Sequence[float]) -> Statistic:
    """The mean of per-record values (e.g. 1/0 per Best-of-N problem) over each resample."""
    array = np.asarray(values, dtype=float)
    return lambda indices: array[indices].mean(axis=1)


def difference(first: Statistic, second: Statistic) -> Statistic:
    """``first - second`` on the same resamples (the paired bootstrap of a contrast)."""
    return lambda indices: first(indices) - second(indices)


def percent_interval(interval: tuple[float, float]) -> dict[str, float | None]:
    """``{"lo": ..., "hi": ...}`` in percent rounded to 0.1 (NaN becomes None), for metrics files."""
    return {
        key: None if np.isnan(v) else round(100 * v, 1) for key, v in zip(("lo", "hi"), interval, strict=True)
    }


# ------------------------------------------------------------------------------- the benchmark's figures

Predictions = dict[str, dict[str, dict[str, int]]]
"""system -> ``maj@n`` -> {record id: predicted first error}."""


def processbench_intervals(
    records: Sequence[tuple[str, str, int]], predictions: Predictions, rounds: int = 1000, seed: int = 0
) -> dict[str, object]:
    """Intervals of every system's mean F1 and of the contrasts the paper's claims rest on.

    ``records``: (subset, id, gold label) of every scored record, in one order.
    Returns ``{"f1": {system: {maj@n: {lo, hi}}}, "contrasts": {name: {value, lo, hi}}}`` in percent.
    """
    subsets = [subset for subset, _, _ in records]
    golds = [gold for _, _, gold in records]
    boot = Bootstrap(processbench_strata(subsets, golds), rounds, seed)
    stats = {
        system: {
            key: f1_statistic(golds, [preds[rid] for _, rid, _ in records], subsets)
            for key, preds in keyed.items()
        }
        for system, keyed in predictions.items()
    }
    f1 = {
        system: {key: percent_interval(boot.interval(s)) for key, s in keyed.items()}
        for system, keyed in stats.items()
    }
    contrasts = {
        name: contrast(boot, stats[a][ka], stats[b][kb])
        for name, (a, ka, b, kb) in processbench_contrasts(predictions).items()
        if a in stats and b in stats and ka in stats[a] and kb in stats[b]
    }
    return {"f1": f1, "contrasts": contrasts}


def processbench_contrasts(predictions: Predictions) -> dict[str, tuple[str, str, str, str]]:
    """name -> (system, key, minus system, minus key): test-time scaling, code, direct, the ceiling."""
    keys = sorted(predictions.get("genprm", {}), key=lambda k: int(k.removeprefix("maj@")))
    pairs = {f"genprm_{key}_minus_maj@1": ("genprm", key, "genprm", "maj@1") for key in keys[1:]}
    pairs["genprm_code_on_minus_off"] = ("genprm", "maj@1", "genprm_no_code", "maj@1")
    pairs["genprm_minus_direct"] = ("genprm", "maj@1", "direct", "maj@1")
    pairs["teacher_minus_genprm"] = ("teacher", "maj@1", "genprm", "maj@1")
    return pairs


def contrast(boot: Bootstrap, first: Statistic, second: Statistic) -> dict[str, float | None]:
    """The difference on the full sample and its paired interval, in percent."""
    full = np.arange(boot.indices.shape[1])[None, :]
    value = float(difference(first, second)(full)[0])
    return {"value": round(100 * value, 1)} | percent_interval(boot.interval(difference(first, second)))


def best_of_n_intervals(
    scores: dict[str, dict[str, list[float]]], rounds: int = 1000, seed: int = 0
) -> dict[str, object]:
    """Per problem set: each selector's interval and each PRM selector minus majority voting (paired).

    ``scores``: set -> selector -> per-problem score (1/0; ``random``: the expected value) at one N.
    """
    out: dict[str, object] = {}
    for name, by_selector in scores.items():
        size = len(next(iter(by_selector.values()), []))
        if size == 0:
            continue
        boot = Bootstrap([0] * size, rounds, seed)
        stats = {sel: mean_statistic(values) for sel, values in by_selector.items()}
        out[name] = {
            "accuracy": {sel: percent_interval(boot.interval(s)) for sel, s in stats.items()},
            "minus_majority": {
                sel: contrast(boot, s, stats["majority"])
                for sel, s in stats.items()
                if sel not in ("majority", "pass_at_n", "random") and "majority" in stats
            },
        }
    return out


def benchmark_intervals(
    records: Sequence[tuple[str, str, int]],
    predictions: Predictions,
    per_problem: dict[str, dict[str, list[float]]],
    rounds: int = 1000,
) -> dict[str, object]:
    """The ``intervals`` section of ``metrics/benchmark.json``: ProcessBench and Best-of-N, 95%."""
    return {
        "processbench": processbench_intervals(records, predictions, rounds),
        "best_of_n": best_of_n_intervals(per_problem, rounds),
        "level": 95,
        "rounds": rounds,
    }
