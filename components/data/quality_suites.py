"""What each table hand-off must satisfy: derived columns and the Great Expectations rules over them.

``components/data/quality.py`` runs these rules with Great Expectations; this module only builds plain data
(pandas frames and :class:`Rule` records), so it imports neither GE nor any stage. A hand-off is checked
as one or two batches: ``rows`` (one row per record, with derived columns such as list lengths, the role
sequence of a conversation or the normalized problem text found in a test set) and ``steps`` (one row
per step, exploded from the per-step lists, with the labels, MC values, verdicts and the code/output
counts of each verify block). Structural checks GE cannot express become derived columns that plain
GE expectations then assert; a derived column is null where its check does not apply (GE skips nulls).

    batches = labels(frame, Bounds.of(cfg, test_texts=frozenset({"a tank holds 3 liters ..."})))

The conversation hand-offs (rationales, sft, sft_direct) are in ``components/data/quality_turns.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from components.data.records import normalize_text

if TYPE_CHECKING:
    from components.data.quality import QualityConfig

Severity = Literal["critical", "warning"]
Kind = Literal["str", "int", "float", "bool", "list"]

LIST_TYPES = (list, tuple)
ROLLOUT_STATUSES = ["kept", "easy", "hard", "unbalanced"]  # components.stages.rollout.STATUSES


@dataclass(frozen=True)
class Rule:
    """One expectation: the GE class name, its arguments and how bad a failure is."""

    expectation: str
    kwargs: dict[str, Any]
    severity: Severity = "critical"

    def columns(self) -> list[str]:
        """The columns it reads (a missing one is reported by its existence rule instead)."""
        if self.expectation == "ExpectColumnToExist":
            return []
        return [self.kwargs[k] for k in ("column", "column_A", "column_B") if k in self.kwargs]


@dataclass(frozen=True)
class Batch:
    """A frame to validate with its rules; ``index_columns`` name offending rows in messages."""

    name: str
    frame: pd.DataFrame
    rules: list[Rule]
    index_columns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Bounds:
    """The thresholds rules take from the quality config, and whether this artifact is a training one."""

    min_steps: int
    max_steps: int
    kept_rate_min: float
    kept_rate_max: float
    test_texts: frozenset[str] | None  # None: a test artifact (no leak check)

    @classmethod
    def of(cls, cfg: QualityConfig, test_texts: frozenset[str] | None) -> Bounds:
        return cls(cfg.min_steps, cfg.max_steps, cfg.kept_rate_min, cfg.kept_rate_max, test_texts)


# --------------------------------------------------------------------------------------- rule helpers


def schema_rules(schema: dict[str, Kind], required: list[str]) -> list[Rule]:
    """Every column exists with its type; ``required`` ones hold no nulls (list columns: a list each)."""
    rules = [Rule("ExpectColumnToExist", {"column": c}) for c in schema]
    for col, kind in schema.items():
        if kind == "list":
            rules.append(
                Rule("ExpectColumnValuesToBeInSet", {"column": f"{col}_type", "value_set": ["list"]})
            )
        else:
            rules.append(Rule("ExpectColumnValuesToBeOfType", {"column": col, "type_": kind}))
    rules += [Rule("ExpectColumnValuesToNotBeNull", {"column": c}) for c in required]
    return rules


def between(column: str, low: float | None, high: float | None, severity: Severity = "critical") -> Rule:
    return Rule(
        "ExpectColumnValuesToBeBetween", {"column": column, "min_value": low, "max_value": high}, severity
    )


def in_set(column: str, values: list[Any], severity: Severity = "critical") -> Rule:
    return Rule("ExpectColumnValuesToBeInSet", {"column": column, "value_set": values}, severity)


def equal(column_a: str, column_b: str) -> Rule:
    return Rule(
        "ExpectColumnPairValuesToBeEqual",
        {"column_A": column_a, "column_B": column_b, "ignore_row_if": "either_value_is_missing"},
    )


def unique(column: str) -> Rule:
    return Rule("ExpectColumnValuesToBeUnique", {"column": column})


def leak_rules(bounds: Bounds) -> list[Rule]:
    return (
        [] if bounds.test_texts is None else [Rule("ExpectColumnValuesToBeNull", {"column": "test_problem"})]
    )


def step_count_rule(bounds: Bounds, column: str = "num_steps", severity: Severity = "critical") -> Rule:
    return between(column, bounds.min_steps, bounds.max_steps, severity)


# ---------------------------------------------------------------------------------- derived columns


def is_list(value: Any) -> bool:
    return isinstance(value, LIST_TYPES) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1)


def add_list_columns(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``<col>_type`` ("list" or the value's type name) and ``<col>_len`` (null for non-lists)."""
    for col in columns:
        if col in frame.columns:
            values = frame[col]
            frame[f"{col}_type"] = ["list" if is_list(v) else type(v).__name__ for v in values]
            frame[f"{col}_len"] = pd.array([len(v) if is_list(v) else None for v in values], dtype="Int64")
    return frame


def only_where(frame: pd.DataFrame, mask_column: str, column: str, name: str) -> None:
    """``name``: ``column`` on rows where ``mask_column`` is true, null elsewhere."""
    if mask_column in frame.columns and column in frame.columns:
        mask = frame[mask_column].fillna(False).astype(bool)
        frame[name] = frame[column].astype(object).where(mask, None)


def leaked(texts: list[Any], test_texts: frozenset[str], prefixes: bool = False) -> list[str | None]:
    """The normalized test problem each text is (or, with ``prefixes``, starts with a line-prefix of)."""
    found: list[str | None] = []
    for text in texts:
        text = text if isinstance(text, str) else ""
        cuts = [m.start() for m in re.finditer("\n", text)] + [len(text)] if prefixes else [len(text)]
        hits = [normalize_text(text[:cut]) for cut in cuts if normalize_text(text[:cut]) in test_texts]
        found.append(hits[0] if hits else None)
    return found


def explode(frame: pd.DataFrame, key: str, columns: list[str]) -> pd.DataFrame:
    """One row per (record, step) from per-row lists; lists of unequal length are padded with nulls."""
    keys = list(frame[key]) if key in frame.columns else list(range(len(frame)))
    parts = []
    for col in (c for c in columns if c in frame.columns):
        rows = [
            (r, i, v) for r, values in enumerate(frame[col]) if is_list(values) for i, v in enumerate(values)
        ]
        parts.append(pd.DataFrame(rows, columns=["row", "step", col]).set_index(["row", "step"]))
    if not parts:
        return pd.DataFrame({key: pd.Series([], dtype=object), "step": pd.Series([], dtype="int64")})
    steps = pd.concat(parts, axis=1, join="outer").reset_index()
    steps = steps.astype({c: object for c in steps.columns if c not in ("row", "step")})
    steps.insert(0, key, [keys[r] for r in steps.pop("row")])
    return steps


def rows_view(frame: pd.DataFrame, lists: list[str], bounds: Bounds, text: str = "problem") -> pd.DataFrame:
    """A copy of ``frame`` with list type/length columns, ``num_steps`` and the ``test_problem`` leak."""
    view = add_list_columns(frame.reset_index(drop=True), lists)  # derived columns align by position
    if "steps_len" in view.columns and "num_steps" not in view.columns:
        view["num_steps"] = view["steps_len"]
    if bounds.test_texts is not None and text in view.columns:
        view["test_problem"] = pd.Series(leaked(list(view[text]), bounds.test_texts), dtype=object).to_numpy()
    return view


def key_of(frame: pd.DataFrame, key: str) -> list[str]:
    return [key] if key in frame.columns else []


# ------------------------------------------------------------------------------------------ hand-offs

PROBLEM_SCHEMA: dict[str, Kind] = {
    "id": "str",
    "source": "str",
    "problem": "str",
    "answer": "str",
    "metadata": "str",
}


def problems(frame: pd.DataFrame, bounds: Bounds) -> list[Batch]:
    view = rows_view(frame, [], bounds)
    rules = [
        *schema_rules(PROBLEM_SCHEMA, list(PROBLEM_SCHEMA)),
        unique("id"),
        Rule("ExpectColumnValueLengthsToBeBetween", {"column": "problem", "min_value": 1}),
        Rule("ExpectColumnValueLengthsToBeBetween", {"column": "answer", "min_value": 1}),
        Rule("ExpectColumnValuesToBeJsonParseable", {"column": "metadata"}),
        *leak_rules(bounds),
    ]
    return [Batch("rows", view, rules, key_of(view, "id"))]


def step_texts(frame: pd.DataFrame, key: str) -> Batch:
    steps = explode(frame, key, ["steps"])
    rules = [Rule("ExpectColumnValuesToBeOfType", {"column": "steps", "type_": "str"})]
    rules.append(Rule("ExpectColumnValuesToNotBeNull", {"column": "steps"}))
    return Batch("steps", steps, rules, [key, "step"])


def processbench(frame: pd.DataFrame, bounds: Bounds) -> list[Batch]:
    schema: dict[str, Kind] = {
        "id": "str", "generator": "str", "problem": "str", "steps": "list",
        "final_answer_correct": "bool", "label": "int",
    }  # fmt: skip
    view = rows_view(frame, ["steps"], bounds)
    rules = [
        *schema_rules(schema, list(schema)),
        unique("id"),
        step_count_rule(bounds, severity="warning"),  # a real test set may hold longer solutions
        between("label", -1, None),
        Rule("ExpectColumnPairValuesAToBeGreaterThanB", {"column_A": "num_steps", "column_B": "label"}),
    ]
    if "answer" in view.columns:  # optional: the gold answer where known
        rules.append(Rule("ExpectColumnValuesToBeOfType", {"column": "answer", "type_": "str"}))
    return [Batch("rows", view, rules, key_of(view, "id")), step_texts(frame, "id")]


ROLLOUT_SCHEMA: dict[str, Kind] = {
    "problem_index": "int", "problem_id": "str", "problem": "str", "gold_answer": "str", "path_id": "str",
    "round": "int", "text": "str", "steps": "list", "num_steps": "int", "answer": "str", "correct": "bool",
    "valid": "bool", "finish_reason": "str", "num_prompt_tokens": "int", "num_generated_tokens": "int",
    "kept": "bool", "problem_status": "str", "pass_rate": "float",
}  # fmt: skip


def rollouts(frame: pd.DataFrame, bounds: Bounds) -> list[Batch]:
    view = rows_view(frame, ["steps"], bounds)
    only_where(view, "kept", "num_steps", "kept_num_steps")
    only_where(view, "kept", "valid", "kept_valid")
    required = [
        "problem_index",
        "problem_id",
        "problem",
        "gold_answer",
        "path_id",
        "text",
        "steps",
        "num_steps",
    ]
    rules = schema_rules(
        ROLLOUT_SCHEMA, [*required, "correct", "valid", "kept", "problem_status", "pass_rate"]
    )
    rules += [
        unique("path_id"),
        equal("steps_len", "num_steps"),
        step_count_rule(bounds, "kept_num_steps"),
        in_set("kept_valid", [True]),
        in_set("problem_status", ROLLOUT_STATUSES),
        between("pass_rate", 0.0, 1.0),
        between("round", 0, None),
        between("num_generated_tokens", 0, None),
        *leak_rules(bounds),
    ]
    return [Batch("rows", view, rules, key_of(view, "path_id")), step_texts(frame, "path_id")]


LABEL_SCHEMA: dict[str, Kind] = {
    "path_id": "str", "problem_id": "str", "problem": "str", "gold_answer": "str", "steps": "list",
    "correct": "bool", "mc0": "float", "k": "int", "mc": "list", "rpe_labels": "list", "hard_labels": "list",
    "completions": "int", "tokens_generated": "int", "no_answer_count": "int",
}  # fmt: skip
LABEL_LISTS = ["steps", "mc", "rpe_labels", "hard_labels"]


def labels(frame: pd.DataFrame, bounds: Bounds, test_set: bool = False) -> list[Batch]:
    view = rows_view(frame, LABEL_LISTS, bounds)
    schema = {**LABEL_SCHEMA, "label": "int"} if test_set else LABEL_SCHEMA
    rules = schema_rules(schema, [*schema])
    rules += [
        unique("path_id"),
        step_count_rule(bounds, severity="warning" if test_set else "critical"),
        *(equal(f"{col}_len", "num_steps") for col in LABEL_LISTS[1:]),
        between("mc0", 0.0, 1.0),
        between("k", 1, None),
        *leak_rules(bounds),
    ]
    if test_set:
        rules.append(between("label", -1, None))
        rules.append(
            Rule("ExpectColumnPairValuesAToBeGreaterThanB", {"column_A": "num_steps", "column_B": "label"})
        )
    steps = explode(frame, "path_id", LABEL_LISTS)
    step_rules = [between("mc", 0.0, 1.0), in_set("rpe_labels", [0, 1]), in_set("hard_labels", [0, 1])]
    return [
        Batch("rows", view, rules, key_of(view, "path_id")),
        Batch("steps", steps, step_rules, ["path_id", "step"]),
    ]


def json_safe(value: Any) -> Any:
    """A value as JSON-friendly Python (numpy scalars and arrays included), for messages and reports."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
