"""Linux primitives the fork server uses: mounts, namespaces, capabilities, prctl and /proc lookups.

All of these need privileges in the fork server's own namespaces (root, or root of a user namespace);
each raises ``OSError`` so the caller can report what could not be enforced.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import time
from collections.abc import Callable
from pathlib import Path

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
MNT_DETACH = 2
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER = 0x00020000, 0x20000000, 0x10000000
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 4, 24, 28
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 36, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT, NO_SETUID_FIXUP, KEEP_CAPS and NO_CAP_AMBIENT_RAISE, each with its lock bit
SECURE_ALL = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
# statvfs flag -> mount flag that a bind remount must repeat (a user namespace cannot drop locked ones)
_KEPT_FLAGS = {
    os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME,
}  # fmt: skip

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


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    number = _PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(0, f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(ctypes.c_long(number), new_root.encode(), put_old.encode()), "pivot_root")


def kept_flags(path: str) -> int:
    """The per-mount flags of the mount holding ``path`` that a remount must keep."""
    flags = os.statvfs(path).f_flag
    kept = sum(ms for st, ms in _KEPT_FLAGS.items() if flags & st)
    return kept if kept & (MS_NOATIME | MS_RELATIME) else kept | MS_STRICTATIME


def remount_readonly(point: str) -> None:
    mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept_flags(point))


def mount_points() -> list[str]:
    """Every mount point in this mount namespace, parents before children."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].replace("\\040", " "))
    return sorted(set(points), key=lambda p: (p.count("/"), p))


def drop_capabilities() -> None:
    """Lose every capability for good: no root semantics on exec, empty bounding, ambient and
    permitted sets (used where sessions cannot get a uid of their own, inside a user namespace)."""
    prctl(PR_SET_SECUREBITS, SECURE_ALL)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl ambient")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(header, data), "capset")


def capability_sets() -> dict[str, int]:
    """CapEff/CapPrm/CapBnd of this process as integers (0 once dropped)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("CapEff", "CapPrm", "CapBnd"):
            found[key] = int(value.strip(), 16)
    return found


def enter_user_namespace(inner: int) -> None:
    """A new user namespace in which this process is ``inner`` (its uid and gid outside, mapped)."""
    outer_uid, outer_gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER)
    Path("/proc/self/uid_map").write_text(f"{inner} {outer_uid} 1")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/gid_map").write_text(f"{inner} {outer_gid} 1")


def _status_fields(pid: str) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def mount_ns(pid: int | str) -> int | None:
    """Inode of ``pid``'s mount namespace (None when the process is gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _matcher(uid: int | None, sid: int | None, mnt_ns: int | None) -> Callable[[str], bool]:
    def matches(pid: str) -> bool:
        if uid is not None:
            fields = _status_fields(pid)
            return int(fields["Uid"].split()[0]) == uid and not fields["State"].startswith("Z")
        stat = Path(f"/proc/{pid}/stat").read_text()
        rest = stat[stat.rindex(")") + 2 :].split()
        if rest[0] == "Z":
            return False
        return mount_ns(pid) == mnt_ns if mnt_ns is not None else int(rest[3]) == sid

    return matches


def live_pids(uid: int | None = None, sid: int | None = None, mnt_ns: int | None = None) -> set[int]:
    """Live (not zombie) processes of real ``uid``, else of mount namespace ``mnt_ns``, else of
    session ``sid``, in this /proc."""
    matches = _matcher(uid, sid, mnt_ns)
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if matches(name):
                found.add(int(name))
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return found


def kill_all(
    who: dict[str, int | None], keep: set[int] | frozenset[int] = frozenset(), rounds: int = 500
) -> int:
    """SIGKILL every process ``who`` names (``live_pids`` keywords) but ``keep``, until none is left."""
    killed = 0
    for _ in range(rounds):
        pids = live_pids(**who) - keep - {os.getpid()}
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
