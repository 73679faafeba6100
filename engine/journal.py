"""The append-only NDJSON journal: one line per finished call, the run's source of truth.

``journal/predict.ndjson`` and ``journal/judge.ndjson`` receive every result (success or final
failure) the moment it is known: ``Journal.append`` writes the line straight to an ``O_APPEND``
descriptor, synchronously, before the caller goes on. Nothing is buffered in the process, so a
SIGKILL loses at most the calls in flight: a call's concurrency slot is given back in the same
step, without yielding, as its result is written. A line is a few hundred bytes into the page
cache (microseconds); a worker thread per line (aiofiles, ``anyio.open_file``) costs more than the
write and would open a window between a result and its line. A torn last line (a kill
mid-write) is cut off when the journal is reopened.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from . import fastjson
from .errors import JournalError
from .rundir import RunDir
from .types import STAGES, ChatResult, Failure, Outcome, Row, StageName, TokenLogprob, Usage

_FOLD_EVERY = 10_000  # records handed to ``Journal``'s fold at a time (a fold costs about 10 ms however few)

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
    "rate_limited": pl.Int64(),
    "fingerprint": pl.String(),
    "cached": pl.Boolean(),
    "logprobs": pl.String(),  # a judge's answer token: [token, logprob, [[alternative, logprob], ...]] as JSON
    "cached_tokens": pl.Int64(),  # of prompt_tokens, read from the provider's prompt cache (absent: none)
    "cache_write_tokens": pl.Int64(),  # of prompt_tokens, written to it (absent: none)
}


def outcome_to_record(row: Row, outcome: Outcome) -> dict[str, Any]:
    """The journal line of ``outcome``: ``attempts`` is every request it cost (the figures of a
    run are summed from them), ``fingerprint`` the row's when it was asked."""
    if isinstance(outcome, ChatResult):
        return {
            "custom_id": outcome.custom_id,
            "row_id": row.row_id,
            "ok": True,
            "content": outcome.content,
            "model": outcome.model,
            "prompt_tokens": outcome.usage.prompt_tokens,
            "completion_tokens": outcome.usage.completion_tokens,
            "latency_s": None if outcome.latency_s is None else round(outcome.latency_s, 6),
            "attempts": outcome.attempts,
            "started_at": outcome.started_at,
            "finished_at": outcome.finished_at,
            "rate_limited": outcome.rate_limited,
            "fingerprint": row.fingerprint,
            **({"cached": True} if outcome.cached else {}),
            **({"cached_tokens": outcome.usage.cached_tokens} if outcome.usage.cached_tokens else {}),
            **({"cache_write_tokens": outcome.usage.cache_write_tokens} if outcome.usage.cache_write_tokens else {}),
            **({"logprobs": json.dumps([[t.token, t.logprob, [list(top) for top in t.top]] for t in outcome.logprobs],
                                       ensure_ascii=False)} if outcome.logprobs else {}),
        }
    return {
        "custom_id": outcome.custom_id,
        "row_id": row.row_id,
        "ok": False,
        "reason": outcome.reason,
        "message": outcome.message,
        "status_code": outcome.status_code,
        "attempts": outcome.attempts,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
        "rate_limited": outcome.rate_limited,
        "fingerprint": row.fingerprint,
    }


def record_to_outcome(record: dict[str, Any]) -> Outcome:
    """Inverse of ``outcome_to_record`` for a record read back from the journal."""
    if record["ok"]:
        return ChatResult(
            custom_id=record["custom_id"],
            content=record["content"] or "",
            model=record["model"] or "",
            usage=Usage(record["prompt_tokens"] or 0, record["completion_tokens"] or 0,
                        record.get("cached_tokens") or 0, record.get("cache_write_tokens") or 0),
            latency_s=record["latency_s"],
            attempts=1 if record["attempts"] is None else record["attempts"],  # a cached answer made none
            started_at=record["started_at"] or 0.0,
            finished_at=record["finished_at"] or 0.0,
            rate_limited=record.get("rate_limited") or 0,
            cached=bool(record.get("cached")),
            logprobs=_logprobs(record.get("logprobs")),
        )
    return Failure(
        custom_id=record["custom_id"],
        reason=record["reason"] or "unknown",
        message=record["message"] or "",
        status_code=record["status_code"],
        attempts=record["attempts"] or 1,
        started_at=record["started_at"] or 0.0,
        finished_at=record["finished_at"] or 0.0,
        rate_limited=record.get("rate_limited") or 0,
    )


def _logprobs(text: str | None) -> tuple[TokenLogprob, ...] | None:
    if not text:
        return None
    return tuple(
        TokenLogprob(token, logprob, tuple((alternative, value) for alternative, value in top))
        for token, logprob, top in json.loads(text)
    )


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


def journal_frames(
    path: Path, columns: tuple[str, ...], *, block_bytes: int = 4 << 20, end: int | None = None
) -> Iterator[pl.DataFrame]:
    """Every record of a journal file (of its first ``end`` bytes), ``columns`` only, a few MB of
    lines at a time.

    For whatever reads a whole journal (the end-of-run sums, resume), so its memory stays flat
    whatever the size of the journal: polars' ``scan_ndjson`` maps the whole file.
    """
    if not path.exists() or end == 0:
        return
    schema = {name: JOURNAL_SCHEMA[name] for name in columns}
    left = path.stat().st_size if end is None else end
    with path.open("rb") as journal:
        rest = b""
        while left > 0 and (block := journal.read(min(block_bytes, left))):
            left -= len(block)
            data = rest + block
            whole = data.rfind(b"\n") + 1
            rest = data[whole:]
            if whole:
                yield pl.read_ndjson(io.BytesIO(data[:whole]), schema=schema)
        if rest.strip():
            yield pl.read_ndjson(io.BytesIO(rest), schema=schema)


class EventLog:
    """An append-only NDJSON file of events (batch file and batch ids, session starts and ends):
    each line is stamped ``at`` and synced to disk before ``append`` returns. Reading skips a
    torn last line left by a crash mid-write."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, event: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({**event, "at": time.time()}) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        events = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


def has_records(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def check_journal(path: Path) -> None:
    """Raise ``JournalError`` naming the first line of ``path`` that is not a journal record.

    Polars parses the file a few MB at a time (``journal_frames``: read whole, a million-row
    journal took its size in memory); only when that fails are the lines read in Python to say
    which one. A torn last line is not damage: ``repair_torn_tail`` cuts it on reopening.
    """
    if not has_records(path):
        return
    try:
        nulls = sum(
            frame["custom_id"].null_count() + frame["ok"].null_count() for frame in journal_frames(path, ("custom_id", "ok"))
        )
    except pl.exceptions.PolarsError:
        nulls = 1
    if not nulls:
        return
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip() and not _is_record(line):
                raise JournalError(
                    f"{path}: line {number} is not a journal record ({line.strip()[:60]!r}): delete that line "
                    "(its call is made again) or restore the file, then resume"
                )


_PYTHON_TYPES: dict[type[pl.DataType], tuple[type, ...]] = {
    pl.String: (str,), pl.Boolean: (bool,), pl.Int64: (int,), pl.Float64: (int, float),
}


def _is_record(line: str) -> bool:
    """A JSON object with a custom_id and ok, and every known field of its schema's type."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str) or not isinstance(record.get("ok"), bool):
        return False
    for name, value in record.items():
        dtype = JOURNAL_SCHEMA.get(name)
        if value is None or dtype is None:
            continue
        allowed = _PYTHON_TYPES[type(dtype)]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            return False
    return True


def scan_journal(path: Path, *, without: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """The journal as a frame; the last record per ``custom_id`` wins. ``without``: a frame of
    ``row_id``s whose records are left out (a resumed run's finished rows).

    The file is read a few MB at a time (``journal_frames``) and each block keeps only the
    records of rows not ``without``: what is held is the unfinished rows' records and the
    finished ids, not the file (``scan_ndjson`` maps it whole: a resumed million-row run's
    journals added their size, 150 MB each, to its peak RSS).
    """
    finished = None if without is None else without.select("row_id").unique().collect(engine="streaming")
    kept = []
    for frame in journal_frames(path, tuple(JOURNAL_SCHEMA)):
        if finished is not None:
            frame = frame.join(finished, on="row_id", how="anti", maintain_order="left")
        kept.append(frame)
    records = pl.concat(kept) if kept else pl.DataFrame(schema=JOURNAL_SCHEMA)
    return records.lazy().unique(subset="custom_id", keep="last", maintain_order=True)


def journaled_among(path: Path, custom_ids: list[str]) -> set[str]:
    """Those of ``custom_ids`` that have an outcome in the journal file ``path``: one pass over
    its ids a few MB at a time, holding only the ones asked about (a resumed batch stage asks a
    request file at a time, so it never holds every id of a large journal)."""
    if not custom_ids:
        return set()
    wanted = pl.Series(custom_ids, dtype=pl.String())
    found: set[str] = set()
    for frame in journal_frames(path, ("custom_id",)):
        found.update(frame["custom_id"].filter(frame["custom_id"].is_in(wanted)).to_list())
    return found


class Journal:
    """The run's journal files, open for appending; ``close`` when the run ends.

    ``fold(stage, frame)``, if given, receives this session's records as frames of ``columns``, a
    block of ``_FOLD_EVERY`` at a time and the rest on ``fold_rest`` (the end-of-run sums,
    ``engine.journal_totals``, gathered without reading the files back); ``earlier_bytes`` says
    how much of each file earlier sessions wrote.
    """

    def __init__(
        self,
        run_dir: RunDir,
        *,
        fold: Callable[[StageName, pl.DataFrame], None] | None = None,
        columns: tuple[str, ...] = (),
    ) -> None:
        self.run_dir = run_dir
        self._descriptors: dict[str, int] = {}
        self.earlier_bytes: dict[str, int] = {}
        self._fold = fold
        self._schema = {name: JOURNAL_SCHEMA[name] for name in columns}
        # This session's records not folded yet, a list per column: a dict per record cost polars
        # more to read and the collector more to keep (the fold's share: 9 -> 1 us a record).
        self._unfolded: dict[StageName, dict[str, list[Any]]] = {stage: self._no_records() for stage in STAGES}
        self._unfolded_count: dict[StageName, int] = dict.fromkeys(STAGES, 0)
        try:
            run_dir.journal_dir.mkdir(parents=True, exist_ok=True)
            for stage in STAGES:
                path = run_dir.journal(stage)
                repair_torn_tail(path)
                self._descriptors[stage] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self.earlier_bytes[stage] = os.fstat(self._descriptors[stage]).st_size
        except OSError as exc:
            self.close()
            raise self._error(exc) from exc

    def append(self, stage: StageName, row: Row, outcome: Outcome) -> None:
        record = outcome_to_record(row, outcome)
        data = fastjson.dumps(record) + b"\n"
        try:
            written = os.write(self._descriptors[stage], data)
            while written < len(data):  # a short write: the rest, or the error that caused it
                written += os.write(self._descriptors[stage], data[written:])
        except OSError as exc:
            raise self._error(exc) from exc
        if self._fold is not None:
            for name, values in self._unfolded[stage].items():
                values.append(record.get(name))
            self._unfolded_count[stage] += 1
            if self._unfolded_count[stage] >= _FOLD_EVERY:
                self._fold_block(stage)

    def fold_rest(self) -> None:
        """Hand ``fold`` the records it has not had yet."""
        for stage in STAGES:
            self._fold_block(stage)

    def _no_records(self) -> dict[str, list[Any]]:
        return {name: [] for name in self._schema}

    def _fold_block(self, stage: StageName) -> None:
        records, self._unfolded[stage] = self._unfolded[stage], self._no_records()
        count, self._unfolded_count[stage] = self._unfolded_count[stage], 0
        if count and self._fold is not None:
            self._fold(stage, pl.DataFrame(records, schema=self._schema))

    def close(self) -> None:
        for descriptor in self._descriptors.values():
            os.close(descriptor)
        self._descriptors.clear()

    def _error(self, exc: OSError) -> JournalError:
        return JournalError(f"cannot write the journal in {self.run_dir.journal_dir}: {exc.strerror or exc}")
