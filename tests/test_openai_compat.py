"""The adapter's chat call, both ways it is sent: over its aiohttp session on asyncio, through the
SDK's ``post`` on trio. Same answers, same errors, over loopback HTTP to the embedded server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import openai
import pytest

from adapters.openai import OpenAIProvider
from adapters.server.backends import SimBackend, SimSettings
from adapters.server.embedded import EmbeddedServer
from adapters.transport import env_proxy
from benchmarks.proxy import FaultProxy
from engine.errors import AuthError, ModelNotFoundError, ProviderError
from engine.provider import ChatReply
from engine.types import ChatRequest

KEY = "sk-test-adapter-0123456789"
BACKENDS = ["asyncio", "trio"]


def request(model: str = "small") -> ChatRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "Say yes or no."}], "max_tokens": 4}
    return ChatRequest("predict:0", "0", "predict", body, estimated_tokens=10)


def call(url: str, key: str, chat: ChatRequest, backend: str, timeout_s: float = 60.0) -> ChatReply | ProviderError:
    async def main() -> ChatReply | ProviderError:
        async with OpenAIProvider(url, key, api_key_env="TEST_KEY", timeout_s=timeout_s) as client:
            try:
                return await client.complete(chat)
            except ProviderError as exc:
                return exc

    return anyio.run(main, backend=backend)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = SimSettings(seed=1, models=("small",), rpm=6000, burst_seconds=60)  # headers on every reply, never a 429
    with EmbeddedServer(SimBackend(settings), api_key=KEY) as base_url:
        yield base_url


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_answer_with_usage_and_rate_limits(url: str, backend: str) -> None:
    completion = call(url, KEY, request(), backend)
    assert isinstance(completion, ChatReply), completion
    assert completion.content and completion.model == "sim:small"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert completion.rate_limits is not None and completion.rate_limits.limit_requests == 6000


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wrong_key_is_an_auth_error_that_names_the_variable(url: str, backend: str) -> None:
    wrong = "sk-wrong-key-9876543210"
    error = call(url, wrong, request(), backend)
    assert isinstance(error, AuthError) and error.status_code == 401
    assert "$TEST_KEY" in str(error) and wrong not in str(error)
    assert str(error).startswith("HTTP 401: Error code: 401 - ")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unknown_model_names_the_model(url: str, backend: str) -> None:
    error = call(url, KEY, request("judge-xl"), backend)
    assert isinstance(error, ModelNotFoundError) and error.kind == "no"
    assert "does not serve the model 'judge-xl'" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_closed_port_is_a_transient_connection_error(backend: str) -> None:
    with EmbeddedServer(SimBackend(SimSettings())) as closed:
        pass
    error = call(closed, KEY, request(), backend)
    assert isinstance(error, ProviderError) and (error.kind, error.reason) == ("transient", "connection")


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_s_bounds_the_whole_call_not_each_read(url: str, backend: str) -> None:
    """A reply trickling a byte every 50 ms never lets a read wait 0.3 s, but takes far longer than 0.3 s whole."""
    proxy = FaultProxy(url)
    proxied = proxy.start()
    try:
        proxy.trickle_reply("POST", "/v1/chat/completions", bytes_per_second=20)
        error = call(proxied, KEY, request(), backend, timeout_s=0.3)
    finally:
        proxy.stop()
    assert isinstance(error, ProviderError) and (error.kind, error.reason) == ("transient", "timeout"), error


def test_the_proxy_comes_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("https_proxy", "http_proxy", "no_proxy", "all_proxy", "ALL_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert env_proxy("https://api.example.com/v1/chat/completions") == "http://proxy.internal:3128"
    assert env_proxy("http://127.0.0.1:8000/v1/chat/completions") is None
    monkeypatch.delenv("HTTPS_PROXY")
    assert env_proxy("https://api.example.com/v1/chat/completions") is None


def test_the_sdk_http_client_is_built_for_the_control_plane_only(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Realtime calls on asyncio go over the adapter's own session: the SDK's HTTP client (an SSL
    context, httpcore imported: up to 0.45 s of CPU) is built at the first control-plane call."""
    built: list[object] = []

    class Counted(openai.DefaultAioHttpClient):
        def __init__(self, **kwargs: Any) -> None:
            built.append(self)
            super().__init__(**kwargs)

    monkeypatch.setattr(openai, "DefaultAioHttpClient", Counted)

    async def main() -> tuple[int, int]:
        async with OpenAIProvider(url, KEY) as client:
            for _ in range(3):
                assert isinstance(await client.complete(request()), ChatReply)
            after_calls = len(built)
            assert [job async for job in client.list_batches({"run": "none"}, since=0.0)] == []
            return after_calls, len(built)

    assert anyio.run(main) == (0, 1)
