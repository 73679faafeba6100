"""The provider interface: what the engine asks of an endpoint, in the engine's own types.

An adapter implements ``Provider`` for one API shape (``adapters.openai.OpenAIProvider`` for
OpenAI-compatible endpoints); ``engine.mock_provider.MockProvider`` is the in-memory double the
engine's tests use, the way httpx ships a ``MockTransport``. ``Evaluation(config, provider=...)``
takes either; without one, ``engine.connect`` builds the adapter the config names.

- **Requests**: a ``ChatRequest``'s body is an OpenAI chat-completions body (model, messages,
  temperature, max_tokens, response_format), the engine's one request shape; an adapter for
  another API translates it, and translates its answers back into ``ChatReply`` and outcomes.
- **Realtime**: ``complete`` makes one chat call and returns a ``ChatReply`` (its ``rate_limits``
  are what the endpoint said about its budgets, fed to the limiter).
- **Batch**: the engine writes request files in the provider's own line format (``encode_line``;
  ``decode_line`` reads one back for a realtime retry), then ``upload_input`` -> ``create_batch``
  -> ``retrieve_batch`` until ``BatchJob.terminal`` -> ``download_results`` -> ``read_results``.
  A create or upload whose reply was lost is found again with ``find_batch`` and
  ``find_input``; a request file lost locally comes back with ``download_input``. A provider
  whose batches carry no tags (Anthropic's Message Batches) lists none for a tag, and finds a
  lost create by the batch's content.
- **Errors**: every failure is an ``engine.errors.ProviderError`` whose ``kind`` says whether to
  retry (``transient``, ``rate_limit`` with ``retry_after`` and ``rate_limits``, ``no``);
  ``FatalError`` subclasses (a rejected key, an unknown model, no Batch API) stop the run.
  Messages never contain a secret.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .types import ChatRequest, Outcome, TokenLogprob, Usage

BatchStatus = Literal[
    "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"
]
#: The statuses a batch never leaves.
TERMINAL_BATCH_STATUSES: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True, slots=True)
class RateLimits:
    """What a response said about the endpoint's budgets (OpenAI's ``x-ratelimit-*`` headers).

    Limits are per minute; ``remaining_*`` is what the server had left once it had admitted (or
    refused) the call. ``None``: the response did not say.
    """

    limit_requests: float | None = None
    limit_tokens: float | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None


@dataclass(frozen=True, slots=True)
class ChatReply:
    """A provider's answer to one realtime chat call: the parts the engine keeps."""

    content: str
    model: str
    usage: Usage
    latency_s: float
    rate_limits: RateLimits | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """How many of a batch's requests there are, and how many have succeeded and failed so far."""

    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class BatchJob:
    """A provider batch as the engine sees it. Times are Unix seconds; ``errors`` says, line by
    line, why a ``failed`` batch was refused; ``tags`` are the ones it was created with;
    ``results`` are the provider's handles of its result files by kind, opaque to the engine."""

    id: str
    status: str
    input_id: str
    created_at: float
    tags: Mapping[str, str] = field(default_factory=dict)
    counts: BatchCounts | None = None
    in_progress_at: float | None = None
    finished_at: float | None = None
    errors: tuple[str, ...] = ()
    results: Mapping[str, str] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_BATCH_STATUSES


class ChatProvider(Protocol):
    """Realtime chat calls."""

    async def complete(self, request: ChatRequest) -> ChatReply:
        """One call; raises ``ProviderError`` with its retry kind on any failure."""
        ...


class BatchProvider(Protocol):
    """The control plane of batch mode. Every call may raise ``ProviderError``; an endpoint
    with no batch API raises ``BatchApiMissingError``."""

    def encode_line(self, request: ChatRequest) -> str:
        """One request as a line of a batch input file (no newline)."""
        ...

    def decode_line(self, line: str) -> tuple[str, dict[str, Any]]:
        """A line of a batch input file -> its custom_id and request body."""
        ...

    async def upload_input(self, path: Path, name: str) -> str:
        """Make a request file available to batches under ``name``; returns its input id."""
        ...

    async def find_input(self, name: str, size: int, since: float) -> str | None:
        """The id of an input uploaded as ``name`` with ``size`` bytes after ``since``, if any:
        where an upload's reply was lost."""
        ...

    async def create_batch(self, input_id: str, tags: Mapping[str, str]) -> BatchJob:
        """Start a batch over an uploaded input, tagged so that ``list_batches`` finds it."""
        ...

    async def retrieve_batch(self, batch_id: str) -> BatchJob: ...

    async def cancel_batch(self, batch_id: str) -> BatchJob: ...

    def list_batches(self, tags: Mapping[str, str], since: float) -> AsyncIterator[BatchJob]:
        """The batches created after ``since`` that carry every one of ``tags``, newest first."""
        ...

    async def find_batch(
        self, input_id: str, tags: Mapping[str, str], since: float, known: frozenset[str]
    ) -> BatchJob | None:
        """The batch made from ``input_id`` with ``tags`` after ``since`` whose create reply was
        lost, if there is one; ``known`` are the ids of batches the run already has."""
        ...

    async def download_results(self, job: BatchJob, stem: Path) -> list[Path]:
        """Download a finished batch's result files beside ``stem`` (``<stem>.<kind>.jsonl``);
        a file already there is not downloaded again. Returns the files to read. The request
        file the batch was made from is ``<stem>.jsonl``."""
        ...

    async def download_input(self, input_id: str, path: Path) -> None:
        """Restore a request file from the provider's copy of it."""
        ...

    def read_results(self, path: Path) -> Iterator[Outcome]:
        """The outcomes in a downloaded result file (blocking: run it in a worker thread)."""
        ...


async def made_from(batches: AsyncIterator[BatchJob], input_id: str, known: frozenset[str]) -> BatchJob | None:
    """The first of ``batches`` made from ``input_id`` that is not one of ``known``: ``find_batch``
    for a provider whose batches carry their tags and input (list them by the tags)."""
    async for batch in batches:
        if batch.input_id == input_id and batch.id not in known:
            return batch
    return None


class Provider(ChatProvider, BatchProvider, Protocol):
    """One endpoint, realtime and batch. Enter it (``async with``) to open its connections."""

    async def __aenter__(self) -> Provider: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
