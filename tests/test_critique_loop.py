"""The continuous critique loop on a real (tiny, random) model and the real sandbox.

The continuous-batching engine must generate what ``HFBackend.generate`` generates (greedy: the same
tokens, finish reasons and logprobs), also when it reuses a slot's KV for a longer prompt and when its
buffer is compacted and grown; the continuous loop must give the lockstep loop's critiques under greedy
decoding, and under sampling a chain's critique must not depend on which chains run beside it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest_backends import arithmetic_prompts, build_tiny_model

from components.backends.base import BackendConfig, GenerationRequest, SamplingParams, make_backend
from components.backends.engine import Engine
from components.backends.hf import HFBackend
from components.method.critique import Chain
from components.method.prompts import GENPRM_SYSTEM_PROMPT
from components.method.scorer import GenPRMScorer, ScorerConfig
from components.sandbox import Sandbox, SandboxConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "genprm")


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> HFBackend:
    backend = make_backend(BackendConfig(model=str(model_dir), batch_size=8))
    assert isinstance(backend, HFBackend)
    return backend


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    with Sandbox(SandboxConfig(timeout_s=5, workers=2)) as box:
        yield box


def drain(engine: Engine) -> dict[object, object]:
    out = {}
    while engine.busy:
        out.update(engine.step())
    return out


def test_the_engine_generates_what_generate_does(backend: HFBackend) -> None:
    requests = [GenerationRequest(messages=m) for m in arithmetic_prompts(7)]
    params = SamplingParams(temperature=0, max_tokens=20, stop=["="], logprobs=3)
    expected = [r.samples[0] for r in backend.generate(requests, params)]
    engine = Engine(backend, slots=3, capacity=8)  # fewer slots than requests, a buffer that must grow
    for index, request in enumerate(requests):
        engine.submit(index, request, params)
    got = drain(engine)
    assert engine.cache.capacity > 8
    for index, want in enumerate(expected):
        sample = got[index]
        assert (sample.text, sample.finish_reason) == (want.text, want.finish_reason)  # type: ignore[attr-defined]
        assert sample.num_generated_tokens == want.num_generated_tokens  # type: ignore[attr-defined]
        assert [t.token for t in sample.logprobs] == [t.token for t in want.logprobs]  # type: ignore[attr-defined]
        for a, b in zip(sample.logprobs, want.logprobs, strict=True):  # type: ignore[attr-defined]
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_a_longer_prompt_reuses_the_slot_and_generates_the_same(backend: HFBackend) -> None:
    params = SamplingParams(temperature=0, max_tokens=12)
    messages = arithmetic_prompts(3, seed=5)
    engine = Engine(backend, slots=2, capacity=32)
    for key, m in enumerate(messages):
        engine.submit(key, GenerationRequest(messages=m), params)
    first = drain(engine)
    longer = [
        GenerationRequest(messages=m, prefill=first[key].text + " and more")  # type: ignore[attr-defined]
        for key, m in enumerate(messages)
    ]
    for key, request in enumerate(longer):
        engine.submit(key, request, params)
    second = drain(engine)
    assert engine.reused_tokens > 0
    expected = [r.samples[0].text for r in backend.generate(longer, params)]
    assert [second[key].text for key in range(3)] == expected  # type: ignore[attr-defined]


def solutions() -> list[tuple[str, list[str]]]:
    return [
        (f"A shop has {i} apples and buys {i + 2} more. How many?", [f"{i} + {i + 2} = {2 * i + 2}", "Done."])
        for i in range(3)
    ]


def test_the_continuous_loop_gives_the_lockstep_critiques(model_dir: Path, sandbox: Sandbox) -> None:
    cfg = ScorerConfig(
        model=BackendConfig(model=str(model_dir), batch_size=4), temperature=0.0, max_tokens=16
    )
    backend = make_backend(cfg.model)
    runs = {}
    for loop in ("lockstep", "continuous"):
        scorer = GenPRMScorer(replace(cfg, loop=loop), backend=backend, sandbox=sandbox)  # type: ignore[arg-type]
        runs[loop] = scorer.score(solutions(), samples=2)
    for old, new in zip(runs["lockstep"], runs["continuous"], strict=True):
        assert new.critiques == old.critiques
        for a, b in zip(new.samples, old.samples, strict=True):
            assert [x is None for x in a] == [y is None for y in b]
            assert [x for x in a if x is not None] == pytest.approx([y for y in b if y is not None], abs=1e-4)


@pytest.mark.parametrize("decoding", ["free", "paper"])
def test_a_chain_samples_the_same_whatever_runs_beside_it(
    model_dir: Path, sandbox: Sandbox, decoding: str
) -> None:
    cfg = ScorerConfig(
        model=BackendConfig(model=str(model_dir), batch_size=4),
        temperature=1.0,
        max_tokens=16,
        decoding=decoding,  # type: ignore[arg-type]
    )
    scorer = GenPRMScorer(cfg, sandbox=sandbox)
    alone = scorer.score(solutions()[1:2], samples=2)[0]
    together = scorer.score(solutions(), samples=2)[1]
    assert together.critiques == alone.critiques and together.samples == alone.samples
    assert alone.samples[0] != alone.samples[1] or alone.critiques  # two samples, two seeds
    scorer.close()


def test_both_loops_stop_a_chain_at_the_context_window(
    model_dir: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = ScorerConfig(
        model=BackendConfig(model=str(model_dir), batch_size=4), temperature=0.0, max_tokens=16
    )
    backend = make_backend(cfg.model)
    assert isinstance(backend, HFBackend) and backend.context_window() == 2048  # the tiny model's config
    first = Chain(*solutions()[0])
    first.start("free")
    window = backend.prompt_length(first.request(GENPRM_SYSTEM_PROMPT)) + 80  # type: ignore[operator]
    encoded: list[int] = []
    encode = backend._encode

    def recording_encode(request: GenerationRequest) -> list[int]:
        ids = encode(request)
        encoded.append(len(ids))
        return ids

    monkeypatch.setattr(backend, "_encode", recording_encode)
    monkeypatch.setattr(backend, "context_window", lambda: window)
    runs = {}
    for loop in ("lockstep", "continuous"):
        scorer = GenPRMScorer(replace(cfg, loop=loop), backend=backend, sandbox=sandbox)  # type: ignore[arg-type]
        runs[loop] = scorer.score(solutions(), samples=2)
    assert max(encoded) + cfg.max_tokens <= window
    for old, new in zip(runs["lockstep"], runs["continuous"], strict=True):
        assert new.critiques == old.critiques and new.source_counts == old.source_counts
    cut = sum(s.source_counts["cut"] for s in runs["lockstep"])
    assert 0 < cut < sum(len(s.samples) * len(s.samples[0]) for s in runs["lockstep"])
