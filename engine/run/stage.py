"""What a pipeline stage is: where one stage's requests go, and how their outcomes come back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from ..types import ChatRequest, Outcome, Row

Deliver = Callable[[Row, Outcome], Awaitable[None]]


class Stage(Protocol):
    """Where one stage's requests go: realtime calls (``RealtimeStage``) or provider batches
    (``BatchStage``). Outcomes come back through ``deliver``, in any order."""

    async def run(self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve submissions; returns once closed and every submitted request is delivered."""

    async def submit(self, row: Row, request: ChatRequest) -> None:
        """Queue one request; may wait for capacity, never for the answer."""

    async def flush(self) -> None:
        """Send whatever is queued now (a batch stage seals its open file)."""

    async def close(self) -> None:
        """No more submissions: flush, and let ``run`` end when the last outcome is delivered."""
