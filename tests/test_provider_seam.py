"""The provider seam: an evaluation runs against any ``engine.provider.Provider`` handed in.

``MockProvider`` speaks neither OpenAI's line format nor its batch objects, and no server runs:
a run that works on it proves the pipeline, both stage kinds and the journal depend only on the
engine's own interface.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import anyio
import anyio.lowlevel
import polars as pl
import pytest

from benchmarks.clocks import InstantClock
from engine import Evaluation
from engine.config import BatchConfig
from engine.errors import BatchApiMissingError, ProviderError
from engine.journal import scan_journal
from engine.mock_provider import MockProvider
from engine.run.batch_stage import BatchStage
from engine.run.limits import Limiter
from engine.run.realtime import RealtimeRunner
from engine.run.retry import RetryPolicy
from engine.rundir import RunDir
from engine.types import ChatRequest, ChatResult, Outcome, Row

from .conftest import imdb_config

ROWS = 30


def genre_judge(request: ChatRequest) -> str:
    """Predicts Drama; calls a prediction correct when the movie's overview mentions a life."""
    if request.stage == "predict":
        return "Drama"
    return "correct" if "life" in request.body["messages"][-1]["content"] else "incorrect"


def comparable(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "results.parquet").drop("predict_latency_s", "judge_latency_s")


@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_a_run_on_a_provider_handed_in_uses_only_that_provider(tmp_path: Path, mode: str) -> None:
    provider = MockProvider(genre_judge)
    config = imdb_config(None, limit=ROWS, **{"predict.mode": mode, "judge.mode": mode})
    async with Evaluation(config, run_dir=tmp_path / "run", provider=provider, clock=InstantClock()) as evaluation:
        rows = [row async for row in evaluation]
    assert provider.entered and provider.closed
    assert len(rows) == ROWS and {row.status for row in rows} == {"judged"}
    answered = [(how, request.custom_id) for how, request in provider.answered if request.row_id != "preflight"]
    assert sorted(answered) == sorted(
        [(mode, f"predict:{i}") for i in range(ROWS)] + [(mode, f"judge:{i}") for i in range(ROWS)]
    )
    assert not (tmp_path / "run" / "server").exists(), "no embedded server was started"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["endpoint"] == "MockProvider"
    results = comparable(tmp_path / "run")
    expected = ["life" in inputs["Overview"] for inputs in results["inputs"]]
    assert results["prediction"].to_list() == ["Drama"] * ROWS
    assert results["verdict"].to_list() == expected
    assert evaluation.metrics is not None and evaluation.metrics["judge_accuracy"] == sum(expected) / ROWS
    if mode == "batch":
        assert [(job.tags["engine_stage"], job.status) for job in provider.batches] == [
            ("predict", "completed"), ("judge", "completed"),
        ]


async def test_realtime_and_batch_runs_on_the_same_provider_give_the_same_results(tmp_path: Path) -> None:
    for mode in ("realtime", "batch"):
        config = imdb_config(None, limit=ROWS, **{"predict.mode": mode, "judge.mode": mode})
        async with Evaluation(config, run_dir=tmp_path / mode, provider=MockProvider(genre_judge), clock=InstantClock()):
            pass
    assert comparable(tmp_path / "realtime").equals(comparable(tmp_path / "batch"))


async def test_a_failed_batch_line_is_retried_and_counted_through_the_seam(tmp_path: Path) -> None:
    failed_once: set[str] = set()

    def flaky(request: ChatRequest) -> str:
        if request.custom_id == "predict:3" and request.custom_id not in failed_once:
            failed_once.add(request.custom_id)
            raise ProviderError("upstream hiccup", kind="transient", reason="http_503", status_code=503)
        return genre_judge(request)

    provider = MockProvider(flaky)
    config = imdb_config(None, limit=ROWS, **{"predict.mode": "batch", "judge.mode": "batch"})
    async with Evaluation(config, run_dir=tmp_path / "run", provider=provider, clock=InstantClock()):
        pass
    journal = scan_journal(RunDir(tmp_path / "run").journal("predict")).collect()
    attempts = dict(zip(journal["custom_id"], journal["attempts"], strict=True))
    assert attempts["predict:3"] == 2 and {n for cid, n in attempts.items() if cid != "predict:3"} == {1}
    retried = [how for how, request in provider.answered if request.custom_id == "predict:3"]
    assert retried == ["batch", "realtime"]  # one line failed: fewer than realtime_retry_below, so a realtime call


async def test_a_provider_without_a_batch_api_stops_a_batch_run(tmp_path: Path) -> None:
    config = imdb_config(None, limit=ROWS, **{"predict.mode": "batch", "judge.mode": "batch"})
    with pytest.raises(BatchApiMissingError, match="no batch API"):
        async with Evaluation(config, run_dir=tmp_path / "run", provider=MockProvider(genre_judge, batch_api=False),
                              clock=InstantClock()):
            pass


def rows_alive() -> int:
    """Data rows reachable in this process (garbage collected first: other tests leave some)."""
    gc.collect()
    return sum(1 for thing in gc.get_objects() if isinstance(thing, Row))


class RowCensus:
    """Real time, sleeps that only yield, and at each sleep (a batch being polled, among others)
    a count of the data rows alive in memory beyond those alive before the run."""

    def __init__(self) -> None:
        self.before = rows_alive()
        self.alive: list[int] = []

    def now(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        self.alive.append(rows_alive() - self.before)
        await anyio.lowlevel.checkpoint()


async def test_rows_waiting_for_batches_wait_on_disk_not_in_memory(tmp_path: Path) -> None:
    """Every row is in a batch at once (predictions, then verdicts, take three polls): only the
    rows of the file being written are held in memory meanwhile (and the one being fed and the
    one being joined), and the scratch files are gone at the end."""
    census = RowCensus()
    per_file = 5
    config = imdb_config(None, limit=ROWS, **{"predict.mode": "batch", "judge.mode": "batch",
                                               "batch.max_requests_per_file": per_file})
    async with Evaluation(config, run_dir=tmp_path / "run", provider=MockProvider(genre_judge, turnaround=3),
                          clock=census) as evaluation:
        pass
    assert evaluation.metrics is not None and evaluation.metrics["n_judged"] == ROWS
    assert census.alive and max(census.alive) <= per_file + 2, census.alive
    assert not RunDir(tmp_path / "run").scratch_dir.exists()


class StopOnFirstPoll(InstantClock):
    """The session 'dies' the first time it waits to poll a batch: the batch exists at the
    provider and is journaled, its rows are not delivered."""

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope

    async def sleep(self, seconds: float) -> None:
        self.scope.cancel()
        await anyio.lowlevel.checkpoint()


def predict_stage(provider: MockProvider, run_dir: RunDir, clock: InstantClock) -> BatchStage:
    return BatchStage(
        stage="predict", provider=provider, run_dir=run_dir, run_id="run", settings=BatchConfig(), policy=RetryPolicy(),
        clock=clock, realtime=RealtimeRunner(provider, Limiter(concurrency=4, clock=clock), RetryPolicy(), clock),
        journaled=lambda custom_ids: set(), progress={}, outage_timeout_s=900.0,
    )


async def test_a_resumed_batch_that_ended_before_its_rows_were_fed_hands_each_over_when_it_comes(tmp_path: Path) -> None:
    """The outcomes of a batch adopted on resume wait (on disk) for rows the feeder has not
    reached yet; each is handed over the moment its row is submitted, and nothing is sent again."""
    provider, run_dir = MockProvider(genre_judge), RunDir(tmp_path / "run")
    rows = [(Row(str(i), i, {}), ChatRequest(f"predict:{i}", str(i), "predict", {"model": "m", "messages": []}, 10))
            for i in range(5)]
    with anyio.CancelScope() as scope:
        first = predict_stage(provider, run_dir, StopOnFirstPoll(scope))
        async with anyio.create_task_group() as group:
            await group.start(first.run, lambda row, outcome: anyio.lowlevel.checkpoint())
            for row, request in rows:
                await first.submit(row, request)
            await first.close()
    assert scope.cancelled_caught and [job.status for job in provider.batches] == ["in_progress"]

    handed: list[tuple[str, str, str]] = []

    async def deliver(row: Row, outcome: Outcome) -> None:
        assert isinstance(outcome, ChatResult)
        handed.append((row.row_id, outcome.custom_id, outcome.content))

    resumed = predict_stage(provider, run_dir, InstantClock())
    async with anyio.create_task_group() as group:
        await group.start(resumed.run, deliver)
        await anyio.wait_all_tasks_blocked()  # the adopted batch has ended and been read: no row came yet
        assert handed == []
        for row, request in rows:
            await resumed.submit(row, request)
            assert handed[-1] == (row.row_id, request.custom_id, "Drama")
        await resumed.close()
    assert len(provider.batches) == 1 and len(handed) == 5
