"""Tests of the generation interface, the hf backend on a tiny random model, and the vLLM mappings.

The vLLM mapping functions are tested with stand-in objects shaped like vLLM's outputs: vLLM itself is
not installed in this environment and must not be.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest_backends import arithmetic_prompts, build_tiny_model

from components.backends.base import (
    BackendConfig,
    GenerationRequest,
    SamplingParams,
    cut_at_stop,
    derive_seed,
    looks_like_path,
    make_backend,
    render_prompt,
    request_seeds,
)
from components.backends.hf import HFBackend, left_pad, length_order, token_texts
from components.backends.vllm import from_vllm_output, seeding_for, to_vllm_sampling_kwargs
from components.platform.config import build_config
from components.platform.errors import ConfigError, GenPRMError


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> HFBackend:
    backend = make_backend(BackendConfig(model=str(tiny_model_dir), batch_size=4))
    assert isinstance(backend, HFBackend)
    return backend


def chat_requests(count: int, seed: int = 1) -> list[GenerationRequest]:
    return [GenerationRequest(messages=m) for m in arithmetic_prompts(count, seed=seed)]


GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


# ----- the interface -----


def test_request_needs_exactly_one_of_prompt_or_messages() -> None:
    with pytest.raises(GenPRMError, match="exactly one"):
        GenerationRequest()
    with pytest.raises(GenPRMError, match="exactly one"):
        GenerationRequest(prompt="a", messages=[{"role": "user", "content": "b"}])


def test_sampling_params_are_checked() -> None:
    with pytest.raises(GenPRMError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(GenPRMError, match="n must"):
        SamplingParams(n=0)


def test_backend_config_from_params_dict() -> None:
    cfg = build_config(
        BackendConfig, {"backend": "vllm", "model": "m", "vllm": {"tensor_parallel_size": 2}}, "gen.backend"
    )
    assert cfg.vllm == {"tensor_parallel_size": 2}
    assert BackendConfig().vllm == {} and BackendConfig().vllm is not BackendConfig().vllm
    with pytest.raises(ConfigError, match=r"gen\.backend\.backend"):
        build_config(BackendConfig, {"backend": "tgi"}, "gen.backend")


def test_cut_at_stop_uses_the_earliest_stop_string() -> None:
    assert cut_at_stop("a. b! c", ["!", "."]) == ("a", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)
    assert cut_at_stop("abc", []) == ("abc", False)


def test_path_like_model_names() -> None:
    assert looks_like_path("/abs/dir") and looks_like_path("./rel") and looks_like_path("a/b/c")
    assert not looks_like_path("Qwen/Qwen2.5-Math-7B-Instruct") and not looks_like_path("gpt2")


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(GenPRMError, match=re.escape(str(missing))):
        make_backend(BackendConfig(model=str(missing)))


def test_vllm_backend_is_imported_only_when_selected(tiny_model_dir: Path) -> None:
    assert "vllm" not in sys.modules
    with pytest.raises(GenPRMError, match=r"requirements-vllm\.txt"):
        make_backend(BackendConfig(backend="vllm", model=str(tiny_model_dir)))


# ----- hf backend -----


def test_left_padding() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert length_order([1, 3, 2, 3]) == [1, 3, 2, 0]


def test_backend_pads_on_the_left(backend: HFBackend) -> None:
    assert backend.tokenizer.padding_side == "left"
    short, long = backend._encode(GenerationRequest(prompt="1")), backend._encode(chat_requests(1)[0])
    ids, _ = left_pad([long, short], backend.pad_id)
    assert ids[1, -len(short) :].tolist() == short and set(ids[1, : -len(short)].tolist()) == {backend.pad_id}


@pytest.mark.slow
def test_batched_equals_one_at_a_time_and_keeps_order(backend: HFBackend) -> None:
    requests = [*chat_requests(10), GenerationRequest(prompt="Step 1: 3 + 4 =")]
    batched = backend.generate(requests, GREEDY)
    singles = [backend.generate([r], GREEDY)[0] for r in requests]
    assert [r.samples[0] for r in batched] == [r.samples[0] for r in singles]
    expected_lengths = [len(backend._encode(r)) for r in requests]
    assert [r.samples[0].num_prompt_tokens for r in batched] == expected_lengths
    assert len(set(expected_lengths)) > 3  # the sort by length really reordered them
    assert len({r.samples[0].text for r in batched}) > 5  # distinct outputs, so order is checkable


def test_same_seed_same_samples(backend: HFBackend) -> None:
    requests = chat_requests(5)
    params = SamplingParams(temperature=1.0, max_tokens=16, seed=7, n=2)
    first, again = backend.generate(requests, params), backend.generate(requests, params)
    assert first == again
    other = backend.generate(requests, SamplingParams(temperature=1.0, max_tokens=16, seed=8, n=2))
    assert other != first


def test_n_samples_per_request(backend: HFBackend) -> None:
    results = backend.generate(chat_requests(3), SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=0))
    assert [len(r.samples) for r in results] == [4, 4, 4]
    assert all(len({s.text for s in r.samples}) > 1 for r in results)
    greedy = backend.generate(chat_requests(1), SamplingParams(n=3, temperature=0.0, max_tokens=16))
    assert len({s.text for s in greedy[0].samples}) == 1


def _stop_candidate(text: str) -> str | None:
    """An ASCII letter or digit that first occurs past the start of ``text``."""
    for i, ch in enumerate(text):
        if i > 0 and ch.isascii() and ch.isalnum() and ch not in text[:i]:
            return ch
    return None


@pytest.mark.slow
def test_stop_strings_cut_the_text(backend: HFBackend) -> None:
    requests = chat_requests(12)
    plain = backend.generate(requests, SamplingParams(temperature=0.0, max_tokens=40))
    index, stop = next(
        (i, s) for i, r in enumerate(plain) if (s := _stop_candidate(r.samples[0].text)) is not None
    )
    full = plain[index].samples[0]
    [cut] = backend.generate([requests[index]], SamplingParams(temperature=0.0, max_tokens=40, stop=[stop]))
    sample = cut.samples[0]
    assert sample.text == full.text[: full.text.index(stop)]
    assert sample.finish_reason == "stop"
    assert sample.num_generated_tokens <= full.num_generated_tokens


def test_finish_reasons(backend: HFBackend) -> None:
    results = backend.generate(chat_requests(12), SamplingParams(temperature=0.0, max_tokens=40))
    reasons = {r.samples[0].finish_reason for r in results}
    assert reasons == {"stop", "length"}  # the tiny model ends some answers with EOS, not others
    for result in results:
        sample = result.samples[0]
        assert (sample.num_generated_tokens == 40) == (sample.finish_reason == "length")
        assert "<|im_end|>" not in sample.text


def test_logprobs(backend: HFBackend) -> None:
    results = backend.generate(chat_requests(3), SamplingParams(temperature=0.0, max_tokens=12, logprobs=3))
    for result in results:
        sample = result.samples[0]
        assert sample.logprobs is not None and len(sample.logprobs) == sample.num_generated_tokens
        for item in sample.logprobs:
            assert 1 <= len(item.top) <= 3 and item.logprob <= 0
            assert item.logprob == pytest.approx(max(item.top.values()), abs=1e-5)  # greedy takes the top
            assert sum(torch.tensor(list(item.top.values())).exp().tolist()) <= 1 + 1e-5
    none = backend.generate(chat_requests(1), GREEDY)
    assert none[0].samples[0].logprobs is None


def test_prefill_is_not_returned(backend: HFBackend) -> None:
    messages = arithmetic_prompts(1)[0]
    prefill = "Step 1:"
    [with_prefill] = backend.generate([GenerationRequest(messages=messages, prefill=prefill)], GREEDY)
    as_text = render_prompt(backend.tokenizer, GenerationRequest(messages=messages)) + prefill
    assert as_text.endswith("<|im_start|>assistant\nStep 1:")
    [raw] = backend.generate([GenerationRequest(prompt=as_text)], GREEDY)
    assert with_prefill.samples[0].text == raw.samples[0].text
    assert not with_prefill.samples[0].text.startswith(prefill)


# ----- vLLM mappings (no vLLM needed) -----


def test_to_vllm_sampling_kwargs() -> None:
    params = SamplingParams(n=4, temperature=0.7, top_p=0.9, max_tokens=64, stop=["\n\n"], seed=9, logprobs=2)
    assert to_vllm_sampling_kwargs(params, 3) == {
        "n": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": -1,
        "max_tokens": 64,
        "stop": ["\n\n"],
        "seed": 3,
        "logprobs": 2,
    }
    assert to_vllm_sampling_kwargs(SamplingParams(top_k=20))["top_k"] == 20
    assert to_vllm_sampling_kwargs(params)["seed"] is None  # the seed is per request, never the call's


def test_seeds_mean_the_same_on_every_backend() -> None:
    requests = [GenerationRequest(prompt="p")] * 3 + [GenerationRequest(prompt="p", seed=7)]
    seeds = request_seeds(requests, SamplingParams(seed=5))
    assert len(set(seeds[:3])) == 3 and seeds[3] == 7  # identical prompts never share a seed
    assert seeds == request_seeds(requests, SamplingParams(seed=5))  # and the call is reproducible
    assert request_seeds(requests[:1], SamplingParams()) == [None]
    assert derive_seed(5, 0) == derive_seed(5, 0) != derive_seed(5, 1) and 0 <= derive_seed(5, 0) < 2**62
    assert seeding_for("auto", cpu=True) == "none" and seeding_for("auto", cpu=False) == "request"
    assert seeding_for("none", cpu=False) == "none" and seeding_for("request", cpu=True) == "request"


def test_hf_seeds_once_per_call(backend: HFBackend, tiny_model_dir: Path) -> None:
    assert backend.seeding == "call"
    same = [GenerationRequest(messages=arithmetic_prompts(1)[0])] * 4
    params = SamplingParams(temperature=1.0, max_tokens=16, seed=3)
    first = backend.generate(same, params)
    assert len({r.samples[0].text for r in first}) > 1  # identical prompts: independent samples
    assert backend.generate(same, params) == first
    seeded = [GenerationRequest(messages=arithmetic_prompts(1)[0], seed=s) for s in range(4)]
    assert backend.generate(seeded, params) == backend.generate(seeded, params)
    assert backend.generate(seeded, params) != first


def test_hf_request_seeds_give_each_sample_its_own_stream(backend: HFBackend, tiny_model_dir: Path) -> None:
    """seeds: request (the engine, one generator per sample): sample i of seed s is the draw s + i, so n=8
    in one call equals n=4 at s and n=4 at s + 4 in calls with other requests beside them."""
    cfg = BackendConfig(model=str(tiny_model_dir), seeds="request", batch_size=3)
    seeded = HFBackend(cfg, backend.model, backend.tokenizer)
    assert seeded.seeding == "request"
    prompt = arithmetic_prompts(2)
    params = SamplingParams(n=8, temperature=1.0, max_tokens=16)
    [whole] = seeded.generate([GenerationRequest(messages=prompt[0], seed=40)], params)
    four = dataclasses.replace(params, n=4)
    other = GenerationRequest(messages=prompt[1], seed=7)
    head = seeded.generate([other, GenerationRequest(messages=prompt[0], seed=40)], four)[1]
    tail = seeded.generate([GenerationRequest(messages=prompt[0], seed=44), other], four)[0]
    assert [s.text for s in whole.samples] == [s.text for s in head.samples + tail.samples]
    assert len({s.text for s in whole.samples}) > 1


def test_token_texts_do_not_drift_after_non_ascii(backend: HFBackend) -> None:
    tok = backend.tokenizer
    text = "café ≠ naïve: $\\boxed{No}$ ok"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some token holds part of a character
    texts = token_texts(tok, ids)
    assert len(texts) == len(ids) and "".join(texts) == tok.decode(ids) == text


def test_hf_logprob_tokens_join_to_the_text(backend: HFBackend) -> None:
    results = backend.generate(
        chat_requests(6), SamplingParams(temperature=1.0, max_tokens=24, logprobs=2, seed=1)
    )
    for result in results:
        sample = result.samples[0]
        assert sample.logprobs is not None
        joined = "".join(t.token for t in sample.logprobs)
        assert joined.startswith(sample.text)  # the text, then at most the EOS token's text


def _lp(logprob: float, rank: int, text: str) -> SimpleNamespace:
    return SimpleNamespace(logprob=logprob, rank=rank, decoded_token=text)


def test_from_vllm_output() -> None:
    completions = [
        SimpleNamespace(
            index=1, text="b", token_ids=[9], finish_reason="length", logprobs=[{9: _lp(-2.0, 3, "b")}]
        ),
        SimpleNamespace(
            index=0,
            text="a",
            token_ids=[5, 2],
            finish_reason="stop",
            logprobs=[
                {5: _lp(-0.1, 1, "a"), 6: _lp(-2.5, 2, "c")},
                {2: _lp(-0.3, 1, ""), 7: _lp(-1.6, 2, "d"), 8: _lp(-4.0, 3, "e")},
            ],
        ),
    ]
    output = SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=completions)
    result = from_vllm_output(output, logprobs=2)
    first, second = result.samples
    assert (first.text, first.finish_reason, first.num_prompt_tokens, first.num_generated_tokens) == (
        "a",
        "stop",
        3,
        2,
    )
    assert first.logprobs is not None and first.logprobs[1].top == {"": -0.3, "d": -1.6}
    assert second.finish_reason == "length"
    assert second.logprobs is not None and second.logprobs[0].token == "b" and second.logprobs[0].top == {}
    assert from_vllm_output(output).samples[0].logprobs is None
    aborted = SimpleNamespace(
        prompt_token_ids=[1], outputs=[SimpleNamespace(**{**vars(completions[0]), "finish_reason": "abort"})]
    )
    with pytest.raises(GenPRMError, match="abort"):
        from_vllm_output(aborted)
