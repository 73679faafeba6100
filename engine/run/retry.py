"""Retry decisions and backoff.

A ``ProviderError`` carries its ``kind``: ``no`` is final at once; ``transient`` (5xx,
timeouts, resets, unreadable bodies) backs off exponentially with jitter, ``max_retries`` times;
``rate_limit`` waits at least what the server asked (``retry-after-ms`` / ``Retry-After``) and at
least the jittered backoff, so that many callers refused together come back spread out instead of
in a herd. A 429 is the server pacing us, not a fault of the request: it has its own, larger
allowance (``max_rate_limit_retries``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from ..errors import ProviderError

# What makes a failure final: an HTTP status the same request would get again, or one of these
# reasons (a request the endpoint refused, a model it lacks, a batch file it rejected). Every other
# failure (a connection or timeout, a 5xx or 429, an unreadable reply, an expired or cancelled
# batch line, an outage, a code the provider has not documented) is transient: retried within
# the run while its allowance lasts, and again by ``--resume``; ``--retry-failed`` retries any.
_TRANSIENT_STATUS = frozenset({408, 409, 429})
_FINAL_REASONS = frozenset({
    "rejected_request", "invalid_request", "invalid_request_error", "model_not_found", "batch_failed",
})
_HTTP_REASON = re.compile(r"http_(\d{3})")


def is_transient(reason: str, status_code: int | None = None) -> bool:
    """Whether a failure (its ``reason`` code and HTTP status) may succeed when tried again;
    ``http_NNN`` reasons carry their status when ``status_code`` is not known."""
    if reason in _FINAL_REASONS:
        return False
    if status_code is None and (match := _HTTP_REASON.fullmatch(reason)):
        status_code = int(match.group(1))
    if status_code is not None:
        return status_code >= 500 or status_code in _TRANSIENT_STATUS
    return True


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(slots=True)
class RetryPolicy:
    """How many times and how long to wait. ``rng`` is injectable for deterministic tests."""

    max_retries: int = 6
    max_rate_limit_retries: int = 30
    base_delay: float = 0.5
    max_delay: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, error: ProviderError, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up.

        ``attempt`` counts the attempts made so far (1 after the first call failed).
        """
        limit = self.max_rate_limit_retries if error.kind == "rate_limit" else self.max_retries
        if error.kind == "no" or attempt > limit:
            return None
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(attempt - 1, 30))
        backoff = self.rng.uniform(0.5 * ceiling, ceiling)
        if error.kind == "rate_limit" and error.retry_after is not None:
            return max(min(self.max_delay, error.retry_after), backoff)
        return backoff
