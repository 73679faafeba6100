"""The append-only NDJSON journal: one line per finished call, the run's source of truth.

``journal/predict.ndjson`` and ``journal/judge.ndjson`` receive every result (success or final
failure) the moment it is known. A single writer task drains a memory stream and appends all
waiting lines in one write, so a SIGKILL loses at most what was in flight. A torn last line (a
kill mid-write) is cut off when the journal is reopened.

Files go through ``anyio.open_file`` (a worker thread per write, like aiofiles, which would tie
the engine to asyncio: it calls ``asyncio.get_running_loop``, and the library runs on trio too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import polars as pl
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .errors import JournalError
from .types import STAGES, ChatResult, Failure, Outcome, StageName, Usage

JOURNAL_SCHEMA: dict[str, pl.DataType] = {
    "custom_id": pl.String(),
    "row_id": pl.String(),
    "ok": pl.Boolean(),
    "content": pl.String(),
    "model": pl.String(),
    "prompt_tokens": pl.Int64(),
    "completion_tokens": pl.Int64(),
    "latency_s": pl.Float64(),
    "attempts": pl.Int64(),
    "started_at": pl.Float64(),
    "finished_at": pl.Float64(),
    "reason": pl.String(),
    "message": pl.String(),
    "status_code": pl.Int64(),
}


def outcome_to_record(row_id: str, outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, ChatResult):
        return {
            "custom_id": outcome.custom_id,
            "row_id": row_id,
            "ok": True,
            "content": outcome.content,
            "model": outcome.model,
            "prompt_tokens": outcome.usage.prompt_tokens,
            "completion_tokens": outcome.usage.completion_tokens,
            "latency_s": None if outcome.latency_s is None else round(outcome.latency_s, 6),
            "attempts": outcome.attempts,
            "started_at": outcome.started_at,
            "finished_at": outcome.finished_at,
        }
    return {
        "custom_id": outcome.custom_id,
        "row_id": row_id,
        "ok": False,
        "reason": outcome.reason,
        "message": outcome.message,
        "status_code": outcome.status_code,
        "attempts": outcome.attempts,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
    }


def record_to_outcome(record: dict[str, Any]) -> Outcome:
    """Inverse of ``outcome_to_record`` for a record read back from the journal."""
    if record["ok"]:
        return ChatResult(
            custom_id=record["custom_id"],
            content=record["content"] or "",
            model=record["model"] or "",
            usage=Usage(record["prompt_tokens"] or 0, record["completion_tokens"] or 0),
            latency_s=record["latency_s"],
            attempts=record["attempts"] or 1,
            started_at=record["started_at"] or 0.0,
            finished_at=record["finished_at"] or 0.0,
        )
    return Failure(
        custom_id=record["custom_id"],
        reason=record["reason"] or "unknown",
        message=record["message"] or "",
        status_code=record["status_code"],
        attempts=record["attempts"] or 1,
        started_at=record["started_at"] or 0.0,
        finished_at=record["finished_at"] or 0.0,
    )


def journal_path(run_dir: Path, stage: StageName) -> Path:
    return run_dir / "journal" / f"{stage}.ndjson"


def repair_torn_tail(path: Path) -> int:
    """Cut a partial last line left by a crash mid-write; returns the bytes removed."""
    if not path.exists():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        block = 1 << 16
        position = size
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            newline = handle.read(position - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        else:
            keep = 0
        handle.truncate(keep)
        return size - keep


def scan_journal(path: Path) -> pl.LazyFrame:
    """The journal as a frame; the last record per ``custom_id`` wins."""
    if not path.exists() or path.stat().st_size == 0:
        return pl.LazyFrame(schema=JOURNAL_SCHEMA)
    frame = pl.scan_ndjson(path, schema=JOURNAL_SCHEMA)
    return frame.unique(subset="custom_id", keep="last", maintain_order=True)


class JournalWriter:
    """The one task that appends to the journal files. Send ``(stage, row_id, outcome)``."""

    def __init__(self, run_dir: Path, *, buffer: int = 256) -> None:
        self.run_dir = run_dir
        (run_dir / "journal").mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            repair_torn_tail(journal_path(run_dir, stage))
        self.send, self._receive = anyio.create_memory_object_stream[tuple[StageName, str, Outcome]](buffer)

    async def run(self) -> None:
        """Append until every clone of ``send`` is closed.

        Shielded from cancellation: when a run is cancelled (Ctrl-C, a rejected key), results
        that already arrived are paid for, so the writer keeps writing until the pipeline, itself
        cancelled, closes its end of the stream.
        """
        files: dict[str, Any] = {}
        with anyio.CancelScope(shield=True):
            try:
                for stage in STAGES:
                    files[stage] = await anyio.open_file(journal_path(self.run_dir, stage), "a", encoding="utf-8")
                async with self._receive:
                    await self._drain(self._receive, files)
            except BaseException as exc:
                await _close_all(files, ignore_errors=True)  # a failed disk fails the last flush too
                if isinstance(exc, OSError):
                    raise self._error(exc) from exc
                raise
            try:
                await _close_all(files, ignore_errors=False)
            except OSError as exc:
                raise self._error(exc) from exc

    def _error(self, exc: OSError) -> JournalError:
        return JournalError(f"cannot write the journal in {self.run_dir / 'journal'}: {exc.strerror or exc}")

    @classmethod
    async def _drain(cls, receive: MemoryObjectReceiveStream[tuple[StageName, str, Outcome]], files: dict[str, Any]) -> None:
        async for first in receive:
            await cls._drain_waiting(receive, files, first)

    @staticmethod
    async def _drain_waiting(
        receive: MemoryObjectReceiveStream[tuple[StageName, str, Outcome]],
        files: dict[str, Any],
        first: tuple[StageName, str, Outcome] | None = None,
    ) -> None:
        """Write ``first`` and everything already waiting in the stream, one write per file."""
        lines: dict[str, list[str]] = {"predict": [], "judge": []}
        item = first
        while True:
            if item is not None:
                stage, row_id, outcome = item
                lines[stage].append(json.dumps(outcome_to_record(row_id, outcome), ensure_ascii=False))
            try:
                item = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        for name, batch in lines.items():
            if batch:
                await files[name].write("\n".join(batch) + "\n")
                await files[name].flush()


async def _close_all(files: dict[str, Any], *, ignore_errors: bool) -> None:
    for handle in files.values():
        try:
            await handle.aclose()
        except OSError:
            if not ignore_errors:
                raise


JournalSend = MemoryObjectSendStream[tuple[StageName, str, Outcome]]
