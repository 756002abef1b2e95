"""Sandbox for model-written Python (the teacher's and the GenPRM scorer's verification code).

    with Sandbox(SandboxConfig(timeout_s=5)) as sandbox:
        print(sandbox.capabilities())               # what this machine lets us enforce
        with sandbox.session() as session:          # one solution: namespace persists across steps
            session.run("from sympy import *; x = Rational(1, 3)")
            result = session.run("print(x * 3 == 1)")  # ExecutionResult(stdout='True\\n', status='ok', ...)
    genprm sandbox run FILE [--timeout 5]          # the CLI: one file, result as JSON

Threat model. The code is untrusted: written by a model that may be wrong, prompt-injected or
adversarial. It must not reach the network, write outside its working directory, read the caller's
environment variables (API keys, tokens), signal or see the caller's processes, outlive its snippet, or
exhaust the machine (CPU, memory, processes, disk, output). It may read world-readable files (system
libraries, site-packages) and may crash or hang itself; the caller always gets a result. Out of scope:
kernel exploits and side channels (use a VM or gVisor for hostile multi-tenant code).

Mechanism (see ``zygote`` and ``host``): a warm fork server with ``preload`` imported runs as root in
fresh network, mount, PID, IPC and UTS namespaces (``unshare`` from util-linux): no interface but a
down loopback, the filesystem read-only, /tmp, /var/tmp, /dev/shm, /run hidden, and it is PID 1, so its
exit kills everything. Per session it forks a child that enters its own process session and group,
its own memory/pids/cpuacct cgroups, gets rlimits (address space, process count, file size, no core
dumps, 256 fds), a fresh tmpfs working directory of ``disk_mb`` (removed at close), an empty
environment, and drops to a uid of its own (so RLIMIT_NPROC binds and it cannot signal the server or
other sessions) with no_new_privs. The caller enforces the wall clock and the cgroup CPU time, caps the
output it keeps, and after each snippet kills every other process of the session's uid. A timeout or
a kill ends the session process; the next ``run`` starts a fresh namespace (``restarted=True``).
What a machine cannot provide is listed by ``Sandbox.capabilities()["not_enforced"]`` and logged.
"""

from components.sandbox.config import ExecutionResult, SandboxConfig, Status
from components.sandbox.host import Sandbox, Session
from components.sandbox.server import SandboxError

__all__ = ["ExecutionResult", "Sandbox", "SandboxConfig", "SandboxError", "Session", "Status"]
