"""Tests for components.data.sources: the shared benchmark files, bad input, and Hugging Face datasets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from components.data.sources import (
    FILE_PRESETS,
    FileSourceConfig,
    HFSourceConfig,
    load_file_problems,
    load_hf_problems,
)
from components.platform.config import build_config
from components.platform.errors import ConfigError, DataError


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------- shared files


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("stem", "count", "first_id", "first_answer"),
    [
        ("math500", 500, "test/precalculus/807.json", r"\left( 3, \frac{\pi}{2} \right)"),
        ("gsm8k_test", 1319, "0", "18"),
        ("aime24", 30, "60", "204"),
        ("amc23", 40, "0", "27"),
    ],
)
def test_shared_files_load(
    shared_file: Callable[[str], Path], stem: str, count: int, first_id: str, first_answer: str
) -> None:
    problems = load_file_problems(FileSourceConfig(path=str(shared_file(stem))))
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    first = problems[0]
    assert (first.id, first.answer, first.source) == (first_id, first_answer, stem)
    assert all(p.problem and p.answer for p in problems)


@pytest.mark.shared_data
def test_shared_answers_by_hand(shared_file: Callable[[str], Path]) -> None:
    gsm8k = load_file_problems(FileSourceConfig(path=str(shared_file("gsm8k_test"))))
    assert gsm8k[0].problem.startswith("Janet’s ducks lay 16 eggs per day.")
    assert gsm8k[1].answer == "3"
    assert gsm8k[2].answer == "70000"  # '#### 70000' after '70,000' in the worked answer
    amc = {p.id: p.answer for p in load_file_problems(FileSourceConfig(path=str(shared_file("amc23"))))}
    assert (amc["0"], amc["3"]) == ("27", "3159")  # 27.0 and 3159.0 in the file
    assert "-1" in amc.values()  # -1.0
    math500 = load_file_problems(FileSourceConfig(path=str(shared_file("math500"))))
    assert math500[0].metadata == {"subject": "Precalculus", "level": 2}
    assert math500[1].answer == "p - q"
    assert math500[2].answer == r"\frac{14}{3}"


@pytest.mark.shared_data
def test_explicit_fields_override_preset(shared_file: Callable[[str], Path]) -> None:
    path = shared_file("aime24")
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    cfg = FileSourceConfig(path=str(path), problem_field="question", source_name="aime")
    problems = load_file_problems(cfg)
    assert problems[0].problem == first["question"].strip()  # explicit field wins
    assert problems[0].id == "60"  # id_field left at its default: the preset's 'id'
    assert problems[0].source == "aime"


def test_presets_cover_the_shared_files() -> None:
    assert set(FILE_PRESETS) == {"math500", "gsm8k_test", "aime24", "amc23"}


# ------------------------------------------------------------------------------------------- bad input


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "probs.jsonl"
    good = json.dumps({"problem": "1+1?", "answer": "2"})
    path.write_text(f"{good}\n{good}\n{{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"probs\.jsonl:3"):
        load_file_problems(FileSourceConfig(path=str(path), id_field=None))


def test_missing_answer_field(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?"}])
    with pytest.raises(DataError, match=r"p\.jsonl:2: missing field 'answer'"):
        load_file_problems(FileSourceConfig(path=str(path)))


def test_missing_problem_field(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"question": "1+1?", "answer": "2"}])
    with pytest.raises(DataError, match=r"p\.jsonl:1: missing field 'problem'"):
        load_file_problems(FileSourceConfig(path=str(path)))


@pytest.mark.parametrize("answer", ["", "   ", None])
def test_empty_answer(tmp_path: Path, answer: str | None) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"problem": "1+1?", "answer": answer}])
    with pytest.raises(DataError, match=r"p\.jsonl:1: empty answer"):
        load_file_problems(FileSourceConfig(path=str(path)))


def test_bad_gold_answer_names_the_line(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "g.jsonl", [{"problem": "q", "answer": "x\n#### 3"}, {"problem": "q", "answer": "7"}]
    )
    with pytest.raises(DataError, match=r"g\.jsonl:2: bad gsm8k answer"):
        load_file_problems(FileSourceConfig(path=str(path), answer_format="gsm8k"))


def test_duplicate_id(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"k": 1, "problem": "a", "answer": "1"}] * 2)
    with pytest.raises(DataError, match=r"d\.jsonl:2: duplicate id '1' \(first at .*d\.jsonl:1\)"):
        load_file_problems(FileSourceConfig(path=str(path), id_field="k"))


def test_missing_metadata_field(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "m.jsonl", [{"problem": "a", "answer": "1"}])
    with pytest.raises(DataError, match=r"m\.jsonl:1: missing metadata field 'level'"):
        load_file_problems(FileSourceConfig(path=str(path), metadata_fields=["level"]))


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match=r"x\.parquet: unreadable parquet"):
        load_file_problems(FileSourceConfig(path=str(path)))


@pytest.mark.parametrize("name", ["absent.jsonl", "absent.parquet"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match=rf"{name}: file not found"):
        load_file_problems(FileSourceConfig(path=str(tmp_path / name)))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"e\.jsonl: no records"):
        load_file_problems(FileSourceConfig(path=str(path)))


def test_path_required() -> None:
    with pytest.raises(ConfigError, match=r"prepare\.file\.path"):
        load_file_problems(FileSourceConfig())


# -------------------------------------------------------------------------------------- good tmp files


def test_parquet_file_with_fields_and_metadata(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"qid": ["a", "b"], "q": ["1+1?", "half of 1?"], "gold": [2.0, 0.5], "level": [1, 3]}
    )
    path = tmp_path / "mine.parquet"
    frame.to_parquet(path, index=False)
    cfg = FileSourceConfig(
        path=str(path), id_field="qid", problem_field="q", answer_field="gold", metadata_fields=["level"]
    )
    problems = load_file_problems(cfg)
    assert [(p.id, p.answer, p.metadata, p.source) for p in problems] == [
        ("a", "2", {"level": 1}, "mine"),
        ("b", "0.5", {"level": 3}, "mine"),
    ]
    json.dumps(problems[0].to_row())  # metadata is plain JSON, not numpy


def test_default_ids_and_config_from_params(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "toy.jsonl", [{"problem": "a", "answer": "$\\frac12$"}] * 2)
    cfg = build_config(FileSourceConfig, {"path": str(path), "answer_format": "latex"}, "prepare.file")
    problems = load_file_problems(cfg)
    assert [p.id for p in problems] == ["toy-1", "toy-2"]
    assert problems[0].answer == "\\frac12"


# ---------------------------------------------------------------------------------------- HF datasets


def _tiny_dataset() -> Any:
    datasets = pytest.importorskip("datasets")
    return datasets.Dataset.from_dict(
        {"uid": ["u1", "u2", "u3"], "question": ["1+1?", "2*3?", "10/4?"], "answer": ["2", "6", "2.5"]}
    )


def test_hf_save_to_disk(tmp_path: Path) -> None:
    _tiny_dataset().save_to_disk(str(tmp_path / "saved"))
    cfg = HFSourceConfig(path=str(tmp_path / "saved"), id_field="uid", problem_field="question")
    problems = load_hf_problems(cfg)
    first = problems[0]
    assert (first.id, first.problem, first.answer, first.source) == ("u1", "1+1?", "2", "saved")
    assert len(problems) == 3


def test_hf_dataset_dict_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"test": _tiny_dataset(), "train": _tiny_dataset().select([0])})
    dd.save_to_disk(str(tmp_path / "dd"))
    base = HFSourceConfig(path=str(tmp_path / "dd"), problem_field="question")
    assert len(load_hf_problems(dataclasses.replace(base, split="train"))) == 1
    with pytest.raises(DataError, match=r"split 'validation'.*no such split \(available: test, train\)"):
        load_hf_problems(dataclasses.replace(base, split="validation"))


def test_hf_local_data_directory(tmp_path: Path) -> None:
    folder = tmp_path / "local_ds"
    folder.mkdir()
    _write_jsonl(
        folder / "test.jsonl", [{"problem": "1+1?", "answer": "2"}, {"problem": "3+4?", "answer": 7}]
    )
    problems = load_hf_problems(HFSourceConfig(path=str(folder), split="test"))
    assert [(p.id, p.answer) for p in problems] == [("local_ds-0", "2"), ("local_ds-1", "7")]


def test_hf_row_errors_name_dataset_split_and_row(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"problem": ["a", "b"], "answer": ["1", ""]})
    ds.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad \(split 'test'\) row 1: empty answer"):
        load_hf_problems(HFSourceConfig(path=str(tmp_path / "bad")))


def test_hf_hub_id_requires_revision() -> None:
    with pytest.raises(ConfigError, match=r"prepare\.hf\.revision"):
        load_hf_problems(HFSourceConfig(path="HuggingFaceH4/MATH-500"))


def test_hf_hub_offline_is_a_data_error() -> None:
    cfg = HFSourceConfig(path="no-such-owner/no-such-dataset-xyz", revision="0" * 40)
    with pytest.raises(
        DataError, match=r"no-such-owner/no-such-dataset-xyz \(split 'test'\): could not load"
    ):
        load_hf_problems(cfg)
