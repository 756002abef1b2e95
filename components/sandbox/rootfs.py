"""The sessions' minimal filesystem view: a read-only tmpfs root holding only what Python needs.

``pivot_into_view`` runs once in the fork server, in its own mount namespace (root, or root of a user
namespace), after it imported ``preload``. The new root holds, each bound read-only at its own path:
the system directories (/usr and the /bin, /lib, /sbin links or dirs), a few /etc files the loader
and libc read, the interpreter's prefixes and its ``sys.path`` entries (stdlib, site-packages; never
the project checkout, the home directory or their ancestors), /dev/null, zero, full, random and
urandom, the namespace's /proc, and the work root (the only writable path, for the server). Nothing
else exists: not the checkout (infra/.env, .dvc/config.local), not ~/.cache, /root, /home, /var,
/run, /sys or the host's /tmp. The old root is detached, so no path leads back to it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from components.sandbox import linux

SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC = (
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf",
    "hosts", "protocols", "services", "mime.types",
)  # fmt: skip
DEVICES = ("null", "zero", "full", "random", "urandom")
EMPTY = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/sys")
REPO_ROOT = str(Path(__file__).resolve().parents[2])


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def interpreter_paths(private: list[str]) -> list[str]:
    """What a session reads to import modules and to start ``sys.executable`` again: the prefixes and
    the ``sys.path`` directories, minus anything inside or above a ``private`` path (the checkout, the
    home directory) unless it belongs to a prefix (a venv inside the checkout is its site-packages)."""
    real = [os.path.realpath(p) for p in private]
    prefixes = {
        os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    }
    prefixes.add(os.path.dirname(os.path.realpath(sys.executable)))
    found = [p for p in sorted(prefixes) if p != "/" and not any(_inside(q, p) for q in real if q != p)]
    for entry in sys.path:
        path = os.path.realpath(entry) if entry else ""
        if not path or not os.path.isdir(path) or any(_inside(path, p) for p in found):
            continue
        if any(_inside(path, q) or _inside(q, path) for q in real):
            continue
        found.append(path)
    return found


def _outermost(paths: list[str]) -> list[str]:
    unique = sorted({p for p in paths if os.path.lexists(p)})
    return [p for p in unique if not any(_inside(p, q) for q in unique if q != p)]


def _place(root: str, path: str, source: str) -> str:
    """Create the mount point for ``source`` at ``path`` inside ``root``; returns it."""
    target = root + path
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if os.path.isdir(source):
        os.makedirs(target, mode=0o755, exist_ok=True)
    elif not os.path.exists(target):
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    return target


def _populate(root: str, sources: dict[str, int], links: dict[str, str]) -> None:
    for path, target in links.items():
        os.makedirs(os.path.dirname(root + path), mode=0o755, exist_ok=True)
        os.symlink(target, root + path)
    for path, fd in sorted(sources.items(), key=lambda item: item[0].count("/")):
        mount_point = _place(root, path, f"/proc/self/fd/{fd}")
        linux.mount(f"/proc/self/fd/{fd}", mount_point, None, linux.MS_BIND | linux.MS_REC)
    for path in EMPTY:
        os.makedirs(root + path, mode=0o755, exist_ok=True)
    for name in ("fd", "stdin", "stdout", "stderr"):
        target = (
            "/proc/self/fd" if name == "fd" else f"/proc/self/fd/{('stdin', 'stdout', 'stderr').index(name)}"
        )
        os.symlink(target, f"{root}/dev/{name}")


def pivot_into_view(workroot: str, private: list[str]) -> dict[str, object]:
    """Replace this mount namespace's root by the minimal view; returns what it holds."""
    readable = _outermost(interpreter_paths(private))
    wanted = [*SYSTEM, *(f"/etc/{name}" for name in ETC), *readable]
    links = {p: os.readlink(p) for p in wanted if os.path.islink(p)}
    binds = _outermost([p for p in wanted if p not in links and os.path.exists(p)])
    binds += [f"/dev/{name}" for name in DEVICES if os.path.exists(f"/dev/{name}")]
    binds += ["/proc", os.path.realpath(workroot)]
    fds = {path: os.open(path, os.O_PATH) for path in binds}
    # The new root is built over the work root's parent (held open above), never inside a bound path.
    root = os.path.dirname(os.path.realpath(workroot))
    try:
        linux.mount("tmpfs", root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "size=4m,mode=755")
        _populate(root, fds, links)
    finally:
        for fd in fds.values():
            os.close(fd)
    os.chdir(root)
    linux.pivot_root(".", ".")  # the old root now sits on top of the new one: detach it
    linux.umount(".")
    os.chdir("/")
    writable = ("/proc", os.path.realpath(workroot), *(f"/dev/{name}" for name in DEVICES))
    failed = []
    for point in linux.mount_points():
        if not any(_inside(point, w) for w in writable):
            try:
                linux.remount_readonly(point)
            except OSError:
                failed.append(point)
    return {"view": sorted(p for p in binds if p != "/proc"), "readonly_failed": failed}
