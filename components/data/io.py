"""File I/O shared by the stage entry points: atomic writes and line-checked reads.

Writers go to a temporary file next to the target and rename it into place, so a crash never leaves a
file that looks complete. Readers name the file and the line of any malformed record.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from components.platform.errors import DataError


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; it replaces ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write ``records`` atomically as jsonl; returns the number written."""
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` atomically as pretty JSON (DVC metrics files)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)``; a malformed line raises DataError naming file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` atomically as parquet."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def read_parquet(path: Path) -> pd.DataFrame:
    """Read a parquet file; a missing or unreadable file raises DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{path}: unreadable parquet file: {exc}") from exc


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_or_row_number, record)`` from a jsonl or parquet file (1-based)."""
    path = Path(path)
    if path.suffix == ".parquet":
        frame = read_parquet(path)
        yield from enumerate(frame.to_dict(orient="records"), start=1)
        return
    if path.suffix in (".jsonl", ".json"):
        yield from read_jsonl(path)
        return
    raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected .jsonl or .parquet)")
