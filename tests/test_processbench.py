"""The ProcessBench metric on hand-computed cases, the file/prediction loaders, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.data.records import ProcessBenchRecord
from components.method.processbench import evaluate, evaluate_files, load_subset, predictions_from_rewards
from components.platform.cli import app
from components.platform.errors import DataError


def rec(rid: str, label: int, steps: int = 3) -> ProcessBenchRecord:
    return ProcessBenchRecord(rid, "g", "p", [f"s{i}" for i in range(steps)], label == -1, label)


MIXED = [rec("a", -1), rec("b", -1), rec("c", 0), rec("d", 2), rec("e", 1)]


def test_all_correct_set_has_no_error_accuracy_so_f1_is_undefined() -> None:
    records = [rec("a", -1), rec("b", -1)]
    scores = evaluate({"s": records}, {"a": -1, "b": 1})["subsets"]["s"]
    assert scores["acc_correct"] == 0.5
    assert math.isnan(scores["acc_error"]) and math.isnan(scores["f1"])


def test_all_erroneous_set() -> None:
    records = [rec("a", 0), rec("b", 2), rec("c", 1)]
    scores = evaluate({"s": records}, {"a": 0, "b": 1, "c": 1})["subsets"]["s"]
    assert scores["acc_error"] == pytest.approx(2 / 3)
    assert math.isnan(scores["acc_correct"])


def test_a_model_that_always_says_no_error() -> None:
    scores = evaluate({"s": MIXED}, {r.id: -1 for r in MIXED})["subsets"]["s"]
    assert scores == {"acc_error": 0.0, "acc_correct": 1.0, "f1": 0.0}


def test_a_model_that_always_flags_step_zero() -> None:
    scores = evaluate({"s": MIXED}, {r.id: 0 for r in MIXED})["subsets"]["s"]
    # error samples c (label 0) right, d and e wrong: 1/3; correct samples a, b both wrong: 0.
    assert scores["acc_error"] == pytest.approx(1 / 3)
    assert scores["acc_correct"] == 0.0
    assert scores["f1"] == 0.0


def test_mixed_subsets_and_the_plain_mean() -> None:
    gsm = [rec("g1", -1), rec("g2", 1), rec("g3", 0), rec("g4", -1)]
    math_ = [rec("m1", -1), rec("m2", 2)]
    preds = {"g1": -1, "g2": 1, "g3": 1, "g4": 0, "m1": -1, "m2": 2}
    result = evaluate({"gsm8k": gsm, "math": math_}, preds)
    g = result["subsets"]["gsm8k"]
    assert (g["acc_error"], g["acc_correct"]) == (0.5, 0.5)
    assert g["f1"] == pytest.approx(0.5)
    assert result["subsets"]["math"]["f1"] == 1.0
    assert result["mean_f1"] == pytest.approx(0.75)  # plain mean, not weighted by subset size


def test_harmonic_mean_value() -> None:
    records = [rec("a", -1), rec("b", -1), rec("c", -1), rec("d", -1), rec("e", 0), rec("f", 1)]
    preds = {"a": -1, "b": -1, "c": -1, "d": 2, "e": 0, "f": 0}
    scores = evaluate({"s": records}, preds)["subsets"]["s"]
    assert scores["f1"] == pytest.approx(2 * 0.5 * 0.75 / 1.25)


def test_missing_prediction_names_the_id() -> None:
    with pytest.raises(DataError, match="no prediction for id 'e'"):
        evaluate({"s": MIXED}, {r.id: -1 for r in MIXED[:-1]})


def test_predictions_from_rewards_use_the_half_threshold() -> None:
    records = [rec("a", -1), rec("b", 1)]
    preds = predictions_from_rewards(records, [[0.9, 0.5, 0.6], [0.7, 0.49, 0.1]])
    assert preds == {"a": -1, "b": 1}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pb_row(rid: str, label: int) -> dict:
    return {"id": rid, "generator": "x", "problem": "p", "steps": ["a", "b", "c"], "label": label}


def test_files_json_list_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "math.json").write_text(json.dumps([pb_row("m1", -1), pb_row("m2", 1)]))
    write_jsonl(tmp_path / "gsm8k.jsonl", [pb_row("g1", 0), pb_row("g2", -1)])
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": i, "prediction": p} for i, p in [("m1", -1), ("m2", 1), ("g1", 0), ("g2", 0)]],
    )
    result = evaluate_files([tmp_path / "math.json", tmp_path / "gsm8k.jsonl"], preds)
    assert result["subsets"]["math"]["f1"] == 1.0
    assert result["subsets"]["gsm8k"]["f1"] == 0.0
    assert result["mean_f1"] == 0.5


def test_bad_files_name_file_and_line(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [pb_row("a", -1), {"id": "b", "problem": "p", "steps": ["x"]}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'label'"):
        load_subset(bad)
    dup = write_jsonl(tmp_path / "dup.jsonl", [pb_row("a", -1), pb_row("a", 0)])
    with pytest.raises(DataError, match="duplicate id 'a'"):
        load_subset(dup)
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prediction": "x"}])
    with pytest.raises(DataError, match=r"p.jsonl:1: 'prediction' must be an int"):
        evaluate_files([write_jsonl(tmp_path / "ok.jsonl", [pb_row("a", -1)])], preds)


def test_cli_prints_and_writes_the_scores(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "gsm8k.jsonl", [pb_row("g1", 0), pb_row("g2", -1), pb_row("g3", 2)])
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": "g1", "prediction": 0}, {"id": "g2", "prediction": -1}, {"id": "g3", "prediction": 1}],
    )
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(
        app,
        ["benchmark", "processbench", "--data", str(data), "--predictions", str(preds), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "gsm8k" in result.output and "mean F1" in result.output
    saved = json.loads(out.read_text())
    assert saved["subsets"]["gsm8k"]["acc_error"] == 0.5
    assert saved["mean_f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_cli_missing_id_exits_2_naming_it(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "gsm8k.jsonl", [pb_row("g1", 0), pb_row("g2", -1)])
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "g1", "prediction": 0}])
    result = CliRunner().invoke(
        app, ["benchmark", "processbench", "--data", str(data), "--predictions", str(preds)]
    )
    assert result.exit_code == 2
    assert "'g2'" in result.output
