"""``CachedStage`` on its own, in front of a stage recorded by the test and of the real
``RealtimeStage``: misses go through and are stored, hits are answered from the stage's own task
(more of them than its stream holds at once), failures go through again, the key is the endpoint
and the whole body. The whole-run behaviour is in test_response_cache.py."""

from __future__ import annotations

from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from benchmarks.clocks import InstantClock
from engine.errors import ProviderError
from engine.mock_provider import MockProvider
from engine.provider import ChatReply
from engine.response_cache import CachedStage, ResponseCache
from engine.run.limits import Limiter
from engine.run.realtime import RealtimeRunner, RealtimeStage
from engine.run.retry import RetryPolicy
from engine.run.stage import Deliver, Stage
from engine.types import ChatRequest, ChatResult, Failure, Outcome, Row, TokenLogprob, Usage

ENDPOINT = "https://example.test/v1"
LOGPROBS = (TokenLogprob("correct", -0.05, (("correct", -0.05), ("incorrect", -3.0))),)


def request(number: int, prompt: str = "Is it right?") -> ChatRequest:
    body = {"model": "judge-m", "messages": [{"role": "user", "content": f"{prompt} #{number}"}], "temperature": 0}
    return ChatRequest(f"judge:{number}", str(number), "judge", body, estimated_tokens=20)


class RecordingStage:
    """A stage that records what it is sent and answers each request when it is closed: a
    success, or a failure for the numbers in ``failing``."""

    def __init__(self, failing: frozenset[int] = frozenset()) -> None:
        self.submitted: list[str] = []
        self._failing = failing
        self._queued: list[tuple[Row, ChatRequest]] = []
        self._closed = anyio.Event()

    async def run(self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._closed.wait()
        for row, sent in self._queued:
            outcome: Outcome = (
                Failure(sent.custom_id, "http_400", "refused", 400) if int(row.row_id) in self._failing
                else ChatResult(sent.custom_id, f"answer {row.row_id}", "judge-m", Usage(30, 2), 0.4, logprobs=LOGPROBS)
            )
            await deliver(row, outcome)

    async def submit(self, row: Row, request: ChatRequest) -> None:
        self.submitted.append(request.custom_id)
        self._queued.append((row, request))

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        self._closed.set()


async def drive(stage: Stage, requests: list[ChatRequest]) -> dict[str, Outcome]:
    """Submit every request from this task and close; the outcomes by custom_id, each checked to
    come from another task than the one submitting."""
    outcomes: dict[str, Outcome] = {}
    submitter = anyio.get_current_task().id

    async def deliver(row: Row, outcome: Outcome) -> None:
        assert anyio.get_current_task().id != submitter  # never re-entrantly from submit
        outcomes[outcome.custom_id] = outcome

    async with anyio.create_task_group() as group:
        await group.start(stage.run, deliver)
        for sent in requests:
            await stage.submit(Row(sent.row_id, int(sent.row_id), {}), sent)
        await stage.close()
    return outcomes


async def test_a_second_pass_sends_nothing_and_replays_the_stored_replies(tmp_path: Path) -> None:
    requests = [request(number) for number in range(150)]  # more hits than the stage's stream holds
    with ResponseCache(tmp_path) as cache:
        first = RecordingStage()
        stored = await drive(CachedStage(first, cache, ENDPOINT), requests)
        again = RecordingStage()
        stage = CachedStage(again, cache, ENDPOINT)
        replayed = await drive(stage, requests)
    assert len(first.submitted) == 150 and again.submitted == [] and stage.hits == 150
    for custom_id, outcome in replayed.items():
        original = stored[custom_id]
        assert isinstance(outcome, ChatResult) and isinstance(original, ChatResult) and not original.cached
        assert (outcome.content, outcome.model, outcome.logprobs) == (original.content, original.model, LOGPROBS)
        assert outcome.cached and outcome.usage == Usage() and outcome.latency_s is None and outcome.attempts == 0


async def test_a_changed_body_or_another_endpoint_misses_and_failures_are_not_stored(tmp_path: Path) -> None:
    requests = [request(number) for number in range(6)]
    with ResponseCache(tmp_path) as cache:
        first = RecordingStage(failing=frozenset({1, 4}))
        outcomes = await drive(CachedStage(first, cache, ENDPOINT), requests)
        assert isinstance(outcomes["judge:1"], Failure)
        retried = RecordingStage()
        await drive(CachedStage(retried, cache, ENDPOINT), requests)
        assert retried.submitted == ["judge:1", "judge:4"]
        changed = RecordingStage()
        await drive(CachedStage(changed, cache, ENDPOINT), [request(number, "Is it wrong?") for number in range(6)])
        assert len(changed.submitted) == 6
        elsewhere = RecordingStage()
        await drive(CachedStage(elsewhere, cache, "https://other.test/v1"), requests)
        assert len(elsewhere.submitted) == 6


async def test_in_front_of_realtime_calls_a_reopened_cache_answers_for_the_provider(tmp_path: Path) -> None:
    def answer(sent: ChatRequest) -> ChatReply:
        return ChatReply("VERDICT: correct", "judge-m", Usage(40, 4), 0.2, logprobs=LOGPROBS)

    def realtime(provider: MockProvider) -> RealtimeStage:
        clock = InstantClock()
        return RealtimeStage(RealtimeRunner(provider, Limiter(concurrency=4, clock=clock), RetryPolicy(), clock))

    requests = [request(number) for number in range(10)]
    provider = MockProvider(answer)
    with ResponseCache(tmp_path) as cache:
        await drive(CachedStage(realtime(provider), cache, ENDPOINT), requests)
    assert len(provider.answered) == 10
    later = MockProvider(answer)
    with ResponseCache(tmp_path) as reopened, ResponseCache(tmp_path) as alongside:
        replayed = await drive(CachedStage(realtime(later), reopened, ENDPOINT), requests)
        assert alongside.get(alongside.key(ENDPOINT, requests[0].body), "judge@2:0") is not None
    assert later.answered == []
    assert all(isinstance(o, ChatResult) and o.cached and o.logprobs == LOGPROBS for o in replayed.values())


async def test_a_refused_call_is_not_stored_in_front_of_realtime_calls(tmp_path: Path) -> None:
    def refuse(sent: ChatRequest) -> str:
        raise ProviderError("refused", kind="no", reason="http_400", status_code=400)

    clock = InstantClock()
    stage = RealtimeStage(RealtimeRunner(MockProvider(refuse), Limiter(concurrency=2, clock=clock), RetryPolicy(), clock))
    with ResponseCache(tmp_path) as cache:
        outcomes = await drive(CachedStage(stage, cache, ENDPOINT), [request(0)])
        assert isinstance(outcomes["judge:0"], Failure) and len(cache) == 0
