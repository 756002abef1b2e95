"""The label stage: K schedule, RPE and hard-MC labels, the wave schedule with early stop, bad input,
merged shards, and a SIGKILL-resumed run (components/stages/label.py, components/method/montecarlo.py).

The real-model tests use the tests' tiny random Qwen2, which practically never writes a ``\\boxed{}``:
a prefix whose steps box the gold answer gets MC 1, any other prefix MC 0, so the MC values (and which
waves run) are known in advance while generation is real.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from components.backends import (
    Backend,
    BackendConfig,
    GenerationRequest,
    GenerationResult,
    Sample,
    SamplingParams,
)
from components.data.journal import Journal
from components.method.montecarlo import (
    PathInput,
    Unit,
    estimate,
    hard_labels,
    k_for,
    prefix_seed,
    prefix_text,
    rpe_labels,
    sample_counts,
)
from components.platform.errors import ConfigError, DataError
from components.stages.label import LABEL_COLUMNS, PROCESSBENCH_COLUMNS, LabelConfig, main, rollout_units, run

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
GOLD = "9999"
BOX = f"so the total is \\boxed{{{GOLD}}}"


# ---------------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("mc0", "k"), [(0.0, 32), (0.099, 32), (0.1, 16), (0.5, 16), (0.899, 16), (0.9, 8), (1.0, 8)]
)
def test_k_schedule_defaults(mc0: float, k: int) -> None:
    assert k_for(mc0, LabelConfig()) == k


def test_k_schedule_paper_setting() -> None:
    cfg = LabelConfig(k_low=128, k_mid=64, k_high=32)
    assert [k_for(m, cfg) for m in (0.05, 0.1, 0.5, 0.95)] == [128, 64, 64, 32]


@pytest.mark.parametrize(
    ("mc0", "mc", "epsilon", "expected"),
    [
        (0.5, [0.5, 0.4, 0.0, 0.0], 0.8, [1, 1, 0, 0]),  # ratio 1.0, exactly 0.8, a drop to 0, after 0
        (0.5, [0.6, 0.3, 1.0], 0.8, [1, 0, 1]),  # ratio 0.5 fails; a recovery passes again
        (0.625, [0.5], 0.8, [1]),  # 5/8 -> 4/8 is exactly 0.8
        (0.3, [0.24], 0.8, [1]),  # 0.24 / 0.3 is 0.7999999999999999 in floats: the tolerance keeps it
        (0.5, [0.0, 0.5], 0.8, [0, 0]),  # the step after a step with MC 0 is 0 (0/0 and x/0 alike)
        (0.0, [0.0, 0.0], 0.8, [0, 0]),  # MC_0 = 0 and no progress after step 1 either
        (0.0, [0.5, 0.5], 0.8, [1, 1]),  # MC_0 = 0: step 1 is judged by MC_1 > 0 (the ratio at MC_0 -> 0+)
        (0.0, [0.25, 0.125], 0.8, [1, 0]),  # ... and later steps by the ratio as usual
        (0.0, [0.0, 1.0], 0.8, [0, 0]),  # a step after a step with MC 0 stays 0
        (0.0, [1.0], 0.8, [1]),  # a one-step correct path of a problem the completer never solved
        (0.5, [0.5, 0.625, 0.6], 1.0, [1, 1, 0]),  # epsilon 1: no drop at all allowed
        (0.5, [0.25, 0.125], 0.5, [1, 1]),
        (0.8, [0.2, 1.0], 0.5, [0, 1]),
    ],
)
def test_rpe_labels(mc0: float, mc: list[float], epsilon: float, expected: list[int]) -> None:
    assert rpe_labels(mc0, mc, epsilon) == expected


def test_hard_labels() -> None:
    assert hard_labels([0.5, 0.125, 0.0, 0.0]) == [1, 1, 0, 0]
    assert hard_labels([1.0, 0.0, 1.0]) == [1, 0, 1]
    # hard-MC is RPE's epsilon -> 0+ limit
    assert rpe_labels(0.5, [0.5, 0.125, 0.0, 0.0], 1e-6) == [1, 1, 0, 0]


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"label\.k_mid"):
        LabelConfig(k_mid=0)
    with pytest.raises(ConfigError, match="low_threshold"):
        LabelConfig(low_threshold=0.95)
    with pytest.raises(ConfigError, match="epsilon"):
        LabelConfig(epsilon_sweep=[0.0, 0.5])
    with pytest.raises(ConfigError, match=r"label\.shard"):
        LabelConfig(shard="2/2")
    with pytest.raises(ConfigError, match="nothing to label"):
        LabelConfig(input=None, processbench_input=None)
    assert LabelConfig(shard="merge").shard == "merge"


class ScriptedBackend(Backend):
    """Completion i of a request boxes the gold answer iff i < hits(prefill); others box nothing."""

    def __init__(self, hits: dict[str, int]) -> None:
        self.hits = hits
        self.calls: list[tuple[list[str], int, list[int | None]]] = []

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        self.calls.append(([r.prefill for r in requests], params.n, [r.seed for r in requests]))
        texts = [f"\\boxed{{{GOLD}}}", "\\boxed{12}", "no answer here"]
        return [
            GenerationResult(
                [
                    Sample(texts[0] if i < self.hits.get(r.prefill, 0) else texts[1 + i % 2], "stop", 5, 3)
                    for i in range(params.n)
                ]
            )
            for r in requests
        ]


def test_estimate_fractions_dedup_and_cost() -> None:
    shared = ["a", "b", "c"]
    unit = Unit(
        "rollout",
        "p1",
        "Q?",
        GOLD,
        0.5,
        [PathInput("p1/0", shared, True), PathInput("p1/1", [*shared[:2], "z"], False)],
    )
    backend = ScriptedBackend({prefix_text(shared, 1): 6, prefix_text(shared, 2): 3})
    cfg = LabelConfig(seed=5, k_mid=8)
    est = estimate(backend, cfg, unit)
    assert est.k == 8 and est.mc0 == 0.5
    # the two paths share steps 1-2: each wave is ONE request; the last step follows each path's answer
    assert est.mc == [[0.75, 0.375, 1.0], [0.75, 0.375, 0.0]]
    assert [len(prefills) for prefills, _, _ in backend.calls] == [1, 1]
    # each prefix's request starts its own completion stream
    assert [seeds for _, _, seeds in backend.calls] == [
        [prefix_seed(cfg, unit, prefix_text(shared, t))] for t in (1, 2)
    ]
    assert [s.completions for s in est.spend] == [16, 0], "a shared prefix is charged to its first path"
    assert est.spend[0].tokens == 48
    # the misses (6..7 in wave 1, 3..7 in wave 2) alternate \boxed{12} (even i) and no answer (odd i)
    assert est.spend[0].no_answer == 1 + 3


def test_mc0_comes_from_the_completer_or_the_rollout() -> None:
    """RPE's first ratio P_1 = MC_1 / MC_0 with both from the completer, or MC_0 = the rollout pass rate."""
    steps = ["a", "b", "c"]
    paths = [PathInput("p1/0", steps, True)]
    frame = pd.DataFrame(rollout_rows(1))
    # a weak policy (pass rate 0.25) and a strong completer: MC_0 = 8/8 from the bare prompt, MC_1 = 4/8
    backend = ScriptedBackend({"Step 1: ": 8, prefix_text(steps, 1): 4, prefix_text(steps, 2): 4})
    cfg = LabelConfig(mc0_samples=8, k_high=8, k_mid=8, epsilon=0.8)
    mixed = estimate(backend, cfg, Unit("rollout", "p1", "Q?", GOLD, 0.25, paths))
    assert len(backend.calls) == 2, "the pass rate is given: no wave 0"
    # the two models' numbers mixed: step 1 looks like progress (0.5 / 0.25 = 2)
    assert (mixed.mc0, mixed.mc[0][0], rpe_labels(mixed.mc0, mixed.mc[0], 0.8)) == (0.25, 0.5, [1, 1, 1])
    backend.calls.clear()
    [unit] = rollout_units(frame.assign(pass_rate=0.25), mc0="completer")
    own_unit = Unit(unit.kind, "p1", "Q?", GOLD, unit.mc0, paths)
    own = estimate(backend, cfg, own_unit)
    assert backend.calls[0] == (["Step 1: "], 8, [prefix_seed(cfg, own_unit, "Step 1: ")])
    # the completer against itself: step 1 halves its chance (0.5 / 1.0 < 0.8)
    assert (own.mc0, own.k, rpe_labels(own.mc0, own.mc[0], 0.8)) == (1.0, 8, [0, 1, 1])
    assert own.spend[0].completions == 8 + 8 + 8


def test_a_correct_path_with_mc0_zero_is_labelled_by_its_steps() -> None:
    """The completer never solves the bare problem (MC_0 = 0), but solves it after each step of a right
    path: the steps are sampled and labelled right, not all wrong because of MC_0."""
    steps = ["a", "b", "c"]
    backend = ScriptedBackend({prefix_text(steps, 1): 2, prefix_text(steps, 2): 16})
    cfg = LabelConfig(mc0_samples=8, k_low=16)
    unit = Unit("processbench", "r", "Q?", GOLD, None, [PathInput("r", steps, True, -1)])
    est = estimate(backend, cfg, unit)
    assert (est.mc0, est.k, est.mc) == (0.0, 16, [[0.125, 1.0, 1.0]])
    assert rpe_labels(est.mc0, est.mc[0], cfg.epsilon) == [1, 1, 1]
    assert hard_labels(est.mc[0]) == [1, 1, 1]


def test_mc0_source_is_part_of_the_journal_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress labelled with one MC_0 source is never resumed with the other."""
    from components.stages.label import stage_fingerprint

    write_inputs(tmp_path, 1, 1)
    monkeypatch.chdir(tmp_path)
    files = {"input": "in/rollouts.parquet", "processbench_input": "in/pb.jsonl"}
    completer, rollout = LabelConfig(**files), LabelConfig(**files, mc0="rollout")
    assert stage_fingerprint(completer) != stage_fingerprint(rollout)
    journal = Journal(tmp_path / "progress.jsonl", stage_fingerprint(rollout))
    journal.append("rollout:p0", [{"v": 1}])
    with pytest.raises(DataError, match="different settings"):
        Journal(tmp_path / "progress.jsonl", stage_fingerprint(completer))
    with pytest.raises(ConfigError, match=r"label\.mc0"):
        from components.platform.config import build_config

        build_config(LabelConfig, {"mc0": "policy"}, "label")


@pytest.mark.parametrize("mode", ["step_marker", "blank_line"])
def test_prefixes_hold_each_step_marker_once(mode: str) -> None:
    """Rollout paths split either way give the completer ``Step 1: a\\nStep 2: b\\n``, never
    ``Step 1: Step 1: a``: the rollout's prefill (and any marker the policy wrote) is no step content."""
    from components.method.paths import make_path

    text = {"step_marker": "2 + 3 = 5.\nStep 2: 5 * 2 = 10.\nStep 3: \\boxed{10}"}.get(
        mode, "2 + 3 = 5.\n\nStep 2: 5 * 2 = 10.\n\n\\boxed{10}"
    )
    path = make_path(0, 0, Sample(text, "stop", 10, 10), "10", mode)  # type: ignore[arg-type]
    assert path.steps == ["2 + 3 = 5.", "5 * 2 = 10.", "\\boxed{10}"]
    assert prefix_text(path.steps, 1) == "Step 1: 2 + 3 = 5.\n"
    assert prefix_text(path.steps, 2) == "Step 1: 2 + 3 = 5.\nStep 2: 5 * 2 = 10.\n"


def _paths_for_tiny_model() -> list[PathInput]:
    return [
        PathInput("a", [BOX, "keep going", "and on", BOX], True),  # alive to the end
        PathInput("b", ["a wrong start", "b2", "b3"], False),  # MC_1 = 0: no more sampling
        PathInput("c", [BOX, "something else", "c3"], False),  # shares step 1 with a
    ]


class Counting(Backend):
    """Wraps a backend and records each call's prefills."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        self.calls.append([r.prefill for r in requests])
        return self.inner.generate(requests, params)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest_backends import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_backend(tiny_model: Path) -> Backend:
    from components.backends import make_backend

    return make_backend(BackendConfig(model=str(tiny_model), batch_size=16))


def test_waves_stop_after_mc_zero_on_a_real_backend(tiny_backend: Backend) -> None:
    cfg = LabelConfig(k_mid=4, max_tokens=12)
    paths = _paths_for_tiny_model()
    counting = Counting(tiny_backend)
    est = estimate(counting, cfg, Unit("rollout", "p", "What is it?", GOLD, 0.5, paths))
    assert est.mc == [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    a, b, c = (p.steps for p in paths)
    assert counting.calls == [
        [prefix_text(a, 1), prefix_text(b, 1)],  # wave 1: a and c share their first step
        [prefix_text(a, 2), prefix_text(c, 2)],  # wave 2: b stopped at MC_1 = 0
        [prefix_text(a, 3)],  # wave 3: c has no step-3 prefix to sample (its last step is step 3)
    ]
    assert [s.completions for s in est.spend] == [12, 4, 4]
    # a problem whose paths all die in wave 1 costs one call; a record with MC_0 = 0 costs wave 0 and
    # wave 1 (MC_0 = 0 stops nothing: step 1 is judged by MC_1), then stops at MC_1 = 0
    counting.calls.clear()
    dead = [PathInput("x", ["nope", "n2", "n3"], False), PathInput("y", ["nah", "n2"], True)]
    assert estimate(counting, cfg, Unit("rollout", "q", "Q", GOLD, 0.5, dead)).mc == [[0.0] * 3, [0.0] * 2]
    assert len(counting.calls) == 1
    counting.calls.clear()
    record = Unit("processbench", "r", "Q", GOLD, None, [PathInput("r", ["s1", "s2", "s3"], True, -1)])
    est = estimate(counting, cfg, record)
    assert (est.mc0, est.k, est.mc) == (0.0, cfg.k_low, [[0.0, 0.0, 0.0]])
    assert counting.calls == [["Step 1: "], [prefix_text(["s1"], 1)]]


# ------------------------------------------------------------------------- sequential and binary search


def test_clopper_pearson_bounds() -> None:
    from components.method.sequential import clopper_pearson

    assert clopper_pearson(0, 10, 0.05) == (0.0, pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9))
    assert clopper_pearson(10, 10, 0.05) == (pytest.approx(0.025 ** (1 / 10), abs=1e-9), 1.0)
    lo, hi = clopper_pearson(5, 10, 0.05)  # the textbook interval of 5/10
    assert (round(lo, 4), round(hi, 4)) == (0.1871, 0.8129)
    assert clopper_pearson(0, 0, 0.05) == (0.0, 1.0)


def test_sequential_stops_when_decided_never_past_k() -> None:
    """Step 1 always hits: decided 1 (vs an exact MC_0 of 1) after 3 chunks, not K = 32; step 2 never
    hits: its hard label needs K misses, as in fixed K; step 2 opens as soon as step 1 has a hit."""
    from components.method.sequential import estimate_sequential

    steps = ["a", "b", "c"]
    backend = ScriptedBackend({prefix_text(steps, 1): 4})
    cfg = LabelConfig(sampling="sequential", k_high=32, chunk=4, delta=0.05, epsilon=0.5, seed=3)
    unit = Unit("rollout", "p", "Q?", GOLD, 1.0, [PathInput("p/0", steps, False)])
    est = estimate_sequential(backend, cfg, unit)
    assert (est.k, est.mc) == (32, [[1.0, 0.0, 0.0]])
    one, two = prefix_text(steps, 1), prefix_text(steps, 2)
    # 12 hits of 12: lower bound (0.003125 / 2) ** (1 / 12) = 0.58 >= 0.5 * 1 (9.3 samples would not do)
    assert [prefills for prefills, _, _ in backend.calls] == [[one], [one, two], [one, two]] + [[two]] * 6
    assert {n for _, n, _ in backend.calls} == {4}
    # each round continues a prefix's stream: completions 0-3, 4-7, 8-11 of step 1's, as fixed K draws them
    first, second = prefix_seed(cfg, unit, one), prefix_seed(cfg, unit, two)
    assert [seeds for _, _, seeds in backend.calls] == [
        [first],
        [first + 4, second],
        [first + 8, second + 4],
        *[[second + 4 * r] for r in range(2, 8)],
    ]
    assert est.spend[0].completions == 12 + 32
    assert rpe_labels(est.mc0, est.mc[0], 0.5) == [1, 0, 0]
    fixed = estimate(ScriptedBackend({one: 32}), cfg, unit)
    assert fixed.mc == est.mc and fixed.spend[0].completions == 64


def test_sequential_counts_the_uncertainty_of_the_previous_mc() -> None:
    """The same hits against an MC_0 from 16 completions (not exact) leave step 1 undecided up to K."""
    from components.method.sequential import estimate_sequential

    steps = ["a", "b"]
    backend = ScriptedBackend({"Step 1: ": 8, prefix_text(steps, 1): 4})
    cfg = LabelConfig(sampling="sequential", k_mid=16, chunk=4, epsilon=0.8, mc0_samples=16)
    unit = Unit("processbench", "r", "Q?", GOLD, None, [PathInput("r", steps, True, -1)])
    est = estimate_sequential(backend, cfg, unit)
    assert (est.mc0, est.k, est.mc) == (0.5, 16, [[1.0, 1.0]])
    # 16/16 against 8/16: lower bound 0.83 vs 0.8 * upper 0.82 of MC_0 at alpha 0.05 / 8: decided at K
    assert est.spend[0].completions == 16 + 16


def test_sequential_equals_fixed_on_the_tiny_model(tiny_backend: Backend) -> None:
    """MC values of 0 and 1 only: both modes give the same values; the sequential one never samples more."""
    from components.method.sequential import estimate_sequential

    cfg = LabelConfig(k_high=16, max_tokens=12, sampling="sequential", chunk=4, epsilon=0.5)
    unit = Unit("rollout", "p", "What is it?", GOLD, 1.0, _paths_for_tiny_model())
    fixed, sequential = estimate(tiny_backend, cfg, unit), estimate_sequential(tiny_backend, cfg, unit)
    assert sequential.mc == fixed.mc == [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    completions = [sum(s.completions for s in e.spend) for e in (fixed, sequential)]
    # MC_0 = 1 exact, alpha 0.05 / 8: 12 hits of 12 decide a step (lower bound 0.62 >= 0.5), 8 do not
    # (0.49); the prefix of b never hits: 16 misses, as in fixed K
    assert completions == [16 * 5, 12 * 4 + 16]


class StreamBackend(Backend):
    """Seeded per request like vLLM: completion i of a request with seed s hits the gold answer iff the
    draw ``Random(s + i)`` falls below its prefill's rate."""

    seeding = "request"

    def __init__(self, rates: dict[str, float]) -> None:
        self.rates = rates

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        import random

        def text(seed: int, prefill: str) -> str:
            return f"\\boxed{{{GOLD}}}" if random.Random(seed).random() < self.rates[prefill] else "no"

        return [
            GenerationResult(
                [Sample(text((r.seed or 0) + i, r.prefill or ""), "stop", 1, 1) for i in range(params.n)]
            )
            for r in requests
        ]


def test_chunks_read_the_same_stream_as_one_call() -> None:
    """On a backend seeded per request, sequential's and binary search's chunks are fixed K's samples."""
    from components.method.sequential import estimate_sequential

    steps = ["a", "b", "c", "d"]
    rates = {prefix_text(steps, t): r for t, r in ((1, 0.6), (2, 0.5), (3, 0.45))}
    backend = StreamBackend(rates)
    cfg = LabelConfig(sampling="sequential", k_mid=32, chunk=4, epsilon=0.8, seed=11)
    unit = Unit("rollout", "p", "Q?", GOLD, 0.6, [PathInput("p/0", steps, True)])
    prefixes = list(rates)
    whole = [hits for hits, _ in sample_counts(backend, cfg, unit, prefixes, 32)]
    chunks = [sample_counts(backend, cfg, unit, prefixes, 4, [4 * c] * 3) for c in range(8)]
    assert whole == [sum(chunk[i][0] for chunk in chunks) for i in range(3)]
    # delta -> 0 decides nothing before K: the sequential mode is then fixed K, draw for draw
    strict = dataclasses.replace(cfg, delta=1e-12)
    fixed = estimate(backend, cfg, unit)
    assert estimate_sequential(backend, strict, unit).mc == fixed.mc
    assert 0 < fixed.mc[0][2] < 1
    assert sum(s.completions for s in estimate_sequential(backend, cfg, unit).spend) <= 96


def test_predictive_distribution_of_fixed_k_hits() -> None:
    from components.method.predictive import final_hits, p_fixed_passes

    dist = final_hits(3, 8, 16)
    assert min(dist) == 3 and max(dist) == 11 and sum(dist.values()) == pytest.approx(1.0)
    assert final_hits(5, 16, 16) == {5: 1.0}  # every completion drawn: fixed K's count is known
    # exact values: MC_0 0.19 against K = 32 needs 5 hits (5/32 / 0.19 = 0.82 >= 0.8, 4/32 fails)
    assert p_fixed_passes(0.19, (5, 32), 32, 0.8) == 1.0 and p_fixed_passes(0.19, (4, 32), 32, 0.8) == 0.0
    # 12 of 16 against 10 of 32: fixed K needs 8 of 32, so 12 already pass
    assert p_fixed_passes((10, 32), (12, 16), 32, 0.8) == pytest.approx(1.0)
    undecided = p_fixed_passes((10, 32), (2, 8), 32, 0.8)
    assert 0.2 < undecided < 0.8
    assert p_fixed_passes((10, 32), 1.0, 32, 0.8) == 1.0 and p_fixed_passes((10, 32), 0.0, 32, 0.8) == 0.0
    # the previous prefix can still end at 0 hits (fixed K's path dead there): no pass from that mass
    assert p_fixed_passes((0, 4), (4, 4), 8, 0.8) < 1.0


def test_predictive_rule_stops_where_fixed_k_is_settled() -> None:
    """Step 1 hits every time against an exact MC_0 of 0.5: fixed K (32) would need 13 hits of 32, so
    after 12 of 12 the label is settled with posterior >= 1 - delta; the interval rule needs more."""
    from components.method.sequential import estimate_sequential

    steps = ["a", "b"]
    backend = ScriptedBackend({prefix_text(steps, 1): 4})
    cfg = LabelConfig(sampling="sequential", decide="predictive", k_mid=32, chunk=4, epsilon=0.8)
    unit = Unit("rollout", "p", "Q?", GOLD, 0.5, [PathInput("p/0", steps, True)])
    predictive = estimate_sequential(backend, cfg, unit)
    interval = estimate_sequential(
        ScriptedBackend({prefix_text(steps, 1): 4}), dataclasses.replace(cfg, decide="interval"), unit
    )
    assert predictive.mc == interval.mc == [[1.0, 1.0]]
    done = [sum(s.completions for s in e.spend) for e in (predictive, interval)]
    assert done[0] < done[1] <= 32 and done[0] <= 12
    from components.platform.config import build_config

    with pytest.raises(ConfigError, match=r"label\.decide"):
        build_config(LabelConfig, {"decide": "bayes"}, "label")


def test_binary_search_finds_the_first_error() -> None:
    from components.method.binarysearch import binary_search

    wrong, right = ["a", "b", "c", "d", "e"], ["a", "b", "x"]
    hits = {prefix_text(wrong, 1): 4, prefix_text(wrong, 2): 4, prefix_text(right, 2): 4}
    backend = ScriptedBackend(hits)
    cfg = LabelConfig(k_mid=8, chunk=4)
    unit = Unit("rollout", "p", "Q?", GOLD, 0.5, [PathInput("w", wrong, False), PathInput("r", right, True)])
    result = binary_search(backend, cfg, unit)
    assert result.first_errors == [2, -1]
    assert result.labels == [[1, 1, 0, 0, 0], [1, 1, 1]]
    # w probes step 3 (8 misses), then step 2, which r (same first two steps) probed already: a hit;
    # r probes step 2 (a hit), then knows step 3 (its own answer). The shared probe is charged to w.
    assert [prefills for prefills, _, _ in backend.calls] == [
        [prefix_text(wrong, 3), prefix_text(right, 2)],
        [prefix_text(wrong, 3)],
    ]
    assert [s.completions for s in result.spend] == [12, 0]


def test_sampling_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"label\.chunk: 3 must divide"):
        LabelConfig(sampling="sequential", chunk=3)
    assert LabelConfig(sampling="fixed", chunk=3).chunk == 3
    with pytest.raises(ConfigError, match=r"label\.delta"):
        LabelConfig(delta=1.0)
    with pytest.raises(ConfigError, match=r"label\.sampling"):
        from components.platform.config import build_config

        build_config(LabelConfig, {"sampling": "adaptive"}, "label")


# ----------------------------------------------------------------------------------------- bad input


def rollout_rows(problems: int, with_box: bool = True) -> list[dict[str, Any]]:
    """A rollout table: per problem two kept paths (one correct), one path that was not kept."""
    rows = []
    for p in range(problems):
        first = BOX if with_box and p % 2 == 0 else f"start {p}"
        paths = [([first, "then", f"\\boxed{{{GOLD}}}"], True, True), ([first, "oops"], False, True)]
        paths.append(([], False, False))  # a dropped path may have no steps
        for i, (steps, correct, kept) in enumerate(paths):
            rows.append(
                {
                    "problem_index": p,
                    "problem_id": f"p{p}",
                    "problem": f"Problem {p}?",
                    "gold_answer": GOLD,
                    "path_id": f"p{p}/{i}",
                    "round": 0,
                    "text": "",
                    "steps": steps,
                    "num_steps": len(steps),
                    "answer": None,
                    "correct": correct,
                    "valid": kept,
                    "finish_reason": "stop",
                    "num_prompt_tokens": 1,
                    "num_generated_tokens": 1,
                    "kept": kept,
                    "problem_status": "kept",
                    "pass_rate": 0.5,
                }
            )
    return rows


def test_rollout_units_group_kept_paths() -> None:
    units = rollout_units(pd.DataFrame(rollout_rows(2)), "r.parquet", mc0="rollout")
    assert [u.key for u in units] == ["rollout:p0", "rollout:p1"]
    assert [[p.path_id for p in u.paths] for u in units] == [["p0/0", "p0/1"], ["p1/0", "p1/1"]]
    assert units[0].mc0 == 0.5 and units[0].paths[0].correct and not units[0].paths[1].correct
    # the default: MC_0 is left to the completer (estimated in wave 0, like a ProcessBench record's)
    assert LabelConfig().mc0 == "completer"
    assert [u.mc0 for u in rollout_units(pd.DataFrame(rollout_rows(2)), "r.parquet")] == [None, None]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["pass_rate"]), r"r\.parquet: missing column 'pass_rate'"),
        (lambda f: f.assign(steps=[[], *f["steps"][1:]]), r"r\.parquet: row 1 \(path 'p0/0'\) is kept but"),
        (lambda f: f.assign(gold_answer=[GOLD, None, *f["gold_answer"][2:]]), r"row 2 .*no gold answer"),
        (lambda f: f.assign(gold_answer=" "), r"row 1 \(problem 'p0'\) has no gold answer"),
        (lambda f: f.assign(pass_rate=1.5), r"row 1 .*pass_rate 1\.5"),
        (lambda f: f.assign(path_id="same"), r"row 2 repeats path_id 'same'"),
    ],
)
def test_bad_rollout_tables(change: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        rollout_units(change(pd.DataFrame(rollout_rows(2))), "r.parquet")


def processbench_records(count: int, with_box: bool = True) -> list[dict[str, Any]]:
    records = []
    for i in range(count):
        steps = [BOX if with_box and i % 3 == 0 else "first", "second", f"\\boxed{{{GOLD}}}"]
        label = -1 if i % 2 == 0 else 1
        records.append(
            {
                "id": f"pb{i}",
                "generator": "t",
                "problem": f"PB {i}?",
                "steps": steps,
                "final_answer_correct": label == -1,
                "label": label,
                "answer": GOLD,
            }
        )
    return records


def write_inputs(folder: Path, problems: int, records: int) -> None:
    (folder / "in").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rollout_rows(problems)).to_parquet(folder / "in" / "rollouts.parquet", index=False)
    lines = [json.dumps(r) for r in processbench_records(records)]
    (folder / "in" / "pb.jsonl").write_text("\n".join(lines) + "\n")


def write_params(folder: Path, model: Path, **label: Any) -> Path:
    section = {
        "completer": {"model": str(model), "batch_size": 16},
        "k_low": 4,  # the tiny model never solves a bare problem: its MC_0 estimates are 0
        "k_mid": 4,
        "mc0_samples": 4,
        "max_tokens": 24,
        "threads": 1,
        "input": "in/rollouts.parquet",
        "processbench_input": "in/pb.jsonl",
        "output_dir": "out",
        **label,
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"label": section}))
    return path


def test_synthetic_processbench_records_carry_gold_answers() -> None:
    from components.data.records import processbench_from_dict
    from components.world.synthetic import SyntheticConfig, generate_problems, generate_processbench

    world = generate_problems(SyntheticConfig(), 10, seed=3)
    records = generate_processbench(SyntheticConfig(), world, seed=3, error_fraction=0.5)
    assert [r.answer for r in records] == [str(p.answer) for p in world]
    assert all(processbench_from_dict(r.to_dict(), "mem").answer == r.answer for r in records)


def test_processbench_record_without_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_inputs(tmp_path, 1, 2)
    records = processbench_records(2)
    del records[1]["answer"]
    (tmp_path / "in" / "pb.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"in/pb\.jsonl:2: record 'pb1' has no gold 'answer'"):
        main(write_params(tmp_path, tmp_path / "no-model"), [])


# ------------------------------------------------------------------------------ the stage end to end


def _tables(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Both output tables as plain rows (numpy arrays as lists) for exact comparison."""
    out = {}
    for name in ("labels", "processbench_labels"):
        frame = pd.read_parquet(folder / "out" / f"{name}.parquet")
        out[name] = [
            {k: v.tolist() if hasattr(v, "tolist") else v for k, v in row.items()}
            for row in frame.to_dict(orient="records")
        ]
    return out


def _outputs(metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's metrics without how it ran (its seconds and shard count)."""
    return {k: v for k, v in metrics.items() if k not in ("seconds", "shards")}


SAMPLINGS = pytest.mark.parametrize("sampling", ["fixed", "sequential"])


@SAMPLINGS
def test_one_run_equals_merged_shards(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampling: str
) -> None:
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    for folder in (one, sharded):
        write_inputs(folder, 3, 4)
    monkeypatch.chdir(one)
    metrics = main(write_params(one, tiny_model, sampling=sampling), [])
    assert not list((one / "out").glob(".progress-*")), "the journal is removed at the end"
    tables = _tables(one)
    assert list(pd.read_parquet(one / "out" / "labels.parquet").columns) == LABEL_COLUMNS
    assert list(pd.read_parquet(one / "out" / "processbench_labels.parquet").columns) == PROCESSBENCH_COLUMNS
    assert [r["path_id"] for r in tables["labels"]] == [f"p{p}/{i}" for p in range(3) for i in (0, 1)]
    boxed = tables["labels"][0]  # p0/0 boxes gold in step 1: MC 1, 1 (prefix), then its own answer
    assert (boxed["mc"], boxed["rpe_labels"], boxed["k"]) == ([1.0, 1.0, 1.0], [1, 1, 1], 4)
    assert boxed["mc0"] == 0.0, "MC_0 from the completer (the default), not the rollout pass rate 0.5"
    plain = tables["labels"][2]  # p1/0 never boxes before its last step: MC_1 = 0 and stop
    # cost: wave 0 (mc0_samples) and wave 1 (K), both charged to the problem's first path
    assert (plain["mc"], plain["hard_labels"], plain["completions"]) == ([0.0, 0.0, 0.0], [0, 0, 0], 8)
    assert metrics["rollouts"]["paths"] == 6 and metrics["processbench"]["paths"] == 4
    assert set(metrics["processbench"]["rpe"]) == {"acc_error", "acc_correct", "f1"}
    plot = json.loads((one / "plots" / "label_epsilon.json").read_text())
    assert [row["epsilon"] for row in plot] == [0.5, 0.8, 1.0]

    monkeypatch.chdir(sharded)
    params = write_params(sharded, tiny_model, sampling=sampling)
    for spec in ("1/2", "0/2"):
        main(params, [f"label.shard={spec}"])
    assert not (sharded / "out" / "labels.parquet").exists()
    merged = main(params, ["label.shard=merge"])
    assert _tables(sharded) == tables
    assert _outputs(merged) == _outputs(metrics)
    assert merged["shards"] == 2


def test_two_worker_processes_equal_one_run(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, parallel = tmp_path / "one", tmp_path / "parallel"
    for folder in (one, parallel):
        write_inputs(folder, 3, 4)
    monkeypatch.chdir(one)
    metrics = main(write_params(one, tiny_model), [])
    monkeypatch.chdir(parallel)
    both = main(write_params(parallel, tiny_model, workers=2), [])
    assert _tables(parallel) == _tables(one)
    assert both["shards"] == 2 and not (parallel / "out" / "shards").exists()
    assert _outputs(both) == _outputs(metrics)


@SAMPLINGS
def test_merge_needs_every_shard(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampling: str
) -> None:
    write_inputs(tmp_path, 2, 0)
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, tiny_model, processbench_input=None, sampling=sampling)
    main(params, ["label.shard=0/2"])
    with pytest.raises(DataError, match=r"manifest-1of2\.json: shard 1/2 is missing"):
        main(params, ["label.shard=merge"])
    main(params, ["label.shard=1/2", "label.threads=2"])  # threads do not change what a shard writes
    with pytest.raises(DataError, match=r"manifest-0of2\.json: shard 0/2 was made with other settings"):
        main(params, ["label.shard=merge", "label.epsilon=0.5"])
    other = "fixed" if sampling == "sequential" else "sequential"
    with pytest.raises(DataError, match=r"manifest-0of2\.json: shard 0/2 was made with other settings"):
        main(params, ["label.shard=merge", f"label.sampling={other}"])
    assert main(params, ["label.shard=merge"])["shards"] == 2


@SAMPLINGS
def test_run_resumes_from_the_journal(tiny_backend: Backend, tmp_path: Path, sampling: str) -> None:
    cfg = LabelConfig(k_mid=4, max_tokens=12, sampling=sampling)  # type: ignore[arg-type]
    units = rollout_units(pd.DataFrame(rollout_rows(3)), mc0="rollout")  # p0, p2: two waves, p1 one
    counting = Counting(tiny_backend)
    full = run(cfg, units, Journal(tmp_path / "a.jsonl", "f"), counting)
    assert len(counting.calls) == 5
    run(cfg, units[:2], Journal(tmp_path / "b.jsonl", "f"), tiny_backend)
    counting.calls.clear()
    assert run(cfg, units, Journal(tmp_path / "b.jsonl", "f"), counting) == full
    assert len(counting.calls) == 2, "only the unit left over (p2) is labelled"


@pytest.mark.slow
@SAMPLINGS
def test_sigkill_then_resume_gives_the_uninterrupted_table(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampling: str
) -> None:
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for folder in (clean, killed):
        write_inputs(folder, 4, 24)
        write_params(folder, tiny_model, max_tokens=48, sampling=sampling)
    monkeypatch.chdir(clean)
    main(clean / "params.yaml", [])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GENPRM_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "components.platform.cli", "label"]
    proc = subprocess.Popen(command, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = killed / "out" / ".progress-0of1.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"  # type: ignore[union-attr]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = journal.read_bytes().count(b"\n")
    assert 2 <= done < 28 and not (killed / "out" / "labels.parquet").exists()
    rerun = subprocess.run(command, cwd=killed, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    assert _tables(killed) == _tables(clean)
    ids = [r["path_id"] for r in _tables(killed)["processbench_labels"]]
    assert len(ids) == len(set(ids)) == 24 and not journal.exists()
