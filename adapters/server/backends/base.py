"""What the embedded server needs from a backend, and how a backend asks for a fault.

A backend answers one validated chat-completion body. It may instead raise, and the server
renders the exception:

    Exception
    ├── BackendError       an OpenAI-shaped HTTP error (429, 5xx, ...), with extra headers
    ├── DropConnection     close the connection without sending a response
    ├── MalformedReply     answer 200 with a body that is not JSON
    ├── TruncatedReply     answer 200 declaring a body's length, send part of it, then close
    └── Hang               never answer: hold the request until the client leaves or the server stops

Any other exception becomes a 500 ``server_error`` that names no internals.

A backend may also carry a ``batch_policy`` (:class:`BatchPolicy`): how the server's batches
behave beyond answering lines (turnaround, expiry, failed lines, stalls). The simulator does;
:func:`batch_policy` gives the default, no faults, for any backend that does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class BackendReply:
    """One assistant answer. ``headers`` are added to the HTTP response (rate-limit state).

    The server builds the ``chat.completion`` object around ``content``: one choice that
    finished with ``stop``. ``content`` ``None`` is sent as a null message content;
    ``no_choices`` sends ``choices: []`` instead of the answer (both are faults a client must
    survive).

    A backend that relays another server sets ``reply`` to that server's whole
    ``chat.completion`` object (every choice with its ``tool_calls``, ``logprobs`` and
    ``finish_reason``; ``usage``, ``system_fingerprint`` and the rest): it is sent as it came,
    with only ``model`` set to this completion's. ``content`` and the token counts then summarise
    it (the first choice's content, its usage) for code that counts or inspects answers.

    ``logprobs`` (for a request with ``logprobs: true``) are the content's tokens, which spell it;
    ``None`` sends ``logprobs: null``.
    """

    content: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str
    headers: Headers = ()
    no_choices: bool = False
    reply: Mapping[str, Any] | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token of an answer, its log-probability, and ``top``: the most likely tokens at its
    position with theirs, most likely first (OpenAI's ``top_logprobs``)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


class Backend(Protocol):
    """Answers chat completions for the server.

    ``models`` are the model ids the backend knows; ``None`` accepts any model name (and
    ``/v1/models`` then lists ``name``). ``complete`` gets a body the server has already
    checked against OpenAI's spec (:mod:`adapters.server.chat_request`): ``model`` is a known
    non-empty string and ``messages`` a non-empty list of messages with a known ``role``;
    ``content`` is a string, an array of typed parts, or (an assistant turn with tool calls, a
    function turn) null or absent.
    """

    name: str

    @property
    def models(self) -> tuple[str, ...] | None: ...

    async def complete(self, body: dict[str, Any]) -> BackendReply: ...


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How a backend's batches behave, beyond each line's answer.

    No batch completes sooner than ``min_seconds`` after its creation; one still running
    ``expire_after_s`` after creation expires with partial output (``None``: never). A share
    ``fail_rate`` of lines fails with a 500 error line without reaching the backend, chosen by a
    hash of ``(seed, custom_id, attempt)`` (the attempt: how many batches on this server have
    carried the line), so the same lines fail in every run and a retried line may succeed. ``stall_validating`` keeps
    every batch in ``validating`` until it is cancelled.
    """

    min_seconds: float = 0.0
    expire_after_s: float | None = None
    fail_rate: float = 0.0
    stall_validating: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_seconds < 0:
            raise ValueError(f"batch min_seconds must not be negative, got {self.min_seconds}")
        if self.expire_after_s is not None and self.expire_after_s <= 0:
            raise ValueError(f"batch expire_after_s must be positive or None, got {self.expire_after_s}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"batch fail_rate must be in [0, 1], got {self.fail_rate}")

    def fails(self, custom_id: str, attempt: int = 1) -> bool:
        """Whether the ``attempt``-th run of the line ``custom_id`` (1 for its first batch, 2 when
        a later batch carries it again) is one of the failing share: the same in every run."""
        if not self.fail_rate:
            return False
        digest = hashlib.blake2b(f"{self.seed}:{custom_id}:{attempt}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64 < self.fail_rate


def batch_policy(backend: object) -> BatchPolicy:
    """``backend.batch_policy`` when it has one, else the default policy (no batch faults)."""
    policy = getattr(backend, "batch_policy", None)
    return policy if isinstance(policy, BatchPolicy) else BatchPolicy()


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


class TruncatedReply(Exception):
    """Answer 200 with ``Content-Length: len(body)``, send the first half of ``body``, then close."""

    def __init__(self, body: bytes) -> None:
        super().__init__("truncated reply")
        self.body = body


class Hang(Exception):
    """Never answer: the request stays open until the client gives up or the server stops."""
