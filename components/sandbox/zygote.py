"""The fork server: preloads sympy/numpy once, then forks one locked-down process per session.

Started by ``Sandbox`` (never by hand) as root inside ``unshare --net --mount --pid --ipc --uts`` where
available: it is PID 1 of its namespace, so when it exits every process of every session dies with it.
At start it remounts the filesystem read-only and hides /tmp, /var/tmp, /dev/shm and /run under empty
read-only tmpfs. Each session child gets its own process group and session, its cgroups (memory, pids,
cpuacct), rlimits (address space, processes, file size, no core), a fresh tmpfs working directory, and
then drops to a uid of its own with no supplementary groups and no_new_privs before running
``runtime.serve``. Requests arrive on fd ``config["ctrl_fd"]`` (see ``Server.handle``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import resource
import signal
import socket
import sys
import time
import traceback
from typing import Any, NoReturn

from components.sandbox import linux, runtime, wire

SESSION_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WARMUP = {
    "sympy": "import sympy as s; x = s.Symbol('x'); s.solve(x**2 - 2, x); s.simplify(s.Rational(1, 3) + x)",
    "numpy": "import numpy as n; n.linalg.solve(n.eye(2), n.ones(2)); n.isclose(n.float64(1) / 3, 1 / 3)",
}


def isolate_filesystem(config: dict[str, Any]) -> dict[str, Any]:
    """Read-only mounts and hidden shared directories, where this process has its own mount namespace."""
    caps: dict[str, Any] = {"readonly_filesystem": False, "hidden_dirs": []}
    if not config["mount_namespace"] or os.geteuid() != 0:
        return caps
    failed = linux.remount_readonly()
    caps["readonly_filesystem"] = "/" not in failed
    caps["readonly_failed"] = failed
    caps["hidden_dirs"] = linux.hide_dirs(config["workroot"], interpreter_paths())
    caps["exposed_dirs"] = linux.expose(interpreter_paths())
    workroot = config["workroot"]
    if not os.path.ismount(workroot):
        linux.mount(workroot, workroot, None, linux.MS_BIND)
    # a bind mount copies the read-only flag of its source; only this one mount becomes writable again
    linux.mount(None, workroot, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_NOSUID | linux.MS_NODEV)
    return caps


def interpreter_paths() -> list[str]:
    """What a session needs to read to import modules and to start ``sys.executable`` again."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    binary = os.path.dirname(os.path.realpath(sys.executable))
    return [*prefixes, binary, *(p for p in sys.path if p and os.path.isdir(p))]


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

    def __init__(self, config: dict[str, Any], ctrl: socket.socket) -> None:
        self.config = config
        self.ctrl = ctrl
        self.root = os.geteuid() == 0
        self.cgroups = linux.Cgroups(f"genprm-sbx-{config['owner']}")
        self.created: dict[int, dict[str, str]] = {}
        self.sessions: dict[int, tuple[int, str]] = {}  # pid -> (uid, workdir)
        self.exited: dict[int, int] = {}
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
            return {"killed": self.kill(request["uid"], request["pid"], keep=True)}
        if op == "close":
            return self.close(request)
        raise ValueError(f"unknown op {op!r}")

    def limits(self) -> dict[str, dict[str, int]]:
        total = (self.config["memory_mb"] + self.config["disk_mb"] + 32) << 20  # + kernel headroom
        return {
            "memory": {"memory.limit_in_bytes": total, "memory.memsw.limit_in_bytes": total},
            "pids": {"pids.max": self.config["max_processes"]},
        }

    def make_workdir(self, name: str, uid: int) -> str:
        path = os.path.join(self.config["workroot"], name)
        os.mkdir(path, 0o700)
        if self.config["mount_namespace"] and self.root:
            size = self.config["disk_mb"]
            opts = f"size={size}m,mode=700,uid={uid},gid={uid}"
            linux.mount("tmpfs", path, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, opts)
        elif self.root:
            os.chown(path, uid, uid)
        return path

    def spawn(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        uid = request["uid"]
        if uid not in self.created:
            self.created[uid] = self.cgroups.create(str(uid), self.limits())
        workdir = self.make_workdir(request["name"], uid)
        pid = os.fork()
        if pid == 0:
            session_child(self, uid, workdir, fds)
        self.sessions[pid] = (uid, workdir)
        for fd in fds:
            os.close(fd)
        return {"pid": pid, "workdir": workdir, "cgroups": self.created[uid]}

    def kill(self, uid: int, pid: int, keep: bool) -> int:
        if self.root:
            return linux.kill_all(uid, None, keep=pid if keep else None)
        return linux.kill_all(None, pid, keep=pid if keep else None)

    def wait_exit(self, pid: int, wait_s: float) -> int | None:
        deadline = time.monotonic() + wait_s
        while pid not in self.exited and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.002)
        return self.exited.pop(pid, None)

    def close(self, request: dict[str, Any]) -> dict[str, Any]:
        """End a session: its natural exit status if it died within ``grace_s``, else SIGKILL everything."""
        pid, uid = request["pid"], request["uid"]
        status = self.wait_exit(pid, request.get("grace_s", 0.0))
        self.kill(uid, pid, keep=False)
        if status is None:
            status = self.wait_exit(pid, 5.0)
        self.sessions.pop(pid, None)
        self.remove_workdir(request["workdir"])
        return {"wait_status": status}

    def remove_workdir(self, workdir: str) -> None:
        if self.config["mount_namespace"] and self.root:
            with contextlib.suppress(OSError):
                linux.umount(workdir)
        _remove_tree(workdir)

    def shutdown(self) -> None:
        """The caller is gone (closed or died): kill every session, remove workdirs and cgroups."""
        for pid, (uid, workdir) in list(self.sessions.items()):
            self.kill(uid, pid, keep=False)
            self.remove_workdir(workdir)
        for paths in self.created.values():
            for path in paths.values():
                linux.remove_cgroup(path)


def _remove_tree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    if os.path.isdir(path):
        os.rmdir(path)


def session_child(server: Server, uid: int, workdir: str, fds: list[int]) -> NoReturn:
    """In the forked child: lock down, then serve snippets. Never returns."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        linux.join_cgroups(server.created[uid])
        devnull = os.open("/dev/null", os.O_RDONLY)
        for target, fd in zip((runtime.CTRL_FD, 1, 2, 0), (*fds, devnull), strict=True):
            os.dup2(fd, target)
        os.closerange(runtime.CTRL_FD + 1, 1 << 16)
        set_limits(server, uid)
        os.chdir(workdir)
        if server.root:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        os.environ.clear()
        os.environ.update({**SESSION_ENV, **THREAD_ENV, "HOME": workdir, "TMPDIR": workdir})
        gc.unfreeze()
        runtime.serve(server.config["cpu_s"])
    except BaseException:
        traceback.print_exc()
    os._exit(70)


def set_limits(server: Server, uid: int) -> None:
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
    os.environ.clear()
    os.environ.update({**SESSION_ENV, **THREAD_ENV})
    namespaces = {
        kind: os.readlink(f"/proc/self/ns/{kind}") != config[f"{kind}_ns"] for kind in ("net", "mnt")
    }
    config["mount_namespace"] = namespaces["mnt"]
    caps = isolate_filesystem(config)
    caps["network_namespace"], caps["mount_namespace"] = namespaces["net"], namespaces["mnt"]
    with contextlib.suppress(OSError):
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    caps["preloaded"], caps["preload_failed"] = preload(config["preload"])
    server = Server(config, ctrl)
    caps["cgroups"] = sorted(name for name, ok in server.cgroups.available.items() if ok)
    caps["separate_uid"] = server.root
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
        try:
            reply = server.handle(request, fds)
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        wire.send(server.ctrl, reply)
    server.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
