"""The embedded server's Responses API (``/v1/responses``), realtime, streamed and in batches,
driven by the official openai SDK over real HTTP and checked against OpenAI's schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import aiohttp
import jsonschema
import openai
import pytest
from openai.types.responses import Response, ResponseTextConfigParam

from adapters.server.backends import BackendError, BackendReply, SimBackend, SimSettings
from adapters.server.embedded import embedded_server

from .test_server import GENRE_SET, genre_messages, sim_client
from .test_server_batches import _nullable_optionals, batch_client, jsonl, lines_of, settle

SYSTEM, USER = (message["content"] for message in genre_messages())
VERDICT = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["correct", "incorrect"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}


def _openapi_nullable(node: Any) -> Any:
    """``node`` with OpenAPI's ``nullable: true`` (which JSON Schema ignores) as null allowed."""
    if isinstance(node, list):
        return [_openapi_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _openapi_nullable(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


# OpenAI's Response, ResponseStreamEvent and CreateChatCompletionStreamResponse schemas with all
# they reference, extracted from the spec (tests/data/README.md) as openai_schemas.json is.
SCHEMAS = _nullable_optionals(_openapi_nullable(
    json.loads((Path(__file__).parent / "data" / "openai_responses_schemas.json").read_text(encoding="utf-8"))
))


def assert_valid(name: str, instance: Any) -> None:
    """Validate ``instance`` against OpenAI's schema ``name`` (of the responses and stream schemas)."""
    jsonschema.Draft202012Validator({**SCHEMAS, "$ref": f"#/components/schemas/{name}"}).validate(instance)


async def post(url: str, path: str, body: Any) -> tuple[int, str, str]:
    """``(status, content type, text)`` of a raw POST to the server at ``url``."""
    async with aiohttp.ClientSession() as http, http.post(f"{url}{path}", json=body) as response:
        return response.status, response.content_type, await response.text()


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """The ``(event name, data)`` of each server-sent event in ``text``."""
    events = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((fields.get("event"), fields["data"]))
    return events


async def test_a_response_answers_as_chat_completions_would_and_matches_openai_schema() -> None:
    async with embedded_server(SimBackend(SimSettings())) as url:
        async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
            raw = await client.responses.with_raw_response.create(
                model="m", instructions=SYSTEM, input=USER, max_output_tokens=20, temperature=0.5,
                metadata={"stage": "judge"}, store=False, prompt_cache_key="genres",
            )
            response = raw.parse()
            chat = await client.chat.completions.create(model="m", messages=genre_messages())  # type: ignore[arg-type]
        status, content_type, text = await post(url, "/responses", {"model": "m", "instructions": SYSTEM, "input": USER})
    assert raw.headers["x-request-id"].startswith("req_")
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.model == "sim:m" and response.output_text in GENRE_SET
    assert response.output_text == chat.choices[0].message.content  # the same prompt, translated
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert (response.max_output_tokens, response.temperature) == (20, 0.5) and raw.http_response.json()["store"] is False
    assert response.metadata == {"stage": "judge"} and response.prompt_cache_key == "genres"
    usage, chat_usage = response.usage, chat.usage
    assert usage is not None and chat_usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (chat_usage.prompt_tokens, chat_usage.completion_tokens)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert status == 200 and content_type == "application/json"
    assert_valid("Response", json.loads(text))


async def test_input_messages_with_parts_and_every_role() -> None:
    items = [
        {"role": "developer", "content": [{"type": "input_text", "text": SYSTEM}]},
        {"role": "user", "content": "Heat: a heist thriller."},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Crime"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "And "}, {"type": "input_text", "text": "Alien?"}]},
    ]
    async with sim_client() as client:
        response = await client.responses.create(model="m", input=items)  # type: ignore[arg-type]
    assert response.output_text in GENRE_SET


@pytest.mark.parametrize(
    ("fmt", "check"),
    [
        ({"type": "json_schema", "name": "verdict", "schema": VERDICT, "strict": True},
         lambda text: json.loads(text)["verdict"] in ("correct", "incorrect")),
        ({"type": "json_object"}, lambda text: isinstance(json.loads(text), dict)),
        ({"type": "text"}, lambda text: text in ("correct", "incorrect")),
    ],
)
async def test_text_format_is_the_chat_response_format(fmt: dict[str, Any], check: Any) -> None:
    prompt = "The Godfather is a Drama. Is that correct or incorrect?"
    async with sim_client() as client:
        response = await client.responses.create(model="m", input=prompt, text=cast(ResponseTextConfigParam, {"format": fmt}))
    assert check(response.output_text), response.output_text
    assert response.text is not None and response.text.format is not None and response.text.format.type == fmt["type"]


async def test_a_long_prompt_sent_again_reads_the_cache_and_chat_shares_it() -> None:
    # ~1,600 tokens. The answers have one length: the cache shares a prompt's tokens out by characters.
    rubric = "Judge the answer by the rubric below.\n" + "Rubric line: be exact and fair. " * 200
    async with sim_client() as client:
        first = await client.responses.create(model="m", instructions=rubric, input="Answer: Drama")
        second = await client.responses.create(model="m", instructions=rubric, input="Answer: Crime")
        chat = await client.chat.completions.create(
            model="m", messages=[{"role": "system", "content": rubric}, {"role": "user", "content": "Answer: Music"}]
        )
        short = await client.responses.create(model="m", input="Answer: Drama")
    cached = [r.usage.input_tokens_details.cached_tokens for r in (first, second, short) if r.usage is not None]
    assert cached[0] == 0 and cached[2] == 0
    assert cached[1] >= 1024 and cached[1] % 128 == 0
    assert second.usage is not None and cached[1] < second.usage.input_tokens
    assert chat.usage is not None and chat.usage.prompt_tokens_details is not None
    assert chat.usage.prompt_tokens_details.cached_tokens == cached[1]


async def test_a_stream_assembles_to_the_response() -> None:
    async with embedded_server(SimBackend(SimSettings())) as url:
        async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
            whole = await client.responses.create(model="m", instructions=SYSTEM, input=USER)
            async with client.responses.stream(model="m", instructions=SYSTEM, input=USER) as stream:
                deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
                final = await stream.get_final_response()
            events = [event async for event in await client.responses.create(model="m", input=USER, stream=True)]
        long_answer = {"model": "m", "input": "Say something.", "stream": True}
        status, content_type, text = await post(url, "/responses", long_answer)
    assert final.output_text == whole.output_text == "".join(deltas)
    assert final.usage == whole.usage and final.id != whole.id
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert [event.type for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * (len(events) - 8),
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert status == 200 and content_type == "text/event-stream"
    raw_events = sse_events(text)
    deltas = [json.loads(data)["delta"] for name, data in raw_events if name == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == "simulated answer"
    for name, data in raw_events:
        event = json.loads(data)
        assert name == event["type"]
        assert_valid("ResponseStreamEvent", event)


async def test_stream_of_a_reply_without_choices_has_no_output() -> None:
    async with sim_client(SimSettings(empty_choices_rate=1.0)) as client:
        events = [event async for event in await client.responses.create(model="m", input=USER, stream=True)]
        response = await client.responses.create(model="m", input=USER)
    assert [event.type for event in events] == ["response.created", "response.in_progress", "response.completed"]
    assert response.output == [] and response.output_text == ""


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"model": ""}, "model"),
        ({"input": []}, "input"),
        ({"input": None}, "input"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": []}]}, "input[0].content"),
        ({"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0]"),
        ({"instructions": 3}, "instructions"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": "1"}, "top_p"),
        ({"max_output_tokens": 8}, "max_output_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"store": 1}, "store"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"prompt_cache_key": 5}, "prompt_cache_key"),
        ({"text": {"format": {"type": "xml"}}}, "text.format"),
        ({"text": {"format": {"type": "json_schema", "schema": VERDICT}}}, "text.format.name"),
        ({"text": {"format": {"type": "json_schema", "name": "v", "schema": []}}}, "text.format.schema"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"background": True}, "background"),
    ],
)
async def test_a_bad_body_is_a_bad_request_naming_the_field(changes: dict[str, Any], param: str) -> None:
    body = {"model": "m", "input": USER, **changes}
    async with sim_client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.post("/responses", body=body, cast_to=object)
    assert caught.value.param == param and caught.value.type == "invalid_request_error"


async def test_an_unknown_model_and_the_backends_errors_are_openais() -> None:
    async with sim_client(SimSettings(models=("known",), rpm=1, burst_seconds=60)) as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.responses.create(model="other", input=USER)
        await client.responses.create(model="known", input=USER)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.responses.create(model="known", input=USER, stream=True)
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    assert limited.value.code == "rate_limit_exceeded" and int(limited.value.response.headers["retry-after"]) > 0


class Failing:
    """A backend that fails every call with a 500, or raises something unexpected."""

    name = "failing"
    models = None

    def __init__(self, unexpected: bool) -> None:
        self.unexpected = unexpected

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        if self.unexpected:
            raise RuntimeError("a bug")
        raise BackendError(503, "overloaded", type="server_error", code="overloaded")


@pytest.mark.parametrize("unexpected", [False, True])
async def test_backend_failures_are_server_errors(unexpected: bool) -> None:
    async with embedded_server(Failing(unexpected)) as url:
        async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError) as caught:
                await client.responses.create(model="m", input=USER)
    assert caught.value.status_code == (500 if unexpected else 503)


def response_line(i: int, **changes: Any) -> dict[str, Any]:
    body = {"model": "m", "instructions": SYSTEM, "input": f"Movie {i}: an organized crime dynasty."}
    return {"custom_id": f"row-{i}", "method": "POST", "url": "/v1/responses", "body": body, **changes}


async def test_a_batch_on_v1_responses_answers_response_objects() -> None:
    lines = [response_line(i) for i in range(12)]
    bad = [
        response_line(20, body={"model": "m", "input": USER, "stream": True}),
        response_line(21, body={"model": "m", "messages": genre_messages()}),
    ]
    async with batch_client() as client:
        uploaded = await client.files.create(file=("judge.jsonl", jsonl(lines + bad)), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
        )
        batch = await settle(client, created.id)
        output = await lines_of(client, batch.output_file_id)
        errors = await lines_of(client, batch.error_file_id)
        realtime = {
            line["custom_id"]: (await client.responses.create(**line["body"])).output_text for line in lines
        }
    assert created.endpoint == "/v1/responses" and batch.status == "completed"
    assert batch.request_counts is not None and (batch.request_counts.completed, batch.request_counts.failed) == (12, 2)
    for line in output:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert_valid("Response", line["response"]["body"])
        response = Response.model_validate(line["response"]["body"])
        assert response.output_text == realtime[line["custom_id"]] and response.output_text in GENRE_SET
    assert {line["custom_id"] for line in output} == set(realtime)
    refused = {line["custom_id"]: line["response"]["body"]["error"]["param"] for line in errors}
    assert refused == {"row-20": "stream", "row-21": "input"}


async def test_a_responses_batch_refuses_chat_lines() -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}
    async with batch_client() as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl([line])), purpose="batch")
        created = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h")
        batch = await settle(client, created.id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.param) for e in batch.errors.data] == [("invalid_url", "url")]
