"""The paper-scale configuration (infra/paper/params.yaml) and its compute estimate (infra/paper/estimate.py).

The params file must load through the same loader every stage uses and carry the paper's setting
(DESIGN.md §1, §3); the estimate must follow the params (K, samples, paths), not constants of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.data.sources import load_hf_problems
from components.platform.errors import ConfigError
from components.platform.params import load_params

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "infra" / "paper" / "params.yaml"
ESTIMATE = REPO / "infra" / "paper" / "estimate.py"


@pytest.fixture(scope="module")
def paper() -> dict[str, Any]:
    return load_params(PAPER)


def test_paper_params_validate_with_the_project_loader(paper: dict[str, Any]) -> None:
    raw = yaml.safe_load(PAPER.read_text())
    assert set(raw) <= set(paper)  # every section written is a known one (load_params would raise)


def test_paper_models_are_served_by_vllm_through_the_openai_backend(paper: dict[str, Any]) -> None:
    policy, completer = paper["rollout"].policy, paper["label"].completer
    assert (policy.backend, policy.model) == ("openai", "Qwen/Qwen2.5-7B-Instruct")
    assert (completer.backend, completer.model) == ("openai", "Qwen/Qwen2.5-Math-7B-Instruct")
    assert policy.base_url and completer.base_url and policy.base_url != completer.base_url


def test_paper_label_settings(paper: dict[str, Any]) -> None:
    label = paper["label"]
    assert (label.k_low, label.k_mid, label.k_high) == (128, 64, 32)
    assert (label.low_threshold, label.high_threshold, label.epsilon) == (0.1, 0.9, 0.8)
    assert paper["rollout"].temperature == 0.7


def test_paper_teacher_and_training_settings(paper: dict[str, Any]) -> None:
    teacher = paper["synthesize"].teacher
    assert teacher.kind == "llm" and teacher.model.backend == "openai"
    assert teacher.model.model == "Qwen/QwQ-32B"
    train = paper["train"]
    assert train.lr == 2e-6 and train.bf16
    assert train.base_model.startswith("deepseek-ai/DeepSeek-R1-Distill-Qwen-")
    zero2 = yaml.safe_load((REPO / "infra" / "accelerate" / "deepspeed_zero2.yaml").read_text())
    assert train.batch_size * train.gradient_accumulation_steps * zero2["num_processes"] == 64


def test_paper_prepare_reads_math_train_and_refuses_an_unpinned_hub_dataset(paper: dict[str, Any]) -> None:
    prepare = paper["prepare"]
    assert prepare.source == "hf" and prepare.hf.split == "train"
    assert prepare.hf.answer_field == "expected_answer"
    if prepare.hf.revision is None:  # the shipped file leaves the pin to the team; prepare enforces it
        with pytest.raises(ConfigError, match=r"prepare\.hf\.revision: required"):
            load_hf_problems(prepare.hf)
    else:
        assert len(prepare.hf.revision) == 40


def test_genprm_params_check_accepts_the_paper_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "components.platform.cli", "params", "check", "--params", str(PAPER)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------ estimate


def run_estimate(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(ESTIMATE), "--json", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def row(result: dict[str, Any], stage: str) -> dict[str, Any]:
    [found] = [r for r in result["rows"] if r["stage"] == stage]
    return found


def test_estimate_label_tokens_follow_the_formula() -> None:
    result = run_estimate()
    a, label = result["assumptions"], yaml.safe_load(PAPER.read_text())["label"]
    paths = yaml.safe_load(PAPER.read_text())["rollout"]["num_paths"]
    low, mid, high = a["k_band_shares"]
    k = (low * label["k_low"] + mid * label["k_mid"] + high * label["k_high"]) / (low + mid + high)
    prefixes = a["problems"] * a["kept_fraction"] * paths * (a["steps"] - 1) * a["sampled_fraction"]
    assert label["mc0"] == "completer"  # MC_0 sampled by the completer: mc0_samples per kept problem
    mc0 = a["problems"] * a["kept_fraction"] * label["mc0_samples"]
    expected = (prefixes * k + mc0) * a["completion_tokens"]
    assert row(result, "label")["tokens"] == pytest.approx(expected)
    assert row(result, "label")["gpu_hours"] == pytest.approx(expected / a["tokens_per_s_7b"] / 3600)


def test_estimate_follows_the_params_file_and_the_measured_throughput(tmp_path: Path) -> None:
    raw = yaml.safe_load(PAPER.read_text())
    raw["label"]["k_low"], raw["label"]["k_mid"], raw["label"]["k_high"] = 64, 32, 16  # half of every K
    halved = tmp_path / "params.yaml"
    halved.write_text(yaml.safe_dump(raw))
    base, half = run_estimate(), run_estimate("--params", str(halved))
    a = base["assumptions"]
    mc0 = a["problems"] * a["kept_fraction"] * raw["label"]["mc0_samples"] * a["completion_tokens"]
    assert row(half, "label")["tokens"] - mc0 == pytest.approx((row(base, "label")["tokens"] - mc0) / 2)
    raw["label"]["mc0"] = "rollout"  # the pass rate as MC_0: no wave 0
    halved.write_text(yaml.safe_dump(raw))
    assert row(run_estimate("--params", str(halved)), "label")["tokens"] == pytest.approx(
        row(half, "label")["tokens"] - mc0
    )
    assert row(half, "rollout")["tokens"] == row(base, "rollout")["tokens"]
    slow = run_estimate("--tokens-per-s-7b", "6250")
    assert row(slow, "label")["gpu_hours"] == pytest.approx(2 * row(base, "label")["gpu_hours"])
    # a measured token ratio of the sequential mode divides the per-prefix completions, not wave 0
    sequential = run_estimate("--params", str(halved), "--label-token-ratio", "2.5")
    assert row(sequential, "label")["tokens"] == pytest.approx((row(half, "label")["tokens"] - mc0) / 2.5)
    assert row(sequential, "rollout")["tokens"] == row(base, "rollout")["tokens"]


def test_estimate_prints_a_table() -> None:
    result = subprocess.run([sys.executable, str(ESTIMATE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["stage", "model"]
    assert any(line.startswith("label ") and "Qwen/Qwen2.5-Math-7B-Instruct" in line for line in lines)
    assert "generation total:" in result.stdout
