"""``genprm score`` on the tiny random chat model of ``conftest_backends``: a model directory, an MLflow
registered model (``models:/genprm@champion``, logged as ``register`` logs it), a served model
(``transformers serve``), ``--data`` files and bad input.

The random model rarely writes a verdict, so what is checked is the plumbing: one reward, verdict and
critique per step, the records ``--out`` writes, and one-line errors with exit status 2.

    python -m pytest -q tests/test_score.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest_backends import build_tiny_model
from typer.testing import CliRunner

from components.platform.cli import app

REPO = Path(__file__).resolve().parents[1]
PROBLEM = "Tom has 3 apples and buys 4 more. How many apples does he have?"
STEPS = ["Step 1: 3 + 4 = 7.", "Step 2: The answer is 7."]
SMALL = ["--max-tokens", "12", "--max-rounds", "1"]  # a second per solution on CPU


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "genprm")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["score", *args], catch_exceptions=False)


def check_record(record: dict[str, Any], steps: list[str], samples: int) -> None:
    assert record["steps"] == steps and record["samples"] == samples
    assert len(record["rewards"]) == len(record["verdicts"]) == len(record["critiques"]) == len(steps)
    assert all(0.0 <= r <= 1.0 for r in record["rewards"])
    assert set(record["verdicts"]) <= {"Yes", "No", None}
    assert record["reward_source"] in {"logprobs", "verdict_text", "logprobs,verdict_text", "none"}
    assert {"missing_verdicts", "code_runs", "code_failures"} <= set(record)


def test_score_a_model_directory(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    args = ["-m", str(model_dir), "--problem", PROBLEM, "--step", STEPS[0], "--step", STEPS[1]]
    result = invoke(*args, *SMALL, "--samples", "2", "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "step 1: reward " in result.output and "step 2: reward " in result.output
    assert "verdict " in result.output and f"wrote 1 record(s) to {out}" in result.output
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    check_record(record, STEPS, samples=2)
    assert record["problem"] == PROBLEM


def test_score_a_data_file(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "solutions.jsonl"
    rows = [{"problem": PROBLEM, "steps": STEPS}, {"problem": "What is 6 * 7?", "steps": ["6 * 7 = 42."]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    result = invoke("-m", str(model_dir), "--data", str(data), "--out", str(out), *SMALL, "--no-execute")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["problem"] for r in records] == [PROBLEM, "What is 6 * 7?"]
    check_record(records[1], ["6 * 7 = 42."], samples=1)
    assert "solution 2: What is 6 * 7?" in result.output


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"problem": "q", "steps": []}, r"solutions\.jsonl:2: 'steps' must be a non-empty list"),
        ({"problem": "", "steps": ["a"]}, r"solutions\.jsonl:2: 'problem' must be a non-empty string"),
        ({"problem": "q", "steps": "Step 1"}, r"solutions\.jsonl:2: 'steps' must be a non-empty list"),
    ],
)
def test_a_bad_record_names_file_and_line(tmp_path: Path, record: dict[str, Any], message: str) -> None:
    data = tmp_path / "solutions.jsonl"
    data.write_text(json.dumps({"problem": PROBLEM, "steps": STEPS}) + "\n" + json.dumps(record) + "\n")
    result = invoke("-m", "models/none", "--data", str(data))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert re.search(message, result.output), result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "models/genprm"], "give --problem TEXT and at least one --step"),
        (
            ["-m", "./no/such/model", "--problem", "q", "--step", "s"],
            "model directory not found: no/such/model",
        ),
        (["-m", "x", "--problem", "q", "--step", "s", "--data", "d.jsonl"], "not both"),
    ],
)
def test_bad_options_are_one_line_exit_2(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1


def test_a_damaged_model_is_one_line_exit_2(model_dir: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir, damaged)
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:1000])
    result = invoke("-m", str(damaged), "--problem", "q", "--step", "s")
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {damaged / 'model.safetensors'}: damaged weights file")


# ------------------------------------------------------------------------------------ MLflow registry


@pytest.fixture(scope="module")
def registry(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A sqlite MLflow store with the tiny model registered as ``genprm``, alias ``champion`` (as the
    register stage logs it: components/platform/pyfunc.py)."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    code = f"""
from pathlib import Path
import mlflow
from mlflow import MlflowClient
from components.platform.pyfunc import log_genprm
uri = "sqlite:///{db}"
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
settings = {{"model": {{"backend": "hf", "model": "genprm", "device": "cpu"}}, "max_tokens": 12,
            "max_rounds": 1, "threads": 1, "sandbox": {{"workers": 1}}}}
with mlflow.start_run():
    info = log_genprm(Path("{model_dir}"), settings, ["torch", "transformers"], 1, "genprm")
MlflowClient(uri, uri).set_registered_model_alias("genprm", "champion", info.registered_model_version)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "GENPRM_LOG_LEVEL": "WARNING"}
    proc = subprocess.run(  # cwd: the artifacts go to ./mlruns beside the store
        [sys.executable, "-c", code], cwd=db.parent, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    yield f"sqlite:///{db}"


def genprm_score(store: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`genprm score` in a fresh process elsewhere, as a user runs it."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "GENPRM_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "components.platform.cli", "score", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_score_the_registered_champion(registry: str, tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    args = ["-m", "models:/genprm@champion", "--problem", PROBLEM, "--step", STEPS[0], "--step", STEPS[1]]
    proc = genprm_score(registry, tmp_path, *args, "--samples", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 2: reward " in proc.stdout
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    check_record(record, STEPS, samples=2)


@pytest.mark.slow
def test_a_damaged_registered_model_is_one_line_exit_2(registry: str, tmp_path: Path) -> None:
    """The pyfunc's artifact truncated in the store: the message names the file, exit 2."""
    store = Path(registry.removeprefix("sqlite:///")).parent
    [weights] = list((store / "mlruns").rglob("model.safetensors"))
    intact = weights.read_bytes()
    weights.write_bytes(intact[:5000])
    try:
        proc = genprm_score(
            registry, tmp_path, "-m", "models:/genprm@champion", "--problem", "q", "--step", "s"
        )
    finally:
        weights.write_bytes(intact)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        errors[0].startswith("error: GenPRM pyfunc: ") and "model.safetensors: damaged weights" in errors[0]
    )


@pytest.mark.slow
def test_an_unknown_alias_is_one_line_exit_2(registry: str, tmp_path: Path) -> None:
    proc = genprm_score(registry, tmp_path, "-m", "models:/genprm@nobody", "--problem", "q", "--step", "s")
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "models:/genprm@nobody: cannot load the MLflow model" in errors[0]
    assert "Traceback" not in proc.stderr


# -------------------------------------------------------------------------------------- served model


@pytest.mark.slow
def test_score_a_served_model(model_dir: Path, tmp_path: Path) -> None:
    """`transformers serve` (no logprobs: the verdict text gives the reward) behind --base-url."""
    from test_openai_backend import _free_port, _serve_available, _wait_ready

    reason = _serve_available()
    if reason:
        pytest.skip(reason)
    port, log = _free_port(), tmp_path / "serve.log"
    cli = str(Path(sys.executable).parent / "transformers")
    args = [cli, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [*args, "--dtype", "float32"], stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", server, log)
        out = tmp_path / "scores.jsonl"
        base = f"http://127.0.0.1:{port}/v1"
        result = invoke(
            *["-m", str(model_dir), "--base-url", base, "--logprobs", "0", "--problem", PROBLEM],
            *["--step", STEPS[0], "--out", str(out), *SMALL],
        )
        assert result.exit_code == 0, result.output
        [record] = [json.loads(line) for line in out.read_text().splitlines()]
        check_record(record, STEPS[:1], samples=1)
        assert record["reward_source"] in {"verdict_text", "none"}
    finally:
        server.terminate()
        server.wait(timeout=30)
