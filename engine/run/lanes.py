"""Endpoints and lanes: how a run's calls are split when its stages call different endpoints.

Each stage may have its own endpoint (``[predict.endpoint]``, ``[judge.endpoint]``, a panel
judge's own), so one run can predict on a local vLLM and judge on Claude and on GPT. Every
distinct endpoint gets its own provider, limiter and outage (``Endpoint``): a 429 from one
provider does not slow the others. A *lane* is one stage's calls to one endpoint: the predict
stage is one lane; the judges are one lane per endpoint they call. A lane is served by its own
realtime or batch stage, and ``RoutedStage`` sends each judge call to its judge's lane.

Lane names are what batch files and batch events are named by: ``predict``, ``judge`` for the lane
of the panel's first judge, and ``judge.<name>`` for another lane, after the first judge in it.
A run from before lanes existed has the lanes ``predict`` and ``judge`` only, so it resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus

from ..config import EndpointConfig, TaskConfig
from ..provider import Provider
from ..types import ChatRequest, Row, StageName, caller_of
from .limits import Limiter
from .outage import Outage
from .stage import Deliver, Stage


@dataclass(eq=False, slots=True)
class Endpoint:
    """One endpoint of a run, as it is called: its provider, and the limiter, outage and batch
    creation lock (``BatchStage._create``) every lane that calls it shares."""

    config: EndpointConfig
    provider: Provider
    limiter: Limiter
    outage: Outage
    callers: tuple[str, ...]
    creating: anyio.Lock = field(default_factory=anyio.Lock)


@dataclass(frozen=True, slots=True)
class Lane:
    """One stage's calls to one endpoint: ``callers`` are the ``custom_id`` prefixes it carries."""

    name: str
    stage: StageName
    endpoint: EndpointConfig
    callers: tuple[str, ...]


def lanes_of(config: TaskConfig) -> tuple[Lane, ...]:
    """The predict lane, then the judge lanes in the order of their first judge."""
    judges: dict[EndpointConfig, list[str]] = {}
    for caller, _ in config.callers[1:]:
        judges.setdefault(config.endpoint_of(caller), []).append(caller)
    lanes = [Lane("predict", "predict", config.endpoint_of("predict"), ("predict",))]
    for index, (endpoint, callers) in enumerate(judges.items()):
        lanes.append(Lane("judge" if index == 0 else callers[0], "judge", endpoint, tuple(callers)))
    return tuple(lanes)


class RoutedStage:
    """A stage whose requests go to one of several stages by their caller (a judge's lane)."""

    def __init__(self, stages: dict[str, Stage], route: dict[str, str]) -> None:
        """``stages`` by lane name; ``route``: the lane name of each caller."""
        self._stages = stages
        self._route = route

    async def run(self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as group:
            for stage in self._stages.values():
                await group.start(stage.run, deliver)
            task_status.started()

    async def submit(self, row: Row, request: ChatRequest) -> None:
        await self._stages[self._route[caller_of(request.custom_id)]].submit(row, request)

    async def flush(self) -> None:
        for stage in self._stages.values():
            await stage.flush()

    async def close(self) -> None:
        for stage in self._stages.values():
            await stage.close()
