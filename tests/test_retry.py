from __future__ import annotations

import random
from datetime import UTC, datetime

from engine.errors import ProviderError
from engine.run.retry import RetryPolicy, parse_retry_after


def error(kind: str, retry_after: float | None = None) -> ProviderError:
    return ProviderError("x", kind=kind, reason="r", retry_after=retry_after)  # type: ignore[arg-type]


def test_retry_after_ms_wins_over_seconds() -> None:
    assert parse_retry_after({"Retry-After": "3", "retry-after-ms": "1500"}) == 1.5


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    now = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert parse_retry_after({"Retry-After": "Thu, 01 Jan 2026 00:00:07 GMT"}, now=now) == 7.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


def test_no_retry_for_final_errors() -> None:
    assert RetryPolicy().delay(error("no"), 1) is None


def test_transient_backoff_grows_with_jitter_and_stops_at_the_limit() -> None:
    policy = RetryPolicy(max_retries=3, base_delay=1.0, max_delay=60.0, rng=random.Random(7))
    delays = [policy.delay(error("transient"), attempt) for attempt in (1, 2, 3, 4)]
    assert delays[3] is None
    for attempt, delay in zip((1, 2, 3), delays, strict=False):
        ceiling = 2 ** (attempt - 1)
        assert delay is not None and ceiling / 2 <= delay <= ceiling


def test_rate_limit_waits_at_least_retry_after_and_at_least_the_backoff() -> None:
    policy = RetryPolicy(base_delay=0.5, rng=random.Random(1))
    assert policy.delay(error("rate_limit", retry_after=4.0), 1) == 4.0
    delay = policy.delay(error("rate_limit", retry_after=0.01), 4)  # backoff ceiling 4 s
    assert delay is not None and 2.0 <= delay <= 4.0


def test_rate_limits_have_their_own_allowance() -> None:
    policy = RetryPolicy(max_retries=2, max_rate_limit_retries=5)
    assert policy.delay(error("transient"), 3) is None
    assert policy.delay(error("rate_limit", retry_after=1.0), 5) is not None
    assert policy.delay(error("rate_limit", retry_after=1.0), 6) is None


def test_rate_limit_without_retry_after_backs_off_like_transient() -> None:
    policy = RetryPolicy(base_delay=1.0, rng=random.Random(1))
    delay = policy.delay(error("rate_limit"), 2)
    assert delay is not None and 1.0 <= delay <= 2.0
