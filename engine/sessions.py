"""A run's sessions, and the figures that cover every one of them.

A run may take several sessions: its first start and each ``--resume``. Each appends a line to
``journal/sessions.ndjson`` when it starts and one when it ends; a session killed before its end
line ends, for the figures, at the last thing it journaled (a result, a batch event). The figures
are summed over the journal (``engine.journal_totals``), so they cover every session, killed
ones included:

- ``requests``: every request a journaled outcome cost (its ``attempts``: realtime calls with
  their retries, batch lines once per batch that carried them); calls still in flight when a
  session was killed, and the one-token preflight and probe calls, are not counted;
- ``retries`` and ``rate_limited``: the attempts beyond the first, and the answers that were 429s;
- ``wall_seconds``: the sum of the sessions' spans (time between sessions is not counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from .journal import EventLog, journal_frames
from .journal_totals import JournalTotals
from .rundir import RunDir
from .types import STAGES


class SessionLog:
    """``journal/sessions.ndjson``: when each session of the run started and ended."""

    def __init__(self, run_dir: RunDir) -> None:
        self._log = EventLog(run_dir.session_events)

    def start(self) -> None:
        self._log.append({"event": "start"})

    def end(self) -> None:
        self._log.append({"event": "end"})

    def spans(self) -> list[tuple[float, float | None]]:
        """``(start, end)`` of each session in order; ``end`` None for one that did not end."""
        spans: list[tuple[float, float | None]] = []
        for event in self._log.events():
            if event.get("event") == "start":
                spans.append((float(event["at"]), None))
            elif event.get("event") == "end" and spans and spans[-1][1] is None:
                spans[-1] = (spans[-1][0], float(event["at"]))
        return spans


@dataclass(frozen=True, slots=True)
class RunFigures:
    sessions: int
    wall_seconds: float
    requests: int
    retries: int
    rate_limited: int

    @property
    def requests_per_second(self) -> float | None:
        return round(self.requests / self.wall_seconds, 2) if self.wall_seconds > 0 else None


def run_figures(run_dir: RunDir, totals: JournalTotals, *, now: float | None = None) -> RunFigures:
    """The figures of every session of the run, its calls' from ``totals``; the session still
    running (if any) ends at ``now``."""
    spans = SessionLog(run_dir).spans()
    times: pl.Series | None = None
    wall = 0.0
    for number, (start, end) in enumerate(spans):
        if end is None:
            last = number == len(spans) - 1
            if last and now is not None:
                end = now
            else:
                times = _activity(run_dir) if times is None else times
                following = spans[number + 1][0] if not last else float("inf")
                within = times.filter((times >= start) & (times < following))
                end = float(within.max()) if within.len() else start  # type: ignore[arg-type]
        wall += max(0.0, end - start)
    return RunFigures(len(spans), round(wall, 3), totals.requests, totals.retries, totals.rate_limited)


def _activity(run_dir: RunDir) -> pl.Series:
    """When each journaled call finished and each batch event happened: where a killed session's
    span ends (read only for a run with such a session)."""
    activity = [frame["finished_at"].drop_nulls() for stage in STAGES
                for frame in journal_frames(run_dir.journal(stage), ("finished_at",))]
    activity.append(pl.Series([float(event["at"]) for event in EventLog(run_dir.batch_events).events()], dtype=pl.Float64()))
    return pl.concat(activity)
