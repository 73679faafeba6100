"""The simulator's reply faults as the official openai SDK sees them, on both of its transports."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import anyio.to_thread
import openai
import pytest

from adapters.server.backends import BackendReply, Hang, SimBackend, SimSettings
from adapters.server.embedded import EmbeddedServer, embedded_server
from adapters.server.server import SHUTDOWN_TIMEOUT_S

from .test_server import GENRE_SET, genre_messages, judge_messages
from .test_server_batches import batch_client, jsonl, lines_of, request_line, settle, submit

Transport = Callable[[], Any]
# The SDK's default httpx client, and the aiohttp one the engine uses on asyncio.
TRANSPORTS: dict[str, Transport] = {"httpx": lambda: None, "aiohttp": lambda: openai.DefaultAioHttpClient()}


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> Transport:
    return TRANSPORTS[request.param]


@asynccontextmanager
async def faulty_client(
    transport: Transport, backend: Any, *, timeout: float = 10.0
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with embedded_server(backend) as url:
        async with openai.AsyncOpenAI(
            base_url=url, api_key="test", max_retries=0, timeout=timeout, http_client=transport()
        ) as client:
            yield client


def causes(exc: BaseException) -> str:
    """Every message in ``exc``'s chain of causes, one a line."""
    found: list[str] = []
    cause: BaseException | None = exc
    while cause is not None:
        found.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    return "\n".join(found)


async def create(client: openai.AsyncOpenAI, model: str = "m") -> Any:
    return await client.chat.completions.create(model=model, messages=genre_messages())  # type: ignore[arg-type]


async def test_truncated_body_is_an_incomplete_read(transport: Transport) -> None:
    async with faulty_client(transport, SimBackend(SimSettings(truncate_rate=1.0))) as client:
        with pytest.raises(openai.APIConnectionError) as caught:
            await create(client)
    chain = causes(caught.value)
    assert "received" in chain and ("complete message body" in chain or "content length" in chain), chain


async def test_truncation_and_reset_are_told_apart(transport: Transport) -> None:
    chains = []
    for settings in (SimSettings(truncate_rate=1.0), SimSettings(reset_rate=1.0)):
        async with faulty_client(transport, SimBackend(settings)) as client:
            with pytest.raises(openai.APIConnectionError) as caught:
                await create(client)
        chains.append(causes(caught.value).splitlines()[-1])
    assert chains[0] != chains[1]


async def test_empty_choices_is_a_valid_completion_without_choices(transport: Transport) -> None:
    async with faulty_client(transport, SimBackend(SimSettings(empty_choices_rate=1.0))) as client:
        reply = await create(client)
    assert reply.object == "chat.completion" and reply.model == "sim:m"
    assert reply.choices == []
    assert reply.usage is not None and reply.usage.prompt_tokens > 0


async def test_null_content_is_a_valid_completion_with_content_none(transport: Transport) -> None:
    async with faulty_client(transport, SimBackend(SimSettings(null_content_rate=1.0))) as client:
        reply = await create(client)
    assert len(reply.choices) == 1 and reply.choices[0].message.content is None
    assert reply.usage is not None and reply.usage.completion_tokens == 0


class HangingBackend:
    """Never answers the model ``hang`` (says when such a request arrived); answers others as the sim."""

    name = "hanging"
    models = None

    def __init__(self) -> None:
        self.hung = threading.Event()
        self._sim = SimBackend(SimSettings())

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        if body["model"] == "hang":
            self.hung.set()
            raise Hang()
        return await self._sim.complete(body)


async def test_hang_times_out_without_blocking_other_requests(transport: Transport) -> None:
    async with faulty_client(transport, HangingBackend(), timeout=0.5) as client:
        hung = asyncio.create_task(create(client, "hang"))
        answered = await create(client)
        assert not hung.done()
        with pytest.raises(openai.APITimeoutError):
            await hung
        assert (await create(client)).choices[0].message.content in GENRE_SET
    assert answered.choices[0].message.content in GENRE_SET


async def test_sim_hang_rate_times_out(transport: Transport) -> None:
    async with faulty_client(transport, SimBackend(SimSettings(hang_rate=1.0)), timeout=0.5) as client:
        with pytest.raises(openai.APITimeoutError):
            await create(client)


async def test_stopping_drops_hung_requests_without_waiting_out_the_grace_period() -> None:
    backend = HangingBackend()
    server = EmbeddedServer(backend)
    url = await anyio.to_thread.run_sync(server.start)
    async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0, timeout=30.0) as client:
        hung = asyncio.create_task(create(client, "hang"))
        assert await anyio.to_thread.run_sync(backend.hung.wait, 10.0)
        started = time.monotonic()
        await anyio.to_thread.run_sync(server.stop)
        stopped_in = time.monotonic() - started
        with pytest.raises(openai.APIConnectionError):
            await hung
    assert stopped_in < SHUTDOWN_TIMEOUT_S  # held requests are dropped at once, not after the grace period


@pytest.mark.parametrize(
    "rates",
    [
        {"error_rate": 0.5, "hang_rate": 0.6},
        {"truncate_rate": 0.3, "empty_choices_rate": 0.3, "null_content_rate": 0.3, "reset_rate": 0.2},
        {"null_content_rate": 1.5},
        {"hang_rate": -0.1},
    ],
)
def test_fault_rates_are_checked(rates: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="rate"):
        SimSettings(**rates)


async def test_every_fault_is_drawn_reproducibly() -> None:
    settings = SimSettings(
        error_rate=0.1,
        reset_rate=0.1,
        malformed_rate=0.1,
        truncate_rate=0.1,
        empty_choices_rate=0.1,
        null_content_rate=0.1,
        hang_rate=0.1,
    )

    async def outcomes(seed: int) -> list[str]:
        backend = SimBackend(replace(settings, seed=seed))
        seen = []
        for i in range(300):
            try:
                completion = await backend.complete({"model": "m", "messages": judge_messages(str(i))})
            except Exception as exc:
                seen.append(type(exc).__name__)
            else:
                seen.append(
                    "no_choices" if completion.no_choices else "null" if completion.content is None else "ok"
                )
        return seen

    first = await outcomes(7)
    assert first == await outcomes(7) != await outcomes(8)
    assert set(first) == {
        "ok", "BackendError", "DropConnection", "MalformedReply", "TruncatedReply", "no_choices", "null", "Hang"
    }
    assert 0.2 < first.count("ok") / len(first) < 0.4


async def test_batch_lines_record_each_fault() -> None:
    lines = [request_line(i) for i in range(4)]
    outcomes: dict[str, tuple[str, Any]] = {}
    for fault in ("truncate", "hang", "empty_choices", "null_content"):
        rates: dict[str, Any] = {f"{fault}_rate": 1.0}
        async with batch_client(SimBackend(SimSettings(**rates))) as client:
            batch = await settle(client, (await submit(client, jsonl(lines))).id)
            output = await lines_of(client, batch.output_file_id)
            errors = await lines_of(client, batch.error_file_id)
        assert batch.status == "completed"
        line = (output + errors)[0]
        outcomes[fault] = ("output" if output else "error", line["error"] or line["response"]["body"]["choices"])
    assert outcomes["truncate"][0] == outcomes["hang"][0] == "error"
    assert (outcomes["truncate"][1]["code"], outcomes["hang"][1]["code"]) == ("truncated_response", "timeout")
    assert outcomes["empty_choices"] == ("output", [])
    assert outcomes["null_content"][0] == "output"
    assert outcomes["null_content"][1][0]["message"]["content"] is None
