"""The ceiling (issue 13 item 3): the program teacher judges a small synthetic ProcessBench set.

The records come from the world's own generator (``generate_processbench``: gold solutions and single
injected errors with their exact first-error label); the benchmark stage's ``score_teacher`` runs the
teacher in the real sandbox and scores its verdicts with the same first-error and F1 code as the GenPRM.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.data.records import ProcessBenchRecord
from components.method.metrics import first_error_from_rewards, processbench_f1
from components.method.processbench import predictions_from_verdicts
from components.method.teachers import TeacherConfig
from components.platform.params import load_value
from components.stages.benchmark import BenchmarkConfig, ProcessBenchSetConfig, f1_plot_rows, score_teacher
from components.world.synthetic import SyntheticConfig, generate_problems, generate_processbench

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world = SyntheticConfig()
    records = generate_processbench(world, generate_problems(world, 48, seed=11, prefix="pb"), 3, 0.6)
    path = tmp_path_factory.mktemp("pb") / "synthetic_pb.jsonl"
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ceiling(bench_file: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    cfg = BenchmarkConfig(processbench=ProcessBenchSetConfig(files=[str(bench_file)], max_records=None))
    metrics, rows = score_teacher(cfg, TeacherConfig(threads=2))
    records = [json.loads(line) for line in bench_file.read_text(encoding="utf-8").splitlines()]
    return metrics, rows, records


def test_missing_verdicts_are_not_errors_found() -> None:
    recs = [ProcessBenchRecord(i, "g", "p", ["a", "b", "c"], True, -1) for i in ("x", "y", "z")]
    preds = predictions_from_verdicts(recs, [[1, 1, 1], [1, 0, 0], [-1, 1, 0]])
    assert preds == {"x": -1, "y": 1, "z": 2}


def test_the_teacher_catches_every_arithmetic_slip_at_its_step(ceiling: Any) -> None:
    _, rows, records = ceiling
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    found: Counter = Counter()
    for row, record in zip(rows, records, strict=True):
        pred = first_error_from_rewards(row["samples"][0])
        found[(record["generator"], pred == record["label"])] += 1
        assert row["system"] == "teacher" and row["missing_verdicts"] == 0 and row["code_failures"] == 0
    assert found[("synthetic-arithmetic", True)] >= 3, found
    assert found[("synthetic-arithmetic", False)] == 0, found
    assert found[("synthetic-gold", False)] == 0, found  # no false alarm on a gold solution
    # A wrong operation keeps every claim's arithmetic and operands right: the program teacher cannot see it.
    assert found[("synthetic-operation", False)] >= 1, found


def test_the_ceiling_is_scored_with_the_same_f1_code(ceiling: Any, bench_file: Path) -> None:
    metrics, rows, records = ceiling
    gold = [r["label"] for r in records]
    pred = [first_error_from_rewards(row["samples"][0]) for row in rows]
    expected = processbench_f1(gold, pred)
    scores = metrics["maj@1"]["subsets"][bench_file.stem]
    assert scores == pytest.approx(expected)
    assert metrics["maj@1"]["mean_f1"] == pytest.approx(expected["f1"])
    assert scores["acc_correct"] == 1.0 and 0.0 < scores["acc_error"] < 1.0
    assert metrics["missing_verdict_rate"] == 0.0


def test_the_plot_draws_the_teacher_at_every_n() -> None:
    pb = {
        "genprm": {"maj@1": {"mean_f1": 20.0}, "maj@4": {"mean_f1": 30.0}},
        "direct": {"maj@1": {"mean_f1": 1.0}},
        "teacher": {"maj@1": {"mean_f1": 80.0}, "missing_verdict_rate": 0.0},
    }
    assert f1_plot_rows(pb) == [
        {"n": 1, "genprm": 20.0, "direct": 1.0, "teacher": 80.0},
        {"n": 4, "genprm": 30.0, "teacher": 80.0},
    ]


def test_the_benchmark_stage_declares_the_teacher_params_it_reads(tmp_path: Path) -> None:
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["benchmark"]
    assert "synthesize.teacher" in stage["params"]
    params = tmp_path / "params.yaml"
    params.write_text("synthesize:\n  teacher:\n    threads: 3\n", encoding="utf-8")
    assert load_value(params, [], "synthesize.teacher", TeacherConfig) == TeacherConfig(threads=3)
