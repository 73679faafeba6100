"""Concurrency and RPM/TPM budgets, on an injectable clock.

The runner asks a :class:`Limiter` before every call and releases it afterwards. The limiter is
the only place that knows about budgets, and its interface (``acquire``, ``release``, ``settle``,
``pause``) is small on purpose: a shared implementation backed by an external store (Redis, a Ray
actor) can replace this in-process one for several engine processes that share one API key.
"""

from __future__ import annotations

from typing import Protocol

import anyio

# Waits shorter than this (seconds) count as none: float rounding must not leave a waiter sleeping,
# again and again, for an interval too small to move the clock.
_EPSILON = 1e-9


class Clock(Protocol):
    """Time source of the limiter; tests inject one whose ``sleep`` returns at once."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class AnyioClock:
    """The event loop's clock (``anyio.current_time``), which is monotonic."""

    def now(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class TokenBucket:
    """A token bucket refilled at ``rate_per_second`` up to ``capacity``; starts full.

    Pure bookkeeping: every method takes the current time and nothing sleeps. The level may go
    negative (a request larger than the capacity, or a usage correction), and is then paid back
    by refilling before anything else can be taken.
    """

    def __init__(self, rate_per_second: float, capacity: float, now: float) -> None:
        if rate_per_second <= 0:
            raise ValueError(f"rate_per_second must be > 0, got {rate_per_second}")
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.rate = rate_per_second
        self.capacity = capacity
        self._level = capacity
        self._updated = now

    def level(self, now: float) -> float:
        """The number of tokens available at ``now`` (negative while a debt is paid back)."""
        elapsed = max(0.0, now - self._updated)
        return min(self.capacity, self._level + elapsed * self.rate)

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` can be taken; 0 when it can be taken now.

        An amount above the capacity only waits for a full bucket, then drives the level negative.
        """
        missing = min(amount, self.capacity) - self.level(now)
        return max(0.0, missing / self.rate)

    def take(self, amount: float, now: float) -> None:
        """Remove ``amount`` without checking that it is there (ask ``wait_time`` first)."""
        self._set(self.level(now) - amount, now)

    def give_back(self, amount: float, now: float) -> None:
        """Return ``amount`` that was charged but not used; the level never exceeds the capacity."""
        self._set(min(self.capacity, self.level(now) + amount), now)

    def drain(self, amount: float, now: float) -> None:
        """Charge ``amount`` used beyond what was taken; the level may go negative."""
        self._set(self.level(now) - amount, now)

    def _set(self, level: float, now: float) -> None:
        self._level = level
        self._updated = max(self._updated, now)


class Limiter:
    """Concurrency slots plus requests-per-minute and tokens-per-minute budgets.

    One instance is shared by both pipeline stages. Each bucket holds ``burst_seconds`` worth of
    its rate (at least 1) and starts full; ``rpm``/``tpm`` of ``None`` mean unlimited. Waiters are
    served first come, first served: one of them at a time sleeps for budget.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Clock | None = None,
        burst_seconds: float = 1.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if rpm is not None and rpm <= 0:
            raise ValueError(f"rpm must be > 0 or None, got {rpm}")
        if tpm is not None and tpm <= 0:
            raise ValueError(f"tpm must be > 0 or None, got {tpm}")
        if burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be > 0, got {burst_seconds}")
        self._clock: Clock = clock if clock is not None else AnyioClock()
        self._slots = anyio.Semaphore(concurrency)
        self._budget_lock = anyio.Lock()
        self._requests = self._bucket(rpm, burst_seconds)
        self._tokens = self._bucket(tpm, burst_seconds)
        self._paused_until = float("-inf")
        self._in_flight = 0

    def _bucket(self, per_minute: float | None, burst_seconds: float) -> TokenBucket | None:
        if per_minute is None:
            return None
        rate = per_minute / 60.0
        return TokenBucket(rate, max(rate * burst_seconds, 1.0), self._clock.now())

    @property
    def in_flight(self) -> int:
        """Calls acquired and not yet released."""
        return self._in_flight

    async def acquire(self, tokens: int) -> None:
        """Wait for a concurrency slot, then for one request and ``tokens`` tokens of budget.

        Cancelled while waiting, it leaves nothing behind: the slot is freed and no budget is
        taken. Every successful call must be paired with :meth:`release`.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        await self._slots.acquire()
        try:
            async with self._budget_lock:
                while (delay := self._delay(tokens)) > _EPSILON:
                    await self._clock.sleep(delay)
                now = self._clock.now()
                if self._requests is not None:
                    self._requests.take(1, now)
                if self._tokens is not None:
                    self._tokens.take(tokens, now)
        except BaseException:
            self._slots.release()
            raise
        self._in_flight += 1

    def _delay(self, tokens: int) -> float:
        now = self._clock.now()
        delays = [self._paused_until - now]
        if self._requests is not None:
            delays.append(self._requests.wait_time(1, now))
        if self._tokens is not None:
            delays.append(self._tokens.wait_time(tokens, now))
        return max(delays)

    def release(self) -> None:
        """Free the concurrency slot taken by :meth:`acquire`; budget already spent stays spent."""
        if self._in_flight == 0:
            raise RuntimeError("release() without a matching acquire()")
        self._in_flight -= 1
        self._slots.release()

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token budget once a call's real usage is known.

        Tokens charged but not used are given back; usage beyond the estimate is drained.
        """
        if estimated < 0 or actual < 0:
            raise ValueError(f"estimated and actual must be >= 0, got {estimated} and {actual}")
        if self._tokens is None:
            return
        now = self._clock.now()
        if actual < estimated:
            self._tokens.give_back(estimated - actual, now)
        elif actual > estimated:
            self._tokens.drain(actual - estimated, now)

    def pause(self, seconds: float) -> None:
        """Start no acquisition before ``seconds`` from now (a 429's ``Retry-After``).

        Overlapping pauses keep the latest deadline; calls already acquired are not affected.
        """
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self._paused_until = max(self._paused_until, self._clock.now() + seconds)
