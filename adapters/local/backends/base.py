"""What the embedded server needs from a backend, and how a backend asks for a fault.

A backend answers one validated chat-completion body. It may instead raise, and the server
renders the exception:

    Exception
    ├── BackendError       an OpenAI-shaped HTTP error (429, 5xx, ...), with extra headers
    ├── DropConnection     close the connection without sending a response
    └── MalformedReply     answer 200 with a body that is not JSON

Any other exception becomes a 500 ``server_error`` that names no internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Completion:
    """One assistant answer. ``headers`` are added to the HTTP response (rate-limit state)."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    headers: Headers = ()


class Backend(Protocol):
    """Answers chat completions for the server.

    ``models`` are the model ids the backend knows; ``None`` accepts any model name (and
    ``/v1/models`` then lists ``name``). ``complete`` gets a body the server has already
    validated: ``model`` is a known non-empty string and ``messages`` a non-empty list of
    ``{"role", "content"}`` objects.
    """

    name: str

    @property
    def models(self) -> tuple[str, ...] | None: ...

    async def complete(self, body: dict[str, Any]) -> Completion: ...


class BackendError(Exception):
    """Answer with an OpenAI error object: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | None = None,
        param: str | None = None,
        headers: Headers = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers


class DropConnection(Exception):
    """Close the client's connection without a response (the client sees a disconnect)."""


class MalformedReply(Exception):
    """Answer 200, ``Content-Type: application/json``, with ``body``, which is not JSON."""

    def __init__(self, body: bytes) -> None:
        super().__init__("malformed reply")
        self.body = body
