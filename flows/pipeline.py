"""The offline pipeline as a Prefect 3 flow: each stage of ``dvc.yaml``, in DAG order, as one task.

    python -m flows.pipeline                                    # every stage, like `dvc repro`
    python -m flows.pipeline --stages prepare                   # some stages (still in DAG order)
    python -m flows.pipeline --set bootstrap.train.steps=200    # with overrides (see below)

It runs on Prefect's local ephemeral API by default (or the server in ``PREFECT_API_URL``). The flow is
thin: it reads the stage graph from ``dvc.yaml`` and runs each stage as a subprocess, streaming the
stage's output to the Prefect logger. A stage that fails fails the flow with the stage's own stderr tail
in the exception message. Each stage is retried once after 10 s, except on a user error (exit status 2:
bad params or input), which a retry cannot fix.

Two routes, chosen per flow run:

- **No overrides** (and the project's own ``params.yaml``): ``dvc repro --single-item <stage>``. DVC skips
  a stage whose deps, params and outs are unchanged, and records what ran in ``dvc.lock``, so the lock
  stays the truth about the outputs.
- **With overrides** (or another params file): the stage entry point directly, ``genprm <stage> --params
  P --set key=value ...``. Nothing is skipped and ``dvc.lock`` is not updated (DVC cannot see overrides,
  and the flow never edits the user's ``params.yaml``). For tracked experiments with changed params use
  ``dvc exp run -S key=value``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO, Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

USER_ERROR_EXIT = 2  # the genprm CLI's status for bad params or input (components/cli.py)
TAIL_LINES = 30
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


# ------------------------------------------------------------------------------------------ stage graph


def _paths(entries: Iterable[Any] | None) -> list[PurePosixPath]:
    """Paths of dvc.yaml deps/outs entries: plain strings or one-key mappings ``{path: {options}}``."""
    paths = []
    for entry in entries or []:
        for item in entry if isinstance(entry, dict) else [entry]:
            paths.append(PurePosixPath(os.path.normpath(str(item))))
    return paths


def _overlaps(dep: PurePosixPath, out: PurePosixPath) -> bool:
    """A dep needs an out when it is the out, lies inside it, or contains it."""
    return dep == out or out in dep.parents or dep in out.parents


def stage_order(dvc_yaml: Path) -> list[str]:
    """The stages of ``dvc_yaml`` in dependency order (ties keep file order); a cycle is an error."""
    stages: dict[str, Any] = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages") or {}
    outs = {
        name: _paths(spec.get("outs")) + _paths(spec.get("metrics")) + _paths(spec.get("plots"))
        for name, spec in stages.items()
    }
    needs = {
        name: {
            other
            for other in stages
            if other != name and any(_overlaps(d, o) for d in _paths(spec.get("deps")) for o in outs[other])
        }
        for name, spec in stages.items()
    }
    order: list[str] = []
    while len(order) < len(stages):
        ready = [n for n in stages if n not in order and needs[n] <= set(order)]
        if not ready:
            left = sorted(set(stages) - set(order))
            raise ValueError(f"{dvc_yaml}: the stages {left} depend on each other in a cycle")
        order.append(ready[0])
    return order


def select_stages(order: list[str], wanted: list[str] | None) -> list[str]:
    """``wanted`` (all when None) in DAG order; an unknown stage name is an error naming it."""
    if wanted is None:
        return order
    unknown = [s for s in wanted if s not in order]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r} (stages in dvc.yaml: {', '.join(order)})")
    return [s for s in order if s in wanted]


# ---------------------------------------------------------------------------------------- stage commands


def _executable(name: str) -> str:
    """``name`` from this interpreter's environment (the venv's bin), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def uses_dvc(project_dir: Path, params: str, overrides: list[str] | None) -> bool:
    """True for the ``dvc repro`` route: no overrides and the project's own params.yaml."""
    return not overrides and (project_dir / params).resolve() == (project_dir / "params.yaml").resolve()


def stage_command(stage: str, params: str, overrides: list[str] | None, via_dvc: bool) -> list[str]:
    """The command that runs ``stage``: ``dvc repro --single-item`` or its ``genprm`` entry point."""
    if via_dvc:
        return [_executable("dvc"), "repro", "--single-item", stage]
    command = [_executable("genprm"), stage, "--params", params]
    for item in overrides or []:
        command += ["--set", item]
    return command


def _pump(stream: IO[str], emit: Any, tail: deque[str] | None, seen: list[str]) -> None:
    for raw in stream:
        # Progress bars redraw with carriage returns: keep the last state of the line.
        line = next((p for p in reversed(raw.rstrip("\n").split("\r")) if p.strip()), "").rstrip()
        if not line:
            continue
        emit(line)
        seen.append(line)
        if tail is not None:
            tail.append(line)


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed stage unless it failed on bad params or input (a retry cannot fix those)."""
    exc = state.result(raise_on_failure=False)
    return not (isinstance(exc, StageFailed) and exc.stage_exit == USER_ERROR_EXIT)


@task(
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=_retry_unless_user_error,
    task_run_name="{stage}",
    cache_policy=NO_CACHE,
)
def run_stage(stage: str, command: list[str], project_dir: str) -> str:
    """Run one stage's command in ``project_dir``, streaming its output; 'skipped' or 'ran'."""
    logger = get_run_logger()
    logger.info("stage %s: %s", stage, " ".join(command))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    seen: list[str] = []
    with subprocess.Popen(
        command,
        cwd=project_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            threading.Thread(target=_pump, args=(proc.stdout, logger.info, None, seen), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, logger.info, tail, seen), daemon=True),
        ]
        for thread in pumps:
            thread.start()
        returncode = proc.wait()
        for thread in pumps:
            thread.join()
    if returncode != 0:
        stage_exit: int | None = returncode
        if command[1:2] == ["repro"]:
            found = _DVC_EXIT.findall("\n".join(tail))
            stage_exit = int(found[-1]) if found else None
        raise StageFailed(stage, command, returncode, stage_exit, "\n".join(tail))
    skipped = any("didn't change, skipping" in line for line in seen)
    return "skipped" if skipped else "ran"


# ------------------------------------------------------------------------------------------------- flow


@flow(name="offline-pipeline")
def offline_pipeline(
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    stages: list[str] | None = None,
    project_dir: str = ".",
) -> dict[str, str]:
    """Run the DVC stages (all, or ``stages``) in DAG order; returns each stage's 'ran' or 'skipped'.

    Without ``overrides`` each stage is ``dvc repro --single-item <stage>`` (up-to-date stages are skipped,
    dvc.lock is updated); with ``overrides`` (or a ``params`` file other than the project's params.yaml)
    each stage is ``genprm <stage> --params <params> --set ...`` (always runs; dvc.lock is untouched).
    ``params`` is relative to ``project_dir``, the folder holding ``dvc.yaml``.
    """
    root = Path(project_dir)
    selected = select_stages(stage_order(root / "dvc.yaml"), stages)
    via_dvc = uses_dvc(root, params, overrides)
    get_run_logger().info(
        "stages %s via %s", ", ".join(selected), "dvc repro" if via_dvc else "genprm entry points"
    )
    return {
        stage: run_stage(stage, stage_command(stage, params, overrides, via_dvc), str(root))
        for stage in selected
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.pipeline [--params P] [--set k=v ...] [--stages S ...] [--project-dir D]``."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--params", default="params.yaml", help="The params file (relative to the project).")
    parser.add_argument("--set", dest="overrides", action="append", help="Override section.key=value.")
    parser.add_argument("--stages", nargs="+", help="Run only these stages (in DAG order).")
    parser.add_argument("--project-dir", default=".", help="The folder holding dvc.yaml.")
    args = parser.parse_args(argv)
    result = offline_pipeline(
        params=args.params, overrides=args.overrides, stages=args.stages, project_dir=args.project_dir
    )
    print(yaml.safe_dump(result, sort_keys=False), end="")


if __name__ == "__main__":
    main()
