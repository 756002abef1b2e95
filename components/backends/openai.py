"""Generation through any OpenAI-compatible HTTP server (``vllm serve``, SGLang, ``transformers serve``).

``OpenAIBackend(cfg)`` posts to ``cfg.base_url`` (the OpenAI SDK convention: it ends in ``/v1``) with
httpx, at most ``cfg.max_concurrency`` requests in flight (a thread pool), each with ``cfg.timeout_s``
and up to ``cfg.max_retries`` retries with exponential backoff on connection errors, timeouts, HTTP 5xx
and 429 (``Retry-After`` is honoured). Other 4xx answers fail at once with the server's message.

Several servers (``cfg.base_urls``, e.g. one ``vllm serve`` per GPU node): each request goes to the
least-loaded server (fewest requests in flight, then fewest sent: round-robin when idle), never more
than ``cfg.max_concurrency_per_server`` in flight on one server (:class:`ServerPool`). A request that
fails on a server (connection error, timeout, 5xx, 429) is retried at once on another one; the backoff
sleep comes only when every server has failed it. A failing server is avoided for a cooldown that
doubles with its consecutive failures (at most 30 s) while others are available.

Prompts: when the tokenizer of ``cfg.model`` (with a chat template) can be loaded locally (a model
directory, or a cached or reachable hub id; set ``HF_HUB_OFFLINE=1`` offline), every request goes to
``/v1/completions`` with the prompt rendered here from the chat template plus the prefill, so every
server sees exactly the same text. Without one, raw prompts still go to ``/v1/completions`` and chat
messages without a prefill go to ``/v1/chat/completions``; messages with a prefill are an error.
``cfg.model`` is also the ``model`` field of every request: it must be the server's model name
(``transformers serve DIR`` and ``vllm serve DIR`` both use DIR exactly as given on their command line).

Servers differ, and the backend measures what they do instead of trusting them:

- seeds: every request carries its own seed (``request_seeds`` in ``components.backends.base``), so two
  requests with the same prompt never get the same samples; ``seeding`` is "request". With
  ``cfg.seeds: none`` no seed is sent at all (``seeding`` "none"): for vLLM on CPU, whose engine dies on a
  seeded request whose prompt is prefilled in chunks ("CPU Generator does not use offset"); unseeded
  requests are still independent draws, so Maj@N stays diverse, only not reproducible.
- ``n``: a server that returns fewer choices than asked (``transformers serve`` ignores ``n``) gets extra
  single-sample requests until there are ``n``; sample ``i`` then uses seed ``seed + i`` (vLLM's own rule
  for ``n`` > 1), so seeded samples still differ. ``supports_n`` records what was seen (None until a
  request with n > 1).
- ``logprobs``: a server that answers without them raises ``CapabilityError``; no fake numbers.
  ``supports_logprobs`` records what was seen.
- stop strings: the text is also cut here, before the first stop string (``transformers serve`` leaves
  it in), and the finish reason is then "stop".
- ``top_k`` is not an OpenAI field; it is sent only when > 0 (vLLM and SGLang accept it), and a server
  that rejects it raises ``CapabilityError``.

Token counts come from the server's ``usage`` (one choice per response) or its logprobs; with several
choices per response and no logprobs they are counted with the local tokenizer (approximate).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from components.backends.base import (
    Backend,
    BackendConfig,
    CapabilityError,
    GenerationRequest,
    GenerationResult,
    Sample,
    SamplingParams,
    Seeding,
    TokenLogprob,
    cut_at_stop,
    looks_like_path,
    render_prompt,
    request_seeds,
    sample_seed,
)
from components.backends.window import served_window
from components.platform.errors import ConfigError, GenPRMError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Call:
    """One HTTP request: which request it serves, how many samples it asks for, with which seed."""

    request: int
    n: int
    seed: int | None


@dataclass
class _Server:
    url: str
    in_flight: int = 0
    sent: int = 0
    failures: int = 0  # consecutive
    down_until: float = 0.0  # monotonic time until which the server is avoided
    peak: int = field(default=0)  # most requests in flight at once, as seen here


class ServerPool:
    """The servers behind the backend: least-loaded choice under a per-server bound, failover."""

    MAX_COOLDOWN_S = 30.0

    def __init__(self, urls: list[str], per_server: int, cooldown_s: float = 1.0) -> None:
        self.servers = [_Server(u.rstrip("/")) for u in urls]
        self.per_server = per_server if per_server > 0 else None
        self.cooldown_s = cooldown_s
        self.cond = threading.Condition()

    def acquire(self, avoid: set[str]) -> _Server:
        """A slot on the least-loaded server not in ``avoid`` (any server when all are); blocks when full."""
        with self.cond:
            while True:
                candidates = [s for s in self.servers if s.url not in avoid] or self.servers
                free = [s for s in candidates if self.per_server is None or s.in_flight < self.per_server]
                if free:
                    now = time.monotonic()
                    best = min(free, key=lambda s: (s.down_until > now, s.in_flight, s.sent))
                    best.in_flight += 1
                    best.sent += 1
                    best.peak = max(best.peak, best.in_flight)
                    return best
                self.cond.wait()

    def release(self, server: _Server, ok: bool) -> None:
        """Free the slot; a failure puts the server on a cooldown, a success clears it."""
        with self.cond:
            server.in_flight -= 1
            if ok:
                server.failures, server.down_until = 0, 0.0
            else:
                server.failures += 1
                cooldown = min(self.MAX_COOLDOWN_S, self.cooldown_s * 2 ** (server.failures - 1))
                server.down_until = time.monotonic() + cooldown
            self.cond.notify_all()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per server: requests sent, the peak in flight, consecutive failures."""
        with self.cond:
            return {s.url: {"sent": s.sent, "peak": s.peak, "failures": s.failures} for s in self.servers}


def load_local_tokenizer(model: str) -> Any:
    """The tokenizer of ``model`` if it can be loaded here, else None (logged)."""
    if looks_like_path(model) and not Path(model).expanduser().is_dir():
        log.info("no local model directory %s: prompts are sent without a local chat template", model)
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model)
    except Exception as exc:  # any hub or parsing failure just means "no local tokenizer"
        log.warning("cannot load the tokenizer of %r (%s): using the server's chat template", model, exc)
        return None


class OpenAIBackend(Backend):
    """An OpenAI-compatible server over HTTP; see the module docstring."""

    name = "openai"

    def __init__(self, cfg: BackendConfig, tokenizer: Any = None, backoff_s: float = 0.5) -> None:
        urls = cfg.server_urls
        if not urls:
            raise ConfigError(
                "backend.base_url: required for the openai backend (e.g. http://host:8000/v1), "
                "or backend.base_urls for several servers"
            )
        self.cfg = cfg
        self.seeding: Seeding = "none" if cfg.seeds == "none" else "request"
        self.servers = ServerPool(urls, cfg.max_concurrency_per_server, cooldown_s=backoff_s)
        self.base_url = ", ".join(s.url for s in self.servers.servers)  # for messages
        self.backoff_s = backoff_s
        self.tokenizer = tokenizer if tokenizer is not None else load_local_tokenizer(cfg.model)
        self.supports_n: bool | None = None
        self.supports_logprobs: bool | None = None
        self._window: int | None = None
        self._window_asked = False
        key = os.environ.get(cfg.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        width = max(1, cfg.max_concurrency)
        limits = httpx.Limits(max_connections=width, max_keepalive_connections=width)
        self.client = httpx.Client(timeout=httpx.Timeout(cfg.timeout_s), headers=headers, limits=limits)
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.max_concurrency), thread_name_prefix="openai")

    # ----- the interface -----

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        """One result per request, in order; fills ``n`` with extra requests where the server ignores it."""
        bodies = [self._body(r, params) for r in requests]
        seeds = request_seeds(requests, params) if self.seeding == "request" else [None] * len(requests)
        samples: list[list[Sample]] = [[] for _ in requests]
        calls = [c for r in range(len(requests)) for c in self._first_calls(r, params, seeds[r])]
        while calls:
            answers = list(self.pool.map(lambda c: (c, self._run(c, bodies[c.request], params)), calls))
            calls = []
            for call, got in answers:
                if not got:
                    raise GenPRMError(f"{self.base_url}: the server returned no choices")
                samples[call.request].extend(got)
                if call.n > 1:
                    self.supports_n = len(got) >= call.n
            for r, have in enumerate(samples):
                calls.extend(self._fill_calls(r, len(have), params, seeds[r]))
        return [GenerationResult(s[: params.n]) for s in samples]

    def context_window(self) -> int | None:
        """The servers' ``max_model_len`` (``components/backends/window.py``), asked once."""
        if not self._window_asked:
            self._window = served_window(self.client, [s.url for s in self.servers.servers], self.cfg.model)
            self._window_asked = True
        return self._window

    def close(self) -> None:
        """Close the HTTP client and the worker threads."""
        self.pool.shutdown(wait=True)
        self.client.close()

    # ----- planning -----

    def _first_calls(self, request: int, params: SamplingParams, seed: int | None) -> list[_Call]:
        if params.n == 1 or self.supports_n is not False:
            return [_Call(request, params.n, seed)]
        return [_Call(request, 1, sample_seed(seed, i)) for i in range(params.n)]

    def _fill_calls(self, request: int, have: int, params: SamplingParams, seed: int | None) -> list[_Call]:
        if have >= params.n:
            return []
        return [_Call(request, 1, sample_seed(seed, i)) for i in range(have, params.n)]

    def _body(self, request: GenerationRequest, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        """(endpoint, JSON body without n/seed) for one request."""
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.top_k > 0:
            body["top_k"] = params.top_k
        local_template = getattr(self.tokenizer, "chat_template", None) is not None
        use_chat = request.messages is not None and not local_template
        if use_chat:
            if request.prefill:
                raise GenPRMError(
                    f"a prefill needs the chat template locally, but no tokenizer with a chat template "
                    f"could be loaded for {self.cfg.model!r}"
                )
            body["messages"] = request.messages
            if params.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = params.logprobs
            return "/chat/completions", body
        body["prompt"] = render_prompt(self.tokenizer, request)
        if params.logprobs is not None:
            body["logprobs"] = params.logprobs
        return "/completions", body

    # ----- one call -----

    def _run(self, call: _Call, planned: tuple[str, dict[str, Any]], params: SamplingParams) -> list[Sample]:
        endpoint, body = planned
        payload = {**body, "n": call.n}
        if call.seed is not None:
            payload["seed"] = call.seed
        answer = self._post(endpoint, payload)
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        usage = answer.get("usage") or {}
        return [self._sample(c, endpoint, usage, len(choices), params) for c in choices]

    def _post(self, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST with retries on connection errors, timeouts, 5xx and 429: on another server first."""
        last, url = "", self.base_url + endpoint
        tried: set[str] = set()  # servers that failed this request since the last backoff sleep
        for attempt in range(self.cfg.max_retries + 1):
            wait = self.backoff_s * 2**attempt
            server = self.servers.acquire(tried)
            url, ok = server.url + endpoint, False
            try:
                resp = self.client.post(url, json=payload)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                ok = resp.status_code < 500 and resp.status_code != 429  # the server itself is fine
                if resp.status_code < 400:
                    return dict(resp.json())
                if ok:
                    raise self._client_error(url, resp, payload)
                last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                wait = max(wait, _retry_after(resp))
            finally:
                self.servers.release(server, ok)
            tried.add(server.url)
            if attempt < self.cfg.max_retries:
                every = len(tried) >= len(self.servers.servers)
                when = f"in {wait:.1f}s" if every else "now, on another server"
                log.warning("%s: %s; retry %d %s", url, last, attempt + 1, when)
                if every:
                    time.sleep(wait)
                    tried.clear()
        raise GenPRMError(f"{url}: failed after {self.cfg.max_retries + 1} attempts; last error: {last}")

    @staticmethod
    def _client_error(url: str, resp: httpx.Response, payload: dict[str, Any]) -> GenPRMError:
        detail = resp.text[:500]
        if "top_k" in payload and "top_k" in detail:
            return CapabilityError(f"{url}: the server rejects top_k (HTTP {resp.status_code}: {detail})")
        return GenPRMError(f"{url}: HTTP {resp.status_code}: {detail}")

    # ----- parsing -----

    def _sample(
        self,
        choice: dict[str, Any],
        endpoint: str,
        usage: dict[str, Any],
        n_choices: int,
        params: SamplingParams,
    ) -> Sample:
        chat = endpoint == "/chat/completions"
        text = ((choice.get("message") or {}).get("content") if chat else choice.get("text")) or ""
        logprobs = self._logprobs(choice, chat, params)
        text, cut = cut_at_stop(text, params.stop)
        reason: Literal["stop", "length"] = "length" if choice.get("finish_reason") == "length" else "stop"
        if cut:
            reason = "stop"
            logprobs = _trim_logprobs(logprobs, params.stop)
        return Sample(
            text=text,
            finish_reason=reason,
            num_prompt_tokens=int(usage.get("prompt_tokens") or 0),
            num_generated_tokens=self._count(text, logprobs, usage, n_choices),
            logprobs=logprobs,
        )

    def _logprobs(
        self, choice: dict[str, Any], chat: bool, params: SamplingParams
    ) -> list[TokenLogprob] | None:
        if params.logprobs is None:
            return None
        raw = choice.get("logprobs")
        if chat and raw is not None:
            raw = raw.get("content")
        if raw is None:
            self.supports_logprobs = False
            raise CapabilityError(
                f"{self.base_url}: the server ignores logprobs (its answer has none); logprobs are "
                "unsupported by this server - use a vLLM/SGLang server or the hf backend"
            )
        self.supports_logprobs = True
        return _chat_logprobs(raw) if chat else _completion_logprobs(raw)

    def _count(
        self, text: str, logprobs: list[TokenLogprob] | None, usage: dict[str, Any], n_choices: int
    ) -> int:
        if logprobs is not None:
            return len(logprobs)
        if n_choices == 1 and usage.get("completion_tokens") is not None:
            return int(usage["completion_tokens"])
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return int(usage.get("completion_tokens") or 0) // max(1, n_choices)


def _retry_after(resp: httpx.Response) -> float:
    try:
        return min(60.0, float(resp.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0


def _completion_logprobs(raw: dict[str, Any]) -> list[TokenLogprob]:
    """Legacy completions format: tokens, token_logprobs, top_logprobs (list of {token: logprob})."""
    tops = raw.get("top_logprobs") or [None] * len(raw.get("tokens", []))
    return [
        TokenLogprob(token=tok, logprob=float(lp if lp is not None else 0.0), top=dict(top or {}))
        for tok, lp, top in zip(raw.get("tokens", []), raw.get("token_logprobs", []), tops, strict=False)
    ]


def _chat_logprobs(content: list[dict[str, Any]]) -> list[TokenLogprob]:
    """Chat format: [{token, logprob, top_logprobs: [{token, logprob}]}]."""
    return [
        TokenLogprob(
            token=item["token"],
            logprob=float(item["logprob"]),
            top={t["token"]: float(t["logprob"]) for t in item.get("top_logprobs") or []},
        )
        for item in content
    ]


def _trim_logprobs(logprobs: list[TokenLogprob] | None, stop: list[str]) -> list[TokenLogprob] | None:
    """Keep the tokens up to the one that completes the first stop string (all, if none is seen)."""
    if logprobs is None:
        return None
    text = ""
    for i, item in enumerate(logprobs):
        text += item.token
        if cut_at_stop(text, stop)[1]:
            return logprobs[: i + 1]
    return logprobs
