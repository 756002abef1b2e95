"""Serve the deployments of ``prefect.yaml`` on this machine with one command.

    python -m flows.serve                  # work pool (if missing) + `prefect deploy` + a worker
    python -m flows.serve --no-worker      # only create the pool and the deployments

Against the API in ``PREFECT_API_URL`` (start one with ``prefect server start``); run it in the project
checkout: the deployments run the flow there. The work pool ``genprm-process`` (type ``process``) is
created with a concurrency limit of 1, because every run of the pipeline works in the same checkout.
The worker replaces this process (``exec``), so stopping this command stops the worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from flows.stages import executable

POOL = "genprm-process"


def _prefect(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [executable("prefect"), "--no-prompt", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        sys.exit(
            f"error: prefect {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc


def ensure_pool(pool: str, project_dir: Path) -> bool:
    """Create the process work pool ``pool`` (concurrency 1) unless it exists; True when created."""
    if _prefect("work-pool", "inspect", pool, cwd=project_dir, check=False).returncode == 0:
        return False
    _prefect("work-pool", "create", pool, "--type", "process", cwd=project_dir)
    _prefect("work-pool", "set-concurrency-limit", pool, "1", cwd=project_dir)
    return True


PIPELINE_DEPLOYMENTS = ("nightly", "on-demand")  # not `shard`: it targets the GPU pool (flows/shards.py)


def deploy(project_dir: Path) -> str:
    """``prefect deploy`` of the pipeline deployments of ``project_dir``'s prefect.yaml; its output."""
    names = [arg for name in PIPELINE_DEPLOYMENTS for arg in ("--name", name)]
    proc = _prefect("deploy", *names, cwd=project_dir)
    return proc.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--project-dir", default=".", help="The checkout holding prefect.yaml and dvc.yaml.")
    parser.add_argument("--pool", default=POOL, help="The process work pool named in prefect.yaml.")
    parser.add_argument("--no-worker", action="store_true", help="Create pool and deployments, then exit.")
    args = parser.parse_args(argv)
    root = Path(args.project_dir).resolve()
    if not (root / "prefect.yaml").is_file():
        sys.exit(f"error: {root / 'prefect.yaml'} not found (run from the project checkout)")
    created = ensure_pool(args.pool, root)
    print(f"work pool {args.pool}: {'created' if created else 'exists'}", flush=True)
    deploy(root)
    print("deployed: offline-pipeline/nightly (cron 0 2 * * * UTC), offline-pipeline/on-demand", flush=True)
    if args.no_worker:
        return
    os.chdir(root)
    worker = executable("prefect")
    os.execv(worker, [worker, "worker", "start", "--pool", args.pool, "--type", "process"])


if __name__ == "__main__":
    main()
