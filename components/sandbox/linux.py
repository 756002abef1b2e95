"""Linux primitives the fork server uses: mounts, prctl, v1 cgroups and process lookup via /proc.

All of these need root in the fork server's own namespaces; each returns or raises so the caller can
report what could not be enforced rather than fail.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time
from pathlib import Path

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
_OPTION_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
# Left writable: /proc is the namespace's own; cgroup files are root-owned and the server writes them.
_KEEP_WRITABLE = ("/proc", "/sys/fs/cgroup")
HIDDEN_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {target}")


def umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


def mounts() -> list[tuple[str, int]]:
    """(mount point, flags to keep) for every mount, parents before children."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].replace("\\040", " ")
        flags = sum(_OPTION_FLAGS.get(o, 0) for o in fields[5].split(","))
        found.append((point, flags))
    return sorted(found, key=lambda item: item[0].count("/"))


def remount_readonly() -> list[str]:
    """Make every mount read-only in this mount namespace; returns the mount points that refused."""
    failed = []
    for point, flags in mounts():
        if any(point == k or point.startswith(k + "/") for k in _KEEP_WRITABLE):
            continue
        try:
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError:
            failed.append(point)
    return failed


def hide_dirs(keep: str, readable: list[str] | None = None) -> list[str]:
    """Cover world-writable and socket directories with empty read-only tmpfs; ``keep`` (the work root)
    and the ``readable`` paths inside them (e.g. a virtualenv or checkout under /tmp holding the
    interpreter's packages) stay reachable, re-bound at their own paths. Returns the directories hidden."""
    # A hidden directory itself (or an ancestor of one, e.g. sys.path holding /tmp) cannot stay readable.
    readable = [
        p
        for p in readable or []
        if not any(h == os.path.realpath(p) or h.startswith(os.path.realpath(p) + "/") for h in HIDDEN_DIRS)
    ]
    wanted = sorted({os.path.realpath(p) for p in [keep, *readable] if os.path.isdir(p)})
    outer = [p for p in wanted if not any(p.startswith(q + "/") for q in wanted if q != p)]
    fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in outer}
    hidden = []
    try:
        for path in HIDDEN_DIRS:
            if not os.path.isdir(path) or os.path.islink(path):
                continue
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
            for inner, fd in fds.items():
                if inner.startswith(path + "/"):
                    os.makedirs(inner, mode=0o755)
                    mount(f"/proc/self/fd/{fd}", inner, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            hidden.append(path)
    finally:
        for fd in fds.values():
            os.close(fd)
    return hidden


class Cgroups:
    """Per-session v1 cgroups (memory, pids, cpuacct) below this process's own, where writable."""

    CONTROLLERS = ("memory", "pids", "cpuacct")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.base: dict[str, Path] = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            for name in names.split(","):
                root = Path("/sys/fs/cgroup") / name
                if name in self.CONTROLLERS and root.is_dir():
                    self.base[name] = root / path.lstrip("/")
        self.available = {name: self._probe(name) for name in self.CONTROLLERS}

    def _probe(self, name: str) -> bool:
        if name not in self.base:
            return False
        probe = self.base[name] / f"{self.prefix}-probe"
        try:
            probe.mkdir()
            probe.rmdir()
            return True
        except OSError:
            return False

    def create(self, key: str, limits: dict[str, dict[str, int]]) -> dict[str, str]:
        """Make the cgroups for ``key`` with ``limits`` {controller: {file: value}}; returns their paths."""
        paths = {}
        for name, ok in self.available.items():
            if not ok:
                continue
            path = self.base[name] / f"{self.prefix}-{key}"
            path.mkdir(exist_ok=True)
            for file, value in limits.get(name, {}).items():
                try:
                    (path / file).write_text(str(value))
                except OSError:
                    if name != "memory" or "memsw" not in file:  # swap accounting may be off
                        raise
            paths[name] = str(path)
        return paths


def join_cgroups(paths: dict[str, str]) -> None:
    for path in paths.values():
        Path(path, "cgroup.procs").write_text(str(os.getpid()))


def remove_cgroup(path: str, wait_s: float = 2.0) -> bool:
    """rmdir a cgroup, retrying while its last processes exit."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def _status_fields(pid: str) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def live_pids(uid: int | None = None, sid: int | None = None) -> set[int]:
    """Live (not zombie) processes of real ``uid`` or of session ``sid``, seen in this /proc."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if uid is not None:
                fields = _status_fields(name)
                if int(fields["Uid"].split()[0]) != uid or fields["State"].startswith("Z"):
                    continue
            else:
                stat = Path(f"/proc/{name}/stat").read_text()
                rest = stat[stat.rindex(")") + 2 :].split()
                if rest[0] == "Z" or int(rest[3]) != sid:
                    continue
        except (OSError, ValueError, KeyError, IndexError):
            continue
        found.add(int(name))
    return found


def kill_all(uid: int | None, sid: int | None, keep: int | None = None, rounds: int = 500) -> int:
    """SIGKILL every process of ``uid`` (or session ``sid``) but ``keep``, until none is left."""
    killed = 0
    for _ in range(rounds):
        pids = live_pids(uid, sid) - {keep, os.getpid()}
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.001)
    return killed


def _blocking_ancestor(path: str) -> str | None:
    """The outermost directory above ``path`` that other users cannot traverse, if any."""
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:depth])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def expose(paths: list[str]) -> list[str]:
    """Make ``paths`` (the interpreter, its libraries) reachable for unprivileged uids without opening
    their private ancestors: an ancestor such as /root becomes an empty read-only tmpfs with only these
    paths bound back in. Returns the paths so re-bound."""
    wanted = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})
    wanted = [p for p in wanted if not any(p.startswith(q + "/") for q in wanted if q != p)]
    groups: dict[str, list[str]] = {}
    for path in wanted:
        ancestor = _blocking_ancestor(path)
        if ancestor is not None:
            groups.setdefault(ancestor, []).append(path)
    bound = []
    for ancestor, inner in groups.items():
        fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in inner}
        try:
            mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
            for path, fd in fds.items():
                os.makedirs(path, mode=0o755, exist_ok=True)
                mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
                bound.append(path)
            mount(None, ancestor, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        finally:
            for fd in fds.values():
                os.close(fd)
    return bound
