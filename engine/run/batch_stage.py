"""Batch API mode: a pipeline stage served by provider batches, never paid for twice.

Everything provider-specific (line format, uploads, tags, result files) is behind
``engine.provider``. Requests are written, as they are submitted, into files under ``batches/`` in
the provider's line format (at most ``max_requests_per_file`` lines and ``max_bytes_per_file``
bytes each). A sealed file is uploaded and a batch created with tags naming the run, the stage,
the file ("chunk") and the attempt; the input id and the batch id go into
``journal/batches.ndjson`` the moment they exist. Each batch is polled with backoff; when it ends,
its result files are downloaded beside the request file and every line becomes an outcome for
the pipeline, carrying in ``attempts`` how many times the line was paid for (each
batch it was in, plus each realtime call). Lines that failed for a reason worth retrying (5xx,
429, expiry, cancellation, no line at all) are retried up to ``max_line_retries`` times: as
realtime calls when fewer than ``realtime_retry_below`` remain, else in a new batch. The rest are
recorded failures.

Creating a batch is not idempotent: a create whose reply was lost (a reset, a timeout, a 5xx, a
kill) may have created it. Before such a create is tried again, or a resumed run creates a batch
whose create had begun, the endpoint's batches are searched for it (``find_batch``: by the file
and the tags, or by content where batches carry no tags), and that one is adopted. Creates on one
endpoint go one at a time, each begun with a journal line, so a lost one is the only batch of the
endpoint the journal does not know. An upload whose reply
was lost is looked for the same way among the endpoint's files (by its name, unique to the run
and chunk, and its size), so no unjournaled copy is left behind.

Every control-plane call (upload, create, poll, download, list, cancel) rides out an outage:
transient failures are retried with capped backoff until ``outage_timeout_s`` has passed since
the first failure of the streak (on the injectable clock); then the run stops with a
``ProviderError`` naming what failed.

On resume the stage first re-attaches: it lists the endpoint's batches, keeps those tagged with
this run and stage (plus any the journal names), and every request line that has no outcome in the
journal yet belongs to the newest such batch that carries it. Those rows wait for that batch
(downloading a finished one again is free) instead of being submitted again; a file uploaded but
never turned into a batch (a crash in between) becomes its batch now. A request file missing from
``batches/`` is restored from the provider's copy of the batch's input file.
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..config import BatchConfig
from ..errors import FatalError, ProviderError
from ..journal import EventLog
from ..provider import BatchJob, BatchProvider
from ..rundir import RunDir
from ..templates import estimate_tokens
from ..types import ChatRequest, Failure, Outcome, Row, StageName
from .limits import Clock
from .parked import Parked
from .realtime import RealtimeRunner
from .retry import RetryPolicy, is_transient
from .stage import Deliver

_SLICE = 1_000  # rows parked at a time as a file is written; result lines read, and rows taken, at a time
_CHUNK_NAME = re.compile(r"^(predict|judge(?:\.[A-Za-z0-9_-]+)?)-(\d{5})$")
# How far the endpoint's clock (its batches' and files' ``created_at``) may be behind ours.
_CLOCK_SKEW_S = 600.0

T = TypeVar("T")


@dataclass(slots=True)
class BatchProgress:
    """What the progress display shows of one batch."""

    stage: StageName
    chunk: str
    status: str
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(eq=False, slots=True)
class _Chunk:
    """One request file and its lines' ids. ``rows`` holds the last rows written to the file (at
    most ``_SLICE``); the others wait on disk (``BatchStage._parked``) until its batch is delivered."""

    name: str
    path: Path
    attempt: int = 0
    custom_ids: list[str] = field(default_factory=list)
    size: int = 0
    rows: dict[str, Row] = field(default_factory=dict)
    handle: IO[str] | None = None

    def lines(self, provider: BatchProvider) -> dict[str, str]:
        """The request lines by custom_id, read back from the file."""
        with self.path.open(encoding="utf-8") as source:
            return {provider.decode_line(line)[0]: line for line in source if line.strip()}


class BatchStage:
    """A pipeline stage whose requests travel in provider batches."""

    def __init__(
        self,
        *,
        stage: StageName,
        provider: BatchProvider,
        lane: str | None = None,
        run_dir: RunDir,
        run_id: str,
        settings: BatchConfig,
        policy: RetryPolicy,
        clock: Clock,
        realtime: RealtimeRunner,
        journaled: Callable[[list[str]], set[str]],
        progress: dict[str, BatchProgress],
        outage_timeout_s: float,
        after_batch: Callable[[], Awaitable[None]] | None = None,
        creating: anyio.Lock | None = None,
    ) -> None:
        """``lane`` names the stage's files, batches and events: the stage's name, or a judge lane's
        (``engine.run.lanes``: judges on another endpoint); ``journaled(custom_ids)`` says which of
        them already have an outcome (asked on start, a request file at a time, so a resumed
        run never holds every id of its journal);
        ``outage_timeout_s`` is how long a control-plane call keeps trying through transient
        failures; ``after_batch`` runs after each batch's outcomes are delivered (the judge
        stage's flush); ``creating`` is held while a batch is created: the endpoint's, shared by
        every lane that calls it (see ``_create``)."""
        self.stage: StageName = stage
        self.lane = lane or stage
        self._provider = provider
        self._dir = run_dir.batches_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        self._log = EventLog(run_dir.batch_events)
        self._run_id = run_id
        self._settings = settings
        # The policy's backoff, without its limit on retries: an outage ends a call's tries.
        self._backoff = replace(policy, max_retries=sys.maxsize, max_rate_limit_retries=sys.maxsize)
        self._outage_timeout_s = outage_timeout_s
        self._clock = clock
        self._realtime = realtime
        self._journaled = journaled
        self.progress = progress
        self.after_batch = after_batch
        self._creating = creating or anyio.Lock()
        self._owner: dict[str, _Chunk] = {}
        # Rows waiting in sealed files, by custom_id: on disk, as a run may have all its rows in batches.
        self._parked: Parked[Row] = Parked(run_dir.scratch_dir / f"{self.lane}.sqlite")
        # Outcomes of a resumed run's batches whose rows the feeder has not reached yet.
        self._early: Parked[Outcome] = Parked(run_dir.scratch_dir / f"{self.lane}.early.sqlite")
        self._open: _Chunk | None = None
        names = [path.stem for path in self._dir.glob("*.jsonl")]
        names += [str(event.get("chunk")) for event in self._log.events()]  # their files may be gone
        self._next_index = 1 + max(
            (int(m.group(2)) for name in names if (m := _CHUNK_NAME.match(name)) and m.group(1) == self.lane), default=0
        )
        self._uploads = anyio.Semaphore(settings.upload_concurrency)
        self._delivering = anyio.Lock()
        self._group: TaskGroup | None = None
        self._deliver: Deliver | None = None
        self._closed = anyio.Event()

    # -- the Stage protocol ------------------------------------------------------------------

    async def run(self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._deliver = deliver
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                await self._reattach()
                task_status.started()
                await self._closed.wait()
        finally:
            self._parked.close()
            self._early.close()

    async def submit(self, row: Row, request: ChatRequest) -> None:
        owner = self._owner.get(request.custom_id)
        if owner is not None:  # an earlier session's batch carries this line already
            early = self._early.pop(request.custom_id, None)
            if early is not None:
                await self._hand_over(row, early)
            else:
                self._parked[request.custom_id] = row
            return
        line = self._provider.encode_line(request)
        size = len(line.encode()) + 1
        chunk = self._open
        if chunk is not None and chunk.size + size > self._settings.max_bytes_per_file:
            await self.flush()
            chunk = None
        if chunk is None:
            chunk = self._open = self._new_chunk(attempt=0)
        assert chunk.handle is not None
        chunk.handle.write(line + "\n")
        chunk.size += size
        chunk.custom_ids.append(request.custom_id)
        chunk.rows[request.custom_id] = row
        if len(chunk.rows) >= _SLICE:
            self._park(chunk)
        if len(chunk.custom_ids) >= self._settings.max_requests_per_file:
            await self.flush()

    async def flush(self) -> None:
        chunk, self._open = self._open, None
        if chunk is not None:
            self._seal(chunk)

    async def close(self) -> None:
        await self.flush()
        self._closed.set()

    # -- one chunk's life: upload, create, follow ------------------------------------------

    def _new_chunk(self, *, attempt: int) -> _Chunk:
        name = f"{self.lane}-{self._next_index:05d}"
        self._next_index += 1
        path = self._dir / f"{name}.jsonl"
        return _Chunk(name, path, attempt=attempt, handle=path.open("w", encoding="utf-8"))

    def _seal(self, chunk: _Chunk) -> None:
        assert chunk.handle is not None and self._group is not None
        chunk.handle.close()
        chunk.handle = None
        self._park(chunk)
        self._group.start_soon(self._submit_chunk, chunk)

    def _park(self, chunk: _Chunk) -> None:
        """Move the rows of the file being written to disk, where they wait for its batch."""
        self._parked.put_many(chunk.rows.items())
        chunk.rows.clear()

    async def _submit_chunk(self, chunk: _Chunk, file_id: str | None = None, *, look_first: bool = False) -> None:
        """Upload the chunk (unless ``file_id`` says it was, before a restart), create its batch
        and follow it to its end; ``look_first``: see ``_create``."""
        if file_id is None:
            async with self._uploads:
                file_id = await self._upload(chunk)
            self._log.append({"event": "file", "stage": self.lane, "chunk": chunk.name, "file_id": file_id,
                              "attempt": chunk.attempt, "lines": len(chunk.custom_ids)})
        batch = await self._create(chunk, file_id, look_first=look_first)
        await self._follow(chunk, batch)

    async def _upload(self, chunk: _Chunk) -> str:
        """Upload the chunk's file once; after a lost reply, adopt the copy that arrived."""
        filename = f"{self._run_id}.{chunk.name}.jsonl"
        size = chunk.path.stat().st_size
        since = time.time() - _CLOCK_SKEW_S
        tried = False

        async def upload_once() -> str:
            nonlocal tried
            if tried and (uploaded := await self._provider.find_input(filename, size, since)) is not None:
                return uploaded
            tried = True
            return await self._provider.upload_input(chunk.path, filename)

        return await self._control(f"uploading {chunk.path.name}", upload_once)

    async def _create(self, chunk: _Chunk, file_id: str, *, look_first: bool = False) -> BatchJob:
        """Create the chunk's batch once and journal it; after a lost reply, adopt the batch that
        was created. ``look_first``: a restart came after a create of this chunk was begun and
        before its batch was journaled: look for that batch before creating one.

        Creates on one endpoint go one at a time (``creating``), each begun with a journal line:
        a batch whose reply was lost is then the only one of the endpoint that the journal does not
        know, so it is found even where batches carry no tags (Anthropic's, found by content)."""
        tags = {"engine_run": self._run_id, "engine_stage": self.lane, "engine_chunk": chunk.name,
                "engine_attempt": str(chunk.attempt)}
        tried = look_first

        async def create_once() -> BatchJob:
            nonlocal tried
            if tried:
                known = frozenset(str(event["batch_id"]) for event in self._log.events() if event["event"] == "batch")
                if (found := await self._provider.find_batch(file_id, tags, since, known)) is not None:
                    return found
            tried = True
            return await self._provider.create_batch(file_id, tags)

        async with self._creating:
            self._log.append({"event": "creating", "stage": self.lane, "chunk": chunk.name, "file_id": file_id})
            since = time.time() - _CLOCK_SKEW_S
            batch = await self._control(f"creating the batch of {chunk.name}", create_once)
            self._log.append({"event": "batch", "stage": self.lane, "chunk": chunk.name, "batch_id": batch.id,
                              "file_id": file_id})
        return batch

    async def _follow(self, chunk: _Chunk, batch: BatchJob) -> None:
        """Poll ``batch`` to its end, then deliver or retry each of the chunk's lines."""
        delay = self._settings.poll_initial_s
        first_seen = self._clock.now()
        while True:
            self._note(chunk, batch)
            if batch.terminal:
                break
            if batch.status == "validating" and self._clock.now() - first_seen > self._settings.validating_timeout_s:
                batch = await self._control(f"cancelling batch {batch.id} ({chunk.name})", self._provider.cancel_batch, batch.id)
                first_seen = float("inf")  # cancel once
                continue
            await self._clock.sleep(delay)
            delay = min(delay * self._settings.poll_factor, self._settings.poll_max_s)
            batch = await self._control(f"polling batch {batch.id} ({chunk.name})", self._provider.retrieve_batch, batch.id)
        self._log.append({
            "event": "ended", "stage": self.lane, "chunk": chunk.name, "batch_id": batch.id, "status": batch.status,
            "created_at": batch.created_at, "in_progress_at": batch.in_progress_at,
            "finished_at": batch.finished_at,
            "lines": len(chunk.custom_ids),
        })
        what = f"downloading the results of batch {batch.id} ({chunk.name})"
        paths = await self._control(what, self._provider.download_results, batch, self._dir / chunk.name)
        async with self._delivering:  # one batch at a time, so its rows are flushed together
            retry = await self._deliver_results(chunk, batch, paths)
            if retry:
                await self._retry(chunk, retry)
            if self.after_batch is not None:
                await self.after_batch()

    async def _deliver_results(self, chunk: _Chunk, batch: BatchJob, paths: list[Path]) -> list[str]:
        """Settle each of the chunk's lines from the batch's result files (a slice of lines at a
        time, with their rows taken from where they are parked, so memory does not grow with the
        batch), then its lines that have no result; returns the lines to try again."""
        waiting = {custom_id for custom_id in chunk.custom_ids if self._owner.get(custom_id, chunk) is chunk}
        retry: list[str] = []  # the others: a newer batch carries their line now

        async def decide(outcomes: list[Outcome]) -> None:
            settled: list[Outcome] = []
            for outcome in outcomes:
                if outcome.custom_id not in waiting:
                    continue
                waiting.discard(outcome.custom_id)
                if outcome.attempts != chunk.attempt + 1:  # a result line reads as one call
                    outcome = replace(outcome, attempts=chunk.attempt + 1)
                retryable = isinstance(outcome, Failure) and is_transient(outcome.reason, outcome.status_code)
                if retryable and chunk.attempt < self._settings.max_line_retries:
                    retry.append(outcome.custom_id)  # its row, if the feeder has reached it, stays parked
                else:
                    settled.append(outcome)
            rows = self._parked.take(outcome.custom_id for outcome in settled)
            for outcome in settled:
                await self._settle(outcome.custom_id, outcome, rows.get(outcome.custom_id))

        for path in paths:
            lines = self._provider.read_results(path)
            while outcomes := await anyio.to_thread.run_sync(_take, lines, _SLICE):
                await decide(outcomes)
        missing = [custom_id for custom_id in chunk.custom_ids if custom_id in waiting]
        for start in range(0, len(missing), _SLICE):
            await decide([self._missing(custom_id, batch) for custom_id in missing[start:start + _SLICE]])
        return retry

    def _missing(self, custom_id: str, batch: BatchJob) -> Failure:
        if batch.status == "failed":
            errors = "; ".join(batch.errors)
            return Failure(custom_id, "batch_failed", f"batch {batch.id} failed validation: {errors or 'no reason given'}")
        return Failure(custom_id, f"batch_{batch.status}", f"batch {batch.id} ended {batch.status} without this line")

    async def _settle(self, custom_id: str, outcome: Outcome, row: Row | None) -> None:
        """Hand ``row``'s outcome over; without its row (the feeder has not reached it yet, on
        resume) the outcome waits for it on disk."""
        if row is None:
            self._early[custom_id] = outcome
        else:
            await self._hand_over(row, outcome)

    async def _hand_over(self, row: Row, outcome: Outcome) -> None:
        assert self._deliver is not None
        await self._deliver(row, outcome)

    async def _retry(self, chunk: _Chunk, custom_ids: list[str]) -> None:
        lines = chunk.lines(self._provider)
        if len(custom_ids) < self._settings.realtime_retry_below:
            assert self._group is not None
            for custom_id in custom_ids:
                self._group.start_soon(self._retry_realtime, chunk, custom_id, lines[custom_id])
            return
        retry = self._new_chunk(attempt=chunk.attempt + 1)
        assert retry.handle is not None
        for custom_id in custom_ids:
            retry.handle.write(lines[custom_id] if lines[custom_id].endswith("\n") else lines[custom_id] + "\n")
            retry.custom_ids.append(custom_id)
            self._owner[custom_id] = retry  # its row, if the feeder has reached it, stays parked
        self._seal(retry)

    async def _retry_realtime(self, chunk: _Chunk, custom_id: str, line: str) -> None:
        """One line as a realtime call, paced like any request; its outcome counts the batches
        the line was in besides the calls."""
        body = self._provider.decode_line(line)[1]
        row_id = custom_id.partition(":")[2]  # custom_ids are <caller>:<row id>; a caller has no colon
        reply_budget = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
        request = ChatRequest(custom_id, row_id, self.stage, body, estimate_tokens(body["messages"], reply_budget))
        outcome = await self._realtime.call(request)
        attempts = chunk.attempt + 1 + outcome.attempts
        await self._settle(custom_id, replace(outcome, attempts=attempts), self._parked.pop(custom_id, None))

    def _note(self, chunk: _Chunk, batch: BatchJob) -> None:
        counts = batch.counts
        self.progress[batch.id] = BatchProgress(
            self.stage, chunk.name, batch.status,
            counts.total if counts else 0, counts.completed if counts else 0, counts.failed if counts else 0,
        )

    async def _control(self, what: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """A control-plane call that rides out an outage (see the module doc); ``what`` names
        it in the error that stops the run."""
        streak_began: float | None = None
        failures = 0
        while True:
            try:
                return await call(*args)
            except FatalError:
                raise
            except ProviderError as error:
                now = self._clock.now()
                streak_began = now if streak_began is None else streak_began
                failing_for = now - streak_began
                delay = self._backoff.delay(error, failures + 1)
                if delay is None:
                    raise ProviderError(f"{what}: {error}", kind=error.kind, reason=error.reason,
                                        status_code=error.status_code) from error
                if failing_for >= self._outage_timeout_s:
                    raise ProviderError(
                        f"{what} failed for {failing_for:.0f} s (endpoint.outage_timeout_s = "
                        f"{self._outage_timeout_s:g}): {error}",
                        kind=error.kind, reason=error.reason, status_code=error.status_code,
                    ) from error
                failures += 1
                await self._clock.sleep(min(delay, self._outage_timeout_s - failing_for))

    # -- resume ------------------------------------------------------------------------------

    async def _reattach(self) -> None:
        """Adopt this run's batches and uploaded files from before a restart (see module doc)."""
        events = [event for event in self._log.events() if event.get("stage") == self.lane]
        if not events:
            return
        since = min(float(event.get("at", 0)) for event in events) - _CLOCK_SKEW_S
        listed = await self._control("listing the endpoint's batches", self._list_ours, since)
        batches = {batch.id: batch for batch in listed}
        for event in events:
            if event["event"] == "batch" and event["batch_id"] not in batches:
                what = f"retrieving batch {event['batch_id']} ({event['chunk']})"
                batches[event["batch_id"]] = await self._control(what, self._provider.retrieve_batch, event["batch_id"])
        # A provider whose batches carry no tags (Anthropic's) is told the chunk by the journal.
        journaled = {str(event["batch_id"]): str(event["chunk"]) for event in events if event["event"] == "batch"}
        attempts = {str(event["chunk"]): int(event.get("attempt", 0)) for event in events if event["event"] == "file"}
        chunk_of = {batch_id: batch.tags.get("engine_chunk") or journaled.get(batch_id, "")
                    for batch_id, batch in batches.items()}
        chunks_with_batch = set(chunk_of.values())
        newest_first = sorted(batches.values(), key=lambda batch: batch.created_at, reverse=True)
        adopted: list[tuple[_Chunk, BatchJob | None, str | None]] = []
        for batch in newest_first:
            name = chunk_of[batch.id]
            attempt = int(batch.tags.get("engine_attempt") or attempts.get(name, 0))
            input_id = batch.input_id or next(
                (str(event["file_id"]) for event in events if event["event"] == "batch" and event["batch_id"] == batch.id), ""
            )
            chunk = await self._adopt(name, attempt, input_id)
            if chunk is not None:
                adopted.append((chunk, batch, None))
        for event in events:  # uploaded, but the batch was never created
            if event["event"] == "file" and event["chunk"] not in chunks_with_batch:
                chunk = await self._adopt(event["chunk"], int(event.get("attempt", 0)), event["file_id"])
                if chunk is not None:
                    adopted.append((chunk, None, event["file_id"]))
        begun = {event["chunk"] for event in events if event["event"] == "creating"}  # its reply may have been lost
        assert self._group is not None
        for chunk, running, file_id in adopted:
            if running is not None:
                self._group.start_soon(self._follow, chunk, running)
            else:
                self._group.start_soon(partial(self._submit_chunk, chunk, file_id, look_first=chunk.name in begun))

    async def _adopt(self, name: str, attempt: int, file_id: str) -> _Chunk | None:
        """Claim the chunk's lines that have no outcome and no newer owner; None if none remain.

        A request file missing from ``batches/`` is restored from the provider's copy
        (``file_id``, the batch's input file).
        """
        if not _CHUNK_NAME.match(name):
            return None
        path = self._dir / f"{name}.jsonl"
        if not path.exists():
            what = f"restoring {path.name} from the endpoint's file {file_id}"
            try:
                await self._control(what, self._provider.download_input, file_id, path)
            except FatalError:
                raise
            except ProviderError as error:
                if error.kind != "no":
                    raise
                return None  # the provider's copy is gone too: which lines it held is unknown
        chunk = _Chunk(name, path, attempt=attempt)
        unowned = [cid for cid in chunk.lines(self._provider) if cid not in self._owner]
        done = await anyio.to_thread.run_sync(self._journaled, unowned)
        chunk.custom_ids = [cid for cid in unowned if cid not in done]
        if not chunk.custom_ids:
            return None
        for custom_id in chunk.custom_ids:
            self._owner[custom_id] = chunk
        return chunk

    async def _list_ours(self, since: float) -> list[BatchJob]:
        """This run's batches for this stage created after ``since``."""
        tags = {"engine_run": self._run_id, "engine_stage": self.lane}
        return [batch async for batch in self._provider.list_batches(tags, since)]


def _take(outcomes: Iterator[Outcome], count: int) -> list[Outcome]:
    return list(itertools.islice(outcomes, count))
