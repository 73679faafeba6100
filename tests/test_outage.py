"""An endpoint that answers nothing, or answers ever later: calls wait it out instead of failing rows,
and the concurrency window shrinks before a queueing server times them out."""

from __future__ import annotations

from pathlib import Path

import anyio
import polars as pl
import pytest

from adapters.server.backends.sim import SimSettings
from adapters.server.embedded import EmbeddedServer
from benchmarks.clocks import InstantClock
from benchmarks.proxy import FaultProxy
from engine import Evaluation
from engine.mock_provider import MockProvider
from engine.progress import plain_line, snapshot
from engine.run.lanes import Endpoint
from engine.run.limits import INITIAL_WINDOW, Limiter
from engine.run.outage import EndpointDown, Outage
from tests.support import CountingBackend

from .conftest import imdb_config
from .test_limits import FakeClock, finishes

CHAT = "/v1/chat/completions"


# -- the outage, alone -----------------------------------------------------------------------------


async def test_five_unreachable_calls_in_a_row_take_the_endpoint_down() -> None:
    outage = Outage(FakeClock(), timeout_s=60.0)
    for _ in range(4):
        outage.unreachable(probe=False)
    outage.answered()  # an answer breaks the streak
    for _ in range(4):
        outage.unreachable(probe=False)
    assert not outage.is_down and await outage.admit() is False
    outage.unreachable(probe=False)
    assert outage.is_down and outage.down_for == 0.0


async def test_while_down_one_probe_goes_at_a_time_and_an_answer_lets_everyone_go() -> None:
    clock = FakeClock()
    outage = Outage(clock, timeout_s=60.0, threshold=1, probe_initial_s=1.0)
    outage.unreachable(probe=False)
    assert await outage.admit() is True  # the probe, after a 1 s backoff
    assert clock.now() == 1.0
    assert not await finishes(outage.admit)  # everyone else waits for it
    outage.unreachable(probe=True)  # the probe found nothing either
    assert await outage.admit() is True and clock.now() == 3.0  # the next one, 2 s later
    outage.answered()
    assert not outage.is_down and await finishes(outage.admit)


async def test_an_outage_longer_than_its_timeout_fails_every_call_at_once() -> None:
    clock = FakeClock()
    outage = Outage(clock, timeout_s=10.0, threshold=1, probe_initial_s=4.0)
    outage.unreachable(probe=False)
    assert await outage.admit() is True  # a probe at 4 s
    outage.unreachable(probe=True)
    # The next probe's turn comes at 12 s, past the 10 s: given up, for this call and every later one.
    with pytest.raises(EndpointDown, match=r"answered nothing for 12 s \(endpoint.outage_timeout_s = 10\)") as caught:
        await outage.admit()
    assert caught.value.reason == "endpoint_down" and caught.value.kind == "transient"
    with pytest.raises(EndpointDown):
        await outage.admit()


# -- the concurrency window, alone ---------------------------------------------------------------


async def test_the_window_starts_small_and_grows_with_fast_answers() -> None:
    limiter = Limiter(concurrency=64, clock=FakeClock(), latency_target_s=1.0)
    assert limiter.window == INITIAL_WINDOW
    for _ in range(INITIAL_WINDOW):
        await limiter.acquire(0)
    assert not await finishes(lambda: limiter.acquire(0))  # the window is full
    limiter.on_latency(0.1)  # under half the target, with the window in use: one more
    assert limiter.window == INITIAL_WINDOW + 1
    assert await finishes(lambda: limiter.acquire(0))


async def test_a_slow_answer_cuts_the_window_to_what_would_have_met_the_target() -> None:
    limiter = Limiter(concurrency=64, clock=FakeClock(), latency_target_s=1.0)
    for _ in range(8):
        await limiter.acquire(0)
    limiter.on_latency(4.0)  # 8 in flight answered in 4 s: 2 a second; 1 s of queue is 2 calls
    assert limiter.window == 2
    for _ in range(8):
        limiter.release()
    limiter.on_latency(0.9)  # between half the target and the target: no change
    assert limiter.window == 2


async def test_without_a_target_the_window_is_the_concurrency() -> None:
    limiter = Limiter(concurrency=64, clock=FakeClock())
    limiter.on_latency(1000.0)
    assert limiter.window == 64


# -- end to end, over real HTTP ------------------------------------------------------------------


async def test_rows_wait_out_an_outage_longer_than_their_retries(tmp_path: Path, api_key: str) -> None:
    """The endpoint goes away mid-run for longer than max_retries could survive: no row fails."""
    backend = CountingBackend(SimSettings(seed=5))
    server = EmbeddedServer(backend)
    url = server.start()
    proxy = FaultProxy(url)
    proxied = proxy.start()
    try:
        config = imdb_config(proxied, limit=60, **{"endpoint.max_retries": 1, "endpoint.concurrency": 8})

        async def outage() -> None:
            await proxy.await_for(lambda p: p.count("POST", CHAT) >= 40)
            proxy.blackout(refuse=False)
            await proxy.await_for(lambda p: p.refused >= 40)  # far more than one retry per row
            proxy.lift()

        async with anyio.create_task_group() as group:
            group.start_soon(outage)
            async with Evaluation(config, run_dir=tmp_path / "run", clock=InstantClock()) as evaluation:
                pass
    finally:
        proxy.stop()
        server.stop()
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert results["status"].to_list() == ["judged"] * 60, results["error"].drop_nulls().to_list()
    assert evaluation.endpoints[0].outage.outages >= 1


async def test_a_one_slot_server_is_not_stormed_with_timeouts(tmp_path: Path, api_key: str) -> None:
    """64 calls in flight to a server that answers one at a time, 50 ms each, would wait up to
    3.2 s: past the 2.5 s timeout, so a storm of timeouts and retries. The window keeps them at
    about a quarter of the timeout (some slack is left for a loaded machine's stalls)."""
    backend = CountingBackend(SimSettings(seed=6, slots=1, latency_ms=50))
    with EmbeddedServer(backend) as url:
        config = imdb_config(url, limit=80, **{"endpoint.concurrency": 64, "endpoint.timeout_s": 2.5})
        async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
            pass
    metrics = evaluation.metrics
    assert metrics is not None and metrics["n_judged"] == 80
    assert metrics["retries"] <= 3, metrics["retries"]


async def test_the_progress_line_shows_an_outage_and_a_narrowed_window() -> None:
    clock = FakeClock()
    config = imdb_config("http://127.0.0.1:9/v1")
    evaluation = Evaluation(config)  # never entered: only its counters are read
    limiter = Limiter(concurrency=64, clock=clock, latency_target_s=1.0)
    outage = Outage(clock, timeout_s=60.0, threshold=1)
    evaluation.endpoints = [Endpoint(config.endpoint, MockProvider(lambda request: "yes"), limiter, outage, ("predict", "judge"))]
    assert "window" not in plain_line(snapshot(evaluation))  # starting small is not news
    for _ in range(8):
        await limiter.acquire(0)
    limiter.on_latency(4.0)
    assert "window 2/64 (slow answers)" in plain_line(snapshot(evaluation))
    outage.unreachable(probe=False)
    clock.time += 12
    line = plain_line(snapshot(evaluation))
    assert "endpoint down for 12 s: calls wait for it" in line and snapshot(evaluation)["endpoints"][0]["down_s"] == 12.0
