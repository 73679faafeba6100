"""OpenAI's Responses API (``POST /v1/responses``), realtime, streamed and in batch lines.

A request is checked (:func:`responses_problem`, OpenAI error objects naming the field), turned
into the chat completion the backend answers (:func:`to_chat`: ``instructions`` become a system
message, ``input`` the messages, ``max_output_tokens`` ``max_tokens``, ``text.format`` the
``response_format``), and the reply rendered as a ``response`` object (:func:`response_object`)
or, with ``stream: true``, as its events (``response.created`` ... ``response.completed``).
Cached prompt tokens follow OpenAI's automatic rule over the chat messages, so a prompt shared
with chat completions shares their cache.

What needs state or tools the server does not have is refused by name (``previous_response_id``,
``conversation``, ``prompt``, ``background``, ``tools``); ``store`` and ``metadata`` are checked
and echoed, and nothing is stored. Importing the module registers the API for batch lines with
``url: "/v1/responses"``.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from . import server
from .backends.base import Backend, BackendError, BackendReply
from .batch_lines import LINE_APIS, LineApi
from .chat_request import Problem
from .prompt_cache import PromptCache, chat_segments
from .streaming import send_events, text_pieces
from .wire import error_response, parse_json

__all__ = ["install", "response_object", "responses_problem", "to_chat"]

MIN_OUTPUT_TOKENS = 16
_MAX_OUTPUT_TOKENS = 2**31 - 1
_ROLES = ("user", "system", "developer", "assistant")
_FORMATS = ("text", "json_object", "json_schema")
_FORMAT_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_NUMBERS = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}
_BOOLEANS = ("stream", "store", "parallel_tool_calls")
_UNSUPPORTED = ("previous_response_id", "conversation", "prompt")
_MAX_METADATA_KEYS = 16
_BACKEND = web.AppKey("responses_backend", Backend)


def install(app: web.Application, backend: Backend) -> None:
    """Add ``POST /v1/responses`` to ``app``, answered by ``backend``."""
    app[_BACKEND] = backend
    app.router.add_post("/v1/responses", _create_response)


async def _create_response(request: web.Request) -> web.StreamResponse:
    try:
        body = parse_json(await request.read())
    except ValueError:  # UnicodeDecodeError is one
        return error_response(400, "We could not parse the JSON body of your request.")
    if (problem := responses_problem(body, request.app[_BACKEND].models, streaming=True)) is not None:
        return problem.response()
    chat = to_chat(body)
    reply = await server.answer(request, chat, _openai_error)
    if isinstance(reply, web.StreamResponse):
        return reply
    request_id = secrets.token_hex(12)
    response = _render(reply, request_id, body, chat["messages"], request.app[server.PROMPT_CACHE])
    headers = (("x-request-id", f"req_{request_id}"), *reply.headers)
    if body.get("stream") is True:
        return await send_events(request, ((event["type"], event) for event in _events(response)), headers)
    return web.Response(body=json.dumps(response).encode(), content_type="application/json", headers=headers)


def _openai_error(exc: BackendError) -> web.Response:
    return error_response(exc.status, exc.message, type=exc.type, code=exc.code, param=exc.param, headers=exc.headers)


# -- the check ----------------------------------------------------------------------------


def responses_problem(body: Any, models: tuple[str, ...] | None, *, streaming: bool = False) -> Problem | None:
    """The first problem with a create-response body, else None: an unknown model (``models``
    ``None`` accepts any) is a 404, anything else a 400. ``streaming``: the caller can stream (a
    realtime request; a batch line cannot)."""
    if not isinstance(body, dict):
        return Problem(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Problem(400, "`model` must be a non-empty string.", "model")
    if (problem := _input_problem(body.get("input"))) is not None:
        return problem
    if (instructions := body.get("instructions")) is not None and not isinstance(instructions, str):
        return Problem(400, "`instructions` must be a string.", "instructions")
    if (problem := _options_problem(body, streaming)) is not None:
        return problem
    if models is not None and model not in models:
        return Problem(404, f"The model `{model}` does not exist.", "model", "model_not_found")
    return None


def _input_problem(value: Any) -> Problem | None:
    """The problem with ``input``: a string, or a non-empty array of input messages."""
    if isinstance(value, str):
        return None
    if not isinstance(value, list) or not value:
        return Problem(400, "`input` must be a string or a non-empty array of input messages.", "input")
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            return _bad(where, "must be an input message: an object with a `role` and `content`")
        role = item.get("role")
        if role not in _ROLES:
            return _bad(f"{where}.role", f"must be one of {', '.join(_ROLES)}")
        content = item.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            return _bad(f"{where}.content", "must be a string or a non-empty array of content parts")
        kinds = ("input_text", "output_text") if role == "assistant" else ("input_text",)
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") in kinds and isinstance(part.get("text"), str)):
                return _bad(f"{where}.content[{j}]", f"must be a text part: `type` {' or '.join(kinds)} with a `text`")
    return None


def _options_problem(body: dict[str, Any], streaming: bool) -> Problem | None:
    """The first option of a bad type or out of range, or one the server cannot honour, else None."""
    for name, (low, high) in _NUMBERS.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high):
            return Problem(400, f"`{name}` must be a number from {low:g} to {high:g}.", name)
    limit = body.get("max_output_tokens")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not MIN_OUTPUT_TOKENS <= limit <= _MAX_OUTPUT_TOKENS
    ):
        message = f"`max_output_tokens` must be an integer from {MIN_OUTPUT_TOKENS} to {_MAX_OUTPUT_TOKENS}."
        return Problem(400, message, "max_output_tokens", "integer_below_min_value" if isinstance(limit, int) else None)
    for name in _BOOLEANS:
        if (value := body.get(name)) is not None and not isinstance(value, bool):
            return Problem(400, f"`{name}` must be a boolean.", name)
    if body.get("stream") and not streaming:
        return Problem(400, "Streaming is not supported here: `stream` must be false.", "stream")
    if (key := body.get("prompt_cache_key")) is not None and not isinstance(key, str):
        return Problem(400, "`prompt_cache_key` must be a string.", "prompt_cache_key")
    if (metadata := body.get("metadata")) is not None and not _metadata_ok(metadata):
        return Problem(400, "`metadata` must map at most 16 keys (64 chars) to strings (512 chars).", "metadata")
    for name in _UNSUPPORTED:
        if body.get(name) is not None:
            return Problem(400, f"`{name}` is not supported by this server: it keeps no state.", name)
    if body.get("background"):
        return Problem(400, "`background` is not supported by this server.", "background")
    if body.get("tools"):
        return Problem(400, "`tools` are not supported by this server.", "tools")
    return _text_problem(body.get("text"))


def _metadata_ok(metadata: Any) -> bool:
    return (
        isinstance(metadata, dict)
        and len(metadata) <= _MAX_METADATA_KEYS
        and all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items())
    )


def _text_problem(text: Any) -> Problem | None:
    """The problem with ``text`` (its ``format``: text, json_object, or json_schema with a
    ``name`` and an object ``schema``), else None."""
    if text is None:
        return None
    if not isinstance(text, dict):
        return Problem(400, "`text` must be an object.", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in _FORMATS:
        message = "`text.format` must be an object whose `type` is `text`, `json_object` or `json_schema`."
        return Problem(400, message, "text.format")
    if fmt["type"] != "json_schema":
        return None
    if not isinstance(fmt.get("name"), str) or not _FORMAT_NAME.fullmatch(fmt["name"]):
        return Problem(400, "`text.format.name` must be 1 to 64 letters, digits, `_` or `-`.", "text.format.name")
    if not isinstance(fmt.get("schema"), dict):
        return Problem(400, "`text.format.schema` must be an object (a JSON schema).", "text.format.schema")
    if (strict := fmt.get("strict")) is not None and not isinstance(strict, bool):
        return Problem(400, "`text.format.strict` must be a boolean.", "text.format.strict")
    return None


def _bad(param: str, what: str) -> Problem:
    return Problem(400, f"`{param}` {what}.", param)


# -- to and from chat completions ---------------------------------------------------------


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completion body that asks what a checked create-response ``body`` asks."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions") is not None:
        messages.append({"role": "system", "content": body["instructions"]})
    given = body["input"]
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    else:
        messages.extend({"role": item["role"], "content": _chat_content(item["content"])} for item in given)
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    for name in ("temperature", "top_p", "prompt_cache_key"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    fmt = (body.get("text") or {}).get("format")
    if fmt is not None:
        chat["response_format"] = _chat_format(fmt)
    return chat


def _chat_content(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    return content if isinstance(content, str) else [{"type": "text", "text": part["text"]} for part in content]


def _chat_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """A checked ``text.format`` as a chat ``response_format``."""
    if fmt["type"] != "json_schema":
        return {"type": fmt["type"]}
    spec = {key: fmt[key] for key in ("name", "description", "schema", "strict") if fmt.get(key) is not None}
    return {"type": "json_schema", "json_schema": spec}


def response_object(reply: BackendReply, request_id: str, body: dict[str, Any], cache: PromptCache) -> dict[str, Any]:
    """The ``response`` object answering ``body`` with ``reply``; its id is ``resp_<request_id>``.
    A batch line's rendering (``LineApi.render``)."""
    return _render(reply, request_id, body, to_chat(body)["messages"], cache)


def _render(
    reply: BackendReply, request_id: str, body: dict[str, Any], messages: list[dict[str, Any]], cache: PromptCache
) -> dict[str, Any]:
    """:func:`response_object`, given the chat ``messages`` the body became."""
    if reply.reply is not None:  # a relayed chat completion says what its upstream cached
        details = (reply.reply.get("usage") or {}).get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0)
    else:
        cached = cache.automatic(chat_segments(messages), reply.prompt_tokens).read
    now = int(time.time())
    output = []
    if not reply.no_choices and reply.content is not None:
        part = {"type": "output_text", "text": reply.content, "annotations": [], "logprobs": []}
        output.append({"type": "message", "id": f"msg_{request_id}", "status": "completed", "role": "assistant",
                       "content": [part]})
    text = body.get("text") or {}
    return {
        "id": f"resp_{request_id}",
        "object": "response",
        "created_at": now,
        "status": "completed",
        "completed_at": now,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": reply.model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": None,
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": reply.prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": reply.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def _events(response: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The events that stream a completed ``response``, numbered from 0, as OpenAI sends them:
    the response created and in progress (no output yet), each message added, its text part
    added, the text in pieces, each done, then the response completed."""
    sequence = itertools.count()
    started = {**response, "status": "in_progress", "completed_at": None, "output": [], "usage": None}
    for kind in ("response.created", "response.in_progress"):
        yield {"type": kind, "sequence_number": next(sequence), "response": started}
    for index, item in enumerate(response["output"]):
        where = {"item_id": item["id"], "output_index": index}
        added = {**item, "status": "in_progress", "content": []}
        yield {"type": "response.output_item.added", "sequence_number": next(sequence), "output_index": index, "item": added}
        for part_index, part in enumerate(item["content"]):
            at = {**where, "content_index": part_index}
            empty = {**part, "text": ""}
            yield {"type": "response.content_part.added", "sequence_number": next(sequence), **at, "part": empty}
            for piece in text_pieces(part["text"]):
                yield {"type": "response.output_text.delta", "sequence_number": next(sequence), **at, "delta": piece,
                       "logprobs": []}
            yield {"type": "response.output_text.done", "sequence_number": next(sequence), **at, "text": part["text"],
                   "logprobs": []}
            yield {"type": "response.content_part.done", "sequence_number": next(sequence), **at, "part": part}
        yield {"type": "response.output_item.done", "sequence_number": next(sequence), "output_index": index, "item": item}
    yield {"type": "response.completed", "sequence_number": next(sequence), "response": response}


LINE_APIS["/v1/responses"] = LineApi(responses_problem, to_chat, response_object)
