"""The data set: a polars lazy scan of csv, parquet or ndjson with ids, labels and sampling.

Nothing here knows what the rows are about. Every column is read as text (csv is read without
type inference) because prompts are text. Row ids are the ``id_column`` when set, else the
row's 0-based position in the file; either way they are unique and stable across runs, which is
what makes ``custom_id`` a join key and resume possible. A row whose label cell holds no label
(empty, blanks, separators only, an empty list) has ``labels`` None: no ground truth.

Data errors name the file and where in it: ``line N`` (1-based, the header counted) in csv and
ndjson files, ``row N (0-based)`` in parquet files, which have no lines.
"""

from __future__ import annotations

import csv
import itertools
import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from .config import DatasetConfig
from .errors import ConfigError
from .types import Row, row_fingerprint

ROW_ID = "__row_id"
ROW_INDEX = "__row_index"
LABELS = "__labels"
ROW_GROUP = 2048
STAGING_PREFIX = "engine-dataset-"


def _scan(path: Path, file_format: str) -> pl.LazyFrame:
    if file_format == "csv":
        return pl.scan_csv(path, infer_schema=False, encoding="utf8", missing_columns="raise")
    if file_format == "parquet":
        return pl.scan_parquet(path)
    return pl.scan_ndjson(path, infer_schema_length=1000)


class Dataset:
    """A validated, sampled view of the data file. Rows stream out in chunks.

    The selected rows are written once, by a streaming sink, to a parquet file in a temporary
    directory (``TMPDIR``): the data file is parsed once, and the validation and the row feed
    then read row groups, in bounded memory whatever the size of the file.
    """

    def __init__(
        self, config: DatasetConfig, *, label_set: tuple[str, ...] = (), where: Callable[[str], str] = str
    ) -> None:
        """``where`` names a config field in messages (``TaskConfig.where``: with the config's file)."""
        self.config = config
        self.path = config.path
        if not self.path.exists():
            raise ConfigError(f"{where('dataset.path')}: {self.path}: data file not found")
        self.format = config.resolved_format
        if self.path.stat().st_size == 0:
            raise ConfigError(f"{self.path}: the file is empty")
        if self.format == "csv":
            _check_csv(self.path, _records_read(config))
        scan = _scan(self.path, self.format)
        try:
            schema = scan.collect_schema()
        except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.path}: cannot read the data file: {_first_line(exc)}") from None
        self.columns: list[str] = schema.names()
        for field, column in (("id_column", config.id_column), ("label_column", config.label_column)):
            if column is not None and column not in self.columns:
                raise ConfigError(
                    f"{where(f'dataset.{field}')} = {column!r} is not a column of {self.path} "
                    f"(columns: {', '.join(self.columns)})"
                )
        self.has_labels = config.label_column is not None
        self._label_lists = config.label_column is not None and isinstance(schema[config.label_column], pl.List)
        self._label_set = label_set
        _remove_orphans()
        staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-")
        weakref.finalize(self, shutil.rmtree, staging, ignore_errors=True)  # removed with the Dataset
        self._staging = Path(staging)
        staged = self._staging / "rows.parquet"
        try:
            self._select(scan).sink_parquet(staged, row_group_size=ROW_GROUP)
        except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
            problem = _first_line(exc)
            if "os error" in problem:  # the disk, not the data: most likely the staged copy
                problem = f"{problem} (reading the file or writing its staged copy in {staging})"
            raise ConfigError(f"{self.path}: cannot read the data file: {problem}") from None
        self.frame = pl.scan_parquet(staged)
        self._owed_files = itertools.count()
        self.n_rows = self._validate()

    def _select(self, scan: pl.LazyFrame) -> pl.LazyFrame:
        config = self.config
        frame = scan.with_row_index(ROW_INDEX)
        row_id = pl.col(config.id_column).cast(pl.String) if config.id_column else pl.col(ROW_INDEX).cast(pl.String)
        frame = frame.with_columns(row_id.alias(ROW_ID))
        if config.label_column:
            cell = pl.col(config.label_column)
            items = cell.cast(pl.List(pl.String)) if self._label_lists else cell.cast(pl.String).str.split(config.label_separator)
            labels = items.list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))
            frame = frame.with_columns(pl.when(labels.list.len() > 0).then(labels).alias(LABELS))  # none: no ground truth
        if config.head:
            frame = frame.head(config.head)
        elif config.tail:
            frame = frame.tail(config.tail)
        elif config.sample:
            shuffled = frame.sort(pl.col(ROW_INDEX).hash(config.seed))
            frame = shuffled.head(config.sample).sort(ROW_INDEX)
        if config.limit:
            frame = frame.head(config.limit)
        return frame

    def _validate(self) -> int:
        """Row count, ids present and unique, labels inside the label set (the file itself was
        parsed whole by the staging sink, so bad bytes have already been reported)."""
        row_id = pl.col(ROW_ID)
        checks = [
            pl.len().alias("n"),
            # Distinct 64-bit hashes: a set of 8-byte values instead of every id string.
            row_id.hash().n_unique().alias("distinct"),
            (row_id.is_null() | (row_id.str.strip_chars() == "")).arg_true().first().alias("empty_id"),
        ]
        summary = self.frame.select(checks).collect(engine="streaming").row(0, named=True)
        if not summary["n"]:
            raise ConfigError(f"{self.path}: the file has {'a header and ' if self.format == 'csv' else ''}no rows")
        column = self.config.id_column
        if summary["empty_id"] is not None:
            raise ConfigError(
                f"{self.path}: {self._position(summary['empty_id'])}: the id in dataset.id_column {column!r} is empty; "
                "give every row an id or leave id_column unset"
            )
        if summary["distinct"] < summary["n"]:  # a repeated id, or (once in 2^64) two ids with one hash
            duplicates = self.frame.filter(~row_id.is_first_distinct()).select(ROW_INDEX, ROW_ID).head(1).collect()
            if duplicates.height:
                index, repeated = duplicates.row(0)
                first = self.frame.filter(row_id == repeated).select(ROW_INDEX).head(1).collect().item()
                raise ConfigError(
                    f"{self.path}: {self._position(index)}: id {repeated!r} in dataset.id_column {column!r} is not "
                    f"unique (first at {self._position(first)}); choose a unique column or leave id_column unset"
                )
        if self.has_labels and self._label_set:
            unknown = (
                self.frame.select(ROW_INDEX, LABELS)
                .explode(LABELS)
                .filter(pl.col(LABELS).is_not_null() & ~pl.col(LABELS).is_in(self._label_set))
                .head(1)
                .collect()
            )
            if unknown.height:
                index, label = unknown.row(0)
                raise ConfigError(
                    f"{self.path}: {self._position(index)}: label {label!r} in column {self.config.label_column!r} "
                    f"is not in the task's label set; add it to `labels` or fix label_separator"
                )
        return int(summary["n"])

    def _position(self, index: int) -> str:
        """Where the row at 0-based ``index`` is in the file: ``line N`` or, in parquet, ``row N (0-based)``.

        Found by reading the file up to that row: only on the way to an error message."""
        if self.format == "parquet":
            return f"row {index} (0-based)"
        if self.format == "csv":
            line, _ = next(itertools.islice(_csv_records(self.path), index + 1, None))  # record 0 is the header
            return f"line {line}"
        with self.path.open("rb") as lines:  # ndjson: polars skips blank lines
            numbered = (number for number, text in enumerate(lines, 1) if text.strip())
            return f"line {next(itertools.islice(numbered, index, None))}"

    def rows(
        self,
        columns: tuple[str, ...],
        *,
        exclude: pl.LazyFrame | None = None,
        attach: dict[str, pl.LazyFrame] | None = None,
        chunk_size: int = 2048,
    ) -> Iterator[tuple[Row, dict[str, dict[str, Any] | None]]]:
        """Rows in file order with the given columns as fields.

        ``exclude`` is a frame with a ``row_id`` column: those rows are anti-joined away (work
        already done). Each frame in ``attach`` (keyed by ``row_id``, at most one record per row)
        is left-joined, and its record comes with the row, or None where the row has none.
        """
        frame = self.frame
        if exclude is not None:
            done = exclude.select(pl.col("row_id").alias(ROW_ID))
            frame = frame.join(done, on=ROW_ID, how="anti", maintain_order="left")
        selected = [ROW_ID, ROW_INDEX, *columns] + ([LABELS] if self.has_labels else [])
        frame = frame.select(selected)
        attach = attach or {}
        attached: dict[str, list[tuple[str, str]]] = {}  # name -> [(column of the joined frame, field)]
        for name, extra in attach.items():
            fields = extra.collect_schema().names()
            renamed = extra.rename({field: f"{name}.{field}" for field in fields})
            frame = frame.join(renamed, left_on=ROW_ID, right_on=f"{name}.row_id", how="left", maintain_order="left")
            attached[name] = [(f"{name}.{field}", field) for field in fields if field != "row_id"]
        if exclude is not None or attach:  # joined once, not once for every chunk sliced off it
            owed = self._staging / f"owed-{next(self._owed_files)}.parquet"
            frame.sink_parquet(owed, row_group_size=ROW_GROUP)
            frame = pl.scan_parquet(owed)
        for chunk in _chunks(frame, chunk_size):
            for record in chunk.iter_rows(named=True):
                labels = record[LABELS] if self.has_labels else None
                values = {name: record[name] for name in columns}
                row_labels = tuple(labels) if labels is not None else None
                row = Row(record[ROW_ID], record[ROW_INDEX], values, row_labels, row_fingerprint(values, row_labels))
                extras = {
                    name: {field: record[column] for column, field in pairs}
                    if record[f"{name}.custom_id"] is not None else None
                    for name, pairs in attached.items()
                }
                yield row, extras


def _records_read(config: DatasetConfig) -> int | None:
    """How many data records the selection reads from the start of the file; None: all of them."""
    if config.tail or config.sample:
        return None
    bounds = [bound for bound in (config.head, config.limit) if bound]
    return min(bounds) if bounds else None


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Each csv record (the header first) with the line it starts on, read as polars reads the
    file: comma-separated, double quotes, a quoted field may span lines."""
    # Python's limit on a field (128 KiB) is no limit of the data sets read here: raised, for the process.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    start = 1
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            for fields in reader:
                yield start, fields
                start = reader.line_num + 1
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: line {_undecodable_line(path)} is not valid UTF-8: save the file as UTF-8") from None
    except csv.Error as exc:
        raise ConfigError(f"{path}: line {start}: not a valid csv record: {exc}") from None


def _undecodable_line(path: Path) -> int:
    """The first line that is not UTF-8 (the decoder reads blocks, so its error has no line)."""

    def decodes(raw: bytes) -> bool:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    with path.open("rb") as handle:
        return next(number for number, raw in enumerate(handle, 1) if not decodes(raw))


def _check_csv(path: Path, records: int | None) -> None:
    """What polars accepts silently: a repeated header name (it renames one) and a record with
    fewer fields than the header (it fills nulls). One streaming pass over the header and the
    first ``records`` records (None: all), in constant memory; records with more fields are
    reported here too, with their line. Python's csv reader costs about as much as polars'
    parse (measured: 1.5 s for 200,000 rows, 87 MB); files of other formats skip it."""
    rows = _csv_records(path)
    _, header = next(rows)
    repeated = next((name for index, name in enumerate(header) if name in header[:index]), None)
    if repeated is not None:
        raise ConfigError(f"{path}: line 1: column {repeated!r} appears twice in the header: rename one")
    for line, fields in itertools.islice(rows, records):
        if len(fields) == len(header) or (not fields and len(header) == 1):  # one column: a blank line is an empty value
            continue
        if not fields:
            raise ConfigError(f"{path}: line {line} is empty, the header has {len(header)} fields: remove the line")
        advice = (
            "fill in the missing ones (an empty field is ,,)" if len(fields) < len(header)
            else "quote fields that contain the separator"
        )
        raise ConfigError(f"{path}: line {line} has {len(fields)} fields, the header {len(header)}: {advice}")


def _remove_orphans() -> None:
    """Remove the staged copies of processes that were killed before they could."""
    for directory in Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*-*"):
        pid = directory.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _chunks(frame: pl.LazyFrame, size: int) -> Iterator[pl.DataFrame]:
    """``frame`` ``size`` rows at a time, each computed when asked for (over the staged parquet a
    slice reads only its row groups); ``collect_batches`` would run the whole query ahead of a
    consumer as slow as an evaluation and hold every row."""
    for offset in itertools.count(0, size):
        chunk = frame.slice(offset, size).collect()
        if chunk.is_empty():
            return
        yield chunk


_HINTS = {"utf-8": "save the file as UTF-8"}


def _first_line(exc: BaseException) -> str:
    """The first line of a reader's error, with what to do when the cause is a common one."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    hints = [hint for marker, hint in _HINTS.items() if marker in line.lower()]
    return "; ".join([line, *hints])
