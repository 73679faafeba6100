"""Run the server in a background thread with its own asyncio loop, for any caller.

The thread owns the loop, so the caller may be synchronous, asyncio or trio.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

import anyio
import anyio.to_thread

from .backends.base import Backend
from .batch_jobs import BatchSettings
from .server import DEFAULT_MAX_BODY_BYTES, serve_forever

__all__ = ["EmbeddedServer", "embedded_server"]


class EmbeddedServer:
    """The OpenAI-compatible server on a daemon thread; ``start()`` returns its base URL.

    Not restartable: make a new one (on the same ``data_dir`` it resumes the batches). ``port=0``
    picks a free port; the options are :func:`~adapters.server.server.create_app`'s.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        data_dir: Path | str | None = None,
        batch_settings: BatchSettings = BatchSettings(),
        batch_api: bool = True,
    ) -> None:
        self._backend = backend
        self._data_dir = data_dir
        self._batch_settings = batch_settings
        self._batch_api = batch_api
        self._host = host
        self._port = port
        self._api_key = api_key
        self._max_body_bytes = max_body_bytes
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._url: str | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str | None:
        """The base URL (ending in ``/v1``) while running, else None."""
        return self._url

    def start(self) -> str:
        """Start serving and block until the socket listens; raise RuntimeError if it cannot."""
        if self._thread is not None:
            raise RuntimeError("EmbeddedServer.start() called twice")
        self._thread = threading.Thread(target=self._run, name="embedded-openai-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._url is None:
            self._thread.join()
            raise RuntimeError(f"embedded server failed to start: {self._error!r}") from self._error
        return self._url

    def stop(self) -> None:
        """Stop gracefully and join the thread: in-flight requests and batch lines get a few seconds."""
        if self._thread is None:
            return
        if self._loop is not None and self._task is not None and self._url is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join()
        self._url = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except asyncio.CancelledError:
            pass  # stop() cancelled the server: the normal way out
        except BaseException as exc:  # reported by start(); a thread has nowhere to raise
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        await serve_forever(
            self._backend,
            host=self._host,
            port=self._port,
            api_key=self._api_key,
            max_body_bytes=self._max_body_bytes,
            data_dir=self._data_dir,
            batch_settings=self._batch_settings,
            batch_api=self._batch_api,
            on_ready=self._on_ready,
        )

    def _on_ready(self, url: str) -> None:
        self._url = url
        self._ready.set()


@asynccontextmanager
async def embedded_server(
    backend: Backend,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    data_dir: Path | str | None = None,
    batch_settings: BatchSettings = BatchSettings(),
    batch_api: bool = True,
) -> AsyncIterator[str]:
    """Serve ``backend`` for the block's duration and yield the base URL; works on asyncio and trio.

    The options are :func:`~adapters.server.server.create_app`'s.
    """
    server = EmbeddedServer(
        backend,
        host=host,
        port=port,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        data_dir=data_dir,
        batch_settings=batch_settings,
        batch_api=batch_api,
    )
    url = await anyio.to_thread.run_sync(server.start)
    try:
        yield url
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.stop)
