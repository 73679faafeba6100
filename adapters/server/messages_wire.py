"""Anthropic's Messages wire shapes, as translations of the backend's chat completions.

A Messages body becomes a chat body (:func:`to_chat`): ``system`` -> a system message, each
message's string or text blocks -> its content, ``max_tokens``, ``temperature``, ``top_p``,
``stop_sequences`` -> ``stop``, and a forced tool (``tool_choice`` ``tool``, or ``any`` with one
tool) -> a ``json_schema`` ``response_format`` of the tool's ``input_schema``, as does an
``output_config.format`` (its answer is a text block of JSON). ``top_k``, ``metadata``,
``service_tier`` and ``output_config.effort`` have no chat counterpart and are dropped.

A reply becomes a ``message`` (:func:`render_message`): a forced tool's JSON object answer is a
``tool_use`` block (``stop_reason: "tool_use"``), anything else a text block. The text is cut at
the first stop sequence in it (``stop_sequence``; a backend that stops there itself, as a local
model does, leaves nothing to find: ``end_turn``) or at ``max_tokens`` (for a backend that does
not honour it: the text is cut in proportion). ``usage`` follows Anthropic's accounting through
the server's prompt cache: ``input_tokens`` are the prompt tokens neither read from nor written
to it.

Errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with a
``request-id`` header; the backend's 503 is Anthropic's 529 ``overloaded_error``, its OpenAI
``x-ratelimit-*`` headers are ``anthropic-ratelimit-*`` ones (:func:`rate_limit_headers`).
A streamed message is the events of :func:`stream_events`.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from aiohttp import web

from .backends.base import BackendError, BackendReply, Headers
from .batch_lines import LineApi
from .messages_request import messages_problem
from .prompt_cache import PromptCache

__all__ = [
    "LINE_API",
    "MESSAGES_URL",
    "cache_segments",
    "error_body",
    "error_response",
    "error_type",
    "forced_tool",
    "new_request_id",
    "overloaded_or_error",
    "rate_limit_headers",
    "render_message",
    "rfc3339",
    "stream_events",
    "to_chat",
]

MESSAGES_URL = "/v1/messages"
_TOOL_JSON_CHUNK = 24
_WORDS = re.compile(r"\s*\S+\s*|\s+")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_LIMITS = ("requests", "tokens")


def new_request_id() -> str:
    """A request's id, bare hex digits (its ``request-id`` header is ``req_<id>``)."""
    return secrets.token_hex(12)


def rfc3339(seconds: float) -> str:
    """Unix seconds as an RFC 3339 UTC time, as Anthropic writes them."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


# -- requests ------------------------------------------------------------------------------


def forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool a (checked) body forces: ``tool_choice`` ``tool``, or ``any`` with one tool."""
    choice = body.get("tool_choice")
    tools = body.get("tools") or []
    if not isinstance(choice, dict):
        return None
    if choice.get("type") == "tool":
        return next(dict(tool) for tool in tools if tool["name"] == choice["name"])
    if choice.get("type") == "any" and len(tools) == 1:
        return dict(tools[0])
    return None


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completion body for a checked Messages body."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _content(system)})
    messages.extend({"role": message["role"], "content": _content(message["content"])} for message in body["messages"])
    chat: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = list(body["stop_sequences"])
    if (tool := forced_tool(body)) is not None:
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": tool["name"], "schema": tool["input_schema"]}}
    elif (form := (body.get("output_config") or {}).get("format")) is not None:
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": form["schema"]}}
    return chat


def _content(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A string as it is; text blocks as chat text parts (no blocks: an empty string)."""
    if isinstance(content, str):
        return content
    return [{"type": "text", "text": block["text"]} for block in content] or ""


def cache_segments(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """The prompt as the cache sees it: the system blocks, then each message's blocks, in order,
    each with whether it carries a ``cache_control`` breakpoint (the body's own marks the last)."""
    segments: list[tuple[str, bool]] = []
    turns = [("system", body["system"])] if body.get("system") else []
    for role, content in [*turns, *((m["role"], m["content"]) for m in body["messages"])]:
        blocks = [{"text": content}] if isinstance(content, str) else content
        for i, block in enumerate(blocks):
            head = f"{role}\n" if i == 0 else ""
            segments.append((head + block["text"], block.get("cache_control") is not None))
    if body.get("cache_control") is not None and segments:
        segments[-1] = (segments[-1][0], True)
    return segments


def _write_ttl(body: dict[str, Any]) -> str:
    """The ``ttl`` of the last breakpoint (where a cache write ends): ``5m`` unless it says ``1h``."""
    ttl = "5m"
    blocks = [body.get("system")] + [message["content"] for message in body["messages"]]
    for content in blocks:
        for block in content if isinstance(content, list) else ():
            if (control := block.get("cache_control")) is not None:
                ttl = control.get("ttl") or "5m"
    if (control := body.get("cache_control")) is not None:
        ttl = control.get("ttl") or "5m"
    return ttl


# -- replies -------------------------------------------------------------------------------


def render_message(
    reply: BackendReply, request_id: str, body: dict[str, Any], cache: PromptCache, *, service_tier: str = "standard"
) -> dict[str, Any]:
    """The ``message`` object answering ``body`` with ``reply``; its id is ``msg_<request_id>``
    (``request_id``: hex digits)."""
    text = reply.content or ""
    tool = forced_tool(body)
    answer = _json_object(text) if tool is not None else None
    stop_sequence: str | None = None
    if tool is not None and answer is not None:
        content: list[dict[str, Any]] = [
            {"type": "tool_use", "id": f"toolu_{request_id}", "name": tool["name"], "input": answer}
        ]
        stop_reason, output_tokens = "tool_use", reply.completion_tokens
    else:
        text, stop_reason, stop_sequence, output_tokens = _cut(text, body, reply)
        content = [{"type": "text", "text": text}] if text else []
    use = cache.explicit(cache_segments(body), reply.prompt_tokens)
    written = {"5m": 0, "1h": 0}
    written[_write_ttl(body)] = use.written
    usage = {
        "input_tokens": max(0, reply.prompt_tokens - use.read - use.written),
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": use.written,
        "cache_read_input_tokens": use.read,
        "cache_creation": {"ephemeral_5m_input_tokens": written["5m"], "ephemeral_1h_input_tokens": written["1h"]},
        "service_tier": service_tier,
    }
    return {
        "id": f"msg_{request_id}",
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage,
    }


#: How a batch line calling ``/v1/messages`` runs (``batch_lines.LINE_APIS[MESSAGES_URL]``): its
#: messages are of the ``batch`` service tier.
LINE_API = LineApi(messages_problem, to_chat, partial(render_message, service_tier="batch"))


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _cut(text: str, body: dict[str, Any], reply: BackendReply) -> tuple[str, str, str | None, int]:
    """``(text, stop_reason, stop_sequence, output_tokens)``: the text up to the first stop
    sequence in it, or up to ``max_tokens``, whichever comes first."""
    tokens = reply.completion_tokens
    max_tokens: int = body["max_tokens"]
    limit = len(text) if tokens <= max_tokens else math.floor(len(text) * max_tokens / tokens)
    found = [(text.find(stop), stop) for stop in body.get("stop_sequences") or () if stop and stop in text]
    if found:
        at, stop = min(found, key=lambda hit: hit[0])
        if at + len(stop) <= limit:
            kept = text[:at]
            return kept, "stop_sequence", stop, math.ceil(tokens * (at + len(stop)) / len(text))
    if tokens >= max_tokens or _finish_reason(reply) == "length":
        return text[:limit], "max_tokens", None, min(tokens, max_tokens)
    return text, "end_turn", None, tokens


def _finish_reason(reply: BackendReply) -> str | None:
    """The first choice's ``finish_reason`` of a relayed reply (None for any other)."""
    choices = reply.reply.get("choices") if reply.reply is not None else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None


# -- streaming -----------------------------------------------------------------------------


def stream_events(message: dict[str, Any]) -> Iterator[bytes]:
    """``message`` as Anthropic's server-sent events: ``message_start``, ``ping``, per block
    ``content_block_start``, its deltas and ``content_block_stop``, ``message_delta``,
    ``message_stop``. The SDK's accumulation of them is ``message``."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 0}}
    yield _event("message_start", {"type": "message_start", "message": start})
    yield _event("ping", {"type": "ping"})
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            opening = {**block, "input": {}}
            encoded = json.dumps(block["input"])
            deltas = [
                {"type": "input_json_delta", "partial_json": encoded[i : i + _TOOL_JSON_CHUNK]}
                for i in range(0, len(encoded), _TOOL_JSON_CHUNK)
            ]
        else:
            opening = {**block, "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _WORDS.findall(block["text"])]
        yield _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening})
        for delta in deltas:
            yield _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    yield _event("message_delta", {"type": "message_delta", "delta": stop, "usage": {"output_tokens": usage["output_tokens"]}})
    yield _event("message_stop", {"type": "message_stop"})


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


# -- errors and headers --------------------------------------------------------------------


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (a 503 is an ``overloaded_error``)."""
    if status == 503:
        return "overloaded_error"
    return _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, request_id: str | None = None) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}`` for ``status``."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}, "request_id": request_id}


def error_response(status: int, message: str, *, headers: Headers = ()) -> web.Response:
    """An Anthropic error response, with a new ``request-id``."""
    request_id = f"req_{new_request_id()}"
    return web.Response(
        status=status,
        body=json.dumps(error_body(status, message, request_id)).encode(),
        content_type="application/json",
        headers=(("request-id", request_id), *headers),
    )


def overloaded_or_error(exc: BackendError) -> web.Response:
    """A backend's error in Anthropic's shape: its 503 as 529 ``overloaded_error``, its OpenAI
    rate-limit headers as Anthropic's."""
    status = 529 if exc.status == 503 else exc.status
    limited = exc.type if exc.status == 429 else None
    return error_response(status, exc.message, headers=rate_limit_headers(exc.headers, limited=limited))


def rate_limit_headers(headers: Headers, *, limited: str | None = None, now: datetime | None = None) -> Headers:
    """A backend's headers with OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
    as Anthropic's ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` (a reset as
    an RFC 3339 time) and ``retry-after`` kept; ``retry-after-ms`` and other ``x-ratelimit-*``
    headers are dropped, the rest pass. ``limited`` (``requests`` or ``tokens``: the limit a 429
    hit) without a reset header of its own resets after ``retry-after``."""
    now = now or datetime.now(UTC)
    out: list[tuple[str, str]] = []
    resets: set[str] = set()
    retry_after: float | None = None
    for name, value in headers:
        key = name.lower()
        if key == "retry-after":
            out.append(("retry-after", value))
            retry_after = _float(value)
        elif key == "retry-after-ms":
            continue
        elif key.startswith("x-ratelimit-"):
            field, _, kind = key.removeprefix("x-ratelimit-").partition("-")
            if kind not in _LIMITS or field not in ("limit", "remaining", "reset"):
                continue
            if field == "reset":
                if (seconds := _duration(value)) is None:
                    continue
                value = _rfc3339_at(now + timedelta(seconds=seconds))
                resets.add(kind)
            out.append((f"anthropic-ratelimit-{kind}-{field}", value))
        else:
            out.append((name, value))
    if limited in _LIMITS and limited not in resets and retry_after is not None:
        out.append((f"anthropic-ratelimit-{limited}-reset", _rfc3339_at(now + timedelta(seconds=retry_after))))
    return tuple(out)


def _rfc3339_at(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _float(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _duration(value: str) -> float | None:
    """OpenAI's reset durations (``1s``, ``6m0s``, ``120ms``, ``1h2m3.5s``) or bare seconds."""
    if (seconds := _float(value)) is not None:
        return seconds
    parts = _DURATION.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value.strip():
        return None
    return sum(float(number) * _DURATION_S[unit] for number, unit in parts)
