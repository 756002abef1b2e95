"""Static checks that the team-scale workers can run the code sandbox (Docker cannot run here).

The sandbox needs user, network, mount and PID namespaces and a fresh /proc, and refuses to start
without them. The compose workers that run flows get exactly the confinement settings that allows
(seccomp, AppArmor, system paths unconfined) and no capability or privileged mode; the Kubernetes
flow-run pods get the matching securityContext in a pod user namespace. Both images ship unshare.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from components.sandbox.server import HOW_TO

INFRA = Path(__file__).resolve().parents[1] / "infra"
SANDBOX_OPTS = ["seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"]


def flow_workers(services: dict[str, Any]) -> dict[str, Any]:
    """Services that run Prefect flows (and so the stages that execute model-written code)."""
    return {n: s for n, s in services.items() if "prefect worker start" in " ".join(s.get("command") or [])}


def test_compose_workers_get_the_sandbox_settings_and_no_privileges() -> None:
    services = yaml.safe_load((INFRA / "docker-compose.yml").read_text())["services"]
    workers = flow_workers(services)
    assert set(workers) == {"cpu-worker", "gpu-worker"}
    for name, svc in workers.items():
        assert svc.get("security_opt") == SANDBOX_OPTS, name
    for name, svc in services.items():
        assert not svc.get("privileged"), name
        assert "SYS_ADMIN" not in (svc.get("cap_add") or []), name
        if name not in workers:
            assert not svc.get("security_opt"), f"{name} does not run the sandbox"


def test_k8s_flow_run_pods_get_the_sandbox_security_context() -> None:
    template = json.loads((INFRA / "k8s" / "gpu-job-template.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod["hostUsers"] is False  # procMount Unmasked is only allowed in a pod user namespace
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["seccompProfile"] == {"type": "Unconfined"}
    assert context["appArmorProfile"] == {"type": "Unconfined"}
    assert context["procMount"] == "Unmasked"
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}  # the user-namespace path needs none


def test_images_ship_unshare_and_the_refusal_points_here() -> None:
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu"):
        text = (INFRA / dockerfile).read_text()
        assert re.search(r"apt-get install[^\n]*(\\\n[^\n]*)*util-linux", text), dockerfile
    assert "infra/docker-compose.yml" in HOW_TO and "infra/k8s/gpu-job-template.json" in HOW_TO
