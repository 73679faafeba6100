"""Anthropic's Message Batches, over the server's own batch machinery.

    POST   /v1/messages/batches                 {"requests": [{custom_id, params}]}
    GET    /v1/messages/batches                 newest first; limit (1-1000, 20), before_id, after_id
    GET    /v1/messages/batches/{id}            POST /v1/messages/batches/{id}/cancel
    GET    /v1/messages/batches/{id}/results    JSONL, once ended
    DELETE /v1/messages/batches/{id}            once ended

A message batch is a batch of the server's :class:`~.batch_jobs.BatchManager` (with the backend's
batch policy and faults, kept on disk, resumed after a restart) and :class:`~.files.FileStore`,
a pair of its own under ``<data_dir>/message_batches/`` (a temporary directory without one), so
neither Anthropic's nor OpenAI's list shows the other's batches. Its requests, each checked as
``POST /v1/messages`` checks a body, become an input file of lines ``{custom_id, method: "POST",
url: "/v1/messages", body: params}`` that run through ``batch_lines.LINE_APIS["/v1/messages"]``.
``msgbatch_<x>`` is the record ``batch_<x>``; the record's metadata keeps the request count.

As Anthropic's, every request counts as ``processing`` until the batch ends. Then its output and
error files are translated, once, into ``results/<id>.jsonl`` with the counts in
``results/<id>.json``: a line that succeeded is ``succeeded``; a failed one ``errored`` (the error
type of its status); one the batch expired before running ``expired``; one a cancel kept from
running ``canceled``; every request of a batch that failed outright is ``errored``. Deleting an
ended batch removes its files and leaves a tombstone ``deleted/<id>`` (the manager keeps its small
record: it has no delete).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from aiohttp import web

from engine.provider import TERMINAL_BATCH_STATUSES

from .backends.base import Backend
from .batch_jobs import BatchManager, BatchRecord, BatchSettings, BatchStateError
from .batch_lines import LINE_APIS
from .chat_request import Problem
from .files import FileStore, atomic_write
from .messages_request import messages_problem
from .messages_wire import LINE_API, MESSAGES_URL, error_body, error_response, new_request_id, rfc3339
from .prompt_cache import PromptCache
from .wire import parse_json

__all__ = ["MAX_REQUESTS", "install", "message_batch_id"]

#: Anthropic's limit of requests in one Message Batch.
MAX_REQUESTS = 100_000
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MESSAGE_BATCH_ID = re.compile(r"msgbatch_([A-Za-z0-9]+)")
_DEFAULT_LIMIT = 20
_MAX_LIMIT = 1000
_CHUNK = 1 << 20
_RESULTS = ("succeeded", "errored", "canceled", "expired")


def message_batch_id(batch: BatchRecord) -> str:
    """The Message Batch id of a record: ``batch_<x>`` is ``msgbatch_<x>``."""
    return "msgbatch_" + batch.id.removeprefix("batch_")


class _Store:
    """The message batches of one app: a file store and a batch manager of their own, the
    tombstones of deleted batches and the translated results of ended ones."""

    files: FileStore
    batches: BatchManager
    root: Path

    def __init__(self, backend: Backend, data_dir: Path | None, settings: BatchSettings, cache: PromptCache) -> None:
        self.backend = backend
        self.cache = cache
        self.data_dir = data_dir
        self.settings = settings
        self._deleted: set[str] = set()
        self._counts: dict[str, dict[str, int]] = {}
        self._translating = anyio.Lock()

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: open the stores, run the batches until clean-up, then stop them."""
        if self.data_dir is None:
            self.root = temporary = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp))
        else:
            temporary, self.root = None, self.data_dir / "message_batches"
        try:
            self.files = FileStore(self.root / "files")
            await self.files.open()
            self._deleted = await anyio.to_thread.run_sync(self._load_tombstones)
            settings = replace(self.settings, max_requests=MAX_REQUESTS)
            self.batches = BatchManager(self.backend, self.files, self.root / "batches", settings, self.cache)
            async with anyio.create_task_group() as group:
                await group.start(self.batches.run)
                yield
                self.batches.stop()
        finally:
            if temporary is not None:
                await anyio.to_thread.run_sync(shutil.rmtree, temporary)

    def _load_tombstones(self) -> set[str]:
        for name in ("deleted", "results"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        return {path.name for path in (self.root / "deleted").iterdir() if MESSAGE_BATCH_ID.fullmatch(path.name)}

    def get(self, batch_id: str) -> BatchRecord | None:
        """The batch ``msgbatch_<x>``, or None (also for a deleted one and any other id)."""
        match = MESSAGE_BATCH_ID.fullmatch(batch_id)
        if match is None or batch_id in self._deleted:
            return None
        return self.batches.get(f"batch_{match.group(1)}")

    def newest_first(self) -> list[BatchRecord]:
        return [batch for batch in self.batches.newest_first() if message_batch_id(batch) not in self._deleted]

    async def create(self, data: bytes, count: int) -> BatchRecord:
        """A new batch of the ``count`` requests in the input file ``data``."""
        partial = await self.files.receive(_once(data), len(data))
        stored = await self.files.add(partial, filename="message_batch_requests.jsonl", purpose="batch")
        return await self.batches.create(stored.id, MESSAGES_URL, "24h", {"requests": str(count)})

    async def results(self, batch: BatchRecord) -> tuple[Path, dict[str, int]]:
        """The results file of an ended batch and its counts by result type, made on first use."""
        batch_id = message_batch_id(batch)
        path = self.root / "results" / f"{batch_id}.jsonl"
        async with self._translating:
            if batch_id not in self._counts:
                paths = [self._path(file_id) for file_id in (batch.input_file_id, batch.output_file_id, batch.error_file_id)]
                failure = batch.errors[0].message if batch.errors else "The server failed to run the batch."
                self._counts[batch_id] = await anyio.to_thread.run_sync(
                    lambda: _translate(batch.status, paths[0], paths[1], paths[2], failure, path)
                )
        return path, self._counts[batch_id]

    async def render(self, batch: BatchRecord, origin: str) -> dict[str, Any]:
        """The ``message_batch`` object; ``origin`` (``http://host:port``) starts its results_url."""
        batch_id = message_batch_id(batch)
        ended = batch.status in TERMINAL_BATCH_STATUSES
        total = int((batch.metadata or {}).get("requests", batch.total))
        counts = (await self.results(batch))[1] if ended else dict.fromkeys(_RESULTS, 0)
        # The stamps are whole seconds: none is shown before the batch's creation.
        cancelled = batch.stamps.get("cancelling")
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "canceling" if batch.status == "cancelling" else "in_progress",
            "request_counts": {"processing": 0 if ended else total, **counts},
            "created_at": rfc3339(batch.created),
            "expires_at": rfc3339(batch.expires),
            "ended_at": rfc3339(max(batch.stamps.get(batch.status, 0), batch.created)) if ended else None,
            "cancel_initiated_at": None if cancelled is None else rfc3339(max(cancelled, batch.created)),
            "archived_at": None,
            "results_url": f"{origin}/v1/messages/batches/{batch_id}/results" if ended else None,
        }

    async def delete(self, batch: BatchRecord) -> None:
        """Leave a tombstone for an ended batch, then remove its files."""
        batch_id = message_batch_id(batch)
        self._deleted.add(batch_id)
        self._counts.pop(batch_id, None)

        def bury() -> None:
            atomic_write(self.root / "deleted" / batch_id, b"")
            for suffix in (".jsonl", ".json"):
                (self.root / "results" / f"{batch_id}{suffix}").unlink(missing_ok=True)

        await anyio.to_thread.run_sync(bury)
        for file_id in (batch.input_file_id, batch.output_file_id, batch.error_file_id):
            if file_id is not None:
                await self.files.delete(file_id)

    def _path(self, file_id: str | None) -> Path | None:
        stored = None if file_id is None else self.files.get(file_id)
        return None if stored is None else self.files.path(stored)


_STORE = web.AppKey("message_batches", _Store)


def install(
    app: web.Application, backend: Backend, *, data_dir: Path | None, settings: BatchSettings, cache: PromptCache
) -> None:
    """Add the Message Batches routes to ``app``, with their ``cleanup_ctx``, and register the
    ``/v1/messages`` line API their batches run through."""
    LINE_APIS[MESSAGES_URL] = LINE_API
    store = _Store(backend, data_dir, settings, cache)
    app[_STORE] = store
    app.cleanup_ctx.append(store.lifecycle)
    app.router.add_post("/v1/messages/batches", _create)
    app.router.add_get("/v1/messages/batches", _list)
    app.router.add_get("/v1/messages/batches/{batch_id}", _retrieve)
    app.router.add_delete("/v1/messages/batches/{batch_id}", _delete)
    app.router.add_post("/v1/messages/batches/{batch_id}/cancel", _cancel)
    app.router.add_get("/v1/messages/batches/{batch_id}/results", _results)


def _json(data: dict[str, Any]) -> web.Response:
    return web.json_response(data, headers={"request-id": f"req_{new_request_id()}"})


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


async def _create(request: web.Request) -> web.Response:
    store = request.app[_STORE]
    limit = store.settings.max_file_bytes
    raw = await _read(request, limit)
    if raw is None:
        return error_response(413, f"The request body is larger than this server's limit of {limit} bytes for a Message Batch.")
    try:
        body = await anyio.to_thread.run_sync(parse_json, raw)
    except ValueError:  # UnicodeDecodeError is one
        return error_response(400, "The request body is not valid JSON.")
    made = await anyio.to_thread.run_sync(_input_file, body, store.settings.max_line_bytes, limit)
    if isinstance(made, Problem):
        return error_response(made.status, made.message)
    batch = await store.create(*made)
    return _json(await store.render(batch, _origin(request)))


async def _read(request: web.Request, limit: int) -> bytes | None:
    """The request's body; None past ``limit`` bytes (Message Batches may pass the app's JSON limit)."""
    if (request.content_length or 0) > limit:
        return None
    data = bytearray()
    async for chunk in request.content.iter_chunked(_CHUNK):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


def _input_file(body: Any, max_line_bytes: int, max_bytes: int) -> tuple[bytes, int] | Problem:
    """The internal input file for a create body and its request count, or the first problem."""
    if not isinstance(body, dict):
        return Problem(400, "body: Input should be a valid dictionary")
    if "requests" not in body:
        return Problem(400, "requests: Field required")
    for name in body:
        if name != "requests":
            return Problem(400, f"{name}: Extra inputs are not permitted")
    requests = body["requests"]
    if not isinstance(requests, list):
        return Problem(400, "requests: Input should be a valid list")
    if not 1 <= len(requests) <= MAX_REQUESTS:
        bound = "at least 1 item" if not requests else f"at most {MAX_REQUESTS} items"
        return Problem(400, f"requests: List should have {bound} after validation, not {len(requests)}")
    seen: set[str] = set()
    lines: list[bytes] = []
    size = 0
    for i, item in enumerate(requests):
        where = f"requests.{i}"
        if (problem := _request_problem(item, where)) is not None:
            return problem
        custom_id = item["custom_id"]
        if custom_id in seen:
            return Problem(400, f"requests: custom_id '{custom_id}' is used more than once; each request's must be unique")
        seen.add(custom_id)
        line = json.dumps({"custom_id": custom_id, "method": "POST", "url": MESSAGES_URL, "body": item["params"]}).encode()
        if len(line) + 1 > max_line_bytes:
            return Problem(413, f"{where}: the request is larger than this server's limit of {max_line_bytes} bytes")
        lines.append(line + b"\n")
        size += len(line) + 1
        if size > max_bytes:
            return Problem(413, f"requests: the batch is larger than this server's limit of {max_bytes} bytes")
    return b"".join(lines), len(lines)


def _request_problem(item: Any, where: str) -> Problem | None:
    """The first problem with one ``{custom_id, params}`` request, else None."""
    if not isinstance(item, dict):
        return Problem(400, f"{where}: Input should be a valid dictionary")
    for name in ("custom_id", "params"):
        if name not in item:
            return Problem(400, f"{where}.{name}: Field required")
    for name in item:
        if name not in ("custom_id", "params"):
            return Problem(400, f"{where}.{name}: Extra inputs are not permitted")
    custom_id = item["custom_id"]
    if not isinstance(custom_id, str):
        return Problem(400, f"{where}.custom_id: Input should be a valid string")
    if not CUSTOM_ID.fullmatch(custom_id):
        return Problem(400, f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
    params = item["params"]
    if not isinstance(params, dict):
        return Problem(400, f"{where}.params: Input should be a valid dictionary")
    if (problem := messages_problem(params, None, where=f"{where}.params.")) is not None:
        return problem
    if params.get("stream"):
        return Problem(400, f"{where}.params.stream: a Message Batch request cannot be streamed")
    return None


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _translate(
    status: str, requests: Path | None, output: Path | None, errors: Path | None, failure: str, path: Path
) -> dict[str, int]:
    """Write an ended batch's results to ``path`` (the counts beside it, as ``.json``); return the
    counts. Results written before are read back instead."""
    counts_path = path.with_suffix(".json")
    if counts_path.exists():
        counts: dict[str, int] = json.loads(counts_path.read_bytes())
        return counts
    counts = dict.fromkeys(_RESULTS, 0)
    seen: set[str] = set()
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as out:

        def put(custom_id: str, result: dict[str, Any]) -> None:
            out.write(json.dumps({"custom_id": custom_id, "result": result}).encode() + b"\n")
            counts[result["type"]] += 1
            seen.add(custom_id)

        for line in _lines(output):
            put(line["custom_id"], {"type": "succeeded", "message": line["response"]["body"]})
        for line in _lines(errors):
            put(line["custom_id"], _failure(line))
        for line in _lines(requests):
            if line["custom_id"] not in seen:
                put(line["custom_id"], {"type": "canceled"} if status == "cancelled" else _errored(500, failure))
    os.replace(partial, path)
    atomic_write(counts_path, json.dumps(counts).encode())
    return counts


def _lines(path: Path | None) -> Iterator[dict[str, Any]]:
    if path is None:
        return
    with open(path, "rb") as source:
        for raw in source:
            if raw.strip():
                yield json.loads(raw)


def _failure(line: dict[str, Any]) -> dict[str, Any]:
    """The result of an error-file line: ``expired`` for a line the batch expired before running,
    else ``errored`` with the error type of its status."""
    response = line.get("response")
    error = line.get("error") or {}
    if not isinstance(response, dict):
        if error.get("code") == "batch_expired":
            return {"type": "expired"}
        return _errored(500, str(error.get("message") or "The request failed."))
    body = response.get("body")
    detail = body.get("error") if isinstance(body, dict) else None
    message = detail.get("message") if isinstance(detail, dict) else None
    return _errored(int(response["status_code"]), str(message or "The request failed."), response.get("request_id"))


def _errored(status: int, message: str, request_id: str | None = None) -> dict[str, Any]:
    return {"type": "errored", "error": error_body(status, message, request_id)}


def _batch_or_404(request: web.Request) -> BatchRecord | web.Response:
    batch_id = request.match_info["batch_id"]
    batch = request.app[_STORE].get(batch_id)
    if batch is None:
        return error_response(404, f"message_batch_id: no Message Batch with id '{batch_id}'")
    return batch


async def _retrieve(request: web.Request) -> web.Response:
    batch = _batch_or_404(request)
    if isinstance(batch, web.Response):
        return batch
    return _json(await request.app[_STORE].render(batch, _origin(request)))


async def _list(request: web.Request) -> web.Response:
    store = request.app[_STORE]
    try:
        limit = int(request.query.get("limit", _DEFAULT_LIMIT))
    except ValueError:
        return error_response(400, "limit: Input should be a valid integer")
    if not 1 <= limit <= _MAX_LIMIT:
        return error_response(400, f"limit: Input should be from 1 to {_MAX_LIMIT}")
    before, after = request.query.get("before_id"), request.query.get("after_id")
    if before is not None and after is not None:
        return error_response(400, "before_id, after_id: give one cursor, not both")
    batches = store.newest_first()
    ids = [message_batch_id(batch) for batch in batches]
    cursor = before if before is not None else after
    if cursor is not None and cursor not in ids:
        name = "before_id" if before is not None else "after_id"
        return error_response(400, f"{name}: no Message Batch with id '{cursor}'")
    if before is not None:
        end = ids.index(before)
        start = max(0, end - limit)
        has_more = start > 0
    else:
        start = 0 if after is None else ids.index(after) + 1
        end = start + limit
        has_more = end < len(batches)
    data = [await store.render(batch, _origin(request)) for batch in batches[start:end]]
    first_id, last_id = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return _json({"data": data, "has_more": has_more, "first_id": first_id, "last_id": last_id})


async def _cancel(request: web.Request) -> web.Response:
    batch = _batch_or_404(request)
    if isinstance(batch, web.Response):
        return batch
    store = request.app[_STORE]
    if batch.status == "finalizing":  # every request has run: nothing left to cancel
        return _json(await store.render(batch, _origin(request)))
    try:
        batch = await store.batches.cancel(batch.id)
    except BatchStateError:
        return error_response(400, f"Message Batch {message_batch_id(batch)} has ended: it cannot be canceled.")
    return _json(await store.render(batch, _origin(request)))


async def _results(request: web.Request) -> web.StreamResponse:
    batch = _batch_or_404(request)
    if isinstance(batch, web.Response):
        return batch
    if batch.status not in TERMINAL_BATCH_STATUSES:
        return error_response(400, f"Message Batch {message_batch_id(batch)} has not ended yet: its results are not ready.")
    path, _ = await request.app[_STORE].results(batch)
    headers = {"Content-Type": "application/binary", "request-id": f"req_{new_request_id()}"}
    return web.FileResponse(path, chunk_size=_CHUNK, headers=headers)


async def _delete(request: web.Request) -> web.Response:
    batch = _batch_or_404(request)
    if isinstance(batch, web.Response):
        return batch
    batch_id = message_batch_id(batch)
    if batch.status not in TERMINAL_BATCH_STATUSES:
        return error_response(400, f"Message Batch {batch_id} has not ended yet: cancel it before deleting it.")
    await request.app[_STORE].delete(batch)
    return _json({"id": batch_id, "type": "message_batch_deleted"})
