"""Passing items without a scheduling round must not change what a cancelled sender sees."""

from __future__ import annotations

import anyio
import pytest

from engine.run import streams


async def test_items_pass_at_once_and_buffered_drains_without_waiting() -> None:
    send, receive = anyio.create_memory_object_stream[int](4)
    with receive:
        with send:
            for item in range(3):
                await streams.send(send, item)
            assert list(streams.buffered(receive)) == [0, 1, 2]
            assert list(streams.buffered(receive)) == []
        assert list(streams.buffered(receive)) == []  # the end of the stream ends the drain too


async def test_a_cancelled_sender_gets_its_cancellation_not_a_broken_stream() -> None:
    send, receive = anyio.create_memory_object_stream[int](4)
    with send, anyio.CancelScope() as scope:
        scope.cancel()
        receive.close()  # a cancelled run closes the collector's end first
        await streams.send(send, 1)
    assert scope.cancelled_caught


async def test_a_sender_not_cancelled_still_learns_the_receiver_is_gone() -> None:
    send, receive = anyio.create_memory_object_stream[int](4)
    receive.close()
    with send, pytest.raises(anyio.BrokenResourceError):
        await streams.send(send, 1)
