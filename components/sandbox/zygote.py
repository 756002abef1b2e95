"""The fork server: preloads sympy/numpy once, then forks one locked-down process per session.

Started by ``Sandbox`` (never by hand) inside ``unshare --net --mount --pid --ipc --uts`` (as root), or
the same under ``--user --map-root-user`` (not root: root of a fresh user namespace). It is PID 1 of its
namespace, so when it exits every process of every session dies with it. At start it imports
``preload``, makes its cgroups, then pivots into the minimal read-only view of ``rootfs``. Each session
gets its own mount namespace holding its private tmpfs working directory (other sessions' directories
are empty there), its own process group and session, its cgroups (memory, pids, cpu; v1 or v2), rlimits
(address space, processes, file size, no core), an empty environment, and then loses its privileges:
as root, a uid of its own with no groups; otherwise a user namespace of its own (so RLIMIT_NPROC counts
per session, and it may create no further user namespace) with every capability dropped, not
dumpable. Both end with no_new_privs before ``runtime.serve``. Requests arrive on fd
``config["ctrl_fd"]`` (see ``Server.handle``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import resource
import shutil
import signal
import socket
import sys
import time
import traceback
from typing import Any, NoReturn

from components.sandbox import linux, rootfs, runtime, wire
from components.sandbox.cgroups import Cgroups

SESSION_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WARMUP = {
    "sympy": "import sympy as s; x = s.Symbol('x'); s.solve(x**2 - 2, x); s.simplify(s.Rational(1, 3) + x)",
    "numpy": "import numpy as n; n.linalg.solve(n.eye(2), n.ones(2)); n.isclose(n.float64(1) / 3, 1 / 3)",
}


SESSION_UID = 1000  # a session's uid inside its own user namespace (not root)


def isolate_filesystem(config: dict[str, Any]) -> dict[str, Any]:
    """Pivot into the minimal view, where this process has its own mount namespace and may mount."""
    caps: dict[str, Any] = {"private_root": False}
    if not config["mount_namespace"] or os.geteuid() != 0:
        return caps
    try:
        caps.update(rootfs.pivot_into_view(config["workroot"], [rootfs.REPO_ROOT, *config["private"]]))
    except OSError as exc:
        caps["private_root_error"] = str(exc)
        return caps
    caps["private_root"] = True
    caps["readonly_filesystem"] = not caps["readonly_failed"]
    return caps


def preload(modules: list[str]) -> tuple[list[str], list[str]]:
    """Import (and warm up) ``modules``; returns (loaded, failed)."""
    loaded, failed = [], []
    for name in modules:
        try:
            importlib.import_module(name)
            if name in WARMUP:
                exec(WARMUP[name], {})
            loaded.append(name)
        except Exception:
            failed.append(name)
    return loaded, failed


class Server:
    """Serves spawn/sweep/close requests from the caller, one at a time."""

    def __init__(self, config: dict[str, Any], ctrl: socket.socket, cgroups: Cgroups) -> None:
        self.config = config
        self.ctrl = ctrl
        # "root": a uid per session; "userns": root of a user namespace, a user namespace per session
        self.mode = "userns" if config["user_namespace"] else "root" if os.geteuid() == 0 else "plain"
        self.private = bool(config.get("private_root"))
        self.cgroups = cgroups
        self.created: dict[int, dict[str, str]] = {}
        self.sessions: dict[int, tuple[int, str, int | None]] = {}  # pid -> (uid, workdir, mount ns)
        self.exited: dict[int, int] = {}
        self.pins: dict[int, int] = {}  # pid -> fd holding the session's mount namespace
        self.own_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY) if self.private else -1
        sleep = shutil.which("sleep", path=SESSION_ENV["PATH"])
        self.init_command = [sleep or "sleep", "infinity"]
        # sessions sharing one uid are kept apart by a PID namespace each
        pid_ns = self.private and self.mode == "userns" and sleep is not None
        self.own_pid = os.open("/proc/self/ns/pid", os.O_RDONLY) if pid_ns else -1
        self.inits: dict[int, int] = {}  # session pid -> its PID namespace's init (a sleeper)
        with open("/proc/self/statm") as statm:
            self.vm_bytes = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")

    def reap(self, *_: Any) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.sessions:
                self.exited[pid] = status

    def handle(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        op = request["op"]
        if op == "spawn":
            return self.spawn(request, fds)
        if op == "sweep":
            return {"killed": self.kill(request["pid"], keep=True)}
        if op == "close":
            return self.close(request)
        raise ValueError(f"unknown op {op!r}")

    def spawn(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        key = request["uid"]  # one per session slot: its cgroups, and its uid where the server is root
        uid = key if self.mode == "root" else 0
        if key not in self.created:
            memory = (self.config["memory_mb"] + self.config["disk_mb"] + 32) << 20  # + kernel headroom
            self.created[key] = self.cgroups.create(str(key), memory, self.config["max_processes"])
        workdir = os.path.join(self.config["workroot"], request["name"])
        os.mkdir(workdir, 0o700)
        if self.mode == "root" and not self.private:
            os.chown(workdir, uid, uid)
        mnt_ns = None
        if self.private:  # the session's own mount (and, sharing our uid, PID) namespace
            linux.unshare(linux.CLONE_NEWNS | (linux.CLONE_NEWPID if self.own_pid >= 0 else 0))
        try:
            if self.private:
                size = self.config["disk_mb"]
                options = f"size={size}m,mode=700,uid={uid},gid={uid}"
                linux.mount("tmpfs", workdir, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, options)
                linux.remount_readonly(self.config["workroot"])
                pin = os.open("/proc/self/ns/mnt", os.O_RDONLY)  # held: its inode is not reused meanwhile
                mnt_ns = os.fstat(pin).st_ino
            init = None
            if self.own_pid >= 0:  # PID 1 of the session's PID namespace: a sleeper, spawned without a copy
                init = os.posix_spawn(self.init_command[0], self.init_command, {})
            pid = os.fork()
            if pid == 0:
                session_child(self, key, workdir, fds)
        finally:
            if self.private:  # back to our own namespaces for the next spawn
                linux.setns(self.own_mnt, linux.CLONE_NEWNS)
            if self.own_pid >= 0:
                linux.setns(self.own_pid, linux.CLONE_NEWPID)
        self.sessions[pid] = (uid, workdir, mnt_ns)
        if mnt_ns is not None:
            self.pins[pid] = pin
        if init is not None:
            self.inits[pid] = init
        for fd in fds:
            os.close(fd)
        return {"pid": pid, "workdir": workdir, "cgroups": self.created[key]}

    def kill(self, pid: int, keep: bool) -> int:
        """SIGKILL the session's processes; ``keep``: all but the session process (and its init)."""
        uid, _, mnt_ns = self.sessions[pid]
        if self.mode == "root":
            who: dict[str, int | None] = {"uid": uid}
        else:  # one uid for all sessions: a session is its mount namespace (or its process session)
            who = {"mnt_ns": mnt_ns} if mnt_ns is not None else {"sid": pid}
        spare = {pid, self.inits.get(pid, pid)} if keep else set()
        return linux.kill_all(who, keep=spare)

    def wait_exit(self, pid: int, wait_s: float) -> int | None:
        deadline = time.monotonic() + wait_s
        while pid not in self.exited and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.002)
        return self.exited.pop(pid, None)

    def close(self, request: dict[str, Any]) -> dict[str, Any]:
        """End a session: its natural exit status if it died within ``grace_s``, else SIGKILL everything."""
        pid = request["pid"]
        status = self.wait_exit(pid, request.get("grace_s", 0.0))
        self.kill(pid, keep=False)
        if status is None:
            status = self.wait_exit(pid, 5.0)
        _, workdir, _ = self.sessions.pop(pid)
        self.inits.pop(pid, None)
        self.unpin(pid)
        _remove_tree(workdir)
        return {"wait_status": status}

    def unpin(self, pid: int) -> None:
        if pid in self.pins:
            os.close(self.pins.pop(pid))

    def shutdown(self) -> None:
        """The caller is gone (closed or died): kill every session, remove workdirs and cgroups."""
        for pid in list(self.sessions):
            self.kill(pid, keep=False)
            self.unpin(pid)
            _remove_tree(self.sessions.pop(pid)[1])
        for paths in self.created.values():
            self.cgroups.remove(paths)
        self.cgroups.remove_groups()


def _remove_tree(path: str) -> None:
    """Remove a workdir (in the server's view: a directory, or a tree where sessions share its view)."""
    with contextlib.suppress(OSError):
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                os.rmdir(os.path.join(root, name))
        os.rmdir(path)


def session_child(server: Server, key: int, workdir: str, fds: list[int]) -> NoReturn:
    """In the forked child: lock down, then serve snippets. Never returns."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        server.cgroups.join(server.created[key])
        devnull = os.open("/dev/null", os.O_RDONLY)
        for target, fd in zip((runtime.CTRL_FD, 1, 2, 0), (*fds, devnull), strict=True):
            os.dup2(fd, target)
        os.closerange(runtime.CTRL_FD + 1, 1 << 16)
        if server.own_pid >= 0:  # this PID namespace's own /proc: only its init (1) and itself (2)
            linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
        if server.mode == "userns":
            # Before RLIMIT_NPROC: a user namespace inherits its creator's limit as its ceiling.
            linux.enter_user_namespace(SESSION_UID)
            with open("/proc/sys/user/max_user_namespaces", "w") as limit:
                limit.write("0")
        set_limits(server)
        os.chdir(workdir)
        drop_privileges(server.mode, key)
        os.environ.clear()
        os.environ.update({**SESSION_ENV, **THREAD_ENV, "HOME": workdir, "TMPDIR": workdir})
        gc.unfreeze()
        runtime.serve(server.config["cpu_s"])
    except BaseException:
        traceback.print_exc()
    os._exit(70)


def drop_privileges(mode: str, uid: int) -> None:
    """As root: the session's own uid, no groups. In a user namespace: no capabilities, not dumpable."""
    if mode == "root":
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    elif mode == "userns":
        linux.drop_capabilities()
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)


def set_limits(server: Server) -> None:
    config = server.config
    memory = server.vm_bytes + (config["memory_mb"] << 20)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_NPROC, (config["max_processes"], config["max_processes"]))
    disk = config["disk_mb"] << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (disk, disk))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def main() -> NoReturn:
    config = json.loads(sys.argv[-1])
    ctrl = socket.socket(fileno=config["ctrl_fd"])
    os.set_inheritable(ctrl.fileno(), False)
    os.environ.clear()
    os.environ.update({**SESSION_ENV, **THREAD_ENV})
    namespaces = {
        kind: os.readlink(f"/proc/self/ns/{kind}") != config[f"{kind}_ns"] for kind in ("net", "mnt", "user")
    }
    config["mount_namespace"], config["user_namespace"] = namespaces["mnt"], namespaces["user"]
    with contextlib.suppress(OSError):
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # one pinned namespace per open session
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    caps: dict[str, Any] = {}
    caps["preloaded"], caps["preload_failed"] = preload(config["preload"])
    cgroups = Cgroups(f"genprm-sbx-{config['owner']}")
    caps.update(isolate_filesystem(config))
    config["private_root"] = caps["private_root"]
    server = Server(config, ctrl, cgroups)
    caps["network_namespace"], caps["mount_namespace"] = namespaces["net"], namespaces["mnt"]
    caps["user_namespace"], caps["mode"] = namespaces["user"], server.mode
    caps["cgroups"] = dict(cgroups.available)
    caps["cgroups_missing"] = {
        c: cgroups.why.get(c, "no hierarchy") for c in ("memory", "pids", "cpu") if c not in cgroups.available
    }
    caps["cgroup_groups"] = [str(g) for g in cgroups.groups]
    caps["separate_uid"] = server.mode == "root"
    caps["session_user_namespace"] = server.mode == "userns"
    caps["session_pid_namespace"] = server.own_pid >= 0
    caps["pid_namespace"] = os.getpid() == 1
    gc.freeze()  # keeps the preloaded heap's pages shared with the forked sessions
    signal.signal(signal.SIGCHLD, server.reap)
    wire.send(ctrl, {"ready": True, "capabilities": caps})
    serve(server)


def serve(server: Server) -> NoReturn:
    while True:
        message = wire.recv(server.ctrl, maxfds=3)
        if message is None:
            break
        request, fds = message
        for fd in fds:  # for the forked session only, never for a spawned init
            os.set_inheritable(fd, False)
        try:
            reply = server.handle(request, fds)
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        wire.send(server.ctrl, reply)
    server.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
