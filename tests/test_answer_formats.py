"""Gold answers as users have them: inside a solution's ``\\boxed{}``, or given as a list; hub presets.

Fixtures (hand-written, in the style of the benchmarks): ``tests/fixtures/boxed_solutions.jsonl`` (MATH
style: the answer only inside the solution, nested braces, two boxes, a box in a box) and
``tests/fixtures/list_answers.jsonl`` (OlympiadBench style: ``final_answer: ["2"]``).

    python -m pytest -q tests/test_answer_formats.py
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from components.data.sources import (
    HF_PRESETS,
    FileSourceConfig,
    HFSourceConfig,
    load_file_problems,
    load_hf_problems,
    with_preset,
)
from components.platform.errors import DataError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BOXED = FIXTURES / "boxed_solutions.jsonl"
LISTS = FIXTURES / "list_answers.jsonl"


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ boxed


def test_boxed_takes_the_last_box_of_the_solution() -> None:
    cfg = FileSourceConfig(
        path=str(BOXED), id_field="unique_id", answer_field="solution", answer_format="boxed"
    )
    answers = {p.id: p.answer for p in load_file_problems(cfg)}
    assert answers == {
        "alg-1": r"\frac{1}{2}",
        "pre-2": r"\left( 3, \frac{\pi}{2} \right)",  # nested braces kept whole
        "nt-3": "2",  # the last of two boxes
        "geo-4": r"\text{(C)}",
        "int-5": "2",  # a box inside a box
    }


def test_without_boxed_the_solution_itself_would_be_the_answer() -> None:
    """The failure the format exists for: latex takes the whole solution as the gold answer."""
    cfg = FileSourceConfig(path=str(BOXED), answer_field="solution", answer_format="latex")
    assert len(load_file_problems(cfg)[0].answer) > 40


@pytest.mark.parametrize(
    "solution",
    ["No box here, the answer is 4.", r"Truncated: $\boxed{\frac{1}{2}$", r"Empty $\boxed{}$."],
)
def test_a_record_without_a_box_names_file_and_line(tmp_path: Path, solution: str) -> None:
    good = {"problem": "q1", "solution": r"so $\boxed{3}$"}
    path = _write_jsonl(tmp_path / "math_train.jsonl", [good, {"problem": "q2", "solution": solution}])
    cfg = FileSourceConfig(path=str(path), answer_field="solution", answer_format="boxed")
    with pytest.raises(
        DataError, match=r"math_train\.jsonl:2: no complete \\boxed\{\.\.\.\} in field 'solution'"
    ):
        load_file_problems(cfg)


def test_boxed_field_must_be_text(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "n.jsonl", [{"problem": "q", "solution": 12}])
    with pytest.raises(DataError, match=r"n\.jsonl:1: boxed answer field 'solution' must be a string"):
        load_file_problems(FileSourceConfig(path=str(path), answer_field="solution", answer_format="boxed"))


def test_boxed_from_a_dataset_names_the_row(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = {"problem": ["a", "b"], "solution": [r"$\boxed{\dfrac{3}{4}}$", "no box"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "minerva"))
    cfg = HFSourceConfig(path=str(tmp_path / "minerva"), answer_field="solution", answer_format="boxed")
    with pytest.raises(DataError, match=r"minerva \(split 'test'\) row 1: no complete \\boxed"):
        load_hf_problems(cfg)
    ok = datasets.Dataset.from_dict({k: v[:1] for k, v in rows.items()})
    ok.save_to_disk(str(tmp_path / "ok"))
    [problem] = load_hf_problems(dataclasses.replace(cfg, path=str(tmp_path / "ok")))
    assert problem.answer == r"\dfrac{3}{4}"


@pytest.mark.shared_data
def test_boxed_solution_agrees_with_math500_answers(shared_file: Callable[[str], Path]) -> None:
    """On the real MATH-500 file, the last box of every solution is its published answer."""
    path = shared_file("math500")
    from_answer = load_file_problems(FileSourceConfig(path=str(path)))
    from_solution = load_file_problems(
        FileSourceConfig(path=str(path), answer_field="solution", answer_format="boxed")
    )
    assert len(from_solution) == 500
    assert [p.answer for p in from_solution] == [p.answer for p in from_answer]


# ------------------------------------------------------------------------------------------------ lists


@pytest.mark.parametrize("fmt", ["auto", "latex", "plain"])
def test_list_answers_give_their_first_element(fmt: Any) -> None:
    cfg = FileSourceConfig(
        path=str(LISTS),
        id_field="id",
        problem_field="question",
        answer_field="final_answer",
        answer_format=fmt,
    )
    answers = {p.id: p.answer for p in load_file_problems(cfg)}
    assert answers == {"1606": "2", "1607": "2", "1608": "2, 3", "1609": "6"}


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        ("gsm8k", ["3 + 4 = 7\n#### 7", "ignored #### 8"], "7"),
        ("float", [27.0, 3.0], "27"),
        ("boxed", [r"so $\boxed{x^{2}}$", r"$\boxed{9}$"], "x^{2}"),
        ("auto", [12], "12"),
    ],
)
def test_list_answers_in_every_format(tmp_path: Path, fmt: Any, value: list[Any], expected: str) -> None:
    path = _write_jsonl(tmp_path / "l.jsonl", [{"problem": "q", "answer": value}])
    [problem] = load_file_problems(FileSourceConfig(path=str(path), answer_format=fmt))
    assert problem.answer == expected


def test_an_empty_answer_list_names_the_line(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "e.jsonl", [{"problem": "q", "answer": ["1"]}, {"problem": "r", "answer": []}]
    )
    with pytest.raises(DataError, match=r"e\.jsonl:2: empty answer list \(field 'answer'\)"):
        load_file_problems(FileSourceConfig(path=str(path)))


def test_list_answers_from_parquet_arrays(tmp_path: Path) -> None:
    """parquet hands list columns over as numpy arrays: the first element all the same."""
    path = tmp_path / "olympiad.parquet"
    pd.DataFrame({"question": ["q1", "q2"], "final_answer": [["$5$"], ["7", "8"]]}).to_parquet(path)
    cfg = FileSourceConfig(path=str(path), problem_field="question", answer_field="final_answer")
    assert [p.answer for p in load_file_problems(cfg)] == ["5", "7"]


# ---------------------------------------------------------------------------------------------- presets

# Each preset's dataset as its published card describes it: config, split and one row of its columns.
CARD_ROWS: dict[str, tuple[str | None, str, dict[str, Any]]] = {
    "HuggingFaceH4/MATH-500": (
        None,
        "test",
        {
            "problem": "Compute $1+1$.",
            "solution": r"It is $\boxed{2}$.",
            "answer": "2",
            "subject": "Prealgebra",
            "level": 1,
            "unique_id": "test/prealgebra/1.json",
        },
    ),
    "openai/gsm8k": ("main", "test", {"question": "Tom has 3 and gets 4. Total?", "answer": "3+4=7\n#### 7"}),
    "HuggingFaceH4/aime_2024": (
        None,
        "train",
        {"id": 60, "problem": "Find $x$.", "solution": "...", "answer": "204", "url": "u", "year": "2024"},
    ),
    "Hothan/OlympiadBench": (
        "OE_TO_maths_en_COMP",
        "train",
        {"id": 1606, "question": "Find $n$.", "solution": ["..."], "final_answer": ["$2$"], "unit": None},
    ),
}


def test_every_preset_has_a_card_row() -> None:
    assert set(CARD_ROWS) == set(HF_PRESETS)


@pytest.mark.parametrize("dataset_id", sorted(CARD_ROWS))
def test_presets_read_rows_shaped_like_their_cards(tmp_path: Path, dataset_id: str) -> None:
    """The preset (config name, split, fields, answer format) reads a row with the card's columns."""
    datasets = pytest.importorskip("datasets")
    name, split, row = CARD_ROWS[dataset_id]
    cfg = with_preset(HFSourceConfig(path=dataset_id), HF_PRESETS, dataset_id)
    assert (cfg.name, cfg.split) == (name, split)
    local = tmp_path / "card"
    datasets.DatasetDict({split: datasets.Dataset.from_list([row])}).save_to_disk(str(local))
    [problem] = load_hf_problems(dataclasses.replace(cfg, path=str(local)))
    assert problem.answer in {"2", "7", "204"}
    assert problem.problem == (row.get("problem") or row["question"])
