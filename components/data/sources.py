"""Problem sources for the ``prepare`` stage: local jsonl/parquet files and Hugging Face datasets.

Each source maps its own field names onto ``Problem(id, source, problem, answer, metadata)`` and
normalizes its gold answers with ``grading.normalize_gold`` in the configured ``answer_format``;
``boxed`` takes the content of the last ``\\boxed{}`` of the field (a MATH-style solution), and an
answer given as a list (``["2"]``) gives its first element in every format. Bad input raises one
``DataError`` naming the file and line (datasets: the dataset, split and 0-based row) and what is
wrong, e.g. a ``boxed`` field without a box; nothing is skipped.

Presets spare users the field names of known benchmarks. A file whose stem is in ``FILE_PRESETS``
(the shared ``math500``, ``gsm8k_test``, ``aime24``, ``amc23``) and a hub dataset in ``HF_PRESETS``
take the preset's value for every field the user left at its default; a field set to anything else
wins. (A field set explicitly to its default value is indistinguishable from one left alone.)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from components.data.io import read_jsonl, read_parquet, read_records
from components.data.records import Problem
from components.method import grading
from components.platform.config import option
from components.platform.errors import ConfigError, DataError

C = TypeVar("C", "FileSourceConfig", "HFSourceConfig")


@dataclass(frozen=True)
class FieldMapping:
    """Which record fields hold the id, problem and answer, shared by the file and hf sources."""

    id_field: str | None = option(
        None, help="Field holding a unique problem id; null: '<file stem or dataset name>-<line or row>'."
    )
    problem_field: str = option("problem", help="Field holding the problem statement.")
    answer_field: str = option("answer", help="Field holding the gold final answer.")
    answer_format: Literal["auto", "gsm8k", "float", "latex", "plain", "boxed"] = option(
        "auto",
        help="Gold answer format: gsm8k ('... #### 18'), float (27.0 -> 27), latex or plain (strip $), "
        "boxed (the last \\boxed{} of the field, e.g. a MATH solution), auto (numbers as float, '####' "
        "as gsm8k, else latex). A list answer (['2']) gives its first element in every format.",
    )
    metadata_fields: list[str] = option(
        [], help="Fields copied into the problem's metadata (each must be present in every record)."
    )
    source_name: str | None = option(
        None, help="Name recorded as each problem's source; null: the file stem / dataset name."
    )


@dataclass(frozen=True)
class FileSourceConfig(FieldMapping):
    """Problems from a local jsonl or parquet file (``prepare.file``)."""

    path: str = option("", help="Path of a .jsonl or .parquet file of problems (required for this source).")
    format: Literal["auto", "jsonl", "parquet"] = option(
        "auto", help="File format; auto: from the suffix (.jsonl/.json or .parquet)."
    )


@dataclass(frozen=True)
class HFSourceConfig(FieldMapping):
    """Problems from a Hugging Face dataset: a hub id at a pinned revision, or a local directory."""

    path: str = option("", help="Hub dataset id, a local data directory, or a save_to_disk directory.")
    name: str | None = option(None, help="Dataset configuration name (e.g. 'main' for openai/gsm8k).")
    split: str = option("test", help="Split to read.")
    revision: str | None = option(
        None, help="Pinned commit of a hub dataset; required when path is a hub id, unused for local paths."
    )


FILE_PRESETS: dict[str, dict[str, Any]] = {
    "math500": {"id_field": "unique_id", "answer_format": "latex", "metadata_fields": ["subject", "level"]},
    "gsm8k_test": {"id_field": "idx", "problem_field": "question", "answer_format": "gsm8k"},
    "aime24": {"id_field": "id", "answer_format": "plain"},
    "amc23": {"id_field": "id", "problem_field": "problem", "answer_format": "float"},
}
"""Field mappings of the shared benchmark files (shared/data), keyed by file stem."""

HF_PRESETS: dict[str, dict[str, Any]] = {
    # card: problem, solution, answer, subject, level (int), unique_id; one split, test (500 rows)
    "HuggingFaceH4/MATH-500": FILE_PRESETS["math500"],
    # card: configs main and socratic (one must be named), question + answer ('... #### 72'); train, test
    "openai/gsm8k": {"name": "main", "problem_field": "question", "answer_format": "gsm8k"},
    # card: id (int), problem, solution, answer (string), url, year; one split, train (30 rows)
    "HuggingFaceH4/aime_2024": {"id_field": "id", "answer_format": "plain", "split": "train"},
    # per-subset configs (OE_TO_maths_en_COMP: text-only English maths), split train; question, id and
    # final_answer, a list of strings (['$2$']): its first element is the gold answer
    "Hothan/OlympiadBench": {
        "name": "OE_TO_maths_en_COMP",
        "id_field": "id",
        "problem_field": "question",
        "answer_field": "final_answer",
        "answer_format": "latex",
        "split": "train",
    },
}
"""Field mappings of benchmarks on the hub, keyed by dataset id (README "Problem sources" says which
were checked against their published dataset cards, and how)."""


def with_preset(cfg: C, presets: dict[str, dict[str, Any]], key: str) -> C:
    """``cfg`` with the preset for ``key`` filling every field still at its default."""
    preset = presets.get(key)
    if not preset:
        return cfg
    defaults = type(cfg)()
    changes = {k: v for k, v in preset.items() if getattr(cfg, k) == getattr(defaults, k)}
    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------------------------ record mapping


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (from parquet or Arrow) as plain Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return value


def _text(record: dict[str, Any], key: str, where: str, what: str) -> str:
    """The non-empty text in ``record[key]``; numbers are accepted as their decimal form."""
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = _plain(record[key])
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{where}: {what} field {key!r} must be a string, got {value!r}")
    text = str(value).strip()
    if not text:
        raise DataError(f"{where}: empty {what} (field {key!r})")
    return text


def _first_answer(raw: Any, key: str, where: str) -> Any:
    """A list answer (OlympiadBench's ``final_answer: ["2"]``) as its first element; others unchanged."""
    if not isinstance(raw, list | tuple):
        return raw
    if not raw:
        raise DataError(f"{where}: empty answer list (field {key!r})")
    return _plain(raw[0])


def _boxed(raw: Any, key: str, where: str) -> str:
    """The content of the last ``\\boxed{}`` (nested braces included) of a solution-like field."""
    if not isinstance(raw, str):
        raise DataError(f"{where}: boxed answer field {key!r} must be a string, got {type(raw).__name__}")
    boxed = grading.last_boxed(raw)
    if boxed is None:
        raise DataError(f"{where}: no complete \\boxed{{...}} in field {key!r} (answer_format boxed)")
    return boxed


def _answer(record: dict[str, Any], cfg: FileSourceConfig | HFSourceConfig, where: str) -> str:
    key = cfg.answer_field
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    raw = _first_answer(_plain(record[key]), key, where)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataError(f"{where}: empty answer (field {key!r})")
    try:
        if cfg.answer_format == "boxed":
            return grading.normalize_gold(_boxed(raw, key, where), "latex")
        return grading.normalize_gold(raw, cfg.answer_format)
    except ValueError as exc:
        raise DataError(f"{where}: bad {cfg.answer_format} answer {raw!r}: {exc}") from exc


def _metadata(record: dict[str, Any], fields: list[str], where: str) -> dict[str, Any]:
    metadata = {}
    for key in fields:
        if key not in record:
            raise DataError(f"{where}: missing metadata field {key!r}")
        value = _plain(record[key])
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: metadata field {key!r} is not JSON-serializable: {exc}") from exc
        metadata[key] = value
    return metadata


def to_problem(
    record: dict[str, Any], cfg: FileSourceConfig | HFSourceConfig, source: str, default_id: str, where: str
) -> Problem:
    """Map one raw record onto a Problem; ``where`` (file:line, dataset row) is named on error."""
    problem_id = default_id if cfg.id_field is None else _text(record, cfg.id_field, where, "id")
    return Problem(
        id=problem_id,
        source=source,
        problem=_text(record, cfg.problem_field, where, "problem"),
        answer=_answer(record, cfg, where),
        metadata=_metadata(record, cfg.metadata_fields, where),
    )


def _collect(
    rows: Iterable[tuple[int, dict[str, Any]]],
    cfg: FileSourceConfig | HFSourceConfig,
    source: str,
    id_prefix: str,
    where: Callable[[int], str],
) -> list[Problem]:
    """Problems from numbered rows; ``where(number)`` names a row. Duplicate ids are errors."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for number, record in rows:
        problem = to_problem(record, cfg, source, f"{id_prefix}-{number}", where(number))
        if problem.id in seen:
            raise DataError(f"{where(number)}: duplicate id {problem.id!r} (first at {seen[problem.id]})")
        seen[problem.id] = where(number)
        problems.append(problem)
    return problems


# ------------------------------------------------------------------------------------------------- files


def _file_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if fmt == "jsonl":
        yield from read_jsonl(path)
    elif fmt == "parquet":
        frame = read_parquet(path)
        yield from enumerate(frame.to_dict(orient="records"), start=1)
    else:
        yield from read_records(path)


def load_file_problems(cfg: FileSourceConfig, where: str = "prepare.file") -> list[Problem]:
    """Problems from a jsonl/parquet file; errors name ``path:line`` (parquet: 1-based row)."""
    if not cfg.path:
        raise ConfigError(f"{where}.path: required (a .jsonl or .parquet file)")
    path = Path(cfg.path)
    cfg = with_preset(cfg, FILE_PRESETS, path.stem)
    source = cfg.source_name or path.stem
    rows = _file_rows(path, cfg.format)
    problems = _collect(rows, cfg, source, path.stem, lambda n: f"{path}:{n}")
    if not problems:
        raise DataError(f"{path}: no records")
    return problems


# ------------------------------------------------------------------------------------- Hugging Face datasets


def _is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _open_dataset(cfg: HFSourceConfig, where: str) -> Any:
    """The requested split as a ``datasets.Dataset``; loading failures become DataError."""
    import datasets

    local = Path(cfg.path)
    label = f"{cfg.path} (split {cfg.split!r})"
    if not local.exists() and cfg.revision is None:
        raise ConfigError(
            f"{where}.revision: required for hub dataset {cfg.path!r} (pin a commit); "
            "or point path at an existing local directory"
        )
    if local.is_file():
        raise ConfigError(f"{where}.path: {cfg.path} is a file; read files with the prepare.file source")
    try:
        if local.is_dir() and _is_saved_dataset(local):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if cfg.split not in loaded:
                    raise DataError(f"{label}: no such split (available: {', '.join(loaded)})")
                return loaded[cfg.split]
            return loaded
        return datasets.load_dataset(cfg.path, cfg.name, split=cfg.split, revision=cfg.revision)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many unrelated types (offline, missing split, bad files)
        raise DataError(f"{label}: could not load dataset: {type(exc).__name__}: {exc}") from exc


def load_hf_problems(cfg: HFSourceConfig, where: str = "prepare.hf") -> list[Problem]:
    """Problems from a Hugging Face dataset split; errors name the dataset, split and 0-based row."""
    if not cfg.path:
        raise ConfigError(f"{where}.path: required (a hub dataset id or a local directory)")
    cfg = with_preset(cfg, HF_PRESETS, cfg.path)
    dataset = _open_dataset(cfg, where)
    name = Path(cfg.path.rstrip("/")).name
    label = f"{cfg.path} (split {cfg.split!r})"
    problems = _collect(enumerate(dataset), cfg, cfg.source_name or name, name, lambda n: f"{label} row {n}")
    if not problems:
        raise DataError(f"{label}: no rows")
    return problems


def problem_sets(
    problems: str | None, max_problems: int, files: list[str], file_max_problems: int, where: str
) -> dict[str, list[Problem]]:
    """Held-out problems (a prepared problems table, as ``synthetic``) and each real problem file that
    exists (by its stem), each cut to its size; a missing file is skipped with a warning."""
    import logging

    from components.data.io import read_parquet
    from components.data.records import problems_from_frame

    sets: dict[str, list[Problem]] = {}
    if problems:
        sets["synthetic"] = problems_from_frame(read_parquet(Path(problems)), problems)[:max_problems]
    for file in files:
        if not Path(file).is_file():
            logging.getLogger(__name__).warning("%s: problem file %s not found; skipped", where, file)
            continue
        sets[Path(file).stem] = load_file_problems(FileSourceConfig(path=file), where)[:file_max_problems]
    return sets
