"""Caller side of the fork server: start it in fresh namespaces, talk to it, report what it enforces.

``ForkServer.start`` tries ``unshare --net --mount --pid --ipc --uts`` (util-linux) as root and falls back
to a plain process where that is refused; the server reports which protections took effect
(``capabilities``), and ``not_enforced`` turns that into sentences for the log and the README's table.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from components.platform.errors import GenPRMError
from components.sandbox import wire
from components.sandbox.config import SandboxConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
UNSHARE = ["--net", "--mount", "--pid", "--fork", "--mount-proc", "--ipc", "--uts", "--kill-child"]
BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from components.sandbox.zygote import main; main()"
START_TIMEOUT_S = 180.0


class SandboxError(GenPRMError):
    """The sandbox could not start or run a session (not a failure of the snippet itself)."""


def isolation_commands() -> list[tuple[str, list[str]]]:
    """Launch prefixes to try, strongest first."""
    unshare = shutil.which("unshare")
    found = []
    if unshare and os.geteuid() == 0:
        found.append(("unshare", [unshare, *UNSHARE, "--"]))
    found.append(("none", []))
    return found


class ForkServer:
    """One fork-server process; ``request`` is thread-safe (one request at a time)."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket, caps: dict[str, Any]) -> None:
        self.process = process
        self.sock = sock
        self.capabilities = caps
        self.lock = threading.Lock()

    @classmethod
    def start(cls, config: SandboxConfig, workroot: str, owner: str) -> ForkServer:
        errors: list[str] = []
        for tool, prefix in isolation_commands():
            server = cls._launch(config, workroot, owner, prefix, errors)
            if server is not None:
                server.capabilities["isolation_tool"] = tool
                return server
        raise SandboxError("sandbox fork server did not start: " + " | ".join(errors))

    @classmethod
    def _launch(
        cls, config: SandboxConfig, workroot: str, owner: str, prefix: list[str], errors: list[str]
    ) -> ForkServer | None:
        parent, child = socket.socketpair()
        settings = {
            "ctrl_fd": child.fileno(),
            "workroot": workroot,
            "owner": owner,
            "net_ns": os.readlink("/proc/self/ns/net"),
            "mnt_ns": os.readlink("/proc/self/ns/mnt"),
            **{k: getattr(config, k) for k in ("memory_mb", "disk_mb", "max_processes", "cpu_s", "preload")},
        }
        log = tempfile.TemporaryFile()  # noqa: SIM115 (the server writes it for its whole life)
        command = [*prefix, sys.executable, "-I", "-c", BOOT, str(REPO_ROOT), json.dumps(settings)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        process = subprocess.Popen(
            command, pass_fds=[child.fileno()], env=env, cwd="/", stdin=subprocess.DEVNULL,
            stdout=log, stderr=log,
        )  # fmt: skip
        child.close()
        parent.settimeout(START_TIMEOUT_S)
        try:
            message = wire.recv(parent)
        except (OSError, ValueError):
            message = None
        if message is None or not message[0].get("ready"):
            process.kill()
            process.wait()
            log.seek(0)
            tail = log.read()[-2000:].decode(errors="replace").strip()
            errors.append(f"{' '.join(prefix[:1]) or 'plain'}: {tail or 'no output'}")
            parent.close()
            return None
        parent.settimeout(None)
        return cls(process, parent, message[0]["capabilities"])

    def request(self, message: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        with self.lock:
            try:
                wire.send(self.sock, message, fds)
                reply = wire.recv(self.sock)
            except OSError as exc:
                raise SandboxError(f"sandbox fork server unreachable: {exc}") from exc
        if reply is None:
            raise SandboxError(f"sandbox fork server exited (status {self.process.poll()})")
        if "error" in reply[0]:
            raise SandboxError(f"sandbox fork server: {reply[0]['error']}")
        return reply[0]

    def stop(self) -> None:
        """Close the channel: the server kills every session and exits, taking its namespaces along."""
        self.sock.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def not_enforced(caps: dict[str, Any]) -> list[str]:
    """Human-readable gaps in isolation for these capabilities."""
    gaps = []
    if not caps.get("network_namespace"):
        gaps.append("network: snippets can open connections (no network namespace)")
    if not caps.get("pid_namespace"):
        gaps.append("processes: snippets can see the host's processes (no PID namespace)")
    if not caps.get("readonly_filesystem"):
        gaps.append("filesystem: writable wherever the session's uid may write (no read-only remount)")
    if not caps.get("separate_uid"):
        gaps.append("uid: snippets run as the caller's user (not root): env of other processes, signals")
    for name, what in (("memory", "memory of a session's processes together"), ("pids", "")):
        if name not in caps.get("cgroups", []):
            gaps.append(f"cgroup {name}: only per-process rlimits bound {what or 'process count'}")
    if "cpuacct" not in caps.get("cgroups", []):
        gaps.append("cpu: only the session's cooperative RLIMIT_CPU bounds CPU (wall clock still enforced)")
    if caps.get("preload_failed"):
        gaps.append(f"preload: could not import {', '.join(caps['preload_failed'])}")
    return gaps
