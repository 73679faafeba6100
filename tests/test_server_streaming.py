"""Streamed chat completions (``stream: true``) from the embedded server, on the sim and the local
model, through the official openai SDK over real HTTP, checked against OpenAI's chunk schema."""

from __future__ import annotations

import json
from typing import Any, cast

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from adapters.server.backends import SimBackend, SimSettings
from adapters.server.backends.llama import LlamaBackend, ModelUnavailable
from adapters.server.backends.upstream import UpstreamBackend
from adapters.server.embedded import embedded_server

from .test_server import GENRE_SET, judge_messages, sim_client
from .test_server import genre_messages as genre_dicts
from .test_server_batches import batch_client, jsonl, lines_of, request_line, settle
from .test_server_responses import SYSTEM, USER, assert_valid, post, sse_events

LONG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]  # "simulated answer"


def genre_messages() -> list[ChatCompletionMessageParam]:
    return cast(list[ChatCompletionMessageParam], genre_dicts())


async def test_a_stream_reassembles_the_completion_with_its_usage() -> None:
    async with sim_client() as client:
        whole = await client.chat.completions.create(model="m", messages=genre_messages())
        stream = await client.chat.completions.create(
            model="m", messages=genre_messages(), stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert content == whole.choices[0].message.content and content in GENRE_SET
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and whole.usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens,
    )
    assert all(chunk.usage is None for chunk in chunks[:-1])


async def test_the_wire_is_openais_server_sent_events() -> None:
    async with embedded_server(SimBackend(SimSettings(rpm=600))) as url:
        status, content_type, text = await post(url, "/chat/completions", {"model": "m", "messages": LONG, "stream": True})
        _, _, with_usage = await post(
            url, "/chat/completions", {"model": "m", "messages": LONG, "stream": True, "stream_options": {"include_usage": True}}
        )
    assert status == 200 and content_type == "text/event-stream"
    assert text.endswith("\n\ndata: [DONE]\n\n")
    for stream in (text, with_usage):
        events = sse_events(stream)
        assert all(name is None for name, _ in events) and events[-1][1] == "[DONE]"
        chunks = [json.loads(data) for _, data in events[:-1]]
        for chunk in chunks:
            assert chunk["object"] == "chat.completion.chunk"
            assert_valid("CreateChatCompletionStreamResponse", chunk)
        deltas = [chunk["choices"][0]["delta"].get("content") for chunk in chunks if chunk["choices"]]
        assert deltas == ["", "simulated ", "answer", None]
    assert "usage" not in json.loads(sse_events(text)[0][1])


async def test_logprobs_stream_a_token_per_chunk() -> None:
    messages = cast(list[ChatCompletionMessageParam], judge_messages("Drama"))
    async with sim_client() as client:
        whole = await client.chat.completions.create(model="m", messages=messages, logprobs=True, top_logprobs=2)
        stream = await client.chat.completions.create(
            model="m", messages=messages, logprobs=True, top_logprobs=2, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert whole.choices[0].logprobs is not None and whole.choices[0].logprobs.content is not None
    streamed = [
        token for chunk in chunks if chunk.choices[0].logprobs is not None
        for token in chunk.choices[0].logprobs.content or ()
    ]
    assert streamed == whole.choices[0].logprobs.content
    assert all(len(chunk.choices[0].logprobs.content or ()) == 1 for chunk in chunks if chunk.choices[0].logprobs)


async def test_stream_of_faulty_replies() -> None:
    async with sim_client(SimSettings(null_content_rate=1.0)) as client:
        stream = await client.chat.completions.create(model="m", messages=LONG, stream=True)
        null = [chunk async for chunk in stream]
    async with sim_client(SimSettings(empty_choices_rate=1.0)) as client:
        stream = await client.chat.completions.create(
            model="m", messages=LONG, stream=True, stream_options={"include_usage": True}
        )
        empty = [chunk async for chunk in stream]
    assert [chunk.choices[0].delta.content for chunk in null] == ["", None]
    assert len(empty) == 1 and empty[0].choices == [] and empty[0].usage is not None


async def test_a_relayed_completion_streams_with_its_upstreams_usage_and_logprobs() -> None:
    async with embedded_server(SimBackend(SimSettings())) as upstream_url:
        async with embedded_server(UpstreamBackend(upstream_url)) as url:
            async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
                whole = await client.chat.completions.create(model="m", messages=LONG, logprobs=True)
                stream = await client.chat.completions.create(
                    model="m", messages=LONG, logprobs=True, stream=True, stream_options={"include_usage": True}
                )
                chunks = [chunk async for chunk in stream]
    assert whole.choices[0].logprobs is not None
    assert [chunk.choices[0].delta.content for chunk in chunks if chunk.choices] == ["", "simulated", " ", "answer", None]
    streamed = [token for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for token in chunk.choices[0].logprobs.content or ()]
    assert streamed == whole.choices[0].logprobs.content
    assert chunks[-1].usage == whole.usage and chunks[0].model == "sim:m"


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
        ({"stream": True, "stream_options": []}, "stream_options"),
    ],
)
async def test_bad_stream_options_are_bad_requests(changes: dict[str, Any], param: str) -> None:
    async with sim_client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.post("/chat/completions", body={"model": "m", "messages": LONG, **changes}, cast_to=object)
    assert caught.value.param == param


async def test_errors_before_the_stream_are_json() -> None:
    async with sim_client(SimSettings(models=("known",), rpm=1, burst_seconds=60)) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="other", messages=LONG, stream=True)
        await client.chat.completions.create(model="known", messages=LONG)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="known", messages=LONG, stream=True)
    assert limited.value.response.headers["content-type"].startswith("application/json")


async def test_a_batch_line_cannot_stream() -> None:
    lines = [request_line(0), request_line(1, body={"model": "m", "messages": LONG, "stream": True})]
    async with batch_client() as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = await settle(client, created.id)
        errors = await lines_of(client, batch.error_file_id)
    assert [(line["custom_id"], line["response"]["body"]["error"]["param"]) for line in errors] == [("row-1", "stream")]


@pytest.fixture(scope="module")
def local_backend() -> LlamaBackend:
    try:
        backend = LlamaBackend()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    backend.load()
    return backend


@pytest.mark.local_model
async def test_the_local_model_streams_what_it_answers(local_backend: LlamaBackend) -> None:
    async with embedded_server(local_backend) as url:
        async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
            whole = await client.chat.completions.create(
                model="any", messages=genre_messages(), temperature=0, max_tokens=12
            )
            stream = await client.chat.completions.create(
                model="any", messages=genre_messages(), temperature=0, max_tokens=12, stream=True
            )
            chunks = [chunk async for chunk in stream]
            response = await client.responses.create(
                model="any", instructions=SYSTEM, input=USER,
                temperature=0, max_output_tokens=16,
            )
            async with client.responses.stream(
                model="any", instructions=SYSTEM, input=USER,
                temperature=0, max_output_tokens=16,
            ) as responses_stream:
                streamed = await responses_stream.get_final_response()
    content = whole.choices[0].message.content
    assert content and "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == content
    assert streamed.output_text == response.output_text != ""
