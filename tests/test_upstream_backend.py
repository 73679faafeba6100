"""The upstream backend: our server in front of a second one (the sim), through the real SDK."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anthropic
import anyio
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion

from adapters.server.backends import SimBackend, SimSettings
from adapters.server.backends.upstream import UpstreamBackend
from adapters.server.embedded import embedded_server
from tests.test_server import GENRE_SET, genre_messages
from tests.test_server_batches import batch_client, jsonl, lines_of, request_line, settle, submit


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


# An upstream's whole reply: tool calls with null content, logprobs, two choices, a ``length``
# finish, and fields beyond the basics. The gateway must pass every byte of meaning through.
UPSTREAM_REPLY: dict[str, Any] = {
    "id": "chatcmpl-upstream-1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "upstream-model",
    "system_fingerprint": "fp_up",
    "service_tier": "default",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
                ],
            },
            "finish_reason": "tool_calls",
            "logprobs": None,
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "Dra", "refusal": None},
            "finish_reason": "length",
            "logprobs": {
                "content": [
                    {
                        "token": "Dra",
                        "logprob": -0.25,
                        "bytes": [68, 114, 97],
                        "top_logprobs": [{"token": "Dra", "logprob": -0.25, "bytes": [68, 114, 97]}],
                    }
                ],
                "refusal": None,
            },
        },
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "total_tokens": 15,
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}
TOOL_CONVERSATION: dict[str, Any] = {
    "model": "m",
    "messages": [
        {"role": "user", "content": "Look x up."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "x is a drama."},
    ],
    "tools": [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
        }
    ],
    "tool_choice": "auto",
    "n": 2,
    "logprobs": True,
    "top_logprobs": 1,
    "max_tokens": 3,
}


@asynccontextmanager
async def canned_upstream(reply: dict[str, Any]) -> AsyncIterator[tuple[str, list[Any]]]:
    """A plain aiohttp server answering every chat call with ``reply``; yields its URL and the bodies it got."""
    received: list[Any] = []

    async def chat(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1", received
    finally:
        await runner.cleanup()


async def test_the_upstream_reply_passes_through_unchanged() -> None:
    async with canned_upstream(UPSTREAM_REPLY) as (upstream_url, received):
        async with embedded_server(UpstreamBackend(upstream_url)) as url, aiohttp.ClientSession() as http:
            async with http.post(f"{url}/chat/completions", json=TOOL_CONVERSATION) as response:
                status, reply = response.status, await response.json()
    assert status == 200
    assert reply == UPSTREAM_REPLY
    assert received == [TOOL_CONVERSATION]


async def test_batch_lines_carry_the_upstream_reply_unchanged() -> None:
    lines = [request_line(i, body={**TOOL_CONVERSATION, "model": f"m{i}"}) for i in range(3)]
    async with canned_upstream(UPSTREAM_REPLY) as (upstream_url, received):
        async with batch_client(UpstreamBackend(upstream_url)) as client:
            batch = await settle(client, (await submit(client, jsonl(lines))).id)
            output = await lines_of(client, batch.output_file_id)
    assert batch.status == "completed" and len(output) == 3
    assert [line["response"]["body"] for line in output] == [UPSTREAM_REPLY] * 3
    assert sorted(body["model"] for body in received) == ["m0", "m1", "m2"]


@pytest.mark.parametrize(
    "reply",
    [
        {**UPSTREAM_REPLY, "choices": {"index": 0}},
        {**UPSTREAM_REPLY, "choices": [{"index": 0, "message": "text"}]},
        {**UPSTREAM_REPLY, "model": None},
        {**UPSTREAM_REPLY, "usage": {"prompt_tokens": "12", "completion_tokens": 3}},
        {**UPSTREAM_REPLY, "usage": [12, 3]},
        ["not", "an", "object"],
    ],
)
async def test_a_reply_that_is_not_a_chat_completion_is_bad_gateway(reply: Any) -> None:
    async with canned_upstream(reply) as (upstream_url, _):
        async with embedded_server(UpstreamBackend(upstream_url)) as url:
            async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
                with pytest.raises(openai.InternalServerError) as caught:
                    await ask(client)
    assert caught.value.status_code == 502 and caught.value.code == "bad_upstream_reply"


async def test_the_gateway_serves_responses_messages_and_their_streams_and_batches() -> None:
    """Every API shape our server speaks works in front of an upstream that speaks only chat
    completions: the gateway translates, and its batches run their lines upstream."""
    async with embedded_server(SimBackend(SimSettings(seed=5))) as upstream_url:
        async with embedded_server(UpstreamBackend(upstream_url)) as url:
            async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
                response = await client.responses.create(model="m", instructions=GENRES_PROMPT, input="The Godfather")
                async with client.responses.stream(model="m", instructions=GENRES_PROMPT, input="Alien") as events:
                    streamed = await events.get_final_response()
                lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
                          "body": {"model": "m", "instructions": GENRES_PROMPT, "input": f"Movie {i}"}} for i in range(3)]
                uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
                batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses",
                                                    completion_window="24h")
                batch = await settle(client, batch.id)
                outputs = await lines_of(client, batch.output_file_id)
            async with anthropic.AsyncAnthropic(base_url=url.removesuffix("/v1"), api_key="test", max_retries=0) as claude:
                message = await claude.messages.create(model="m", max_tokens=8, system=GENRES_PROMPT,
                                                       messages=[{"role": "user", "content": "The Godfather"}])
                async with claude.messages.stream(model="m", max_tokens=8, system=GENRES_PROMPT,
                                                  messages=[{"role": "user", "content": "Alien"}]) as stream:
                    final = await stream.get_final_message()
                created = await claude.messages.batches.create(requests=[
                    {"custom_id": f"m{i}", "params": {"model": "m", "max_tokens": 8, "system": GENRES_PROMPT,
                                                      "messages": [{"role": "user", "content": f"Movie {i}"}]}}
                    for i in range(3)
                ])
                for _ in range(2000):  # about 20 s at most, as settle()
                    if (polled := await claude.messages.batches.retrieve(created.id)).processing_status == "ended":
                        break
                    await anyio.sleep(0.01)
                results = [result async for result in await claude.messages.batches.results(created.id)]
    assert response.output_text in GENRE_SET and response.model == "sim:m"
    assert streamed.output_text in GENRE_SET
    assert [line["response"]["status_code"] for line in outputs] == [200] * 3
    assert all(line["response"]["body"]["object"] == "response" for line in outputs)
    text = message.content[0]
    assert text.type == "text" and text.text in GENRE_SET and message.usage.input_tokens > 0
    assert final.content[0].type == "text" and final.content[0].text in GENRE_SET
    assert polled.request_counts.succeeded == 3 and sorted(result.custom_id for result in results) == ["m0", "m1", "m2"]
    assert all(result.result.type == "succeeded" for result in results)


GENRES_PROMPT = "Classify the movie into one of these genres: " + ", ".join(sorted(GENRE_SET)) + "."
