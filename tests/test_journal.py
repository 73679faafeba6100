from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from engine.errors import JournalError
from engine.journal import Journal, check_journal, journaled_among, record_to_outcome, repair_torn_tail, scan_journal
from engine.rundir import RunDir
from engine.types import ChatResult, Failure, Row, Usage, row_fingerprint

ROW = Row("1", 0, {"text": "a film"}, ("Drama",), row_fingerprint({"text": "a film"}, ("Drama",)))


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
    journal = Journal(RunDir(tmp_path))
    ok = ChatResult("predict:1", "Drama", "m", Usage(10, 2), 0.5, attempts=3, started_at=1.0, finished_at=2.0,
                    rate_limited=1)
    failed = Failure("judge:1", "http_500", "boom", status_code=500, attempts=7)
    retried = ChatResult("judge:1", "correct", "j", Usage(5, 1), 0.1)
    journal.append("predict", ROW, ok)
    journal.append("judge", ROW, failed)
    journal.append("judge", ROW, retried)
    journal.close()
    predict = scan_journal(RunDir(tmp_path).journal("predict")).collect()
    assert record_to_outcome(predict.row(0, named=True)) == ok
    assert predict["fingerprint"].to_list() == [ROW.fingerprint]
    judge = scan_journal(RunDir(tmp_path).journal("judge")).collect()
    assert judge.height == 1 and record_to_outcome(judge.row(0, named=True)) == retried
    lines = RunDir(tmp_path).journal("judge").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["reason"] == "http_500"


def test_reopening_cuts_a_torn_line_and_appends_after_it(tmp_path: Path) -> None:
    path = RunDir(tmp_path).journal("predict")
    path.parent.mkdir()
    path.write_bytes(b'{"custom_id": "predict:0"}\n{"custom_id": "pre')
    journal = Journal(RunDir(tmp_path))
    journal.append("predict", ROW, Failure("predict:1", "timeout", "t"))
    journal.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["custom_id"] == "predict:1"


def test_an_empty_journal_scans_as_an_empty_frame(tmp_path: Path) -> None:
    frame = scan_journal(tmp_path / "missing.ndjson").collect()
    assert frame.height == 0 and frame.schema["row_id"] == pl.String()


def test_the_fingerprint_is_of_the_row_text_and_labels() -> None:
    assert row_fingerprint({"a": 1, "b": None}, ["x"]) == row_fingerprint({"a": "1", "b": None}, ("x",))
    assert row_fingerprint({"a": "1"}, None) != row_fingerprint({"a": "1"}, ())
    assert row_fingerprint({"a": "1", "b": "2"}, None) != row_fingerprint({"a": "2", "b": "1"}, None)


@pytest.mark.parametrize("bad", ["garbage", '{"custom_id": "predict:2", "ok": tru', "[1, 2]", '{"ok": true}',
                                 '{"custom_id": "predict:2", "ok": "yes"}'])
def test_a_damaged_line_is_named_with_what_to_do(tmp_path: Path, bad: str) -> None:
    path = RunDir(tmp_path).journal("predict")
    path.parent.mkdir()
    good = json.dumps({"custom_id": "predict:1", "row_id": "1", "ok": True, "content": "Drama"})
    path.write_text(f"{good}\n{good}\n{bad}\n{good}\n")
    with pytest.raises(JournalError) as caught:
        check_journal(path)
    message = str(caught.value)
    assert f"{path}: line 3 is not a journal record" in message and "delete that line" in message
    assert "\n" not in message


def test_a_sound_journal_passes_the_check(tmp_path: Path) -> None:
    journal = Journal(RunDir(tmp_path))
    journal.append("predict", ROW, Failure("predict:1", "timeout", "t"))
    journal.close()
    check_journal(RunDir(tmp_path).journal("predict"))
    check_journal(RunDir(tmp_path).journal("judge"))  # empty


def test_a_stage_is_asked_which_of_some_ids_are_journaled(tmp_path: Path) -> None:
    """What a resumed batch stage asks of the journal, a request file at a time."""
    run_dir = RunDir(tmp_path)
    journal = Journal(run_dir)
    for index in range(50):
        row = Row(str(index), index, {"text": "t"})
        journal.append("judge", row, ChatResult(f"judge:{index}", "correct", "m", Usage(1, 1), 0.1))
    journal.close()
    asked = [f"judge:{index}" for index in range(40, 60)]
    assert journaled_among(run_dir.journal("judge"), asked) == {f"judge:{index}" for index in range(40, 50)}
    assert journaled_among(run_dir.journal("judge"), []) == set()
    assert journaled_among(run_dir.journal("predict"), asked) == set()  # an empty journal


_PEAK_GROWTH = """
import json, sys
from pathlib import Path
import polars as pl
from engine.journal import check_journal, journaled_among, scan_journal

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

def peak_growth(read):  # MB over the RSS before: the peak is reset first (clear_refs 5)
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS")
    read()
    return status("VmHWM") - before

finished = pl.LazyFrame({"row_id": [str(index) for index in range(int(sys.argv[3]))]})
readers = {
    "scan_journal": lambda path: scan_journal(path, without=finished).collect(),
    "journaled_among": lambda path: journaled_among(path, ["judge:0", "judge:-1"]),
    "check_journal": check_journal,
}
small, large = Path(sys.argv[1]), Path(sys.argv[2])
for read in readers.values():
    read(small)  # polars' pools and the allocator's arenas are set up before anything is measured
print(json.dumps({name: [peak_growth(lambda: read(small)), peak_growth(lambda: read(large))]
                  for name, read in readers.items()}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS is reset through Linux's /proc")
def test_reading_a_journal_holds_a_few_mb_of_it_whatever_its_size(tmp_path: Path) -> None:
    """Resume reads every journal line (its finished rows' records left out, the batch stage's
    ids asked about, damage looked for), a few MB at a time: polars' scan_ndjson mapped the whole
    file, so a resumed million-row run's peak RSS grew by its journals' size (2 x 150 MB).

    Told apart by the growth of the peak from a 48 MB journal to one twice its size, in a fresh
    process: the file's size before (about 48 MB), a few MB of noise after."""
    rows = 160_000
    line = ('{{"custom_id": "judge:{0}", "row_id": "{0}", "ok": true, "content": "correct", "model": "sim:large", '
            '"prompt_tokens": 39, "completion_tokens": 2, "latency_s": 0.005039, "attempts": 1, '
            '"started_at": 1796341027.5138133, "finished_at": 1796341027.5227575, "rate_limited": 0, '
            '"fingerprint": "42452e96404ff16e", "padding": "{1}"}}\n')
    lines = "".join(line.format(index, "x" * 40) for index in range(rows)).encode()
    small, large = tmp_path / "small.ndjson", tmp_path / "large.ndjson"
    small.write_bytes(lines)
    large.write_bytes(lines + lines)
    del lines
    child = subprocess.run([sys.executable, "-c", _PEAK_GROWTH, str(small), str(large), str(rows - 10)],
                           capture_output=True, text=True, check=True)
    growth = json.loads(child.stdout)
    size_mb = small.stat().st_size / 2**20
    assert size_mb > 45
    for name, (from_small, from_large) in growth.items():
        assert from_large - from_small < size_mb / 2, (name, growth, size_mb)
