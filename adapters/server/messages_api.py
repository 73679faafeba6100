"""Anthropic's Messages API on the server: ``POST /v1/messages`` (realtime, or streamed as
server-sent events with ``stream: true``) and, with the batch API, Message Batches
(:mod:`.message_batches`).

A message is a translation (:mod:`.messages_wire`) of the backend's chat completion: the body is
checked as Anthropic checks it (:mod:`.messages_request`), answered through the server's
:func:`~.server.answer` (a backend fault is rendered as the chat route renders it, an error in
Anthropic's shape), and sent with a ``request-id`` and Anthropic's rate-limit headers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from . import message_batches, server
from .backends.base import Backend
from .batch_jobs import BatchSettings
from .messages_request import messages_problem
from .messages_wire import (
    error_response,
    new_request_id,
    overloaded_or_error,
    rate_limit_headers,
    render_message,
    stream_events,
    to_chat,
)
from .prompt_cache import PromptCache
from .wire import parse_json

__all__ = ["install"]



@dataclass(frozen=True, slots=True)
class _Messages:
    backend: Backend
    cache: PromptCache


_MESSAGES = web.AppKey("messages", _Messages)


def install(
    app: web.Application,
    backend: Backend,
    *,
    data_dir: Path | str | None,
    settings: BatchSettings,
    cache: PromptCache,
    batch_api: bool = True,
) -> None:
    """Add ``POST /v1/messages`` to ``app``, and the Message Batches routes with ``batch_api``
    (kept under ``data_dir``, apart from OpenAI's batches; see :mod:`.message_batches`)."""
    app[_MESSAGES] = _Messages(backend, cache)
    app.router.add_post("/v1/messages", _create_message)
    if batch_api:
        root = None if data_dir is None else Path(data_dir)
        message_batches.install(app, backend, data_dir=root, settings=settings, cache=cache)


async def _create_message(request: web.Request) -> web.StreamResponse:
    messages = request.app[_MESSAGES]
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"The request body is larger than this server's limit of {request.client_max_size} bytes.")
    try:
        body = parse_json(raw)
    except ValueError:  # UnicodeDecodeError is one
        return error_response(400, "The request body is not valid JSON.")
    if (problem := messages_problem(body, messages.backend.models)) is not None:
        return error_response(problem.status, problem.message)
    reply = await server.answer(request, to_chat(body), overloaded_or_error)
    if isinstance(reply, web.StreamResponse):
        return reply
    request_id = new_request_id()
    message = render_message(reply, request_id, body, messages.cache)
    headers = (("request-id", f"req_{request_id}"), *rate_limit_headers(reply.headers))
    if not body.get("stream"):
        return web.Response(body=json.dumps(message).encode(), content_type="application/json", headers=headers)
    response = web.StreamResponse(headers=(("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), *headers))
    await response.prepare(request)
    for event in stream_events(message):
        await response.write(event)
    await response.write_eof()
    return response
