"""The runner's retry loop on a scripted client and a fake clock: no HTTP, no sleeping."""

from __future__ import annotations

import random

import anyio
import pytest

from engine.errors import AuthError, ProviderError
from engine.provider import ChatReply, RateLimits
from engine.run.limits import Limiter
from engine.run.realtime import RealtimeRunner
from engine.run.retry import RetryPolicy
from engine.types import ChatRequest, ChatResult, Failure, Usage


class FakeClock:
    def __init__(self) -> None:
        self.time = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds
        await anyio.lowlevel.checkpoint()


def reply(content: str, rate_limits: RateLimits | None = None) -> ChatReply:
    return ChatReply(content, "m", Usage(10, 2), 0.01, rate_limits)


class ScriptedClient:
    """Answers each call with the next scripted reply or error."""

    def __init__(self, *script: ChatReply | ProviderError) -> None:
        self.script = list(script)
        self.calls = 0

    async def complete(self, request: ChatRequest) -> ChatReply:
        self.calls += 1
        step = self.script.pop(0)
        if isinstance(step, ProviderError):
            raise step
        return step


REQUEST = ChatRequest("predict:1", "1", "predict", {"model": "m", "messages": []}, estimated_tokens=50)


def runner(client: ScriptedClient, clock: FakeClock, **policy: int) -> RealtimeRunner:
    limiter = Limiter(concurrency=2, rpm=600, tpm=100_000, clock=clock)
    return RealtimeRunner(client, limiter, RetryPolicy(rng=random.Random(0), **policy), clock)


async def test_transient_errors_are_retried_then_succeed() -> None:
    clock = FakeClock()
    client = ScriptedClient(
        ProviderError("boom", kind="transient", reason="http_503", status_code=503),
        ProviderError("reset", kind="transient", reason="connection"),
        reply("Drama"),
    )
    run = runner(client, clock)
    outcome = await run.call(REQUEST)
    assert isinstance(outcome, ChatResult) and outcome.content == "Drama" and outcome.attempts == 3
    assert len(clock.sleeps) == 2 and run.stats.retries == 2 and run.stats.requests == 3


async def test_429_waits_what_the_server_asked_and_pauses_everyone() -> None:
    clock = FakeClock()
    client = ScriptedClient(ProviderError("slow down", kind="rate_limit", reason="http_429", retry_after=7.0), reply("x"))
    run = runner(client, clock)
    outcome = await run.call(REQUEST)
    assert isinstance(outcome, ChatResult) and run.stats.rate_limited == 1
    # The retry slept 7 s (at least the backoff, which is under 0.5 s here); the limiter's pause
    # had the same deadline, so it added no wait of its own.
    assert clock.sleeps[0] == 7.0 and clock.time == pytest.approx(7.0)


async def test_final_errors_fail_the_row_at_once_with_their_reason() -> None:
    clock = FakeClock()
    client = ScriptedClient(ProviderError("HTTP 400: bad", kind="no", reason="http_400", status_code=400))
    outcome = await runner(client, clock).call(REQUEST)
    assert isinstance(outcome, Failure)
    assert (outcome.reason, outcome.status_code, outcome.attempts, outcome.message) == ("http_400", 400, 1, "HTTP 400: bad")
    assert clock.sleeps == []


async def test_retries_run_out_into_a_recorded_failure() -> None:
    clock = FakeClock()
    errors = [ProviderError("t", kind="transient", reason="timeout") for _ in range(3)]
    outcome = await runner(ScriptedClient(*errors), clock, max_retries=2).call(REQUEST)
    assert isinstance(outcome, Failure) and outcome.reason == "timeout" and outcome.attempts == 3


async def test_a_rejected_key_escapes_to_stop_the_run() -> None:
    client = ScriptedClient(AuthError("HTTP 401", kind="no", reason="http_401", status_code=401))
    run = runner(client, FakeClock())
    with pytest.raises(AuthError):
        await run.call(REQUEST)
    assert run.stats.in_flight == 0


async def test_the_runner_passes_on_what_the_endpoint_says_about_its_limits() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=2, clock=clock)
    refused = ProviderError(
        "slow down", kind="rate_limit", reason="http_429", retry_after=0.0, rate_limits=RateLimits(limit_requests=300)
    )
    client = ScriptedClient(reply("x", rate_limits=RateLimits(limit_requests=600, limit_tokens=60_000)), refused, reply("y"))
    run = RealtimeRunner(client, limiter, RetryPolicy(rng=random.Random(0)), clock)
    await run.call(REQUEST)
    assert limiter.rates == pytest.approx((588.0, 58_800.0))
    await run.call(REQUEST)
    assert limiter.rates[0] == pytest.approx(294.0) and run.stats.rate_limited == 1
