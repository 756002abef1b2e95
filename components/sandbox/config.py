"""The sandbox's params section (``SandboxConfig``, nested as e.g. ``synthesize.sandbox``) and result type."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from components.platform.config import option
from components.platform.errors import ConfigError

Status = Literal["ok", "error", "timeout", "killed"]

ISOLATION = ("required", "none")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class SandboxConfig:
    """Limits for model-written code; every limit applies per snippet or per session as its help says."""

    timeout_s: float = option(5.0, help="Wall-clock limit per snippet (seconds).")
    cpu_s: float = option(5.0, help="CPU-time limit per snippet, all threads and processes (seconds).")
    memory_mb: int = option(
        1024, help="Address space a process may add above the warm worker (RLIMIT_AS), in MiB."
    )
    max_processes: int = option(32, help="Processes and threads per session, its main process included.")
    max_output_bytes: int = option(
        16384, help="stdout+stderr kept per snippet; the rest is dropped (flagged)."
    )
    workers: int = option(2, help="Snippets executing at once (over all sessions); more runs wait.")
    max_sessions: int = option(
        512, help="Sessions open at once (each keeps its namespace alive); more session() calls wait."
    )
    preload: list[str] = option(
        ["math", "fractions", "sympy", "numpy"], help="Modules imported once in the warm fork server."
    )
    disk_mb: int = option(64, help="Size of each session's private working directory (tmpfs), in MiB.")
    isolation: str = option(
        "required",
        help="required: refuse to start without network isolation, a private filesystem view and "
        "process and memory limits; none: run model-written code UNCONFINED (explicit opt-out, logged).",
    )

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("timeout_s", 0 < self.timeout_s <= 3600, "must be in (0, 3600]"),
            ("cpu_s", 0 < self.cpu_s <= 3600, "must be in (0, 3600]"),
            ("memory_mb", 16 <= self.memory_mb <= 1 << 20, "must be in [16, 1048576]"),
            ("max_processes", 1 <= self.max_processes <= 4096, "must be in [1, 4096]"),
            ("max_output_bytes", 0 <= self.max_output_bytes <= 1 << 30, "must be in [0, 2**30]"),
            ("workers", 1 <= self.workers <= 256, "must be in [1, 256]"),
            ("max_sessions", 1 <= self.max_sessions <= 1024, "must be in [1, 1024]"),
            ("disk_mb", 1 <= self.disk_mb <= 1 << 20, "must be in [1, 1048576]"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"sandbox.{key}: {why}, got {getattr(self, key)!r}")
        if self.isolation not in ISOLATION:
            raise ConfigError(
                f"sandbox.isolation: must be one of {', '.join(ISOLATION)}, got {self.isolation!r}"
            )
        for name in self.preload:
            if not isinstance(name, str) or not _MODULE_NAME.match(name):
                raise ConfigError(f"sandbox.preload: {name!r} is not a module name")


@dataclass(frozen=True)
class ExecutionResult:
    """What one snippet did. ``error``: it raised; ``timeout``: wall-clock or CPU limit; ``killed``: its
    process died (memory, a signal, ``os._exit``, a closed control channel). ``restarted``: the session
    lost its namespace after an earlier timeout or kill, so this snippet ran in a fresh one."""

    stdout: str
    stderr: str
    status: Status
    duration_s: float
    truncated: bool = False
    restarted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "status": self.status,
            "duration_s": round(self.duration_s, 6),
            "truncated": self.truncated,
            "restarted": self.restarted,
        }
