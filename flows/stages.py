"""Prefect tasks that run one pipeline stage (or one shard of it) as a subprocess.

Used by ``flows/pipeline.py``; no ML logic here. Every task streams the command's output to the Prefect
logger line by line, enforces a wall-clock timeout (the whole process group is killed), and fails with
:class:`StageFailed` carrying the stage's own stderr tail. Retries back off exponentially, except for a
user error (exit status 2: bad params or input) or a timeout, which a retry cannot fix.

- :func:`run_stage`: ``dvc repro --single-item <stage>`` (DVC skips an up-to-date stage and records
  what ran in ``dvc.lock``), or ``genprm <stage> --params P`` for a params file other than the
  project's own (DVC cannot see that file: nothing is skipped or locked).
- :func:`run_shard`: ``genprm <stage> --set <stage>.shard=i/n`` (a shard is not a DVC stage).
- :func:`merge_stage`: ``genprm <stage> --set <stage>.shard=merge``, then ``dvc commit --force <stage>``
  so ``dvc.lock`` records the merged outputs (identical to an unsharded run's, by construction).
- :func:`stage_is_current`: ``dvc status <stage>``, to skip the shards of an up-to-date stage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

USER_ERROR_EXIT = 2  # the genprm CLI's status for bad params or input (components/platform/cli.py)
TAIL_LINES = 30
TRAIN_TAG = "genprm-train"  # tag concurrency limit 1: one training run at a time on this API
DEFAULT_TIMEOUT_S = 6 * 3600.0
_DVC_EXIT = re.compile(r"exited with (-?\d+)")


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message carries its stderr tail."""

    def __init__(self, stage: str, command: list[str], returncode: int, stage_exit: int | None, tail: str):
        self.stage = stage
        self.returncode = returncode
        self.stage_exit = stage_exit  # the stage command's own status (through dvc: parsed from its error)
        super().__init__(
            f"stage {stage!r} failed (exit {stage_exit if stage_exit is not None else returncode}): "
            f"{' '.join(command)}\n{tail}"
        )


class StageTimeout(StageFailed):
    """A stage ran past its timeout and was killed."""


def executable(name: str) -> str:
    """``name`` from this interpreter's environment (the venv's bin), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def stage_tags(stage: str) -> list[str]:
    """Prefect tags of a stage's task runs; training stages share the one-at-a-time tag."""
    tags = ["genprm", f"stage:{stage}"]
    if stage == "train" or stage.startswith("train_"):
        tags.append(TRAIN_TAG)
    return tags


def stage_command(stage: str, params: str, overrides: list[str] | None, via_dvc: bool) -> list[str]:
    """The command that runs ``stage``: ``dvc repro --single-item`` or its ``genprm`` entry point."""
    if via_dvc:
        return [executable("dvc"), "repro", "--single-item", stage]
    command = [executable("genprm"), stage, "--params", params]
    for item in overrides or []:
        command += ["--set", item]
    return command


def _pump(stream: IO[str], emit: Callable[[str], Any], tail: deque[str] | None, seen: list[str]) -> None:
    for raw in stream:
        # Progress bars redraw with carriage returns: keep the last state of the line.
        line = next((p for p in reversed(raw.rstrip("\n").split("\r")) if p.strip()), "").rstrip()
        if not line:
            continue
        emit(line)
        seen.append(line)
        if tail is not None:
            tail.append(line)


def _stop(proc: subprocess.Popen[str]) -> None:
    """Terminate the command's whole process group (dvc -> genprm -> workers), then kill it."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(
    stage: str, command: list[str], project_dir: str, env: dict[str, str], timeout_s: float
) -> list[str]:
    """Run ``command`` in ``project_dir``, streaming its output; returns the lines it printed."""
    logger = get_run_logger()
    logger.info("stage %s: %s", stage, " ".join(command))
    full_env = {**os.environ, **env}
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")])
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    seen: list[str] = []
    proc = subprocess.Popen(
        command,
        cwd=project_dir,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,  # its own process group, so a timeout kills the stage's children too
    )
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, logger.info, None, seen), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, logger.info, tail, seen), daemon=True),
    ]
    for thread in pumps:
        thread.start()
    try:
        returncode = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        message = f"timed out after {timeout_s:g} s\n" + "\n".join(tail)
        raise StageTimeout(stage, command, -9, None, message) from None
    finally:
        for thread in pumps:
            thread.join(timeout=30)
    if returncode != 0:
        stage_exit: int | None = returncode
        if command[1:2] == ["repro"]:
            found = _DVC_EXIT.findall("\n".join(tail))
            stage_exit = int(found[-1]) if found else None
        raise StageFailed(stage, command, returncode, stage_exit, "\n".join(tail))
    return seen


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed stage unless it failed on bad params or input, or timed out."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, StageTimeout):
        return False
    return not (isinstance(exc, StageFailed) and exc.stage_exit == USER_ERROR_EXIT)


STAGE_TASK: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),  # 10 s, then 20 s
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_unless_user_error,
    "cache_policy": NO_CACHE,
}


@task(task_run_name="{stage}", **STAGE_TASK)
def run_stage(stage: str, command: list[str], project_dir: str, env: dict[str, str], timeout_s: float) -> str:
    """Run one stage's command; 'skipped' when DVC found it up to date, else 'ran'."""
    seen = run_command(stage, command, project_dir, env, timeout_s)
    return "skipped" if any("didn't change, skipping" in line for line in seen) else "ran"


@task(task_run_name="{stage}[{shard}]", **STAGE_TASK)
def run_shard(
    stage: str,
    shard: str,
    params: str,
    overrides: list[str],
    project_dir: str,
    env: dict[str, str],
    timeout_s: float,
) -> str:
    """Run shard ``i/n`` of ``stage`` through its entry point (outside DVC: a shard is no DVC stage)."""
    command = stage_command(stage, params, [*overrides, f"{stage}.shard={shard}"], via_dvc=False)
    run_command(stage, command, project_dir, env, timeout_s)
    return shard


@task(task_run_name="{stage}[merge]", **STAGE_TASK)
def merge_stage(
    stage: str,
    params: str,
    overrides: list[str],
    project_dir: str,
    env: dict[str, str],
    timeout_s: float,
    via_dvc: bool,
) -> str:
    """Merge the shards of ``stage``; on the DVC route, record the merged outputs in ``dvc.lock``."""
    command = stage_command(stage, params, [*overrides, f"{stage}.shard=merge"], via_dvc=False)
    run_command(stage, command, project_dir, env, timeout_s)
    if via_dvc:
        run_command(stage, [executable("dvc"), "commit", "--force", stage], project_dir, env, timeout_s)
    return "ran"


@task(task_run_name="{stage}[status]", cache_policy=NO_CACHE)
def stage_is_current(stage: str, project_dir: str) -> bool:
    """True when ``dvc status`` finds ``stage`` up to date (its deps, params and outs unchanged)."""
    proc = subprocess.run(
        [executable("dvc"), "status", "--json", stage],
        cwd=project_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return False
    try:
        return json.loads(proc.stdout or "{}") == {}
    except json.JSONDecodeError:
        return False
