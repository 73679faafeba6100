"""Memory-object streams without a scheduling round per item.

anyio's ``send`` and ``receive`` each yield to the event loop, even when the item could pass at
once. Rows come in bursts (a finished batch delivers tens of thousands), and an event-loop round
per row per stream was most of the time from a batch's end to ``results.parquet``. These pass
what can pass at once and wait only when they must.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")


async def send(stream: MemoryObjectSendStream[T], item: T) -> None:
    """Send ``item``, waiting only while the stream's buffer is full.

    A receiver gone (closed by a cancelled run) goes through ``send`` as well: its checkpoint
    gives a cancelled sender its cancellation rather than ``BrokenResourceError``.
    """
    try:
        stream.send_nowait(item)
    except (anyio.WouldBlock, anyio.BrokenResourceError):
        await stream.send(item)


def buffered(stream: MemoryObjectReceiveStream[T]) -> Iterator[T]:
    """The items waiting in ``stream`` now, without waiting for more."""
    while True:
        try:
            yield stream.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            return
