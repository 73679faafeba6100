"""The sim backend, counting: what the server saw, for tests and the faults benchmark to assert on."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import replace
from typing import Any

from adapters.server.backends.base import BackendError, BackendReply, Hang
from adapters.server.backends.sim import SimBackend, SimSettings


def request_key(body: dict[str, Any]) -> str:
    """What tells a request from any other: its model and its messages' roles and text (the same
    for each attempt, and whichever API shape carried it: a system prompt that came as
    Anthropic's text blocks reads as the chat message it was)."""
    messages = [[message.get("role"), _text(message.get("content"))] for message in body.get("messages") or ()]
    return json.dumps([body.get("model"), messages], ensure_ascii=False)


def _text(content: Any) -> Any:
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content


class CountingBackend:
    """The sim backend, counting every request it sees and every 429 it answers.

    ``calls`` counts every request; ``requests`` counts, per :func:`request_key`, those that
    reached the model (batch lines too: they go through the same backend). ``reached`` is set
    once ``calls`` reaches ``signal_after`` (see :meth:`arm`), so a test or a scenario can act at
    a chosen point of a run without sleeping. With ``announce`` off it strips the
    ``x-ratelimit-*`` headers, like an endpoint that enforces limits it never states: the client
    can only learn them from its 429s.
    """

    def __init__(self, settings: SimSettings, *, announce: bool = True, signal_after: int | None = None) -> None:
        self._inner = SimBackend(settings)
        self._announce = announce
        self._signal_after = signal_after
        self._hold_after: int | None = None
        self.calls = 0
        self.rate_limited = 0
        self.requests: Counter[str] = Counter()
        self.reached = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def arm(self, calls: int) -> None:
        """Signal ``reached`` again once the backend has seen ``calls`` requests in all."""
        self.reached.clear()
        self._signal_after = calls

    def hold_after(self, calls: int | None) -> None:
        """Hold every request after the first ``calls`` in all unanswered (the server keeps it
        until the client leaves); None answers every request again. A held request never
        reaches the model: it is not counted in ``requests``."""
        self._hold_after = calls

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        self.calls += 1
        if self._signal_after is not None and self.calls >= self._signal_after:
            self.reached.set()
        if self._hold_after is not None and self.calls > self._hold_after:
            raise Hang()
        self.requests[request_key(body)] += 1
        try:
            completion = await self._inner.complete(body)
        except BackendError as error:
            if error.status == 429:
                self.rate_limited += 1
            if not self._announce:
                error.headers = tuple(h for h in error.headers if not h[0].startswith("x-ratelimit-"))
            raise
        return completion if self._announce else replace(completion, headers=())
