"""Rules of the conversation hand-offs: rationales (teacher output) and the SFT records built from them.

Derived per-step columns check what GE cannot parse itself: ``python_blocks`` (```python blocks in a
turn's verify part), ``code_outputs`` (of those, the ones followed by ``[Code Output]`` and a fenced
output block) and ``turn_verdict`` (1/0 for a turn ending in \\boxed{Yes}/\\boxed{No}); per record the
``roles`` sequence, the system prompt and the number of user turns. Plain GE expectations assert them.
The shared helpers are in ``components/data/quality_suites.py``.

    batches = sft(pd.DataFrame(records), bounds)   # [rows, steps]
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from components.data.quality_suites import (
    Batch,
    Bounds,
    Kind,
    Rule,
    between,
    equal,
    explode,
    in_set,
    is_list,
    key_of,
    leak_rules,
    leaked,
    only_where,
    rows_view,
    schema_rules,
    step_count_rule,
    unique,
)
from components.method.prompts import GENPRM_SYSTEM_PROMPT

DIRECT_TURN = r"^<output>\n\*\*Judgement\*\*: \$\\boxed\{(?:Yes|No)\}\$\n</output>$"
RATIONALE_TURN = r"(?s)^\s*<analyze>.*</analyze>\s*<verify>.*</verify>\s*<output>.*</output>\s*$"
VERIFY_BLOCK = re.compile(r"<verify>(.*?)</verify>", re.DOTALL)
PYTHON_OPEN = re.compile(r"```python[ \t]*\n")
# A code block, then [Code Output], then a fenced output block: one executed snippet.
CODE_WITH_OUTPUT = re.compile(r"```python[ \t]*\n.*?```\s*\[Code Output\]\s*```[^\n]*\n.*?```", re.DOTALL)
FINAL_VERDICT = re.compile(r"\\boxed\{(Yes|No)\}\$?\s*(?:</output>)?\s*\Z")


def verify_counts(turn: Any) -> tuple[int, int]:
    """(python code blocks, code blocks followed by [Code Output] and a fenced block) in the verify part."""
    text = turn if isinstance(turn, str) else ""
    verify = "".join(VERIFY_BLOCK.findall(text))
    return len(PYTHON_OPEN.findall(verify)), len(CODE_WITH_OUTPUT.findall(verify))


def final_verdict(turn: Any) -> int | None:
    """1 / 0 for a turn ending with \\boxed{Yes} / \\boxed{No}; None if it ends otherwise."""
    match = FINAL_VERDICT.search(turn) if isinstance(turn, str) else None
    return None if match is None else int(match.group(1) == "Yes")


def add_turn_columns(steps: pd.DataFrame, turn_column: str, mask: pd.Series | None) -> pd.DataFrame:
    """``python_blocks``, ``code_outputs`` and ``turn_verdict`` per turn (null where ``mask`` is false)."""
    counts = [verify_counts(t) for t in steps[turn_column]]
    keep = mask if mask is not None else pd.Series(True, index=steps.index)
    for i, name in enumerate(("python_blocks", "code_outputs")):
        steps[name] = pd.Series([c[i] for c in counts], index=steps.index, dtype="Int64").where(keep)
    verdicts = [final_verdict(t) for t in steps[turn_column]]
    steps["turn_verdict"] = pd.Series(verdicts, index=steps.index, dtype=object).where(keep, None)
    return steps


RATIONALE_SCHEMA: dict[str, Kind] = {
    "path_id": "str", "problem_id": "str", "problem": "str", "gold_answer": "str", "steps": "list",
    "correct": "bool", "rpe_labels": "list", "hard_labels": "list", "labels": "list", "verdicts": "list",
    "turns": "list",
    "rounds": "list", "code_runs": "int", "code_errors": "int", "code_timeouts": "int",
    "parse_failed": "bool", "kept": "bool", "consensus": "bool", "teacher": "str",
}  # fmt: skip
# `labels`: the step labels the consensus filter used (rpe_labels, or hard_labels in the ablation);
# `consensus`: whether the filter applied (false: the ablation keeps every fully judged path).
RATIONALE_LISTS = ["steps", "rpe_labels", "hard_labels", "labels", "verdicts", "turns", "rounds"]


def rationales(frame: pd.DataFrame, bounds: Bounds) -> list[Batch]:
    view = rows_view(frame, RATIONALE_LISTS, bounds)
    only_where(view, "kept", "parse_failed", "kept_parse_failed")
    rules = schema_rules(RATIONALE_SCHEMA, [*RATIONALE_SCHEMA])
    rules += [
        unique("path_id"),
        step_count_rule(bounds),
        *(equal(f"{col}_len", "num_steps") for col in RATIONALE_LISTS[1:]),
        *(between(col, 0, None) for col in ("code_runs", "code_errors", "code_timeouts")),
        in_set("kept_parse_failed", [False]),
        Rule(
            "ExpectColumnMeanToBeBetween",
            {"column": "kept", "min_value": bounds.kept_rate_min, "max_value": bounds.kept_rate_max},
        ),
        *leak_rules(bounds),
    ]
    return [Batch("rows", view, rules, key_of(view, "path_id")), rationale_steps(frame)]


def through_first_error(steps: pd.DataFrame) -> pd.Series:
    """Per exploded step: whether it is at or before its path's first step labelled 0."""
    wrong = steps["step"].where(steps["labels"] == 0)
    first = wrong.groupby(steps["path_id"]).transform("min")
    return first.isna() | (steps["step"] <= first)


def rationale_steps(frame: pd.DataFrame) -> Batch:
    """Per step: labels and verdicts in range; on kept paths the verdict agrees and the turn ran its code."""
    steps = explode(frame, "path_id", RATIONALE_LISTS[1:])
    has_ids = {"kept", "path_id"} <= set(frame.columns)
    kept_ids = set(frame.loc[frame["kept"].fillna(False).astype(bool), "path_id"]) if has_ids else set()
    mask = steps["path_id"].isin(kept_ids)
    if "turns" in steps.columns:
        add_turn_columns(steps, "turns", mask)
    filtered = frame["consensus"].fillna(True).astype(bool) if "consensus" in frame.columns else None
    agreeing = mask
    if has_ids and filtered is not None:
        agreeing = mask & steps["path_id"].isin(set(frame.loc[filtered, "path_id"]))
    steps["kept_verdicts"] = steps["verdicts"].where(mask, None) if "verdicts" in steps.columns else None
    if "labels" in steps.columns:  # a path the consensus filter kept has the verdicts of its labels
        agreeing = agreeing & through_first_error(steps)  # up to its first error (later steps: any verdict)
        steps["kept_labels"] = steps["labels"].where(agreeing, None)
        steps["filtered_verdicts"] = steps["verdicts"].where(agreeing, None)
    rules = [
        in_set("rpe_labels", [0, 1]),
        in_set("hard_labels", [0, 1]),
        in_set("labels", [0, 1]),
        in_set("verdicts", [-1, 0, 1]),
        between("rounds", 0, None),
        equal("filtered_verdicts", "kept_labels"),
        between("python_blocks", 1, None),
        equal("code_outputs", "python_blocks"),
        equal("turn_verdict", "kept_verdicts"),
    ]
    return Batch("steps", steps, rules, ["path_id", "step"])


def sft(frame: pd.DataFrame, bounds: Bounds, direct: bool = False) -> list[Batch]:
    view = rows_view(frame, ["labels", "messages"], bounds).rename(columns={"labels_len": "num_steps"})
    messages = None
    if "messages" in view.columns:
        messages = [list(m) if is_list(m) else [] for m in view["messages"]]
        add_message_columns(view, messages, bounds)
    schema: dict[str, Kind] = {"id": "str", "problem_id": "str", "labels": "list", "messages": "list"}
    rules = [
        *schema_rules(schema, [*schema]),
        unique("id"),
        Rule("ExpectColumnValuesToMatchRegex", {"column": "roles", "regex": r"^system(?:,user,assistant)+$"}),
        equal("user_turns", "num_steps"),
        step_count_rule(bounds),
        in_set("system_prompt", [GENPRM_SYSTEM_PROMPT]),
        *leak_rules(bounds),
    ]
    return [Batch("rows", view, rules, key_of(view, "id")), sft_steps(frame, messages, direct)]


def add_message_columns(view: pd.DataFrame, messages: list[list[Any]], bounds: Bounds) -> None:
    """``roles`` ("system,user,assistant,..."), ``system_prompt``, ``user_turns`` and the leak column."""
    view["roles"] = [
        ",".join(str(t.get("role")) if isinstance(t, dict) else "?" for t in m) for m in messages
    ]
    view["system_prompt"] = [_content(m, 0) for m in messages]
    view["user_turns"] = [sum(isinstance(t, dict) and t.get("role") == "user" for t in m) for m in messages]
    if bounds.test_texts is not None:  # the first user turn is the problem, a newline, then step 1
        view["test_problem"] = leaked([_content(m, 1) for m in messages], bounds.test_texts, prefixes=True)


def _content(messages: list[Any], index: int) -> str | None:
    turn = messages[index] if len(messages) > index else None
    return turn.get("content") if isinstance(turn, dict) else None


def sft_steps(frame: pd.DataFrame, messages: list[list[Any]] | None, direct: bool) -> Batch:
    """Per assistant turn (step): its label in {0,1}, its final verdict = label, its verify blocks ran."""
    if messages is not None:
        assistant = [
            [t.get("content") for t in m if isinstance(t, dict) and t.get("role") == "assistant"]
            for m in messages
        ]
        frame = frame.reset_index(drop=True).assign(assistant=assistant)
    steps = explode(frame, "id", ["labels", "assistant"])
    if "assistant" in steps.columns:
        add_turn_columns(steps, "assistant", None)
    rules = [in_set("labels", [0, 1]), Rule("ExpectColumnValuesToNotBeNull", {"column": "turn_verdict"})]
    rules.append(equal("turn_verdict", "labels"))
    regex = DIRECT_TURN if direct else RATIONALE_TURN
    rules.append(Rule("ExpectColumnValuesToMatchRegex", {"column": "assistant", "regex": regex}))
    if not direct:
        rules += [between("python_blocks", 1, None), equal("code_outputs", "python_blocks")]
    return Batch("steps", steps, rules, ["id", "step"])
