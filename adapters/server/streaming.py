"""Streams (server-sent events) of replies the backend gave whole.

A backend answers with a whole reply; a client that asks for a stream (``stream: true``) gets
that reply cut into pieces: its logprob tokens when it has logprobs that spell it, else words
with the white space after them. :func:`send_events` writes any API's events;
:func:`chat_chunks` are the ``chat.completion.chunk`` objects of a chat completion.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web

from .backends.base import Headers

__all__ = ["chat_chunks", "send_events", "text_pieces"]

_PIECES = re.compile(r"\S+\s*|\s+")


async def send_events(
    request: web.Request, events: Iterable[tuple[str | None, Any]], headers: Headers = (), *, done: bool = False
) -> web.StreamResponse:
    """Answer ``request`` with ``events``, each ``(event name or None, data sent as JSON)``, then
    ``data: [DONE]`` when ``done`` (chat completions end so), and end the stream.

    The events are all known: they go out in one write.
    """
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    for name, value in headers:  # after the two above; a name may come twice
        response.headers.add(name, value)
    await response.prepare(request)
    frames = [(f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n" for name, data in events]
    if done:
        frames.append("data: [DONE]\n\n")
    await response.write("".join(frames).encode())
    await response.write_eof()
    return response


def text_pieces(text: str) -> list[str]:
    """``text`` as words, each with the white space after it (white space that leads ``text`` is
    a piece of its own): the pieces spell ``text``."""
    return _PIECES.findall(text)


def chat_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    """The chunks that stream ``completion`` (a ``chat.completion`` object), as OpenAI sends them.

    Per choice: its role, its content in pieces, its tool calls and refusal, its finish reason.
    With ``include_usage`` every chunk carries ``usage: null`` and a last one, without choices,
    the usage.
    """
    head: dict[str, Any] = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    if completion.get("system_fingerprint") is not None:
        head["system_fingerprint"] = completion["system_fingerprint"]
    if include_usage:
        head["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return {**head, "choices": [choice]}

    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        yield chunk(index, {"role": "assistant", "content": "", "refusal": None})
        for piece, logprobs in _content_pieces(message.get("content"), choice.get("logprobs")):
            yield chunk(index, {"content": piece}, logprobs=logprobs)
        if calls := message.get("tool_calls"):
            yield chunk(index, {"tool_calls": [{"index": j, **call} for j, call in enumerate(calls)]})
        if refusal := message.get("refusal"):
            yield chunk(index, {"refusal": refusal})
        yield chunk(index, {}, finish_reason=choice.get("finish_reason") or "stop")
    if include_usage:
        yield {**head, "choices": [], "usage": completion.get("usage")}


def _content_pieces(content: Any, logprobs: Any) -> list[tuple[str, dict[str, Any] | None]]:
    """A choice's content in pieces, each with the chunk's ``logprobs``: a token each when the
    choice's logprobs spell the content, else words without logprobs."""
    if not isinstance(content, str):
        return []
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if (
        isinstance(tokens, list)
        and all(isinstance(token, dict) for token in tokens)
        and "".join(str(token.get("token")) for token in tokens) == content
    ):
        return [(token["token"], {"content": [token], "refusal": None}) for token in tokens]
    return [(piece, None) for piece in text_pieces(content)]
