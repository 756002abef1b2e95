"""The generation interface every backend implements, its config, and the factory that picks one.

A backend turns a batch of requests (a raw prompt or chat messages, optionally with a prefilled start of
the assistant turn) into samples, with the same semantics everywhere:

- ``messages`` are rendered with the tokenizer's chat template (``add_generation_prompt=True``) and the
  ``prefill`` text is appended to the open assistant turn; the returned text is only what the model
  generated after it (never the prompt or the prefill).
- Stop strings cut the text before the first stop string and give ``finish_reason="stop"``; ending on EOS
  is ``"stop"`` too; running into ``max_tokens`` is ``"length"``.
- ``logprobs=k`` returns, for each generated token, its log-probability and the ``k`` most likely tokens.
  The token texts, concatenated, are the generated text as far as it goes (a token that only holds part
  of a multi-byte character may be empty or hold a replacement character, but ASCII text around it is
  never shifted), so a position found in the token texts maps to a token.

Seeds (the same meaning for every backend; ``Backend.seeding`` says which of them a backend gives):

- Every sample is an independent draw. Two requests with the same prompt in one call, and the ``n``
  samples of one request, are never copies of each other because they share a seed. (Maj@N relies on
  this: its N critiques of a step start from the same prompt.)
- A request's seed is ``GenerationRequest.seed`` when set, else ``derive_seed(params.seed, index)`` for
  the request at ``index`` of the call (when ``params.seed`` is set), else none. Sample ``i`` of a
  request with seed ``s`` uses ``s + i`` (vLLM's own rule for ``n`` > 1), so ``n=3, seed=s`` gives the
  same samples as three requests with seeds ``s``, ``s + 1``, ``s + 2`` where seeds are per request.
- ``seeding == "request"``: a request's samples depend only on its prompt, the sampling params and its
  seed, not on the other requests of the call (vLLM on GPU, in-process or behind ``vllm serve``).
- ``seeding == "call"``: the call as a whole is reproducible (same requests, seeds and params give the same
  samples); a request's samples also depend on its batch-mates (``hf``: one torch seed per call, mixed
  from ``params.seed`` and every request's seed).
- ``seeding == "none"``: no seed reaches the engine; samples are independent but not reproducible. This
  is vLLM on CPU (a seeded request whose prompt is prefilled in chunks kills vLLM 0.32's CPU engine:
  "CPU Generator does not use offset"), chosen with ``BackendConfig.seeds: none`` or detected in-process.

Use it like this::

    cfg = build_config(BackendConfig, {"backend": "hf", "model": "models/policy"}, "generate.backend")
    with make_backend(cfg) as backend:
        [result] = backend.generate([GenerationRequest(messages=[{"role": "user", "content": q}])],
                                    SamplingParams(n=4, temperature=0.7, max_tokens=128, seed=0))
        texts = [s.text for s in result.samples]

Implementations are picked from the plain dict ``BACKENDS``; each factory imports its module lazily, so
``vllm`` is imported only when the ``vllm`` backend is selected.
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from components.platform.config import option
from components.platform.errors import ConfigError, GenPRMError


class CapabilityError(GenPRMError):
    """The backend (or the server behind it) cannot do what was asked, e.g. return logprobs."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; the same meaning for every backend."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise GenPRMError(f"sampling: n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise GenPRMError(f"sampling: temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenPRMError(f"sampling: top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise GenPRMError(f"sampling: top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_tokens < 1:
            raise GenPRMError(f"sampling: max_tokens must be >= 1, got {self.max_tokens}")
        if self.logprobs is not None and self.logprobs < 0:
            raise GenPRMError(f"sampling: logprobs must be >= 0, got {self.logprobs}")
        if any(not s for s in self.stop):
            raise GenPRMError("sampling: stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        """Temperature 0 means greedy decoding."""
        return self.temperature == 0


Seeding = Literal["request", "call", "none"]


def derive_seed(seed: int | None, *parts: object) -> int | None:
    """A 62-bit seed from a base seed and the parts naming one draw (None stays None).

    62 bits leave room for ``seed + i`` (sample ``i``) within a signed 64-bit seed (vLLM, torch).
    """
    if seed is None:
        return None
    text = "\x1f".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 2


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt: exactly one of ``prompt`` (raw text) or ``messages`` (chat), plus an optional prefill.

    ``seed``: this request's own seed (see the module docstring); None takes one derived from the call's.
    """

    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    prefill: str = ""
    seed: int | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise GenPRMError("generation request: give exactly one of prompt or messages")


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token (decoded text), its log-probability, and the top-k alternatives."""

    token: str
    logprob: float
    top: dict[str, float]


@dataclass(frozen=True)
class Sample:
    """One generated continuation."""

    text: str
    finish_reason: Literal["stop", "length"]
    num_prompt_tokens: int
    num_generated_tokens: int
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class GenerationResult:
    """The ``n`` samples for one request, in sample order."""

    samples: list[Sample]


_VLLM_HELP = "vllm only: extra keyword arguments for vllm.LLM, e.g. {tensor_parallel_size: 2}."


@dataclass(frozen=True)
class BackendConfig:
    """Which generation backend to use and how to reach or load the model."""

    backend: Literal["hf", "openai", "vllm"] = option(
        "hf", help="hf: transformers in-process; openai: an OpenAI-compatible server; vllm: vLLM in-process."
    )
    model: str = option(
        "models/policy",
        help="Local model directory or hub id (openai: the served model name; its tokenizer is loaded "
        "locally when available to build prompts).",
    )
    device: str = option("cpu", help="hf only: 'cpu', 'cuda' or 'auto' (cuda when available).")
    dtype: str = option("float32", help="Model dtype: float32, bfloat16, float16 or auto.")
    batch_size: int = option(32, help="hf only: sequences per generate() call (after expanding n).")
    base_url: str | None = option(None, help="openai only: server URL, e.g. http://127.0.0.1:8000/v1.")
    base_urls: list[str] = option(
        [],
        help="openai only: several server URLs (instead of base_url); requests go to the least-loaded one, "
        "and a failing server's requests are retried on another.",
    )
    api_key_env: str = option("OPENAI_API_KEY", help="openai only: environment variable with the API key.")
    max_concurrency: int = option(8, help="openai only: HTTP requests in flight at once (all servers).")
    max_concurrency_per_server: int = option(
        0, help="openai only: at most this many requests in flight on one server (0: no bound of its own)."
    )
    timeout_s: float = option(60.0, help="openai only: timeout of one HTTP request in seconds.")
    max_retries: int = option(
        3, help="openai only: retries on connection errors, timeouts, 5xx and 429 (exponential backoff)."
    )
    vllm: dict[str, Any] = option({}, help=_VLLM_HELP)
    seeds: Literal["auto", "request", "none"] = option(
        "auto",
        help="How seeds reach the engine. auto: the backend's best (hf: one seed per call; vllm: per "
        "request, none on CPU; openai: per request). request: each request sends its own seed. none: "
        "no seed is sent (samples stay independent, not reproducible): set it for vLLM on CPU, whose "
        "engine dies on a seeded request prefilled in chunks.",
    )

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ConfigError(f"backend.max_concurrency: must be at least 1, got {self.max_concurrency}")
        if self.max_concurrency_per_server < 0:
            raise ConfigError(
                f"backend.max_concurrency_per_server: must be >= 0 (0: unbounded), "
                f"got {self.max_concurrency_per_server}"
            )
        if self.base_url and self.base_urls:
            raise ConfigError("backend.base_urls: give base_url or base_urls, not both")
        bad = [u for u in self.base_urls if not str(u).startswith(("http://", "https://"))]
        if bad:
            raise ConfigError(f"backend.base_urls: {bad[0]!r} is not an http(s) URL")
        if len(set(self.base_urls)) != len(self.base_urls):
            raise ConfigError("backend.base_urls: a server is listed twice")

    @property
    def server_urls(self) -> list[str]:
        """The servers of the openai backend: ``base_urls``, else ``[base_url]`` (empty when neither)."""
        return list(self.base_urls) if self.base_urls else ([self.base_url] if self.base_url else [])


class Backend(abc.ABC):
    """A text generator; see the module docstring for the shared semantics.

    ``seeding`` is the seed capability (module docstring): "request", "call" or "none".
    """

    name: str = "backend"
    seeding: Seeding = "call"

    @abc.abstractmethod
    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        """One result per request, in the order of ``requests``, each with ``params.n`` samples."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release the model, threads or connections."""

    def context_window(self) -> int | None:
        """The most tokens (prompt and generated) one sequence may hold; None where unknown."""
        return None

    def prompt_length(self, request: GenerationRequest) -> int | None:
        """The tokens of ``request``'s prompt; None where the backend cannot count them here."""
        tokenizer = getattr(self, "tokenizer", None)
        return None if tokenizer is None else len(prompt_ids(tokenizer, request))

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----- helpers shared by the implementations -----

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def looks_like_path(model: str) -> bool:
    """True when ``model`` names a local directory rather than a hub id.

    Absolute, ``./``, ``../`` and ``~`` paths, paths with two or more components, and ``a/b`` whose
    first component exists locally (``models/policy`` next to a ``models/`` folder) count as paths.
    """
    if model.startswith(("/", "./", "../", "~", ".\\")) or "\\" in model:
        return True
    if not _HUB_ID.match(model):
        return True
    parts = model.split("/")
    return len(parts) == 2 and Path(parts[0]).is_dir()


def check_local_model(model: str) -> None:
    """Raise GenPRMError naming the path when ``model`` is path-like but no such directory exists."""
    if looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise GenPRMError(f"model directory not found: {path}")


def request_seeds(requests: list[GenerationRequest], params: SamplingParams) -> list[int | None]:
    """Each request's seed: its own, else one derived from ``params.seed`` and its index, else None."""
    return [r.seed if r.seed is not None else derive_seed(params.seed, i) for i, r in enumerate(requests)]


def sample_seed(seed: int | None, index: int) -> int | None:
    """The seed of sample ``index`` of a request with ``seed`` (vLLM's rule for n > 1: ``seed + index``)."""
    return None if seed is None else seed + index


def render_prompt(tokenizer: Any, request: GenerationRequest) -> str:
    """The prompt text: chat template (with generation prompt) for messages, then the prefill."""
    if request.messages is not None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise GenPRMError("chat messages given but the model's tokenizer has no chat template")
        text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        return str(text) + request.prefill
    return (request.prompt or "") + request.prefill


def prompt_ids(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """The prompt's token ids as every backend sends them: a chat template already holds its special
    tokens; a raw prompt gets the tokenizer's own (as vLLM adds them)."""
    text = render_prompt(tokenizer, request)
    return [int(i) for i in tokenizer(text, add_special_tokens=request.messages is None)["input_ids"]]


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# ----- the factory -----


def _make_hf(cfg: BackendConfig) -> Backend:
    from components.backends.hf import HFBackend

    check_local_model(cfg.model)
    return HFBackend(cfg)


def _make_openai(cfg: BackendConfig) -> Backend:
    from components.backends.openai import OpenAIBackend

    return OpenAIBackend(cfg)


def _make_vllm(cfg: BackendConfig) -> Backend:
    from components.backends.vllm import VLLMBackend

    check_local_model(cfg.model)
    return VLLMBackend(cfg)


BACKENDS: dict[str, Callable[[BackendConfig], Backend]] = {
    "hf": _make_hf,
    "openai": _make_openai,
    "vllm": _make_vllm,
}


def make_backend(cfg: BackendConfig) -> Backend:
    """Build the backend ``cfg.backend`` names. A path-like ``cfg.model`` must exist (hf, vllm)."""
    try:
        factory = BACKENDS[cfg.backend]
    except KeyError:
        raise GenPRMError(f"unknown backend {cfg.backend!r} (known: {', '.join(sorted(BACKENDS))})") from None
    return factory(cfg)
