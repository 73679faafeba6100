"""The embedded server's Anthropic Message Batches, driven by the official anthropic SDK over real
HTTP; every batch object and result line is validated by the SDK's own types."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import anyio
import anyio.to_thread
import openai
import pytest
from anthropic.types import Message
from anthropic.types.messages import DeletedMessageBatch, MessageBatch, MessageBatchIndividualResponse

from adapters.server.backends import Backend, BackendReply, SimBackend, SimSettings
from adapters.server.batch_jobs import BatchSettings
from adapters.server.embedded import embedded_server
from tests.support.counting import request_key

from .test_server_batches import GatedBackend, jsonl, request_line
from .test_server_messages import MODEL, VERDICT_TOOL, exact

HEADERS = {"x-api-key": "test", "anthropic-version": "2023-06-01"}


@asynccontextmanager
async def client(
    backend: Backend | None = None, *, data_dir: Path | None = None, settings: BatchSettings = BatchSettings()
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with embedded_server(backend or SimBackend(SimSettings()), data_dir=data_dir, batch_settings=settings) as url:
        async with anthropic.AsyncAnthropic(base_url=url.removesuffix("/v1"), api_key="test", max_retries=0) as sdk:
            yield sdk


def params(i: int, **changes: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"Movie {i}: Drama or Comedy?"}]
    return {"model": MODEL, "max_tokens": 64, "messages": messages, **changes}


def requests(n: int, **changes: Any) -> list[dict[str, Any]]:
    return [{"custom_id": f"row-{i}", "params": params(i, **changes)} for i in range(n)]


async def raw(sdk: anthropic.AsyncAnthropic, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    """``(status, body)`` of a raw request; the body is JSON, or the text of a JSONL one."""
    url = path if path.startswith("http") else f"{str(sdk.base_url).rstrip('/')}{path}"
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, headers=HEADERS, **kw) as response:
            text = await response.text()
            is_json = response.content_type == "application/json"
            return response.status, json.loads(text) if is_json else text


async def batch_json(sdk: anthropic.AsyncAnthropic, batch_id: str) -> MessageBatch:
    """The batch as the server sends it, validated by the SDK's type."""
    status, data = await raw(sdk, "GET", f"/v1/messages/batches/{batch_id}")
    assert status == 200
    batch: MessageBatch = exact(MessageBatch, data)
    return batch


async def settle(sdk: anthropic.AsyncAnthropic, batch_id: str) -> MessageBatch:
    """Poll until the batch has ended (bounded: about 20 s)."""
    for _ in range(2000):
        batch = await batch_json(sdk, batch_id)
        if batch.processing_status == "ended":
            return batch
        await anyio.sleep(0.01)
    raise AssertionError(f"batch {batch_id} still {batch.processing_status}")


async def results(sdk: anthropic.AsyncAnthropic, batch: MessageBatch) -> dict[str, MessageBatchIndividualResponse]:
    """The batch's results by custom_id: read raw from ``results_url`` and validated, and the same
    through the SDK's ``batches.results``."""
    assert batch.results_url is not None
    status, text = await raw(sdk, "GET", batch.results_url)
    assert status == 200
    lines = [exact(MessageBatchIndividualResponse, json.loads(line)) for line in text.splitlines()]
    for line in lines:
        if line.result.type == "succeeded":
            exact(Message, line.result.message.model_dump(exclude_unset=True))
    through_sdk = [line async for line in await sdk.messages.batches.results(batch.id)]
    assert through_sdk == lines
    return {line.custom_id: line for line in lines}


async def test_a_batch_runs_end_to_end_with_a_request_that_errs() -> None:
    backend = SimBackend(SimSettings(models=(MODEL,)))
    batch_requests = [*requests(4), {"custom_id": "unknown-model", "params": params(9, model="claude-nope")}]
    batch_requests[1]["params"] |= {"tools": [VERDICT_TOOL], "tool_choice": {"type": "tool", "name": "answer"}}
    async with client(backend) as sdk:
        created = await sdk.messages.batches.create(requests=batch_requests)  # type: ignore[arg-type]
        first = await batch_json(sdk, created.id)
        ended = await settle(sdk, created.id)
        by_id = await results(sdk, ended)
        assert await sdk.messages.batches.retrieve(created.id) == ended
    assert created.id.startswith("msgbatch_") and created.type == "message_batch"
    assert first.processing_status in ("in_progress", "ended")
    if first.processing_status == "in_progress":
        assert first.request_counts.processing == 5 and first.results_url is None and first.ended_at is None
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired) == (0, 4, 1, 0, 0)
    assert ended.ended_at is not None and ended.cancel_initiated_at is None and ended.archived_at is None
    assert ended.expires_at > ended.created_at and ended.ended_at >= ended.created_at
    assert ended.results_url == f"{str(sdk.base_url).rstrip('/')}/v1/messages/batches/{created.id}/results"
    assert set(by_id) == {"row-0", "row-1", "row-2", "row-3", "unknown-model"}
    succeeded = by_id["row-0"].result
    assert succeeded.type == "succeeded" and succeeded.message.usage.service_tier == "batch"
    assert succeeded.message.content[0].type == "text"
    tool = by_id["row-1"].result
    assert tool.type == "succeeded" and tool.message.stop_reason == "tool_use"
    errored = by_id["unknown-model"].result
    assert errored.type == "errored" and errored.error.error.type == "not_found_error"


async def test_failed_lines_of_the_batch_policy_are_api_errors() -> None:
    async with client(SimBackend(SimSettings(batch_fail_rate=1.0))) as sdk:
        ended = await settle(sdk, (await sdk.messages.batches.create(requests=requests(3))).id)  # type: ignore[arg-type]
        by_id = await results(sdk, ended)
    assert ended.request_counts.errored == 3
    for line in by_id.values():
        assert line.result.type == "errored" and line.result.error.error.type == "api_error"


async def test_list_pages_newest_first_and_keeps_openai_batches_apart() -> None:
    async with client(SimBackend(SimSettings(batch_stall_validating=True))) as sdk:
        made = [(await sdk.messages.batches.create(requests=requests(1))).id for _ in range(5)]  # type: ignore[arg-type]
        newest = made[::-1]
        listed = [batch.id async for batch in sdk.messages.batches.list(limit=2)]
        status, page = await raw(sdk, "GET", "/v1/messages/batches", params={"limit": "2"})
        _, after = await raw(sdk, "GET", "/v1/messages/batches", params={"limit": "2", "after_id": newest[3]})
        _, before = await raw(sdk, "GET", "/v1/messages/batches", params={"limit": "2", "before_id": newest[3]})
        _, top = await raw(sdk, "GET", "/v1/messages/batches", params={"before_id": newest[1]})
        bad = [
            (await raw(sdk, "GET", "/v1/messages/batches", params=query))[0]
            for query in ({"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"after_id": "msgbatch_nope"})
        ]
        async with openai.AsyncOpenAI(base_url=f"{str(sdk.base_url).rstrip('/')}/v1", api_key="test", max_retries=0) as oai:
            uploaded = await oai.files.create(file=("input.jsonl", jsonl([request_line(0)])), purpose="batch")
            openai_batch = await oai.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            openai_ids = [batch.id async for batch in oai.batches.list()]
        still = [batch.id async for batch in sdk.messages.batches.list()]
    assert listed == newest
    assert status == 200 and [exact(MessageBatch, item).id for item in page["data"]] == newest[:2]
    assert (page["has_more"], page["first_id"], page["last_id"]) == (True, newest[0], newest[1])
    assert [item["id"] for item in after["data"]] == newest[4:] and after["has_more"] is False
    assert [item["id"] for item in before["data"]] == newest[1:3] and before["has_more"] is True
    assert [item["id"] for item in top["data"]] == newest[:1] and top["has_more"] is False
    assert bad == [400, 400, 400, 400]
    assert openai_ids == [openai_batch.id] and still == newest


async def test_cancel_ends_the_batch_with_its_unrun_requests_canceled() -> None:
    async with client(SimBackend(SimSettings(batch_stall_validating=True))) as sdk:
        created = await sdk.messages.batches.create(requests=requests(3))  # type: ignore[arg-type]
        status, early = await raw(sdk, "GET", f"/v1/messages/batches/{created.id}/results")
        canceling = await sdk.messages.batches.cancel(created.id)
        ended = await settle(sdk, created.id)
        by_id = await results(sdk, ended)
        with pytest.raises(anthropic.BadRequestError):
            await sdk.messages.batches.cancel(created.id)
    assert status == 400 and early["error"]["type"] == "invalid_request_error"
    assert canceling.processing_status in ("canceling", "ended") and canceling.cancel_initiated_at is not None
    assert ended.cancel_initiated_at == canceling.cancel_initiated_at
    assert ended.request_counts.canceled == 3 and ended.request_counts.processing == 0
    assert {line.result.type for line in by_id.values()} == {"canceled"}


async def test_a_cancel_lets_running_requests_finish() -> None:
    backend = GatedBackend(SimSettings(), signal_blocked=2)
    async with client(backend, settings=BatchSettings(concurrency=2)) as sdk:
        created = await sdk.messages.batches.create(requests=requests(6))  # type: ignore[arg-type]
        assert await anyio.to_thread.run_sync(backend.blocked.wait, 10.0)
        canceling = await sdk.messages.batches.cancel(created.id)
        backend.open()
        ended = await settle(sdk, created.id)
        by_id = await results(sdk, ended)
    assert canceling.processing_status == "canceling"
    counts = ended.request_counts
    assert (counts.succeeded, counts.canceled, counts.errored) == (2, 4, 0)
    assert sum(line.result.type == "succeeded" for line in by_id.values()) == 2


async def test_an_expired_batch_reports_its_unrun_requests_expired() -> None:
    backend = GatedBackend(SimSettings(batch_expire_after_s=0.5), free=2)
    async with client(backend) as sdk:
        ended = await settle(sdk, (await sdk.messages.batches.create(requests=requests(5))).id)  # type: ignore[arg-type]
        by_id = await results(sdk, ended)
    counts = ended.request_counts
    assert (counts.succeeded, counts.expired, counts.errored) == (2, 3, 0)
    assert sorted(line.result.type for line in by_id.values()) == ["expired"] * 3 + ["succeeded"] * 2


async def test_delete_only_once_ended_and_then_it_is_gone() -> None:
    async with client(SimBackend(SimSettings(batch_stall_validating=True))) as sdk:
        created = await sdk.messages.batches.create(requests=requests(1))  # type: ignore[arg-type]
        with pytest.raises(anthropic.BadRequestError):
            await sdk.messages.batches.delete(created.id)
        await sdk.messages.batches.cancel(created.id)
        await settle(sdk, created.id)
        status, deleted = await raw(sdk, "DELETE", f"/v1/messages/batches/{created.id}")
        with pytest.raises(anthropic.NotFoundError) as missing:
            await sdk.messages.batches.retrieve(created.id)
        listed = [batch.id async for batch in sdk.messages.batches.list()]
        gone = (await raw(sdk, "GET", f"/v1/messages/batches/{created.id}/results"))[0]
    assert status == 200
    assert exact(DeletedMessageBatch, deleted) == DeletedMessageBatch(id=created.id, type="message_batch_deleted")
    assert missing.value.type == "not_found_error" and listed == [] and gone == 404


async def test_a_restarted_server_resumes_the_batch_without_running_a_request_twice(tmp_path: Path) -> None:
    settings = BatchSettings(concurrency=1, shutdown_grace_s=0.0)
    first = GatedBackend(SimSettings(), free=3)
    async with client(first, data_dir=tmp_path, settings=settings) as sdk:
        created = await sdk.messages.batches.create(requests=requests(8))  # type: ignore[arg-type]
        assert await anyio.to_thread.run_sync(first.blocked.wait, 10.0)
    second = RecordingGate()
    async with client(second, data_dir=tmp_path, settings=settings) as sdk:
        assert await anyio.to_thread.run_sync(second.blocked.wait, 10.0)
        resumed = await batch_json(sdk, created.id)
        second.open()
        ended = await settle(sdk, created.id)
        by_id = await results(sdk, ended)
        listed = [batch.id async for batch in sdk.messages.batches.list()]
    assert resumed.processing_status == "in_progress" and resumed.request_counts.processing == 8
    assert ended.request_counts.succeeded == 8 and set(by_id) == {f"row-{i}" for i in range(8)}
    # The first server answered three; the fourth was cut off and runs again, once.
    assert second.calls == 5 and set(second.requests.values()) == {1}
    assert set(second.requests) == {request_key(_chat(params(i))) for i in range(3, 8)}
    assert listed == [created.id]


async def test_ended_and_deleted_batches_stay_so_after_a_restart(tmp_path: Path) -> None:
    async with client(data_dir=tmp_path) as sdk:
        kept = await settle(sdk, (await sdk.messages.batches.create(requests=requests(2))).id)  # type: ignore[arg-type]
        kept_results = await results(sdk, kept)
        gone = await settle(sdk, (await sdk.messages.batches.create(requests=requests(1))).id)  # type: ignore[arg-type]
        await sdk.messages.batches.delete(gone.id)
    async with client(data_dir=tmp_path) as sdk:
        again = await batch_json(sdk, kept.id)
        again_results = await results(sdk, again)
        listed = [batch.id async for batch in sdk.messages.batches.list()]
        with pytest.raises(anthropic.NotFoundError):
            await sdk.messages.batches.retrieve(gone.id)
    assert again.request_counts == kept.request_counts and again_results == kept_results
    assert listed == [kept.id]


class RecordingGate(GatedBackend):
    """The simulator, every call held until :meth:`open`; ``requests`` counts them by request."""

    def __init__(self) -> None:
        super().__init__(SimSettings())
        self.requests: Counter[str] = Counter()

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        self.requests[request_key(body)] += 1
        return await super().complete(body)


def _chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat body the server sends the backend for Messages ``body`` (plain text params)."""
    return {"model": body["model"], "messages": body["messages"]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "requests: Field required"),
        ({"requests": []}, 400, "requests: List should have at least 1 item"),
        ({"requests": requests(1), "metadata": {}}, 400, "metadata: Extra inputs are not permitted"),
        ({"requests": [{"custom_id": "a b", "params": params(0)}]}, 400, "requests.0.custom_id: String should match pattern"),
        ({"requests": [{"custom_id": "x" * 65, "params": params(0)}]}, 400, "requests.0.custom_id: String should match pattern"),
        ({"requests": [*requests(1), {"custom_id": "row-0", "params": params(1)}]}, 400,
         "requests: custom_id 'row-0' is used more"),
        ({"requests": [*requests(1), {"custom_id": "b", "params": {"model": MODEL, "messages": []}}]}, 400,
         "requests.1.params.max_tokens: Field required"),
        ({"requests": [{"custom_id": "a", "params": params(0, temperature=3)}]}, 400,
         "requests.0.params.temperature: Input should be less than or equal to 1"),
        ({"requests": [{"custom_id": "a", "params": params(0, stream=True)}]}, 400, "requests.0.params.stream: a Message Batch"),
        ({"requests": [{"custom_id": "a"}]}, 400, "requests.0.params: Field required"),
    ],
)
async def test_a_bad_create_is_an_invalid_request_error_naming_the_request(body: Any, status: int, message: str) -> None:
    async with client() as sdk:
        got, data = await raw(sdk, "POST", "/v1/messages/batches", json=body)
        listed = [batch.id async for batch in sdk.messages.batches.list()]
    assert got == status and data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert data["error"]["message"].startswith(message), data["error"]["message"]
    assert listed == []


async def test_at_most_100000_requests_and_the_servers_bytes() -> None:
    tiny = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    over = {"requests": [{"custom_id": f"r{i}", "params": tiny} for i in range(100_001)]}
    async with client() as sdk:
        with pytest.raises(anthropic.BadRequestError) as many:
            await sdk.messages.batches.create(requests=over["requests"])  # type: ignore[arg-type]
    async with client(settings=BatchSettings(max_file_bytes=2000)) as sdk:
        with pytest.raises(anthropic.APIStatusError) as large:
            await sdk.messages.batches.create(requests=requests(20))  # type: ignore[arg-type]
        fits = await sdk.messages.batches.create(requests=requests(2))  # type: ignore[arg-type]
    assert "at most 100000 items" in str(many.value.api_message)
    assert large.value.status_code == 413 and large.value.type == "invalid_request_error"
    assert fits.request_counts.processing == 2


async def test_unknown_batches_are_not_found_errors() -> None:
    async with client() as sdk:
        for call in (sdk.messages.batches.retrieve, sdk.messages.batches.cancel, sdk.messages.batches.delete):
            with pytest.raises(anthropic.NotFoundError) as missing:
                await call("msgbatch_0000")
            assert missing.value.type == "not_found_error"
        status, data = await raw(sdk, "GET", "/v1/messages/batches/batch_0000")
    assert status == 404 and data["error"]["type"] == "not_found_error"
