"""Token buckets and the limiter, on a fake clock: nothing here really sleeps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from engine.provider import RateLimits
from engine.run.limits import Limiter, TokenBucket, regrown


class FakeClock:
    """``sleep`` moves ``now`` forward at once; while ``blocked``, it never returns instead."""

    def __init__(self, start: float = 0.0) -> None:
        self.time = start
        self.blocked = False

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        if self.blocked:
            await anyio.sleep_forever()
        self.time += seconds
        await anyio.lowlevel.checkpoint()


async def finishes(call: Callable[[], Awaitable[object]], rounds: int = 100) -> bool:
    """Run ``call`` beside this task for a few scheduler rounds: did it finish?

    A call still waiting after that (for a slot, or on a blocked clock) is cancelled.
    """
    done = anyio.Event()

    async def run() -> None:
        await call()
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        for _ in range(rounds):
            if done.is_set():
                break
            await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    return done.is_set()


# --- TokenBucket ------------------------------------------------------------------------------


def test_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_second=2.0, capacity=10.0, now=0.0)
    assert bucket.wait_time(10, now=0.0) == 0.0
    bucket.take(10, now=0.0)
    # empty; 3 tokens at 2/s -> 1.5 s
    assert bucket.wait_time(3, now=0.0) == pytest.approx(1.5)
    # 1 s later 2 tokens are back; 1 more needs 0.5 s
    assert bucket.level(now=1.0) == pytest.approx(2.0)
    assert bucket.wait_time(3, now=1.0) == pytest.approx(0.5)
    # refilling stops at the capacity
    assert bucket.level(now=100.0) == 10.0


def test_bucket_amount_above_capacity_waits_for_full_then_goes_negative() -> None:
    bucket = TokenBucket(rate_per_second=10.0, capacity=10.0, now=0.0)
    bucket.take(4, now=0.0)  # level 6
    # 25 > capacity: wait only for a full bucket, (10 - 6) / 10 = 0.4 s
    assert bucket.wait_time(25, now=0.0) == pytest.approx(0.4)
    bucket.take(25, now=0.4)  # 10 - 25 = -15
    assert bucket.level(now=0.4) == pytest.approx(-15.0)
    # 5 more need the level back at 5: 20 tokens at 10/s = 2 s
    assert bucket.wait_time(5, now=0.4) == pytest.approx(2.0)


def test_bucket_give_back_is_capped_and_drain_may_go_negative() -> None:
    bucket = TokenBucket(rate_per_second=1.0, capacity=5.0, now=0.0)
    bucket.take(3, now=0.0)  # 2
    bucket.give_back(10, now=0.0)  # min(5, 12) = 5
    assert bucket.level(now=0.0) == 5.0
    bucket.drain(8, now=0.0)  # 5 - 8 = -3
    assert bucket.level(now=0.0) == -3.0
    assert bucket.wait_time(1, now=0.0) == pytest.approx(4.0)  # from -3 to 1 at 1/s


def test_bucket_ignores_a_clock_that_goes_back() -> None:
    bucket = TokenBucket(rate_per_second=1.0, capacity=5.0, now=10.0)
    bucket.take(5, now=10.0)
    bucket.take(0, now=9.0)  # an older timestamp refills nothing and keeps the newer one
    assert bucket.level(now=11.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("rate", "capacity", "name"), [(0, 1, "rate_per_second"), (1, 0, "capacity")]
)
def test_bucket_validates(rate: float, capacity: float, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TokenBucket(rate, capacity, now=0.0)


# --- Limiter ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 1, "rpm": 0}, "rpm"),
        ({"concurrency": 1, "tpm": -5}, "tpm"),
        ({"concurrency": 1, "burst_seconds": 0}, "burst_seconds"),
    ],
)
def test_limiter_validates_arguments(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Limiter(clock=FakeClock(), **kwargs)  # type: ignore[arg-type]


async def test_rpm_paces_requests_after_the_burst() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=100, rpm=600, clock=clock, burst_seconds=1)
    started: list[float] = []

    async def call() -> None:
        await limiter.acquire(1)
        started.append(clock.now())
        limiter.release()

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(call)

    # 600 rpm = 10/s, capacity 10 * 1 s: 10 at once, then one every 0.1 s.
    # 100 requests take 100 / 10 - 1 s of burst = 9 s.
    assert clock.now() == pytest.approx(9.0)
    assert started[:10] == [0.0] * 10
    assert started[10:] == pytest.approx([0.1 * k for k in range(1, 91)])


async def test_the_default_burst_is_a_quarter_second() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=100, rpm=6000, clock=clock)  # 100/s, capacity 25
    for _ in range(45):
        await limiter.acquire(1)
        limiter.release()
    # 25 at once, then one every 0.01 s: a server with a 1 s burst keeps 0.75 s of slack
    assert clock.now() == pytest.approx(0.2)


async def test_burst_seconds_sets_the_bucket_size() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=1, rpm=60, clock=clock, burst_seconds=5)
    for _ in range(8):
        await limiter.acquire(1)
        limiter.release()
    # 1/s with a burst of 5: the 8th request waits (8 - 5) s
    assert clock.now() == pytest.approx(3.0)


async def test_tpm_settle_gives_unused_tokens_back() -> None:
    async def elapsed(settle: bool) -> float:
        clock = FakeClock()
        limiter = Limiter(concurrency=1, tpm=6000, clock=clock, burst_seconds=1)  # 100 tokens/s, capacity 100
        for _ in range(5):
            await limiter.acquire(100)
            limiter.release()
            if settle:
                limiter.settle(estimated=100, actual=10)
        return clock.now()

    # Without settling each call uses a full second of budget: (5 - 1) * 1 s.
    assert await elapsed(settle=False) == pytest.approx(4.0)
    # Settling returns 90 of every 100 tokens: each later call waits 10 / 100 = 0.1 s.
    assert await elapsed(settle=True) == pytest.approx(0.4)


async def test_tpm_settle_drains_usage_above_the_estimate() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=1, tpm=6000, clock=clock, burst_seconds=1)  # 100 tokens/s, capacity 100
    await limiter.acquire(50)
    limiter.release()
    limiter.settle(estimated=50, actual=250)  # 100 - 250 = -150
    await limiter.acquire(50)
    # from -150 back up to 50 at 100/s = 2 s
    assert clock.now() == pytest.approx(2.0)


async def test_concurrency_bound_is_never_exceeded() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=3, rpm=6000, tpm=60_000, clock=clock)
    running = 0
    most = 0

    async def call() -> None:
        nonlocal running, most
        await limiter.acquire(20)
        running += 1
        most = max(most, running, limiter.in_flight)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        running -= 1
        limiter.release()

    async with anyio.create_task_group() as tg:
        for _ in range(40):
            tg.start_soon(call)

    assert most == 3
    assert limiter.in_flight == 0


def test_concurrency_bound_on_trio() -> None:
    async def scenario() -> tuple[int, int]:
        limiter = Limiter(concurrency=2, clock=FakeClock())
        go = anyio.Event()
        most = 0

        async def call() -> None:
            nonlocal most
            await limiter.acquire(1)
            most = max(most, limiter.in_flight)
            await go.wait()
            limiter.release()

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()  # trio shuffles its run queue: wait, don't count on an order
            blocked = limiter.in_flight
            go.set()
        return blocked, most

    assert anyio.run(scenario, backend="trio") == (2, 2)


async def test_pause_delays_the_next_acquire_by_exactly_the_pause() -> None:
    clock = FakeClock(start=100.0)
    limiter = Limiter(concurrency=1, clock=clock)
    limiter.pause(5)
    limiter.pause(2)  # an earlier deadline does not shorten the pause
    await limiter.acquire(1)
    assert clock.now() == pytest.approx(105.0)
    limiter.release()

    limiter.pause(3)
    await limiter.acquire(1)
    assert clock.now() == pytest.approx(108.0)


async def test_pause_comes_on_top_of_spent_budget() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=1, rpm=60, clock=clock)  # 1/s, capacity 1
    await limiter.acquire(1)
    limiter.release()
    limiter.pause(0.5)
    # the pause ends at 0.5 s, but the next request is only there at 1 s
    await limiter.acquire(1)
    assert clock.now() == pytest.approx(1.0)


async def test_cancelled_while_waiting_for_a_slot_leaks_nothing() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=1, clock=clock)
    await limiter.acquire(1)

    assert not await finishes(lambda: limiter.acquire(1))  # waits for the slot, then cancelled
    assert limiter.in_flight == 1

    limiter.release()
    assert await finishes(lambda: limiter.acquire(1))
    assert limiter.in_flight == 1


async def test_cancelled_while_waiting_for_budget_leaks_nothing() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=2, rpm=60, clock=clock)  # 1/s, capacity 1
    await limiter.acquire(1)  # takes the only request at t=0

    clock.blocked = True
    # takes the second slot, then waits for budget on a clock that never wakes it; cancelled
    assert not await finishes(lambda: limiter.acquire(1))
    assert limiter.in_flight == 1

    clock.blocked = False
    clock.time = 1.0  # exactly one request has come back
    # The cancelled waiter took neither the slot nor the request: this one needs no sleep.
    assert await finishes(lambda: limiter.acquire(1))
    assert clock.now() == 1.0
    assert limiter.in_flight == 2
    assert not await finishes(lambda: limiter.acquire(1))  # both slots are held


async def test_release_without_acquire_is_an_error() -> None:
    limiter = Limiter(concurrency=1, clock=FakeClock())
    with pytest.raises(RuntimeError, match="acquire"):
        limiter.release()


async def test_unlimited_limiter_on_the_real_clock_never_waits() -> None:
    limiter = Limiter(concurrency=2)
    limiter.pause(0)
    await limiter.acquire(1_000_000)
    limiter.settle(estimated=1_000_000, actual=5)
    assert limiter.in_flight == 1
    limiter.release()
    assert limiter.in_flight == 0


async def test_waiters_are_served_in_arrival_order() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=10, tpm=6000, clock=clock, burst_seconds=1)  # 100 tokens/s, capacity 100
    await limiter.acquire(100)  # empty at t=0
    served: list[tuple[str, float]] = []

    async def call(name: str, tokens: int) -> None:
        await limiter.acquire(tokens)
        served.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "big", 100)
        tg.start_soon(call, "small", 10)
    # the small request does not overtake: big at 100 / 100 = 1 s, small 10 / 100 s after it
    assert [name for name, _ in served] == ["big", "small"]
    assert [at for _, at in served] == pytest.approx([1.0, 1.1])


# --- Adapting to the endpoint -----------------------------------------------------------------


async def answered(limiter: Limiter, clock: FakeClock, n: int, every: float, limits: RateLimits | None = None) -> float:
    """``n`` calls, one every ``every`` seconds, each answered at once; returns the last send time."""
    sent_at = clock.now()
    for _ in range(n):
        sent_at = await limiter.acquire(10)
        limiter.settle(10, 10)
        limiter.on_success(sent_at, limits)
        limiter.release()
        clock.time += every
    return sent_at


async def test_acquire_returns_the_time_the_call_was_let_through() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=1, rpm=60, clock=clock)  # 1/s, capacity 1
    assert await limiter.acquire(1) == 0.0
    limiter.release()
    assert await limiter.acquire(1) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("rpm", "tpm", "announced", "expected"),
    [
        (None, None, RateLimits(limit_requests=6000, limit_tokens=100_000), (5880.0, 98_000.0)),
        (600, None, RateLimits(limit_requests=6000), (600.0, None)),  # the user's lower budget wins
        (6000, 200_000, RateLimits(limit_requests=600, limit_tokens=150_000), (588.0, 147_000.0)),
        (None, None, RateLimits(limit_requests=0, limit_tokens=float("inf")), (None, None)),  # unusable
    ],
)
async def test_announced_limits_set_the_rates_just_under_them(
    rpm: float | None, tpm: float | None, announced: RateLimits, expected: tuple[float | None, float | None]
) -> None:
    limiter = Limiter(concurrency=1, rpm=rpm, tpm=tpm, clock=FakeClock())
    await answered(limiter, FakeClock(), 1, 0.0, announced)
    assert limiter.rates == pytest.approx(expected)


async def test_an_announced_limit_paces_the_calls_that_follow() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=1, clock=clock)
    await answered(limiter, clock, 1, 0.0, RateLimits(limit_requests=60 / 0.98))  # 1/s once applied
    await answered(limiter, clock, 4, 0.0)
    # the new bucket starts full (1 request), then one a second
    assert clock.now() == pytest.approx(3.0)


async def test_remaining_lowers_a_bucket_and_never_raises_it() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=1, tpm=6000, clock=clock, burst_seconds=1)  # 100 tokens/s, capacity 100
    await answered(limiter, clock, 1, 0.0, RateLimits(remaining_tokens=20))  # we think 90, server 20
    await limiter.acquire(50)
    assert clock.now() == pytest.approx(0.3)  # (50 - 20) / 100
    limiter.settle(50, 50)
    limiter.on_success(0.3, RateLimits(remaining_tokens=10_000))  # a larger count changes nothing
    limiter.release()
    await limiter.acquire(50)
    assert clock.now() == pytest.approx(0.8)


async def test_remaining_counts_the_refill_since_the_call_was_sent() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=1, tpm=6000, clock=clock, burst_seconds=1)  # 100 tokens/s
    sent_at = await limiter.acquire(100)  # level 0 at t=0
    clock.time = 0.5  # a slow answer: the server had 0 left at t=0, and has refilled 50 since
    limiter.settle(100, 100)
    limiter.on_success(sent_at, RateLimits(remaining_tokens=0))
    limiter.release()
    await limiter.acquire(50)
    assert clock.now() == pytest.approx(0.5)  # no wait: the refill is not taken away


async def test_remaining_leaves_room_for_the_calls_still_in_flight() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=5, rpm=6000, clock=clock, burst_seconds=1)  # 100/s, capacity 100
    first = await limiter.acquire(1)
    for _ in range(3):
        await limiter.acquire(1)  # three more in flight, level 96
    limiter.on_success(first, RateLimits(remaining_requests=10))  # 10 - 3 still to arrive there
    limiter.release()
    for _ in range(7):
        await limiter.acquire(1)
        limiter.release()
    assert clock.now() == 0.0
    await limiter.acquire(1)
    assert clock.now() == pytest.approx(0.01)


async def test_a_429_cuts_the_rate_to_a_share_of_the_rate_achieved() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=1, clock=clock)
    last = await answered(limiter, clock, 150, 0.01)  # 100/s for 1.5 s, no limit known
    sent_at = await limiter.acquire(10)
    limiter.on_rate_limited(sent_at)
    limiter.release()
    requests, tokens = limiter.rates
    assert requests is not None and tokens is None
    assert requests == pytest.approx(0.9 * 100 * 60, rel=0.02)
    # a 429 of a call sent before the cut does not cut again; one sent after it does
    limiter.on_rate_limited(last)
    assert limiter.rates[0] == requests
    clock.time += 0.01
    later = await limiter.acquire(10)
    limiter.on_rate_limited(later)
    limiter.release()
    assert (limiter.rates[0] or 0.0) < requests


async def test_a_cut_rate_grows_back_to_the_budget_and_no_further() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=1, rpm=6000, clock=clock)  # 100/s
    await answered(limiter, clock, 150, 0.01)
    sent_at = await limiter.acquire(10)
    limiter.on_rate_limited(sent_at)  # cut to 90/s at t=1.5
    limiter.release()
    cut_at = clock.now()
    await answered(limiter, clock, 1, 0.0)
    clock.time = cut_at + 0.5
    await answered(limiter, clock, 1, 0.0)
    assert limiter.rates[0] == pytest.approx(0.9 * 6000 * (1 + 0.1 * 0.5), rel=0.02)  # quickly back...
    to_plateau = (0.97 / 0.9 - 1) / 0.1
    clock.time = cut_at + 2.0
    await answered(limiter, clock, 1, 0.0)
    assert limiter.rates[0] == pytest.approx(0.97 * 6000 * (1 + 0.1 * ((2.0 - to_plateau) / 10) ** 3), rel=0.02)  # ...slowly past
    clock.time = cut_at + 10.0  # 0.97 * (1 + 0.1 * (6.8 / 10) ** 3) = 1: back at the budget after 7.6 s
    await answered(limiter, clock, 1, 0.0)
    assert limiter.rates[0] == pytest.approx(6000)
    clock.time += 100.0
    await answered(limiter, clock, 1, 0.0)
    assert limiter.rates[0] == pytest.approx(6000)


async def test_a_429_before_any_answer_has_nothing_to_cut() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=1, clock=clock)
    sent_at = await limiter.acquire(1)
    limiter.on_rate_limited(sent_at)  # pause() and the retry backoff pace the calls instead
    assert limiter.rates == (None, None)
    # a 429 that announces the limits sets them, even before anything succeeded
    limiter.on_rate_limited(sent_at, RateLimits(limit_requests=600, remaining_requests=0))
    assert limiter.rates[0] == pytest.approx(588.0)
    limiter.release()


def test_after_a_cut_the_rate_returns_quickly_below_the_limit_then_probes_past_it() -> None:
    assert regrown(90.0, 100.0, 0.0) == 90.0
    assert regrown(90.0, 100.0, (0.97 / 0.9 - 1) / 0.1) == pytest.approx(97.0)  # under a second
    assert regrown(90.0, 100.0, 5.7778) == pytest.approx(97.0 * (1 + 0.1 * 0.5**3), rel=1e-4)  # +1.25% in 5 s
    assert regrown(90.0, 100.0, 20.7778) == pytest.approx(97.0 * (1 + 0.1 * 2**3), rel=1e-4)  # +80% in 20 s
    assert regrown(1.0, 1.0, 10.0) == pytest.approx(1.1)  # a cut floored at MIN_RATE still grows
