"""The fault proxy (benchmarks/proxy.py) between real clients (the official SDK, aiohttp, raw
sockets) and the embedded server: every fault as a client sees it, and what the server did."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import aiohttp
import anyio
import openai
import pytest
from openai.types.chat import ChatCompletion

from adapters.server.backends.sim import SimSettings
from benchmarks.proxy import FaultProxy
from tests.support import CountingBackend

from .conftest import start_server
from .test_server import GENRE_SET, genre_messages

CHAT = ("POST", "/v1/chat/completions")
CONTENT = r"/v1/files/[^/]+/content"


@pytest.fixture
def backend() -> CountingBackend:
    return CountingBackend(SimSettings(seed=1))


@pytest.fixture
def server_url(backend: CountingBackend) -> Iterator[str]:
    yield from start_server(backend)


@pytest.fixture
def proxy(server_url: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(server_url)
    with proxy:
        yield proxy


@pytest.fixture
def client(proxy: FaultProxy) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=proxy.url, api_key="x", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def direct(server_url: str) -> Iterator[openai.OpenAI]:
    """A client of the server itself, bypassing the proxy: what the server really holds."""
    with openai.OpenAI(base_url=server_url, api_key="x", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def chat(client: openai.OpenAI, **options: Any) -> ChatCompletion:
    messages: Any = genre_messages()
    return client.with_options(**options).chat.completions.create(model="m", messages=messages)


def batch_input(lines: int) -> bytes:
    requests = (
        {"custom_id": f"row-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": genre_messages(f"Movie {i} " * 40)}}
        for i in range(lines)
    )
    return b"".join(json.dumps(line).encode() + b"\n" for line in requests)


def root_cause(error: BaseException) -> BaseException:
    """The OS error under the SDK's and httpx's wrappers (httpcore passes it as the argument)."""
    while True:
        if error.__cause__ is not None:
            error = error.__cause__
        elif error.args and isinstance(error.args[0], BaseException):
            error = error.args[0]
        else:
            return error


def proxy_port(proxy: FaultProxy) -> int:
    assert proxy.url is not None
    return int(proxy.url.rsplit(":", 1)[1].split("/", 1)[0])


def test_forwards_chat_upload_download_and_batch_create_untouched(proxy: FaultProxy, client: openai.OpenAI) -> None:
    assert chat(client).choices[0].message.content in GENRE_SET
    payload = batch_input(1500)  # over a megabyte: many reads, bodies pass as they are
    uploaded = client.files.create(file=("in.jsonl", payload), purpose="batch")
    assert client.files.content(uploaded.id).content == payload
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert [b.id for b in client.batches.list(limit=5)] == [batch.id]

    assert proxy.requests == [
        CHAT,
        ("POST", "/v1/files"),
        ("GET", f"/v1/files/{uploaded.id}/content"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches"),  # the query (?limit=5) is not part of the path
    ]
    assert proxy.count("GET", CONTENT) == 1
    assert proxy.count("POST", "/v1/.*") == 3


def test_drop_reply_to_batch_create_loses_the_reply_but_the_server_holds_the_batch(
    proxy: FaultProxy, client: openai.OpenAI, direct: openai.OpenAI
) -> None:
    uploaded = client.files.create(file=("in.jsonl", batch_input(3)), purpose="batch")
    proxy.drop_reply("POST", "/v1/batches")

    with pytest.raises(openai.APIConnectionError) as lost:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")

    assert isinstance(root_cause(lost.value), ConnectionResetError)
    assert [b.input_file_id for b in direct.batches.list()] == [uploaded.id]
    client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert len(direct.batches.list().data) == 2  # the rule applied once only


def test_reset_reply_forwards_exactly_after_bytes_then_resets(proxy: FaultProxy, client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("in.jsonl", batch_input(60)), purpose="batch")
    proxy.reset_reply("GET", CONTENT, after_bytes=20_000)

    received = b""
    with socket.create_connection(("127.0.0.1", proxy_port(proxy))) as raw:
        raw.sendall(f"GET /v1/files/{uploaded.id}/content HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        with pytest.raises(ConnectionResetError):
            while chunk := raw.recv(4096):
                received += chunk

    assert len(received) == 20_000
    assert received.startswith(b"HTTP/1.1 200 ")


def test_reset_reply_during_a_download_is_a_connection_error_for_the_sdk(
    proxy: FaultProxy, client: openai.OpenAI
) -> None:
    payload = batch_input(60)
    uploaded = client.files.create(file=("in.jsonl", payload), purpose="batch")
    proxy.reset_reply("GET", CONTENT, after_bytes=len(payload) // 2)

    with pytest.raises(openai.APIConnectionError):
        client.files.content(uploaded.id)
    assert client.files.content(uploaded.id).content == payload


async def test_trickle_reply_outlasts_a_total_timeout_and_arrives_whole_when_waited_for(
    proxy: FaultProxy, client: openai.OpenAI
) -> None:
    proxy.trickle_reply(*CHAT, bytes_per_second=1000, times=2)  # a reply of 500+ bytes: at least 0.5 s
    body = {"model": "m", "messages": genre_messages()}

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
        with pytest.raises(TimeoutError):
            async with session.post(f"{proxy.url}/chat/completions", json=body) as response:
                await response.read()

    completion = await anyio.to_thread.run_sync(chat, client)
    assert completion.choices[0].message.content in GENRE_SET
    assert proxy.count(*CHAT) == 2


def test_stall_reply_holds_an_answered_reply_until_release(
    proxy: FaultProxy, client: openai.OpenAI, backend: CountingBackend, pool: ThreadPoolExecutor
) -> None:
    proxy.stall_reply(*CHAT)
    call = pool.submit(chat, client)

    proxy.wait_for(lambda p: p.held == 1)
    assert backend.calls == 1 and not call.done()
    proxy.release()

    assert call.result().choices[0].message.content in GENRE_SET
    assert proxy.held == 0


def test_stall_reply_until_the_client_gives_up(proxy: FaultProxy, client: openai.OpenAI) -> None:
    proxy.stall_reply(*CHAT)

    with pytest.raises(openai.APITimeoutError):
        chat(client, timeout=0.3)

    proxy.wait_for(lambda p: p.held == 0)  # the client's close ends the hold
    assert chat(client).choices[0].message.content in GENRE_SET


def test_stall_forwards_nothing_either_way_until_release(
    proxy: FaultProxy, client: openai.OpenAI, backend: CountingBackend, pool: ThreadPoolExecutor
) -> None:
    proxy.stall()
    call = pool.submit(chat, client)

    proxy.wait_for(lambda p: p.count(*CHAT) == 1)  # seen by the proxy, held before the server
    assert backend.calls == 0 and not call.done()
    with pytest.raises(openai.APITimeoutError):
        chat(client, timeout=0.3)  # a new connection is accepted, and stalled too
    proxy.release()

    assert call.result().choices[0].message.content in GENRE_SET


def test_blackout_refuses_connections_resets_open_ones_and_lift_listens_on_the_same_port(
    proxy: FaultProxy, client: openai.OpenAI, pool: ThreadPoolExecutor
) -> None:
    proxy.stall_reply(*CHAT)
    in_flight: Future[ChatCompletion] = pool.submit(chat, client)
    proxy.wait_for(lambda p: p.held == 1)
    url = proxy.url

    proxy.blackout()

    assert proxy.down
    with pytest.raises(openai.APIConnectionError):
        in_flight.result()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy_port(proxy))).close()
    with pytest.raises(openai.APIConnectionError) as refused:
        chat(client)
    assert isinstance(root_cause(refused.value), ConnectionRefusedError)
    proxy.wait_for(lambda p: p.held == 0)

    proxy.lift()

    assert not proxy.down and proxy.url == url
    assert chat(client).choices[0].message.content in GENRE_SET
    assert proxy.refused == 0


def test_blackout_without_refusing_accepts_and_resets_counting_them(proxy: FaultProxy, client: openai.OpenAI) -> None:
    proxy.blackout(refuse=False)

    with socket.create_connection(("127.0.0.1", proxy_port(proxy))) as raw, pytest.raises(ConnectionResetError):
        raw.recv(1)
    with pytest.raises(openai.APIConnectionError):
        chat(client)  # the reset, seen while sending, ends as "disconnected without a response"
    assert proxy.refused == 2

    proxy.lift()

    assert chat(client).choices[0].message.content in GENRE_SET
    assert proxy.refused == 2 and proxy.connections == 3


def test_a_refusing_blackout_can_turn_into_a_resetting_one(proxy: FaultProxy) -> None:
    proxy.blackout()
    proxy.blackout(refuse=False)

    with socket.create_connection(("127.0.0.1", proxy_port(proxy))) as raw, pytest.raises(ConnectionResetError):
        raw.recv(1)
    assert proxy.refused == 1


def test_a_timed_blackout_ends_by_itself(proxy: FaultProxy, client: openai.OpenAI) -> None:
    proxy.blackout(0.2)

    proxy.wait_for(lambda p: not p.down)

    assert chat(client).choices[0].message.content in GENRE_SET


def test_nth_and_times_count_matching_requests_only_from_when_the_rule_was_added(
    proxy: FaultProxy, client: openai.OpenAI, backend: CountingBackend
) -> None:
    chat(client)  # before the rule: not counted
    proxy.drop_reply(*CHAT, nth=2, times=2)
    outcomes: list[str] = []
    for _ in range(4):
        client.models.list()  # another path: not counted
        try:
            chat(client)
            outcomes.append("ok")
        except openai.APIConnectionError:
            outcomes.append("dropped")

    assert outcomes == ["ok", "dropped", "dropped", "ok"]
    assert backend.calls == 5  # a dropped reply was still answered by the server
    assert proxy.count(*CHAT) == 5 and proxy.count("GET", "/v1/models") == 4


def test_the_first_rule_added_wins_and_every_rule_counts(proxy: FaultProxy, client: openai.OpenAI) -> None:
    proxy.drop_reply(*CHAT)
    proxy.stall_reply("POST", "/v1/chat/.*")

    with pytest.raises(openai.APIConnectionError) as first:
        chat(client, timeout=30)  # both rules apply: the drop, added first, wins
    assert isinstance(root_cause(first.value), ConnectionResetError)  # not a timeout: no stall

    assert chat(client).choices[0].message.content in GENRE_SET  # the stall counted the 1st: spent


def test_delay_holds_every_chunk(proxy: FaultProxy, client: openai.OpenAI) -> None:
    proxy.delay(1.0)

    with pytest.raises(openai.APITimeoutError):
        chat(client, timeout=0.25)

    proxy.delay(0)
    assert chat(client).choices[0].message.content in GENRE_SET


def test_wait_for_times_out_and_fails_once_the_proxy_stops(server_url: str) -> None:
    proxy = FaultProxy(server_url)
    proxy.start()
    with pytest.raises(TimeoutError):
        proxy.wait_for(lambda p: p.connections > 0, timeout=0.05)
    proxy.stop()

    with pytest.raises(RuntimeError, match="stopped"):
        proxy.wait_for(lambda p: p.connections > 0)
    with pytest.raises(RuntimeError, match="not running"):
        proxy.stall()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="host and a port"):
        FaultProxy("http://localhost/v1")
    proxy = FaultProxy("http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="nth"):
        proxy.drop_reply(*CHAT, nth=0)
    with pytest.raises(ValueError, match="after_bytes"):
        proxy.reset_reply(*CHAT, after_bytes=-1)
    with pytest.raises(ValueError, match="bytes_per_second"):
        proxy.trickle_reply(*CHAT, bytes_per_second=0)


async def test_await_for_gives_way_to_cancellation(proxy: FaultProxy) -> None:
    with anyio.move_on_after(0.1) as scope:
        await proxy.await_for(lambda p: p.connections > 0, timeout=60)
    assert scope.cancelled_caught  # at once, not after the 60 s


@pytest.mark.parametrize("backend_name", ["asyncio", "trio"])
def test_await_for_on_any_anyio_backend(proxy: FaultProxy, backend_name: str) -> None:
    """Plain ``anyio.run``: pytest-asyncio would claim an ``@pytest.mark.anyio`` test (see test_server)."""

    async def main() -> str | None:
        proxy.stall_reply(*CHAT)
        results: list[ChatCompletion] = []
        async with openai.AsyncOpenAI(base_url=proxy.url, api_key="x", max_retries=0) as sdk:

            async def call() -> None:
                messages: Any = genre_messages()
                results.append(await sdk.chat.completions.create(model="m", messages=messages))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call)
                await proxy.await_for(lambda p: p.held == 1)
                assert not results
                proxy.release()
        return results[0].choices[0].message.content

    assert anyio.run(main, backend=backend_name) in GENRE_SET
