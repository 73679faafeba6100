from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.journal import Journal, journal_path, record_to_outcome, repair_torn_tail, scan_journal
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


def test_appends_round_trip_and_the_last_record_wins(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    ok = ChatResult("predict:1", "Drama", "m", Usage(10, 2), 0.5, attempts=2, started_at=1.0, finished_at=2.0)
    failed = Failure("judge:1", "http_500", "boom", status_code=500, attempts=7)
    retried = ChatResult("judge:1", "correct", "j", Usage(5, 1), 0.1)
    journal.append("predict", "1", ok)
    journal.append("judge", "1", failed)
    journal.append("judge", "1", retried)
    journal.close()
    predict = scan_journal(journal_path(tmp_path, "predict")).collect()
    assert record_to_outcome(predict.row(0, named=True)) == ok
    judge = scan_journal(journal_path(tmp_path, "judge")).collect()
    assert judge.height == 1 and record_to_outcome(judge.row(0, named=True)) == retried
    lines = journal_path(tmp_path, "judge").read_text().splitlines()
    assert len(lines) == 2 and '"reason": "http_500"' in lines[0]


def test_reopening_cuts_a_torn_line_and_appends_after_it(tmp_path: Path) -> None:
    path = journal_path(tmp_path, "predict")
    path.parent.mkdir()
    path.write_bytes(b'{"custom_id": "predict:0"}\n{"custom_id": "pre')
    journal = Journal(tmp_path)
    journal.append("predict", "1", Failure("predict:1", "timeout", "t"))
    journal.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith('{"custom_id": "predict:1"')


def test_an_empty_journal_scans_as_an_empty_frame(tmp_path: Path) -> None:
    frame = scan_journal(tmp_path / "missing.ndjson").collect()
    assert frame.height == 0 and frame.schema["row_id"] == pl.String()
