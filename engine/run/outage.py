"""An endpoint that answers nothing: every call waits it out together, for a while.

A refused connection or a timeout is the endpoint's fault, not the row's. When ``threshold``
calls in a row (no answer between) fail that way, the endpoint is taken to be down: calls stop
going out and do not spend their retries. One call at a time goes as a probe, after a backoff
(``probe_initial_s`` doubling to ``probe_max_s``, on the injectable clock); any answer, even an
HTTP error, ends the outage and every waiting call goes. An outage that has lasted
``timeout_s`` at a probe's turn is given up: waiting and later calls fail at once with
``EndpointDown`` (reason ``endpoint_down``, which ``--resume`` retries).
"""

from __future__ import annotations

import anyio

from ..errors import ProviderError
from .limits import Clock


class EndpointDown(ProviderError):
    """The endpoint answered nothing for ``endpoint.outage_timeout_s``."""


class Outage:
    """The endpoint's reachability, shared by every caller of one endpoint."""

    def __init__(
        self,
        clock: Clock,
        *,
        timeout_s: float,
        threshold: int = 5,
        probe_initial_s: float = 0.5,
        probe_max_s: float = 30.0,
    ) -> None:
        self._clock = clock
        self._timeout_s = timeout_s
        self._threshold = threshold
        self._probe_initial_s = probe_initial_s
        self._probe_max_s = probe_max_s
        self._streak = 0
        self._down_since: float | None = None
        self._probing = False
        self._next_probe_s = probe_initial_s
        self._given_up: EndpointDown | None = None
        self._changed = anyio.Event()
        self.outages = 0

    @property
    def down_for(self) -> float | None:
        """Seconds the endpoint has been down, or None while it answers."""
        return None if self._down_since is None else self._clock.now() - self._down_since

    @property
    def is_down(self) -> bool:
        return self._down_since is not None

    async def admit(self) -> bool:
        """Wait until a call may go; True when it goes as the outage's probe."""
        while True:
            if self._given_up is not None:
                raise self._given_up
            if self._down_since is None:
                return False
            if not self._probing:
                self._probing = True
                try:
                    await self._clock.sleep(self._next_probe_s)
                except BaseException:
                    self._probing = False
                    self._notify()
                    raise
                self._next_probe_s = min(2 * self._next_probe_s, self._probe_max_s)
                if self._down_since is not None and self._clock.now() - self._down_since >= self._timeout_s:
                    self._give_up()
                    continue
                return True
            await self._changed.wait()

    def unreachable(self, *, probe: bool) -> None:
        """A call found no endpoint (connection refused or reset, or a timeout)."""
        if probe:
            self._probing = False
            self._notify()
            return
        self._streak += 1
        if self._down_since is None and self._streak >= self._threshold:
            self._down_since = self._clock.now()
            self.outages += 1

    def answered(self) -> None:
        """The endpoint answered a call (any HTTP status): it is up."""
        self._streak = 0
        if self._down_since is not None:
            self._down_since = None
            self._probing = False
            self._next_probe_s = self._probe_initial_s
            self._notify()

    def _give_up(self) -> None:
        waited = self.down_for or 0.0
        self._given_up = EndpointDown(
            f"the endpoint answered nothing for {waited:.0f} s (endpoint.outage_timeout_s = {self._timeout_s:g})",
            kind="transient",
            reason="endpoint_down",
        )
        self._probing = False
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
