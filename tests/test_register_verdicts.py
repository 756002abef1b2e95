"""``register`` and missing verdicts: a GenPRM that leaves turns unjudged is rejected, and versions whose
rewards came from different sources are not compared (issue 14, item 5).

The benchmark side (``verdicts`` in metrics/benchmark.json) is ``verdict_summary`` of
``components/stages/benchmark.py``, tested here on per-record rows like those the stage writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.method.processbench import as_percent
from components.platform.errors import ConfigError, DataError
from components.platform.registry import Champion, RegisterConfig, decide, verdict_evidence
from components.stages.benchmark import verdict_summary

CFG = RegisterConfig()


def test_a_high_missing_verdict_rate_is_rejected_even_when_forced() -> None:
    assert CFG.max_missing_verdict_rate == 5.0
    decision, reason = decide(CFG, 90.0, None, missing_rate=12.5)
    assert decision == "rejected" and "12.5% of the GenPRM's turns have no verdict" in reason
    assert decide(RegisterConfig(force=True), 90.0, None, missing_rate=12.5)[0] == "rejected"
    assert decide(CFG, 90.0, None, missing_rate=5.0)[0] == "promoted"  # at the limit is fine
    assert (
        decide(RegisterConfig(max_missing_verdict_rate=None), 90.0, None, missing_rate=80.0)[0] == "promoted"
    )
    with pytest.raises(ConfigError, match="max_missing_verdict_rate"):
        RegisterConfig(max_missing_verdict_rate=120.0)


def test_rewards_from_another_source_are_not_comparable() -> None:
    champion = Champion("3", 50.0, CFG.metric, "verdict_text")
    decision, reason = decide(CFG, 60.0, champion, missing_rate=0.0, reward_source="logprobs")
    assert decision == "kept_champion" and "not comparable" in reason
    assert decide(CFG, 60.0, champion, 0.0, "verdict_text")[0] == "promoted"
    assert decide(CFG, 60.0, Champion("3", 50.0, CFG.metric), 0.0, "logprobs")[0] == "promoted"  # untagged


def test_metrics_without_the_missing_verdict_count_are_refused() -> None:
    with pytest.raises(DataError, match=r"verdicts\.genprm\.missing_rate \(missing\)"):
        verdict_evidence(CFG, {"headline": {}})
    assert verdict_evidence(RegisterConfig(max_missing_verdict_rate=None), {}) == (None, None)
    metrics = {"verdicts": {"genprm": {"missing_rate": 2.5, "reward_source": "logprobs"}}}
    assert verdict_evidence(CFG, metrics) == (2.5, "logprobs")


def test_benchmark_metrics_count_missing_verdicts_and_sources() -> None:
    rows = [
        {"system": "genprm", "source_counts": {"logprobs": 7, "verdict_text": 0, "none": 1, "cut": 1}},
        {"system": "genprm", "source_counts": {"logprobs": 2, "verdict_text": 0, "none": 0}},
        {"system": "direct", "source_counts": {"logprobs": 0, "verdict_text": 3, "none": 0}},
        {"system": "teacher", "samples": [[1.0]]},  # the teacher's rows have no reward sources
    ]
    summary = as_percent(verdict_summary(rows))
    assert summary["genprm"] == {
        "turns": 10,
        "missing": 1,
        "missing_rate": 10.0,
        "cut_by_context": 1,  # the second row, from before the count existed, has no "cut"
        "sources": {"logprobs": 9, "verdict_text": 0, "none": 1},
        "reward_source": "logprobs",
    }
    assert summary["direct"]["reward_source"] == "verdict_text" and "teacher" not in summary
    json.dumps(summary)  # a DVC metrics file


def test_register_rejects_a_version_on_its_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from components.platform.registry import gather_evidence

    model = tmp_path / "models" / "genprm"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"x")
    metrics = {
        "headline": {"f1_maj@1": 70.0},
        "processbench": {"genprm": {"maj@1": {"mean_f1": 70.0}}},
        "verdicts": {"genprm": {"missing_rate": 30.0, "reward_source": "logprobs"}},
    }
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "benchmark.json").write_text(json.dumps(metrics))
    monkeypatch.chdir(tmp_path)
    evidence = gather_evidence(CFG)
    assert (evidence.missing_rate, evidence.reward_source) == (30.0, "logprobs")
    assert decide(CFG, evidence.value, None, evidence.missing_rate, evidence.reward_source)[0] == "rejected"
