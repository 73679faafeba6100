"""The OpenAI-compatible HTTP server (aiohttp) in front of a :class:`Backend`.

Endpoints: ``GET /v1/models`` and ``/v1/models/{id}``, ``POST /v1/chat/completions``, OpenAI's
Responses API (:mod:`.responses_api`), Anthropic's Messages API and Message Batches
(:mod:`.messages_api`), and the Files and Batches APIs (:mod:`.routes`, executed by
:mod:`.batch_jobs`; without them, with ``batch_api=False``, those paths answer 404 as a server
without a Batch API does). Each API answers in its provider's shapes, streams (``stream: true``)
included, as a translation of the backend's chat completions (:func:`answer`); every prompt goes
through one prompt cache (:mod:`.prompt_cache`). Every error, routing errors included, is an
OpenAI error object ``{"error": {message, type, param, code}}``, but those Anthropic's routes
answer themselves (a bad body, an unknown model, a backend's error, a refused key), which are
Anthropic's ``{"type": "error", "error": {type, message}}``.
A client that goes away mid-request is let go quietly; the API key is never logged or echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

from . import messages_api, responses_api, routes
from .backends.base import Backend, BackendError, BackendReply, DropConnection, Hang, MalformedReply, TruncatedReply
from .batch_jobs import BatchSettings
from .chat_request import chat_problem
from .prompt_cache import PromptCache, chat_segments
from .streaming import chat_chunks, send_events
from .wire import chat_completion, error_response, parse_json

__all__ = ["API_KEY_ENV", "DEFAULT_MAX_BODY_BYTES", "PROMPT_CACHE", "answer", "api_key_from_env", "create_app", "serve_forever"]

API_KEY_ENV = "ENGINE_SERVER_API_KEY"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
SHUTDOWN_TIMEOUT_S = 5.0
_HANG_POLL_S = 0.1
_BACKEND = web.AppKey("backend", Backend)
_STOPPING = web.AppKey("stopping", asyncio.Event)
#: The app's prompt cache: what every route reports as cached prompt tokens.
PROMPT_CACHE = web.AppKey("prompt_cache", PromptCache)
_log = logging.getLogger(__name__)


def api_key_from_env(name: str = API_KEY_ENV, *, required: bool = False) -> str | None:
    """The server's API key from the environment variable ``name``; None when it is unset or blank.

    Surrounding whitespace is dropped (a header cannot carry it). Raises ValueError, naming the
    variable and never its value, when ``required`` and there is no key, or when the key is not
    printable ASCII (no client could send it).
    """
    key = os.environ.get(name, "").strip()
    if not key:
        if required:
            raise ValueError(f"${name} is not set: it must hold the server's API key")
        return None
    if not (key.isascii() and key.isprintable()):
        raise ValueError(f"${name} must be printable ASCII")
    return key


def create_app(
    backend: Backend,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    data_dir: Path | str | None = None,
    batch_settings: BatchSettings = BatchSettings(),
    batch_api: bool = True,
) -> web.Application:
    """Build the app. With ``api_key`` set, every request needs ``Authorization: Bearer <key>``.

    Files and batches are kept under ``data_dir`` and survive a restart on the same one; with
    ``None`` they go to a temporary directory removed when the app stops. ``max_body_bytes``
    bounds JSON bodies; uploads are bounded by ``batch_settings.max_file_bytes``. With
    ``batch_api`` off there are no Files and Batches APIs: ``/v1/files*`` and ``/v1/batches*``
    answer 404, like llama.cpp's, Ollama's or vLLM's realtime server.
    """
    middlewares: list[Middleware] = [_errors_as_json]
    if api_key is not None:
        middlewares.append(_bearer_auth(api_key))
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
    app[_BACKEND] = backend
    app[_STOPPING] = asyncio.Event()
    app[PROMPT_CACHE] = PromptCache()
    app.on_shutdown.append(_release_held_requests)
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/v1/models/{model:.+}", _retrieve_model)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    responses_api.install(app, backend)
    if batch_api:
        root = None if data_dir is None else Path(data_dir)
        routes.install(app, backend, data_dir=root, settings=batch_settings, cache=app[PROMPT_CACHE])
    messages_api.install(app, backend, data_dir=data_dir, settings=batch_settings, cache=app[PROMPT_CACHE], batch_api=batch_api)
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
    batch_api: bool = True,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until cancelled; ``port=0`` picks a free port. The options are :func:`create_app`'s.

    ``on_ready`` gets the base URL (``http://HOST:PORT/v1``) once the socket listens. On
    cancellation requests held by a :class:`Hang` are dropped at once, other in-flight requests
    get a few seconds to finish before connections close, then running batches stop (in-flight
    lines get ``batch_settings.shutdown_grace_s``) to resume on the next start with the same
    ``data_dir``.
    """
    app = create_app(
        backend,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        data_dir=data_dir,
        batch_settings=batch_settings,
        batch_api=batch_api,
    )
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S, logger=_ProtocolLog(_log, {})
    )
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


class _ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's connection log, with a client's malformed HTTP as one DEBUG line.

    aiohttp answers malformed HTTP with a 4xx and logs it as an ERROR with a traceback; it is the
    client's fault, and a port scanner must not fill the log. Everything else passes unchanged.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            level, msg, args, kwargs = logging.DEBUG, "malformed HTTP from %s: %r", (*args, exc), {}
        super().log(level, msg, *args, **kwargs)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render aiohttp's own HTTP errors (404, 405, 413) as OpenAI error objects.

    So too a malformed body aiohttp finds while a handler reads it (bad multipart part headers),
    as a 400; a connection error from a client that went away ends the request quietly.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status in (404, 405) and request.match_info.route.resource is None:  # no route: say which was asked
            message = ("Invalid URL" if exc.status == 404 else "Invalid method for URL") + f" ({request.method} {request.path})"
            return error_response(exc.status, message, code=exc.reason.lower().replace(" ", "_"))
        return error_response(exc.status, exc.text or exc.reason, code=exc.reason.lower().replace(" ", "_"))
    except HttpProcessingError as exc:
        return error_response(400, f"The request is malformed: {exc.message}")
    except ConnectionError:
        if not _client_gone(request):
            raise
        raise _drop(request) from None


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _drop(request: web.Request, *, flush: bool = False) -> asyncio.CancelledError:
    """Close the connection (after sending what was written, with ``flush``); return what to raise.

    A CancelledError is aiohttp's own path for a client that went away: it ends the request quietly.
    """
    if request.transport is not None:
        if flush:
            request.transport.close()
        else:
            request.transport.abort()
    return asyncio.CancelledError()


async def _release_held_requests(app: web.Application) -> None:
    """``on_shutdown``: let the requests held by a :class:`Hang` go before the grace period."""
    app[_STOPPING].set()


async def _hold(request: web.Request) -> None:
    """Answer nothing until the client goes away or the server stops."""
    stopping = request.app[_STOPPING]
    while not stopping.is_set() and not _client_gone(request):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), _HANG_POLL_S)


async def _truncated(request: web.Request, body: bytes) -> asyncio.CancelledError:
    """Send a 200 declaring ``body``'s length with only its first half, then close."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    return _drop(request, flush=True)


def _bearer_auth(api_key: str) -> Middleware:
    """Every request needs the key: as OpenAI's ``Authorization: Bearer <key>``, or as
    Anthropic's ``x-api-key: <key>``. A refusal on Anthropic's routes (``/v1/messages``) is
    Anthropic's ``authentication_error``, elsewhere OpenAI's ``invalid_api_key``."""
    bearer = f"Bearer {api_key}".encode()
    key = api_key.encode()

    @web.middleware
    async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        # aiohttp decodes header bytes that are not UTF-8 to lone surrogates: keep them as bytes.
        supplied = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        supplied_key = request.headers.get("x-api-key", "").encode("utf-8", "surrogateescape")
        if hmac.compare_digest(supplied, bearer) or hmac.compare_digest(supplied_key, key):
            return await handler(request)
        # Never echo what was supplied: it may be a real key sent to the wrong server.
        if request.path.startswith("/v1/messages"):
            error = {"type": "authentication_error", "message": "invalid x-api-key"}
            request_id = f"req_{secrets.token_hex(12)}"
            return web.json_response({"type": "error", "error": error, "request_id": request_id}, status=401,
                                     headers={"request-id": request_id})
        return error_response(401, "Incorrect or missing API key.", code="invalid_api_key")

    return bearer_auth


async def _list_models(request: web.Request) -> web.Response:
    backend = request.app[_BACKEND]
    created = int(time.time())
    data = [
        {"id": model, "object": "model", "created": created, "owned_by": backend.name}
        for model in (backend.models if backend.models is not None else (backend.name,))
    ]
    return web.json_response({"object": "list", "data": data})


async def _retrieve_model(request: web.Request) -> web.Response:
    """One model, as ``/v1/models`` lists it; an unknown one is OpenAI's 404 ``model_not_found``."""
    backend = request.app[_BACKEND]
    model = request.match_info["model"]
    if backend.models is not None and model not in backend.models:
        return error_response(404, f"The model '{model}' does not exist", code="model_not_found", param="model")
    owner = backend.name
    return web.json_response({"id": model, "object": "model", "created": int(time.time()), "owned_by": owner})


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    backend = request.app[_BACKEND]
    try:
        body = parse_json(await request.read())
    except ValueError:  # UnicodeDecodeError is one
        return error_response(400, "We could not parse the JSON body of your request.")
    if (problem := chat_problem(body, backend.models, streaming=True)) is not None:
        return problem.response()
    stream = body.get("stream") is True
    # The backend answers whole: a stream is the whole reply in chunks.
    chat = {key: value for key, value in body.items() if key not in ("stream", "stream_options")} if stream else body
    completion = await answer(request, chat, _openai_error)
    if isinstance(completion, web.StreamResponse):
        return completion
    request_id = secrets.token_hex(12)
    cached = 0 if completion.reply is not None else request.app[PROMPT_CACHE].automatic(
        chat_segments(body["messages"]), completion.prompt_tokens
    ).read
    headers = (("x-request-id", f"req_{request_id}"), *completion.headers)
    if stream:
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        chunks = chat_chunks(chat_completion(completion, request_id, cached), include_usage)
        return await send_events(request, ((None, chunk) for chunk in chunks), headers, done=True)
    return web.Response(
        body=json.dumps(chat_completion(completion, request_id, cached)).encode(),
        content_type="application/json",
        headers=headers,
    )


def _openai_error(exc: BackendError) -> web.Response:
    return error_response(exc.status, exc.message, type=exc.type, code=exc.code, param=exc.param, headers=exc.headers)


async def answer(
    request: web.Request, chat_body: dict[str, Any], error: Callable[[BackendError], web.Response]
) -> BackendReply | web.StreamResponse:
    """The backend's reply to ``chat_body`` (a checked chat-completion body), or the response that
    stands for its fault: ``error`` renders a ``BackendError`` in the route's own format; a
    dropped, held, truncated or malformed reply and any other failure are rendered here.

    Every API shape the server speaks (chat completions, responses, messages) answers through it.
    """
    backend = request.app[_BACKEND]
    try:
        return await backend.complete(chat_body)
    except BackendError as exc:
        return error(exc)
    except DropConnection:
        raise _drop(request) from None
    except Hang:
        await _hold(request)
        raise _drop(request) from None
    except TruncatedReply as exc:
        raise await _truncated(request, exc.body) from None
    except MalformedReply as exc:
        return web.Response(body=exc.body, content_type="application/json")
    except Exception:
        _log.exception("backend %s failed", backend.name)
        return error(BackendError(500, f"The {backend.name} backend failed.", type="server_error"))
