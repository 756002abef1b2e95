"""The session process: runs snippets one after another in one persistent namespace.

It runs inside the fork server's child after the limits and the uid drop are in place, so nothing here
is trusted by the caller: a snippet can rewrite this module's state, and the caller enforces every limit
from outside. Protocol on fd ``CTRL_FD``: the caller sends ``{"code": str}``; this replies
``{"status": "ok" | "error"}`` after the snippet's output is flushed to fds 1 and 2.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import linecache
import os
import resource
import socket
import sys
import traceback
from typing import Any, NoReturn

from components.sandbox import wire

CTRL_FD = 3
_SAVED_OUT, _SAVED_ERR = 100, 101


def _stream(fd: int) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", line_buffering=True)


def _reset_stdio() -> None:
    """Fresh fds 1 and 2 and sys.stdout/stderr, whatever the previous snippet closed or replaced."""
    os.dup2(_SAVED_OUT, 1)
    os.dup2(_SAVED_ERR, 2)
    sys.stdout, sys.stderr = _stream(1), _stream(2)


def _set_cpu_limit(cpu_s: float) -> None:
    """Cooperative per-snippet RLIMIT_CPU (SIGXCPU); the caller's cgroup accounting is the enforcing one."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(usage.ru_utime + usage.ru_stime + cpu_s) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def run_snippet(code: str, namespace: dict[str, Any], index: int) -> str:
    """Execute ``code`` in ``namespace``; 'ok' or 'error' (traceback on stderr)."""
    name = f"<step {index}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    try:
        exec(compile(code, name, "exec"), namespace)
        status = "ok"
    except SystemExit as exc:
        status = "ok" if exc.code in (None, 0) else "error"
        if status == "error":
            print(f"SystemExit: {exc.code}", file=sys.stderr)
    except BaseException as exc:
        status = "error"
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a snippet closed or replaced it; its output is in the pipe
            stream.flush()
    return status


def serve(cpu_s: float) -> NoReturn:
    """Answer snippets until the caller closes the channel."""
    os.dup2(1, _SAVED_OUT)
    os.dup2(2, _SAVED_ERR)
    ctrl = socket.socket(fileno=CTRL_FD)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    wire.send(ctrl, {"ready": True, "pid": os.getpid()})
    index = 0
    while True:
        message = wire.recv(ctrl)
        if message is None:
            os._exit(0)
        index += 1
        _reset_stdio()
        _set_cpu_limit(cpu_s)
        status = run_snippet(message[0]["code"], namespace, index)
        wire.send(ctrl, {"status": status})
