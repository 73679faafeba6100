"""Parquet parts: list columns built from flat series keep every row's values, order and nulls."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.results import ResultsWriter, _in_order, _list_column
from engine.rundir import RunDir
from engine.types import JoinedRow, Usage


def test_list_columns_keep_order_empties_and_nulls() -> None:
    values = [("b", "a"), None, (), ("c",), None, ("a", "b", "c")]
    assert _list_column(values, pl.String()).to_list() == [["b", "a"], None, [], ["c"], None, ["a", "b", "c"]]
    verdicts = [(True, None, False), (), None]
    column = _list_column(verdicts, pl.Boolean())
    assert column.dtype == pl.List(pl.Boolean) and column.to_list() == [[True, None, False], [], None]
    assert _list_column([], pl.String()).to_list() == []


async def test_a_part_round_trips_the_joined_rows(tmp_path: Path) -> None:
    rows = [
        JoinedRow(row_id=str(i), index=i, status="judged", fields={"text": f"t{i}"}, labels=("x", "y")[: i % 3] or None,
                  prediction="x", prediction_valid=True, verdict_text="correct", verdict=i % 2 == 0,
                  ground_truth_correct=None, error=None, predict_tokens=Usage(3, 1), judge_tokens=Usage(4, 1),
                  verdicts=(i % 2 == 0, None), verdict_texts=("correct", None))
        for i in range(7)
    ]
    writer = ResultsWriter(RunDir(tmp_path), ("text",), part_rows=4)
    for row in rows:
        await writer.add(row)
    await writer.flush()
    frame = pl.read_parquet(writer.finalize()).sort("index")
    assert frame["labels"].to_list() == [None, ["x"], ["x", "y"], None, ["x"], ["x", "y"], None]
    assert frame["verdicts"].to_list() == [[i % 2 == 0, None] for i in range(7)]
    assert frame["verdict_texts"].to_list() == [["correct", None]] * 7
    assert frame["inputs"].struct.field("text").to_list() == [f"t{i}" for i in range(7)]


def _joined(index: int) -> JoinedRow:
    return JoinedRow(row_id=f"r{index}", index=index, status="judged", fields={"text": f"t{index}"}, labels=None,
                     prediction="x", prediction_valid=True, verdict_text="correct", verdict=True,
                     ground_truth_correct=None)


async def _finalized(run_dir: Path, parts: list[list[int]]) -> tuple[list[int], list[Path] | None]:
    """The row indices of ``results.parquet`` merged from parts of these rows, and the parts in
    the order ``_in_order`` found (None: they had to be sorted)."""
    writer = ResultsWriter(RunDir(run_dir), ("text",))
    for part in parts:
        for index in part:
            await writer.add(_joined(index))
        await writer.flush()
    ordered = _in_order(writer.parts())
    return pl.read_parquet(writer.finalize())["index"].to_list(), ordered


async def test_parts_in_order_are_concatenated_in_the_order_of_their_rows(tmp_path: Path) -> None:
    # a batch run's: each file's rows in order, the second file's results written first
    merged, ordered = await _finalized(tmp_path, [[4, 5, 7], [0, 1, 2, 3], [8]])
    assert merged == [0, 1, 2, 3, 4, 5, 7, 8]
    assert ordered is not None and [path.name for path in ordered] == ["part-00001.parquet", "part-00000.parquet",
                                                                       "part-00002.parquet"]


async def test_parts_out_of_order_are_sorted(tmp_path: Path) -> None:
    # a realtime run's: rows complete out of order, so parts overlap, or a part is not sorted
    for case, parts in enumerate(([[0, 2, 4], [1, 3, 5]], [[1, 0], [2, 3]], [[3, 4], [4, 5]])):
        merged, ordered = await _finalized(tmp_path / str(case), parts)
        assert ordered is None and merged == sorted(index for part in parts for index in part)
