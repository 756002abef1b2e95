"""Run a sharded stage's n shards as n processes at once, on one machine, then merge them.

A stage with ``workers: n`` (``rollout``, ``label``) and ``shard: "0/1"`` (an explicit shard or a merge
ignores ``workers``) does not work itself: it starts
n worker processes, each running shard ``i/n`` of the same stage with one torch thread, waits for them
and merges their shard outputs (``components/data/shards.py``) into the tables one process writes. The
tables are the same (a backend call never mixes problems and is seeded by its unit), so ``workers`` is a
speed setting only, outside the fingerprint. On the 2-core machine two single-thread processes generate
about 1.5-2x the tokens per second of one two-thread process (the small model's matrices are too small
for torch's threads to pay off).

Crash safety: each worker keeps its own journal, and a shard whose complete output is already there
(its manifest says so, with this run's fingerprint) is not run again, so a killed run resumes per
shard. The shard outputs are removed after the merge. A failed worker fails the stage, naming its
shard and its last lines of output; no final table is written.

Worker 0 shows its progress bar; the others run with tqdm disabled (one bar per terminal line).

    python -P -m components.data.workers rollout params.yaml 1of2 [override ...]   # what the parent starts
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.data.journal import ShardSpec, shard
from components.platform.errors import ConfigError, DataError, GenPRMError

if TYPE_CHECKING:
    from components.data.shards import ShardedStage

log = logging.getLogger("genprm.workers")

STAGES = ("rollout", "label")
TAIL_LINES = 20


def check_workers(workers: int, where: str) -> None:
    """``workers`` >= 1."""
    if workers < 1:
        raise ConfigError(f"{where}.workers: must be at least 1, got {workers}")


def parallel(workers: int, shard_text: str) -> bool:
    """Whether a run starts worker processes: ``workers`` > 1 on an unsharded run. An explicit shard
    (``i/n``, as the flows' shard tasks send) or a merge runs in this process, whatever ``workers`` is."""
    return workers > 1 and shard_text == "0/1"


def worker_command(stage: str, params_path: Path, spec: ShardSpec, overrides: list[str]) -> list[str]:
    """The command line of the worker running shard ``spec`` of ``stage``."""
    # -P: no working folder on sys.path (a copied project's stale components/ would win); worker_env
    # puts this process's own code first instead.
    module = ["-P", "-m", "components.data.workers"]
    return [sys.executable, *module, stage, str(params_path), spec.tag, *overrides]


def worker_env() -> dict[str, str]:
    """This environment, with the folder holding this process's ``components`` first on the path, so a
    worker imports the same code as its parent whatever its working directory holds."""
    import components

    root = str(Path(components.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def pending_shards(sharded: ShardedStage, count: int, fp: str, all_units: list[str]) -> list[ShardSpec]:
    """The shards of ``count`` without a complete output made by this fingerprint (those still to run)."""
    pending = []
    for index in range(count):
        spec = ShardSpec(index, count)
        try:
            sharded.checked_manifest(spec, fp, shard(all_units, spec, key=str))
        except DataError:
            pending.append(spec)
    return pending


def clear_other_counts(sharded: ShardedStage, count: int) -> None:
    """Remove shard outputs of another shard count (a merge refuses mixed counts)."""
    if not sharded.shards_dir.is_dir():
        return
    for path in sharded.shards_dir.iterdir():
        if path.is_file() and not path.stem.endswith(f"of{count}"):
            path.unlink()


def run_workers(
    sharded: ShardedStage,
    stage: str,
    params_path: Path,
    overrides: list[str],
    count: int,
    fp: str,
    all_units: list[str],
) -> None:
    """Run every pending shard of ``count`` as its own process, all at once; raise if one fails."""
    clear_other_counts(sharded, count)
    pending = pending_shards(sharded, count, fp, all_units)
    done = count - len(pending)
    log.info("%s: %d worker processes (%d shards already complete)", stage, len(pending), done)
    procs = []
    for position, spec in enumerate(pending):
        env = worker_env()
        if position:
            env["TQDM_DISABLE"] = "1"
        command = worker_command(stage, params_path, spec, overrides)
        procs.append((spec, subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)))
    # Every worker's stderr is drained at once: a pipe read only after an earlier worker ended would
    # fill and stall its writer.
    with ThreadPoolExecutor(max_workers=max(1, len(procs))) as pool:
        tails = list(pool.map(lambda item: _wait(item[1], echo=item[0] == pending[0]), procs))
    failures = [(spec, tail) for (spec, _), tail in zip(procs, tails, strict=True) if tail]
    if failures:
        spec, tail = failures[0]
        errors = [line.removeprefix("error: ") for line in tail if line.startswith("error: ")]
        if errors:  # the worker's own one-line message, passed on as the stage's one line
            raise GenPRMError(f"{stage}: shard {spec.index}/{spec.count}: {errors[-1]}")
        raise GenPRMError(
            f"{stage}: worker for shard {spec.index}/{spec.count} failed; its last output:\n"
            + "\n".join(tail)
            + "\n(rerun to resume: complete shards are kept)"
        )


def _wait(proc: subprocess.Popen[str], echo: bool) -> list[str]:
    """Wait for ``proc``, echoing its stderr when ``echo`` (not its ``error:`` lines, which the parent
    reports once); [] on success, else its last lines."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    assert proc.stderr is not None
    for line in proc.stderr:
        tail.append(line.rstrip("\n"))
        if echo and not line.startswith("error: "):
            sys.stderr.write(line)
    return [] if proc.wait() == 0 else list(tail)


def run_and_merge(
    sharded: ShardedStage,
    stage: str,
    params_path: Path,
    overrides: list[str],
    count: int,
    fp: str,
    all_units: list[str],
    merge: Callable[[float], dict[str, Any]],
) -> dict[str, Any]:
    """``workers: n`` of a stage: :func:`run_workers`, then ``merge(wall seconds)`` (the stage's own
    merge, which writes the final tables and metrics), then the shard outputs are removed."""
    started = time.perf_counter()
    run_workers(sharded, stage, params_path, overrides, count, fp, all_units)
    metrics = merge(time.perf_counter() - started)
    shutil.rmtree(sharded.shards_dir, ignore_errors=True)  # the final tables hold everything
    return metrics


def worker_main(argv: list[str]) -> int:
    """``stage params spec [override ...]``: run one shard in this process with one torch thread."""
    from components.platform.cli import configure_runtime
    from components.platform.online import section_reasons

    stage, params, spec, *overrides = argv
    if stage not in STAGES:
        raise SystemExit(f"workers: unknown stage {stage!r} (one of {', '.join(STAGES)})")
    configure_runtime(section_reasons(Path(params), overrides, stage))
    index, count = spec.split("of")
    pinned = [f"{stage}.shard={index}/{count}", f"{stage}.workers=1", f"{stage}.threads=1"]
    entry = importlib.import_module(f"components.stages.{stage}").main
    try:
        entry(Path(params), [*overrides, *pinned])
    except GenPRMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
