"""The records passed between stages: one schema module for every artifact.

Problems tables are parquet with columns ``id, source, problem, answer, metadata`` (metadata is a JSON
string, so heterogeneous sources share one schema). ProcessBench-format files are jsonl with
``id, generator, problem, steps, final_answer_correct, label`` (label = 0-based index of the first
wrong step, -1 if all steps are right), the format of Qwen/ProcessBench, plus an optional gold final
``answer`` (the synthetic set writes it; Monte Carlo labelling needs it). Rollout tables are parquet
with one row per sampled path (``ROLLOUT_COLUMNS``; ``validate_rollouts`` checks one).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from components.platform.errors import DataError

PROBLEM_COLUMNS = ["id", "source", "problem", "answer", "metadata"]

StepSplit = Literal["step_marker", "blank_line"]
"""How a solution is cut into steps: ``Step k:`` markers, or paragraphs separated by blank lines."""

ROLLOUT_COLUMNS = [
    "problem_index",
    "problem_id",
    "problem",
    "gold_answer",
    "path_id",
    "round",
    "text",
    "steps",
    "num_steps",
    "answer",
    "correct",
    "valid",
    "finish_reason",
    "num_prompt_tokens",
    "num_generated_tokens",
    "kept",
    "problem_status",
    "pass_rate",
]
"""One row per sampled path of the rollout stage; ``pass_rate`` is the problem's MC_0."""

# The label stage's tables: one row per labelled path (ProcessBench records add their true label).
ROLLOUT_NEEDED = ("problem_id", "problem", "gold_answer", "path_id", "steps", "correct", "kept", "pass_rate")
LABEL_COLUMNS = [
    "path_id", "problem_id", "problem", "gold_answer", "steps", "correct", "mc0", "k", "mc",
    "rpe_labels", "hard_labels", "completions", "tokens_generated", "no_answer_count",
]  # fmt: skip
PROCESSBENCH_COLUMNS = [*LABEL_COLUMNS, "label"]

# The synthesize stage's rationale table: one row per critiqued path.
RATIONALE_NEEDED = (
    "path_id", "problem_id", "problem", "gold_answer", "steps", "correct", "rpe_labels", "hard_labels",
)  # fmt: skip
RATIONALE_COLUMNS = [
    "path_id", "problem_id", "problem", "gold_answer", "steps", "correct", "rpe_labels", "hard_labels",
    "labels", "verdicts", "turns", "rounds", "code_runs", "code_errors", "code_timeouts", "parse_failed",
    "kept", "consensus", "teacher",
]  # fmt: skip

# Only blanks after the colon: a newline there may begin the next marker ("Step 2:\nStep 3: ...").
STEP_MARKER = re.compile(r"(?:^|\n)\s*Step\s+(\d+)\s*:[ \t]*")
BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
LEADING_MARKER = re.compile(r"^\s*Step\s+\d+\s*:[ \t]*")


@dataclass(frozen=True)
class Problem:
    """A math problem with its gold final answer."""

    id: str
    source: str
    problem: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["metadata"] = json.dumps(self.metadata, sort_keys=True, ensure_ascii=False)
        return row


@dataclass(frozen=True)
class ProcessBenchRecord:
    """A step-by-step solution with the index of its first wrong step (-1: none)."""

    id: str
    generator: str
    problem: str
    steps: list[str]
    final_answer_correct: bool
    label: int
    answer: str | None = None  # the gold final answer where known (Monte Carlo labelling needs it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def problems_to_frame(problems: list[Problem]) -> pd.DataFrame:
    """The problems table in its on-disk schema."""
    return pd.DataFrame([p.to_row() for p in problems], columns=PROBLEM_COLUMNS)


def problems_from_frame(frame: pd.DataFrame, path: Path | str = "<frame>") -> list[Problem]:
    """Parse a problems table; a missing column or empty answer raises DataError naming file and row."""
    missing = [c for c in PROBLEM_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (expected {', '.join(PROBLEM_COLUMNS)})")
    problems = []
    for row, rec in enumerate(frame.to_dict(orient="records"), start=1):
        if not str(rec["answer"] or "").strip():
            raise DataError(f"{path}: row {row} (id {rec['id']!r}) has an empty answer")
        problems.append(
            Problem(
                id=str(rec["id"]),
                source=str(rec["source"]),
                problem=str(rec["problem"]),
                answer=str(rec["answer"]),
                metadata=json.loads(rec["metadata"]) if rec["metadata"] else {},
            )
        )
    return problems


def validate_rollouts(frame: pd.DataFrame, path: Path | str = "<frame>") -> pd.DataFrame:
    """Check a rollout table: every column of ``ROLLOUT_COLUMNS``, unique path ids, steps on kept paths.

    Raises DataError naming ``path`` and the missing column, or the (1-based) row at fault.
    """
    missing = [c for c in ROLLOUT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (expected {', '.join(ROLLOUT_COLUMNS)})")
    duplicated = frame["path_id"].duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().argmax()) + 1
        raise DataError(f"{path}: row {row} repeats path_id {frame['path_id'].iloc[row - 1]!r}")
    for row, (path_id, kept, steps) in enumerate(
        zip(frame["path_id"], frame["kept"], frame["steps"], strict=True), start=1
    ):
        if bool(kept) and (steps is None or len(steps) == 0):
            raise DataError(f"{path}: row {row} (path {path_id!r}) is kept but has no steps")
    return frame


def processbench_from_dict(rec: dict[str, Any], where: str) -> ProcessBenchRecord:
    """Parse one ProcessBench-format record; ``where`` (file:line) is named on error."""
    for key in ("id", "problem", "steps", "label"):
        if key not in rec:
            raise DataError(f"{where}: missing field {key!r}")
    steps = rec["steps"]
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise DataError(f"{where}: 'steps' must be a non-empty list of strings")
    label = rec["label"]
    if not isinstance(label, int) or isinstance(label, bool) or not -1 <= label < len(steps):
        raise DataError(f"{where}: 'label' must be an int in [-1, {len(steps) - 1}], got {label!r}")
    return ProcessBenchRecord(
        id=str(rec["id"]),
        generator=str(rec.get("generator", "unknown")),
        problem=str(rec["problem"]),
        steps=list(steps),
        final_answer_correct=bool(rec.get("final_answer_correct", label == -1)),
        label=label,
        answer=None if rec.get("answer") is None else str(rec["answer"]),
    )


def split_steps(text: str, mode: StepSplit = "step_marker") -> list[str]:
    """Split a solution into step texts (stripped, empty ones dropped), never holding a step marker.

    ``step_marker`` (default): at ``Step k:`` markers, which are removed; text before the first marker
    counts as a step of its own only when non-empty. ``blank_line``: paragraphs separated by one or more
    blank lines; a ``Step k:`` that opens a paragraph (the rollout's ``Step 1: `` prefill, or one the
    model wrote) is removed too, text inside a paragraph stays as written. Either way a step is its
    content only: whatever renders steps again (``prompts.solution_text`` for the completer's prefixes,
    the critique conversations) writes the markers once.
    """
    if mode == "blank_line":
        paragraphs = (LEADING_MARKER.sub("", p, count=1).strip() for p in BLANK_LINES.split(text))
        return [p for p in paragraphs if p]
    if mode != "step_marker":
        raise ValueError(f"unknown step split mode {mode!r} (known: step_marker, blank_line)")
    parts = STEP_MARKER.split(text)
    head, rest = parts[0].strip(), parts[1:]
    steps = [head] if head else []
    steps.extend(body.strip() for body in rest[1::2])
    return [s for s in steps if s]


def normalize_text(text: str) -> str:
    """Problem text for deduplication: lower case, runs of whitespace as one space, stripped."""
    return re.sub(r"\s+", " ", text).strip().lower()
