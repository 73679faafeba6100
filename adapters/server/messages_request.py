"""The check of an Anthropic Messages request body (``POST /v1/messages``, a batch's ``params``).

What it accepts: ``model``, ``max_tokens`` and ``messages`` (required); ``system`` (a string or
text blocks); ``temperature``, ``top_p`` (0 to 1), ``top_k``; ``stop_sequences``; ``metadata``
(``user_id``); ``stream``; ``service_tier``; ``tools`` (custom tools with an object
``input_schema``) and ``tool_choice`` (``auto``, ``any``, ``tool`` naming one of them, ``none``);
``output_config`` (``effort``, and a ``json_schema`` ``format``, which a forced tool excludes).
Content is a string or text blocks; a text block, a system block, a tool and the body itself (a
breakpoint on the last block) may carry ``cache_control: {"type": "ephemeral"}`` (four at most).
Any other field is refused, as Anthropic refuses one; those of Anthropic's API this server does
not implement (``thinking``, ``container``, ...) as not supported.

A problem is a :class:`~.chat_request.Problem` whose message reads as Anthropic's (pydantic's):
``max_tokens: Field required``, ``messages.0.content.1.text: Input should be a valid string``,
each path under ``where`` (a batch's ``requests.3.params.``). An unknown model is a 404
(``model: claude-x``) and is checked last.
"""

from __future__ import annotations

import re
from typing import Any

from .chat_request import Problem

__all__ = ["MAX_CACHE_BREAKPOINTS", "messages_problem"]

MAX_CACHE_BREAKPOINTS = 4
_MAX_TOKENS = 2**31 - 1
_ROLES = ("user", "assistant")
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_TOOL_CHOICES = ("auto", "any", "tool", "none")
_CACHE_TTLS = ("5m", "1h")
_SERVICE_TIERS = ("auto", "standard_only")
_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "stream",
        "service_tier",
        "tools",
        "tool_choice",
        "cache_control",
        "output_config",
    }
)
# Fields of Anthropic's API this server does not implement: refused as such, not as unknown.
_UNSUPPORTED = frozenset({"container", "context_management", "diagnostics", "inference_geo", "mcp_servers", "speed", "thinking"})
_EFFORTS = ("low", "medium", "high", "xhigh", "max")


class _Bad(Exception):
    """A problem found deep in a body: ``path: message``, and its status."""

    def __init__(self, path: str, message: str, status: int = 400) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.status = status


def messages_problem(body: Any, models: tuple[str, ...] | None, *, where: str = "") -> Problem | None:
    """The first problem with a Messages body, else None; ``models`` ``None`` accepts any model."""
    try:
        _check(body, models)
    except _Bad as exc:
        return Problem(exc.status, f"{where}{exc}", f"{where}{exc.path}")
    return None


def _check(body: Any, models: tuple[str, ...] | None) -> None:
    if not isinstance(body, dict):
        raise _Bad("body", "Input should be a valid dictionary")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise _Bad(name, "Field required")
    for name in body:
        if name in _UNSUPPORTED:
            raise _Bad(name, "not supported by this server")
        if name not in _FIELDS:
            raise _Bad(name, "Extra inputs are not permitted")
    model = _string(body["model"], "model")
    if not model:
        raise _Bad("model", "String should have at least 1 character")
    _integer(body["max_tokens"], "max_tokens", 1, _MAX_TOKENS)
    breakpoints = _system(body.get("system")) + _messages(body["messages"])
    breakpoints += _cache_control(body.get("cache_control"), "cache_control")
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            _number(body[name], name, 0.0, 1.0)
    if body.get("top_k") is not None:
        _integer(body["top_k"], "top_k", 0, _MAX_TOKENS)
    if body.get("stop_sequences") is not None:
        for i, stop in enumerate(_list(body["stop_sequences"], "stop_sequences")):
            _string(stop, f"stop_sequences.{i}")
    _metadata(body.get("metadata"))
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _Bad("stream", "Input should be a valid boolean")
    if body.get("service_tier") is not None and body["service_tier"] not in _SERVICE_TIERS:
        raise _Bad("service_tier", "Input should be 'auto' or 'standard_only'")
    names, tool_breakpoints = _tools(body.get("tools"))
    if (found := breakpoints + tool_breakpoints) > MAX_CACHE_BREAKPOINTS:
        limit = f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. Found {found}."
        raise _Bad("cache_control", limit)
    _tool_choice(body.get("tool_choice"), names)
    _output_config(body.get("output_config"), body.get("tool_choice"))
    if models is not None and model not in models:
        raise _Bad("model", model, 404)


def _system(system: Any) -> int:
    """Check ``system``; the number of its cache breakpoints."""
    if system is None or isinstance(system, str):
        return 0
    return sum(_text_block(block, f"system.{i}") for i, block in enumerate(_list(system, "system")))


def _messages(messages: Any) -> int:
    """Check ``messages``; the number of their cache breakpoints."""
    items = _list(messages, "messages")
    if not items:
        raise _Bad("messages", "List should have at least 1 item after validation, not 0")
    breakpoints = 0
    for i, message in enumerate(items):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise _Bad(where, "Input should be a valid dictionary")
        for name in ("role", "content"):
            if name not in message:
                raise _Bad(f"{where}.{name}", "Field required")
        for name in message:
            if name not in ("role", "content"):
                raise _Bad(f"{where}.{name}", "Extra inputs are not permitted")
        if message["role"] not in _ROLES:
            raise _Bad(f"{where}.role", "Input should be 'user' or 'assistant'")
        content = message["content"]
        if isinstance(content, str):
            empty = not content
        else:
            blocks = _list(content, f"{where}.content")
            breakpoints += sum(_text_block(block, f"{where}.content.{j}") for j, block in enumerate(blocks))
            empty = not blocks
        if empty and not (i == len(items) - 1 and message["role"] == "assistant"):
            raise _Bad(where, "all messages must have non-empty content except for the optional final assistant message")
    return breakpoints


def _text_block(block: Any, where: str) -> int:
    """Check one text block; 1 if it carries a cache breakpoint, else 0."""
    if not isinstance(block, dict):
        raise _Bad(where, "Input should be a valid dictionary")
    if block.get("type") != "text":
        raise _Bad(f"{where}.type", "Input should be 'text' (this server answers text content only)")
    if "text" not in block:
        raise _Bad(f"{where}.text", "Field required")
    _string(block["text"], f"{where}.text")
    for name in block:
        if name not in ("type", "text", "cache_control", "citations"):
            raise _Bad(f"{where}.{name}", "Extra inputs are not permitted")
    return _cache_control(block.get("cache_control"), f"{where}.cache_control")


def _cache_control(value: Any, where: str) -> int:
    """Check a ``cache_control``; 1 if there is one, else 0."""
    if value is None:
        return 0
    if not isinstance(value, dict) or value.get("type") != "ephemeral":
        raise _Bad(f"{where}.type", "Input should be 'ephemeral'")
    if value.get("ttl") is not None and value["ttl"] not in _CACHE_TTLS:
        raise _Bad(f"{where}.ttl", "Input should be '5m' or '1h'")
    return 1


def _metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise _Bad("metadata", "Input should be a valid dictionary")
    for name, value in metadata.items():
        if name != "user_id":
            raise _Bad(f"metadata.{name}", "Extra inputs are not permitted")
        if value is not None:
            _string(value, "metadata.user_id")


def _tools(tools: Any) -> tuple[set[str], int]:
    """Check ``tools``; their names and the number of their cache breakpoints."""
    names: set[str] = set()
    breakpoints = 0
    if tools is None:
        return names, breakpoints
    for i, tool in enumerate(_list(tools, "tools")):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise _Bad(where, "Input should be a valid dictionary")
        if tool.get("type", "custom") not in ("custom", None):
            raise _Bad(f"{where}.type", "Input should be 'custom' (this server has no server tools)")
        for name in ("name", "input_schema"):
            if name not in tool:
                raise _Bad(f"{where}.{name}", "Field required")
        name = _string(tool["name"], f"{where}.name")
        if not _TOOL_NAME.fullmatch(name):
            raise _Bad(f"{where}.name", "String should match pattern '^[a-zA-Z0-9_-]{1,128}$'")
        if name in names:
            raise _Bad("tools", f"Tool names must be unique: {name}")
        names.add(name)
        schema = tool["input_schema"]
        if not isinstance(schema, dict):
            raise _Bad(f"{where}.input_schema", "Input should be a valid dictionary")
        if schema.get("type") != "object":
            raise _Bad(f"{where}.input_schema.type", "Input should be 'object'")
        if tool.get("description") is not None:
            _string(tool["description"], f"{where}.description")
        for key in tool:
            if key not in ("type", "name", "description", "input_schema", "cache_control"):
                raise _Bad(f"{where}.{key}", "Extra inputs are not permitted")
        breakpoints += _cache_control(tool.get("cache_control"), f"{where}.cache_control")
    return names, breakpoints


def _tool_choice(choice: Any, names: set[str]) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict):
        raise _Bad("tool_choice", "Input should be a valid dictionary")
    kind = choice.get("type")
    if kind not in _TOOL_CHOICES:
        raise _Bad("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
    if choice.get("disable_parallel_tool_use") is not None and not isinstance(choice["disable_parallel_tool_use"], bool):
        raise _Bad("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")
    if kind != "none" and not names:
        raise _Bad("tool_choice", "tool_choice may only be specified while providing tools")
    if kind == "tool":
        if "name" not in choice:
            raise _Bad("tool_choice.name", "Field required")
        if _string(choice["name"], "tool_choice.name") not in names:
            raise _Bad("tool_choice.name", f"Tool '{choice['name']}' not found in tools")


def _output_config(config: Any, tool_choice: Any) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise _Bad("output_config", "Input should be a valid dictionary")
    for name in config:
        if name not in ("effort", "format"):
            raise _Bad(f"output_config.{name}", "Extra inputs are not permitted")
    if config.get("effort") is not None and config["effort"] not in _EFFORTS:
        raise _Bad("output_config.effort", "Input should be 'low', 'medium', 'high', 'xhigh' or 'max'")
    form = config.get("format")
    if form is None:
        return
    if not isinstance(form, dict):
        raise _Bad("output_config.format", "Input should be a valid dictionary")
    if form.get("type") != "json_schema":
        raise _Bad("output_config.format.type", "Input should be 'json_schema'")
    if not isinstance(form.get("schema"), dict):
        raise _Bad("output_config.format.schema", "Input should be a valid dictionary")
    for name in form:
        if name not in ("type", "schema"):
            raise _Bad(f"output_config.format.{name}", "Extra inputs are not permitted")
    if isinstance(tool_choice, dict) and tool_choice.get("type") in ("tool", "any"):
        raise _Bad("output_config.format", "this server cannot answer both a JSON format and a forced tool")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad(where, "Input should be a valid list")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Bad(where, "Input should be a valid string")
    return value


def _integer(value: Any, where: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(where, "Input should be a valid integer")
    if value < low:
        raise _Bad(where, f"Input should be greater than or equal to {low}")
    if value > high:
        raise _Bad(where, f"Input should be less than or equal to {high}")


def _number(value: Any, where: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(where, "Input should be a valid number")
    if not low <= value:  # NaN too
        raise _Bad(where, f"Input should be greater than or equal to {low:g}")
    if not value <= high:
        raise _Bad(where, f"Input should be less than or equal to {high:g}")
