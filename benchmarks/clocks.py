"""Clocks for the engine's ``clock=`` (``engine.run.limits.Clock``) that let backoff through a long
outage take no real time, so a test or a scenario of one does not wait it out."""

from __future__ import annotations

import anyio
import anyio.lowlevel

__all__ = ["FastForwardClock", "InstantClock"]


class InstantClock:
    """Real time, and sleeps that only yield: backoff and outage probes go at once, and an
    outage never reaches ``endpoint.outage_timeout_s`` (no time passes while calls wait)."""

    def now(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.lowlevel.checkpoint()


class FastForwardClock:
    """The engine's clock, run ahead: a sleep moves it on by the time asked but really waits at
    most 10 ms, so backoff through a long outage takes no time while a batch at the server still
    gets real time to finish (and polling it does not spin)."""

    def __init__(self) -> None:
        self._ahead = 0.0

    def now(self) -> float:
        return anyio.current_time() + self._ahead

    async def sleep(self, seconds: float) -> None:
        waited = min(seconds, 0.01)
        self._ahead += seconds - waited
        await anyio.sleep(waited)
