"""Tests of the OpenAI-compatible backend: against a real ``transformers serve`` and a scripted fake server.

The real server runs the tiny random model on CPU on a free loopback port. It ignores ``n`` and
``logprobs`` and rejects ``top_k`` (measured with transformers 5.23), so the backend must fill ``n`` with
extra requests and refuse logprobs with ``CapabilityError``. The fake server (``http.server`` in a
thread) answers from a script, to test retries, backoff, timeouts and response parsing; it counts the
requests in flight, so several of them behind ``base_urls`` check the spread, the per-server bound and
the failover (also as counting proxies in front of the real server).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest_backends import arithmetic_prompts, build_tiny_model

from components.backends.base import (
    BackendConfig,
    CapabilityError,
    GenerationRequest,
    SamplingParams,
    make_backend,
)
from components.backends.hf import HFBackend
from components.backends.openai import OpenAIBackend
from components.platform.errors import ConfigError, GenPRMError

NO_MODEL = "/nonexistent/served-model"  # path-like and absent: no local tokenizer, no hub look-up

# ----- a scripted fake server -----

Reply = tuple[int, dict[str, Any] | None]


class FakeServer:
    """Loopback HTTP server; ``reply(path, body, count)`` decides each answer; bodies are recorded."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.models: list[dict[str, Any]] = []  # what GET /v1/models lists
        self.in_flight = 0
        self.peak = 0  # most requests in flight at once
        self.reply: Callable[[str, dict[str, Any], int], Reply] = lambda path, body, count: (404, None)
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    count = len(server.bodies)
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                try:
                    status, payload = server.reply(self.path, body, count)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                if status == 0:  # never answer (until the test ends)
                    server.release.wait(10)
                    return
                data = json.dumps(payload or {"error": "scripted"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # /v1/models: the cards ``server.models`` holds
                data = json.dumps({"object": "list", "data": server.models}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def completion(*texts: str, finish: str = "stop", logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    choices = [
        {"index": i, "text": t, "finish_reason": finish, "logprobs": logprobs} for i, t in enumerate(texts)
    ]
    return {"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 3 * len(texts)}}


def fake_backend(server: FakeServer, **overrides: Any) -> OpenAIBackend:
    cfg = BackendConfig(backend="openai", model=NO_MODEL, base_url=server.url, **overrides)
    return OpenAIBackend(cfg, backoff_s=0.01)


PROMPT = [GenerationRequest(prompt="Step 1:")]


def test_base_url_is_required() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        make_backend(BackendConfig(backend="openai", model=NO_MODEL))


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retries_then_succeeds(fake: FakeServer, status: int) -> None:
    fake.reply = lambda path, body, count: (status, None) if count == 1 else (200, completion(" 7."))
    with fake_backend(fake) as backend:
        [result] = backend.generate(PROMPT, SamplingParams(max_tokens=4))
    assert result.samples[0].text == " 7." and len(fake.bodies) == 2
    assert result.samples[0].num_prompt_tokens == 5 and result.samples[0].num_generated_tokens == 3


def test_gives_up_after_max_retries(fake: FakeServer) -> None:
    fake.reply = lambda path, body, count: (502, None)
    with fake_backend(fake, max_retries=2) as backend, pytest.raises(GenPRMError, match="after 3 attempts"):
        backend.generate(PROMPT, SamplingParams())
    assert len(fake.bodies) == 3


def test_client_errors_are_not_retried(fake: FakeServer) -> None:
    fake.reply = lambda path, body, count: (400, {"detail": "bad prompt"})
    with fake_backend(fake) as backend, pytest.raises(GenPRMError, match=r"HTTP 400.*bad prompt"):
        backend.generate(PROMPT, SamplingParams())
    assert len(fake.bodies) == 1


def test_timeout(fake: FakeServer) -> None:
    fake.reply = lambda path, body, count: (0, None)
    start = time.monotonic()
    with fake_backend(fake, timeout_s=0.3, max_retries=1) as backend:
        with pytest.raises(GenPRMError, match="ReadTimeout"):
            backend.generate(PROMPT, SamplingParams())
        fake.release.set()
    assert time.monotonic() - start < 5 and len(fake.bodies) == 2


def test_fills_n_when_the_server_ignores_it(fake: FakeServer) -> None:
    fake.reply = lambda path, body, count: (200, completion(f"s{body.get('seed')}"))
    seeded = [GenerationRequest(prompt="Step 1:", seed=5)]
    with fake_backend(fake) as backend:
        [result] = backend.generate(seeded, SamplingParams(n=3))
        assert [s.text for s in result.samples] == ["s5", "s6", "s7"]  # sample i: seed + i, as vLLM's n
        assert backend.supports_n is False
        assert sorted((b["n"], b["seed"]) for b in fake.bodies) == [(1, 6), (1, 7), (3, 5)]
        backend.generate(PROMPT, SamplingParams(n=2, seed=0))  # known now: single requests from the start
        assert [b["n"] for b in fake.bodies[3:]] == [1, 1]


def test_identical_prompts_never_share_a_seed(fake: FakeServer) -> None:
    # Maj@N sends N identical prompts in one call: one seed for all would make N copies of one sample.
    fake.reply = lambda path, body, count: (200, completion(f"s{body.get('seed')}"))
    with fake_backend(fake) as backend:
        assert backend.seeding == "request"
        results = backend.generate(PROMPT * 4, SamplingParams(seed=5))
        assert len({r.samples[0].text for r in results}) == 4
        again = backend.generate(PROMPT * 4, SamplingParams(seed=5))
        assert [r.samples[0].text for r in again] == [r.samples[0].text for r in results]  # reproducible
        own = backend.generate(
            [GenerationRequest(prompt="Step 1:", seed=s) for s in (11, 12)], SamplingParams(seed=5)
        )
        assert [r.samples[0].text for r in own] == ["s11", "s12"]  # a request's own seed wins


def test_seeds_none_sends_no_seed(fake: FakeServer) -> None:
    # vLLM on CPU: a seeded request prefilled in chunks kills the engine, so no seed may be sent.
    fake.reply = lambda path, body, count: (200, completion(*[f"t{count}.{i}" for i in range(body["n"])]))
    with fake_backend(fake, seeds="none") as backend:
        assert backend.seeding == "none"
        results = backend.generate([GenerationRequest(prompt="p", seed=3)] * 3, SamplingParams(n=2, seed=5))
    assert all("seed" not in body for body in fake.bodies)
    assert len({s.text for r in results for s in r.samples}) == 6


def test_uses_n_when_the_server_honours_it(fake: FakeServer) -> None:
    fake.reply = lambda path, body, count: (200, completion(*[f"t{i}" for i in range(body["n"])]))
    with fake_backend(fake) as backend:
        [result] = backend.generate(PROMPT, SamplingParams(n=4))
        assert [s.text for s in result.samples] == ["t0", "t1", "t2", "t3"] and backend.supports_n is True
    assert len(fake.bodies) == 1


def test_completion_logprobs_and_client_side_stop(fake: FakeServer) -> None:
    logprobs = {
        "tokens": [" 7", ".", "\n", "x"],
        "token_logprobs": [-0.1, -0.2, -0.3, -0.4],
        "top_logprobs": [{" 7": -0.1, " 8": -2.0}, {".": -0.2}, {"\n": -0.3}, {"x": -0.4}],
    }
    fake.reply = lambda path, body, count: (200, completion(" 7.\nx", logprobs=logprobs))
    with fake_backend(fake) as backend:
        [result] = backend.generate(PROMPT, SamplingParams(logprobs=2, stop=["\n"]))
        assert backend.supports_logprobs is True
    sample = result.samples[0]
    assert sample.text == " 7." and sample.finish_reason == "stop"
    assert sample.logprobs is not None and [t.token for t in sample.logprobs] == [" 7", ".", "\n"]
    assert sample.logprobs[0].top == {" 7": -0.1, " 8": -2.0} and sample.num_generated_tokens == 3
    assert fake.bodies[0]["logprobs"] == 2 and fake.bodies[0]["stop"] == ["\n"]


def test_missing_logprobs_raise_capability_error(fake: FakeServer) -> None:
    fake.reply = lambda path, body, count: (200, completion(" 7."))
    with fake_backend(fake) as backend:
        with pytest.raises(CapabilityError, match="logprobs"):
            backend.generate(PROMPT, SamplingParams(logprobs=1))
        assert backend.supports_logprobs is False


def test_chat_endpoint_without_a_local_tokenizer(fake: FakeServer) -> None:
    content = [{"token": "4", "logprob": -0.5, "top_logprobs": [{"token": "4", "logprob": -0.5}]}]
    message = {"role": "assistant", "content": "4"}
    answer = {
        "choices": [
            {"index": 0, "message": message, "finish_reason": "length", "logprobs": {"content": content}}
        ]
    }
    fake.reply = lambda path, body, count: (200, answer) if path == "/v1/chat/completions" else (404, None)
    chat = [GenerationRequest(messages=[{"role": "user", "content": "2 + 2?"}])]
    with fake_backend(fake) as backend:
        [result] = backend.generate(chat, SamplingParams(logprobs=1, max_tokens=1))
        with pytest.raises(GenPRMError, match="prefill"):
            backend.generate([GenerationRequest(messages=chat[0].messages, prefill="Step")], SamplingParams())
    sample = result.samples[0]
    assert (sample.text, sample.finish_reason) == ("4", "length")
    assert sample.logprobs is not None and sample.logprobs[0].top == {"4": -0.5}
    assert fake.bodies[0]["top_logprobs"] == 1 and fake.bodies[0]["logprobs"] is True


# ----- several servers: spread, per-server bound, failover -----


@pytest.fixture
def fakes() -> Iterator[list[FakeServer]]:
    servers = [FakeServer(), FakeServer()]
    yield servers
    for server in servers:
        server.close()


def _echo(delay_s: float) -> Callable[[str, dict[str, Any], int], Reply]:
    def reply(path: str, body: dict[str, Any], count: int) -> Reply:
        time.sleep(delay_s)
        return 200, completion(f"<{body['prompt']}>")

    return reply


def pool_backend(urls: list[str], **overrides: Any) -> OpenAIBackend:
    cfg = BackendConfig(backend="openai", model=NO_MODEL, base_urls=urls, **overrides)
    return OpenAIBackend(cfg, backoff_s=0.01)


def _prompts(count: int) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=f"p{i}") for i in range(count)]


def test_the_context_window_is_the_smallest_any_server_reports(fakes: list[FakeServer]) -> None:
    fakes[0].models = [{"id": "other", "max_model_len": 64}, {"id": NO_MODEL, "max_model_len": 4096}]
    fakes[1].models = [{"id": NO_MODEL, "max_model_len": 2048}]
    backend = OpenAIBackend(
        BackendConfig(backend="openai", model=NO_MODEL, base_urls=[f.url for f in fakes]), backoff_s=0.01
    )
    assert backend.context_window() == 2048
    assert backend.prompt_length(PROMPT[0]) is None  # no local tokenizer: the loop cannot count
    backend.close()


def test_no_context_window_where_no_server_reports_one(fake: FakeServer) -> None:
    fake.models = [{"id": "another-model", "max_model_len": 64}, {"id": NO_MODEL}]  # transformers serve
    backend = fake_backend(fake)
    assert backend.context_window() is None
    backend.close()


def test_requests_spread_over_servers_within_the_per_server_bound(fakes: list[FakeServer]) -> None:
    for server in fakes:
        server.reply = _echo(0.1)
    backend = pool_backend([f.url for f in fakes], max_concurrency=8, max_concurrency_per_server=2)
    with backend:
        results = backend.generate(_prompts(16), SamplingParams(max_tokens=4))
        stats = backend.servers.stats()
    assert [r.samples[0].text for r in results] == [f"<p{i}>" for i in range(16)]  # order kept
    assert [f.peak for f in fakes] == [2, 2]  # the bound is reached on each server, never passed
    counts = [len(f.bodies) for f in fakes]
    assert sum(counts) == 16 and min(counts) >= 6, counts
    assert [stats[f.url]["sent"] for f in fakes] == counts


def test_one_server_means_no_bound_but_max_concurrency(fake: FakeServer) -> None:
    fake.reply = _echo(0.1)
    with pool_backend([fake.url], max_concurrency=3) as backend:
        backend.generate(_prompts(9), SamplingParams(max_tokens=4))
    assert fake.peak == 3


@pytest.mark.parametrize("failure", ["http-503", "connection-refused"])
def test_a_failing_servers_requests_are_retried_on_another(fakes: list[FakeServer], failure: str) -> None:
    good, bad = fakes
    good.reply = _echo(0.02)
    bad.reply = lambda path, body, count: (503, None)
    bad_url = bad.url if failure == "http-503" else f"http://127.0.0.1:{_free_port()}/v1"
    backend = pool_backend([bad_url, good.url], max_concurrency=4, max_retries=1)
    with backend:
        results = backend.generate(_prompts(12), SamplingParams(max_tokens=4))
        stats = backend.servers.stats()
    assert [r.samples[0].text for r in results] == [f"<p{i}>" for i in range(12)]
    assert len(good.bodies) == 12  # every request, including those that failed on the bad server
    assert stats[bad_url]["sent"] >= 1 and stats[bad_url]["failures"] >= 1
    assert stats[good.url]["failures"] == 0


def test_every_server_failing_still_gives_up(fakes: list[FakeServer]) -> None:
    for server in fakes:
        server.reply = lambda path, body, count: (500, None)
    backend = pool_backend([f.url for f in fakes], max_retries=3)
    with backend, pytest.raises(GenPRMError, match="after 4 attempts"):
        backend.generate(_prompts(1), SamplingParams())
    assert [len(f.bodies) for f in fakes] == [2, 2]  # alternating: a, b, (backoff) a, b


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": "http://a:1/v1", "base_urls": ["http://b:1/v1"]}, "base_url or base_urls"),
        ({"base_urls": ["b:1/v1"]}, "not an http"),
        ({"base_urls": ["http://b:1/v1", "http://b:1/v1"]}, "listed twice"),
        ({"max_concurrency_per_server": -1}, "max_concurrency_per_server"),
        ({"max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_server_pool_config_is_validated(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BackendConfig(backend="openai", model=NO_MODEL, **overrides)


# ----- a real `transformers serve` -----


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_available() -> str | None:
    """None when `transformers serve` can run here, else why not."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        return "transformers[serving] (fastapi, uvicorn, openai) is not installed"
    if not (Path(sys.executable).parent / "transformers").exists():
        return "the transformers CLI is not installed next to this Python"
    return None


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"transformers serve not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of `transformers serve` pinned to the tiny model dir, on CPU, on a free loopback port."""
    reason = _serve_available()
    if reason:
        pytest.skip(reason)
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cli = str(Path(sys.executable).parent / "transformers")
    args = [cli, "serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--device", "cpu", "--dtype", "float32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def remote(served: str, tiny_model_dir: Path) -> Iterator[OpenAIBackend]:
    cfg = BackendConfig(backend="openai", model=str(tiny_model_dir), base_url=served, max_concurrency=4)
    backend = make_backend(cfg)
    assert isinstance(backend, OpenAIBackend) and backend.tokenizer is not None
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def local(tiny_model_dir: Path) -> HFBackend:
    return HFBackend(BackendConfig(model=str(tiny_model_dir), batch_size=8))


def _requests(count: int) -> list[GenerationRequest]:
    return [GenerationRequest(messages=m) for m in arithmetic_prompts(count)]


GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


@pytest.mark.slow
def test_served_greedy_matches_in_process(remote: OpenAIBackend, local: HFBackend) -> None:
    requests = [*_requests(4), GenerationRequest(messages=arithmetic_prompts(1)[0], prefill="Step 1:")]
    served, in_process = remote.generate(requests, GREEDY), local.generate(requests, GREEDY)
    for got, want in zip(served, in_process, strict=True):
        a, b = got.samples[0], want.samples[0]
        assert (a.text, a.finish_reason, a.num_prompt_tokens) == (
            b.text,
            b.finish_reason,
            b.num_prompt_tokens,
        )


@pytest.mark.slow
def test_served_n_is_filled_with_extra_requests(remote: OpenAIBackend) -> None:
    [result] = remote.generate(_requests(1), SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=11))
    assert len(result.samples) == 3
    assert remote.supports_n is False  # transformers serve ignores n: one choice per response
    assert len({s.text for s in result.samples}) > 1  # seeds 11, 12, 13


@pytest.mark.slow
def test_served_logprobs_are_unsupported(remote: OpenAIBackend) -> None:
    with pytest.raises(CapabilityError, match="logprobs are unsupported"):
        remote.generate(_requests(1), SamplingParams(temperature=0.0, max_tokens=4, logprobs=2))
    assert remote.supports_logprobs is False


@pytest.mark.slow
def test_served_top_k_is_rejected(remote: OpenAIBackend) -> None:
    with pytest.raises(CapabilityError, match="top_k"):
        remote.generate(_requests(1), SamplingParams(top_k=5, max_tokens=4))


@pytest.mark.slow
def test_served_stop_strings_are_cut(remote: OpenAIBackend, local: HFBackend) -> None:
    requests = _requests(8)
    plain = local.generate(requests, SamplingParams(temperature=0.0, max_tokens=40))
    for request, result in zip(requests, plain, strict=True):
        text = result.samples[0].text
        stop = next((c for i, c in enumerate(text) if i > 2 and c.isascii() and c.isalnum()), None)
        if stop is None or result.samples[0].finish_reason != "length":
            continue
        params = SamplingParams(temperature=0.0, max_tokens=40, stop=[stop])
        [cut] = remote.generate([request], params)
        assert cut.samples[0].text == text[: text.index(stop)] and cut.samples[0].finish_reason == "stop"
        return
    pytest.fail("no greedy output with a usable stop character")


def _forward(target: str) -> Callable[[str, dict[str, Any], int], Reply]:
    """A reply that passes the request on to the real server (the fake becomes a counting proxy)."""

    def reply(path: str, body: dict[str, Any], count: int) -> Reply:
        resp = httpx.post(target + path.removeprefix("/v1"), json=body, timeout=60)
        return resp.status_code, resp.json()

    return reply


@pytest.mark.slow
def test_served_through_several_servers(
    served: str, tiny_model_dir: Path, local: HFBackend, fakes: list[FakeServer]
) -> None:
    """Two counting proxies in front of the real server and a dead one: bounded, spread, same text."""
    for proxy in fakes:
        proxy.reply = _forward(served)
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    cfg = BackendConfig(
        backend="openai",
        model=str(tiny_model_dir),
        base_urls=[dead, *(f.url for f in fakes)],
        max_concurrency=4,
        max_concurrency_per_server=1,
        max_retries=2,
    )
    requests = _requests(6)
    with OpenAIBackend(cfg, backoff_s=0.05) as backend:
        got = backend.generate(requests, GREEDY)
        stats = backend.servers.stats()
    want = local.generate(requests, GREEDY)
    assert [r.samples[0].text for r in got] == [r.samples[0].text for r in want]
    assert [f.peak for f in fakes] == [1, 1] and all(len(f.bodies) >= 1 for f in fakes)
    assert sum(len(f.bodies) for f in fakes) == 6 and stats[dead]["failures"] >= 1
