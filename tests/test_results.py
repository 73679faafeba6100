"""Parquet parts: list columns built from flat series keep every row's values, order and nulls."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.results import ResultsWriter, _list_column
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
