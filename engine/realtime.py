"""Realtime calls: one request through the limiter, the provider and the retry policy.

The runner owns everything between "this request must be answered" and "here is its outcome":
waiting for a concurrency slot and RPM/TPM budget, the call, correcting the token estimate with
the real ``usage``, passing on what the endpoint said about its rate limits, pausing everyone
after a 429, and backing off. It returns a ``ChatResult`` or a ``Failure`` with its reason; only
a ``FatalError`` (a rejected key, an unknown model) escapes, because it dooms every other row too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .errors import FatalError, ProviderError
from .limits import Clock, Limiter, RateLimits
from .retry import RetryPolicy
from .types import ChatRequest, ChatResult, Failure, Outcome, Row, Usage

Deliver = Callable[[Row, Outcome], Awaitable[None]]


class Completion(Protocol):
    @property
    def content(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def usage(self) -> Usage: ...
    @property
    def latency_s(self) -> float: ...
    @property
    def rate_limits(self) -> RateLimits | None: ...


class ChatClient(Protocol):
    """What an adapter offers the runner (``adapters.openai_compat.OpenAICompatClient``)."""

    async def complete(self, request: ChatRequest) -> Completion: ...


@dataclass(slots=True)
class CallStats:
    """Counters the progress display and metrics read; mutated only by the runner."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0


def charged_tokens(request: ChatRequest, usage: Usage) -> int:
    """What a provider counts against the TPM limit: the prompt plus the reply budget.

    OpenAI-style limits charge ``max_tokens`` when the call is admitted and do not refund what
    the reply left unused; refunding it would let the client run ahead of the server's budget.
    """
    budget = request.body.get("max_tokens") or request.body.get("max_completion_tokens") or 0
    return usage.prompt_tokens + max(usage.completion_tokens, int(budget))


class RealtimeRunner:
    def __init__(self, client: ChatClient, limiter: Limiter, policy: RetryPolicy, clock: Clock) -> None:
        self._client = client
        self._limiter = limiter
        self._policy = policy
        self._clock = clock
        self.stats = CallStats()

    async def call(self, request: ChatRequest) -> Outcome:
        started_at = time.time()
        attempt = 0
        while True:
            attempt += 1
            sent_at = await self._limiter.acquire(request.estimated_tokens)
            self.stats.requests += 1
            self.stats.in_flight += 1
            try:
                completion = await self._client.complete(request)
            except ProviderError as exc:
                error = exc
                self._limiter.settle(request.estimated_tokens, 0)
                delay = self._after_error(error, attempt, sent_at)
            else:
                usage = completion.usage
                self._limiter.settle(request.estimated_tokens, charged_tokens(request, usage))
                self._limiter.on_success(sent_at, completion.rate_limits)
                return ChatResult(
                    custom_id=request.custom_id,
                    content=completion.content,
                    model=completion.model,
                    usage=usage,
                    latency_s=completion.latency_s,
                    attempts=attempt,
                    started_at=started_at,
                    finished_at=time.time(),
                )
            finally:
                self.stats.in_flight -= 1
                self._limiter.release()
            if delay is None:
                return Failure(
                    custom_id=request.custom_id,
                    reason=error.reason,
                    message=str(error),
                    status_code=error.status_code,
                    attempts=attempt,
                    started_at=started_at,
                    finished_at=time.time(),
                )
            self.stats.retries += 1
            await self._clock.sleep(delay)

    def _after_error(self, error: ProviderError, attempt: int, sent_at: float) -> float | None:
        if isinstance(error, FatalError):
            raise error
        if error.kind == "rate_limit":
            self.stats.rate_limited += 1
            self._limiter.on_rate_limited(sent_at, error.rate_limits)
            if error.retry_after is not None:
                self._limiter.pause(error.retry_after)
        return self._policy.delay(error, attempt)


class RealtimeStage:
    """A pipeline stage served by realtime calls: a task per request, bounded by the limiter."""

    def __init__(self, runner: RealtimeRunner) -> None:
        self.runner = runner
        self._group: TaskGroup | None = None
        self._deliver: Deliver | None = None
        self._closed = anyio.Event()

    async def run(self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._deliver = deliver
        async with anyio.create_task_group() as group:
            self._group = group
            task_status.started()
            await self._closed.wait()

    async def submit(self, row: Row, request: ChatRequest) -> None:
        assert self._group is not None, "submit() before run() started"
        self._group.start_soon(self._call, row, request)

    async def _call(self, row: Row, request: ChatRequest) -> None:
        assert self._deliver is not None
        await self._deliver(row, await self.runner.call(request))

    async def flush(self) -> None:
        """Nothing waits in a realtime stage."""

    async def close(self) -> None:
        self._closed.set()
