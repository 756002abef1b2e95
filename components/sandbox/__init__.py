"""Sandbox for model-written Python (the teacher's and the GenPRM scorer's verification code).

    with Sandbox(SandboxConfig(timeout_s=5)) as sandbox:
        print(sandbox.capabilities())               # what this machine lets us enforce
        with sandbox.session() as session:          # one solution: namespace persists across steps
            session.run("from sympy import *; x = Rational(1, 3)")
            result = session.run("print(x * 3 == 1)")  # ExecutionResult(stdout='True\\n', status='ok', ...)
    genprm sandbox run FILE [--timeout 5]          # the CLI: one file, result as JSON

Threat model. The code is untrusted: written by a model that may be wrong, prompt-injected or
adversarial. It must not reach the network, read anything but the interpreter (not the project
checkout, its infra/.env or .dvc/config.local, the home directory's caches and credentials, /root),
write outside its working directory, read the caller's environment variables (API keys, tokens),
signal or see the caller's or other sessions' processes, outlive its snippet, or exhaust the machine
(CPU, memory, processes, disk, output). It may crash or hang itself; the caller always gets a result.
Out of scope: kernel exploits and side channels (use a VM or gVisor for hostile multi-tenant code).

Fail closed: without network isolation, a private filesystem view, a PID namespace and process and
memory limits ``Sandbox()`` raises ``IsolationError`` naming what is missing and how to provide it;
``SandboxConfig(isolation="none")`` is the only, explicit and logged, way to run code unconfined.

Mechanism (see ``zygote``, ``rootfs`` and ``host``): a warm fork server with ``preload`` imported runs
in fresh network, mount, PID, IPC and UTS namespaces (``unshare`` from util-linux; not root: inside a
user namespace of its own too) and pivots into a minimal read-only root holding only /usr, a few /etc
files, the interpreter's prefixes and ``sys.path``, a few /dev nodes, /proc and the work root. It is
PID 1, so its exit kills everything. Per session it forks a child in a mount namespace of its own with
a tmpfs working directory of ``disk_mb``, its own process session and group, its cgroups (v1 or v2:
memory, pids, cpu), rlimits (address space, process count, file size, no core dumps, 256 fds) and an
empty environment, which then loses its privileges: as root a uid of its own (so RLIMIT_NPROC binds and
it cannot signal the server or other sessions); not root, its own user and PID namespaces with every
capability dropped; no_new_privs in both. The caller enforces the wall clock and the cgroup CPU time,
caps the output it keeps, and after each snippet kills every other process of the session. A timeout
or a kill ends the session process; the next ``run`` starts a fresh namespace (``restarted=True``).
What a machine cannot provide beyond the required set is listed by
``Sandbox.capabilities()["not_enforced"]`` and logged.

Imports only ``platform`` (config, errors) and the standard library: its fork server runs none of
the project's other code.
"""

from components.sandbox.config import ExecutionResult, SandboxConfig, Status
from components.sandbox.host import Sandbox, Session
from components.sandbox.server import IsolationError, SandboxError

__all__ = [
    "ExecutionResult", "IsolationError", "Sandbox", "SandboxConfig", "SandboxError", "Session", "Status",
]  # fmt: skip
