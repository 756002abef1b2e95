"""Crash-safe progress for long stages, and sharding of their work.

A ``Journal`` is an append-only jsonl file with one line per finished unit of work (e.g. one problem
with all its records), flushed and fsynced as it is written. A stage killed at any moment (SIGKILL
included) and started again reads the journal, skips the units already done and continues; a line torn
by the crash is dropped. Because a unit is one line, it is either wholly there or not at all: nothing is
lost or duplicated. When every unit is done the stage writes its final table atomically from the
journal, so a complete-looking output only ever appears at the end.

Units must not depend on each other or on the order they run in (derive seeds from the unit key with
``unit_seed``), so an interrupted run, an uninterrupted run and ``n`` merged shards give the same table.

    journal = Journal(Path("data/rollout/.progress-0of1.jsonl"), fingerprint=config_hash)
    for problem in shard(problems, ShardSpec.parse("0/1"), key=lambda p: p.id):
        if problem.id not in journal.done:
            journal.append(problem.id, records_for(problem))
    records = journal.records()
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from components.data.fingerprints import file_sha256 as file_sha256  # re-exported (was defined here)
from components.data.fingerprints import model_fingerprint as model_fingerprint
from components.platform.errors import ConfigError, DataError

T = TypeVar("T")


def unit_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from a base seed and a unit's identity, independent of processing order."""
    text = "\x1f".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (e.g. a stage config and its input file hashes)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (``"i/n"``, 0-based): the units whose position modulo n is i."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str, where: str = "shard") -> ShardSpec:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ConfigError(f"{where}: expected 'i/n' such as '0/4', got {text!r}") from None
        if count < 1 or not 0 <= index < count:
            raise ConfigError(f"{where}: need 0 <= i < n in 'i/n', got {text!r}")
        return cls(index, count)

    @property
    def tag(self) -> str:
        return f"{self.index}of{self.count}"


def shard(items: Iterable[T], spec: ShardSpec, key: Callable[[T], str]) -> list[T]:
    """The items of shard ``spec``: a stable split by position in the (deterministic) input order.

    ``key`` is only used to check that keys are unique, which merging relies on.
    """
    items = list(items)
    keys = [key(item) for item in items]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise DataError(f"duplicate unit key {duplicate!r}: shards could not be merged")
    return [item for position, item in enumerate(items) if position % spec.count == spec.index]


class Journal:
    """Append-only jsonl of finished units: ``{"key": ..., "fingerprint": ..., "records": [...]}``."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._units: dict[str, list[dict[str, Any]]] = {}
        self._load()

    @property
    def done(self) -> set[str]:
        return set(self._units)

    def _load(self) -> None:
        """Read finished units; drop a torn last line; a journal of other settings is an error."""
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good_end = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn by a crash mid-write
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break
            if entry.get("fingerprint") != self.fingerprint:
                raise DataError(
                    f"{self.path}: progress from a run with different settings or inputs; "
                    "delete it to start over"
                )
            self._units[entry["key"]] = entry["records"]
            good_end += len(line)
        if good_end != len(raw):
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)

    def append(self, key: str, records: list[dict[str, Any]]) -> None:
        """Record unit ``key`` as done with its ``records``, durably (one line, fsynced)."""
        if key in self._units:
            raise DataError(f"{self.path}: unit {key!r} is already recorded")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, "fingerprint": self.fingerprint, "records": records}, default=str)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._units[key] = records

    def records(self, order: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """All records, unit by unit, in ``order`` (default: the order units were recorded)."""
        keys = list(order) if order is not None else list(self._units)
        missing = [k for k in keys if k not in self._units]
        if missing:
            raise DataError(f"{self.path}: unit {missing[0]!r} has no recorded progress")
        return [record for key in keys for record in self._units[key]]

    def remove(self) -> None:
        """Delete the journal once its records are written to the final output."""
        self.path.unlink(missing_ok=True)
