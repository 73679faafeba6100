"""OpenAI's wire shapes, shared by the HTTP handlers and the batch executor.

Error objects, JSON bodies, the check of a chat-completion body, the ``chat.completion`` object,
and the cursor page of the list endpoints (``after`` / ``limit``, ``first_id`` / ``last_id`` /
``has_more``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from .backends.base import Completion, Headers

__all__ = [
    "MAX_JSON_DEPTH",
    "Problem",
    "chat_completion",
    "chat_problem",
    "error_body",
    "error_response",
    "page",
    "parse_json",
]

_T = TypeVar("_T")
_MAX_TOKENS = 2**31 - 1
MAX_JSON_DEPTH = 64
_RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
# name: (lowest, highest) of an optional number; None is the same as absent, as in OpenAI's API.
_NUMBERS = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}


def error_body(
    message: str, *, type: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: Headers = (),
) -> web.Response:
    """An HTTP response carrying :func:`error_body`."""
    body = error_body(message, type=type, code=code, param=param)
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )


def parse_json(raw: bytes | str) -> Any:
    """``raw`` as JSON; raises ValueError for anything else, or for arrays and objects nested
    more than ``MAX_JSON_DEPTH`` deep (a body any later step could handle without recursing out).
    """
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} deep")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return value


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


def chat_problem(body: Any, models: tuple[str, ...] | None) -> Problem | None:
    """The first problem with a chat-completion body, else None.

    ``models`` ``None`` accepts any model name; an unknown one is a 404, anything else a 400.
    Of the sampling options only the types and ranges of the common ones are checked.
    """
    if not isinstance(body, dict):
        return Problem(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Problem(400, "`model` must be a non-empty string.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Problem(400, "`messages` must be a non-empty array.", "messages")
    for i, item in enumerate(messages):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("role"), str)
            or not isinstance(item.get("content"), (str, list))
        ):
            message = f"`messages[{i}]` must be an object with a `role` and `content`."
            return Problem(400, message, f"messages[{i}]")
    if body.get("stream"):
        return Problem(400, "Streaming is not supported by this server.", "stream")
    if (problem := _options_problem(body)) is not None:
        return problem
    if models is not None and model not in models:
        return Problem(404, f"The model `{model}` does not exist.", "model", "model_not_found")
    return None


def _options_problem(body: dict[str, Any]) -> Problem | None:
    """The first sampling option of a bad type or out of range, else None."""
    for name, (low, high) in _NUMBERS.items():
        if (value := body.get(name)) is not None and not _number_in(value, float, low, high):
            return Problem(400, f"`{name}` must be a number from {low:g} to {high:g}.", name)
    for name in ("max_tokens", "max_completion_tokens"):
        if (value := body.get(name)) is not None and not _number_in(value, int, 1, _MAX_TOKENS):
            return Problem(400, f"`{name}` must be an integer from 1 to {_MAX_TOKENS}.", name)
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and response_format.get("type") in _RESPONSE_FORMATS
    ):
        message = "`response_format` must be an object whose `type` is `text`, `json_object` or `json_schema`."
        return Problem(400, message, "response_format")
    if isinstance(response_format, dict) and response_format["type"] == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            message = "`response_format.json_schema` must be an object with a `name`."
            return Problem(400, message, "response_format.json_schema")
    return None


def _number_in(value: Any, kind: type[int] | type[float], low: float, high: float) -> bool:
    """Whether ``value`` is a JSON number (an integer for ``int``) from ``low`` to ``high``."""
    kinds = (int,) if kind is int else (int, float)
    return not isinstance(value, bool) and isinstance(value, kinds) and low <= value <= high


def chat_completion(completion: Completion, request_id: str) -> dict[str, Any]:
    """The ``chat.completion`` object for ``completion``; its id is ``chatcmpl-<request_id>``."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": completion.content, "refusal": None},
        "finish_reason": "stop",
        "logprobs": None,
    }
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model,
        "choices": [] if completion.no_choices else [choice],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


def page(
    items: Sequence[_T],
    request: web.Request,
    id_of: Callable[[_T], str],
    render: Callable[[_T], dict[str, Any]],
    *,
    default_limit: int,
) -> web.Response:
    """One cursor page of ``items`` (already newest first) as a JSON response, or a 400.

    ``after`` is the id of the last item of the previous page; ``limit`` runs from 1 to 100, or to
    ``default_limit`` when that is larger (files: 10,000, as OpenAI).
    """
    top = max(default_limit, 100)
    try:
        limit = int(request.query.get("limit", default_limit))
    except ValueError:
        limit = 0
    if not 1 <= limit <= top:
        return error_response(400, f"`limit` must be an integer from 1 to {top}.", param="limit")
    start = 0
    if (after := request.query.get("after")) is not None:
        ids = [id_of(item) for item in items]
        if after not in ids:
            return error_response(400, f"No object with id `{after}` to page after.", param="after")
        start = ids.index(after) + 1
    chunk = items[start : start + limit]
    return web.json_response(
        {
            "object": "list",
            "data": [render(item) for item in chunk],
            "first_id": id_of(chunk[0]) if chunk else None,
            "last_id": id_of(chunk[-1]) if chunk else None,
            "has_more": start + limit < len(items),
        }
    )
