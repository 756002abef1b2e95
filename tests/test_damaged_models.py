"""A damaged model directory is one message naming the file and what is wrong (CLI: exit 2), never a
traceback, for every model load: policy, completer, teacher, GenPRM (scorer and pyfunc), base model.

The model is the tiny random chat model of ``conftest_backends``, damaged on disk the ways users meet:
truncated or empty ``model.safetensors``, a garbled header, invalid ``config.json``, no config, a
truncated ``tokenizer.json``, an invalid ``tokenizer_config.json``.

    python -m pytest -q tests/test_damaged_models.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest_backends import build_tiny_model

from components.backends.base import BackendConfig, make_backend
from components.backends.hf import check_model_files
from components.platform.errors import DataError, GenPRMError

REPO = Path(__file__).resolve().parents[1]


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        data = (model / name).read_bytes()
        (model / name).write_bytes(data[: int(len(data) * keep)])

    return damage


def _garble_header(model: Path) -> None:
    data = bytearray((model / "model.safetensors").read_bytes())
    data[8:16] = b"\x00garbage"
    (model / "model.safetensors").write_bytes(bytes(data))


# name -> (how the directory is damaged, the file the message must name, what it must say)
DAMAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "truncated_weights": (_truncate("model.safetensors", 0.5), "model.safetensors", "truncated"),
    "empty_weights": (_truncate("model.safetensors", 0.0), "model.safetensors", "truncated"),
    "garbled_header": (_garble_header, "model.safetensors", "unreadable header"),
    "bad_config": (lambda m: (m / "config.json").write_text("{not json"), "config.json", "not valid JSON"),
    "no_config": (lambda m: (m / "config.json").unlink(), "", "no config.json"),
    "truncated_tokenizer": (_truncate("tokenizer.json", 0.3), "tokenizer.json", "not valid JSON"),
    "bad_tokenizer_config": (
        lambda m: (m / "tokenizer_config.json").write_text('{"x": '),
        "tokenizer_config.json",
        "not valid JSON",
    ),
}


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(params=sorted(DAMAGES))
def damaged(request: pytest.FixtureRequest, good_model: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """(damaged model dir, the path the message must name, what it must say)."""
    damage, file, what = DAMAGES[request.param]
    model = tmp_path / "damaged"
    shutil.copytree(good_model, model)
    damage(model)
    return model, str(model / file) if file else str(model), what


def _one_clear_line(message: str, path: str, what: str) -> None:
    assert "\n" not in message, message
    assert path in message and what in message, message


def test_good_models_pass_the_check(good_model: Path, tmp_path: Path) -> None:
    check_model_files(str(good_model))
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(good_model).save_pretrained(sharded, max_shard_size="20KB")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    check_model_files(str(sharded))
    check_model_files("Qwen/Qwen2.5-Math-7B-Instruct")  # a hub id is left to from_pretrained
    (sharded / "trainer_state.json").write_text("{")  # not a file from_pretrained reads
    check_model_files(str(sharded))


def test_the_check_names_the_damaged_file(damaged: tuple[Path, str, str]) -> None:
    model, path, what = damaged
    with pytest.raises(GenPRMError) as caught:
        check_model_files(str(model))
    _one_clear_line(str(caught.value), path, what)


def test_backend_load_policy_completer_teacher(damaged: tuple[Path, str, str]) -> None:
    """Policy (rollout), completer (label) and teacher (synthesize) all load through make_backend."""
    model, path, what = damaged
    with pytest.raises(GenPRMError) as caught:
        make_backend(BackendConfig(backend="hf", model=str(model)))
    _one_clear_line(str(caught.value), path, what)


def test_llm_teacher_and_genprm_scorer(damaged: tuple[Path, str, str]) -> None:
    from components.method.scorer import GenPRMScorer, ScorerConfig
    from components.method.teachers import LLMTeacher, TeacherConfig
    from components.sandbox import Sandbox, SandboxConfig

    cfg = BackendConfig(backend="hf", model=str(damaged[0]))
    with pytest.raises(GenPRMError) as caught:
        GenPRMScorer(ScorerConfig(model=cfg, execute=False))
    _one_clear_line(str(caught.value), *damaged[1:])
    with Sandbox(SandboxConfig(workers=1)) as sandbox, pytest.raises(GenPRMError) as caught:
        LLMTeacher(TeacherConfig(kind="llm", model=cfg), sandbox).critique([("1 + 1?", ["Step 1: 2."])])
    _one_clear_line(str(caught.value), *damaged[1:])


def test_train_base_model(damaged: tuple[Path, str, str]) -> None:
    from components.stages.train import TrainConfig, load_base

    with pytest.raises(DataError, match=r"^train\.base_model: ") as caught:
        load_base(TrainConfig(base_model=str(damaged[0])))
    _one_clear_line(str(caught.value), *damaged[1:])


def test_pyfunc_load_context(damaged: tuple[Path, str, str]) -> None:
    from mlflow.pyfunc import PythonModelContext

    from components.platform.pyfunc import GenPRMPyfunc

    context = PythonModelContext(artifacts={"model": str(damaged[0])}, model_config={"execute": False})
    with pytest.raises(GenPRMError, match=r"^GenPRM pyfunc: ") as caught:
        GenPRMPyfunc().load_context(context)
    _one_clear_line(str(caught.value), *damaged[1:])


@pytest.mark.slow
def test_rollout_with_a_truncated_policy_is_one_line_exit_2(good_model: Path, tmp_path: Path) -> None:
    """The issue's report: `genprm rollout` on a truncated model.safetensors printed a 60-line traceback."""
    from components.data.io import write_parquet
    from components.data.records import Problem, problems_to_frame

    policy = tmp_path / "policy"
    shutil.copytree(good_model, policy)
    _truncate("model.safetensors", 0.5)(policy)
    problem = Problem("p1", "synthetic", "Tom has 3 apples and buys 4. How many?", "7")
    write_parquet(tmp_path / "train.parquet", problems_to_frame([problem]))
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")  # stage tracking reads the stage's outputs
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(yaml.safe_load((REPO / "params.yaml").read_text())))
    overrides = [f"rollout.policy.model={policy}", f"rollout.input={tmp_path / 'train.parquet'}"]
    overrides.append(f"rollout.output_dir={tmp_path / 'out'}")
    args = [sys.executable, "-m", "components.platform.cli", "rollout"]
    for item in overrides:
        args += ["--set", item]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "GENPRM_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    _one_clear_line(errors[0], str(policy / "model.safetensors"), "truncated")
    assert proc.stdout == ""  # no metrics: nothing ran
