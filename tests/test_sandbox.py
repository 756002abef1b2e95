"""Sandbox tests: adversarial snippets are contained with the exact status, and the sandbox keeps working.

Everything runs for real: the fork server in its namespaces, sessions under their own uids (as root) or
their own user namespaces (not root) and cgroups, a TCP server on the host's loopback as a target,
``genprm sandbox run`` as a subprocess. One sandbox is shared per module (its start costs about a
second); tests that need other limits start their own. Every test runs as root and, through
``tests/test_sandbox_unprivileged.py``, again as an unprivileged uid.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from components.platform.errors import ConfigError
from components.sandbox import ExecutionResult, Sandbox, SandboxConfig

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")
ROOT = os.geteuid() == 0
SECRET = f"sk-genprm-{uuid.uuid4().hex}"
LIMITS = SandboxConfig(
    timeout_s=1.5, cpu_s=1.5, memory_mb=256, max_processes=16, max_output_bytes=4096, workers=2
)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    os.environ["GENPRM_TEST_SECRET"] = SECRET  # present in the caller's environment when the sandbox starts
    try:
        with Sandbox(LIMITS) as box:
            yield box
    finally:
        del os.environ["GENPRM_TEST_SECRET"]


def session_processes(box: Sandbox) -> list[int]:
    """Host pids of live processes below the fork server (sessions and whatever they started)."""
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        if rest[0] != "Z":
            children.setdefault(int(rest[1]), []).append(int(name))
    servers = children.get(box._server.process.pid, [])  # unshare forks the server (PID 1 inside)
    found, todo = [], [c for s in servers for c in children.get(s, [])]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def assert_contained(box: Sandbox, result: ExecutionResult, status: str) -> None:
    """The exact status, no process left behind, and the sandbox still answers."""
    assert result.status == status, result
    deadline = time.monotonic() + 2
    while session_processes(box) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert session_processes(box) == []
    assert box.run("print(6 * 7)").stdout == "42\n"


# --- adversarial -------------------------------------------------------------------------------------


def test_network_connect_to_host_loopback_and_internet_fails(sandbox: Sandbox) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = f"""
import socket
for host in ("127.0.0.1", "1.1.1.1"):
    try:
        socket.create_connection((host, {port}), timeout=1)
        print("connected", host)
    except OSError as exc:
        print("refused", host, exc.errno)
socket.create_connection(("127.0.0.1", {port}), timeout=1)
"""
    result = sandbox.run(code)
    assert "connected" not in result.stdout and result.stdout.count("refused") == 2
    assert "OSError" in result.stderr or "Error" in result.stderr
    with pytest.raises(TimeoutError):
        server.accept()  # nothing ever reached the host's server
    server.close()
    assert_contained(sandbox, result, "error")


def test_dns_lookup_fails(sandbox: Sandbox) -> None:
    result = sandbox.run("import socket; socket.getaddrinfo('pypi.org', 443)")
    assert "gaierror" in result.stderr
    assert_contained(sandbox, result, "error")


@pytest.mark.parametrize("target", ["/tmp/{name}", "{repo}/{name}", "../{name}", "/dev/shm/{name}"])
def test_writing_outside_the_workdir_fails(sandbox: Sandbox, repo_root: Path, target: str) -> None:
    name = f"escaped-{uuid.uuid4().hex}"
    path = target.format(name=name, repo=repo_root)
    result = sandbox.run(f"open({path!r}, 'w').write('x')")
    assert "Error" in result.stderr
    assert not Path("/tmp", name).exists() and not (repo_root / name).exists()
    assert not Path("/dev/shm", name).exists()
    assert_contained(sandbox, result, "error")


def test_caller_environment_is_not_readable(sandbox: Sandbox) -> None:
    code = """
import os
print(dict(os.environ))
for path in ("/proc/self/environ", "/proc/1/environ", f"/proc/{os.getppid()}/environ"):
    try:
        print(path, open(path, "rb").read())
    except OSError as exc:
        print(path, type(exc).__name__)
"""
    result = sandbox.run(code)
    assert "GENPRM_TEST_SECRET" not in result.stdout and SECRET not in result.stdout + result.stderr
    assert "/proc/1/environ" in result.stdout
    assert_contained(sandbox, result, "ok")


def test_process_count_is_limited(sandbox: Sandbox) -> None:
    code = """
import os, time
children = []
try:
    for _ in range(100):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except OSError as exc:
    print("refused after", len(children), exc.errno)
"""
    result = sandbox.run(code)
    assert result.stdout.startswith("refused after"), result
    assert int(result.stdout.split()[2]) < LIMITS.max_processes
    assert_contained(sandbox, result, "ok")  # the sleeping children are swept after the snippet


def test_fork_bomb_times_out_and_leaves_nothing(sandbox: Sandbox) -> None:
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = sandbox.run(code)
    assert "wall-clock" in result.stderr or "CPU" in result.stderr
    assert_contained(sandbox, result, "timeout")


def test_memory_bomb_raises_memory_error(sandbox: Sandbox) -> None:
    for code in ("x = bytearray(8 << 30)", "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))"):
        result = sandbox.run(code)
        assert "MemoryError" in result.stderr
        assert_contained(sandbox, result, "error")


def test_memory_of_all_session_processes_is_bounded_by_the_cgroup(sandbox: Sandbox) -> None:
    if "memory" not in sandbox.capabilities()["cgroups"]:
        pytest.skip("no writable memory cgroup")
    code = """
import os
pids = []
for _ in range(3):  # each child stays under RLIMIT_AS; together they exceed the session's cgroup
    pid = os.fork()
    if pid == 0:
        block = b"x" * (200 << 20)
        import time; time.sleep(0.5)
        os._exit(0)
    pids.append(pid)
print(sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids))
"""
    result = sandbox.run(code)
    assert "-9" in result.stdout, result  # at least one child was OOM-killed
    assert_contained(sandbox, result, "ok")


def test_infinite_loop_hits_the_wall_clock(sandbox: Sandbox) -> None:
    result = sandbox.run("while True:\n    pass")
    assert LIMITS.timeout_s <= result.duration_s < LIMITS.timeout_s + 1.5
    assert_contained(sandbox, result, "timeout")


def test_cpu_limit_fires_before_the_wall_clock() -> None:
    with Sandbox(SandboxConfig(timeout_s=20, cpu_s=0.5, workers=1, preload=[])) as box:
        result = box.run("while True:\n    pass")
        assert "CPU-time limit" in result.stderr and result.duration_s < 5, result
        assert_contained(box, result, "timeout")


def test_huge_output_is_truncated(sandbox: Sandbox) -> None:
    result = sandbox.run("print('x' * 10_000_000)\nimport sys; print('tail', file=sys.stderr)")
    assert result.truncated and len(result.stdout) + len(result.stderr) <= LIMITS.max_output_bytes
    assert_contained(sandbox, result, "ok")
    endless = sandbox.run("while True:\n    print('y' * 1000)")
    assert endless.truncated and len(endless.stdout) <= LIMITS.max_output_bytes
    assert_contained(sandbox, endless, "timeout")


def test_killing_the_parent_is_refused(sandbox: Sandbox) -> None:
    separate_uid = sandbox.capabilities()["separate_uid"]
    with sandbox.session() as session:
        if separate_uid:
            result = session.run("import os, signal; x = 1; os.kill(os.getppid(), signal.SIGKILL)")
            assert "PermissionError" in result.stderr
        else:  # the server is outside the session's PID namespace; its init ignores signals from inside
            result = session.run("import os, signal; x = 1; print(os.getppid()); os.kill(1, signal.SIGKILL)")
            assert result.stdout == "0\n", result
        assert session.run("print(x)").stdout == "1\n"  # same process, namespace kept
    assert_contained(sandbox, result, "error" if separate_uid else "ok")


def test_kill_all_reachable_processes_spares_the_sandbox(sandbox: Sandbox) -> None:
    code = "import os, signal, subprocess\nchild = subprocess.Popen(['sleep', '30'])\n"
    code += "os.kill(-1, signal.SIGKILL)\nprint('still here', child.wait())"
    result = sandbox.run(code)
    assert result.stdout == "still here -9\n"  # its own child died; the server and the caller did not
    assert_contained(sandbox, result, "ok")


def test_killpg_of_own_group_kills_the_session(sandbox: Sandbox) -> None:
    with sandbox.session() as session:
        session.run("x = 5")
        result = session.run("import os, signal; os.killpg(os.getpgrp(), signal.SIGKILL)")
        assert "SIGKILL" in result.stderr
        after = session.run("print('x' in dir())")
        assert after.restarted and after.stdout == "False\n"
        assert not session.run("print(1)").restarted
    assert_contained(sandbox, result, "killed")


def test_os_exit_is_reported_as_killed(sandbox: Sandbox) -> None:
    result = sandbox.run("print('before'); import os; os._exit(3)")
    assert result.stdout == "before\n" and "exited with code 3" in result.stderr
    assert_contained(sandbox, result, "killed")


def test_closing_stdout_only_affects_that_snippet(sandbox: Sandbox) -> None:
    with sandbox.session() as session:
        result = session.run("import os, sys\nsys.stdout.close()\nos.close(1)\nprint('lost')")
        assert "ValueError" in result.stderr and result.status == "error"
        assert session.run("print('back')").stdout == "back\n"
    assert_contained(sandbox, result, "error")


def test_deep_recursion(sandbox: Sandbox) -> None:
    result = sandbox.run("def f(n):\n    return f(n + 1)\nf(0)")
    assert "RecursionError" in result.stderr
    assert_contained(sandbox, result, "error")
    # recursion through C (map) with the guard lifted overflows the C stack
    crash = sandbox.run(
        "import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return list(map(f, [n]))\nf(0)"
    )
    assert "SIGSEGV" in crash.stderr
    assert_contained(sandbox, crash, "killed")


def test_sleeping_past_the_timeout(sandbox: Sandbox) -> None:
    result = sandbox.run("import time; print('start', flush=True); time.sleep(60)")
    assert result.stdout == "start\n" and result.duration_s < LIMITS.timeout_s + 1.5
    assert_contained(sandbox, result, "timeout")


def test_daemon_does_not_outlive_the_run(sandbox: Sandbox) -> None:
    marker = f"{time.time_ns() % 10**6 + 1000}.25"
    code = f"""
import os, subprocess
if os.fork() == 0:
    os.setsid()
    subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
    os._exit(0)
import time; time.sleep(0.3)
"""
    result = sandbox.run(code)
    assert_contained(sandbox, result, "ok")
    alive = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    assert alive.stdout == ""


def test_ctypes_segfault(sandbox: Sandbox) -> None:
    result = sandbox.run("import ctypes; ctypes.string_at(0)")
    assert "SIGSEGV" in result.stderr
    assert_contained(sandbox, result, "killed")


def test_system_exit(sandbox: Sandbox) -> None:
    with sandbox.session() as session:
        assert session.run("x = 2\nprint('bye')\nexit(0)\nprint('not reached')").status == "ok"
        failed = session.run("import sys; sys.exit(3)")
        assert failed.status == "error" and "SystemExit: 3" in failed.stderr
        assert session.run("print(x)").stdout == "2\n"
    assert_contained(sandbox, failed, "error")


def test_sessions_cannot_signal_each_other_or_read_each_others_files(sandbox: Sandbox) -> None:
    with sandbox.session() as first, sandbox.session() as second:
        pid = first.run("import os; open('mine.txt', 'w').write('a'); print(os.getpid(), os.getcwd())")
        ns_pid, workdir = pid.stdout.split()
        snoop = second.run(f"print(open({workdir + '/mine.txt'!r}).read())")
        assert snoop.status == "error" and "Error" in snoop.stderr and snoop.stdout == ""
        peek = second.run(f"import os; print(os.listdir({workdir!r}))")
        assert "mine.txt" not in peek.stdout + peek.stderr  # its own mount namespace: an empty dir
        if sandbox.capabilities()["separate_uid"]:
            result = second.run(f"import os\nos.kill({ns_pid}, 9)")
            assert "PermissionError" in result.stderr
            environ = second.run(f"print(open('/proc/{ns_pid}/environ').read())")
            assert "PermissionError" in environ.stderr
        else:  # one uid for all: each session has its own PID namespace (init 1, itself 2), no one to kill
            spree = second.run(
                "import os\ntry:\n    os.kill(-1, 9)\nexcept ProcessLookupError:\n    pass\n"
                "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
            )
            assert spree.stdout == "[1, 2]\n", spree
        after = first.run("print(open('mine.txt').read())")
        assert after.stdout == "a\n" and not after.restarted
    assert_contained(sandbox, snoop, "error")


def test_privilege_escalation_and_disk_filling_fail(sandbox: Sandbox) -> None:
    result = sandbox.run("import os; os.setuid(0)")
    # as root: not permitted; in a session's user namespace uid 0 is not even mapped
    assert "PermissionError" in result.stderr or "[Errno 22] Invalid argument" in result.stderr, result
    assert_contained(sandbox, result, "error")
    size = LIMITS.disk_mb << 20
    fill = sandbox.run(f"with open('big', 'wb') as f:\n    f.write(b'x' * {size + 1})")
    assert "File too large" in fill.stderr  # RLIMIT_FSIZE
    assert_contained(sandbox, fill, "error")
    half = f"with open(name, 'wb') as f:\n        f.write(b'x' * {size * 2 // 3})"
    quota = sandbox.run(f"for name in ('a', 'b'):\n    {half}")
    assert "No space left on device" in quota.stderr  # the workdir's tmpfs size
    assert_contained(sandbox, quota, "error")


# --- functional ---------------------------------------------------------------------------------------


def test_namespace_persists_within_a_session_and_not_across(sandbox: Sandbox) -> None:
    with sandbox.session() as session:
        assert session.run("from fractions import Fraction\nx = Fraction(1, 3)").status == "ok"
        assert session.run("print(x * 3 == 1)").stdout == "True\n"
    with sandbox.session() as other:
        assert other.run("print('x' in dir(), 'Fraction' in dir())").stdout == "False False\n"


def test_sympy_and_numpy_are_warm(sandbox: Sandbox) -> None:
    code = "from sympy import *\nx = Rational(7, 3)\nprint(x * 3 == 7, simplify(x + Rational(2, 3)))\n"
    code += "import numpy as np\nprint(np.isclose(np.float64(7) / 3 * 3, 7))"
    result = sandbox.run(code)
    assert result.status == "ok" and result.stdout == "True 3\nTrue\n", result
    assert result.duration_s < 1.0  # the import was paid by the fork server, not by this snippet


def test_working_directory_is_fresh_and_removed(sandbox: Sandbox) -> None:
    with sandbox.session() as session:
        result = session.run("import os; open('f', 'w').write('1'); print(os.getcwd(), os.listdir('.'))")
        workdir = result.stdout.split()[0]
        assert result.stdout.split(maxsplit=1)[1].strip() == "['f']"
        assert Path(workdir).is_dir() and session.workdir == workdir
    assert not Path(workdir).exists()
    assert (
        sandbox.run(f"import os; print(os.path.exists({workdir!r}), os.listdir('.'))").stdout == "False []\n"
    )


def test_concurrency_is_bounded_by_workers(sandbox: Sandbox) -> None:
    spans: list[tuple[float, float]] = []

    def one() -> None:
        result = sandbox.run("import time\nstart = time.time()\ntime.sleep(0.4)\nprint(start, time.time())")
        start, end = map(float, result.stdout.split())
        spans.append((start, end))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(spans) == 5
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap == LIMITS.workers


def test_config_is_range_checked() -> None:
    with pytest.raises(ConfigError, match=r"sandbox\.timeout_s"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(ConfigError, match=r"sandbox\.preload"):
        SandboxConfig(preload=["os; import evil"])


def test_capabilities_match_the_caller(sandbox: Sandbox) -> None:
    caps = sandbox.capabilities()
    assert caps["network_namespace"] and caps["pid_namespace"] and caps["private_root"]
    assert caps["readonly_filesystem"] and "sympy" in caps["preloaded"]
    assert caps["separate_uid"] == ROOT and caps["session_user_namespace"] == (not ROOT)
    assert caps["session_pid_namespace"] == (not ROOT)
    assert caps["mode"] == ("root" if ROOT else "userns")
    assert not [gap for gap in caps["not_enforced"] if gap.startswith("REQUIRED")]


@pytest.mark.slow
def test_cli_runs_a_file_and_prints_json(tmp_path: Path, repo_root: Path) -> None:
    script = tmp_path / "check.py"
    script.write_text("from sympy import Rational\nprint(Rational(1, 2) + Rational(1, 3))\n1/0\n")
    cli = [sys.executable, "-m", "components.platform.cli", "sandbox", "run"]
    done = subprocess.run(
        [*cli, str(script), "--timeout", "3"], capture_output=True, text=True, cwd=repo_root
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "error" and report["stdout"] == "5/6\n"
    assert "ZeroDivisionError" in report["stderr"] and "network_namespace" in report["capabilities"]
    missing = subprocess.run([*cli, str(tmp_path / "nope.py")], capture_output=True, text=True, cwd=repo_root)
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.slow
def test_a_killed_caller_leaves_no_processes_workdirs_or_cgroups(repo_root: Path) -> None:
    marker = f"{time.time_ns() % 10**6 + 2000}.5"
    code = f"""
import os, signal, sys
from components.sandbox import Sandbox, SandboxConfig
box = Sandbox(SandboxConfig(workers=2, preload=[]))
first, second = box.session(), box.session()
first.run("import subprocess; subprocess.Popen(['sleep', '{marker}'], start_new_session=True)")
second.run("x = 1")
print(first.workdir, second.workdir, box._workroot, *sorted(box._cgroups), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root)
    assert done.returncode == -9, done.stderr
    paths = done.stdout.split()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(p).exists() for p in paths[:2] + paths[3:]):
        time.sleep(0.05)
    assert not [p for p in paths[:2] + paths[3:] if Path(p).exists()]  # workdirs and cgroups
    alive = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    assert alive.stdout == ""
    Sandbox(SandboxConfig(workers=1, preload=[])).close()  # a later sandbox removes the empty work root
    assert not Path(paths[2]).exists()


@pytest.mark.slow
def test_hundreds_of_open_sessions_keep_their_namespaces() -> None:
    # The scorer keeps one session per solution open across generation rounds: opening must not wait
    # for `workers`, which bounds only the snippets executing at once.
    with Sandbox(SandboxConfig(workers=2, max_sessions=256, preload=[])) as box:
        sessions = [box.session() for _ in range(200)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            first = list(pool.map(lambda p: p[1].run(f"value = {p[0]}"), enumerate(sessions)))
            second = list(pool.map(lambda s: s.run("print(value * 2)"), sessions))
        assert all(r.status == "ok" for r in first)
        assert [r.stdout for r in second] == [f"{2 * i}\n" for i in range(200)]
        for session in sessions:
            session.close()
        assert session_processes(box) == []
