"""Joined rows -> parquet parts -> ``results.parquet``.

Rows are buffered a few thousand at a time and written as ``results.parts/part-NNNNN.parquet``
(written to a temporary name, then renamed, so a part is whole or absent). At the end the parts
are merged, in data-set order, into ``results.parquet`` by a streaming polars sink, so memory
stays flat however many rows there are. A resumed run keeps the parts of the runs before it.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import polars as pl

from .judges import JUDGE_COLUMNS
from .rundir import RunDir
from .types import JoinedRow

SORT_RANGE = 20_000
ROW_GROUP = 10_000


def results_schema(input_columns: tuple[str, ...]) -> dict[str, pl.DataType]:
    return {
        "row_id": pl.String(),
        "index": pl.Int64(),
        "status": pl.String(),
        "inputs": pl.Struct({name: pl.String() for name in input_columns}) if input_columns else pl.Null(),
        "labels": pl.List(pl.String()),
        "prediction": pl.String(),
        "prediction_valid": pl.Boolean(),
        **JUDGE_COLUMNS,
        "repeat_verdicts": pl.List(pl.Boolean()),
        "repeat_scores": pl.List(pl.Float64()),
        "ground_truth_correct": pl.Boolean(),
        "error": pl.String(),
        "predict_prompt_tokens": pl.Int64(),
        "predict_completion_tokens": pl.Int64(),
        "judge_prompt_tokens": pl.Int64(),
        "judge_completion_tokens": pl.Int64(),
        "predict_latency_s": pl.Float64(),
        "judge_latency_s": pl.Float64(),
    }


def _frame(rows: list[JoinedRow], input_columns: tuple[str, ...], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    columns: dict[str, Any] = {
        "row_id": [row.row_id for row in rows],
        "index": [row.index for row in rows],
        "status": [row.status for row in rows],
        "inputs": [{name: _text(row.fields.get(name)) for name in input_columns} for row in rows]
        if input_columns
        else [None] * len(rows),
        "labels": _list_column([row.labels for row in rows], pl.String()),
        "prediction": [row.prediction for row in rows],
        "prediction_valid": [row.prediction_valid for row in rows],
        "verdict_text": [row.verdict_text for row in rows],
        "verdict": [row.verdict for row in rows],
        "verdicts": _list_column([row.verdicts for row in rows], pl.Boolean()),
        "verdict_texts": _list_column([row.verdict_texts for row in rows], pl.String()),
        "reasoning": [row.reasoning for row in rows],
        "reasonings": _list_column([row.reasonings or None for row in rows], pl.String()),
        "score": [row.score for row in rows],
        "scores": _list_column([row.scores or None for row in rows], pl.Float64()),
        "repeat_verdicts": _list_column([row.repeat_verdicts or None for row in rows], pl.Boolean()),
        "repeat_scores": _list_column([row.repeat_scores or None for row in rows], pl.Float64()),
        "winner": [row.winner for row in rows],
        "winners": _list_column([row.winners or None for row in rows], pl.String()),
        "probability": [row.probability for row in rows],
        "p_correct": [row.p_correct for row in rows],
        "weighted_score": [row.weighted_score for row in rows],
        "ground_truth_correct": [row.ground_truth_correct for row in rows],
        "error": [row.error for row in rows],
        "predict_prompt_tokens": [row.predict_tokens.prompt_tokens for row in rows],
        "predict_completion_tokens": [row.predict_tokens.completion_tokens for row in rows],
        "judge_prompt_tokens": [row.judge_tokens.prompt_tokens for row in rows],
        "judge_completion_tokens": [row.judge_tokens.completion_tokens for row in rows],
        "predict_latency_s": [row.predict_latency_s for row in rows],
        "judge_latency_s": [row.judge_latency_s for row in rows],
    }
    return pl.DataFrame(columns, schema=schema)


def _list_column(values: Sequence[Sequence[Any] | None], inner: pl.DataType) -> pl.Series:
    """A list column from one flat series regrouped by row: polars converts nested Python lists
    an element at a time (measured: 8x slower, most of the cost of a part)."""
    owners = pl.Series([row for row, value in enumerate(values) if value for _ in value], dtype=pl.UInt32())
    items = pl.Series([item for value in values if value for item in value], dtype=inner)
    grouped = pl.DataFrame({"row": owners, "item": items}).group_by("row").agg("item")  # keeps the order in a row
    every = pl.DataFrame({"row": pl.int_range(len(values), eager=True, dtype=pl.UInt32()),
                          "missing": pl.Series([value is None for value in values], dtype=pl.Boolean())})
    return every.join(grouped, on="row", how="left", maintain_order="left").select(
        pl.when(pl.col("missing")).then(None).otherwise(pl.col("item").fill_null(pl.lit([], dtype=pl.List(inner))))
    ).to_series()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class ResultsWriter:
    """Buffers joined rows and writes parquet parts; ``finalize`` merges them."""

    def __init__(self, run_dir: RunDir, input_columns: tuple[str, ...], *, part_rows: int = 5000) -> None:
        self.run_dir = run_dir
        self.parts_dir = run_dir.results_parts
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.input_columns = input_columns
        self.schema = results_schema(input_columns)
        self._part_rows = part_rows
        self._buffer: list[JoinedRow] = []
        self._next_part = 1 + max((int(part.stem.removeprefix("part-")) for part in self.parts()), default=-1)

    def parts(self) -> list[Path]:
        """The parts written so far, by this run and the runs it resumes, in order."""
        return sorted(self.parts_dir.glob("part-*.parquet"))

    def set_aside_damaged(self) -> list[Path]:
        """Rename parts that cannot be read (``.damaged``): their rows are rebuilt from the journal.

        A part is written whole or not at all, so damage comes from outside (a disk fault, a
        copy cut short); its footer, which a cut file lacks, is checked.
        """
        damaged = []
        for part in self.parts():
            try:
                pl.read_parquet_schema(part)
            except (pl.exceptions.PolarsError, OSError):
                aside = part.with_suffix(".damaged")
                os.replace(part, aside)
                damaged.append(aside)
        return damaged

    def conform_parts(self) -> list[Path]:
        """Bring parts written by an earlier version of the engine to this schema (its new
        columns null, in order; each part rewritten whole, then renamed over the old one), so a
        run started before an upgrade resumes; returns the parts rewritten."""
        rewritten = []
        for part in self.parts():
            if dict(pl.read_parquet_schema(part)) == self.schema:
                continue
            frame = pl.read_parquet(part)
            conformed = frame.select(
                pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)
                for name, dtype in self.schema.items()
            )
            temporary = part.with_suffix(".tmp")
            conformed.write_parquet(temporary)
            os.replace(temporary, part)
            rewritten.append(part)
        return rewritten

    def drop_rows(self, row_ids: set[str]) -> int:
        """Remove these rows from the parts (each part rewritten whole, then renamed over the
        old one), so that they can be done again; returns how many were removed."""
        if not row_ids:
            return 0
        removed = 0
        wanted = pl.Series(sorted(row_ids), dtype=pl.String())
        for part in self.parts():
            frame = pl.read_parquet(part)
            kept = frame.filter(~pl.col("row_id").is_in(wanted))
            if kept.height == frame.height:
                continue
            removed += frame.height - kept.height
            if kept.is_empty():
                part.unlink()
                continue
            temporary = part.with_suffix(".tmp")
            kept.write_parquet(temporary)
            os.replace(temporary, part)
        return removed

    def done_row_ids(self) -> pl.LazyFrame | None:
        """Row ids already in parts; None before the first part."""
        parts = self.parts()
        return pl.scan_parquet(parts).select("row_id") if parts else None

    async def add(self, row: JoinedRow) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self._part_rows:
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        path = self.parts_dir / f"part-{self._next_part:05d}.parquet"
        self._next_part += 1
        await anyio.to_thread.run_sync(self._write_part, rows, path)

    def _write_part(self, rows: list[JoinedRow], path: Path) -> None:
        frame = _frame(rows, self.input_columns, self.schema)
        temporary = path.with_suffix(".tmp")
        frame.write_parquet(temporary)
        os.replace(temporary, path)

    def finalize(self) -> Path:
        """Merge the parts into ``results.parquet`` in data-set order.

        Parts that are in order already (each sorted, none overlapping another: a batch run's,
        whose result files come back in the order their requests were written) are concatenated
        by a streaming sink (measured at a million rows: 0.6 s against 2.9 s). Otherwise one
        sort of everything would hold every row in memory at once. Instead each range of
        ``SORT_RANGE`` row indices is sorted on its own into a file (the parts' statistics let a
        range skip the row groups it cannot contain), and the sorted ranges are concatenated by
        a streaming sink: memory stays flat however many rows there are (measured: 48 MB more for
        100k rows, 52 MB for 400k, against 59 and 152 MB for one sort).
        """
        target = self.run_dir.results_file
        parts = self.parts()
        temporary = target.with_suffix(".tmp")
        if not parts:
            pl.DataFrame(schema=self.schema).write_parquet(temporary)
            os.replace(temporary, target)
            return target
        if (ordered := _in_order(parts)) is not None:
            pl.scan_parquet(ordered).sink_parquet(temporary, row_group_size=ROW_GROUP)
            os.replace(temporary, target)
            return target
        scan = pl.scan_parquet(parts)
        first, last = scan.select(pl.col("index").min().alias("first"), pl.col("index").max().alias("last")).collect().row(0)
        with tempfile.TemporaryDirectory(dir=self.run_dir.path, prefix=".sorting-") as directory:
            ranges = []
            for start in range(first, last + 1, SORT_RANGE):
                path = Path(directory) / f"range-{start:012d}.parquet"
                chunk = scan.filter(pl.col("index").is_between(start, start + SORT_RANGE - 1)).sort("index")
                chunk.sink_parquet(path, row_group_size=ROW_GROUP)
                ranges.append(path)
            pl.scan_parquet(ranges).sink_parquet(temporary, row_group_size=ROW_GROUP)
        os.replace(temporary, target)
        return target


def _in_order(parts: list[Path]) -> list[Path] | None:
    """The parts in the order whose concatenation is in data-set order, if there is one: each
    part sorted by row index and none overlapping another; None if they must be sorted. (Read a
    part at a time: one scan of them all with a column naming each row's file peaked 127 MB
    higher at a million rows.)"""
    spans = []
    for part in parts:
        index = pl.read_parquet(part, columns=["index"])["index"]
        if not index.is_sorted():
            return None
        if len(index):
            spans.append((index[0], index[-1], part))
    spans.sort()
    if any(following[0] <= span[1] for span, following in itertools.pairwise(spans)):
        return None
    return [part for _, _, part in spans]
