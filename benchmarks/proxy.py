"""A fault-injecting TCP proxy for tests and the fault matrix: put it between a client and a server.

``FaultProxy(upstream_url)`` listens on a free port of 127.0.0.1 in a daemon thread with its own
asyncio loop (so sync, asyncio and trio code can all use it) and forwards bytes to the upstream's
host and port. ``start()`` returns ``upstream_url`` with the proxy's port in it: hand that to the
client. Every switch takes effect before the call that sets it returns.

It reads only what it must of HTTP/1.1: a request starts at a connection's first client bytes or
at the first client bytes after the server began its reply (these clients do not pipeline), and
its request line gives the method and path recorded in ``requests``. Bodies pass untouched. A
client that closes its side ends the connection (the server's side is closed too).

What each fault looks like to the client:

- ``drop_reply``: the request reaches the server whole and the server does the work; at the first
  byte of its reply the client's connection is reset (RST), no byte of the reply forwarded.
- ``reset_reply``: the first ``after_bytes`` bytes of the reply (status line and headers count)
  arrive, then the connection is reset. As on a real network, a reset discards what the client's
  kernel had not yet taken in: keep ``after_bytes`` well under a socket buffer (~64 KB).
- ``trickle_reply``: the reply arrives a byte at a time at ``bytes_per_second``.
- ``stall_reply``: nothing of the reply arrives until ``release()``; the client waits or gives up.
  ``held`` counts the replies held now (the server has answered them).
- ``delay``: every chunk, both ways, is held that long before it is forwarded.
- ``stall``: nothing is forwarded either way (new connections are accepted) until ``release()``.
- ``blackout``: open connections are reset; new ones are refused (``refuse=True``: the port is
  closed, ECONNREFUSED) or accepted and reset at once (``refuse=False``, counted in ``refused``),
  until ``lift()`` or ``seconds`` later, when the proxy listens again on the same port. ``down``
  says whether one is on.

Tests wait for a state with ``wait_for``/``await_for`` (a predicate on the proxy, checked at each
change of ``requests``, ``connections``, ``refused``, ``held`` or ``down``), never by sleeping.

Reply faults name a request by ``method`` (exact) and ``path`` (a regex matched in full against
the path without its query); a rule applies to the ``nth`` matching request counted from when it
was added, and to the ``times - 1`` matching ones after it. When several rules apply to one
request the first added wins; each counts the request all the same.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import anyio.to_thread

__all__ = ["FaultProxy"]

_CHUNK = 65536
_REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) HTTP/\d\.\d")

_FaultKind = Literal["drop", "reset", "trickle", "stall"]


@dataclass(frozen=True, slots=True)
class _Fault:
    """What happens to one reply: ``amount`` is ``after_bytes`` (reset) or bytes per second (trickle)."""

    kind: _FaultKind
    amount: float = 0.0


@dataclass(slots=True)
class _Rule:
    method: str
    path: re.Pattern[str]
    first: int
    last: int
    fault: _Fault
    seen: int = 0

    def count(self, method: str, path: str) -> bool:
        """Count the request if it matches; True if this rule applies to it."""
        if method != self.method or not self.path.fullmatch(path):
            return False
        self.seen += 1
        return self.first <= self.seen <= self.last

    @property
    def spent(self) -> bool:
        return self.seen >= self.last


@dataclass(slots=True, eq=False)
class _Pipe:
    """One proxied connection: the client's and the upstream's writers, and the reply in progress."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    awaiting_request: bool = True
    replying: bool = False
    fault: _Fault | None = None
    released: asyncio.Event | None = None
    forwarded: int = 0

    def abort(self) -> None:
        """Reset the client's connection (RST, not FIN) and drop the upstream one."""
        _reset(self.client.transport)
        self.upstream.transport.abort()


def _reset(transport: asyncio.WriteTransport) -> None:
    """Abort with SO_LINGER 0, so that the peer sees a reset whatever is left unread."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _parse_request_line(line: bytes) -> tuple[str, str] | None:
    if not (match := _REQUEST_LINE.fullmatch(line)):
        return None
    return match[1].decode("ascii"), match[2].decode("latin-1").split("?", 1)[0]


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in a daemon thread with its own asyncio loop (usable from sync,
    asyncio or trio code), forwarding to the host:port of ``upstream_url``. Not restartable."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream_url needs a host and a port, got {upstream_url!r}")
        self._upstream_url = upstream_url
        self._upstream = (parts.hostname, parts.port)
        self.url: str | None = None
        self._changed = threading.Condition()
        self._requests: list[tuple[str, str]] = []
        self._connections = 0
        self._refused = 0
        self._held = 0
        self._stopped = False
        self._blackout: Literal["refuse", "reset"] | None = None
        self._rules: list[_Rule] = []
        self._delay = 0.0
        self._thread: threading.Thread | None = None
        self._ready: Future[None] = Future()
        # owned by the proxy's loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port = 0
        self._server: asyncio.Server | None = None
        self._stopping: asyncio.Event | None = None
        self._flowing: asyncio.Event | None = None
        self._released: asyncio.Event | None = None
        self._lift_timer: asyncio.TimerHandle | None = None
        self._pipes: set[_Pipe] = set()
        self._handlers: set[asyncio.Task[None]] = set()  # one per connection, never cancelled
        self._tasks: set[asyncio.Future[None]] = set()  # the pumps and a blackout's timed lift

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> str:
        """Listen on a free port; return ``upstream_url`` with the proxy's port in it."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy.start() called twice")
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="fault-proxy", daemon=True)
        self._thread.start()
        try:
            self._ready.result()
        except BaseException:
            self._thread.join()
            self._thread = None
            raise
        parts = urlsplit(self._upstream_url)
        self.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{self._port}"))
        return self.url

    def stop(self) -> None:
        """Close every connection and the listener, join the thread; waiters get RuntimeError."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self.url = None
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what the proxy saw -------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request seen (client to server) in order, as (method, path without query)."""
        with self._changed:
            return list(self._requests)

    def count(self, method: str, path: str) -> int:
        """How many requests had this method and a path matching the regex ``path`` in full."""
        pattern = re.compile(path)
        return sum(1 for m, p in self.requests if m == method and pattern.fullmatch(p))

    @property
    def connections(self) -> int:
        """Connections accepted in all, those reset at once during a ``refuse=False`` blackout too."""
        with self._changed:
            return self._connections

    @property
    def refused(self) -> int:
        """Connections accepted and reset at once during blackouts with ``refuse=False``."""
        with self._changed:
            return self._refused

    @property
    def down(self) -> bool:
        """True during a blackout."""
        with self._changed:
            return self._blackout is not None

    @property
    def held(self) -> int:
        """Replies held now by ``stall_reply`` (their first byte has arrived from the server)."""
        with self._changed:
            return self._held

    def wait_for(self, predicate: Callable[[FaultProxy], bool], timeout: float = 30.0) -> None:
        """Block until ``predicate(self)`` is true, checked at every change of the proxy's state.

        Raise TimeoutError after ``timeout`` seconds, RuntimeError if the proxy stops first.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: self._stopped or predicate(self), timeout):
                raise TimeoutError(f"FaultProxy.wait_for: condition not met within {timeout} s")
            if not predicate(self):
                raise RuntimeError("FaultProxy.wait_for: the proxy stopped before the condition was met")

    async def await_for(self, predicate: Callable[[FaultProxy], bool], timeout: float = 30.0) -> None:
        """:meth:`wait_for` for async code, on any anyio backend (in a worker thread).

        Cancelling the caller abandons the thread, which ends at the timeout or at stop().
        """
        await anyio.to_thread.run_sync(self.wait_for, predicate, timeout, abandon_on_cancel=True)

    # -- faults on chosen replies -------------------------------------------------------------

    def drop_reply(self, method: str, path: str, *, nth: int = 1, times: int = 1) -> None:
        """Let the request reach the server; reset the client's connection at the reply's first byte."""
        self._add_rule(method, path, nth, times, _Fault("drop"))

    def reset_reply(self, method: str, path: str, *, after_bytes: int, nth: int = 1, times: int = 1) -> None:
        """Forward the first ``after_bytes`` bytes of the reply, then reset the client's connection."""
        if after_bytes < 0:
            raise ValueError(f"after_bytes must be >= 0, got {after_bytes}")
        self._add_rule(method, path, nth, times, _Fault("reset", after_bytes))

    def trickle_reply(self, method: str, path: str, *, bytes_per_second: float, nth: int = 1, times: int = 1) -> None:
        """Forward the reply a byte at a time, ``bytes_per_second`` of them a second."""
        if bytes_per_second <= 0:
            raise ValueError(f"bytes_per_second must be > 0, got {bytes_per_second}")
        self._add_rule(method, path, nth, times, _Fault("trickle", bytes_per_second))

    def stall_reply(self, method: str, path: str, *, nth: int = 1, times: int = 1) -> None:
        """Forward nothing of the reply until :meth:`release` (or until the client gives up)."""
        self._add_rule(method, path, nth, times, _Fault("stall"))

    def _add_rule(self, method: str, path: str, nth: int, times: int, fault: _Fault) -> None:
        if nth < 1 or times < 1:
            raise ValueError(f"nth and times must be >= 1, got nth={nth}, times={times}")
        rule = _Rule(method, re.compile(path), nth, nth + times - 1, fault)
        with self._changed:
            self._rules.append(rule)

    # -- faults on everything -----------------------------------------------------------------

    def delay(self, seconds: float) -> None:
        """Hold every forwarded chunk, both ways, ``seconds`` long (0: no delay)."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds}")
        with self._changed:
            self._delay = seconds

    def stall(self) -> None:
        """Stop forwarding in both directions until :meth:`release`."""
        self._in_loop(self._stall)

    def release(self) -> None:
        """End a :meth:`stall`; let go of the :meth:`stall_reply` replies of every request begun so far."""
        self._in_loop(self._release)

    def blackout(self, seconds: float | None = None, *, refuse: bool = True) -> None:
        """Take the endpoint down: reset open connections, refuse (or accept and reset) new ones.

        It ends by itself after ``seconds``, or at :meth:`lift` when None.
        """
        if seconds is not None and seconds < 0:
            raise ValueError(f"blackout seconds must be >= 0, got {seconds}")
        self._in_loop(lambda: self._start_blackout(seconds, "refuse" if refuse else "reset"))

    def lift(self) -> None:
        """End a blackout now: listen again on the same port."""
        self._in_loop(self._lift)

    # -- inside the proxy's loop --------------------------------------------------------------

    def _in_loop(self, action: Callable[[], object]) -> None:
        """Run ``action`` in the proxy's loop (awaiting it if it is a coroutine) and wait for it."""
        if self._loop is None or self._stopping is None or self._stopping.is_set():
            raise RuntimeError("FaultProxy is not running: call start() first")

        async def run() -> None:
            if asyncio.iscoroutine(outcome := action()):
                await outcome

        asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._released = asyncio.Event()
            await self._listen()
        except OSError as exc:  # start() raises it; a thread has nowhere to raise
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        await self._stopping.wait()
        if self._lift_timer is not None:
            self._lift_timer.cancel()
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.abort()
        for task in self._tasks:
            task.cancel()  # a handler ends with its pumps (cancelling it would upset asyncio.streams)
        await asyncio.gather(*self._tasks, *self._handlers, return_exceptions=True)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    def _stall(self) -> None:
        assert self._flowing is not None
        self._flowing.clear()

    def _release(self) -> None:
        assert self._flowing is not None and self._released is not None
        self._flowing.set()
        self._released.set()
        self._released = asyncio.Event()

    async def _start_blackout(self, seconds: float | None, mode: Literal["refuse", "reset"]) -> None:
        assert self._loop is not None
        with self._changed:
            self._blackout = mode
            self._changed.notify_all()
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        elif mode == "reset" and self._server is None:
            await self._listen()
        for pipe in self._pipes:
            pipe.abort()
        if self._lift_timer is not None:
            self._lift_timer.cancel()
        self._lift_timer = None
        if seconds is not None:
            self._lift_timer = self._loop.call_later(seconds, self._lift_when_due)

    def _lift_when_due(self) -> None:
        self._spawn(self._lift())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """A task that stop() cancels and awaits."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _lift(self) -> None:
        if self._lift_timer is not None:
            self._lift_timer.cancel()
        self._lift_timer = None
        if self._server is None:
            await self._listen()
        with self._changed:
            self._blackout = None
            self._changed.notify_all()

    async def _handle(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            with self._changed:
                self._connections += 1
                refuse = self._blackout is not None
                self._refused += refuse
                self._changed.notify_all()
            if refuse:
                _reset(client.transport)
                return
            try:
                upstream_reader, upstream = await asyncio.open_connection(*self._upstream)
            except OSError:
                _reset(client.transport)
                return
            pipe = _Pipe(client, upstream)
            assert self._stopping is not None
            if self.down or self._stopping.is_set():  # began while this connection was being made
                pipe.abort()
                return
            await self._proxy(pipe, client_reader, upstream_reader)
        finally:
            self._handlers.discard(task)

    async def _proxy(
        self, pipe: _Pipe, client_reader: asyncio.StreamReader, upstream_reader: asyncio.StreamReader
    ) -> None:
        pipe.client.transport.set_write_buffer_limits(high=0)  # drain() means: all of it sent
        self._pipes.add(pipe)
        pumps = {
            self._spawn(self._requests_pump(pipe, client_reader)),
            self._spawn(self._replies_pump(pipe, upstream_reader)),
        }
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pipes.discard(pipe)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            pipe.client.close()
            pipe.upstream.close()

    async def _forward(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        assert self._flowing is not None
        await self._flowing.wait()
        with self._changed:
            delay = self._delay
        if delay:
            await asyncio.sleep(delay)
        writer.write(data)
        await writer.drain()

    async def _requests_pump(self, pipe: _Pipe, reader: asyncio.StreamReader) -> None:
        head = b""
        try:
            while data := await reader.read(_CHUNK):
                if pipe.awaiting_request:
                    head += data
                    if b"\r\n" not in head:
                        continue
                    data, head = head, b""
                    self._begin_request(pipe, data.split(b"\r\n", 1)[0])
                await self._forward(pipe.upstream, data)
            if head:
                await self._forward(pipe.upstream, head)
        except OSError:
            pass  # a connection reset or aborted: the other side is closed with it

    def _begin_request(self, pipe: _Pipe, line: bytes) -> None:
        pipe.awaiting_request = False
        pipe.replying = False
        pipe.fault = None
        pipe.forwarded = 0
        pipe.released = self._released
        if (request := _parse_request_line(line)) is None:
            return
        with self._changed:
            self._requests.append(request)
            for rule in self._rules:
                if rule.count(*request) and pipe.fault is None:
                    pipe.fault = rule.fault
            self._rules = [rule for rule in self._rules if not rule.spent]
            self._changed.notify_all()

    async def _replies_pump(self, pipe: _Pipe, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(_CHUNK):
                pipe.awaiting_request = True
                first = not pipe.replying
                pipe.replying = True
                if await self._send_reply(pipe, data, first):
                    return
        except OSError:
            pass  # a connection reset or aborted: the other side is closed with it

    async def _send_reply(self, pipe: _Pipe, data: bytes, first: bool) -> bool:
        """Forward a chunk of the reply as its fault says; True once the connection is reset."""
        fault = pipe.fault
        if fault is None:
            await self._forward(pipe.client, data)
        elif fault.kind == "drop":
            pipe.abort()
            return True
        elif fault.kind == "reset":
            part = data[: max(0, int(fault.amount) - pipe.forwarded)]
            pipe.forwarded += len(part)
            if part:
                await self._forward(pipe.client, part)
            if pipe.forwarded >= fault.amount:
                pipe.abort()
                return True
        elif fault.kind == "trickle":
            for index in range(len(data)):
                await self._forward(pipe.client, data[index : index + 1])
                await asyncio.sleep(1 / fault.amount)
        else:
            if first:
                await self._hold(pipe)
            await self._forward(pipe.client, data)
        return False

    async def _hold(self, pipe: _Pipe) -> None:
        assert pipe.released is not None
        with self._changed:
            self._held += 1
            self._changed.notify_all()
        try:
            await pipe.released.wait()
        finally:
            with self._changed:
                self._held -= 1
                self._changed.notify_all()
