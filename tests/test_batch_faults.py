"""Batch mode under faults: nothing is paid twice, outages are ridden out, a missing Batch API is named.

Money is counted at the server: the request lines of every batch it holds for a run (listed
directly, not through a proxy) and, per request body, the chat calls its backend answered.
"""

from __future__ import annotations

import json
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

from adapters.local.backends.base import Completion, Hang
from adapters.local.backends.sim import SimSettings
from adapters.local.embedded import EmbeddedServer
from adapters.openai_compat import BatchApiMissingError, OpenAICompatClient
from benchmarks.faults import CountingBackend
from engine import Evaluation
from engine.batch import BatchProgress, BatchStage
from engine.config import BatchConfig
from engine.journal import journal_path, scan_journal
from engine.limits import Limiter
from engine.prompts import estimate_tokens
from engine.realtime import Completion as ChatCompletion
from engine.realtime import RealtimeRunner
from engine.retry import RetryPolicy
from engine.types import ChatRequest, Outcome, Row

from .test_batch_mode import CancelOnFirstPoll, batch_config, comparable, submitted_custom_ids
from .test_end_to_end import InstantClock

PREDICT_MODEL = "klusterai/Meta-Llama-3.1-8B-Instruct-Turbo"


def body_key(body: dict[str, Any]) -> str:
    return json.dumps([body.get("model"), body.get("messages")], sort_keys=True)


class PerRequestBackend:
    """The sim, counting the chat calls it answers per request body.

    ``hold_first_predict`` holds the first predict call of a row unanswered (the server keeps it
    until the client leaves), which leaves the row without an outcome while every other row
    finishes. A row's predict call asks for a ``response_format``; the engine's start-up ping does
    not.
    """

    def __init__(self, settings: SimSettings, *, hold_first_predict: bool = False) -> None:
        self._inner = CountingBackend(settings)
        self.hold_first_predict = hold_first_predict
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def complete(self, body: dict[str, Any]) -> Completion:
        self.calls[body_key(body)] += 1
        if self.hold_first_predict and body.get("model") == PREDICT_MODEL and "response_format" in body:
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
    journal = scan_journal(journal_path(run_dir, "predict")).select("custom_id", "attempts").collect()
    return dict(zip(journal["custom_id"].to_list(), journal["attempts"].to_list()))


# -- item 2: resume pays only for lines without a journaled outcome ------------------------------


async def test_resume_does_not_pay_again_for_lines_answered_before_the_stop(tmp_path: Path) -> None:
    # Every batch line fails, so each is retried as a realtime call. The first of those calls is
    # held unanswered: when the other 9 rows are judged, the run stops with one row owed.
    backend = PerRequestBackend(SimSettings(seed=3, batch_fail_rate=1.0), hold_first_predict=True)
    settings = {"judge.mode": "realtime", "batch.realtime_retry_below": 1000, "endpoint.timeout_s": 600}
    with EmbeddedServer(backend, data_dir=tmp_path / "server") as url:
        joined = 0
        with anyio.CancelScope() as scope:
            async with Evaluation(batch_config(url, limit=10, per_file=10, settings=settings), run_dir=tmp_path / "run") as evaluation:
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


# -- item 3: a deleted request file is restored from the provider's copy -------------------------


async def test_resume_restores_deleted_request_files_instead_of_paying_again(tmp_path: Path) -> None:
    settings = SimSettings(seed=8, batch_min_seconds=0.3)
    with EmbeddedServer(CountingBackend(settings), data_dir=tmp_path / "server") as url:
        async with Evaluation(batch_config(url), run_dir=tmp_path / "whole"):
            pass
        with anyio.CancelScope() as scope:
            async with Evaluation(batch_config(url), run_dir=tmp_path / "cut", clock=CancelOnFirstPoll(scope)):
                pass
        assert scope.cancelled_caught
        requests = [path for path in (tmp_path / "cut" / "batches").glob("predict-?????.jsonl")]
        assert requests
        for path in requests:
            path.unlink()
        async with Evaluation(run_dir=tmp_path / "cut", resume=True) as resumed:
            pass
        paid = submitted_custom_ids(url, "cut")
    assert resumed.metrics is not None and resumed.metrics["n_judged"] == 60
    assert comparable(tmp_path / "cut").equals(comparable(tmp_path / "whole"))
    assert len(paid) == 120 and set(paid.values()) == {1}, "a request was submitted twice"
    assert (tmp_path / "cut" / "batches" / "predict-00001.jsonl").exists()


# -- item 14: an endpoint without a Batch API --------------------------------------------------


@asynccontextmanager
async def chat_only_server() -> AsyncIterator[tuple[str, list[str]]]:
    """An endpoint that serves chat completions and nothing else (llama.cpp, Ollama): every
    other path is a 404. Yields its base URL and the requests it saw."""
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
    async with chat_only_server() as (url, seen):
        with pytest.raises(BatchApiMissingError) as caught:
            async with Evaluation(batch_config(url, limit=10), run_dir=tmp_path / "run"):
                pass
    message = str(caught.value)
    assert "no Files/Batches API" in message and url in message
    assert "python -m engine serve --backend upstream --upstream-url" in message and "realtime" in message
    assert "\n" not in message
    assert [request for request in seen if "chat" not in request] == ["POST /v1/files"], "retried a 404"


async def test_every_batch_call_that_finds_no_batch_api_says_so(tmp_path: Path) -> None:
    request = tmp_path / "predict-00001.jsonl"
    request.write_text("{}\n")
    async with chat_only_server() as (url, seen), OpenAICompatClient(url, "x") as client:
        with pytest.raises(BatchApiMissingError, match="no Files/Batches API"):
            await client.upload_batch_file(request, request.name)
        with pytest.raises(BatchApiMissingError, match="no Files/Batches API"):
            await client.create_batch("file-1", {})
        with pytest.raises(BatchApiMissingError, match="no Files/Batches API"):
            async for _ in client.list_batches():
                pass
    assert seen == ["POST /v1/files", "POST /v1/batches", "GET /v1/batches"]


# -- items 19 and 20: realtime retries of batch lines ------------------------------------------


class RecordingChat:
    """The adapter's chat call, recording every request the runner sends."""

    def __init__(self, client: OpenAICompatClient) -> None:
        self._client = client
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest) -> ChatCompletion:
        self.requests.append(request)
        return await self._client.complete(request)


async def test_batch_lines_retried_in_realtime_are_charged_their_token_estimate(tmp_path: Path) -> None:
    delivered: dict[str, Outcome] = {}

    async def deliver(row: Row, outcome: Outcome) -> None:
        delivered[outcome.custom_id] = outcome

    backend = CountingBackend(SimSettings(seed=5, batch_fail_rate=1.0))
    with EmbeddedServer(backend, data_dir=tmp_path / "server") as url:
        async with OpenAICompatClient(url, "x") as client:
            chat = RecordingChat(client)
            clock = InstantClock()
            stage = BatchStage(
                stage="predict", client=client, run_dir=tmp_path / "run", run_id="run",
                settings=BatchConfig(poll_initial_s=0.02, poll_max_s=0.05, realtime_retry_below=100),
                policy=RetryPolicy(), clock=clock,
                realtime=RealtimeRunner(chat, Limiter(concurrency=4, clock=clock), RetryPolicy(), clock),
                journaled=set, progress={}, outage_timeout_s=900.0,
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
    assert set(attempts.values()) == {1, 3}  # answered in the first batch, or failed in all three
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
