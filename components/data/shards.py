"""One sharded-stage helper: the journal, the shard tables and the merge of every sharded stage.

A sharded stage (``rollout``, ``label``) splits its units (problems) with ``shard(units, spec)``, runs
its share under a :class:`~components.data.journal.Journal`, and either writes its final tables (one
shard) or its shard outputs (``i/n``); ``shard: merge`` combines the n shard outputs into the tables one
unsharded run writes. One naming scheme for every stage::

    <output_dir>/.progress-<i>of<n>.jsonl          the journal (kept across crashes; removed at the end)
    <output_dir>/shards/<table>-<i>of<n>.parquet   one file per table of the stage
    <output_dir>/shards/manifest-<i>of<n>.json     written last: fingerprint, unit keys, metrics

The manifest makes a shard complete and says what made it. The merge refuses, naming the shard: a
missing shard, shards of different counts, a shard made with other settings, inputs or models (another
fingerprint), and a shard whose units are not exactly its share (missing or extra units).

One fingerprint rule (:func:`run_fingerprint`): what changes the output is in it (the stage config, the
content of its input files, the models' fingerprints); what does not (:data:`RUNTIME_ONLY`: threads,
batch sizes, concurrency, the shard spec) is not, so resuming with more threads or merging shards run
with different batch sizes works.

    stage = ShardedStage(Path("data/rollout"), ("rollouts",), lambda table, frame: frame["problem_id"])
    fp = run_fingerprint(to_dict(cfg), [Path(cfg.input)], [cfg.policy.model])
    frames = {"rollouts": run(cfg, shard(units, spec, key), stage.journal(spec, fp))}
    stage.write_shard(spec, fp, frames, unit_keys, metrics)        # or write the final tables
    frames, shard_metrics = stage.merge(fp, all_unit_keys)         # shard: merge
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.data.journal import (
    Journal,
    ShardSpec,
    file_sha256,
    fingerprint,
    model_fingerprint,
    shard,
)
from components.platform.errors import DataError

# Config keys that change how fast a stage runs, never what it writes (at any depth of the config).
RUNTIME_ONLY = frozenset(
    {
        "threads",
        "shard",
        "workers",
        "batch_size",
        "chunk_size",
        "max_concurrency",
        "max_concurrency_per_server",
        "report_samples",
    }
)

_MANIFEST = re.compile(r"manifest-(\d+)of(\d+)\.json")


def output_settings(settings: Any) -> Any:
    """``settings`` (a plain config dict) without its :data:`RUNTIME_ONLY` keys, at every depth."""
    if isinstance(settings, dict):
        return {k: output_settings(v) for k, v in settings.items() if k not in RUNTIME_ONLY}
    if isinstance(settings, list):
        return [output_settings(v) for v in settings]
    return settings


def run_fingerprint(settings: dict[str, Any], inputs: Iterable[Path], models: Iterable[str]) -> str:
    """The one fingerprint of a stage's work: output settings, input file contents, model fingerprints."""
    return fingerprint(
        output_settings(settings),
        [file_sha256(Path(p)) for p in inputs],
        [model_fingerprint(m) for m in models],
    )


UnitOf = Callable[[str, pd.DataFrame], pd.Series]


@dataclass(frozen=True)
class ShardedStage:
    """The shard outputs of one stage: ``tables`` by name, and how a row names its unit (``unit_of``)."""

    output_dir: Path
    tables: tuple[str, ...]
    unit_of: UnitOf

    @property
    def shards_dir(self) -> Path:
        return Path(self.output_dir) / "shards"

    def journal(self, spec: ShardSpec, fp: str) -> Journal:
        """The crash-safe progress journal of shard ``spec``."""
        return Journal(Path(self.output_dir) / f".progress-{spec.tag}.jsonl", fp)

    def table_path(self, table: str, spec: ShardSpec) -> Path:
        return self.shards_dir / f"{table}-{spec.tag}.parquet"

    def manifest_path(self, spec: ShardSpec) -> Path:
        return self.shards_dir / f"manifest-{spec.tag}.json"

    def write_shard(
        self,
        spec: ShardSpec,
        fp: str,
        frames: dict[str, pd.DataFrame],
        units: list[str],
        metrics: dict[str, Any],
    ) -> None:
        """Write shard ``spec``'s tables, then its manifest (which makes the shard complete)."""
        from components.data.io import write_json, write_parquet

        for table in self.tables:
            write_parquet(self.table_path(table, spec), frames[table])
        manifest = {"shard": f"{spec.index}/{spec.count}", "fingerprint": fp, "units": units}
        write_json(self.manifest_path(spec), {**manifest, "metrics": metrics})

    def shard_count(self) -> int:
        """n of the one complete set of shard manifests; none, mixed counts or a missing one is an error."""
        found = {
            (int(m[1]), int(m[2]))
            for path in self.shards_dir.glob("manifest-*.json")
            if (m := _MANIFEST.fullmatch(path.name))
        }
        if not found:
            raise DataError(f"{self.shards_dir}: no shard outputs (manifest-<i>of<n>.json) to merge")
        counts = sorted({n for _, n in found})
        if len(counts) > 1:
            raise DataError(
                f"{self.shards_dir}: shard outputs of different shard counts {counts}; remove stale ones"
            )
        count = counts[0]
        missing = [i for i in range(count) if (i, count) not in found]
        if missing:
            path = self.manifest_path(ShardSpec(missing[0], count))
            raise DataError(f"{path}: shard {missing[0]}/{count} is missing (run it, then merge)")
        return count

    def checked_manifest(self, spec: ShardSpec, fp: str, expected: list[str]) -> dict[str, Any]:
        """Shard ``spec``'s manifest, refused when another fingerprint or other units made it."""
        path = self.manifest_path(spec)
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable shard manifest ({exc}); rerun shard {spec.tag}") from exc
        if manifest.get("fingerprint") != fp:
            raise DataError(
                f"{path}: shard {spec.index}/{spec.count} was made with other settings, inputs or models "
                f"(fingerprint {manifest.get('fingerprint')!r}, this merge {fp!r}); rerun it"
            )
        units = list(manifest.get("units") or [])
        missing = [u for u in expected if u not in set(units)]
        extra = [u for u in units if u not in set(expected)]
        if missing or extra or len(units) != len(set(units)):
            what = f"missing unit {missing[0]!r}" if missing else f"unexpected unit {(extra or units)[0]!r}"
            raise DataError(f"{path}: shard {spec.index}/{spec.count} does not hold its share: {what}")
        return manifest

    def _read_table(self, table: str, spec: ShardSpec, units: set[str]) -> pd.DataFrame:
        from components.data.io import read_parquet

        path = self.table_path(table, spec)
        if not path.is_file():
            raise DataError(f"{path}: shard {spec.index}/{spec.count} is missing its {table} table")
        frame = read_parquet(path)
        stray = sorted(set(self.unit_of(table, frame)) - units) if len(frame) else []
        if stray:
            raise DataError(f"{path}: rows of unit {stray[0]!r}, which is not in this shard's manifest")
        return frame

    def merge(self, fp: str, all_units: list[str]) -> tuple[dict[str, pd.DataFrame], list[dict[str, Any]]]:
        """The merged tables in ``all_units`` order (rows of a unit keep their order), and shard metrics."""
        count = self.shard_count()
        position = {unit: i for i, unit in enumerate(all_units)}
        parts: dict[str, list[pd.DataFrame]] = {table: [] for table in self.tables}
        metrics = []
        for index in range(count):
            spec = ShardSpec(index, count)
            manifest = self.checked_manifest(spec, fp, shard(all_units, spec, key=str))
            metrics.append(manifest.get("metrics") or {})
            for table in self.tables:
                parts[table].append(self._read_table(table, spec, set(manifest["units"])))
        merged = {}
        for table, frames in parts.items():
            nonempty = [f for f in frames if len(f)] or frames[:1]
            frame = pd.concat(nonempty, ignore_index=True)
            order = self.unit_of(table, frame).map(position) if len(frame) else pd.Series([], dtype=float)
            merged[table] = frame.iloc[order.to_numpy().argsort(kind="stable")].reset_index(drop=True)
        return merged, metrics
