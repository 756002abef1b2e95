"""The crash-safe journal and sharding helpers used by long stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.data.journal import Journal, ShardSpec, fingerprint, shard, unit_seed
from components.platform.errors import ConfigError, DataError


def test_unit_seed_depends_on_identity_not_order() -> None:
    assert unit_seed(1, "p-3", 0) == unit_seed(1, "p-3", 0)
    assert unit_seed(1, "p-3", 0) != unit_seed(1, "p-3", 1)
    assert unit_seed(1, "p-3", 0) != unit_seed(2, "p-3", 0)
    assert 0 <= unit_seed(5, "x") < 2**63


def test_journal_resumes_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    journal = Journal(path, fingerprint("cfg"))
    journal.append("a", [{"v": 1}, {"v": 2}])
    journal.append("b", [{"v": 3}])
    again = Journal(path, fingerprint("cfg"))
    assert again.done == {"a", "b"}
    assert again.records() == [{"v": 1}, {"v": 2}, {"v": 3}]
    assert again.records(order=["b", "a"]) == [{"v": 3}, {"v": 1}, {"v": 2}]


def test_torn_last_line_is_dropped_and_truncated(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    journal = Journal(path, "f")
    journal.append("a", [{"v": 1}])
    with path.open("a") as fh:
        fh.write('{"key": "b", "fingerprint": "f", "records": [{"v"')  # killed mid-write
    resumed = Journal(path, "f")
    assert resumed.done == {"a"}
    resumed.append("b", [{"v": 2}])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b"]


def test_duplicate_unit_and_missing_unit_are_errors(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "p.jsonl", "f")
    journal.append("a", [])
    with pytest.raises(DataError, match="already recorded"):
        journal.append("a", [])
    with pytest.raises(DataError, match="'zz' has no recorded progress"):
        journal.records(order=["a", "zz"])


def test_progress_from_other_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    Journal(path, "old").append("a", [{"v": 1}])
    with pytest.raises(DataError, match="different settings"):
        Journal(path, "new")


def test_shards_partition_the_units() -> None:
    items = [f"p{i}" for i in range(10)]
    parts = [shard(items, ShardSpec(i, 3), key=str) for i in range(3)]
    assert sorted(x for part in parts for x in part) == sorted(items)
    assert not set(parts[0]) & set(parts[1])
    assert shard(items, ShardSpec(), key=str) == items


@pytest.mark.parametrize("text", ["3/3", "-1/2", "a/b", "1", "0/0"])
def test_bad_shard_spec_names_it(text: str) -> None:
    with pytest.raises(ConfigError, match=r"rollout\.shard"):
        ShardSpec.parse(text, where="rollout.shard")


def test_duplicate_keys_cannot_be_sharded() -> None:
    with pytest.raises(DataError, match="duplicate unit key 'x'"):
        shard(["x", "y", "x"], ShardSpec(0, 2), key=str)
