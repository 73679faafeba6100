"""OpenAI's wire shapes, shared by the HTTP handlers and the batch executor.

Error objects, JSON bodies, the ``chat.completion`` object, and the cursor page of the list
endpoints (``after`` / ``limit``, ``first_id`` / ``last_id`` / ``has_more``). The check of a
request body is :mod:`.chat_request`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from .backends.base import BackendReply, Headers, TokenLogprob

__all__ = [
    "MAX_JSON_DEPTH",
    "chat_completion",
    "error_body",
    "error_response",
    "page",
    "parse_json",
]

_T = TypeVar("_T")
MAX_JSON_DEPTH = 64


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


def chat_completion(completion: BackendReply, request_id: str, cached_tokens: int = 0) -> dict[str, Any]:
    """The ``chat.completion`` object for ``completion``; its id is ``chatcmpl-<request_id>``;
    ``cached_tokens`` of its prompt came from the prompt cache (``prompt_cache``).

    A completion that relays another server's ``reply`` is that object as it came, with its
    ``model`` set to ``completion.model``.
    """
    if completion.reply is not None:
        return {**completion.reply, "model": completion.model}
    logprobs = completion.logprobs
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": completion.content, "refusal": None},
        "finish_reason": "stop",
        "logprobs": None if logprobs is None else {"content": [_token(t) for t in logprobs], "refusal": None},
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
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        },
    }


def _token(token: TokenLogprob) -> dict[str, Any]:
    """OpenAI's ``ChatCompletionTokenLogprob`` for ``token``."""
    top = [{"token": text, "logprob": logprob, "bytes": list(text.encode())} for text, logprob in token.top]
    return {"token": token.token, "logprob": token.logprob, "bytes": list(token.token.encode()), "top_logprobs": top}


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
