"""The upstream backend: forwards chat completions to another OpenAI-compatible endpoint.

It gives a Batch API to servers that have none (llama.cpp's server, Ollama, vLLM's realtime
server): our server runs the batch, the upstream answers each line. Bodies go upstream as they
came; the upstream's chat-completion object comes back whole (``BackendReply.reply``): every
choice as it was (``tool_calls``, ``logprobs``, ``finish_reason``, as many as ``n`` asked for),
``usage``, ``system_fingerprint``, its ``id`` and ``model``, in realtime answers and batch output
lines alike. Failures become :class:`BackendError`:

- an upstream HTTP error keeps its status and its error's message, type, code and param, plus
  its ``Retry-After``/``retry-after-ms``/``x-ratelimit-*`` headers (so a 429 paces our client);
- a connection failure, or a reply that is not a chat completion, is a 502; a timeout is a 504.

It never retries: the engine does. Each call opens its own aiohttp session in the running loop
(the ``Backend`` protocol has no close hook, and a shared session would outlive its loop), so
there is no connection reuse between calls.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from .base import BackendError, BackendReply, Headers

__all__ = ["UpstreamBackend"]

_KEPT_ON_ERROR = ("retry-after", "retry-after-ms")
_KEPT_PREFIX = "x-ratelimit-"
_MAX_ECHO_CHARS = 500


class UpstreamBackend:
    """Forwards to ``base_url`` (ending in ``/v1``), with ``Authorization: Bearer api_key`` if set.

    ``models`` ``None`` forwards any model name (and ``/v1/models`` lists ``"upstream"``); a tuple
    restricts the names our server accepts. ``timeout_s`` bounds each call, body included.
    """

    name = "upstream"

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        models: tuple[str, ...] | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.models = models
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        """Forward ``body``; raise :class:`BackendError` for anything but a readable 200."""
        url = f"{self.base_url}/chat/completions"
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout, headers=self._headers) as session,
                session.post(url, json=body) as response,
            ):
                text = (await response.read()).decode("utf-8", "replace")
                status, headers = response.status, response.headers
        except TimeoutError as exc:
            raise BackendError(
                504, f"The upstream at {self.base_url} timed out.", type="server_error",
                code="upstream_timeout",
            ) from exc
        except aiohttp.ClientError as exc:
            raise BackendError(
                502, f"Could not reach the upstream at {self.base_url}: {exc}", type="server_error",
                code="upstream_unreachable",
            ) from exc
        if status != 200:
            raise _upstream_error(status, text, _kept(headers, on_error=True))
        try:
            return _completion(json.loads(text), _kept(headers, on_error=False))
        except (ValueError, LookupError, TypeError) as exc:
            raise BackendError(
                502, f"The upstream at {self.base_url} sent a reply that is not a chat completion.",
                type="server_error", code="bad_upstream_reply",
            ) from exc


def _kept(headers: Any, *, on_error: bool) -> Headers:
    """The rate-limit headers worth passing on (and ``Retry-After`` ones for an error)."""
    return tuple(
        (key, value)
        for key, value in headers.items()
        if key.lower().startswith(_KEPT_PREFIX) or (on_error and key.lower() in _KEPT_ON_ERROR)
    )


def _completion(data: Any, headers: Headers) -> BackendReply:
    """The upstream's chat-completion object, relayed whole; raises on any other shape.

    It must be an object with a string ``model`` and ``choices`` an array of objects each with a
    ``message`` object; ``usage``, if any, must count tokens in integers.
    """
    choices = data["choices"]
    if not isinstance(data["model"], str) or not isinstance(choices, list):
        raise TypeError("model must be a string and choices an array")
    if not all(isinstance(choice, dict) and isinstance(choice["message"], dict) for choice in choices):
        raise TypeError("every choice must be an object with a message object")
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
        raise TypeError("usage must be an object")
    prompt_tokens, completion_tokens = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
        raise TypeError("token counts must be integers")
    content = choices[0]["message"].get("content") if choices else None
    return BackendReply(
        content if isinstance(content, str) else None,
        prompt_tokens,
        completion_tokens,
        data["model"],
        headers,
        no_choices=not choices,
        reply=data,
    )


def _upstream_error(status: int, text: str, headers: Headers) -> BackendError:
    """The upstream's error, from an OpenAI error object, a bare ``{"error": "..."}`` or text."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        error = {"message": error if isinstance(error, str) else text[:_MAX_ECHO_CHARS]}
    message = error.get("message") or f"The upstream answered HTTP {status}."
    fallback_type = "server_error" if status >= 500 else "invalid_request_error"
    code, param = error.get("code"), error.get("param")
    return BackendError(
        status,
        str(message),
        type=str(error.get("type") or fallback_type),
        code=None if code is None else str(code),
        param=None if param is None else str(param),
        headers=headers,
    )
