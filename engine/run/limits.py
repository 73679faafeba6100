"""Concurrency and request/token rates that adapt to the endpoint, on an injectable clock.

The runner asks a :class:`Limiter` before every call, tells it how the call went and releases
it afterwards. The limiter is the only place that knows about budgets, and its interface
(``acquire``, ``settle``, ``on_success``, ``on_rate_limited``, ``pause``, ``release``) is small
on purpose: a shared implementation backed by an external store (Redis, a Ray actor) can replace
this in-process one for several engine processes that share one API key.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

import anyio

from ..provider import RateLimits

# Waits shorter than this (seconds) count as none: float rounding must not leave a waiter sleeping,
# again and again, for an interval too small to move the clock.
_EPSILON = 1e-9
# Announced limits are used at this share, for what the two clocks and bucket shapes disagree on.
HEADROOM = 0.98
# A 429 cuts the request rate to this share of the rate achieved over the last WINDOW_S seconds
# (never below MIN_RATE a second)...
DECREASE = 0.9
WINDOW_S = 1.0
MIN_RATE = 1.0 / 60.0
# ... which grows back quickly (this share of the cut rate a second) to PLATEAU times the rate it
# was cut from, just under the limit it ran into, then probes past it as TCP CUBIC does: slowly
# at first, faster the longer no 429 comes (PROBE_GAIN more after PROBE_SCALE_S seconds, growing
# as the cube of the time), so a limit underestimated or raised is found again in seconds.
RECOVERY_PER_S = 0.1
PLATEAU = 0.97
PROBE_GAIN = 0.1
PROBE_SCALE_S = 10.0
# With a latency target the concurrency window starts here and grows by one per answered call
# (doubling every round trip) while answers come back in under half the target.
INITIAL_WINDOW = 16


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

    def lower_to(self, level: float, now: float) -> None:
        """Bring the level down to ``level`` if it is above it; never raise it."""
        if level < self.level(now):
            self._set(level, now)

    def set_rate(self, rate_per_second: float, capacity: float, now: float) -> None:
        """Refill at ``rate_per_second`` from ``now`` on, up to ``capacity``; what is there stays."""
        level = self.level(now)
        self.rate = rate_per_second
        self.capacity = capacity
        self._set(min(level, capacity), now)

    def _set(self, level: float, now: float) -> None:
        self._level = level
        self._updated = max(self._updated, now)


class Limiter:
    """Concurrency slots plus request and token rates that follow what the endpoint says.

    One instance is shared by both pipeline stages. The request rate is the lowest of ``rpm``
    (the user's budget), the endpoint's announced limit times ``HEADROOM``, and after a 429 the
    AIMD rate: cut to ``DECREASE`` times the rate achieved over the last ``WINDOW_S``, then grown
    back, quickly to just under the rate that ran into the limit and then probing past it, until
    the other limits bind again. The token rate is the lower of ``tpm`` and
    the announced token limit times ``HEADROOM``. ``None`` everywhere means unlimited. The
    endpoint's ``remaining_*`` counts only ever lower a bucket, so budget that other clients of
    the key spent is not spent twice.

    Each bucket holds ``burst_seconds`` worth of its rate (at least 1) and starts full: keep it
    below the server's own burst, so that pacing at its limit leaves it slack for jitter.
    Waiters are served first come, first served: one of them at a time sleeps for budget.

    Concurrency is a window of at most ``concurrency`` calls. With a ``latency_target_s`` it
    adapts: a server that queues what it cannot serve answers later the more calls are in flight,
    and past its client's timeout every call in its queue is a wasted retry. A call answered (or
    timed out) slower than the target cuts the window to what would have met it (the calls in
    flight times target over latency: the server's rate times the target); answers in under half
    the target grow it back by one each, up to ``concurrency``. It starts at ``INITIAL_WINDOW``
    and grows the same way, so a one-slot server is never sent a first wave it cannot answer in
    time.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Clock | None = None,
        burst_seconds: float = 0.25,
        latency_target_s: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if rpm is not None and rpm <= 0:
            raise ValueError(f"rpm must be > 0 or None, got {rpm}")
        if tpm is not None and tpm <= 0:
            raise ValueError(f"tpm must be > 0 or None, got {tpm}")
        if burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be > 0, got {burst_seconds}")
        if latency_target_s is not None and latency_target_s <= 0:
            raise ValueError(f"latency_target_s must be > 0 or None, got {latency_target_s}")
        self._clock: Clock = clock if clock is not None else AnyioClock()
        self._max_window = concurrency
        self._latency_target = latency_target_s
        self._window = float(concurrency if latency_target_s is None else min(concurrency, INITIAL_WINDOW))
        self._slots_taken = 0
        self._slot_waiters: deque[anyio.Event] = deque()
        self.narrowed = False  # a slow answer cut the window, and it has not grown back yet
        self._budget_lock = anyio.Lock()
        self._burst_seconds = burst_seconds
        self._rpm, self._tpm = rpm, tpm
        self._announced_rpm: float | None = None
        self._announced_tpm: float | None = None
        self._cut_rate: float | None = None  # requests/s set by the last 429; None: no cut in force
        self._cut_from = 0.0  # the rate that ran into the limit
        self._cut_at = float("-inf")
        now = self._clock.now()
        self._window_start = now
        self._window_count = 0
        self._previous_rate = 0.0
        self._requests = self._resize(None, self._request_rate(now), now)
        self._tokens = self._resize(None, self._token_rate(), now)
        self._paused_until = float("-inf")
        self._in_flight = 0
        self._tokens_in_flight = 0

    @property
    def in_flight(self) -> int:
        """Calls acquired and not yet released."""
        return self._in_flight

    @property
    def concurrency(self) -> int:
        """The most calls the window may ever hold."""
        return self._max_window

    @property
    def window(self) -> int:
        """How many calls may be in flight now (``concurrency`` unless adapting to latency)."""
        return max(1, math.floor(self._window))

    @property
    def rates(self) -> tuple[float | None, float | None]:
        """The request and token rates in force now, per minute; ``None``: unlimited."""
        per_second = (bucket.rate if bucket is not None else None for bucket in (self._requests, self._tokens))
        requests, tokens = (None if rate is None else rate * 60.0 for rate in per_second)
        return requests, tokens

    async def acquire(self, tokens: int) -> float:
        """Wait for a concurrency slot, then for one request and ``tokens`` tokens of budget.

        Returns the clock time the call was let through, for :meth:`on_success` or
        :meth:`on_rate_limited`. Cancelled while waiting, it leaves nothing behind: the slot is
        freed and no budget is taken. Every successful call must be paired with :meth:`release`.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        await self._take_slot()
        try:
            now = self._clock.now()
            if self._budget_lock.locked() or self._delay(tokens, now) > _EPSILON:
                now = await self._wait_for_budget(tokens)
        except BaseException:
            self._give_slot()
            raise
        if self._requests is not None:
            self._requests.take(1, now)
        if self._tokens is not None:
            self._tokens.take(tokens, now)
        self._in_flight += 1
        self._tokens_in_flight += tokens
        return now

    async def _wait_for_budget(self, tokens: int) -> float:
        """Wait, first come first served, until one request and ``tokens`` tokens are within
        budget; returns the clock time they are. (A call that finds the budget free and no one
        waiting for it takes it without waiting its turn.)"""
        async with self._budget_lock:
            now = self._clock.now()
            while (delay := self._delay(tokens, now)) > _EPSILON:
                await self._clock.sleep(delay)
                now = self._clock.now()
        return now  # taken before another call runs: nothing awaits in between

    def _delay(self, tokens: int, now: float) -> float:
        delay = self._paused_until - now
        if self._requests is not None:
            delay = max(delay, self._requests.wait_time(1, now))
        if self._tokens is not None:
            delay = max(delay, self._tokens.wait_time(tokens, now))
        return delay

    def release(self) -> None:
        """Free the concurrency slot taken by :meth:`acquire`; budget already spent stays spent."""
        if self._in_flight == 0:
            raise RuntimeError("release() without a matching acquire()")
        self._in_flight -= 1
        if self._in_flight == 0:
            self._tokens_in_flight = 0
        self._give_slot()

    async def _take_slot(self) -> None:
        """Wait for a place in the window, first come first served."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._slots_taken < self.window and not self._slot_waiters:
            self._slots_taken += 1
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return
        turn = anyio.Event()
        self._slot_waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # handed a slot just as the wait was cancelled: hand it on
                self._give_slot()
            else:
                self._slot_waiters.remove(turn)
            raise

    def _give_slot(self) -> None:
        self._slots_taken -= 1
        self._hand_out_slots()

    def _hand_out_slots(self) -> None:
        while self._slot_waiters and self._slots_taken < self.window:
            self._slots_taken += 1
            self._slot_waiters.popleft().set()

    def on_latency(self, latency_s: float) -> None:
        """Adapt the window to how long a call took to be answered (or to time out); before release."""
        target = self._latency_target
        if target is None:
            return
        if latency_s > target:
            fit = self._in_flight * target / latency_s
            if fit < self._window:
                self._window = max(1.0, fit)
                self.narrowed = True
        elif latency_s < target / 2 and self._slots_taken >= self.window - 1 and self._window < self._max_window:
            self._window = min(float(self._max_window), self._window + 1.0)
            self.narrowed = self.narrowed and self._window < self._max_window
            self._hand_out_slots()

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token budget once a call's real usage is known (0 when it failed).

        Tokens charged but not used are given back; usage beyond the estimate is drained.
        """
        if estimated < 0 or actual < 0:
            raise ValueError(f"estimated and actual must be >= 0, got {estimated} and {actual}")
        self._tokens_in_flight = max(0, self._tokens_in_flight - estimated)
        if self._tokens is None:
            return
        now = self._clock.now()
        if actual < estimated:
            self._tokens.give_back(estimated - actual, now)
        elif actual > estimated:
            self._tokens.drain(actual - estimated, now)

    def on_success(self, sent_at: float, limits: RateLimits | None = None) -> None:
        """Count an answered call and learn from its ``limits``; after settle, before release.

        ``sent_at`` is what :meth:`acquire` returned for the call.
        """
        now = self._clock.now()
        span = now - self._window_start
        if span >= WINDOW_S:
            self._previous_rate = self._window_count / span
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        if limits is not None:
            self._observe(limits, sent_at, now)
        if self._cut_rate is not None:
            self._recover(now)

    def on_rate_limited(self, sent_at: float, limits: RateLimits | None = None) -> None:
        """Cut the request rate after a 429 and learn from its ``limits``; before release.

        Only a call sent after the previous cut cuts again: the calls sent before it went out at
        the old rate, and one cut answers them all. A 429 that announces a new request limit
        needs no cut: that limit is the answer. Before any call has succeeded there is no rate
        to cut from; ``pause`` and the retry backoff pace the calls until there is.
        """
        now = self._clock.now()
        if limits is not None and self._observe(limits, sent_at, now):
            return
        if sent_at <= self._cut_at:
            return
        span = now - self._window_start
        achieved = (self._window_count + self._previous_rate * max(0.0, WINDOW_S - span)) / max(WINDOW_S, span)
        rate = self._request_rate(now)
        if achieved > 0.0:
            rate = achieved if rate is None else min(rate, achieved)
        if rate is None:
            return
        self._cut_rate = max(MIN_RATE, DECREASE * rate)
        self._cut_from = rate
        self._cut_at = now
        self._requests = self._resize(self._requests, self._request_rate(now), now)
        if self._requests is not None:
            self._requests.lower_to(0.0, now)  # the server has no burst left to give: pace from now on

    def pause(self, seconds: float) -> None:
        """Start no acquisition before ``seconds`` from now (a 429's ``Retry-After``).

        Overlapping pauses keep the latest deadline; calls already acquired are not affected.
        """
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self._paused_until = max(self._paused_until, self._clock.now() + seconds)

    # -- rates -------------------------------------------------------------------------------

    def _ceiling(self) -> float | None:
        """Requests per second that the budget and the announced limit allow; None: no limit."""
        rates = [rate / 60.0 for rate in (self._rpm, _headroom(self._announced_rpm)) if rate is not None]
        return min(rates) if rates else None

    def _request_rate(self, now: float) -> float | None:
        ceiling = self._ceiling()
        if self._cut_rate is None:
            return ceiling
        grown = regrown(self._cut_rate, self._cut_from, now - self._cut_at)
        return grown if ceiling is None else min(grown, ceiling)

    def _token_rate(self) -> float | None:
        rates = [rate / 60.0 for rate in (self._tpm, _headroom(self._announced_tpm)) if rate is not None]
        return min(rates) if rates else None

    def _recover(self, now: float) -> None:
        """Grow the cut rate; once it reaches the other limits the cut is over."""
        assert self._cut_rate is not None
        ceiling = self._ceiling()
        rate = self._request_rate(now)
        if ceiling is not None and rate == ceiling:
            self._cut_rate = None
        self._requests = self._resize(self._requests, rate, now)

    def _resize(self, bucket: TokenBucket | None, rate: float | None, now: float) -> TokenBucket | None:
        if rate is None:
            return None
        capacity = max(rate * self._burst_seconds, 1.0)
        if bucket is None:
            return TokenBucket(rate, capacity, now)
        bucket.set_rate(rate, capacity, now)
        return bucket

    def _observe(self, limits: RateLimits, sent_at: float, now: float) -> bool:
        """Adopt announced limits that changed; lower the buckets to the server's remaining.

        Returns whether the request limit changed.
        """
        new_limit = _usable(limits.limit_requests) and limits.limit_requests != self._announced_rpm
        if new_limit:
            self._announced_rpm = limits.limit_requests
            self._requests = self._resize(self._requests, self._request_rate(now), now)
        if _usable(limits.limit_tokens) and limits.limit_tokens != self._announced_tpm:
            self._announced_tpm = limits.limit_tokens
            self._tokens = self._resize(self._tokens, self._token_rate(), now)
        if limits.remaining_requests is not None and self._requests is not None:
            others = max(0, self._in_flight - 1)
            _lower(self._requests, limits.remaining_requests, self._announced_rpm, others, now - sent_at, now)
        if limits.remaining_tokens is not None and self._tokens is not None:
            others = self._tokens_in_flight
            _lower(self._tokens, limits.remaining_tokens, self._announced_tpm, others, now - sent_at, now)
        return new_limit


def regrown(cut: float, cut_from: float, elapsed: float) -> float:
    """The request rate ``elapsed`` seconds after a 429 cut ``cut_from`` down to ``cut``."""
    plateau = max(cut, PLATEAU * cut_from)
    to_plateau = (plateau / cut - 1.0) / RECOVERY_PER_S
    if elapsed <= to_plateau:
        return cut * (1.0 + RECOVERY_PER_S * elapsed)
    return plateau * (1.0 + PROBE_GAIN * ((elapsed - to_plateau) / PROBE_SCALE_S) ** 3)


def _usable(limit: float | None) -> bool:
    return limit is not None and 0.0 < limit < math.inf


def _headroom(announced_per_minute: float | None) -> float | None:
    return None if announced_per_minute is None else announced_per_minute * HEADROOM


def _lower(bucket: TokenBucket, remaining: float, per_minute: float | None, others: float, age: float, now: float) -> None:
    """Lower ``bucket`` to what the server has left now, at most.

    That is ``remaining`` when it admitted the call (no earlier than ``age`` seconds ago), plus
    its refill since, less what the calls still in flight will take. A call admitted before this
    one and still in flight is subtracted twice: the error is on the safe side.
    """
    refill = (bucket.rate if per_minute is None else per_minute / 60.0) * age
    bucket.lower_to(remaining + refill - others, now)
