"""Caller side of the fork server: start it in fresh namespaces, talk to it, report what it enforces.

``ForkServer.start`` runs the server under ``unshare --net --mount --pid --ipc --uts`` (util-linux): as
root directly, otherwise (or where root lacks CAP_SYS_ADMIN, as in a default container) with
``--user --map-root-user`` in a user namespace of its own. ``sandbox.isolation: none`` starts it as a
plain process instead, loudly. The server reports which protections took effect (``capabilities``);
``missing`` names the required ones that did not (``Sandbox`` refuses to start then) and
``not_enforced`` every gap, for the log and the README's table.
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


USERNS = ["--user", "--map-root-user"]
HOW_TO = (
    "Provide them: install util-linux (unshare) on PATH, and run as root, or as any user where user "
    "namespaces are allowed (sysctl user.max_user_namespaces > 0; kernel.unprivileged_userns_clone=1 "
    "on older Debian kernels; kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu 24.04); in "
    "Docker or Kubernetes use the worker settings of infra/docker-compose.yml and "
    "infra/k8s/gpu-job-template.json (README: Sandbox). Or set sandbox.isolation: none to run "
    "model-written code UNCONFINED."
)


class SandboxError(GenPRMError):
    """The sandbox could not start or run a session (not a failure of the snippet itself)."""


class IsolationError(SandboxError):
    """The sandbox refuses to start: a required protection is not available on this machine."""


def isolation_commands(isolation: str) -> list[tuple[str, list[str]]]:
    """Launch prefixes to try, strongest first (none at all without unshare, unless unconfined)."""
    if isolation == "none":
        return [("none", [])]
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    found = [("unshare", [unshare, *UNSHARE, "--"])] if os.geteuid() == 0 else []
    found.append(("unshare-user", [unshare, *USERNS, *UNSHARE, "--"]))
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
        commands = isolation_commands(config.isolation)
        if not commands:
            errors.append(f"unshare (util-linux) is not on PATH ({os.environ.get('PATH', '')})")
        for tool, prefix in commands:
            server = cls._launch(config, workroot, owner, prefix, errors)
            if server is not None and (tool == "none" or not missing(server.capabilities)):
                server.capabilities["isolation_tool"] = tool
                server.capabilities["launch_errors"] = errors
                return server
            if server is not None:
                errors.append(f"{tool}: " + "; ".join(missing(server.capabilities)))
                server.stop()
        if config.isolation == "none":
            raise SandboxError("sandbox fork server did not start: " + " | ".join(errors))
        raise IsolationError(
            "sandbox refused to start (sandbox.isolation: required): no network isolation, private "
            f"filesystem view, or process and memory limits here. {' | '.join(errors)}. {HOW_TO}"
        )

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
            "user_ns": os.readlink("/proc/self/ns/user"),
            "private": sorted({os.path.expanduser("~"), os.getcwd()} - {"/"}),
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
            errors.append(f"{' '.join(prefix[:2]) or 'plain'}: {tail or 'no output'}")
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


def missing(caps: dict[str, Any]) -> list[str]:
    """The required protections these capabilities lack (the sandbox refuses to start without them)."""
    gaps = []
    if not caps.get("network_namespace"):
        gaps.append("network isolation (no network namespace)")
    if not caps.get("pid_namespace"):
        gaps.append("process isolation (no PID namespace)")
    if not caps.get("private_root"):
        why = caps.get("private_root_error", "no mount namespace")
        gaps.append(f"a private filesystem view ({why})")
    cgroups = caps.get("cgroups", {})
    if "pids" not in cgroups and not (caps.get("separate_uid") or caps.get("session_user_namespace")):
        gaps.append("a process limit (no pids cgroup, and RLIMIT_NPROC does not bind the caller's uid)")
    return gaps  # memory: RLIMIT_AS binds every session process wherever it runs


def not_enforced(caps: dict[str, Any]) -> list[str]:
    """Human-readable gaps in isolation for these capabilities."""
    gaps = [f"REQUIRED {gap}" for gap in missing(caps)]
    if caps.get("private_root") and not caps.get("readonly_filesystem"):
        gaps.append(f"filesystem: could not remount read-only: {caps.get('readonly_failed')}")
    if not caps.get("separate_uid") and not caps.get("session_user_namespace"):
        gaps.append("uid: snippets run as the caller's user (not root): env of other processes, signals")
    cgroups = caps.get("cgroups", {})
    if "memory" not in cgroups:
        gaps.append(
            "cgroup memory: only RLIMIT_AS per process bounds a session's memory (times its processes)"
        )
    if "pids" not in cgroups:
        gaps.append("cgroup pids: only RLIMIT_NPROC (per session uid or user namespace) bounds its processes")
    if "cpu" not in cgroups:
        gaps.append("cpu: only the session's cooperative RLIMIT_CPU bounds CPU (wall clock still enforced)")
    if caps.get("preload_failed"):
        gaps.append(f"preload: could not import {', '.join(caps['preload_failed'])}")
    return gaps
