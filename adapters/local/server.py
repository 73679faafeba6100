"""The OpenAI-compatible HTTP server (aiohttp) in front of a :class:`Backend`.

Endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions``, in OpenAI's shapes. Every error,
routing errors included, is an OpenAI error object ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .backends.base import Backend, BackendError, DropConnection, MalformedReply

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app", "serve_forever"]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_SHUTDOWN_TIMEOUT_S = 5.0
_BACKEND = web.AppKey("backend", Backend)
_log = logging.getLogger(__name__)


def create_app(
    backend: Backend, *, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> web.Application:
    """Build the app. With ``api_key`` set, every request needs ``Authorization: Bearer <key>``."""
    middlewares: list[Middleware] = [_errors_as_json]
    if api_key is not None:
        middlewares.append(_bearer_auth(api_key))
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
    app[_BACKEND] = backend
    app.router.add_get("/v1/models", _list_models)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    return app


async def serve_forever(
    backend: Backend,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until cancelled; ``port=0`` picks a free port.

    ``on_ready`` gets the base URL (``http://HOST:PORT/v1``) once the socket listens. On
    cancellation in-flight requests get a few seconds to finish before connections close.
    """
    app = create_app(backend, api_key=api_key, max_body_bytes=max_body_bytes)
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


def _error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> web.Response:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render aiohttp's own HTTP errors (404, 405, 413) as OpenAI error objects."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.text or exc.reason, code=exc.reason.lower().replace(" ", "_"))


def _bearer_auth(api_key: str) -> Middleware:
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        supplied = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(supplied, expected):
            # Never echo what was supplied: it may be a real key sent to the wrong server.
            return _error(401, "Incorrect or missing API key.", code="invalid_api_key")
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
        return _error(400, "We could not parse the JSON body of your request.")
    if (problem := _validate(body)) is not None:
        return _error(400, problem[1], param=problem[0])
    model = body["model"]
    if backend.models is not None and model not in backend.models:
        return _error(
            404, f"The model `{model}` does not exist.", code="model_not_found", param="model"
        )
    try:
        completion = await backend.complete(body)
    except BackendError as exc:
        return _error(
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
        return _error(500, f"The {backend.name} backend failed.", type="server_error")
    request_id = secrets.token_hex(12)
    total = completion.prompt_tokens + completion.completion_tokens
    reply = {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": total,
        },
    }
    return web.Response(
        body=json.dumps(reply).encode(),
        content_type="application/json",
        headers=(("x-request-id", f"req_{request_id}"), *completion.headers),
    )


def _validate(body: Any) -> tuple[str | None, str] | None:
    """``(param, message)`` for the first problem with a chat-completion body, else None."""
    if not isinstance(body, dict):
        return None, "The request body must be a JSON object."
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model", "`model` must be a non-empty string."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "`messages` must be a non-empty array."
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), (str, list))
        ):
            return f"messages[{i}]", f"`messages[{i}]` must be an object with a `role` and `content`."
    if body.get("stream"):
        return "stream", "Streaming is not supported by this server."
    return None
