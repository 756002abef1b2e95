"""Static checks of the team-scale deployment in infra/ (Docker cannot run here).

The compose stack (services, images/builds, ports, volumes, healthchecks, dependency conditions, every
``${VAR}`` defined in .env.example), the two Dockerfiles (parsed into instructions: CPU torch before the
project, vLLM in its own venv, COPY sources present and let through the .dockerignore), the Kubernetes
manifests (parse, resources, GPU limits, RBAC, the Prefect base job template validated and rendered
with Prefect's own code), the accelerate configs (accelerate's own loader and launch options), and the
shell scripts (``bash -n``; gpu_smoke.sh and dvc-remote.sh also run for real where that is possible).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
SERVICES = {
    "postgres", "minio", "minio-init", "mlflow", "prefect-server", "cpu-worker", "gpu-worker",
    "vllm-policy", "vllm-completer", "vllm-teacher",
}  # fmt: skip
ONE_SHOT = {"minio-init"}
PUBLISHED = {"minio", "mlflow", "prefect-server"}  # the only services users reach from their machines
GPU_SERVICES = {"gpu-worker", "vllm-policy", "vllm-completer", "vllm-teacher"}
_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?+-][^}]*)?\}|(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")


def compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            pairs[key.strip()] = value
    return pairs


# ------------------------------------------------------------------------------------------ compose


def test_compose_has_every_service_with_an_image() -> None:
    services = compose()["services"]
    assert set(services) == SERVICES
    for name, svc in services.items():
        assert svc.get("image"), f"{name}: no image"
        if "build" in svc:
            dockerfile = REPO / "infra" / svc["build"]["context"] / svc["build"]["dockerfile"]
            assert dockerfile.resolve().is_file(), f"{name}: {dockerfile} missing"


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart() -> None:
    for name, svc in compose()["services"].items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", name
        else:
            test = svc.get("healthcheck", {}).get("test")
            assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
            assert svc.get("restart") == "unless-stopped", name


def test_depends_on_conditions_refer_to_checkable_services() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for dep, spec in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name}: {dep} has no healthcheck"
            else:
                assert spec["condition"] == "service_completed_successfully" and dep in ONE_SHOT


def test_ports_only_where_users_need_them() -> None:
    services = compose()["services"]
    assert {n for n, s in services.items() if s.get("ports")} == PUBLISHED


def test_named_volumes_are_declared_and_used() -> None:
    spec = compose()
    used = set()
    for svc in spec["services"].values():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/", "$")):
                used.add(source)
    assert used == set(spec["volumes"]) == {"postgres-data", "minio-data", "hf-cache"}


def test_gpu_services_reserve_nvidia_gpus() -> None:
    services = compose()["services"]
    for name in GPU_SERVICES:
        [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
    assert not any("deploy" in services[n] for n in SERVICES - GPU_SERVICES)


@pytest.mark.parametrize("role", ["policy", "completer", "teacher"])
def test_vllm_servers_take_model_and_tensor_parallel_size_from_env(role: str) -> None:
    command = compose()["services"][f"vllm-{role}"]["command"]
    upper = role.upper()
    assert command[:3] == ["/opt/vllm/bin/vllm", "serve", f"${{{upper}_MODEL}}"]
    assert f"--tensor-parallel-size=${{{upper}_TP}}" in command


def test_every_compose_variable_is_in_env_example_and_none_is_stale() -> None:
    text = (INFRA / "docker-compose.yml").read_text()
    used = {a or b for a, b in _VAR.findall(text)}
    defined = set(env_example())
    assert used - defined == set(), "used in docker-compose.yml, missing from .env.example"
    assert defined - used == set(), "in .env.example, used nowhere"


def test_compose_with_env_example_substituted_still_parses() -> None:
    env = env_example()
    text = _VAR.sub(lambda m: env[m.group(1) or m.group(2)], (INFRA / "docker-compose.yml").read_text())
    services = yaml.safe_load(text)["services"]
    assert services["vllm-teacher"]["command"][2] == "Qwen/QwQ-32B"
    assert services["mlflow"]["ports"] == ["5000:5000"]


def test_paper_params_point_at_the_compose_vllm_servers() -> None:
    env = env_example()
    params = yaml.safe_load((INFRA / "paper" / "params.yaml").read_text())
    for section, key, role in (("rollout", "policy", "POLICY"), ("label", "completer", "COMPLETER")):
        backend = params[section][key]
        assert backend["backend"] == "openai"
        assert backend["model"] == env[f"{role}_MODEL"], "served model name must equal the params model"
        assert backend["base_url"] == f"http://vllm-{role.lower()}:8000/v1"
    teacher = params["synthesize"]["teacher"]["model"]
    assert teacher["model"] == env["TEACHER_MODEL"]
    assert teacher["base_url"] == "http://vllm-teacher:8000/v1"


# ------------------------------------------------------------------------------------------ Dockerfiles


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, backslash continuations joined."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        full = pending + line
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def dockerfile(name: str) -> list[tuple[str, str]]:
    return parse_dockerfile((INFRA / name).read_text())


def first_index(instructions: list[tuple[str, str]], pattern: str) -> int:
    return next(i for i, (kw, args) in enumerate(instructions) if kw == "RUN" and re.search(pattern, args))


def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = parse_dockerfile("# c\nFROM a:1\nRUN x \\\n  # inner\n  && y\n\nenv A=1\n")
    assert parsed == [("FROM", "a:1"), ("RUN", "x && y"), ("ENV", "A=1")]


def test_cpu_image_installs_the_cpu_torch_of_the_lock_before_the_project() -> None:
    steps = dockerfile("Dockerfile.cpu")
    assert steps[0] == ("FROM", "python:3.11-slim")
    [torch_pin] = re.findall(r"^torch==[\w.]+$", (REPO / "requirements" / "run.lock").read_text(), re.M)
    torch_at = first_index(steps, re.escape(torch_pin))
    assert "download.pytorch.org/whl/cpu" in steps[torch_at][1]
    lock_at = first_index(steps, r"pip install --no-deps -r requirements/run\.lock")
    project_at = first_index(steps, r"pip install -c requirements/run\.lock '\.\[serve\]'")
    assert torch_at < lock_at < project_at < first_index(steps, "requirements-team")
    assert "-c /tmp/resolved.txt" in steps[first_index(steps, "requirements-team")][1]


def test_gpu_image_keeps_vllm_in_its_own_venv() -> None:
    steps = dockerfile("Dockerfile.gpu")
    assert steps[0][0] == "FROM" and steps[0][1].startswith("nvidia/cuda:")
    runs = [args for kw, args in steps if kw == "RUN"]
    vllm_runs = [r for r in runs if "requirements-vllm" in r]
    assert len(vllm_runs) == 1 and "/opt/vllm/bin/pip install -r" in vllm_runs[0]
    assert "/opt/vllm/bin/pip install --no-deps ." in vllm_runs[0]
    genprm_installs = [r for r in runs if "/opt/genprm/bin/pip install" in r]
    assert genprm_installs and not any("vllm" in r for r in genprm_installs)
    torch_at = first_index(steps, r"/opt/genprm/bin/pip install torch==")
    assert torch_at < first_index(steps, r"/opt/genprm/bin/pip install '\.\[serve\]'")
    assert any(kw == "ENV" and "PATH=/opt/genprm/bin:$PATH" in args for kw, args in steps)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").replace("**/", "*").replace("/**", "/*")
        if fnmatch.fnmatch(path, glob) or glob == "**" or glob == "*":
            ignored = not negate
    return ignored


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_copy_sources_exist_and_pass_the_dockerignore(name: str) -> None:
    ignore = (INFRA / f"{name}.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    for keyword, args in dockerfile(name):
        if keyword != "COPY":
            continue
        for source in args.split()[:-1]:
            assert (REPO / source).exists(), f"{name}: COPY source {source} missing"
            probe = source if (REPO / source).is_file() else f"{source}/__init__.py"
            assert not _ignored(probe, patterns), f"{name}: {source} excluded by the dockerignore"
    assert _ignored(".venv/bin/python", patterns) and _ignored("data/x.parquet", patterns)


# ------------------------------------------------------------------------------------------ Kubernetes


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def test_k8s_manifests_parse_and_kustomization_lists_them_all() -> None:
    kinds = {d["kind"] for d in k8s_docs()}
    assert {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "Deployment",
    } <= kinds
    kustomization = yaml.safe_load((INFRA / "k8s" / "kustomization.yaml").read_text())
    files = {p.name for p in (INFRA / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert all(d["metadata"].get("namespace", "genprm") == "genprm" for d in k8s_docs())


def test_every_deployment_container_has_requests_and_limits_and_gpu_where_vllm_runs() -> None:
    for doc in (d for d in k8s_docs() if d["kind"] == "Deployment"):
        for c in containers(doc):
            resources = c["resources"]
            assert resources["requests"] and resources["limits"], doc["metadata"]["name"]
            if doc["metadata"]["name"].startswith("vllm-"):
                [tp] = [a.split("=")[1] for a in c["args"] if a.startswith("--tensor-parallel-size=")]
                assert resources["limits"]["nvidia.com/gpu"] == int(tp)
                assert doc["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
            else:
                assert "nvidia.com/gpu" not in resources["limits"]  # the worker needs no GPU


def test_worker_service_account_may_create_jobs() -> None:
    docs = k8s_docs()
    [worker] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "prefect-worker"]
    account = worker["spec"]["template"]["spec"]["serviceAccountName"]
    [binding] = [d for d in docs if d["kind"] == "RoleBinding" and d["subjects"][0]["name"] == account]
    [role] = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == binding["roleRef"]["name"]]
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in role["rules"])
    assert any("pods/log" in r["resources"] and "watch" in r["verbs"] for r in role["rules"])


def job_template() -> dict[str, Any]:
    return json.loads((INFRA / "k8s" / "gpu-job-template.json").read_text())


def test_gpu_job_template_is_valid_for_prefect_and_renders_a_gpu_job() -> None:
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import apply_values

    template = job_template()
    validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
    props = template["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    values |= {"name": "rollout-shard-3", "command": "prefect flow-run execute", "env": {}, "labels": {}}
    job = apply_values(template["job_configuration"], values)["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    assert job["kind"] == "Job" and pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["name"] == "prefect-job"  # prefect-kubernetes requires this name
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["serviceAccountName"] == "genprm-flow-run"
    refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    defined = {d["metadata"]["name"] for d in k8s_docs() if d["kind"] in ("ConfigMap", "Secret")}
    assert refs <= defined


def test_kubectl_kustomize_builds_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the YAML checks above still ran")
    out = subprocess.run(
        [kubectl, "kustomize", str(INFRA / "k8s")], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    [generated] = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("gpu-job")
    ]
    assert json.loads(generated["data"]["gpu-job-template.json"]) == job_template()
    [worker] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "prefect-worker"]
    volume = worker["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
    assert volume == generated["metadata"]["name"]  # the hashed name is wired into the worker


# ------------------------------------------------------------------------------------------ accelerate


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3", "single_gpu"])
def test_accelerate_configs_load_and_name_valid_keys(name: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    config = ClusterConfig.from_yaml_file(str(INFRA / "accelerate" / f"{name}.yaml"))  # unknown keys raise
    assert config.mixed_precision == "bf16"
    launch_options = {action.dest for action in launch_command_parser()._actions}
    ds = config.deepspeed_config or {}
    assert set(ds) <= launch_options, f"unknown deepspeed_config keys: {set(ds) - launch_options}"
    assert "gradient_accumulation_steps" not in ds  # "auto": the trainer's arguments decide
    if name.startswith("deepspeed"):
        assert config.distributed_type.value == "DEEPSPEED" and ds["zero_stage"] == int(name[-1])
    else:
        assert config.distributed_type.value == "NO" and config.num_processes == 1


# ------------------------------------------------------------------------------------------ scripts


@pytest.mark.parametrize("script", ["gpu_smoke.sh", "dvc-remote.sh", "postgres/init-databases.sh"])
def test_shell_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(INFRA / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gpu_smoke_fails_clearly_without_a_gpu(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: run infra/gpu_smoke.sh itself")
    env = {**os.environ, "SMOKE_DIR": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(INFRA / "gpu_smoke.sh")], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert "no GPU: nvidia-smi not found" in result.stderr


@pytest.mark.slow
def test_dvc_remote_script_configures_the_team_remote(tmp_path: Path) -> None:
    (tmp_path / "infra").mkdir()
    shutil.copy(INFRA / "dvc-remote.sh", tmp_path / "infra")
    (tmp_path / "infra" / ".env").write_text("DVC_BUCKET=dvc\nMINIO_ROOT_USER=u\nMINIO_ROOT_PASSWORD=p\n")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, timeout=120)
    result = subprocess.run(
        ["bash", "infra/dvc-remote.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    try:
        import dvc_s3  # noqa: F401
    except ImportError:
        assert result.returncode == 2 and "dvc-s3 plugin is missing" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    local = (tmp_path / ".dvc" / "config.local").read_text()
    assert "s3://dvc/genprm" in local and "endpointurl = http://localhost:9000" in local
    assert "secret_access_key = p" in local
    assert "team" not in (tmp_path / ".dvc" / "config").read_text()  # the project config is untouched
