"""The adapter on OpenAI's Responses API (``api="responses"``), realtime and in batches, and the
move of a model that chat completions refuse: over loopback HTTP to the embedded server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from adapters.openai import OpenAIProvider
from adapters.openai.provider import Api
from adapters.openai.responses_format import to_chat, to_responses
from adapters.server.backends import SimBackend, SimSettings
from adapters.server.embedded import EmbeddedServer, embedded_server
from adapters.server.server import create_app
from adapters.server.wire import error_response
from engine.errors import AuthError, FatalError, ModelNotFoundError, ProviderError
from engine.formats import choice_format, refuses_response_format
from engine.provider import ChatReply
from engine.types import ChatRequest, ChatResult, Failure

from .test_server import genre_messages

KEY = "sk-test-responses-0123456789"
BACKENDS = ["asyncio", "trio"]
# ~1,600 tokens; the questions after it have one length (the cache shares tokens out by characters).
RUBRIC = "Judge the answer by the rubric below.\n" + "Rubric line: be exact and fair. " * 200


def request(model: str = "small", custom_id: str = "judge:0", **changes: Any) -> ChatRequest:
    body = {"model": model, "messages": genre_messages(), "max_tokens": 4, "temperature": 0.0, **changes}
    return ChatRequest(custom_id, custom_id.partition(":")[2], "judge", body, estimated_tokens=100)


def call(url: str, key: str, chat: ChatRequest, backend: str = "asyncio", api: Api = "responses") -> ChatReply | ProviderError:
    async def main() -> ChatReply | ProviderError:
        async with OpenAIProvider(url, key, api_key_env="TEST_KEY", api=api) as client:
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
def test_a_response_reads_as_the_chat_completion_would(url: str, backend: str) -> None:
    chat = call(url, KEY, request(), backend, api="chat")
    response = call(url, KEY, request(), backend)
    assert isinstance(chat, ChatReply) and isinstance(response, ChatReply), (chat, response)
    assert (response.content, response.model, response.usage) == (chat.content, chat.model, chat.usage)
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    assert response.rate_limits is not None and response.rate_limits.limit_requests == 6000


def test_structured_output_goes_as_text_format(url: str) -> None:
    format_request = request(response_format=choice_format(("correct", "incorrect")), max_tokens=40)
    chat, response = call(url, KEY, format_request, api="chat"), call(url, KEY, format_request)
    assert isinstance(chat, ChatReply) and isinstance(response, ChatReply), (chat, response)
    assert json.loads(response.content)["answer"] in ("correct", "incorrect")
    assert response.content == chat.content


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_cached_prompt_tokens_are_read(url: str, api: Api) -> None:
    def judged(answer: str) -> ChatRequest:
        # The server's cache outlives one parametrisation: each API's prompts start apart.
        messages = [{"role": "system", "content": f"{api}: {RUBRIC}"}, {"role": "user", "content": f"Answer: {answer}"}]
        return request(messages=messages, prompt_cache_key=f"rubric-{api}")

    first, second = (call(url, KEY, judged(answer), api=api) for answer in (f"Drama {api}", f"Crime {api}"))
    assert isinstance(first, ChatReply) and isinstance(second, ChatReply), (first, second)
    assert first.usage.cached_tokens == 0
    assert 1024 <= second.usage.cached_tokens < second.usage.prompt_tokens


def test_a_refused_text_format_is_named_as_the_response_format() -> None:
    """A server that cannot take the json_schema format: the engine then tries its next format."""
    backend = SimBackend(SimSettings(response_formats=("text", "json_object")))
    with EmbeddedServer(backend) as base_url:
        error = call(base_url, "x", request(model="m", response_format=choice_format(("a", "b"))))
    assert isinstance(error, ProviderError) and refuses_response_format(error), error


@pytest.mark.parametrize("changes", [{"logprobs": True, "top_logprobs": 3}, {"stop": ["\n"]}, {"n": 2}])
def test_settings_the_responses_api_lacks_are_refused_by_name(url: str, changes: dict[str, Any]) -> None:
    error = call(url, KEY, request(**changes))
    assert isinstance(error, ProviderError) and (error.kind, error.reason) == ("no", "unsupported_setting")
    assert f"`{next(iter(changes))}`" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wrong_key_is_an_auth_error_that_names_the_variable(url: str, backend: str) -> None:
    wrong = "sk-wrong-key-9876543210"
    error = call(url, wrong, request(), backend)
    assert isinstance(error, AuthError) and error.status_code == 401
    assert "$TEST_KEY" in str(error) and wrong not in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unknown_model_names_the_model(url: str, backend: str) -> None:
    error = call(url, KEY, request("judge-xl"), backend)
    assert isinstance(error, ModelNotFoundError) and error.kind == "no"
    assert "does not serve the model 'judge-xl'" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_429_is_a_rate_limit_with_its_retry_after(backend: str) -> None:
    with EmbeddedServer(SimBackend(SimSettings(rpm=1, burst_seconds=60))) as base_url:
        first = call(base_url, "x", request("m"), backend)
        error = call(base_url, "x", request("m"), backend)
    assert isinstance(first, ChatReply)
    assert isinstance(error, ProviderError) and (error.kind, error.status_code) == ("rate_limit", 429)
    assert error.retry_after is not None and 0 < error.retry_after <= 60
    assert error.rate_limits is not None and error.rate_limits.limit_requests == 1


RESPONSES_ONLY = "This model is only supported in v1/responses and not in v1/chat/completions."


@asynccontextmanager
async def served(middleware: Any) -> AsyncIterator[str]:
    """The sim behind our server with ``middleware`` in front of its routes; yields the base URL."""
    app = create_app(SimBackend(SimSettings()), batch_api=False)
    app.middlewares.append(middleware)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def test_a_model_chat_refuses_moves_to_responses_for_good() -> None:
    """As OpenAI answers for a model served only on the Responses API (o1-pro, codex)."""
    paths: list[str] = []

    @web.middleware
    async def responses_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        paths.append(request.path)
        if request.path == "/v1/chat/completions" and (await request.json())["model"] == "pro":
            return error_response(404, RESPONSES_ONLY)
        return await handler(request)

    async with served(responses_only) as base_url, OpenAIProvider(base_url, "x") as client:
        moved = await client.complete(request("pro"))
        again = await client.complete(request("pro", custom_id="judge:1"))
        other = await client.complete(request("small"))
    assert moved.model == again.model == "sim:pro" and other.model == "sim:small"
    assert paths == ["/v1/chat/completions", "/v1/responses", "/v1/responses", "/v1/chat/completions"]


async def test_an_endpoint_without_the_responses_api_stops_the_run() -> None:
    @web.middleware
    async def chat_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/v1/responses":
            return error_response(404, f"Invalid URL ({request.method} {request.path})", code="not_found")
        return await handler(request)

    async with served(chat_only) as base_url, OpenAIProvider(base_url, "x", api="responses") as client:
        with pytest.raises(FatalError) as caught:
            await client.complete(request("m"))
    assert not isinstance(caught.value, ModelNotFoundError)
    assert "has no Responses API" in str(caught.value) and 'endpoint.api = "chat"' in str(caught.value)


async def test_a_batch_on_v1_responses(tmp_path: Path) -> None:
    requests = [request("m", f"judge:{i}", messages=genre_messages(f"Movie {i}"), seed=7) for i in range(8)]
    async with embedded_server(SimBackend(SimSettings())) as base_url, OpenAIProvider(base_url, "x", api="responses") as client:
        lines = [client.encode_line(chat) for chat in requests]
        path = tmp_path / "judge.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        job = await client.create_batch(await client.upload_input(path, path.name), {"run": "r1"})
        for _ in range(2000):  # bounded: about 20 s
            if (job := await client.retrieve_batch(job.id)).terminal:
                break
            await anyio.sleep(0.01)
        files = await client.download_results(job, tmp_path / "judge")
        outcomes = [outcome for file in files for outcome in client.read_results(file)]
        endpoint = (await client.sdk.batches.retrieve(job.id)).endpoint
        decoded = [client.decode_line(line) for line in lines]
        retried = await client.complete(ChatRequest("judge:0", "0", "judge", decoded[0][1], 100))
    assert endpoint == "/v1/responses" and json.loads(lines[0])["url"] == "/v1/responses"
    assert job.status == "completed" and len(outcomes) == 8
    assert all(isinstance(outcome, ChatResult) and outcome.model == "sim:m" for outcome in outcomes)
    by_id = {outcome.custom_id: outcome for outcome in outcomes if isinstance(outcome, ChatResult)}
    # The chat body each line stands for: the seed is not sent, max_tokens is raised to the API's 16.
    expected = [{key: value for key, value in {**chat.body, "max_tokens": 16}.items() if key != "seed"} for chat in requests]
    assert decoded == [(chat.custom_id, body) for chat, body in zip(requests, expected, strict=True)]
    assert retried.content == by_id["judge:0"].content


def test_read_results_reads_both_output_shapes(tmp_path: Path) -> None:
    chat = {"object": "chat.completion", "model": "m", "choices": [{"index": 0, "message": {"content": "yes"}}],
            "usage": {"prompt_tokens": 2000, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 1024}}}
    output = {"type": "message", "content": [{"type": "output_text", "text": "no"}]}
    response = {"object": "response", "status": "completed", "model": "m", "output": [output],
                "usage": {"input_tokens": 3000, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 2048}}}
    empty = {**response, "output": []}
    lines = [
        {"custom_id": "a", "response": {"status_code": 200, "body": chat}, "error": None},
        {"custom_id": "b", "response": {"status_code": 200, "body": response}, "error": None},
        {"custom_id": "c", "response": {"status_code": 200, "body": empty}, "error": None},
    ]
    path = tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    with EmbeddedServer(SimBackend(SimSettings())) as base_url:
        async def read() -> list[Any]:
            async with OpenAIProvider(base_url, "x") as client:
                return list(client.read_results(path))

        a, b, c = anyio.run(read)
    assert isinstance(a, ChatResult) and (a.content, a.usage.prompt_tokens, a.usage.cached_tokens) == ("yes", 2000, 1024)
    assert isinstance(b, ChatResult) and (b.content, b.usage.prompt_tokens, b.usage.cached_tokens) == ("no", 3000, 2048)
    assert isinstance(c, Failure) and c.reason == "empty_response"


def test_the_translation_there_and_back() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be exact."},
            {"role": "developer", "content": "Judge strictly."},
            {"role": "user", "content": [{"type": "text", "text": "Is Drama right?"}]},
            {"role": "assistant", "content": "Let me see."},
            {"role": "user", "content": "Answer."},
        ],
        "max_tokens": 200, "temperature": 0.2, "top_p": 0.9, "seed": 3, "prompt_cache_key": "k",
        "response_format": {"type": "json_object", "schema": {"type": "object"}},
    }
    sent = to_responses(body)
    assert sent == {
        "model": "m",
        "instructions": "Be exact.",
        "input": [
            {"role": "developer", "content": "Judge strictly."},
            {"role": "user", "content": [{"type": "input_text", "text": "Is Drama right?"}]},
            {"role": "assistant", "content": "Let me see."},
            {"role": "user", "content": "Answer."},
        ],
        "temperature": 0.2, "top_p": 0.9, "prompt_cache_key": "k", "max_output_tokens": 200,
        "text": {"format": {"type": "json_object"}},
    }
    back = to_chat(sent)
    assert to_responses(back) == sent
    assert back["messages"] == body["messages"] and "seed" not in back
    with pytest.raises(ProviderError, match="a `tool` message"):
        to_responses({"model": "m", "messages": [{"role": "tool", "content": "x", "tool_call_id": "c"}]})
