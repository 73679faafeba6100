"""Batch mode under faults: nothing is paid twice, outages are ridden out, a missing Batch API is named.

Money is counted at the server: the request lines of every batch it holds for a run (listed
directly, not through a proxy) and, per request body, the chat calls its backend answered.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import openai
import polars as pl
import pytest
from aiohttp import web

from adapters.openai import OpenAIProvider
from adapters.server.backends.base import BackendReply, Hang
from adapters.server.backends.sim import SimSettings
from adapters.server.embedded import EmbeddedServer
from benchmarks.clocks import FastForwardClock, InstantClock
from benchmarks.proxy import FaultProxy
from engine import Evaluation
from engine.config import BatchConfig
from engine.errors import BatchApiMissingError, ProviderError
from engine.journal import scan_journal
from engine.provider import ChatReply
from engine.run.batch_stage import BatchStage
from engine.run.limits import Limiter
from engine.run.realtime import RealtimeRunner
from engine.run.retry import RetryPolicy
from engine.rundir import RunDir
from engine.templates import estimate_tokens
from engine.types import ChatRequest, Outcome, Row
from tests.support import CountingBackend

from .test_batch_mode import batch_config, submitted_custom_ids

PREDICT_MODEL = "klusterai/Meta-Llama-3.1-8B-Instruct-Turbo"
CONTENT = r"/v1/files/[^/]+/content"
POLL = r"/v1/batches/[^/]+"


def body_key(body: dict[str, Any]) -> str:
    return json.dumps([body.get("model"), body.get("messages")], sort_keys=True)


class PerRequestBackend:
    """The sim, counting the chat calls it answers per request body.

    ``hold_first_predict`` holds the first predict call of a row unanswered (the server keeps it
    until the client leaves), which leaves the row without an outcome while every other row
    finishes. A row's predict call asks for a ``response_format``, and so does the engine's
    start-up ping, whose message is ``ping``.
    """

    def __init__(self, settings: SimSettings, *, hold_first_predict: bool = False) -> None:
        self._inner = CountingBackend(settings)
        self.hold_first_predict = hold_first_predict
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        self.calls[body_key(body)] += 1
        is_row = body["messages"][-1]["content"] != "ping"  # the engine's preflight pings in the row's format
        if self.hold_first_predict and body.get("model") == PREDICT_MODEL and "response_format" in body and is_row:
            self.hold_first_predict = False
            raise Hang()
        return await self._inner.complete(body)


def paid_per_custom_id(url: str, run_id: str, backend: PerRequestBackend) -> Counter[str]:
    """Per predict custom_id: its lines in the run's batches plus its realtime calls.

    Run with ``batch_fail_rate=1.0``: then no batch line reaches the backend, and every call the
    backend counted for a request body was a realtime call.
    """
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    paid: Counter[str] = Counter()
    custom_ids: dict[str, str] = {}
    for batch in client.batches.list(limit=100):
        if (batch.metadata or {}).get("engine_run") != run_id:
            continue
        for line in client.files.content(batch.input_file_id).text.splitlines():
            request = json.loads(line)
            paid[request["custom_id"]] += 1
            custom_ids[body_key(request["body"])] = request["custom_id"]
    client.close()
    for key, calls in backend.calls.items():
        if key in custom_ids:
            paid[custom_ids[key]] += calls
    return paid


def journaled_attempts(run_dir: Path) -> dict[str, int]:
    journal = scan_journal(RunDir(run_dir).journal("predict")).select("custom_id", "attempts").collect()
    return dict(zip(journal["custom_id"].to_list(), journal["attempts"].to_list(), strict=True))


def batch_files(url: str) -> list[str]:
    """The ids of the files of purpose batch the server holds."""
    with openai.OpenAI(base_url=url, api_key="x", max_retries=0) as client:
        return [uploaded.id for uploaded in client.files.list(purpose="batch")]


def run_batches(url: str, run_id: str) -> list[str]:
    """The input file ids of the run's batches, as the server holds them."""
    with openai.OpenAI(base_url=url, api_key="x", max_retries=0) as client:
        return [batch.input_file_id for batch in client.batches.list(limit=100)
                if (batch.metadata or {}).get("engine_run") == run_id]


# -- item 1: a lost reply to a create or an upload is not paid twice ---------------------------


@pytest.mark.parametrize("lost", [1, 2])
async def test_a_lost_reply_to_batch_create_adopts_the_batch_instead_of_creating_another(
    tmp_path: Path, lost: int
) -> None:
    with EmbeddedServer(CountingBackend(SimSettings(seed=4)), data_dir=tmp_path / "server") as url:
        proxy = FaultProxy(url)
        with proxy as proxied:
            proxy.drop_reply("POST", "/v1/batches", times=lost)  # the server creates, the client hears nothing
            async with Evaluation(batch_config(proxied), run_dir=tmp_path / "run") as evaluation:
                pass
            creates = proxy.count("POST", "/v1/batches")
        paid = submitted_custom_ids(url, "run")
        batches = run_batches(url, "run")
    assert evaluation.metrics is not None and evaluation.metrics["n_judged"] == 60
    # 60 rows in files of 25: 3 predict and 3 judge batches, each created by one POST.
    assert len(batches) == 6 and creates == 6
    assert len(paid) == 120 and set(paid.values()) == {1}, "a request was paid twice"


async def test_a_lost_reply_to_an_upload_adopts_the_uploaded_file(tmp_path: Path) -> None:
    with EmbeddedServer(CountingBackend(SimSettings(seed=4)), data_dir=tmp_path / "server") as url:
        proxy = FaultProxy(url)
        with proxy as proxied:
            proxy.drop_reply("POST", "/v1/files")
            config = batch_config(proxied, limit=20, per_file=20, settings={"judge.mode": "realtime"})
            async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
                pass
            uploads = proxy.count("POST", "/v1/files")
        files = batch_files(url)
        batches = run_batches(url, "run")
    assert evaluation.metrics is not None and evaluation.metrics["n_judged"] == 20
    assert uploads == 1 and files == batches and len(files) == 1, "a second copy was uploaded"
    events = [json.loads(line) for line in (tmp_path / "run" / "journal" / "batches.ndjson").read_text().splitlines()]
    assert [event["file_id"] for event in events if event["event"] == "file"] == files


# -- item 9: polls and downloads ride out outages ----------------------------------------------


async def test_a_reset_during_the_output_download_is_retried_and_leaves_no_half_file(tmp_path: Path) -> None:
    with EmbeddedServer(CountingBackend(SimSettings(seed=4)), data_dir=tmp_path / "server") as url:
        proxy = FaultProxy(url)
        with proxy as proxied:
            # 25 output lines are ~5.7 kB: 2,000 bytes of the reply are its headers and part of its body.
            proxy.reset_reply("GET", CONTENT, after_bytes=2000)
            async with Evaluation(batch_config(proxied), run_dir=tmp_path / "run") as evaluation:
                pass
            downloads = proxy.count("GET", CONTENT)
        paid = submitted_custom_ids(url, "run")
    assert evaluation.metrics is not None and evaluation.metrics["n_judged"] == 60
    assert downloads == 7  # six output files, the first of them twice
    assert not list((tmp_path / "run" / "batches").glob("*.part"))
    assert len(paid) == 120 and set(paid.values()) == {1}


def black_out_at_the_first_poll(proxy: FaultProxy, *, lift_after_resets: int | None) -> threading.Thread:
    """Black the endpoint out once the engine polls a batch: for good (connections refused), or
    until the proxy has reset ``lift_after_resets`` connections (accepted and reset at once, so
    they are counted). Runs beside the engine in a thread; join it afterwards."""

    def outage() -> None:
        proxy.wait_for(lambda seen: seen.count("GET", POLL) >= 1)
        proxy.blackout(refuse=lift_after_resets is None)
        if lift_after_resets is not None:
            proxy.wait_for(lambda seen: seen.refused >= lift_after_resets)
            proxy.lift()

    thread = threading.Thread(target=outage, name="outage")
    thread.start()
    return thread


async def test_polling_rides_out_a_blackout_longer_than_the_retries(tmp_path: Path) -> None:
    settings = SimSettings(seed=4, batch_min_seconds=2.0)  # the batch runs on through the outage
    overrides = {"judge.mode": "realtime", "endpoint.max_retries": 2}
    with EmbeddedServer(CountingBackend(settings), data_dir=tmp_path / "server") as url:
        proxy = FaultProxy(url)
        with proxy as proxied:
            outage = black_out_at_the_first_poll(proxy, lift_after_resets=10)
            config = batch_config(proxied, limit=20, per_file=20, settings=overrides)
            async with Evaluation(config, run_dir=tmp_path / "run", clock=FastForwardClock()) as evaluation:
                pass
            outage.join()
            resets = proxy.refused
        paid = submitted_custom_ids(url, "run")
    assert resets >= 10 and evaluation.metrics is not None and evaluation.metrics["n_judged"] == 20
    assert len(paid) == 20 and set(paid.values()) == {1}


async def test_an_outage_longer_than_the_timeout_stops_the_run_naming_the_call(tmp_path: Path) -> None:
    settings = SimSettings(seed=4, batch_min_seconds=2.0)
    overrides = {"judge.mode": "realtime", "endpoint.outage_timeout_s": 120}
    with EmbeddedServer(CountingBackend(settings), data_dir=tmp_path / "server") as url:
        proxy = FaultProxy(url)
        with proxy as proxied:
            outage = black_out_at_the_first_poll(proxy, lift_after_resets=None)
            config = batch_config(proxied, limit=20, per_file=20, settings=overrides)
            with pytest.raises(ProviderError) as caught:
                async with Evaluation(config, run_dir=tmp_path / "run", clock=FastForwardClock()):
                    pass
            outage.join()
            proxy.lift()
            async with Evaluation(run_dir=tmp_path / "run", resume=True) as resumed:  # the batch ran on
                pass
        paid = submitted_custom_ids(url, "run")
    message = str(caught.value)
    assert re.fullmatch(r"polling batch batch_\w+ \(predict-00001\) failed for 12\d s "
                        r"\(endpoint\.outage_timeout_s = 120\): connection failed: .+", message), message
    assert "\n" not in message
    assert resumed.metrics is not None and resumed.metrics["n_judged"] == 20
    assert len(paid) == 20 and set(paid.values()) == {1}


# -- item 2: resume pays only for lines without a journaled outcome ------------------------------


async def test_resume_does_not_pay_again_for_lines_answered_before_the_stop(tmp_path: Path) -> None:
    # Every batch line fails, so each is retried as a realtime call. The first of those calls is
    # held unanswered: when the other 9 rows are judged, the run stops with one row owed.
    backend = PerRequestBackend(SimSettings(seed=3, batch_fail_rate=1.0), hold_first_predict=True)
    settings = {"judge.mode": "realtime", "batch.realtime_retry_below": 1000, "endpoint.timeout_s": 600}
    with EmbeddedServer(backend, data_dir=tmp_path / "server") as url:
        joined = 0
        with anyio.CancelScope() as scope:
            config = batch_config(url, limit=10, per_file=10, settings=settings)
            async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
                async for _ in evaluation:
                    joined += 1
                    if joined == 9:
                        scope.cancel()
        assert scope.cancelled_caught and joined == 9
        async with Evaluation(run_dir=tmp_path / "run", resume=True) as resumed:
            pass
        paid = paid_per_custom_id(url, "run", backend)
    assert resumed.metrics is not None and resumed.metrics["n_judged"] == 10
    # One batch line each, one realtime retry each; the held row's retry was sent once more.
    assert sorted(paid.values()) == [2] * 9 + [3], paid


# -- item 14: an endpoint without a Batch API --------------------------------------------------


@asynccontextmanager
async def chat_only_server() -> AsyncIterator[tuple[str, list[str]]]:
    """An endpoint that serves chat completions and nothing else, and answers any other path
    with aiohttp's plain-text 404 (llama.cpp's and Ollama's are not OpenAI error objects either).
    Yields its base URL and the requests it saw."""
    seen: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        response: web.StreamResponse = await handler(request)
        return response

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Drama"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    app = web.Application(middlewares=[record])
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


async def test_batch_mode_without_a_batch_api_says_how_to_get_one(tmp_path: Path) -> None:
    with EmbeddedServer(CountingBackend(SimSettings(seed=1)), batch_api=False) as url:
        proxy = FaultProxy(url)  # counts what the engine asked for
        with proxy as proxied:
            with pytest.raises(BatchApiMissingError) as caught:
                async with Evaluation(batch_config(proxied, limit=10), run_dir=tmp_path / "run"):
                    pass
            requests = [request for request in proxy.requests if request[1] != "/v1/chat/completions"]
    message = str(caught.value)
    assert "no Files/Batches API" in message and proxied in message and "\n" not in message
    assert "python -m engine serve --backend upstream --upstream-url" in message and "realtime" in message
    assert requests == [("POST", "/v1/files")], "the run went on after the 404"


async def test_every_batch_call_that_finds_no_batch_api_says_so(tmp_path: Path) -> None:
    request = tmp_path / "predict-00001.jsonl"
    request.write_text("{}\n")
    async with chat_only_server() as (url, seen), OpenAIProvider(url, "x") as client:
        with pytest.raises(BatchApiMissingError, match="no Files/Batches API"):
            await client.upload_input(request, request.name)
        with pytest.raises(BatchApiMissingError, match="no Files/Batches API"):
            await client.create_batch("file-1", {})
        with pytest.raises(BatchApiMissingError, match="no Files/Batches API"):
            async for _ in client.list_batches({}, since=0):
                pass
    assert seen == ["POST /v1/files", "POST /v1/batches", "GET /v1/batches"]


# -- items 19 and 20: realtime retries of batch lines ------------------------------------------


class RecordingChat:
    """The adapter's chat call, recording every request the runner sends."""

    def __init__(self, client: OpenAIProvider) -> None:
        self._client = client
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest) -> ChatReply:
        self.requests.append(request)
        return await self._client.complete(request)


async def test_batch_lines_retried_in_realtime_are_charged_their_token_estimate(tmp_path: Path) -> None:
    delivered: dict[str, Outcome] = {}

    async def deliver(row: Row, outcome: Outcome) -> None:
        delivered[outcome.custom_id] = outcome

    backend = CountingBackend(SimSettings(seed=5, batch_fail_rate=1.0))
    with EmbeddedServer(backend, data_dir=tmp_path / "server") as url:
        async with OpenAIProvider(url, "x") as client:
            chat = RecordingChat(client)
            clock = InstantClock()
            stage = BatchStage(
                stage="predict", provider=client, run_dir=RunDir(tmp_path / "run"), run_id="run",
                settings=BatchConfig(poll_initial_s=0.02, poll_max_s=0.05, realtime_retry_below=100),
                policy=RetryPolicy(), clock=clock,
                realtime=RealtimeRunner(chat, Limiter(concurrency=4, clock=clock), RetryPolicy(), clock),
                journaled=lambda custom_ids: set(), progress={}, outage_timeout_s=900.0,
            )
            sent: dict[str, int] = {}
            async with anyio.create_task_group() as group:
                await group.start(stage.run, deliver)
                for index in range(3):
                    messages = [{"role": "user", "content": f"Pick one of Drama, Comedy, Crime for row {index}. " * 5}]
                    body = {"model": "m", "messages": messages, "max_tokens": 40}
                    request = ChatRequest(f"predict:{index}", str(index), "predict", body, estimate_tokens(messages, 40))
                    sent[request.custom_id] = request.estimated_tokens
                    await stage.submit(Row(str(index), index, {}), request)
                await stage.close()
    assert len(delivered) == 3 and backend.calls == 3
    assert {request.custom_id: request.estimated_tokens for request in chat.requests} == sent
    assert all(tokens > 40 for tokens in sent.values())


async def test_outcomes_of_lines_retried_in_batches_count_every_batch_they_were_in(tmp_path: Path) -> None:
    backend = PerRequestBackend(SimSettings(seed=6, batch_fail_rate=0.3))
    settings = {"judge.mode": "realtime", "batch.realtime_retry_below": 0, "batch.max_line_retries": 2}
    with EmbeddedServer(backend, data_dir=tmp_path / "server") as url:
        async with Evaluation(batch_config(url, limit=20, per_file=20, settings=settings), run_dir=tmp_path / "run"):
            pass
        paid = submitted_custom_ids(url, "run")
    attempts = journaled_attempts(tmp_path / "run")
    # Answered in the first batch, in a retry batch, or failed in all three.
    assert set(attempts.values()) <= {1, 2, 3} and max(attempts.values()) > 1
    assert attempts == dict(paid)


async def test_outcomes_of_lines_retried_in_realtime_count_the_batch_and_each_call(tmp_path: Path) -> None:
    backend = PerRequestBackend(SimSettings(seed=7, batch_fail_rate=1.0, error_rate=0.4))
    settings = {"judge.mode": "realtime", "batch.realtime_retry_below": 1000, "endpoint.max_retries": 20}
    with EmbeddedServer(backend, data_dir=tmp_path / "server") as url:
        config = batch_config(url, limit=20, per_file=20, settings=settings)
        async with Evaluation(config, run_dir=tmp_path / "run", clock=InstantClock()):
            pass
        paid = paid_per_custom_id(url, "run", backend)
    attempts = journaled_attempts(tmp_path / "run")
    assert len(attempts) == 20 and max(attempts.values()) > 2  # some realtime retries were retried
    assert attempts == dict(paid)
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert results.filter(pl.col("status") == "judged").height == 20
