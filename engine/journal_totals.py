"""The sums a run reports over every call in its journal, gathered as the calls are journaled.

``metrics.json`` sums over every record of the journal files: tokens and served models per
caller, requests and 429 answers per caller, response-cache hits, the requests and retries of
the run, how far the stages overlapped. Read back when a million-row run ends, that is two files
of about 300 MB parsed again, a few seconds each pass. ``JournalTotals`` folds records into those
sums a block at a time instead: the running session's while it journals them (``Journal``
hands them over in blocks), earlier sessions' from the bytes they left (``read_totals``). Both
go through ``add``, so a number is the same whichever way its records came.

A caller is a ``custom_id``'s prefix (``predict``, ``judge``, ``judge.<name>``; a judge's
repeats, ``@<n>``, are one caller).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from .journal import journal_frames
from .rundir import RunDir
from .types import STAGES, StageName

TOTALS_COLUMNS = (
    "custom_id", "ok", "model", "prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
    "latency_s", "attempts", "rate_limited", "started_at", "finished_at", "cached",
)
TOKEN_KINDS = (
    "prompt", "completion", "batch_prompt", "batch_completion", "cached", "cache_write", "batch_cached", "batch_cache_write"
)

_CALLER = pl.col("custom_id").str.split(":").list.first().str.replace(r"@\d+$", "").alias("caller")
_OK = pl.col("ok")
_IN_BATCH = _OK & pl.col("latency_s").is_null()  # a realtime answer (a batch stage's retry too) has a latency
_ATTEMPTS = pl.col("attempts").fill_null(1)  # a record without: one request


@dataclass(slots=True)
class CallerTotals:
    """One caller's sums: ``tokens`` by ``TOKEN_KINDS`` and ``served`` models over its answered
    calls (``answered`` of them), ``requests`` (every attempt) and ``rate_limited`` over all."""

    answered: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_KINDS, 0))
    served: set[str] = field(default_factory=set)
    requests: int = 0
    rate_limited: int = 0


class JournalTotals:
    """Sums over the journal records ``add``ed so far (any order, any blocks)."""

    def __init__(self) -> None:
        self.callers: dict[str, CallerTotals] = {}
        self.cache_hits: dict[str, int] = dict.fromkeys(STAGES, 0)
        self.retries = 0
        self.last_prediction = float("-inf")
        # Each judge call's start, to count those before the last prediction once it is known:
        # 8 bytes a call, the only part that grows with the run.
        self._judge_starts: list[pl.Series] = []

    def add(self, stage: StageName, frame: pl.DataFrame) -> None:
        """Fold in a block of ``stage``'s records (``TOTALS_COLUMNS``)."""
        sums = frame.group_by(_CALLER).agg(
            _OK.sum().alias("answered"),
            pl.col("prompt_tokens").filter(_OK).sum().alias("prompt"),
            pl.col("completion_tokens").filter(_OK).sum().alias("completion"),
            pl.col("prompt_tokens").filter(_IN_BATCH).sum().alias("batch_prompt"),
            pl.col("completion_tokens").filter(_IN_BATCH).sum().alias("batch_completion"),
            pl.col("cached_tokens").filter(_OK).sum().alias("cached"),
            pl.col("cache_write_tokens").filter(_OK).sum().alias("cache_write"),
            pl.col("cached_tokens").filter(_IN_BATCH).sum().alias("batch_cached"),
            pl.col("cache_write_tokens").filter(_IN_BATCH).sum().alias("batch_cache_write"),
            pl.col("model").filter(_OK).drop_nulls().unique().alias("served"),
            _ATTEMPTS.sum().alias("requests"),
            pl.col("rate_limited").fill_null(0).sum().alias("rate_limited"),
            (_ATTEMPTS - 1).clip(lower_bound=0).sum().alias("retries"),
        )
        for row in sums.iter_rows(named=True):
            caller = self.callers.setdefault(row["caller"], CallerTotals())
            caller.answered += int(row["answered"])
            for kind in TOKEN_KINDS:
                caller.tokens[kind] += int(row[kind] or 0)
            caller.served.update(row["served"])
            caller.requests += int(row["requests"])
            caller.rate_limited += int(row["rate_limited"])
            self.retries += int(row["retries"])
        self.cache_hits[stage] += int(frame["cached"].fill_null(False).sum())
        if stage == "predict":
            finished = frame["finished_at"].max()
            if finished is not None:
                self.last_prediction = max(self.last_prediction, float(finished))  # type: ignore[arg-type]
        else:
            self._judge_starts.append(frame["started_at"])

    @property
    def requests(self) -> int:
        return sum(caller.requests for caller in self.callers.values())

    @property
    def rate_limited(self) -> int:
        return sum(caller.rate_limited for caller in self.callers.values())

    def tokens_by_caller(self) -> dict[str, dict[str, Any]]:
        """Tokens and (at most five) served model names of each caller with an answered call.

        ``prompt`` and ``completion`` count every answered call; ``batch_prompt`` and
        ``batch_completion`` the part answered in provider batches (no latency). ``cached`` and
        ``cache_write`` are the prompt tokens read from and written to the provider's prompt
        cache (part of ``prompt``), ``batch_cached`` and ``batch_cache_write`` their part in batches."""
        return {
            name: {**caller.tokens, "served": sorted(caller.served)[:5]}
            for name, caller in self.callers.items()
            if caller.answered
        }

    def stage_overlap(self) -> dict[str, Any]:
        """How many judge calls started before the last prediction finished (the stages overlap)."""
        starts = pl.concat(self._judge_starts) if self._judge_starts else pl.Series(dtype=pl.Float64())
        early = int((starts < self.last_prediction).sum())
        return {
            "judge_calls": starts.len(),
            "judge_started_before_last_prediction": early,
            "share": early / starts.len() if starts.len() else None,
        }


def read_totals(run_dir: RunDir, *, into: JournalTotals | None = None, upto: Mapping[str, int] | None = None) -> JournalTotals:
    """The totals of a run's journal files, read in one pass a few MB at a time; ``upto``: only
    each file's first bytes (those earlier sessions wrote), added ``into`` the running session's."""
    totals = into or JournalTotals()
    for stage in STAGES:
        path: Path = run_dir.journal(stage)
        end = None if upto is None else upto.get(stage, 0)
        for frame in journal_frames(path, TOTALS_COLUMNS, end=end):
            totals.add(stage, frame)
    return totals
