"""The embedded server's Files and Batches APIs, driven by the official openai SDK over real HTTP."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import jsonschema
import openai
import pytest
import yarl
from openai.types import Batch
from openai.types.chat import ChatCompletion

from adapters.server.backends import Backend, BackendReply, SimBackend, SimSettings
from adapters.server.batch_jobs import BatchSettings
from adapters.server.batch_lines import read_lines
from adapters.server.embedded import embedded_server
from engine.provider import TERMINAL_BATCH_STATUSES

from .test_server import GENRE_SET, genre_messages

SCHEMAS_PATH = Path(__file__).parent / "data" / "openai_schemas.json"


def _nullable_optionals(node: Any) -> Any:
    """``node`` with every property that is not required also allowed to be null.

    OpenAI's spec types optional fields without null, yet the API sends them as null (its own
    example batch has ``"errors": null``) and the SDK types them ``Optional``.
    """
    if isinstance(node, list):
        return [_nullable_optionals(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_optionals(value) for key, value in node.items()}
    if isinstance(props := out.get("properties"), dict):
        required = set(out.get("required", ()))
        out["properties"] = {
            name: prop if name in required else {"anyOf": [prop, {"type": "null"}]}
            for name, prop in props.items()
        }
    return out


SCHEMAS = _nullable_optionals(json.loads(SCHEMAS_PATH.read_text(encoding="utf-8")))


def assert_valid(name: str, instance: Any) -> None:
    """Validate ``instance`` against OpenAI's schema ``name``."""
    jsonschema.Draft202012Validator({**SCHEMAS, "$ref": f"#/components/schemas/{name}"}).validate(instance)


def request_line(i: int, **changes: Any) -> dict[str, Any]:
    line = {
        "custom_id": f"row-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": genre_messages(f"Movie {i}")},
    }
    return {**line, **changes}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@asynccontextmanager
async def batch_client(
    backend: Backend | None = None, *, data_dir: Path | None = None, settings: BatchSettings = BatchSettings()
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with embedded_server(
        backend or SimBackend(SimSettings()), data_dir=data_dir, batch_settings=settings
    ) as url:
        async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
            yield client


async def submit(client: openai.AsyncOpenAI, data: bytes, **metadata: str) -> Batch:
    uploaded = await client.files.create(file=("input.jsonl", data), purpose="batch")
    return await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata or None,
    )


async def settle(client: openai.AsyncOpenAI, batch_id: str, statuses: frozenset[str] = TERMINAL_BATCH_STATUSES) -> Batch:
    """Poll until the batch reaches one of ``statuses`` (bounded: about 20 s)."""
    for _ in range(2000):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        await anyio.sleep(0.01)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


async def lines_of(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.content.splitlines()]


async def raw_json(client: openai.AsyncOpenAI, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{client.base_url}{path}", **kw) as response:
            return response.status, await response.json()


class GatedBackend:
    """The simulator, but calls after the first ``free`` wait until :meth:`open` (from any thread).

    ``blocked`` is set once ``signal_blocked`` calls are waiting.
    """

    name = "gated"
    models = None

    def __init__(self, settings: SimSettings, *, free: int = 0, signal_blocked: int = 1) -> None:
        self._inner = SimBackend(settings)
        self.batch_policy = self._inner.batch_policy
        self.calls = 0
        self.blocked = threading.Event()
        self._free = free
        self._signal_blocked = signal_blocked
        self._waiting = 0
        self._gate = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        self.calls += 1
        if self.calls > self._free:
            self._loop = asyncio.get_running_loop()
            self._waiting += 1
            if self._waiting >= self._signal_blocked:
                self.blocked.set()
            await self._gate.wait()
        return await self._inner.complete(body)

    def open(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._gate.set)


class RecordingBackend:
    """The simulator, counting calls per prompt in a shared counter; ``reached`` after ``signal_after``."""

    name = "recording"
    models = None

    def __init__(self, settings: SimSettings, calls: Counter[str], *, signal_after: int = 0) -> None:
        self._inner = SimBackend(settings)
        self.calls = calls
        self.reached = threading.Event()
        self._signal_after = signal_after

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        self.calls[body["messages"][-1]["content"]] += 1
        if self._signal_after and self.calls.total() >= self._signal_after:
            self.reached.set()
        return await self._inner.complete(body)


async def test_seed_flow_upload_create_poll_download() -> None:
    lines = [request_line(i) for i in range(30)]
    async with batch_client() as client:
        uploaded = await client.files.create(file=("predict.jsonl", jsonl(lines)), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"stage": "predict"},
        )
        batch = await settle(client, created.id)
        output = await lines_of(client, batch.output_file_id)
        assert batch.output_file_id is not None
        output_file = await client.files.retrieve(batch.output_file_id)
        _, raw_file = await raw_json(client, "GET", f"files/{uploaded.id}")
        _, raw_batch = await raw_json(client, "GET", f"batches/{batch.id}")
    assert uploaded.id.startswith("file-") and uploaded.purpose == "batch"
    assert uploaded.filename == "predict.jsonl" and uploaded.bytes == len(jsonl(lines))
    assert_valid("OpenAIFile", raw_file)
    assert_valid("Batch", raw_batch)
    assert created.status == "validating" and created.id.startswith("batch_")
    assert batch.status == "completed" and batch.error_file_id is None and batch.errors is None
    assert batch.metadata == {"stage": "predict"}
    assert batch.request_counts is not None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (30, 30, 0)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.expires_at
    assert output_file.purpose == "batch_output"
    assert sorted(line["custom_id"] for line in output) == sorted(line["custom_id"] for line in lines)
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        assert_valid("CreateChatCompletionResponse", line["response"]["body"])
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.model == "sim:m" and completion.choices[0].message.content in GENRE_SET


async def test_chat_completion_and_batch_list_match_openai_schemas() -> None:
    async with batch_client(SimBackend(SimSettings(batch_stall_validating=True))) as client:
        status, reply = await raw_json(
            client, "POST", "chat/completions", json={"model": "m", "messages": genre_messages()}
        )
        created = [await submit(client, jsonl([request_line(0)])) for _ in range(5)]
        status_page, first = await raw_json(client, "GET", "batches", params={"limit": "2"})
        _, second = await raw_json(client, "GET", "batches", params={"limit": "2", "after": first["last_id"]})
        listed = [batch.id async for batch in client.batches.list(limit=2)]
        _, files = await raw_json(client, "GET", "files")
    assert status == status_page == 200
    assert_valid("CreateChatCompletionResponse", reply)
    assert_valid("ListBatchesResponse", first)
    newest_first = [batch.id for batch in reversed(created)]
    assert listed == newest_first
    assert [b["id"] for b in first["data"]] == newest_first[:2] and first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (newest_first[0], newest_first[1])
    assert [b["id"] for b in second["data"]] == newest_first[2:4]
    assert files["object"] == "list" and len(files["data"]) == 5
    for file in files["data"]:
        assert_valid("OpenAIFile", file)


async def test_invalid_lines_fail_the_batch_with_their_line_numbers() -> None:
    lines = [
        json.dumps(request_line(1)).encode(),
        b"{not json",
        json.dumps(request_line(1)).encode(),
        json.dumps(request_line(4, url="/v1/embeddings")).encode(),
        json.dumps(request_line(5, body={"messages": []})).encode(),
        json.dumps(request_line(6, method="GET")).encode(),
        json.dumps({"method": "POST"}).encode(),
        json.dumps(request_line(8)).encode(),
    ]
    async with batch_client() as client:
        batch = await settle(client, (await submit(client, b"\n".join(lines) + b"\n")).id)
        _, raw_batch = await raw_json(client, "GET", f"batches/{batch.id}")
    assert batch.status == "failed" and batch.failed_at
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors is not None and batch.errors.data is not None
    found = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert found == [
        (2, "invalid_json_line", None),
        (3, "duplicate_custom_id", "custom_id"),
        (4, "invalid_url", "url"),
        (5, "missing_model", "body.model"),
        (6, "invalid_method", "method"),
        (7, "invalid_custom_id", "custom_id"),
    ]
    assert_valid("Batch", raw_batch)


@pytest.mark.parametrize(
    ("settings", "data", "code"),
    [
        (
            BatchSettings(max_requests=3),
            jsonl([request_line(i) for i in range(4)]),
            "too_many_requests_in_file",
        ),
        (BatchSettings(), b"", "empty_file"),
    ],
)
async def test_file_limits_fail_the_batch(settings: BatchSettings, data: bytes, code: str) -> None:
    async with batch_client(settings=settings) as client:
        batch = await settle(client, (await submit(client, data)).id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert [e.code for e in batch.errors.data] == [code]


async def test_every_line_failing_completes_without_an_output_file() -> None:
    lines = [request_line(i) for i in range(12)]
    async with batch_client(SimBackend(SimSettings(batch_fail_rate=1.0))) as client:
        batch = await settle(client, (await submit(client, jsonl(lines))).id)
        errors = await lines_of(client, batch.error_file_id)
    assert batch.status == "completed" and batch.output_file_id is None
    assert batch.request_counts is not None and batch.request_counts.failed == 12
    assert sorted(e["custom_id"] for e in errors) == sorted(line["custom_id"] for line in lines)
    for error in errors:
        assert error["error"] is None and error["response"]["status_code"] == 500
        assert set(error["response"]["body"]["error"]) == {"message", "type", "param", "code"}


async def test_partial_failures_split_between_the_two_files() -> None:
    settings = SimSettings(batch_fail_rate=0.3, models=("m",), seed=6)
    lines = [request_line(i) for i in range(40)]
    lines.append(request_line(40, body={"model": "unknown", "messages": genre_messages()}))
    lines.append(request_line(41, body={"model": "m", "messages": []}))
    async with batch_client(SimBackend(settings)) as client:
        batch = await settle(client, (await submit(client, jsonl(lines))).id)
        output = await lines_of(client, batch.output_file_id)
        errors = await lines_of(client, batch.error_file_id)
    policy = settings.batch_policy
    expected_failures = {line["custom_id"] for line in lines if policy.fails(line["custom_id"])}
    assert 0 < len(expected_failures) < 40 and not {"row-40", "row-41"} & expected_failures  # (seed 6)
    statuses = {e["custom_id"]: e["response"]["status_code"] for e in errors}
    assert statuses == {**dict.fromkeys(expected_failures, 500), "row-40": 404, "row-41": 400}
    unknown_model = next(e for e in errors if e["custom_id"] == "row-40")
    assert unknown_model["response"]["body"]["error"]["code"] == "model_not_found"
    assert {o["custom_id"] for o in output} == {line["custom_id"] for line in lines} - set(statuses)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(output), len(errors))


async def test_a_line_carried_again_gets_its_own_draw_the_same_in_every_run() -> None:
    """The failing share is drawn per line and attempt: a retried line may succeed, and two
    servers fed the same batches fail the same lines."""
    settings = SimSettings(batch_fail_rate=0.5, seed=2)
    data = jsonl([request_line(i) for i in range(40)])
    failed: list[list[set[str]]] = []
    for _ in range(2):  # two servers, the same two batches each
        async with batch_client(SimBackend(settings)) as client:
            runs = []
            for _ in range(2):
                batch = await settle(client, (await submit(client, data)).id)
                runs.append({line["custom_id"] for line in await lines_of(client, batch.error_file_id)})
            failed.append(runs)
    assert failed[0] == failed[1]
    first, second = failed[0]
    assert 0 < len(first) < 40 and first != second  # the second batch drew again
    policy = settings.batch_policy
    assert first == {f"row-{i}" for i in range(40) if policy.fails(f"row-{i}", 1)}
    assert second == {f"row-{i}" for i in range(40) if policy.fails(f"row-{i}", 2)}


async def test_rate_limited_lines_are_waited_out_not_failed() -> None:
    inner = SimBackend(SimSettings(rpm=1200, burst_seconds=0.01))
    rejected = []

    class Counting:
        name = "counting"
        models = None

        async def complete(self, body: dict[str, Any]) -> BackendReply:
            try:
                return await inner.complete(body)
            except Exception as exc:
                rejected.append(exc)
                raise

    async with batch_client(Counting()) as client:
        batch = await settle(client, (await submit(client, jsonl([request_line(i) for i in range(6)]))).id)
    assert batch.status == "completed" and batch.error_file_id is None
    assert batch.request_counts is not None and batch.request_counts.completed == 6
    assert rejected  # the executor met 429s and retried them


async def test_expiry_keeps_partial_output_and_reports_unrun_lines() -> None:
    backend = GatedBackend(SimSettings(batch_expire_after_s=0.5), free=3)
    async with batch_client(backend) as client:
        batch = await settle(client, (await submit(client, jsonl([request_line(i) for i in range(10)]))).id)
        output = await lines_of(client, batch.output_file_id)
        errors = await lines_of(client, batch.error_file_id)
    assert batch.status == "expired" and batch.expired_at
    assert len(output) == 3 and len(errors) == 7
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert all(e["response"] is None for e in errors)
    assert {line["custom_id"] for line in output + errors} == {f"row-{i}" for i in range(10)}
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 7)


async def test_cancel_lets_in_flight_lines_finish_and_drops_the_rest() -> None:
    backend = GatedBackend(SimSettings(), signal_blocked=2)
    async with batch_client(backend, settings=BatchSettings(concurrency=2)) as client:
        created = await submit(client, jsonl([request_line(i) for i in range(10)]))
        assert await anyio.to_thread.run_sync(backend.blocked.wait, 10.0)
        cancelling = await client.batches.cancel(created.id)
        still = await client.batches.retrieve(created.id)
        backend.open()
        batch = await settle(client, created.id)
        output = await lines_of(client, batch.output_file_id)
        with pytest.raises(openai.ConflictError):
            await client.batches.cancel(created.id)
    assert cancelling.status == still.status == "cancelling" and cancelling.cancelling_at
    assert batch.status == "cancelled" and batch.cancelled_at and batch.error_file_id is None
    assert len(output) == 2 and backend.calls == 2
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (10, 2)


async def test_stalled_validation_ends_when_cancelled() -> None:
    async with batch_client(SimBackend(SimSettings(batch_stall_validating=True))) as client:
        created = await submit(client, jsonl([request_line(0)]))
        for _ in range(5):
            assert (await client.batches.retrieve(created.id)).status == "validating"
            await anyio.sleep(0.01)
        await client.batches.cancel(created.id)
        batch = await settle(client, created.id)
    assert batch.status == "cancelled"
    assert batch.output_file_id is None and batch.error_file_id is None


async def test_min_seconds_delays_completion() -> None:
    started = time.monotonic()
    async with batch_client(SimBackend(SimSettings(batch_min_seconds=0.3))) as client:
        created = await submit(client, jsonl([request_line(0)]))
        batch = await settle(client, created.id)
    assert batch.status == "completed" and time.monotonic() - started >= 0.3


async def test_a_restarted_server_resumes_without_running_a_line_twice(tmp_path: Path) -> None:
    calls: Counter[str] = Counter()
    lines = [request_line(i) for i in range(80)]
    settings = SimSettings(latency_ms=40)
    first = RecordingBackend(settings, calls, signal_after=8)
    batch_settings = BatchSettings(concurrency=4)
    async with batch_client(first, data_dir=tmp_path, settings=batch_settings) as client:
        created = await submit(client, jsonl(lines), run="restart")
        assert await anyio.to_thread.run_sync(first.reached.wait, 10.0)
    executed_before = calls.total()
    second = RecordingBackend(settings, calls)
    async with batch_client(second, data_dir=tmp_path, settings=batch_settings) as client:
        resumed = await client.batches.retrieve(created.id)
        batch = await settle(client, created.id)
        output = await lines_of(client, batch.output_file_id)
        assert (await client.files.retrieve(created.input_file_id)).bytes == len(jsonl(lines))
    assert 8 <= executed_before < len(lines)
    assert resumed.status == "in_progress" and resumed.metadata == {"run": "restart"}
    assert batch.status == "completed"
    assert sorted(o["custom_id"] for o in output) == sorted(line["custom_id"] for line in lines)
    assert len(calls) == len(lines) and set(calls.values()) == {1}


async def test_delete_file() -> None:
    async with batch_client() as client:
        uploaded = await client.files.create(file=("x.jsonl", jsonl([request_line(0)])), purpose="batch")
        deleted = await client.files.delete(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            await client.files.content(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            await client.files.delete(uploaded.id)
        remaining = [f.id async for f in client.files.list()]
    assert deleted.id == uploaded.id and deleted.deleted is True
    assert remaining == []


async def test_rejected_uploads_leave_nothing_behind(tmp_path: Path) -> None:
    async with batch_client(data_dir=tmp_path, settings=BatchSettings(max_file_bytes=1000)) as client:
        with pytest.raises(openai.APIStatusError) as too_large:
            await client.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
        with pytest.raises(openai.APIStatusError) as declared_too_large:
            await client.files.create(file=("big.jsonl", b"x" * 200_000), purpose="batch")
        with pytest.raises(openai.BadRequestError) as wrong_purpose:
            await client.files.create(file=("a.jsonl", b"{}\n"), purpose="fine-tune")
        assert [f async for f in client.files.list()] == []
    for caught in (too_large, declared_too_large):
        assert caught.value.status_code == 413 and "1000 bytes" in caught.value.message
    assert wrong_purpose.value.param == "purpose"
    assert list((tmp_path / "files").iterdir()) == []


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("multipart/form-data; boundary=xyz", b"no boundary here"),
        ("multipart/form-data", b"--x\r\n"),
        ("application/json", b"{}"),
    ],
)
async def test_malformed_uploads_are_bad_requests(content_type: str, data: bytes) -> None:
    async with batch_client() as client:
        headers = {"Content-Type": content_type}
        status, body = await raw_json(client, "POST", "files", data=data, headers=headers)
    assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}


async def test_bad_batch_requests() -> None:
    async with batch_client() as client:
        uploaded = await client.files.create(file=("a.jsonl", jsonl([request_line(0)])), purpose="batch")
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(
                input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
            )
        for field, value in (("endpoint", "/v1/embeddings"), ("completion_window", "48h")):
            params: dict[str, Any] = {
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                field: value,
            }
            with pytest.raises(openai.BadRequestError) as caught:
                await client.batches.create(input_file_id=uploaded.id, **params)
            assert caught.value.param == field
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch_nope")


@pytest.mark.parametrize(
    "path",
    [
        "files/..%2Fsecret",
        "files/..%2Fsecret/content",
        "files/..%2F..%2Fetc%2Fpasswd/content",
        "files/%2e%2e%2f%2e%2e%2fetc%2fpasswd/content",
        "files/file-..%2Fsecret/content",
        "files/../secret/content",
        "batches/..%2Fsecret",
    ],
)
async def test_path_traversal_ids_never_reach_the_filesystem(tmp_path: Path, path: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for secret in (data_dir / "secret", tmp_path / "secret"):
        secret.write_text("top secret")
    async with batch_client(data_dir=data_dir) as client, aiohttp.ClientSession() as http:
        url = yarl.URL(f"{client.base_url}{path}", encoded=True)
        for method in ("GET", "DELETE"):
            async with http.request(method, url) as response:
                assert response.status in (400, 404, 405)
                body = await response.text()
                assert "top secret" not in body and set(json.loads(body)["error"]) >= {"message", "code"}
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve("../../etc/passwd")
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(
                input_file_id="../secret", endpoint="/v1/chat/completions", completion_window="24h"
            )
    assert (data_dir / "secret").read_text() == (tmp_path / "secret").read_text() == "top secret"


async def test_without_a_data_dir_the_temporary_one_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    async with batch_client() as client:
        await client.files.create(file=("a.jsonl", jsonl([request_line(0)])), purpose="batch")
        assert list(tmp_path.iterdir())  # one for OpenAI's batches, one for Anthropic's Message Batches
    assert list(tmp_path.iterdir()) == []


async def test_a_server_without_a_batch_api_answers_404_there() -> None:
    """Like llama.cpp's, Ollama's or vLLM's realtime server: chat calls only."""
    async with embedded_server(SimBackend(SimSettings()), batch_api=False) as url:
        async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
            reply = await client.chat.completions.create(model="m", messages=genre_messages())  # type: ignore[arg-type]
            calls: list[Awaitable[Any]] = [
                client.files.create(file=("input.jsonl", jsonl([request_line(0)])), purpose="batch"),
                client.files.list(),
                client.files.retrieve("file-x"),
                client.files.content("file-x"),
                client.files.delete("file-x"),
                client.batches.create(
                    input_file_id="file-x", endpoint="/v1/chat/completions", completion_window="24h"
                ),
                client.batches.list(),
                client.batches.retrieve("batch_x"),
                client.batches.cancel("batch_x"),
            ]
            for call in calls:
                with pytest.raises(openai.NotFoundError):
                    await call
    assert reply.choices[0].message.content in GENRE_SET


async def test_a_batch_file_reader_left_between_two_lines_holds_no_file() -> None:
    """A feeder stopped between two lines (a batch cancelled, its server stopped) may leave
    ``read_lines`` unclosed for the collector: it must not hold the input file open, which the
    collector would close later with an unclosed-file warning in whatever runs then."""
    unraised: list[Any] = []
    hooks = sys.get_asyncgen_hooks()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.jsonl"
        path.write_text("".join(json.dumps({"custom_id": f"r{n}", "url": "/v1/chat/completions", "body": {}}) + "\n"
                                for n in range(3)))
        sys.set_asyncgen_hooks(firstiter=None, finalizer=None)  # no event loop to close it: left as it is
        saved, sys.unraisablehook = sys.unraisablehook, unraised.append
        try:
            lines = read_lines(path)
            assert (await lines.__anext__()).custom_id == "r0"
            del lines
            gc.collect()
        finally:
            sys.unraisablehook = saved
            sys.set_asyncgen_hooks(*hooks)
    assert not unraised
