"""Our server's upstream gateway in front of a real third-party server: llama-cpp-python's own.

Each test asks ``llama_cpp.server`` directly and through ``UpstreamBackend``, and the two answers
must be the same, but for what differs per call: ``id``, ``created`` and tool-call ids. Greedy decoding
(temperature 0) on one thread makes them repeatable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from adapters.server.backends import SimBackend, SimSettings
from adapters.server.backends.llama import LlamaBackend, ModelUnavailable
from adapters.server.backends.upstream import UpstreamBackend
from adapters.server.embedded import EmbeddedServer, embedded_server
from tests.test_server import LLAMA_CPP_JSON_SCHEMA_REFUSAL, genre_messages

pytestmark = pytest.mark.local_model

GENRE = [{"role": "user", "content": "Pick a genre for The Godfather."}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def tool_conversation(assistant_content: str | None) -> list[dict[str, Any]]:
    """A user turn, the assistant's tool call (with ``assistant_content``), and the tool's answer."""
    return [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": assistant_content, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]


@pytest.fixture(scope="module")
def gateway(llama_server: str) -> Iterator[str]:
    """Our server with the upstream backend in front of ``llama_server``."""
    with EmbeddedServer(UpstreamBackend(llama_server, timeout_s=60.0)) as url:
        yield url


async def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/chat/completions", json=body) as response:
        return response.status, await response.json()


async def direct_and_through(llama_server: str, gateway: str, **body: Any) -> tuple[Any, Any]:
    """``body`` (greedy, model ``m``) sent to llama_cpp.server, then through our gateway."""
    full = {"model": "m", "temperature": 0, **body}
    direct, through = await post(llama_server, full), await post(gateway, full)
    assert direct[0] == through[0], (direct, through)
    return direct[1], through[1]


def comparable(reply: dict[str, Any]) -> dict[str, Any]:
    """``reply`` without what differs per call: its ``id``, ``created`` and tool-call ids."""
    same = {key: value for key, value in reply.items() if key not in ("id", "created")}
    same["choices"] = [
        {**choice, "message": {**choice["message"], "tool_calls": [
            {**call, "id": "<call id>"} for call in choice["message"]["tool_calls"]
        ]}} if choice["message"].get("tool_calls") else choice
        for choice in reply["choices"]
    ]
    return same


async def test_a_reply_cut_short_keeps_finish_reason_length(llama_server: str, gateway: str) -> None:
    direct, through = await direct_and_through(llama_server, gateway, messages=GENRE, max_tokens=3)
    assert direct["choices"][0]["finish_reason"] == "length"
    assert comparable(through) == comparable(direct)
    assert through["model"] == direct["model"] == "m"


async def test_logprobs_pass_through(llama_server: str, gateway: str) -> None:
    direct, through = await direct_and_through(
        llama_server, gateway, messages=GENRE, max_tokens=3, logprobs=True, top_logprobs=2
    )
    tokens = direct["choices"][0]["logprobs"]["content"]
    assert len(tokens) == 3 and all(len(token["top_logprobs"]) == 2 for token in tokens)
    assert comparable(through) == comparable(direct)


async def test_n_is_forwarded_and_answered_as_the_upstream_answers_it(
    llama_server: str, gateway: str
) -> None:
    direct, through = await direct_and_through(llama_server, gateway, messages=GENRE, max_tokens=3, n=2)
    assert len(direct["choices"]) == 1  # llama_cpp.server ignores n
    assert comparable(through) == comparable(direct)


async def test_tool_calls_pass_through(llama_server: str, gateway: str) -> None:
    direct, through = await direct_and_through(
        llama_server, gateway,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=8,
    )
    choice = direct["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert comparable(through) == comparable(direct)


async def test_a_tool_conversation_is_accepted_and_forwarded(llama_server: str, gateway: str) -> None:
    # llama_cpp.server itself refuses a null assistant content (a pydantic error, HTTP 500): our
    # server accepts it, as OpenAI's spec does, and the upstream's own refusal comes back.
    direct, through = await direct_and_through(
        llama_server, gateway, messages=tool_conversation(None), max_tokens=5
    )
    assert "ChatCompletionRequestAssistantMessage" in direct["error"]["message"]
    assert through == direct
    # With an empty content it answers the conversation, through us as directly.
    direct, through = await direct_and_through(llama_server, gateway, messages=tool_conversation(""), max_tokens=5)
    assert direct["choices"][0]["message"]["content"]
    assert comparable(through) == comparable(direct)


async def test_json_schema_is_refused_and_the_sim_refuses_it_alike(llama_server: str, gateway: str) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "g", "schema": {"enum": ["Drama", "Comedy"]}}}
    body = {"model": "m", "messages": genre_messages(), "response_format": response_format}
    status, refusal = await post(llama_server, body)
    assert (status, await post(gateway, body)) == (500, (500, refusal))
    message, _, trace = refusal["error"]["message"].partition("\n\n")
    assert trace.lstrip().startswith("File ")  # a traceback line, which the sim leaves out
    assert {**refusal["error"], "message": message} == LLAMA_CPP_JSON_SCHEMA_REFUSAL["error"]
    sim = SimBackend(SimSettings(response_formats=("text", "json_object")))
    async with embedded_server(sim) as sim_url:
        assert await post(sim_url, body) == (500, LLAMA_CPP_JSON_SCHEMA_REFUSAL)


async def test_json_object_with_a_schema_is_answered_from_it(llama_server: str, gateway: str) -> None:
    response_format = {"type": "json_object", "schema": {"type": "string", "enum": ["Drama", "Comedy"]}}
    direct, through = await direct_and_through(
        llama_server, gateway, messages=GENRE, max_tokens=10, response_format=response_format
    )
    assert json.loads(direct["choices"][0]["message"]["content"]) in ("Drama", "Comedy")
    assert comparable(through) == comparable(direct)


async def test_our_local_model_answers_a_turn_that_only_called_tools() -> None:
    try:
        backend = LlamaBackend()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    reply = await backend.complete({"model": "m", "messages": tool_conversation(None), "max_tokens": 4, "temperature": 0})
    assert reply.content and reply.completion_tokens > 0
