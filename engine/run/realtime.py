"""Realtime calls: one request through the limiter, the provider and the retry policy.

The runner owns everything between "this request must be answered" and "here is its outcome":
waiting for a concurrency slot and RPM/TPM budget, the call, correcting the token estimate with
the real ``usage``, passing on what the endpoint said about its rate limits, pausing everyone
after a 429, and backing off. It returns a ``ChatResult`` or a ``Failure`` with its reason; only
a ``FatalError`` (a rejected key, an unknown model) escapes, because it dooms every other row too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..errors import FatalError, ProviderError
from ..formats import StructuredOutput
from ..provider import ChatProvider
from ..types import ChatRequest, ChatResult, Failure, Outcome, Row, Usage
from .limits import Clock, Limiter
from .outage import EndpointDown, Outage
from .retry import RetryPolicy
from .stage import Deliver

UNREACHABLE = frozenset({"connection", "timeout"})  # failure reasons that say the endpoint may be down


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
    """Makes one call at a time per request, with the endpoint's limiter, retry policy and outage.

    Without an ``outage`` every failed attempt spends the retry allowance; with one, attempts
    that found the endpoint down do not (they wait for it instead, see ``engine.run.outage``).
    """

    def __init__(
        self,
        provider: ChatProvider,
        limiter: Limiter,
        policy: RetryPolicy,
        clock: Clock,
        outage: Outage | None = None,
        formats: StructuredOutput | None = None,
    ) -> None:
        """``formats``: constrained requests go in the format the endpoint accepts (see
        ``engine.formats``); a refused format is tried again at once in the next one."""
        self._provider = provider
        self._limiter = limiter
        self._policy = policy
        self._clock = clock
        self._outage = outage
        self._formats = formats
        self.stats = CallStats()

    async def call(self, request: ChatRequest) -> Outcome:
        started_at = time.time()
        attempts = counted = rate_limited = 0
        while True:
            try:
                probe = await self._outage.admit() if self._outage is not None else False
            except EndpointDown as down:
                return self._failure(request, down, attempts, rate_limited, started_at)
            sent_at = await self._limiter.acquire(request.estimated_tokens)
            attempts += 1
            counted += 1
            self.stats.requests += 1
            self.stats.in_flight += 1
            sent = self._formats.current(request) if self._formats is not None else request
            try:
                reply = await self._provider.complete(sent)
            except ProviderError as exc:
                error = exc
                self._limiter.settle(request.estimated_tokens, 0)
                rate_limited += error.kind == "rate_limit"
                if self._endpoint_down(error, sent_at, probe) or (
                    self._formats is not None and self._formats.refused(sent, error)
                ):
                    counted -= 1  # the endpoint was down, or refused the format: this attempt spends nothing
                    delay: float | None = 0.0
                else:
                    delay = self._after_error(error, counted, sent_at)
            else:
                usage = reply.usage
                self._limiter.settle(request.estimated_tokens, charged_tokens(request, usage))
                self._limiter.on_success(sent_at, reply.rate_limits)
                self._limiter.on_latency(self._clock.now() - sent_at)
                if self._outage is not None:
                    self._outage.answered()
                return ChatResult(
                    custom_id=request.custom_id,
                    content=reply.content,
                    model=reply.model,
                    usage=usage,
                    latency_s=reply.latency_s,
                    attempts=attempts,
                    started_at=started_at,
                    finished_at=time.time(),
                    rate_limited=rate_limited,
                    logprobs=reply.logprobs,
                )
            finally:
                self.stats.in_flight -= 1
                self._limiter.release()
            if delay is None:
                return self._failure(request, error, attempts, rate_limited, started_at)
            if delay:
                self.stats.retries += 1
                await self._clock.sleep(delay)

    def _endpoint_down(self, error: ProviderError, sent_at: float, probe: bool) -> bool:
        """Tell the outage and the limiter what a failed attempt says about the endpoint; True
        when the endpoint is down (the attempt waits for it instead of spending a retry)."""
        if isinstance(error, FatalError):
            raise error
        if error.reason == "timeout" or error.status_code is not None:  # an answer, or none in time
            self._limiter.on_latency(self._clock.now() - sent_at)
        if self._outage is None:
            return False
        if error.reason in UNREACHABLE:
            self._outage.unreachable(probe=probe)
            return self._outage.is_down
        self._outage.answered()
        return False

    def _after_error(self, error: ProviderError, attempt: int, sent_at: float) -> float | None:
        if error.kind == "rate_limit":
            self.stats.rate_limited += 1
            self._limiter.on_rate_limited(sent_at, error.rate_limits)
            if error.retry_after is not None:
                self._limiter.pause(error.retry_after)
        return self._policy.delay(error, attempt)

    @staticmethod
    def _failure(request: ChatRequest, error: ProviderError, attempts: int, rate_limited: int, started_at: float) -> Failure:
        return Failure(
            custom_id=request.custom_id,
            reason=error.reason,
            message=str(error),
            status_code=error.status_code,
            attempts=attempts,
            started_at=started_at,
            finished_at=time.time(),
            rate_limited=rate_limited,
        )


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
