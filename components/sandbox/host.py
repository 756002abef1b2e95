"""Caller side of sessions: ``Sandbox`` (owns the fork server, bounds concurrency) and ``Session``.

Every limit that matters is enforced from here or by the kernel, never by the session process: the
wall clock and the cgroup CPU time are watched while a snippet runs, output beyond the cap is read and
dropped, and after each snippet any process the snippet left behind is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import selectors
import shutil
import signal
import socket
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from components.sandbox import wire
from components.sandbox.cgroups import read_cpu_ns, read_oom_kills, remove_cgroup
from components.sandbox.config import ExecutionResult, SandboxConfig, Status
from components.sandbox.server import ForkServer, IsolationError, SandboxError, missing, not_enforced

log = logging.getLogger(__name__)
_logged = threading.Event()
POLL_S = 0.05
DRAIN_LIMIT = 64 << 20


@dataclass
class _Capture:
    """stdout and stderr up to a shared byte cap; later bytes are counted, not kept."""

    cap: int
    parts: dict[int, bytearray] = field(default_factory=lambda: {1: bytearray(), 2: bytearray()})
    seen: int = 0
    truncated: bool = False

    def add(self, which: int, data: bytes) -> None:
        room = max(self.cap - sum(len(p) for p in self.parts.values()), 0)
        self.parts[which] += data[:room]
        self.seen += len(data)
        self.truncated = self.truncated or len(data) > room

    def text(self, which: int) -> str:
        return self.parts[which].decode("utf-8", errors="replace")


@dataclass
class _Process:
    """A live session process: its channel, output pipes, workdir and cgroups."""

    pid: int
    uid: int
    ctrl: socket.socket
    pipes: dict[int, int]
    workdir: str
    cgroups: dict[str, str]

    def read_cgroup(self, controller: str, file: str) -> str | None:
        if controller not in self.cgroups:
            return None
        try:
            return Path(self.cgroups[controller], file).read_text()
        except OSError:
            return None

    def cpu_ns(self) -> int | None:
        return read_cpu_ns(self.cgroups["cpu"]) if "cpu" in self.cgroups else None

    def oom_kills(self) -> int:
        return read_oom_kills(self.cgroups["memory"]) if "memory" in self.cgroups else 0


def _read_available(fd: int, capture: _Capture, which: int, budget: int = DRAIN_LIMIT) -> bool:
    """Read what the pipe holds now; False at end of file."""
    while budget > 0:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not data:
            return False
        capture.add(which, data)
        budget -= len(data)
    return True


def _describe(wait_status: int | None) -> tuple[str, int | None]:
    if wait_status is None:
        return "vanished", None
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return f"killed by {signal.Signals(sig).name}", sig
    return f"exited with code {os.waitstatus_to_exitcode(wait_status)}", None


class Session:
    """One solution's code, step after step, in one namespace. Use from one thread at a time."""

    def __init__(self, sandbox: Sandbox, slot: int) -> None:
        self._sandbox = sandbox
        self._slot = slot
        self._uid = sandbox._uid_base + slot
        self._proc: _Process | None = None
        self._lost = False
        self._closed = False
        self._lock = threading.Lock()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workdir(self) -> str | None:
        """The current process's working directory (None before the first run)."""
        return self._proc.workdir if self._proc else None

    def run(self, code: str) -> ExecutionResult:
        """Run ``code`` in this session's namespace; variables persist to the next call."""
        with self._lock:
            if self._closed:
                raise SandboxError("run() on a closed sandbox session")
            restarted, self._lost = self._lost, False
            if self._proc is None:
                self._proc = self._sandbox._spawn(self._uid, self._slot)
            proc = self._proc
            with self._sandbox._running:
                start = time.monotonic()
                status, capture, note, alive = self._execute(proc, code, start)
            if not alive:
                status, note = self._end_process(proc, status, note, capture)
            else:
                self._sweep(proc)
            stderr = capture.text(2)
            if note:
                stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + f"[sandbox] {note}\n"
            return ExecutionResult(
                capture.text(1), stderr, status, time.monotonic() - start, capture.truncated, restarted
            )

    def _execute(self, proc: _Process, code: str, start: float) -> tuple[Status, _Capture, str, bool]:
        """Send ``code`` and collect output until the reply, the deadline, the CPU limit or a death."""
        config = self._sandbox.config
        capture = _Capture(config.max_output_bytes)
        deadline = start + config.timeout_s
        cpu0 = proc.cpu_ns()
        reply = wire.MessageBuffer()
        try:
            proc.ctrl.settimeout(config.timeout_s)
            proc.ctrl.sendall(wire.encode({"code": code}))
        except OSError:
            return "killed", capture, "the session process stopped reading its channel", False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.ctrl, selectors.EVENT_READ, 0)
            for which, fd in proc.pipes.items():
                sel.register(fd, selectors.EVENT_READ, which)
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return "timeout", capture, f"wall-clock limit {config.timeout_s:g} s", False
                wait = min(deadline - now, POLL_S) if cpu0 is not None else deadline - now
                for key, _ in sel.select(wait):
                    if key.data:
                        if not _read_available(key.fd, capture, key.data):
                            sel.unregister(key.fd)
                        continue
                    chunk = proc.ctrl.recv(1 << 16)
                    if not chunk:
                        return "killed", capture, "", False
                    reply.feed(chunk)
                    try:
                        message = reply.message()
                    except ValueError:
                        return "killed", capture, "malformed reply from the session process", False
                    if message is not None:
                        for which, fd in proc.pipes.items():
                            _read_available(fd, capture, which)
                        status = message.get("status") if isinstance(message, dict) else None
                        if status == "ok" or status == "error":
                            return status, capture, "", True
                        return "killed", capture, "bad status from the session process", False
                cpu = proc.cpu_ns()
                if cpu is not None and cpu0 is not None and cpu - cpu0 > config.cpu_s * 1e9:
                    return "timeout", capture, f"CPU-time limit {config.cpu_s:g} s", False

    def _end_process(
        self, proc: _Process, status: Status, note: str, capture: _Capture
    ) -> tuple[Status, str]:
        """Kill the session's processes; a process that died by itself is described in the note."""
        ooms = proc.oom_kills()
        self._proc, self._lost = None, True
        reply = self._sandbox._close_process(proc, 0.2 if status == "killed" else 0.0, capture)
        if status != "killed":
            return status, note + "; the session's namespace was reset"
        how, sig = _describe(reply.get("wait_status"))
        if sig == signal.SIGXCPU:
            return "timeout", f"CPU-time limit {self._sandbox.config.cpu_s:g} s"
        if proc.oom_kills() > ooms:
            how += f" (out of memory: {self._sandbox.config.memory_mb} MiB limit)"
        return "killed", " ".join(filter(None, [note, f"session process {how}"]))

    def _sweep(self, proc: _Process) -> None:
        """Kill whatever the snippet left running (daemons, children) but the session process."""
        current = proc.read_cgroup("pids", "pids.current")
        if current is None or int(current) > 1:
            self._sandbox._server_request({"op": "sweep", "pid": proc.pid})

    def close(self) -> None:
        """End the session: kill its processes, remove its working directory, free its slot."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._proc is not None:
                self._sandbox._close_process(self._proc, grace_s=0.0)
                self._proc = None
            self._sandbox._release(self)


class Sandbox:
    """Runs model-written Python under limits (see ``components.sandbox``); thread-safe."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._uid_base = (1 << 20) + secrets.randbelow(1 << 20) * 1024  # a block of unused uids
        owner = f"{os.getpid()}-{self._uid_base}"
        _remove_stale(tempfile.gettempdir())
        self._workroot = tempfile.mkdtemp(prefix=f"genprm-sandbox-{os.getpid()}-")
        os.chmod(self._workroot, 0o711)
        # A uid per open session (the block holds 1024); `workers` bounds only the executing snippets,
        # so callers may keep hundreds of sessions open while they generate between steps.
        self._slots = list(range(self.config.max_sessions))
        self._slot_lock = threading.Lock()
        self._free = threading.Semaphore(self.config.max_sessions)
        self._running = threading.Semaphore(self.config.workers)
        self._open: set[Session] = set()
        self._cgroups: set[str] = set()
        self._spawned = 0
        self._closed = False
        try:
            self._server = ForkServer.start(self.config, self._workroot, owner)
        except BaseException:
            shutil.rmtree(self._workroot, ignore_errors=True)
            raise
        self._cgroups.update(self._server.capabilities.get("cgroup_groups", []))
        self._finalizer = weakref.finalize(self, _shutdown, self._server, self._cgroups, self._workroot)
        self._check_isolation()

    def _check_isolation(self) -> None:
        gaps = not_enforced(self._server.capabilities)
        if self.config.isolation == "none":
            log.warning(
                "sandbox.isolation: none: model-written code runs UNCONFINED (%s)",
                "; ".join(missing(self._server.capabilities)) or "nothing required is missing",
            )
        elif missing(self._server.capabilities):  # ForkServer.start refuses these; never run without
            self.close()
            raise IsolationError("sandbox: " + "; ".join(missing(self._server.capabilities)))
        if not _logged.is_set():
            _logged.set()
            log.info("sandbox: %s", self.capabilities())
            for gap in gaps:
                log.warning("sandbox does not enforce %s", gap)

    def capabilities(self) -> dict[str, Any]:
        """What this machine lets the sandbox enforce (namespaces, read-only fs, uid, cgroups, preload)."""
        return {**self._server.capabilities, "not_enforced": not_enforced(self._server.capabilities)}

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def session(self) -> Session:
        """A new session; blocks while ``config.max_sessions`` sessions are open."""
        if self._closed:
            raise SandboxError("session() on a closed sandbox")
        self._free.acquire()
        with self._slot_lock:
            session = Session(self, self._slots.pop())
            self._open.add(session)
        return session

    def run(self, code: str) -> ExecutionResult:
        """Run ``code`` once in a fresh session."""
        with self.session() as session:
            return session.run(code)

    def _release(self, session: Session) -> None:
        with self._slot_lock:
            self._open.discard(session)
            self._slots.append(session._slot)
        self._free.release()

    def _server_request(self, message: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        return self._server.request(message, fds)

    def _spawn(self, uid: int, slot: int) -> _Process:
        ctrl, child = socket.socketpair()
        pipes = [os.pipe(), os.pipe()]
        with self._slot_lock:
            self._spawned += 1
            name = f"s{slot}-{self._spawned}"
        try:
            reply = self._server_request(
                {"op": "spawn", "uid": uid, "name": name}, [child.fileno()] + [w for _, w in pipes]
            )
        finally:
            child.close()
            for _, w in pipes:
                os.close(w)
        for r, _ in pipes:
            os.set_blocking(r, False)
        proc = _Process(
            reply["pid"], uid, ctrl, {1: pipes[0][0], 2: pipes[1][0]}, reply["workdir"], reply["cgroups"]
        )
        self._cgroups.update(reply["cgroups"].values())
        ctrl.settimeout(60)
        try:
            ready = wire.recv(ctrl)
        except (OSError, ValueError):
            ready = None
        if ready is None or not ready[0].get("ready"):
            capture = _Capture(4000)
            _read_available(proc.pipes[2], capture, 2)
            self._close_process(proc, grace_s=0.5)
            raise SandboxError(f"sandbox session did not start: {capture.text(2).strip() or 'no output'}")
        return proc

    def _close_process(
        self, proc: _Process, grace_s: float, capture: _Capture | None = None
    ) -> dict[str, Any]:
        """Kill a session process and all it started; what they wrote before dying goes to ``capture``."""
        proc.ctrl.close()
        try:
            return self._server_request({"op": "close", "pid": proc.pid, "grace_s": grace_s})
        finally:
            for which, fd in proc.pipes.items():
                _read_available(fd, capture or _Capture(0), which)
                os.close(fd)

    def close(self) -> None:
        """Close open sessions, stop the fork server, remove cgroups and the work root."""
        if self._closed:
            return
        self._closed = True
        for session in list(self._open):
            session.close()
        self._finalizer()


def _remove_stale(tmp: str) -> None:
    """Empty work roots of callers that died without closing (their server already removed the rest)."""
    for path in Path(tmp).glob("genprm-sandbox-*-*"):
        owner = path.name.split("-")[2]
        if owner.isdigit() and not Path("/proc", owner).exists():
            with contextlib.suppress(OSError):
                path.rmdir()


def _shutdown(server: ForkServer, cgroups: set[str], workroot: str) -> None:
    """Stop the fork server (its namespaces end with it), then remove the cgroups and the work root."""
    server.stop()
    for path in sorted(cgroups, key=len, reverse=True):  # session groups before the group holding them
        remove_cgroup(path)
    shutil.rmtree(workroot, ignore_errors=True)
