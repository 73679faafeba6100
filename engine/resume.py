"""What a resumed run does again, and what it refuses to do.

A run's finished rows stand unless:

- their row changed since (the data file was edited or reordered): the fingerprint of the fields
  the templates read and the labels (``types.row_fingerprint``) differs from the one recorded
  with the row's outcome; such rows are done again, the rest are kept;
- they failed for a reason worth trying again (``retry.is_transient``: a connection or timeout,
  a 5xx or 429, an expired or cancelled batch line, an outage), or failed at all with
  ``retry_failed``.

A change to what the results depend on (the model, a prompt, a parameter: ``rundir``) is
refused before anything is sent, and so is leaving batch mode while batches are still running at
the provider: their rows would be paid for a second time.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from .config import TaskConfig
from .dataset import LABELS, ROW_ID, Dataset
from .errors import ConfigError
from .journal import EventLog
from .run.retry import is_transient
from .rundir import RunDir
from .types import STAGES, row_fingerprint

_FAILED = ("predict_failed", "judge_failed")
_REASONS = r"(?:^|; )([A-Za-z0-9_]+):"
_SLICE = 20_000
_BUCKET_ROWS = 50_000  # finished rows compared with their data rows at a time (the join holds them)
_DONE = "__done."


def stale_rows(
    parts: list[Path], dataset: Dataset, columns: tuple[str, ...], *, retry_failed: bool, workdir: Path
) -> set[str]:
    """Ids of the rows in ``parts`` that must be done again (see the module docstring)."""
    if not parts:
        return set()
    done = pl.scan_parquet(parts).select(  # renamed apart from any column of the data set
        pl.col("row_id").alias(ROW_ID),
        *(pl.col(name).alias(f"{_DONE}{name}") for name in ("inputs", "labels", "status", "error")),
    )
    current = dataset.frame.select(ROW_ID, *columns, *([LABELS] if dataset.has_labels else []))
    buckets = -(-done.select(pl.len()).collect().item() // _BUCKET_ROWS)
    stale: set[str] = set()
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".resume-") as directory:
        staged = Path(directory) / "done.parquet"
        for bucket in range(buckets):  # by a hash of the id: 200,000 rows joined at once held 93 MB
            in_bucket = pl.col(ROW_ID).hash() % buckets == bucket
            done.filter(in_bucket).join(current.filter(in_bucket), on=ROW_ID, how="left").sink_parquet(staged)
            frame = pl.scan_parquet(staged)
            height = frame.select(pl.len()).collect().item()
            for offset in range(0, height, _SLICE):
                for record in frame.slice(offset, _SLICE).collect().iter_rows(named=True):
                    if _changed(record, columns, dataset.has_labels) or _retry(record, retry_failed):
                        stale.add(record[ROW_ID])
    return stale


def _changed(record: dict[str, Any], columns: tuple[str, ...], has_labels: bool) -> bool:
    inputs = record[f"{_DONE}inputs"] or {}
    labels = record[LABELS] if has_labels else None
    then = row_fingerprint({name: inputs.get(name) for name in columns}, record[f"{_DONE}labels"])
    now = row_fingerprint({name: record[name] for name in columns}, labels)
    return then != now


def _retry(record: dict[str, Any], retry_failed: bool) -> bool:
    if record[f"{_DONE}status"] not in _FAILED:
        return False
    if retry_failed:
        return True
    return any(is_transient(reason) for reason in re.findall(_REASONS, record[f"{_DONE}error"] or ""))


def check_mode_change(run_dir: RunDir, started: TaskConfig, now: TaskConfig) -> None:
    """Refuse to take a stage out of batch mode while its batches may still be running."""
    events = EventLog(run_dir.batch_events).events()
    ended = {event.get("batch_id") for event in events if event.get("event") == "ended"}
    for stage in STAGES:
        if started.stage_mode(stage) != "batch" or now.stage_mode(stage) == "batch":
            continue
        running = [e["batch_id"] for e in events if e.get("event") == "batch"
                   and str(e.get("stage")).split(".")[0] == stage  # its lane: the stage, or a judge's
                   and e.get("batch_id") not in ended]
        if running:
            raise ConfigError(
                f"{run_dir}: the {stage} stage has {len(running)} batch(es) still running at the provider "
                f"({running[0]}...): resume it in batch mode to collect them; in realtime mode their rows "
                "would be paid for twice"
            )
