"""The batch state machine: validate an uploaded file, execute it line by line, write the results.

    validating ──> in_progress ──> finalizing ──> completed
        │               ├──> expired        (past expiry: partial output, unrun lines as errors)
        │               └──> cancelling ──> cancelled   (in-flight lines finish first)
        ├──> failed     (the input file breaks a rule: ``errors`` names each line)
        └──> cancelling

Records live in ``<root>/<id>.json`` (written atomically on each change of status; the counts
in between live in memory) and finished lines in ``<root>/<id>.results.ndjson``, appended as each
finishes. On :meth:`BatchManager.run` every batch not yet terminal resumes where it was; lines in
the results are not run again. Unrun lines of a cancelled batch are in neither output file (as
OpenAI); an expired batch's unrun lines are in the error file with code ``batch_expired``, and
counted as failed.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from engine.provider import TERMINAL_BATCH_STATUSES

from .backends.base import Backend, batch_policy
from .batch_lines import (
    Line,
    LineError,
    ResultsLog,
    check_input,
    read_lines,
    run_line,
    split_results,
    succeeded,
)
from .files import FileStore, atomic_write
from .prompt_cache import PromptCache

__all__ = ["BATCH_ID", "BatchManager", "BatchRecord", "BatchSettings", "BatchStateError"]

BATCH_ID = re.compile(r"batch_[A-Za-z0-9]+")
COMPLETION_WINDOW_S = 24 * 3600.0

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How the server executes batches.

    ``concurrency`` lines of a batch run at once; an input file may hold ``max_requests`` lines
    of at most ``max_line_bytes`` bytes each (newline included), and ``max_file_bytes`` bytes (the upload limit
    too). On shutdown in-flight lines get
    ``shutdown_grace_s`` to finish; those cut off run again on the next start.
    """

    concurrency: int = 32
    max_requests: int = 50_000
    max_file_bytes: int = 200 * 1024 * 1024
    max_line_bytes: int = 8 * 1024 * 1024
    shutdown_grace_s: float = 5.0

    def __post_init__(self) -> None:
        limits = (self.concurrency, self.max_requests, self.max_file_bytes, self.max_line_bytes)
        if min(limits) < 1 or self.shutdown_grace_s < 0:
            raise ValueError("batch concurrency and limits must be positive, shutdown_grace_s non-negative")


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch's record; ``created`` and ``expires`` are float seconds, the ``*_at`` whole ones."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float
    expires: float
    status: str = "validating"
    model: str | None = None
    errors: tuple[LineError, ...] = ()
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    stamps: dict[str, int] = field(default_factory=dict)

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's ``batch`` object."""
        errors = [error.to_openai() for error in self.errors]
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": errors} if errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created),
            "expires_at": int(self.expires),
            **{f"{status}_at": self.stamps.get(status) for status in _STAMPED},
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }

    def moved(self, status: str, **changes: Any) -> BatchRecord:
        """This batch in ``status``, stamped now."""
        return replace(self, status=status, stamps={**self.stamps, status: int(time.time())}, **changes)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchRecord:
        return cls(**{**data, "errors": tuple(LineError(**e) for e in data["errors"])})


_STAMPED = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


class BatchStateError(Exception):
    """The batch's status does not allow what was asked (cancelling a finished batch)."""


class _Control:
    """Stops a running batch: :meth:`halt` cancels every scope opened by :meth:`until_halted`."""

    def __init__(self) -> None:
        self.halted = False
        self.in_flight: anyio.CancelScope | None = None
        self._scopes: set[anyio.CancelScope] = set()

    @contextmanager
    def until_halted(self) -> Iterator[None]:
        scope = anyio.CancelScope()
        if self.halted:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield
        finally:
            self._scopes.discard(scope)

    def halt(self) -> None:
        self.halted = True
        for scope in self._scopes:
            scope.cancel()


class BatchManager:
    """Creates, runs, cancels and lists the batches under ``root``; its work runs inside :meth:`run`."""

    def __init__(
        self, backend: Backend, files: FileStore, root: Path, settings: BatchSettings, cache: PromptCache | None = None
    ) -> None:
        """``cache``: the server's prompt cache, which reports the lines' cached prompt tokens."""
        self._backend = backend
        self._cache = cache
        self._policy = batch_policy(backend)
        self._files = files
        self._root = root
        self._settings = settings
        self._batches: dict[str, BatchRecord] = {}
        self._controls: dict[str, _Control] = {}
        self._line_runs: Counter[str] = Counter()  # by custom_id: the attempt a batch line's faults are drawn for
        self._save_lock = anyio.Lock()
        self._stopping = False
        self._stopped = anyio.Event()
        self._group: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the records, resume unfinished batches, and run batches until :meth:`stop`.

        Ready (``task_status.started()``) once the records are loaded.
        """
        self._batches = await anyio.to_thread.run_sync(self._load)
        async with anyio.create_task_group() as group:
            self._group = group
            for batch in self._batches.values():
                if batch.status not in TERMINAL_BATCH_STATUSES:
                    self._start(batch.id)
            task_status.started()
            await self._stopped.wait()

    def stop(self) -> None:
        """Stop starting lines; in-flight ones get the grace period, then :meth:`run` returns."""
        self._stopping = True
        for control in self._controls.values():
            control.halt()
            if control.in_flight is not None:
                grace = anyio.current_time() + self._settings.shutdown_grace_s
                control.in_flight.deadline = min(control.in_flight.deadline, grace)
        self._stopped.set()

    def get(self, batch_id: str) -> BatchRecord | None:
        """The batch, or None (also for any id that is not a batch id)."""
        return self._batches.get(batch_id) if BATCH_ID.fullmatch(batch_id) else None

    def newest_first(self) -> list[BatchRecord]:
        return sorted(self._batches.values(), key=lambda b: (b.created, b.id), reverse=True)

    async def create(
        self, input_file_id: str, endpoint: str, completion_window: str, metadata: dict[str, str] | None
    ) -> BatchRecord:
        """Record a new batch in ``validating`` and start it."""
        now = time.time()
        window = self._policy.expire_after_s or COMPLETION_WINDOW_S
        batch_id = f"batch_{secrets.token_hex(12)}"
        batch = BatchRecord(batch_id, input_file_id, endpoint, completion_window, metadata, now, now + window)
        await self._save(batch)
        self._start(batch.id)
        return batch

    async def cancel(self, batch_id: str) -> BatchRecord:
        """Move a validating or in-progress batch to ``cancelling``; its runner finishes the job."""
        batch = self._batches[batch_id]
        if batch.status == "cancelling":
            return batch
        if batch.status not in ("validating", "in_progress"):
            raise BatchStateError(f"Cannot cancel a batch with status `{batch.status}`.")
        control = self._controls.get(batch_id)
        batch = await self._save(batch.moved("cancelling"))
        if control is not None:
            control.halt()
        return batch

    def _start(self, batch_id: str) -> None:
        assert self._group is not None, "BatchManager.run() is not running"
        self._controls[batch_id] = _Control()
        self._group.start_soon(self._drive, batch_id, name=f"batch {batch_id}")

    async def _drive(self, batch_id: str) -> None:
        """Advance the batch through its states until it is terminal or the manager stops."""
        control = self._controls[batch_id]
        try:
            while not self._stopping and (status := self._batches[batch_id].status) not in TERMINAL_BATCH_STATUSES:
                if status == "validating":
                    await self._validate(batch_id, control)
                elif status == "in_progress":
                    await self._execute(batch_id, control)
                else:
                    await self._finish(batch_id, "cancelled" if status == "cancelling" else "completed")
        except Exception as exc:
            _log.exception("batch %s failed", batch_id)
            error = LineError("internal_error", f"The server failed to run the batch: {type(exc).__name__}.")
            await self._save(self._batches[batch_id].moved("failed", errors=(error,)))
        finally:
            del self._controls[batch_id]

    async def _input(self, batch: BatchRecord) -> Path | None:
        """The batch's input file; None, with the batch failed, if it was deleted."""
        stored = self._files.get(batch.input_file_id)
        if stored is None:
            error = LineError("missing_input_file", f"The input file `{batch.input_file_id}` was deleted.")
            await self._save(batch.moved("failed", errors=(error,)))
            return None
        return self._files.path(stored)

    async def _validate(self, batch_id: str, control: _Control) -> None:
        batch = self._batches[batch_id]
        if self._policy.stall_validating:
            with control.until_halted():
                await anyio.sleep_forever()
            return
        if (path := await self._input(batch)) is None:
            return
        s = self._settings
        checked = await anyio.to_thread.run_sync(
            lambda: check_input(
                path,
                batch.endpoint,
                max_requests=s.max_requests,
                max_bytes=s.max_file_bytes,
                max_line_bytes=s.max_line_bytes,
            )
        )
        batch = self._batches[batch_id]
        if batch.status != "validating":  # cancelled meanwhile
            return
        if checked.errors:
            await self._save(batch.moved("failed", errors=checked.errors))
        else:
            await self._save(batch.moved("in_progress", total=checked.total, model=checked.model))

    async def _execute(self, batch_id: str, control: _Control) -> None:
        """Run the lines not yet in the results, then wait out the policy's minimum turnaround."""
        log = ResultsLog(self._root / f"{batch_id}.results.ndjson")
        done, completed, failed = await anyio.to_thread.run_sync(log.scan)
        batch = self._batches[batch_id] = replace(self._batches[batch_id], completed=completed, failed=failed)
        if (path := await self._input(batch)) is None:
            return
        expiry = anyio.current_time() + batch.expires - time.time()
        with anyio.CancelScope(deadline=expiry) as in_flight:
            control.in_flight = in_flight
            send, receive = anyio.create_memory_object_stream[Line](0)
            async with log, anyio.create_task_group() as workers:
                for _ in range(self._settings.concurrency):
                    workers.start_soon(self._work, batch_id, receive.clone(), log)
                receive.close()
                async with send:
                    with control.until_halted():
                        async for line in read_lines(path):
                            if line.custom_id not in done:
                                await send.send(line)
            with control.until_halted():
                await anyio.sleep(max(0.0, batch.created + self._policy.min_seconds - time.time()))
        control.in_flight = None
        batch = self._batches[batch_id]
        if self._stopping or batch.status != "in_progress":
            return
        if in_flight.cancelled_caught:
            await self._finish(batch_id, "expired")
        else:
            await self._save(batch.moved("finalizing"))

    async def _work(
        self, batch_id: str, lines: anyio.abc.ObjectReceiveStream[Line], log: ResultsLog
    ) -> None:
        async with lines:
            async for line in lines:
                self._line_runs[line.custom_id] += 1
                output = await run_line(self._backend, self._policy, line, self._line_runs[line.custom_id], self._cache)
                log.append(output)
                batch = self._batches[batch_id]
                if succeeded(output):
                    self._batches[batch_id] = replace(batch, completed=batch.completed + 1)
                else:
                    self._batches[batch_id] = replace(batch, failed=batch.failed + 1)

    async def _finish(self, batch_id: str, status: str) -> None:
        """Write the output and error files from the results, then move to ``status``."""
        batch = self._batches[batch_id]
        log = self._root / f"{batch_id}.results.ndjson"
        stem = batch_id.removeprefix("batch_")
        output, errors = (self._files.root / f".{batch_id}.{kind}" for kind in ("output", "errors"))
        expired_input = None
        if status == "expired" and (stored := self._files.get(batch.input_file_id)) is not None:
            expired_input = self._files.path(stored)
        counts = await anyio.to_thread.run_sync(
            lambda: split_results(log, output, errors, expired_input=expired_input)
        )
        ids: list[str | None] = []
        for path, count, kind in ((output, counts[0], "output"), (errors, counts[1], "error")):
            if count:
                name = f"{batch_id}_{kind}.jsonl"
                file_id = f"file-{stem}{kind}"
                added = await self._files.add(path, filename=name, purpose="batch_output", file_id=file_id)
                ids.append(added.id)
            else:
                await self._files.discard(path)
                ids.append(None)
        batch = self._batches[batch_id].moved(
            status, output_file_id=ids[0], error_file_id=ids[1], completed=counts[0], failed=counts[1]
        )
        await self._save(batch)
        await anyio.to_thread.run_sync(lambda: log.unlink(missing_ok=True))

    async def _save(self, batch: BatchRecord) -> BatchRecord:
        """Make ``batch`` current and write its record (the latest state wins on disk too)."""
        self._batches[batch.id] = batch
        async with self._save_lock:
            current = self._batches[batch.id]
            data = json.dumps(asdict(current)).encode()
            await anyio.to_thread.run_sync(atomic_write, self._root / f"{batch.id}.json", data)
        return batch

    def _load(self) -> dict[str, BatchRecord]:
        self._root.mkdir(parents=True, exist_ok=True)
        records = (
            BatchRecord.from_json(json.loads(path.read_bytes()))
            for path in self._root.glob("batch_*.json")
            if BATCH_ID.fullmatch(path.stem)
        )
        return {batch.id: batch for batch in sorted(records, key=lambda b: b.created)}
