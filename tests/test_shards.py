"""Tests for components.data.shards: one naming scheme, one fingerprint rule, a merge that refuses strays."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from components.data.journal import ShardSpec, shard
from components.data.shards import ShardedStage, output_settings, run_fingerprint
from components.platform.errors import DataError

UNITS = [f"u{i}" for i in range(5)]


def stage(tmp_path: Path) -> ShardedStage:
    return ShardedStage(tmp_path, ("rows", "extra"), lambda _table, frame: frame["unit"])


def frames_of(units: list[str]) -> dict[str, pd.DataFrame]:
    rows = [{"unit": u, "n": i} for u in units for i in range(2)]
    return {"rows": pd.DataFrame(rows), "extra": pd.DataFrame([{"unit": u} for u in units])}


def write_all(target: ShardedStage, count: int, fp: str = "fp") -> None:
    for index in range(count):
        spec = ShardSpec(index, count)
        mine = shard(UNITS, spec, key=str)
        target.write_shard(spec, fp, frames_of(mine), mine, {"seconds": 1.5})


def test_merge_restores_the_canonical_order(tmp_path: Path) -> None:
    target = stage(tmp_path)
    write_all(target, 3)
    merged, metrics = target.merge("fp", UNITS)
    pd.testing.assert_frame_equal(merged["rows"], frames_of(UNITS)["rows"])
    pd.testing.assert_frame_equal(merged["extra"], frames_of(UNITS)["extra"])
    assert [m["seconds"] for m in metrics] == [1.5, 1.5, 1.5]
    assert sorted(p.name for p in target.shards_dir.iterdir())[:3] == [
        "extra-0of3.parquet",
        "extra-1of3.parquet",
        "extra-2of3.parquet",
    ]


def test_merge_refuses_other_settings_naming_the_shard(tmp_path: Path) -> None:
    target = stage(tmp_path)
    write_all(target, 2)
    spec = ShardSpec(1, 2)
    mine = shard(UNITS, spec, key=str)
    target.write_shard(spec, "other", frames_of(mine), mine, {})
    with pytest.raises(DataError, match=r"manifest-1of2\.json: shard 1/2 was made with other settings"):
        target.merge("fp", UNITS)


def test_merge_refuses_missing_and_extra_units(tmp_path: Path) -> None:
    target = stage(tmp_path)
    write_all(target, 2)
    spec = ShardSpec(0, 2)
    mine = shard(UNITS, spec, key=str)
    target.write_shard(spec, "fp", frames_of(mine[:-1]), mine[:-1], {})
    with pytest.raises(
        DataError, match=r"manifest-0of2\.json: shard 0/2 does not hold its share: missing unit"
    ):
        target.merge("fp", UNITS)
    target.write_shard(spec, "fp", frames_of([*mine, "u9"]), [*mine, "u9"], {})
    with pytest.raises(DataError, match=r"unexpected unit 'u9'"):
        target.merge("fp", UNITS)
    # rows of a unit the manifest does not list
    target.write_shard(spec, "fp", frames_of([*mine, "u1"]), mine, {})
    with pytest.raises(DataError, match=r"rows-0of2\.parquet: rows of unit 'u1'"):
        target.merge("fp", UNITS)


def test_merge_refuses_a_missing_table(tmp_path: Path) -> None:
    target = stage(tmp_path)
    write_all(target, 2)
    target.table_path("extra", ShardSpec(1, 2)).unlink()
    with pytest.raises(DataError, match=r"extra-1of2\.parquet: shard 1/2 is missing its extra table"):
        target.merge("fp", UNITS)


def test_one_fingerprint_rule(tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("a")
    base = {"seed": 1, "threads": 2, "policy": {"model": "m", "batch_size": 8}, "shard": "0/2"}
    fp = run_fingerprint(base, [data], ["some/hub-id"])
    same = {**base, "threads": 8, "shard": "1/2", "policy": {"model": "m", "batch_size": 64}}
    assert run_fingerprint(same, [data], ["some/hub-id"]) == fp, "runtime settings stay out"
    assert run_fingerprint({**base, "seed": 2}, [data], ["some/hub-id"]) != fp
    assert run_fingerprint(base, [data], ["other/hub-id"]) != fp
    data.write_text("b")
    assert run_fingerprint(base, [data], ["some/hub-id"]) != fp, "input content is in"
    assert output_settings(base) == {"seed": 1, "policy": {"model": "m"}}


def test_workers_rerun_only_the_shards_without_a_complete_output(tmp_path: Path) -> None:
    from components.data.workers import clear_other_counts, pending_shards

    target = ShardedStage(tmp_path, ("t",), lambda table, frame: frame["unit"])
    units = ["a", "b", "c"]
    frame = pd.DataFrame({"unit": ["a", "c"]})
    target.write_shard(ShardSpec(0, 2), "fp", {"t": frame}, ["a", "c"], {})
    assert pending_shards(target, 2, "fp", units) == [ShardSpec(1, 2)]
    assert pending_shards(target, 2, "other", units) == [ShardSpec(0, 2), ShardSpec(1, 2)]
    (target.shards_dir / "manifest-0of3.json").write_text("{}")
    clear_other_counts(target, 2)
    assert sorted(p.name for p in target.shards_dir.iterdir()) == ["manifest-0of2.json", "t-0of2.parquet"]


def test_a_failed_worker_fails_the_stage_naming_its_shard(tmp_path: Path) -> None:
    from components.data.workers import run_workers
    from components.platform.errors import GenPRMError

    target = ShardedStage(tmp_path, ("t",), lambda table, frame: frame["unit"])
    with pytest.raises(GenPRMError, match=r"^rollout: shard 0/2: [^\n]*missing\.yaml[^\n]*$"):
        run_workers(target, "rollout", tmp_path / "missing.yaml", [], 2, "fp", ["a", "b"])


def test_workers_import_the_parents_code_whatever_their_folder_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys

    import components
    from components.data.workers import worker_command, worker_env

    (tmp_path / "components").mkdir()  # a stale copy in the working folder (a copied project)
    (tmp_path / "components" / "__init__.py").write_text("raise SystemExit('the stale copy')\n")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = worker_env()
    root = Path(components.__file__).resolve().parent.parent
    assert env["PYTHONPATH"].split(os.pathsep) == [str(root), "/elsewhere"]
    probe = [sys.executable, "-P", "-m", "components.data.journal"]
    assert subprocess.run(probe, cwd=tmp_path, env=env, capture_output=True).returncode == 0
    assert worker_command("rollout", Path("p.yaml"), ShardSpec(1, 2), [])[1:3] == ["-P", "-m"]
    stale = subprocess.run(probe[:1] + probe[2:], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "the stale copy" in stale.stderr, "without -P the working folder's copy wins"
