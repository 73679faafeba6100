"""The upstream backend: our server in front of a second one (the sim), through the real SDK."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from adapters.local.backends import SimBackend, SimSettings
from adapters.local.backends.upstream import UpstreamBackend
from adapters.local.embedded import embedded_server
from tests.test_server import GENRE_SET, genre_messages


@asynccontextmanager
async def proxied(
    settings: SimSettings = SimSettings(),
    *,
    upstream_key: str | None = None,
    forwarded_key: str | None = None,
    **backend_options: Any,
) -> AsyncIterator[openai.AsyncOpenAI]:
    """A client of our server, whose upstream backend forwards to a sim server."""
    async with embedded_server(SimBackend(settings), api_key=upstream_key) as upstream_url:
        backend = UpstreamBackend(upstream_url, forwarded_key, **backend_options)
        async with embedded_server(backend) as url:
            async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
                yield client


async def ask(client: openai.AsyncOpenAI, model: str = "m", **options: Any) -> ChatCompletion:
    """One genre question through ``client``."""
    messages: Any = genre_messages()
    reply: ChatCompletion = await client.chat.completions.create(model=model, messages=messages, **options)
    return reply


async def test_answers_come_from_the_upstream() -> None:
    schema = {"type": "string", "enum": ["x", "y"]}
    response_format: dict[str, Any] = {
        "type": "json_schema", "json_schema": {"name": "pick", "schema": schema}
    }
    async with proxied(upstream_key="up-key", forwarded_key="up-key") as client:
        reply = await ask(client)
        structured = await ask(client, response_format=response_format)
        listed = [m.id for m in (await client.models.list()).data]
    assert reply.model == "sim:m"
    assert reply.choices[0].message.content in GENRE_SET
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert json.loads(structured.choices[0].message.content or "") in ("x", "y")
    assert listed == ["upstream"]


async def test_upstream_server_errors_reach_the_client() -> None:
    async with proxied(SimSettings(error_rate=1.0)) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await ask(client)
    assert caught.value.status_code in (500, 502, 503)
    assert "simulated" in caught.value.message


async def test_rate_limit_reaches_the_client_with_retry_after() -> None:
    async with proxied(SimSettings(rpm=1, burst_seconds=60)) as client:
        ok = await client.chat.completions.with_raw_response.create(
            model="m", messages=genre_messages()  # type: ignore[arg-type]
        )
        with pytest.raises(openai.RateLimitError) as caught:
            await ask(client)
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    headers = caught.value.response.headers
    assert int(headers["Retry-After"]) > 0 and float(headers["retry-after-ms"]) > 0
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert caught.value.code == "rate_limit_exceeded"


async def test_a_rejected_key_upstream_is_a_401_here() -> None:
    async with proxied(upstream_key="up-key", forwarded_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await ask(client)
    assert caught.value.code == "invalid_api_key"


@pytest.mark.parametrize("settings", [SimSettings(reset_rate=1.0), SimSettings(malformed_rate=1.0)])
async def test_resets_and_unreadable_replies_are_bad_gateway(settings: SimSettings) -> None:
    async with proxied(settings) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await ask(client)
    assert caught.value.status_code == 502


async def test_unreachable_upstream_is_bad_gateway() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        backend = UpstreamBackend(f"http://127.0.0.1:{port}/v1")
        async with embedded_server(backend) as url:
            async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
                with pytest.raises(openai.InternalServerError) as caught:
                    await ask(client)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unreachable"


async def test_slow_upstream_is_gateway_timeout() -> None:
    async with proxied(SimSettings(latency_ms=300), timeout_s=0.05) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await ask(client)
    assert caught.value.status_code == 504


async def test_models_restrict_what_is_forwarded() -> None:
    async with proxied(models=("known",)) as client:
        assert [m.id for m in (await client.models.list()).data] == ["known"]
        with pytest.raises(openai.NotFoundError):
            await ask(client, "other")
        reply = await ask(client, "known")
    assert reply.model == "sim:known"
