"""ProcessBench evaluation (DESIGN.md §3): subsets from files, PRM predictions, per-subset F1 and the mean.

A subset is one ProcessBench-format file (jsonl, or a json list as published), named by its file stem.
A prediction is the index of the first wrong step, or -1. Any PRM's predictions can be evaluated:

    genprm benchmark processbench --data gsm8k.jsonl --data math.jsonl --predictions preds.jsonl --out f1.json

where ``preds.jsonl`` holds one ``{"id": ..., "prediction": ...}`` per record. The benchmark stage scores
the subsets with our GenPRM (``predictions_from_rewards``) and the teacher, its ceiling
(``predictions_from_verdicts``), and uses the same ``evaluate``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.data.io import read_jsonl
from components.data.records import ProcessBenchRecord, processbench_from_dict
from components.method.metrics import first_error_from_rewards, mean_f1, processbench_f1
from components.platform.errors import DataError


def load_subset(path: Path, limit: int | None = None) -> list[ProcessBenchRecord]:
    """The records of one ProcessBench-format file (jsonl, or json holding a list); errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such ProcessBench file")
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json ProcessBench file must hold a list of records")
        numbered = [(i, r) for i, r in enumerate(rows, start=1)]
    else:
        numbered = list(read_jsonl(path))
    records = []
    for line, rec in numbered[:limit] if limit else numbered:
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{line}: a record must be an object")
        records.append(processbench_from_dict(rec, f"{path}:{line}"))
    if not records:
        raise DataError(f"{path}: no records")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: duplicate id {dup!r}")
    return records


def load_predictions(path: Path) -> dict[str, int]:
    """``id -> prediction`` from a jsonl of ``{"id", "prediction"}`` records."""
    predictions: dict[str, int] = {}
    for line, rec in read_jsonl(Path(path)):
        if "id" not in rec or "prediction" not in rec:
            raise DataError(f"{path}:{line}: a prediction needs 'id' and 'prediction'")
        value = rec["prediction"]
        if not isinstance(value, int) or isinstance(value, bool) or value < -1:
            raise DataError(f"{path}:{line}: 'prediction' must be an int >= -1, got {value!r}")
        predictions[str(rec["id"])] = value
    return predictions


def evaluate(
    subsets: Mapping[str, Sequence[ProcessBenchRecord]], predictions: Mapping[str, int]
) -> dict[str, Any]:
    """Per-subset error accuracy, correct accuracy and F1, plus the mean F1 over subsets."""
    result: dict[str, Any] = {}
    for name, records in subsets.items():
        missing = [r.id for r in records if r.id not in predictions]
        if missing:
            raise DataError(f"predictions: no prediction for id {missing[0]!r} (subset {name})")
        result[name] = processbench_f1([r.label for r in records], [predictions[r.id] for r in records])
    return {"subsets": result, "mean_f1": mean_f1(result)}


def evaluate_files(data: list[Path], predictions: Path) -> dict[str, Any]:
    """``evaluate`` over files: each data file is one subset named by its stem."""
    stems = [Path(p).stem for p in data]
    if len(set(stems)) != len(stems):
        raise DataError(f"processbench: two --data files share a name: {stems}")
    return evaluate({Path(p).stem: load_subset(Path(p)) for p in data}, load_predictions(predictions))


def predictions_from_rewards(
    records: Sequence[ProcessBenchRecord], rewards: Sequence[Sequence[float]]
) -> dict[str, int]:
    """``id -> first step with reward < 0.5`` (or -1)."""
    return {r.id: first_error_from_rewards(rs) for r, rs in zip(records, rewards, strict=True)}


# A judge's per-step verdicts as rewards: a missing verdict (-1) is the GenPRM's NO_VERDICT_REWARD, 0.5,
# which is not below the threshold, so it never counts as an error found (the same rule for both).
VERDICT_REWARDS = {1: 1.0, 0: 0.0, -1: 0.5}


def predictions_from_verdicts(
    records: Sequence[ProcessBenchRecord], verdicts: Sequence[Sequence[int]]
) -> dict[str, int]:
    """``id -> first step with verdict 0`` (or -1) for a teacher's verdicts (1 right, 0 wrong, -1 none)."""
    rewards = [[VERDICT_REWARDS[int(v)] for v in vs] for vs in verdicts]
    return predictions_from_rewards(records, rewards)


def as_percent(scores: Mapping[str, Any]) -> dict[str, Any]:
    """The same nested dict with fractions as percentages rounded to 0.1 (NaN becomes None)."""
    out: dict[str, Any] = {}
    for key, value in scores.items():
        if isinstance(value, Mapping):
            out[key] = as_percent(value)
        elif isinstance(value, float):
            out[key] = None if math.isnan(value) else round(100 * value, 1)
        else:
            out[key] = value
    return out
