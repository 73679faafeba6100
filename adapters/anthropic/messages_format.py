"""Anthropic's Messages API shapes, translated to and from the engine's OpenAI chat bodies.

Pure functions, no I/O beyond reading a result file. A chat body becomes Messages ``params``:

- ``system``/``developer`` messages -> ``system`` text blocks (in order); ``user``/``assistant``
  -> ``messages`` (a string stays a string; text parts become text blocks);
- ``max_tokens`` (or ``max_completion_tokens``; Anthropic requires one: ``DEFAULT_MAX_TOKENS``
  otherwise), ``temperature``, ``top_p`` as they are; ``stop`` -> ``stop_sequences``;
  ``user`` -> ``metadata.user_id``; ``seed`` dropped (Anthropic has none);
- ``response_format`` json_schema (or json_object with its schema) -> one forced tool
  ``answer`` whose ``input_schema`` is the schema; the reply's ``tool_use.input`` is then the
  content, as compact JSON, so the engine reads it as it reads OpenAI's structured output;
- ``prompt_cache_key`` -> ``cache_control: ephemeral`` on the last system block (the engine puts
  what every row shares there); the key itself is not sent: Anthropic caches by prefix;
- ``logprobs`` -> refused: Anthropic's API gives no token log-probabilities. So is any other
  field, rather than dropped unnoticed.

``to_chat`` is the reverse, for a batch line retried as a realtime call: ``to_params(to_chat(p))
== p``. A batch line is ``{"custom_id": <engine custom_id>, "params"}``; the id sent to Anthropic
is ``anthropic_id`` of it (its pattern is ``^[a-zA-Z0-9_-]{1,64}$``). A result line is
``{"custom_id", "result": {"type": "succeeded", "message"} | {"type": "errored", "error":
{"type": "error", "error": {"type", "message"}}} | {"type": "canceled"} | {"type": "expired"}}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from engine import fastjson
from engine.errors import ProviderError
from engine.types import ChatRequest, ChatResult, Failure, Outcome, Usage

#: The forced tool a structured answer is asked through.
ANSWER_TOOL: Final = "answer"
#: ``max_tokens`` when a chat body gives none (Anthropic requires it).
DEFAULT_MAX_TOKENS: Final = 4096
#: What ``to_chat`` gives as ``prompt_cache_key`` for params with a cache breakpoint (the key
#: sent is not kept: Anthropic has none).
CACHE_KEY: Final = "anthropic"
#: A Message Batch's limits: requests, and bytes of the create request.
MAX_BATCH_REQUESTS: Final = 100_000
MAX_BATCH_BYTES: Final = 256 * 1024 * 1024
#: The HTTP status of each of Anthropic's error types.
ERROR_STATUS: Final[dict[str, int]] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_EPHEMERAL: Final = {"type": "ephemeral"}
_DROPPED: Final = frozenset({"seed"})
_ID_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_ID_PREFIX_CHARS: Final = 64 - 1 - 16  # a readable prefix, a dash, 16 hex digits of hash


def _refuse(message: str) -> ProviderError:
    return ProviderError(message, kind="no", reason="rejected_request")


# -- requests ------------------------------------------------------------------------------


def to_params(body: dict[str, Any]) -> dict[str, Any]:
    """A chat body -> Messages params; raises ``ProviderError(kind="no")`` for what Anthropic
    cannot do (log-probabilities, a field or content part with no counterpart)."""
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _refuse("Anthropic's Messages API gives no token log-probabilities: turn judge.logprobs off for this endpoint")
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or ():
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_blocks(message.get("content"), role))
        elif role in ("user", "assistant"):
            content = message.get("content")
            messages.append({"role": role, "content": content if isinstance(content, str) else _blocks(content, role)})
        else:
            raise _refuse(f"Anthropic's Messages API has no {role!r} messages")
    params: dict[str, Any] = {
        "model": body.get("model"),
        "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_MAX_TOKENS,
        "messages": messages,
    }
    if body.get("prompt_cache_key") and system:
        system[-1] = {**system[-1], "cache_control": dict(_EPHEMERAL)}
    if system:
        params["system"] = system
    for key, value in body.items():
        if key in ("model", "messages", "max_tokens", "max_completion_tokens", "prompt_cache_key", "logprobs", "top_logprobs"):
            continue
        if key in _DROPPED or value is None:
            continue
        if key in ("temperature", "top_p"):
            params[key] = value
        elif key == "stop":
            params["stop_sequences"] = [value] if isinstance(value, str) else list(value)
        elif key == "user":
            params["metadata"] = {"user_id": value}
        elif key == "response_format":
            params.update(_forced_tool(value))
        elif key == "stream" and not value:
            continue
        else:
            raise _refuse(f"Anthropic's Messages API has no counterpart of the request field {key!r}")
    return params


def _blocks(content: Any, role: str) -> list[dict[str, Any]]:
    """A message's content as text blocks: a string is one block, text parts one block each."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part in content or ():
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise _refuse(f"a {role} message part of type {kind!r} cannot be sent to Anthropic (text only)")
        blocks.append({"type": "text", "text": part.get("text", "")})
    return blocks


def _forced_tool(response_format: Any) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` that ask for ``response_format``'s JSON; none for text."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return {}
    if kind == "json_schema":
        schema = response_format.get("json_schema", {}).get("schema") or {"type": "object"}
    elif kind == "json_object":
        schema = response_format.get("schema") or {"type": "object"}
    else:
        raise _refuse(f"Anthropic's Messages API has no response_format of type {kind!r}")
    return {
        "tools": [{"name": ANSWER_TOOL, "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": ANSWER_TOOL},
    }


def to_chat(params: dict[str, Any]) -> dict[str, Any]:
    """Messages params (as ``to_params`` makes them) -> the chat body they came from: the
    ``stop`` list, the json_schema format named ``answer``, ``prompt_cache_key`` ``CACHE_KEY``."""
    messages: list[dict[str, Any]] = []
    cached = False
    for block in params.get("system") or ():
        messages.append({"role": "system", "content": block.get("text", "")})
        cached = cached or "cache_control" in block
    for message in params.get("messages") or ():
        content = message.get("content")
        if not isinstance(content, str):
            content = [{"type": "text", "text": block.get("text", "")} for block in content]
        messages.append({"role": message["role"], "content": content})
    body: dict[str, Any] = {"model": params.get("model"), "messages": messages, "max_tokens": params.get("max_tokens")}
    for key in ("temperature", "top_p"):
        if key in params:
            body[key] = params[key]
    if "stop_sequences" in params:
        body["stop"] = list(params["stop_sequences"])
    if isinstance(params.get("metadata"), dict) and "user_id" in params["metadata"]:
        body["user"] = params["metadata"]["user_id"]
    for tool in params.get("tools") or ():
        if tool.get("name") == ANSWER_TOOL:
            schema = {"name": ANSWER_TOOL, "strict": True, "schema": tool.get("input_schema")}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if cached:
        body["prompt_cache_key"] = CACHE_KEY
    return body


def anthropic_id(custom_id: str, salt: str = "") -> str:
    """The engine's custom_id as a Message Batch custom_id (``^[a-zA-Z0-9_-]{1,64}$``): its
    characters outside the pattern as ``_``, cut to 47, then ``-`` and 16 hex digits of its
    hash with ``salt`` (what sets its batch apart: another run's batch of the same rows maps to
    other ids). The same id and salt always map to the same; two to the same only by a 64-bit
    collision."""
    digest = hashlib.blake2b(f"{salt}\n{custom_id}".encode(), digest_size=8).hexdigest()
    return f"{_ID_UNSAFE.sub('_', custom_id)[:_ID_PREFIX_CHARS]}-{digest}"


def encode_line(request: ChatRequest) -> str:
    return fastjson.dumps({"custom_id": request.custom_id, "params": to_params(request.body)}).decode()


def decode_line(line: str) -> tuple[str, dict[str, Any]]:
    decoded = fastjson.loads(line)
    return str(decoded["custom_id"]), to_chat(decoded["params"])


# -- replies -------------------------------------------------------------------------------


def read_message(message: Any) -> tuple[str, str, Usage]:
    """A Message's content, model and usage. The content is its ``answer`` tool's input as
    compact JSON when it used the tool, else its text blocks joined; raises ``ValueError``
    (``KeyError``, ``TypeError``) when it is not a Message."""
    blocks = message["content"]
    tool = next((block for block in blocks if block.get("type") == "tool_use"), None)
    if tool is not None:
        content = json.dumps(tool["input"], ensure_ascii=False, separators=(",", ":"))
    else:
        content = "".join(block["text"] for block in blocks if block.get("type") == "text")
    return content, str(message.get("model") or ""), read_usage(message.get("usage") or {})


def read_usage(usage: dict[str, Any]) -> Usage:
    """Anthropic's usage -> the engine's: ``input_tokens`` counts only the prompt neither read
    from nor written to the cache, so the whole prompt is the three added up."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + read + written
    return Usage(prompt, int(usage.get("output_tokens") or 0), cached_tokens=read, cache_write_tokens=written)


def error_detail(body: Any) -> tuple[str | None, str]:
    """An error body's ``error.type`` and ``error.message`` (Anthropic's ``{"type": "error",
    "error": {...}}``); ``(None, "")`` when it is not one (OpenAI's ``{"error": {...}}`` is not)."""
    error = body.get("error") if isinstance(body, dict) and body.get("type") == "error" else None
    if not isinstance(error, dict):
        return None, ""
    kind, message = error.get("type"), error.get("message")
    return (kind if isinstance(kind, str) else None), (message if isinstance(message, str) else "")


def parse_result_line(line: dict[str, Any]) -> Outcome:
    """One line of a Message Batch's results -> an outcome (under the line's own custom_id)."""
    custom_id = str(line.get("custom_id"))
    result = line.get("result")
    if not isinstance(result, dict):
        result = {}
    kind = result.get("type")
    if kind == "succeeded":
        try:
            content, model, usage = read_message(result["message"])
        except (KeyError, TypeError, AttributeError):
            return Failure(custom_id, "malformed_body", "the result is not a Message")
        if not content.strip():
            return Failure(custom_id, "empty_response", "the Message has no content")
        return ChatResult(custom_id, content, model, usage, latency_s=None)
    if kind == "errored":
        error_type, message = error_detail(result.get("error"))
        status = ERROR_STATUS.get(error_type or "")
        if status is None:
            return Failure(custom_id, error_type or "batch_error", message or "the request errored")
        return Failure(custom_id, f"http_{status}", f"HTTP {status}: {error_type}: {message}", status_code=status)
    if kind == "canceled":
        return Failure(custom_id, "batch_cancelled", "the batch was cancelled before this request was processed")
    if kind == "expired":
        return Failure(custom_id, "batch_expired", "the batch expired before this request was processed")
    return Failure(custom_id, "malformed_line", "the result line is neither succeeded, errored, canceled nor expired")


def read_outcomes(path: Path) -> Iterator[Outcome]:
    """The outcomes of a downloaded result file, line by line."""
    with path.open(encoding="utf-8") as source:
        for line in source:
            if line.strip():
                yield parse_result_line(fastjson.loads(line))
