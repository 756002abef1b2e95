"""cgroup v1 and v2 for sandbox sessions, on the real hierarchies of this machine.

v2 is exercised on the unified hierarchy that is mounted here (/sys/fs/cgroup, or /sys/fs/cgroup/unified
beside v1), and a second ``mount -t cgroup2`` of it shows it is the one kernel hierarchy: a session group
is made, a forked process joins it, burns CPU, and ``cpu.stat`` accounts for it; ``memory.max`` and
``pids.max`` are set and enforced where the hierarchy offers those controllers (on a hybrid host they
stay bound to v1 and the reason is reported). Needs root (cgroup directories are root's).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.sandbox import Sandbox, SandboxConfig
from components.sandbox.cgroups import Cgroups, read_cpu_ns, unified_root

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or unified_root() is None, reason="needs root and cgroup v2"
)


@pytest.fixture
def v2() -> Iterator[Cgroups]:
    groups = Cgroups(f"genprm-test-{uuid.uuid4().hex[:8]}", versions=("v2",))
    try:
        yield groups
    finally:
        groups.remove_groups()


def run_in(groups: Cgroups, paths: dict[str, str], code: str) -> int:
    """Fork a child that joins ``paths``, runs ``code`` (Python) and exits; its exit status."""
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            groups.join(paths)
            exec(code, {})
        except BaseException:
            status = 3
        os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_v2_session_group_accounts_cpu(v2: Cgroups) -> None:
    assert v2.available.get("cpu") == "v2", v2.why
    paths = v2.create("s1", memory_bytes=256 << 20, pids=8)
    try:
        assert (
            run_in(
                v2,
                paths,
                "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass",
            )
            == 0
        )
        used = read_cpu_ns(paths["cpu"])
        assert used is not None and used >= 0.25e9, used
    finally:
        v2.remove(paths)
    assert not Path(paths["cpu"]).exists()


def test_v2_memory_and_pids_are_enforced_where_offered(v2: Cgroups) -> None:
    offered = set((unified_root() or Path()).joinpath("cgroup.controllers").read_text().split())
    for controller in ("memory", "pids"):
        if controller not in offered:
            assert controller not in v2.available and controller in v2.why  # reported, not silent
    paths = v2.create("s2", memory_bytes=64 << 20, pids=4)
    try:
        if "pids" in v2.available:
            assert Path(paths["pids"], "pids.max").read_text().strip() == "4"
            fork = "import os, time\nfor _ in range(10):\n    if os.fork() == 0:\n"
            fork += "        time.sleep(1)\n        os._exit(0)"
            assert run_in(v2, paths, fork) == 3  # the fifth process is refused
        if "memory" in v2.available:
            assert Path(paths["memory"], "memory.max").read_text().strip() == str(64 << 20)
            assert run_in(v2, paths, "x = bytearray(256 << 20)") == -9  # OOM-killed by the group
    finally:
        time.sleep(1.1)
        v2.remove(paths)


def test_a_second_cgroup2_mount_is_the_same_hierarchy(v2: Cgroups, tmp_path: Path) -> None:
    target = tmp_path / "cg2"
    target.mkdir()
    done = subprocess.run(["mount", "-t", "cgroup2", "none", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount cgroup2 here: {done.stderr.strip()}")
    try:
        group = v2.groups[0]
        relative = group.relative_to(unified_root() or Path("/"))
        assert (target / relative / "cgroup.procs").is_file()
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", str(target)], check=True)


def test_the_sandbox_reports_the_version_of_each_controller() -> None:
    with Sandbox(SandboxConfig(workers=1, preload=[])) as box:
        caps = box.capabilities()
    assert set(caps["cgroups"]) | set(caps["cgroups_missing"]) == {"memory", "pids", "cpu"}
    assert set(caps["cgroups"].values()) <= {"v1", "v2"}
