"""The label stage's inputs: kept rollout paths and ProcessBench records, grouped into units.

A unit is one problem with the paths to label (``components.method.montecarlo.Unit``); inputs are
checked here, so that a bad row fails before any sampling, naming the file and row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from components.data.records import ROLLOUT_NEEDED
from components.method.montecarlo import PathInput, Unit
from components.platform.errors import DataError

if TYPE_CHECKING:
    from components.stages.label import LabelConfig

MC0Source = Literal["completer", "rollout"]


def _row_error(path: Path | str, row: int, rec: dict[str, Any]) -> str | None:
    """Why a kept rollout row cannot be labelled, or None."""
    steps, gold, rate = rec["steps"], rec["gold_answer"], rec["pass_rate"]
    if steps is None or len(steps) == 0:
        return f"{path}: row {row} (path {rec['path_id']!r}) is kept but has no steps"
    if gold is None or (isinstance(gold, float) and math.isnan(gold)) or not str(gold).strip():
        return f"{path}: row {row} (problem {rec['problem_id']!r}) has no gold answer"
    if not isinstance(rate, int | float) or not 0.0 <= float(rate) <= 1.0:
        return f"{path}: row {row} (problem {rec['problem_id']!r}) has pass_rate {rate!r}, not in [0, 1]"
    return None


def rollout_units(
    frame: pd.DataFrame, path: Path | str = "<frame>", mc0: MC0Source = "completer"
) -> list[Unit]:
    """The kept paths of a rollout table grouped by problem (first-appearance order); checks input.

    ``mc0``: ``completer`` leaves each unit's MC_0 to be estimated (wave 0), ``rollout`` gives it the
    problem's pass rate.
    """
    missing = [c for c in ROLLOUT_NEEDED if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (label needs {', '.join(ROLLOUT_NEEDED)})")
    groups: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for row, rec in enumerate(frame.to_dict(orient="records"), start=1):
        if not bool(rec["kept"]):
            continue
        error = _row_error(path, row, rec)
        if error is None and str(rec["path_id"]) in seen:
            error = f"{path}: row {row} repeats path_id {rec['path_id']!r}"
        if error:
            raise DataError(error)
        seen.add(str(rec["path_id"]))
        groups.setdefault(str(rec["problem_id"]), []).append(rec)
    units = []
    for pid, recs in groups.items():
        paths = [PathInput(str(r["path_id"]), [str(s) for s in r["steps"]], bool(r["correct"])) for r in recs]
        first = recs[0]
        gold, rate = str(first["gold_answer"]), float(first["pass_rate"])
        units.append(
            Unit("rollout", pid, str(first["problem"]), gold, rate if mc0 == "rollout" else None, paths)
        )
    return units


def processbench_units(path: Path, limit: int | None = None) -> list[Unit]:
    """One unit per ProcessBench-format record (the first ``limit``); each needs its gold ``answer``."""
    from components.data.io import read_jsonl
    from components.data.records import processbench_from_dict

    units: list[Unit] = []
    for line, raw in read_jsonl(path):
        if limit is not None and len(units) >= limit:
            break
        rec = processbench_from_dict(raw, f"{path}:{line}")
        if rec.answer is None or not rec.answer.strip():
            raise DataError(f"{path}:{line}: record {rec.id!r} has no gold 'answer' (MC estimates need it)")
        paths = [PathInput(rec.id, rec.steps, rec.final_answer_correct, rec.label)]
        units.append(Unit("processbench", rec.id, rec.problem, rec.answer, None, paths))
    return units


def load_units(cfg: LabelConfig) -> list[Unit]:
    """Every unit to label, in canonical order: rollout problems, then ProcessBench records."""
    from components.data.io import read_parquet

    units = rollout_units(read_parquet(Path(cfg.input)), cfg.input, cfg.mc0) if cfg.input else []
    if cfg.processbench_input:
        units += processbench_units(Path(cfg.processbench_input), cfg.processbench_max_records)
    return units
