"""Adversarial tests of what a sandbox session can see and where it fails closed.

A session sees the interpreter's stdlib and site-packages and nothing else of the machine: not the
project checkout (its infra/.env and .dvc/config.local), the caller's home (~/.cache, credentials),
/root, other processes' environments, or host paths through /proc/self/mounts; it cannot write into
site-packages. Without ``unshare`` the sandbox refuses to start (also through the CLI, exit 2) unless
``sandbox.isolation: none`` says to run unconfined. Runs as root and, through
``tests/test_sandbox_unprivileged.py``, as an unprivileged uid.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.platform.errors import ConfigError, GenPRMError
from components.sandbox import Sandbox, SandboxConfig
from components.sandbox.rootfs import ETC
from components.sandbox.server import IsolationError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")
SECRET = f"pw-{uuid.uuid4().hex}"
FILES = {
    "project": ["infra/.env", ".dvc/config.local", "params.yaml"],
    "home": [".cache/huggingface/token", ".netrc", ".aws/credentials", ".ssh/id_ed25519"],
}


@pytest.fixture(scope="module")
def secrets_around(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A project checkout and a home directory holding secrets; the sandbox starts from inside them."""
    base = tmp_path_factory.mktemp("secrets")
    places = {"project": base / "project", "home": base / "home"}
    for kind, names in FILES.items():
        for name in names:
            path = places[kind] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"PASSWORD={SECRET}\n")
    old_cwd, old_home = os.getcwd(), os.environ.get("HOME")
    os.chdir(places["project"])
    os.environ["HOME"] = str(places["home"])
    try:
        yield places
    finally:
        os.chdir(old_cwd)
        os.environ["HOME"] = old_home or "/"


@pytest.fixture(scope="module")
def box(secrets_around: dict[str, Path]) -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(timeout_s=5, workers=1)) as sandbox:
        yield sandbox


def probe(box: Sandbox, paths: list[str]) -> dict[str, str]:
    """What reading (or listing) each path gives inside a session: content, listing or error name."""
    code = f"""
import json, os
seen = {{}}
for path in {paths!r}:
    try:
        seen[path] = repr(os.listdir(path)) if os.path.isdir(path) else open(path).read()
    except OSError as exc:
        seen[path] = type(exc).__name__
print(json.dumps(seen))
"""
    result = box.run(code)
    assert result.status == "ok", result
    return dict(json.loads(result.stdout))


def test_project_checkout_and_home_secrets_are_not_visible(
    box: Sandbox, secrets_around: dict[str, Path], repo_root: Path
) -> None:
    paths = [str(secrets_around[kind] / name) for kind, names in FILES.items() for name in names]
    paths += [str(secrets_around["project"]), str(secrets_around["home"])]
    paths += [
        str(repo_root / name) for name in ("infra/.env", "infra/.env.example", ".dvc/config", "params.yaml")
    ]
    paths += [str(repo_root / "components"), str(repo_root / "infra"), str(Path.home() / ".cache")]
    seen = probe(box, paths)
    assert all(SECRET not in value for value in seen.values()), seen
    assert {seen[p] for p in paths} == {"FileNotFoundError"}, seen


def test_root_home_and_host_directories_show_only_the_interpreter(box: Sandbox, repo_root: Path) -> None:
    seen = probe(box, ["/root", "/home", "/var", "/run", "/sys", "/tmp", "/etc", str(repo_root)])
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
    for directory in ("/root", str(repo_root)):
        if seen[directory] != "FileNotFoundError":  # only the steps towards the interpreter's paths
            steps = {p[len(directory) + 1 :].split("/")[0] for p in prefixes if p.startswith(directory + "/")}
            assert set(ast.literal_eval(seen[directory])) == steps, (directory, seen[directory])
    assert seen["/home"] == "FileNotFoundError" and seen["/var"] in ("FileNotFoundError", "['tmp']")
    assert seen["/run"] == seen["/sys"] == "[]"
    assert set(ast.literal_eval(seen["/etc"])) <= set(ETC)
    assert "shadow" not in seen["/etc"] and "passwd" not in seen["/etc"]


def test_init_environment_is_not_readable(box: Sandbox) -> None:
    os.environ["GENPRM_VIEW_SECRET"] = SECRET  # the caller's env; the server started before, so check both
    try:
        seen = probe(box, ["/proc/1/environ", "/proc/1/cmdline", "/proc/self/environ"])
    finally:
        del os.environ["GENPRM_VIEW_SECRET"]
    assert seen["/proc/1/environ"] == "PermissionError", seen
    assert SECRET not in json.dumps(seen)


def test_mounts_reveal_no_host_paths(box: Sandbox, secrets_around: dict[str, Path], repo_root: Path) -> None:
    result = box.run("print(open('/proc/self/mounts').read()); print(open('/proc/self/mountinfo').read())")
    assert result.status == "ok", result
    view = set(box.capabilities()["view"]) | {"/", "/proc"}
    for line in result.stdout.split("\n\n")[0].splitlines():
        point = line.split()[1]
        allowed = point == "/" or any(point == v or point.startswith(v.rstrip("/") + "/") for v in view)
        assert allowed, line  # a bound path's own submounts come along (recursive binds)
    for private in (
        str(secrets_around["project"]),
        str(secrets_around["home"]),
        "/home",
        "/.cache",
        "/infra",
    ):
        assert private not in result.stdout, private
    below_repo = {p for p in view if p.startswith(str(repo_root) + "/")}
    assert below_repo <= {os.path.realpath(sys.prefix)}  # at most the venv inside the checkout


def test_writing_into_site_packages_and_the_stdlib_fails(box: Sandbox) -> None:
    name = f"evil-{uuid.uuid4().hex}.pth"
    targets = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"], "/usr/lib", "/"]
    code = (
        "import os\nfor d in {!r}:\n    try:\n        open(os.path.join(d, {!r}), 'w').write('import os')\n"
    )
    code += "        print('wrote', d)\n    except OSError as exc:\n        print(type(exc).__name__)"
    result = box.run(code.format(targets, name))
    assert "wrote" not in result.stdout and result.stdout.count("Error") == len(targets), result
    assert not any(Path(t, name).exists() for t in targets)
    chmod = box.run(f"import os; os.chmod({targets[0]!r}, 0o777)")
    assert chmod.status == "error" and ("PermissionError" in chmod.stderr or "OSError" in chmod.stderr)


def test_without_unshare_the_sandbox_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no util-linux here
    with pytest.raises(IsolationError) as refused:
        Sandbox(SandboxConfig(workers=1, preload=[]))
    message = str(refused.value)
    assert isinstance(refused.value, GenPRMError)  # the CLI turns it into one line and exit 2
    for words in ("unshare (util-linux) is not on PATH", "network isolation", "sandbox.isolation: none"):
        assert words in message, message


def test_isolation_none_is_explicit_and_loud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with (
        caplog.at_level(logging.WARNING),
        Sandbox(SandboxConfig(workers=1, preload=[], isolation="none")) as box,
    ):
        assert box.run("print(1 + 1)").stdout == "2\n"
        caps = box.capabilities()
    assert caps["isolation_tool"] == "none" and not caps["network_namespace"]
    assert any("UNCONFINED" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match=r"sandbox\.isolation"):
        SandboxConfig(isolation="off")


@pytest.mark.slow
def test_cli_refuses_without_unshare_with_exit_2(tmp_path: Path, repo_root: Path) -> None:
    script = tmp_path / "hello.py"
    script.write_text("print('hello')\n")
    env = {**os.environ, "PATH": str(tmp_path)}
    cli = [sys.executable, "-m", "components.platform.cli", "sandbox", "run", str(script)]
    done = subprocess.run(cli, capture_output=True, text=True, cwd=repo_root, env=env)
    assert done.returncode == 2, done.stderr
    assert "sandbox refused to start" in done.stderr and "Traceback" not in done.stderr
    assert "hello" not in done.stdout
