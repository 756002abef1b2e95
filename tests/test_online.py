"""When the CLI switches the Hugging Face hub off (components/platform/online.py, platform/cli.py).

Offline by default; online only for a stage whose params configure something online: a hub id as a
model, an hf source with a hub dataset, an openai server off loopback. A user's environment wins.
"""

from __future__ import annotations

import os
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.platform import cli
from components.platform.online import is_loopback, online_reasons, section_reasons
from components.platform.params import SECTION_CLASSES, load_params

REPO = Path(__file__).resolve().parents[1]
STAGES = ["prepare", "bootstrap", "rollout", "label", "synthesize", "train", "benchmark", "register"]


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The checkout as working directory (``models/...`` paths are local there, as for dvc repro)."""
    monkeypatch.chdir(REPO)
    return REPO


def test_the_offline_default_configures_nothing_online(in_repo: Path) -> None:
    for stage in STAGES:
        assert section_reasons(in_repo / "params.yaml", [], stage) == [], stage


def test_the_paper_setting_is_online(in_repo: Path) -> None:
    paper = in_repo / "infra" / "paper" / "params.yaml"
    reasons = {stage: section_reasons(paper, [], stage) for stage in STAGES}
    assert reasons["prepare"] == ["prepare.hf.path: 'zwhe99/MATH' is a hub dataset"]
    assert "rollout.policy.model: 'Qwen/Qwen2.5-7B-Instruct' is a hub id" in reasons["rollout"]
    assert "rollout.policy.model: server http://vllm-policy:8000/v1 is not on loopback" in reasons["rollout"]
    assert any("label.completer" in r for r in reasons["label"])
    assert any("synthesize.teacher.model" in r for r in reasons["synthesize"])
    assert reasons["train"] == ["train.base_model: 'deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B' is a hub id"]
    assert any("benchmark.best_of_n.policy" in r for r in reasons["benchmark"])
    assert reasons["bootstrap"] == reasons["register"] == []  # local directories only


@pytest.mark.parametrize(
    ("overrides", "online"),
    [
        ([], False),
        # a served local model on this machine: still offline
        (["rollout.policy.backend=openai", "rollout.policy.base_url=http://127.0.0.1:8000/v1"], False),
        (["rollout.policy.backend=openai", "rollout.policy.base_url=http://localhost:8000/v1"], False),
        (["rollout.policy.backend=openai", "rollout.policy.base_url=http://[::1]:8000/v1"], False),
        (["rollout.policy.backend=openai", "rollout.policy.base_url=http://10.0.0.7:8000/v1"], True),
        (
            [
                "rollout.policy.backend=openai",
                "rollout.policy.base_urls=[http://127.0.0.1:1/v1,http://gpu:1/v1]",
            ],
            True,
        ),
        # base_url is ignored by the hf backend: nothing online
        (["rollout.policy.base_url=http://10.0.0.7:8000/v1"], False),
        (["rollout.policy.model=Qwen/Qwen2.5-0.5B-Instruct"], True),
        (["rollout.policy.model=gpt2"], True),
        (["rollout.policy.model=models/not-trained-yet"], False),
    ],
)
def test_rollout_section(in_repo: Path, overrides: list[str], online: bool) -> None:
    assert bool(section_reasons(in_repo / "params.yaml", overrides, "rollout")) is online


def test_prepare_sources(in_repo: Path, tmp_path: Path) -> None:
    params = in_repo / "params.yaml"
    hub = ["prepare.source=hf", "prepare.hf={path: HuggingFaceH4/MATH-500, split: test, revision: abc}"]
    assert section_reasons(params, hub, "prepare") == [
        "prepare.hf.path: 'HuggingFaceH4/MATH-500' is a hub dataset"
    ]
    local = ["prepare.source=hf", f"prepare.hf={{path: {tmp_path}, split: test}}"]
    assert section_reasons(params, local, "prepare") == []
    # an hf section that the source does not use
    assert section_reasons(params, ["prepare.hf={path: org/data, split: test}"], "prepare") == []


def test_loopback_hosts() -> None:
    assert is_loopback("http://127.0.0.1:8000/v1") and is_loopback("http://127.9.9.9/v1")
    assert is_loopback("http://LOCALHOST:1/v1") and is_loopback("http://[::1]:8000")
    assert not is_loopback("http://127.0.0.1.example.com/v1") and not is_loopback("https://api.openai.com/v1")
    assert not is_loopback("http://vllm-policy:8000/v1") and not is_loopback("not a url")


def test_every_section_is_walked() -> None:
    """Each section's default config walks without error and is offline."""
    for name in SECTION_CLASSES:
        cfg = load_params(REPO / "params.yaml", [], [name])[name]
        assert isinstance(online_reasons(cfg, name), list)


def test_deciding_imports_no_hub_library(in_repo: Path) -> None:
    """The CLI decides before the environment is set: the decision must not import huggingface_hub,
    datasets or transformers, which read HF_HUB_OFFLINE once, at import."""
    import subprocess

    code = (
        "import sys; from pathlib import Path; from components.platform.online import section_reasons\n"
        f"for s in {STAGES!r}: section_reasons(Path('infra/paper/params.yaml'), [], s)\n"
        "hub = ('huggingface_hub', 'datasets', 'transformers', 'torch')\n"
        "print(sorted(m for m in hub if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=in_repo, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr


def test_model_reasons_for_commands_without_params() -> None:
    from components.platform.online import model_reasons

    assert model_reasons("--model", "models:/genprm@champion") == []
    assert model_reasons("--model", "GenPRM/GenPRM-1.5B") == ["--model: 'GenPRM/GenPRM-1.5B' is a hub id"]
    assert model_reasons("--model", "/srv/genprm", ["http://gpu-3:8000/v1"]) == [
        "--model: server http://gpu-3:8000/v1 is not on loopback"
    ]


def test_a_section_that_does_not_load_counts_as_offline(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("rollout: {nonsense: 1}\n")
    assert section_reasons(bad, [], "rollout") == []
    assert section_reasons(tmp_path / "missing.yaml", [], "rollout") == []


# ------------------------------------------------------------------------------------- the CLI's env


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in cli.OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def run_stage_env(
    monkeypatch: pytest.MonkeyPatch, params: Path, overrides: list[str], stage: str
) -> dict[str, Any]:
    """Run ``genprm <stage>`` in-process with a stand-in stage module; the environment its main saw."""
    seen: dict[str, Any] = {}

    def main(params_path: Path, overrides: list[str]) -> dict[str, Any]:
        seen.update({k: os.environ.get(k) for k in cli.OFFLINE_ENV})
        return {}

    @contextmanager
    def stage_run(*args: Any, **kwargs: Any) -> Any:
        yield types.SimpleNamespace(log_metrics=lambda metrics: None)

    import importlib

    fake = types.ModuleType(f"components.stages.{stage}")
    fake.__dict__.update(importlib.import_module(f"components.stages.{stage}").__dict__)  # its config class
    fake.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, f"components.stages.{stage}", fake)
    monkeypatch.setattr("components.platform.tracking.stage_run", stage_run)
    cli.run_entry(stage, params, overrides)
    return seen


def test_cli_is_offline_for_the_default(in_repo: Path, clean_env: pytest.MonkeyPatch) -> None:
    env = run_stage_env(clean_env, in_repo / "params.yaml", [], "rollout")
    assert env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"
    assert env["DVC_NO_ANALYTICS"] == "1" and env["GX_ANALYTICS_ENABLED"] == "false"


def test_cli_leaves_the_hub_on_when_a_hub_id_is_configured(
    in_repo: Path, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"rollout": {"policy": {"model": "Qwen/Qwen2.5-0.5B-Instruct"}}}))
    env = run_stage_env(clean_env, params, [], "rollout")
    assert env["HF_HUB_OFFLINE"] is None and env["HF_DATASETS_OFFLINE"] is None
    assert env["DVC_NO_ANALYTICS"] == "1", "telemetry stays off online too"


def test_the_users_environment_wins(in_repo: Path, clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"base_model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"}}))
    clean_env.setenv("HF_HUB_OFFLINE", "1")  # the model is known to be cached
    assert run_stage_env(clean_env, params, [], "train")["HF_HUB_OFFLINE"] == "1"
    clean_env.setenv("HF_HUB_OFFLINE", "0")  # online wanted although nothing online is configured
    assert run_stage_env(clean_env, in_repo / "params.yaml", [], "rollout")["HF_HUB_OFFLINE"] == "0"
