"""Per-session cgroups for the fork server: cgroup v1 (memory, pids, cpuacct hierarchies) or v2.

Detected at start, controller by controller: a v1 hierarchy where one is mounted and writable, else the
unified (v2) hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified. Under v2 the session groups live in
one group ``<prefix>`` below this process's cgroup (or below its parent: v2 enables controllers only
in groups without processes of their own, and the caller's group has the caller) with ``memory.max``,
``memory.swap.max`` and ``pids.max``; CPU time comes from ``cpu.stat`` (present in every v2 group). The
server keeps a directory fd per base, so groups can be made after it pivoted into its minimal root;
``paths`` are host paths the caller reads (``read_cpu_ns``, ``read_oom_kills``) and removes.

    groups = Cgroups("genprm-sbx-1")          # groups.available: {"memory": "v1", "cpu": "v2", ...}
    paths = groups.create("s1", memory_bytes=..., pids=32)   # {"memory": host path, ...}
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
_V1_NAMES = {"memory": "memory", "pids": "pids", "cpu": "cpuacct"}
ROOT = Path("/sys/fs/cgroup")


def _own_paths() -> tuple[dict[str, str], str | None]:
    """This process's cgroup per v1 controller name, and its v2 path (None without a v2 entry)."""
    v1: dict[str, str] = {}
    v2 = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, names, path = line.split(":", 2)
        if number == "0" and names == "":
            v2 = path
        for name in names.split(","):
            v1[name] = path
    return v1, v2


def unified_root() -> Path | None:
    """Where the v2 hierarchy is mounted (pure v2 or the hybrid layout), if anywhere."""
    for root in (ROOT, ROOT / "unified"):
        if (root / "cgroup.controllers").is_file():
            return root
    return None


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


class Cgroups:
    """The session groups this fork server can make: ``available`` maps a controller to "v1"/"v2"."""

    def __init__(self, prefix: str, versions: tuple[str, ...] = ("v1", "v2")) -> None:
        self.prefix = prefix
        self.bases: dict[str, tuple[Path, str]] = {}  # controller -> (parent dir, name prefix)
        self.available: dict[str, str] = {}
        self.why: dict[str, str] = {}
        self.groups: list[Path] = []  # v2 group holding the session groups (removed last)
        v1, v2 = _own_paths()
        for controller in CONTROLLERS:
            base = ROOT / _V1_NAMES[controller]
            name = _V1_NAMES[controller]
            if "v1" in versions and name in v1 and (base / "cgroup.procs").is_file():
                parent = base / v1[name].lstrip("/")
                if self._probe(parent):
                    self.bases[controller] = (parent, f"{prefix}-")
                    self.available[controller] = "v1"
                else:
                    self.why[controller] = f"v1 {parent} is not writable"
        missing = [c for c in CONTROLLERS if c not in self.available]
        if missing and v2 is not None and "v2" in versions:
            self._setup_v2(v2, missing)
        self.fds = {c: os.open(parent, os.O_PATH | os.O_DIRECTORY) for c, (parent, _) in self.bases.items()}

    def _probe(self, parent: Path) -> bool:
        probe = parent / f"{self.prefix}-probe"
        try:
            probe.mkdir()
            probe.rmdir()
            return True
        except OSError:
            return False

    def _setup_v2(self, own: str, wanted: list[str]) -> None:
        root = unified_root()
        if root is None:
            return
        here = root / own.lstrip("/")
        domain = [c for c in wanted if c != "cpu"]
        best: tuple[Path, list[str]] | None = None
        for parent in [here] if here == root else [here, here.parent]:
            enabled = self._enable(parent, domain)
            if best is None or len(enabled) > len(best[1]):
                best = (parent, enabled)
        assert best is not None
        parent, enabled = best
        group = parent / self.prefix
        try:
            group.mkdir()
        except OSError as exc:
            self.why.update({c: f"v2 {parent}: {exc.strerror}" for c in wanted})
            return
        self.groups.append(group)
        if enabled:
            _write(group / "cgroup.subtree_control", " ".join(f"+{c}" for c in enabled))
        on = set((group / "cgroup.subtree_control").read_text().split())
        for controller in wanted:
            if controller == "cpu" or controller in on:  # cpu.stat exists in every v2 group
                self.bases[controller] = (group, "")
                self.available[controller] = "v2"
                self.why.pop(controller, None)

    def _enable(self, parent: Path, domain: list[str]) -> list[str]:
        """The ``domain`` controllers that children of ``parent`` get (enabling them where needed)."""
        try:
            offered = set((parent / "cgroup.controllers").read_text().split())
            enabled = set((parent / "cgroup.subtree_control").read_text().split())
        except OSError:
            return []
        for controller in domain:
            if controller not in offered:
                self.why.setdefault(controller, f"v2 {parent} does not offer it")
            elif controller not in enabled:
                if _write(parent / "cgroup.subtree_control", f"+{controller}"):
                    enabled.add(controller)
                else:
                    self.why[controller] = f"v2 {parent} holds processes or is not writable"
        return [c for c in domain if c in enabled]

    def create(self, key: str, memory_bytes: int, pids: int) -> dict[str, str]:
        """Make the groups for ``key`` with these limits; returns {controller: host path}."""
        limits = {
            "v1": {
                "memory": {
                    "memory.limit_in_bytes": memory_bytes,
                    "memory.memsw.limit_in_bytes": memory_bytes,
                },
                "pids": {"pids.max": pids},
            },
            "v2": {"memory": {"memory.max": memory_bytes, "memory.swap.max": 0}, "pids": {"pids.max": pids}},
        }
        paths = {}
        for controller, version in self.available.items():
            parent, prefix = self.bases[controller]
            name, fd = f"{prefix}{key}", self.fds[controller]
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=fd)
            for file, value in limits[version].get(controller, {}).items():
                try:
                    _write_at(fd, f"{name}/{file}", str(value))
                except OSError:
                    if "swap" not in file:  # swap accounting may be off
                        raise
            paths[controller] = str(parent / name)
        return paths

    def join(self, paths: dict[str, str]) -> None:
        """Move this process into its session's groups (each group once)."""
        for controller in self.available:
            if controller in paths:
                name = os.path.basename(paths[controller])
                with contextlib.suppress(FileNotFoundError):
                    _write_at(self.fds[controller], f"{name}/cgroup.procs", str(os.getpid()))

    def remove(self, paths: dict[str, str]) -> None:
        for controller, path in paths.items():
            with contextlib.suppress(OSError):
                os.rmdir(os.path.basename(path), dir_fd=self.fds[controller])

    def remove_groups(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        for group in self.groups:
            remove_cgroup(str(group))


def _write_at(fd: int, name: str, value: str) -> None:
    handle = os.open(name, os.O_WRONLY, dir_fd=fd)
    try:
        os.write(handle, value.encode())
    finally:
        os.close(handle)


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


def read_cpu_ns(path: str) -> int | None:
    """CPU time of a session group in ns (v1 cpuacct.usage or v2 cpu.stat usage_usec)."""
    try:
        return int(Path(path, "cpuacct.usage").read_text())
    except (OSError, ValueError):
        pass
    try:
        for line in Path(path, "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) * 1000
    except (OSError, ValueError):
        pass
    return None


def read_oom_kills(path: str) -> int:
    """OOM kills in a session's memory group (v1 memory.oom_control or v2 memory.events)."""
    for file in ("memory.oom_control", "memory.events"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(path, file).read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    return 0
