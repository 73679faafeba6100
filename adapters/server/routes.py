"""The Files and Batches endpoints, and the lifecycle of their storage and background work.

    POST /v1/files           multipart ``file`` and ``purpose`` (only ``batch``), streamed to disk;
                             other parts are skipped, but count against a small byte budget
    GET  /v1/files           GET|DELETE /v1/files/{id}           GET /v1/files/{id}/content
    POST /v1/batches         GET /v1/batches (newest first)      GET /v1/batches/{id}
    POST /v1/batches/{id}/cancel

Everything lives under ``data_dir`` (``files/`` and ``batches/``), or without one under a
temporary directory made at start-up and removed at clean-up. The batches run in a task group
opened by the app's ``cleanup_ctx``: they start with the app and stop with it, resumable.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePath
from typing import Any

import anyio
import anyio.to_thread
from aiohttp import BodyPartReader, web

from . import wire
from .backends.base import Backend
from .batch_jobs import BatchManager, BatchSettings, BatchStateError
from .batch_lines import LINE_APIS
from .files import FileStore, StoredFile, UploadTooLarge
from .prompt_cache import PromptCache

__all__ = ["install"]

#: The endpoints an OpenAI batch may call, once their line API is registered in ``batch_lines``.
OPENAI_BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/responses")
_CHUNK = 1 << 20
_MULTIPART_SLACK = 64 * 1024
_MAX_METADATA_KEYS = 16


class _Service:
    """The file store and the batch manager of one app; both exist once the app has started."""

    files: FileStore
    batches: BatchManager

    def __init__(self, backend: Backend, data_dir: Path | None, settings: BatchSettings, cache: PromptCache) -> None:
        self.backend = backend
        self.cache = cache
        self.data_dir = data_dir
        self.settings = settings

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: open the stores, run the batches until clean-up, then stop them."""
        root = self.data_dir or Path(await anyio.to_thread.run_sync(tempfile.mkdtemp))
        try:
            self.files = FileStore(root / "files")
            await self.files.open()
            self.batches = BatchManager(self.backend, self.files, root / "batches", self.settings, self.cache)
            async with anyio.create_task_group() as group:
                await group.start(self.batches.run)
                yield
                self.batches.stop()
        finally:
            if self.data_dir is None:
                await anyio.to_thread.run_sync(shutil.rmtree, root)


_SERVICE = web.AppKey("batch_service", _Service)


def install(
    app: web.Application, backend: Backend, *, data_dir: Path | None, settings: BatchSettings, cache: PromptCache
) -> None:
    """Add the Files and Batches routes to ``app``, with their ``cleanup_ctx``; ``cache`` is the
    server's prompt cache."""
    service = _Service(backend, data_dir, settings, cache)
    app[_SERVICE] = service
    app.cleanup_ctx.append(service.lifecycle)
    app.router.add_post("/v1/files", _upload)
    app.router.add_get("/v1/files", _list_files)
    app.router.add_get("/v1/files/{file_id}", _retrieve_file)
    app.router.add_delete("/v1/files/{file_id}", _delete_file)
    app.router.add_get("/v1/files/{file_id}/content", _file_content)
    app.router.add_post("/v1/batches", _create_batch)
    app.router.add_get("/v1/batches", _list_batches)
    app.router.add_get("/v1/batches/{batch_id}", _retrieve_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", _cancel_batch)


def _too_large(limit: int) -> web.Response:
    message = f"The file is larger than this server's limit of {limit} bytes."
    return wire.error_response(413, message, code="file_too_large", param="file")


async def _upload(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    limit = service.settings.max_file_bytes
    if (request.content_length or 0) > limit + _MULTIPART_SLACK:
        return _too_large(limit)
    if not request.content_type.startswith("multipart/"):
        return wire.error_response(400, "The request must be multipart/form-data.")
    partial: Path | None = None
    filename = purpose = None
    slack = _MULTIPART_SLACK
    try:
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    return wire.error_response(400, "Nested multipart bodies are not supported.")
                if part.name == "file" and partial is None:
                    filename = PurePath(part.filename or "upload.jsonl").name
                    partial = await service.files.receive(_chunks(part), limit)
                    continue
                data = await _field(part, slack)
                slack -= len(data)
                if part.name == "purpose":
                    purpose = data.decode(errors="replace")
        except UploadTooLarge:
            return _too_large(limit)
        except ValueError as exc:  # aiohttp's word for a malformed multipart body
            return wire.error_response(400, f"The multipart body is malformed: {exc}")
        if partial is None:
            return wire.error_response(400, "The request has no `file` part.", param="file")
        if purpose != "batch":
            message = f"Invalid purpose {purpose!r}: this server supports only `batch`."
            return wire.error_response(400, message, param="purpose")
        stored = await service.files.add(partial, filename=filename or "upload.jsonl", purpose=purpose)
        partial = None
        return web.json_response(stored.to_openai())
    finally:
        if partial is not None:  # a leftover would also go at the next start: names start with "."
            with anyio.CancelScope(shield=True):
                await service.files.discard(partial)


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(_CHUNK):
        yield chunk


async def _field(part: BodyPartReader, limit: int) -> bytes:
    """A part other than the file, whole; :class:`UploadTooLarge` past ``limit`` bytes."""
    data = bytearray()
    async for chunk in _chunks(part):
        data += chunk
        if len(data) > limit:
            raise UploadTooLarge(f"the form fields are larger than {_MULTIPART_SLACK} bytes")
    return bytes(data)


def _file_or_404(request: web.Request) -> StoredFile | web.Response:
    file_id = request.match_info["file_id"]
    stored = request.app[_SERVICE].files.get(file_id)
    if stored is None:
        return wire.error_response(404, f"No such File object: {file_id}", param="id")
    return stored


async def _list_files(request: web.Request) -> web.Response:
    files = request.app[_SERVICE].files.newest_first()
    if (purpose := request.query.get("purpose")) is not None:
        files = [f for f in files if f.purpose == purpose]
    return wire.page(files, request, lambda f: f.id, StoredFile.to_openai, default_limit=10_000)


async def _retrieve_file(request: web.Request) -> web.Response:
    stored = _file_or_404(request)
    return stored if isinstance(stored, web.Response) else web.json_response(stored.to_openai())


async def _file_content(request: web.Request) -> web.StreamResponse:
    stored = _file_or_404(request)
    if isinstance(stored, web.Response):
        return stored
    return web.FileResponse(request.app[_SERVICE].files.path(stored), chunk_size=_CHUNK)


async def _delete_file(request: web.Request) -> web.Response:
    stored = _file_or_404(request)
    if isinstance(stored, web.Response):
        return stored
    await request.app[_SERVICE].files.delete(stored.id)
    return web.json_response({"id": stored.id, "object": "file", "deleted": True})


async def _create_batch(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    try:
        body = wire.parse_json(await request.read())
    except ValueError:  # UnicodeDecodeError is one
        return wire.error_response(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return wire.error_response(400, "The request body must be a JSON object.")
    if (problem := _batch_problem(body)) is not None:
        return wire.error_response(400, problem[1], param=problem[0])
    input_file_id = body["input_file_id"]
    stored = service.files.get(input_file_id)
    if stored is None:
        return wire.error_response(404, f"No such File object: {input_file_id}", param="input_file_id")
    if stored.purpose != "batch":
        message = f"File {input_file_id} has purpose `{stored.purpose}`; a batch needs `batch`."
        return wire.error_response(400, message, param="input_file_id")
    batch = await service.batches.create(
        input_file_id, body["endpoint"], body["completion_window"], body.get("metadata")
    )
    return web.json_response(batch.to_openai())


def _batch_problem(body: dict[str, Any]) -> tuple[str, str] | None:
    """``(param, message)`` for the first problem with a create-batch body, else None."""
    if not isinstance(body.get("input_file_id"), str):
        return "input_file_id", "`input_file_id` must be a string."
    if body.get("endpoint") not in OPENAI_BATCH_ENDPOINTS or body["endpoint"] not in LINE_APIS:
        endpoints = ", ".join(f"`{endpoint}`" for endpoint in OPENAI_BATCH_ENDPOINTS if endpoint in LINE_APIS)
        return "endpoint", f"`endpoint` must be one this server batches: {endpoints}."
    if body.get("completion_window") != "24h":
        return "completion_window", "`completion_window` must be `24h`."
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= _MAX_METADATA_KEYS
        and all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in metadata.items()
        )
    ):
        return "metadata", "`metadata` must map at most 16 keys (64 chars) to strings (512 chars)."
    return None


async def _list_batches(request: web.Request) -> web.Response:
    batches = request.app[_SERVICE].batches.newest_first()
    return wire.page(batches, request, lambda b: b.id, lambda b: b.to_openai(), default_limit=20)


async def _retrieve_batch(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    batch = request.app[_SERVICE].batches.get(batch_id)
    if batch is None:
        return wire.error_response(404, f"No batch found with id '{batch_id}'.", param="batch_id")
    return web.json_response(batch.to_openai())


async def _cancel_batch(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    manager = request.app[_SERVICE].batches
    if manager.get(batch_id) is None:
        return wire.error_response(404, f"No batch found with id '{batch_id}'.", param="batch_id")
    try:
        batch = await manager.cancel(batch_id)
    except BatchStateError as exc:
        return wire.error_response(409, str(exc), param="batch_id")
    return web.json_response(batch.to_openai())
