"""The embedded server's Anthropic Messages API (``POST /v1/messages``), driven by the official
anthropic SDK over real HTTP; every object it sends is validated by the SDK's own types."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import Message, MessageParam, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import BaseModel, TypeAdapter

from adapters.server.backends import Backend, SimBackend, SimSettings
from adapters.server.embedded import embedded_server
from adapters.server.messages_wire import rate_limit_headers

from .test_server import GENRE_SET, GENRES

MODEL = "claude-test"
SYSTEM = f"Classify the movie into one of these genres: {GENRES}."
VERDICT_TOOL = {
    "name": "answer",
    "description": "The verdict.",
    "input_schema": {
        "type": "object",
        "properties": {"verdict": {"type": "string", "enum": ["correct", "incorrect"]}},
        "required": ["verdict"],
    },
}
# Over 1,024 tokens (the sim counts four characters a token): long enough to be cached.
LONG_RUBRIC = "Judge the answer against the reference. " * 150
_EVENTS: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)


@asynccontextmanager
async def server(backend: Backend | None = None, **options: Any) -> AsyncIterator[str]:
    """The server's root URL (the SDK's ``base_url``: the server's base URL without ``/v1``)."""
    async with embedded_server(backend or SimBackend(SimSettings()), **options) as url:
        yield url.removesuffix("/v1")


@asynccontextmanager
async def client(
    backend: Backend | None = None, *, key: str = "test", timeout: float = 60.0, **options: Any
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with server(backend, **options) as root:
        async with anthropic.AsyncAnthropic(base_url=root, api_key=key, max_retries=0, timeout=timeout) as sdk:
            yield sdk


def exact(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """``data`` validated by the SDK type ``model``, with no field the type does not know."""
    assert set(data) <= set(model.model_fields), set(data) - set(model.model_fields)
    return model.model_validate(data)


async def create(sdk: anthropic.AsyncAnthropic, **params: Any) -> tuple[Message, dict[str, Any], Any]:
    """``(message, its JSON as sent, the response headers)`` for ``messages.create``."""
    raw = await sdk.messages.with_raw_response.create(**{"model": MODEL, "max_tokens": 256, **params})
    data = json.loads(raw.http_response.content)
    message = exact(Message, data)
    assert message == await raw.parse()
    return message, data, raw.http_response.headers


def ask(movie: str = "The Godfather") -> list[MessageParam]:
    return [{"role": "user", "content": f"{movie}: an organized crime dynasty."}]


async def post(root: str, body: Any, *, key: str = "test") -> tuple[int, Any, Any]:
    """``(status, JSON body, headers)`` of a raw ``POST /v1/messages``."""
    async with aiohttp.ClientSession() as http:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
        async with http.post(f"{root}/v1/messages", data=data, headers=headers) as response:
            return response.status, await response.json(content_type=None), response.headers


def assert_error(status: int, data: Any, headers: Any, expected: tuple[int, str]) -> ErrorResponse:
    """An Anthropic error object of the ``expected`` status and type, its request id in a header."""
    error: ErrorResponse = exact(ErrorResponse, data)
    assert (status, error.error.type) == expected
    assert error.request_id is not None and error.request_id.startswith("req_")
    assert headers["request-id"] == error.request_id
    return error


async def test_a_message_answers_through_the_sdk() -> None:
    async with client() as sdk:
        message, data, headers = await create(sdk, system=SYSTEM, messages=ask())
        # The SDK no longer offers the sampling parameters; the API (and this server) still takes them.
        sampling = {"temperature": 0.0, "top_p": 1.0, "top_k": 5}
        again, _, _ = await create(
            sdk, system=[{"type": "text", "text": SYSTEM}], messages=ask(), metadata={"user_id": "u-1"}, extra_body=sampling
        )
    assert message.id.startswith("msg_") and headers["request-id"].startswith("req_")
    assert message.type == "message" and message.role == "assistant" and message.model == f"sim:{MODEL}"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text in GENRE_SET  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    usage = message.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens, usage.service_tier) == (0, 0, "standard")
    assert data["usage"]["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}
    assert again.content[0].text in GENRE_SET  # type: ignore[union-attr]


async def test_a_forced_tool_answers_a_tool_use_with_the_backends_json() -> None:
    verdict = [{"role": "user", "content": "Expected: Drama. Got: Drama. Is the answer correct or incorrect?"}]
    async with client() as sdk:
        forced, _, _ = await create(sdk, messages=verdict, tools=[VERDICT_TOOL], tool_choice={"type": "tool", "name": "answer"})
        single, _, _ = await create(sdk, messages=verdict, tools=[VERDICT_TOOL], tool_choice={"type": "any"})
        free, _, _ = await create(sdk, messages=verdict, tools=[VERDICT_TOOL], tool_choice={"type": "auto"})
    assert forced.stop_reason == single.stop_reason == "tool_use"
    for message in (forced, single):
        (block,) = message.content
        assert block.type == "tool_use" and block.name == "answer" and block.id.startswith("toolu_")
        assert set(block.input) == {"verdict"} and block.input["verdict"] in ("correct", "incorrect")
    assert free.stop_reason == "end_turn" and [block.type for block in free.content] == ["text"]


async def test_stop_sequences_cut_the_answer_where_one_appears() -> None:
    async with client() as sdk:
        whole, _, _ = await create(sdk, messages=ask("Heat"))
        text = whole.content[0].text  # type: ignore[union-attr]
        stop = text[2:4]
        cut, _, _ = await create(sdk, messages=ask("Heat"), stop_sequences=["never there", stop])
        missed, _, _ = await create(sdk, messages=ask("Heat"), stop_sequences=["never there"])
    assert cut.content[0].text == text[: text.index(stop)]  # type: ignore[union-attr]
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop)
    assert cut.usage.output_tokens <= whole.usage.output_tokens
    assert (missed.content, missed.stop_reason, missed.stop_sequence) == (whole.content, "end_turn", None)


async def test_max_tokens_cuts_an_answer_the_backend_did_not() -> None:
    question = [{"role": "user", "content": "Say something."}]
    async with client() as sdk:
        whole, _, _ = await create(sdk, messages=question)
        short, _, _ = await create(sdk, messages=question, max_tokens=2)
    text = whole.content[0].text  # type: ignore[union-attr]
    assert whole.usage.output_tokens > 2
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2
    assert text.startswith(short.content[0].text) and len(short.content[0].text) < len(text)  # type: ignore[union-attr]


async def test_a_cache_breakpoint_writes_then_reads_a_long_prefix() -> None:
    marked = [{"type": "text", "text": LONG_RUBRIC, "cache_control": {"type": "ephemeral"}}]
    async with client() as sdk:
        first, _, _ = await create(sdk, system=marked, messages=ask("Heat"))
        second, _, _ = await create(sdk, system=marked, messages=ask("Alien"))
        plain = [(await create(sdk, system=LONG_RUBRIC + " ", messages=ask(movie)))[0] for movie in ("Heat", "Alien")]
        short = [
            (await create(sdk, system=[{**marked[0], "text": "Be brief."}], messages=ask(movie)))[0]
            for movie in ("Heat", "Alien")
        ]
    written = first.usage.cache_creation_input_tokens
    assert written is not None and written >= 1024 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == written and second.usage.cache_creation_input_tokens == 0
    # The rest of the prompt is input_tokens: the whole prompt is the same either way.
    assert first.usage.input_tokens + written == plain[0].usage.input_tokens
    assert second.usage.input_tokens + written == plain[1].usage.input_tokens
    for message in (*plain, *short):
        assert (message.usage.cache_read_input_tokens, message.usage.cache_creation_input_tokens) == (0, 0)


async def test_a_one_hour_breakpoint_writes_to_the_one_hour_cache() -> None:
    marked = [{"type": "text", "text": LONG_RUBRIC, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    async with client() as sdk:
        _, data, _ = await create(sdk, system=marked, messages=ask())
    written = data["usage"]["cache_creation_input_tokens"]
    assert written >= 1024
    assert data["usage"]["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": written}


async def test_a_top_level_cache_control_is_a_breakpoint_on_the_last_block() -> None:
    async with client() as sdk:
        first, _, _ = await create(sdk, system=LONG_RUBRIC, messages=ask(), cache_control={"type": "ephemeral"})
        again, _, _ = await create(sdk, system=LONG_RUBRIC, messages=ask(), cache_control={"type": "ephemeral"})
        other, _, _ = await create(sdk, system=LONG_RUBRIC, messages=ask("Alien"), cache_control={"type": "ephemeral"})
    written = first.usage.cache_creation_input_tokens
    assert written is not None and written >= 1024 and first.usage.cache_read_input_tokens == 0
    # The breakpoint is after the user's message: the whole prompt is read back, and only the same prompt.
    assert again.usage.cache_read_input_tokens == written and again.usage.input_tokens == 0
    assert other.usage.cache_read_input_tokens == 0 and (other.usage.cache_creation_input_tokens or 0) >= 1024


async def test_an_output_format_answers_json_as_text() -> None:
    schema = VERDICT_TOOL["input_schema"]
    verdict = [{"role": "user", "content": "Expected: Drama. Got: Drama. Is the answer correct or incorrect?"}]
    async with client() as sdk:
        message, _, _ = await create(sdk, messages=verdict, output_config={"format": {"type": "json_schema", "schema": schema}})
    assert message.stop_reason == "end_turn" and [block.type for block in message.content] == ["text"]
    assert json.loads(message.content[0].text)["verdict"] in ("correct", "incorrect")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": MODEL, "messages": ask()}, "max_tokens: Field required"),
        ({"max_tokens": 10, "messages": ask()}, "model: Field required"),
        ({"model": MODEL, "max_tokens": 10}, "messages: Field required"),
        ({"model": MODEL, "max_tokens": 0, "messages": ask()}, "max_tokens: Input should be greater than or equal to 1"),
        ({"model": MODEL, "max_tokens": "9", "messages": ask()}, "max_tokens: Input should be a valid integer"),
        ({"model": MODEL, "max_tokens": 10, "messages": []},
         "messages: List should have at least 1 item after validation, not 0"),
        ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]},
         "messages.0.role: Input should be 'user' or 'assistant'"),
        ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
         "messages.0.content.0.text: Input should be a valid string"),
        ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
         "messages.0.content.0.type: Input should be 'text'"),
        ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": ""}]},
         "messages.0: all messages must have non-empty content"),
        ({"model": MODEL, "max_tokens": 10, "messages": ask(), "temperature": 1.5},
         "temperature: Input should be less than or equal to 1"),
        ({"model": MODEL, "max_tokens": 10, "messages": ask(), "stop_sequences": "END"},
         "stop_sequences: Input should be a valid list"),
        ({"model": MODEL, "max_tokens": 10, "messages": ask(), "seed": 3}, "seed: Extra inputs are not permitted"),
        ({"model": MODEL, "max_tokens": 10, "messages": ask(), "system": [{"type": "text", "text": "x", "cache_control": {}}]},
         "system.0.cache_control.type: Input should be 'ephemeral'"),
        ({"model": MODEL, "max_tokens": 10, "messages": ask(), "tool_choice": {"type": "any"}},
         "tool_choice: tool_choice may only be specified while providing tools"),
        ({"model": MODEL, "max_tokens": 10, "messages": ask(), "tools": [VERDICT_TOOL],
          "tool_choice": {"type": "tool", "name": "x"}},
         "tool_choice.name: Tool 'x' not found in tools"),
        ({"model": MODEL, "max_tokens": 10, "messages": ask(), "tools": [{**VERDICT_TOOL, "input_schema": {"type": "string"}}]},
         "tools.0.input_schema.type: Input should be 'object'"),
        ({"model": MODEL, "max_tokens": 10,
          "system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}] * 5, "messages": ask()},
         "cache_control: A maximum of 4 blocks with cache_control may be provided. Found 5."),
        ({"model": MODEL, "max_tokens": 10, "messages": ask(), "thinking": {"type": "enabled", "budget_tokens": 1024}},
         "thinking: not supported by this server"),
        ({"model": MODEL, "max_tokens": 10, "messages": ask(), "output_config": {"format": {"type": "json_schema"}}},
         "output_config.format.schema: Input should be a valid dictionary"),
        ({"model": MODEL, "max_tokens": 10, "messages": ask(), "tools": [VERDICT_TOOL], "tool_choice": {"type": "any"},
          "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
         "output_config.format: this server cannot answer both"),
        ([1, 2], "body: Input should be a valid dictionary"),
    ],
)
async def test_a_bad_body_is_anthropics_invalid_request_error_naming_the_field(body: Any, message: str) -> None:
    async with server() as root:
        status, data, headers = await post(root, body)
    error = assert_error(status, data, headers, (400, "invalid_request_error"))
    assert error.error.message.startswith(message), error.error.message


async def test_what_is_not_json_is_a_bad_request_and_too_large_is_a_413() -> None:
    async with server(max_body_bytes=4096) as root:
        status, data, headers = await post(root, b"{not json")
        assert_error(status, data, headers, (400, "invalid_request_error"))
        status, data, headers = await post(root, {"model": MODEL, "max_tokens": 10, "messages": ask("x" * 5000)})
        assert_error(status, data, headers, (413, "invalid_request_error"))


async def test_the_sdk_raises_its_own_classes_for_bad_requests_and_unknown_models() -> None:
    async with client(SimBackend(SimSettings(models=(MODEL,)))) as sdk:
        with pytest.raises(anthropic.BadRequestError) as bad:
            await sdk.messages.create(model=MODEL, max_tokens=10, messages=ask(), extra_body={"temperature": 2.0})
        with pytest.raises(anthropic.NotFoundError) as missing:
            await sdk.messages.create(model="claude-nope", max_tokens=10, messages=ask())
    assert bad.value.type == "invalid_request_error" and bad.value.request_id is not None
    assert missing.value.type == "not_found_error" and missing.value.api_message == "model: claude-nope"


async def test_the_key_comes_as_x_api_key_and_a_wrong_one_is_an_authentication_error() -> None:
    async with client(api_key="sk-right", key="sk-right") as sdk:
        message, _, _ = await create(sdk, messages=ask())
        assert message.content
    async with client(api_key="sk-right", key="sk-wrong") as sdk:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await sdk.messages.create(model=MODEL, max_tokens=10, messages=ask())
    body = refused.value.body
    assert isinstance(body, dict)
    assert exact(ErrorResponse, body).error.type == "authentication_error"
    assert "sk-wrong" not in json.dumps(body)


async def test_a_rate_limit_is_a_429_with_anthropics_headers() -> None:
    # One request a minute, a bucket of one: the first is admitted, the next refused.
    async with client(SimBackend(SimSettings(rpm=1, tpm=100_000, burst_seconds=60))) as sdk:
        _, _, admitted = await create(sdk, messages=ask())
        with pytest.raises(anthropic.RateLimitError) as limited:
            await sdk.messages.create(model=MODEL, max_tokens=10, messages=ask())
    assert admitted["anthropic-ratelimit-requests-limit"] == "1"
    assert admitted["anthropic-ratelimit-requests-remaining"] == "0"
    assert admitted["anthropic-ratelimit-tokens-limit"] == "100000"
    assert 0 < int(admitted["anthropic-ratelimit-tokens-remaining"]) < 100_000
    assert not any(name.lower().startswith("x-ratelimit-") for name in admitted)
    headers = limited.value.response.headers
    assert limited.value.type == "rate_limit_error"
    assert int(headers["retry-after"]) >= 1 and "retry-after-ms" not in headers
    assert headers["anthropic-ratelimit-requests-limit"] == "1"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
    assert reset.tzinfo is not None and reset > datetime.now(UTC)


def test_openai_rate_limit_headers_become_anthropics() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    openai_headers = (
        ("x-ratelimit-limit-requests", "500"),
        ("x-ratelimit-remaining-requests", "499"),
        ("x-ratelimit-reset-requests", "6m0s"),
        ("x-ratelimit-limit-tokens", "30000"),
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-ratelimit-reset-tokens", "120ms"),
        ("x-ratelimit-reset-weird", "soon"),
        ("Retry-After", "3"),
        ("retry-after-ms", "2500"),
        ("x-other", "kept"),
    )
    assert dict(rate_limit_headers(openai_headers, now=now)) == {
        "anthropic-ratelimit-requests-limit": "500",
        "anthropic-ratelimit-requests-remaining": "499",
        "anthropic-ratelimit-requests-reset": "2026-01-02T03:10:05Z",
        "anthropic-ratelimit-tokens-limit": "30000",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2026-01-02T03:04:05Z",
        "retry-after": "3",
        "x-other": "kept",
    }
    # A 429 on a limit with no reset header of its own resets after retry-after.
    limited = dict(rate_limit_headers((("Retry-After", "7"), ("x-ratelimit-limit-tokens", "10")), limited="tokens", now=now))
    assert limited["anthropic-ratelimit-tokens-reset"] == "2026-01-02T03:04:12Z"


async def test_backend_errors_are_api_errors_and_its_503_is_a_529_overloaded_error() -> None:
    seen: dict[int, str] = {}
    async with client(SimBackend(SimSettings(error_rate=1.0))) as sdk:
        for i in range(60):
            with pytest.raises(anthropic.InternalServerError) as failed:
                await sdk.messages.create(model=MODEL, max_tokens=10, messages=ask(f"Movie {i}"))
            body = failed.value.body
            assert isinstance(body, dict)
            seen[failed.value.status_code] = exact(ErrorResponse, body).error.type
            if 529 in seen and 500 in seen:
                break
    assert seen[529] == "overloaded_error" and seen[500] == "api_error"
    assert set(seen) <= {500, 502, 529} and seen.get(502, "api_error") == "api_error"


async def test_an_overloaded_error_is_the_sdks_overloaded_error() -> None:
    async with client(SimBackend(SimSettings(error_rate=1.0))) as sdk:
        for i in range(60):
            try:
                await sdk.messages.create(model=MODEL, max_tokens=10, messages=ask(f"Movie {i}"))
            except anthropic.OverloadedError as exc:
                assert exc.status_code == 529 and exc.type == "overloaded_error"
                return
            except anthropic.InternalServerError:
                continue
    raise AssertionError("no 529 in 60 requests")


@pytest.mark.parametrize(
    ("settings", "raised"),
    [
        (SimSettings(reset_rate=1.0), anthropic.APIConnectionError),
        (SimSettings(truncate_rate=1.0), anthropic.APIConnectionError),
        (SimSettings(malformed_rate=1.0), ValueError),  # the SDK's json.loads of the body
        (SimSettings(hang_rate=1.0), anthropic.APITimeoutError),
    ],
)
async def test_backend_faults_reach_the_client_as_the_chat_route_sends_them(
    settings: SimSettings, raised: type[Exception]
) -> None:
    async with client(SimBackend(settings), timeout=2.0) as sdk:
        with pytest.raises(raised):
            await sdk.messages.create(model=MODEL, max_tokens=10, messages=ask())


async def test_an_answer_with_no_content_is_an_empty_message() -> None:
    async with client(SimBackend(SimSettings(null_content_rate=1.0))) as sdk:
        message, _, _ = await create(sdk, messages=ask())
        tool, _, _ = await create(sdk, messages=ask(), tools=[VERDICT_TOOL], tool_choice={"type": "tool", "name": "answer"})
    assert message.content == tool.content == [] and message.stop_reason == tool.stop_reason == "end_turn"
    assert message.usage.output_tokens == 0


def comparable(message: Message) -> dict[str, Any]:
    """A message's fields that are not null, less its ids (every request has its own)."""
    data: dict[str, Any] = message.model_dump(exclude_none=True, exclude={"id"})
    for block in data["content"]:
        block.pop("id", None)
    return data


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data)`` of each server-sent event in ``text``."""
    events = []
    for frame in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


@pytest.mark.parametrize("tool", [False, True])
async def test_a_streamed_message_is_anthropics_events_and_assembles_to_the_whole_message(tool: bool) -> None:
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "system": SYSTEM, "messages": ask()}
    if tool:
        params |= {"tools": [VERDICT_TOOL], "tool_choice": {"type": "tool", "name": "answer"}}
    async with client() as sdk:
        whole = (await create(sdk, **params))[0]
        async with aiohttp.ClientSession() as http:
            headers = {"x-api-key": "test", "anthropic-version": "2023-06-01"}
            url = f"{str(sdk.base_url).rstrip('/')}/v1/messages"
            async with http.post(url, json={**params, "stream": True}, headers=headers) as response:
                assert response.headers["Content-Type"].startswith("text/event-stream")
                assert response.headers["request-id"].startswith("req_")
                events = sse(await response.text())
        async with sdk.messages.stream(**params) as stream:
            final = await stream.get_final_message()
        streamed = [event async for event in await sdk.messages.create(**params, stream=True)]
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 1
    assert names.count("content_block_delta") >= 1
    for name, data in events:
        assert data["type"] == name
        if name != "ping":
            _EVENTS.validate_python(data)
    deltas = {data["delta"]["type"] for name, data in events if name == "content_block_delta"}
    assert deltas == ({"input_json_delta"} if tool else {"text_delta"})
    assert [event.type for event in streamed] == [name for name in names if name != "ping"]
    assert comparable(final) == comparable(whole)
    assert final.stop_reason == ("tool_use" if tool else "end_turn")


async def test_a_streamed_request_that_fails_is_an_error_not_a_stream() -> None:
    async with client(SimBackend(SimSettings(models=(MODEL,)))) as sdk:
        with pytest.raises(anthropic.NotFoundError):
            await sdk.messages.create(model="claude-nope", max_tokens=10, messages=ask(), stream=True)
