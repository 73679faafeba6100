"""OpenAI's wire shapes, shared by the HTTP handlers and the batch executor.

Error objects, the check of a chat-completion body, the ``chat.completion`` object, and the
cursor page of the list endpoints (``after`` / ``limit``, ``first_id`` / ``last_id`` / ``has_more``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from .backends.base import Completion, Headers

__all__ = ["Problem", "chat_completion", "chat_problem", "error_body", "error_response", "page"]

_T = TypeVar("_T")


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
    if models is not None and model not in models:
        return Problem(404, f"The model `{model}` does not exist.", "model", "model_not_found")
    return None


def chat_completion(completion: Completion, request_id: str) -> dict[str, Any]:
    """The ``chat.completion`` object for ``completion``; its id is ``chatcmpl-<request_id>``."""
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
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
