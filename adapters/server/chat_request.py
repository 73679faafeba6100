"""The check of a chat-completion request body against OpenAI's spec (``CreateChatCompletionRequest``).

What the spec accepts passes: the six message roles with the fields each requires (an assistant
turn that carries ``tool_calls`` or ``function_call`` may have a null or no ``content``; a tool
turn needs ``tool_call_id``, a function turn ``name``), content as a string or a non-empty array
of the parts the role may send (text; a user's images, audio and files; an assistant's refusal),
and the options ``n``, ``logprobs``/``top_logprobs``, ``tools``/``tool_choice``/
``parallel_tool_calls``, ``stop``, ``seed`` and ``response_format`` (``text``, ``json_object``,
``json_schema``; extra keys such as llama.cpp's ``json_object`` ``schema`` pass, as the spec lets
them). What it rejects is a :class:`Problem` naming the field (``messages[1].tool_call_id``).

A null option is the same as an absent one, as in OpenAI's API. Fields the spec has and this check
does not name pass to the backend unchecked: the backend, or the upstream it relays to, decides.
``stream`` and ``stream_options`` (``include_usage``) are checked; a caller that cannot stream (a
batch line) refuses ``stream: true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .wire import error_body, error_response

__all__ = ["Problem", "chat_problem"]

_MAX_TOKENS = 2**31 - 1
_MAX_SEED = 2**63
_ROLES = ("developer", "system", "user", "assistant", "tool", "function")
# The content parts each role may send (a part of type T carries its content under the key T).
_PART_TYPES: dict[str, tuple[str, ...]] = {
    "developer": ("text",),
    "system": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
    "function": (),
}
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")
_TOOL_CHOICE_MODES = ("none", "auto", "required")
_MAX_STOP = 4
# name: (lowest, highest) of an optional number.
_NUMBERS = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
# name: (lowest, highest) of an optional integer.
_INTEGERS = {
    "max_tokens": (1, _MAX_TOKENS),
    "max_completion_tokens": (1, _MAX_TOKENS),
    "n": (1, 128),
    "top_logprobs": (0, 20),
    "seed": (-_MAX_SEED, _MAX_SEED),
}
_BOOLEANS = ("logprobs", "parallel_tool_calls")


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with a request, as the HTTP status and OpenAI error it gets."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def body(self) -> dict[str, Any]:
        return error_body(self.message, code=self.code, param=self.param)

    def response(self) -> web.Response:
        return error_response(self.status, self.message, code=self.code, param=self.param)


def chat_problem(body: Any, models: tuple[str, ...] | None, *, streaming: bool = False) -> Problem | None:
    """The first problem with a chat-completion body, else None.

    ``models`` ``None`` accepts any model name; an unknown one is a 404, anything else a 400.
    ``streaming``: the caller can stream its answer (a realtime request; a batch line cannot).
    """
    if not isinstance(body, dict):
        return Problem(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Problem(400, "`model` must be a non-empty string.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Problem(400, "`messages` must be a non-empty array.", "messages")
    for i, message in enumerate(messages):
        if (problem := _message_problem(message, f"messages[{i}]")) is not None:
            return problem
    if (problem := _stream_problem(body, streaming)) is not None:
        return problem
    if (problem := _options_problem(body)) is not None:
        return problem
    if models is not None and model not in models:
        return Problem(404, f"The model `{model}` does not exist.", "model", "model_not_found")
    return None


def _stream_problem(body: dict[str, Any], streaming: bool) -> Problem | None:
    """The problem with ``stream`` and ``stream_options``, else None."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return Problem(400, "`stream` must be a boolean.", "stream")
    if stream and not streaming:
        return Problem(400, "Streaming is not supported here: `stream` must be false.", "stream")
    options = body.get("stream_options")
    if options is None:
        return None
    if not stream:
        return Problem(400, "`stream_options` is only allowed when `stream` is true.", "stream_options")
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        return Problem(400, "`stream_options` must be an object whose `include_usage` is a boolean.", "stream_options")
    return None


def _message_problem(message: Any, where: str) -> Problem | None:
    """The first problem with one message at ``where`` (``messages[i]``), else None."""
    if not isinstance(message, dict):
        return _bad(where, "must be an object with a `role`")
    role = message.get("role")
    if role not in _ROLES:
        return _bad(f"{where}.role", f"must be one of {', '.join(_ROLES)}")
    if message.get("name") is not None and not isinstance(message["name"], str):
        return _bad(f"{where}.name", "must be a string")
    content = message.get("content")
    if role == "assistant":
        if (problem := _calls_problem(message, where)) is not None:
            return problem
        calls = message.get("tool_calls") is not None or message.get("function_call") is not None
        if content is None and not calls:
            return _bad(f"{where}.content", "is required unless the message has `tool_calls`")
    elif role == "function":
        if not isinstance(message.get("name"), str):
            return _bad(f"{where}.name", "is required: the function's name")
        if "content" not in message:
            return _bad(f"{where}.content", "is required (a string or null)")
    else:
        if content is None:
            return _bad(f"{where}.content", "must be a string or a non-empty array of content parts")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            return _bad(f"{where}.tool_call_id", "is required: the id of the tool call this answers")
    if content is not None and not _content_ok(content, role):
        return _bad(f"{where}.content", "must be a string or a non-empty array of content parts")
    return None


def _content_ok(content: Any, role: str) -> bool:
    """Whether ``content`` is a string or a non-empty array of the parts ``role`` may send."""
    if isinstance(content, str):
        return True
    kinds = _PART_TYPES[role]
    if not isinstance(content, list) or not content:
        return False
    return all(
        isinstance(part, dict)
        and (kind := part.get("type")) in kinds
        and isinstance(part.get(kind), str if kind in ("text", "refusal") else dict)
        for part in content
    )


def _calls_problem(message: dict[str, Any], where: str) -> Problem | None:
    """The first problem with an assistant message's ``tool_calls`` or ``function_call``."""
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            return _bad(f"{where}.tool_calls", "must be an array of tool calls")
        for j, call in enumerate(calls):
            if not (isinstance(call, dict) and isinstance(call.get("id"), str) and _call_ok(call)):
                what = "must be an object with an `id` and a `function` (name, arguments) or `custom` (name, input)"
                return _bad(f"{where}.tool_calls[{j}]", what)
    function_call = message.get("function_call")
    if function_call is not None and not _strings(function_call, "name", "arguments"):
        return _bad(f"{where}.function_call", "must be an object with a `name` and `arguments`")
    return None


def _call_ok(call: dict[str, Any]) -> bool:
    kind = call.get("type")
    if kind == "function":
        return _strings(call.get("function"), "name", "arguments")
    return kind == "custom" and _strings(call.get("custom"), "name", "input")


def _strings(value: Any, *keys: str) -> bool:
    """Whether ``value`` is an object whose ``keys`` are all strings."""
    return isinstance(value, dict) and all(isinstance(value.get(key), str) for key in keys)


def _options_problem(body: dict[str, Any]) -> Problem | None:
    """The first option of a bad type or out of range, else None."""
    for name, (low, high) in _NUMBERS.items():
        if (value := body.get(name)) is not None and not _number_in(value, float, low, high):
            return Problem(400, f"`{name}` must be a number from {low:g} to {high:g}.", name)
    for name, (low, high) in _INTEGERS.items():
        if (value := body.get(name)) is not None and not _number_in(value, int, low, high):
            return Problem(400, f"`{name}` must be an integer from {low} to {high}.", name)
    for name in _BOOLEANS:
        if (value := body.get(name)) is not None and not isinstance(value, bool):
            return Problem(400, f"`{name}` must be a boolean.", name)
    if (stop := body.get("stop")) is not None and not _stop_ok(stop):
        return Problem(400, f"`stop` must be a string or an array of 1 to {_MAX_STOP} strings.", "stop")
    return _tools_problem(body) or _format_problem(body.get("response_format"))


def _stop_ok(stop: Any) -> bool:
    if isinstance(stop, str):
        return True
    return isinstance(stop, list) and 1 <= len(stop) <= _MAX_STOP and all(isinstance(s, str) for s in stop)


def _tools_problem(body: dict[str, Any]) -> Problem | None:
    """The first problem with ``tools`` or ``tool_choice``, else None."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return Problem(400, "`tools` must be an array of tools.", "tools")
        for j, tool in enumerate(tools):
            if not _tool_ok(tool):
                message = (
                    f"`tools[{j}]` must be a `function` tool with a `function.name` or a `custom` tool with a `custom.name`."
                )
                return Problem(400, message, f"tools[{j}]")
    choice = body.get("tool_choice")
    if choice is not None and not (
        choice in _TOOL_CHOICE_MODES
        or (
            isinstance(choice, dict)
            and isinstance(kind := choice.get("type"), str)
            and (kind not in ("function", "custom") or _strings(choice.get(kind), "name"))
        )
    ):
        message = f"`tool_choice` must be one of {', '.join(_TOOL_CHOICE_MODES)} or an object naming a tool."
        return Problem(400, message, "tool_choice")
    return None


def _tool_ok(tool: Any) -> bool:
    if not isinstance(tool, dict) or tool.get("type") not in ("function", "custom"):
        return False
    spec = tool.get(tool["type"])
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return False
    parameters = spec.get("parameters")
    return tool["type"] == "custom" or parameters is None or isinstance(parameters, dict)


def _format_problem(response_format: Any) -> Problem | None:
    """The problem with ``response_format``, else None."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or response_format.get("type") not in _RESPONSE_FORMATS:
        message = "`response_format` must be an object whose `type` is `text`, `json_object` or `json_schema`."
        return Problem(400, message, "response_format")
    if response_format["type"] == "json_schema":
        spec = response_format.get("json_schema")
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("name"), str)
            or not isinstance(spec.get("schema", {}), dict)
        ):
            message = "`response_format.json_schema` must be an object with a `name` and an object `schema`."
            return Problem(400, message, "response_format.json_schema")
    return None


def _number_in(value: Any, kind: type[int] | type[float], low: float, high: float) -> bool:
    """Whether ``value`` is a JSON number (an integer for ``int``) from ``low`` to ``high``."""
    kinds = (int,) if kind is int else (int, float)
    return not isinstance(value, bool) and isinstance(value, kinds) and low <= value <= high


def _bad(param: str, what: str) -> Problem:
    return Problem(400, f"`{param}` {what}.", param)
