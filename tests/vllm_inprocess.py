"""Run by tests/test_vllm.py in the .venv-vllm interpreter: the in-process ``vllm`` backend on CPU.

    .venv-vllm/bin/python tests/vllm_inprocess.py MODEL_DIR OUT.json

Writes what the test checks (n, logprobs, stop strings, the seed capability, Maj@N chains) as JSON.
``vllm.LLM`` spawns its engine process, hence the ``__main__`` guard.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(model: str, out: Path) -> None:
    from components.backends.base import BackendConfig, GenerationRequest, SamplingParams, make_backend
    from components.method.critique import Chain, CritiqueSettings, run_chains

    cfg = BackendConfig(backend="vllm", model=model, dtype="float32", vllm={"max_model_len": 1024})
    report: dict = {}
    with make_backend(cfg) as backend:
        report["seeding"] = backend.seeding
        report["window"] = backend.context_window()
        chat = [{"role": "user", "content": "Compute 3 + 4 step by step."}]
        request = GenerationRequest(messages=chat, prefill="Step 1:")
        [sampled] = backend.generate([request], SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=1))
        report["n_texts"] = [s.text for s in sampled.samples]
        [greedy] = backend.generate([request], SamplingParams(temperature=0.0, max_tokens=24, logprobs=3))
        sample = greedy.samples[0]
        report["greedy"] = {
            "text": sample.text,
            "finish_reason": sample.finish_reason,
            "tokens": sample.num_generated_tokens,
            "logprobs": [[t.token, t.logprob, t.top] for t in sample.logprobs or []],
        }
        stop = next((c for i, c in enumerate(sample.text) if i > 2 and c.isascii() and c.isalnum()), None)
        report["stop"] = stop
        if stop is not None:
            params = SamplingParams(temperature=0.0, max_tokens=24, stop=[stop])
            [cut] = backend.generate([request], params)
            report["stopped"] = [cut.samples[0].text, cut.samples[0].finish_reason]
        # Maj@N: 6 critique chains of one solution (same prompt), execution off (no sandbox here).
        chains = [
            Chain("What is 3 + 4?", ["Step 1: 3 + 4 = 7.", "Step 2: The answer is 7."]) for _ in range(6)
        ]
        settings = CritiqueSettings(temperature=1.0, max_tokens=24, execute=False, logprobs=5, seed=0)
        run_chains(backend, chains, settings, None, threads=1, desc="vllm maj@n")
        report["chains"] = [[turn.text for turn in chain.turns] for chain in chains]
        report["sources"] = sorted({turn.reward_source for chain in chains for turn in chain.turns})
    out.write_text(json.dumps(report))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1], Path(sys.argv[2]))
