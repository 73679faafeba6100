from __future__ import annotations

from pathlib import Path

import anyio
import polars as pl

from engine.journal import JournalWriter, journal_path, record_to_outcome, repair_torn_tail, scan_journal
from engine.types import ChatResult, Failure, Usage


def test_torn_last_line_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "j.ndjson"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert repair_torn_tail(path) == len(b'{"a": 3, "b"')
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    assert repair_torn_tail(path) == 0


def test_a_single_torn_line_empties_the_file(tmp_path: Path) -> None:
    path = tmp_path / "j.ndjson"
    path.write_bytes(b'{"half')
    repair_torn_tail(path)
    assert path.read_bytes() == b""


async def test_writer_round_trips_outcomes_and_last_record_wins(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path)
    ok = ChatResult("predict:1", "Drama", "m", Usage(10, 2), 0.5, attempts=2, started_at=1.0, finished_at=2.0)
    failed = Failure("judge:1", "http_500", "boom", status_code=500, attempts=7)
    retried = ChatResult("judge:1", "correct", "j", Usage(5, 1), 0.1)
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        async with writer.send:
            await writer.send.send(("predict", "1", ok))
            await writer.send.send(("judge", "1", failed))
            await writer.send.send(("judge", "1", retried))
    predict = scan_journal(journal_path(tmp_path, "predict")).collect()
    assert record_to_outcome(predict.row(0, named=True)) == ok
    judge = scan_journal(journal_path(tmp_path, "judge")).collect()
    assert judge.height == 1 and record_to_outcome(judge.row(0, named=True)) == retried
    lines = journal_path(tmp_path, "judge").read_text().splitlines()
    assert len(lines) == 2 and '"reason": "http_500"' in lines[0]


def test_an_empty_journal_scans_as_an_empty_frame(tmp_path: Path) -> None:
    frame = scan_journal(tmp_path / "missing.ndjson").collect()
    assert frame.height == 0 and frame.schema["row_id"] == pl.String()
