"""The OpenAI-compatible HTTP server (aiohttp) in front of a :class:`Backend`.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, and the Files and Batches APIs
(:mod:`.routes`, executed by :mod:`.batches`), in OpenAI's shapes. Every error, routing errors
included, is an OpenAI error object ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from . import routes
from .backends.base import Backend, BackendError, DropConnection, MalformedReply
from .batches import BatchSettings
from .wire import chat_completion, chat_problem, error_response

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app", "serve_forever"]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_SHUTDOWN_TIMEOUT_S = 5.0
_BACKEND = web.AppKey("backend", Backend)
_log = logging.getLogger(__name__)


def create_app(
    backend: Backend,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    data_dir: Path | str | None = None,
    batch_settings: BatchSettings = BatchSettings(),
) -> web.Application:
    """Build the app. With ``api_key`` set, every request needs ``Authorization: Bearer <key>``.

    Files and batches are kept under ``data_dir`` and survive a restart on the same one; with
    ``None`` they go to a temporary directory removed when the app stops. ``max_body_bytes``
    bounds JSON bodies; uploads are bounded by ``batch_settings.max_file_bytes``.
    """
    middlewares: list[Middleware] = [_errors_as_json]
    if api_key is not None:
        middlewares.append(_bearer_auth(api_key))
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
    app[_BACKEND] = backend
    app.router.add_get("/v1/models", _list_models)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    root = None if data_dir is None else Path(data_dir)
    routes.install(app, backend, data_dir=root, settings=batch_settings)
    return app


async def serve_forever(
    backend: Backend,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    data_dir: Path | str | None = None,
    batch_settings: BatchSettings = BatchSettings(),
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until cancelled; ``port=0`` picks a free port. The options are :func:`create_app`'s.

    ``on_ready`` gets the base URL (``http://HOST:PORT/v1``) once the socket listens. On
    cancellation in-flight requests get a few seconds to finish before connections close, then
    running batches stop (in-flight lines get ``batch_settings.shutdown_grace_s``) to resume on
    the next start with the same ``data_dir``.
    """
    app = create_app(
        backend,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        data_dir=data_dir,
        batch_settings=batch_settings,
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        if on_ready is not None:
            bound_port = runner.addresses[0][1]
            url_host = f"[{host}]" if ":" in host else host
            on_ready(f"http://{url_host}:{bound_port}/v1")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render aiohttp's own HTTP errors (404, 405, 413) as OpenAI error objects."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.text or exc.reason, code=exc.reason.lower().replace(" ", "_"))


def _bearer_auth(api_key: str) -> Middleware:
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        supplied = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(supplied, expected):
            # Never echo what was supplied: it may be a real key sent to the wrong server.
            return error_response(401, "Incorrect or missing API key.", code="invalid_api_key")
        return await handler(request)

    return bearer_auth


async def _list_models(request: web.Request) -> web.Response:
    backend = request.app[_BACKEND]
    created = int(time.time())
    data = [
        {"id": model, "object": "model", "created": created, "owned_by": backend.name}
        for model in (backend.models if backend.models is not None else (backend.name,))
    ]
    return web.json_response({"object": "list", "data": data})


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    backend = request.app[_BACKEND]
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return error_response(400, "We could not parse the JSON body of your request.")
    if (problem := chat_problem(body, backend.models)) is not None:
        return problem.response()
    try:
        completion = await backend.complete(body)
    except BackendError as exc:
        return error_response(
            exc.status, exc.message, type=exc.type, code=exc.code, param=exc.param, headers=exc.headers
        )
    except DropConnection:
        if request.transport is not None:
            request.transport.abort()
        # aiohttp's own path for a client that went away: close quietly, log nothing.
        raise asyncio.CancelledError() from None
    except MalformedReply as exc:
        return web.Response(body=exc.body, content_type="application/json")
    except Exception:
        _log.exception("backend %s failed", backend.name)
        return error_response(500, f"The {backend.name} backend failed.", type="server_error")
    request_id = secrets.token_hex(12)
    return web.Response(
        body=json.dumps(chat_completion(completion, request_id)).encode(),
        content_type="application/json",
        headers=(("x-request-id", f"req_{request_id}"), *completion.headers),
    )
