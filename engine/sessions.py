"""A run's sessions, and the figures that cover every one of them.

A run may take several sessions: its first start and each ``--resume``. Each appends a line to
``journal/sessions.ndjson`` when it starts and one when it ends; a session killed before its end
line ends, for the figures, at the last thing it journaled (a result, a batch event). The figures
are summed from the journal, so they cover every session, killed ones included:

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


def run_figures(run_dir: RunDir, *, now: float | None = None) -> RunFigures:
    """The figures of every session of the run; the one still running (if any) ends at ``now``."""
    requests = retries = rate_limited = 0
    activity: list[pl.Series] = []
    for stage in STAGES:
        for frame in journal_frames(run_dir.journal(stage), ("attempts", "rate_limited", "finished_at")):
            attempts = frame["attempts"].fill_null(1)
            requests += int(attempts.sum())
            retries += int((attempts - 1).clip(lower_bound=0).sum())
            rate_limited += int(frame["rate_limited"].fill_null(0).sum())
            activity.append(frame["finished_at"].drop_nulls())
    activity.append(pl.Series([float(event["at"]) for event in EventLog(run_dir.batch_events).events()], dtype=pl.Float64()))
    times = pl.concat(activity) if activity else pl.Series(dtype=pl.Float64())
    spans = SessionLog(run_dir).spans()
    wall = 0.0
    for number, (start, end) in enumerate(spans):
        if end is None:
            last = number == len(spans) - 1
            if last and now is not None:
                end = now
            else:
                following = spans[number + 1][0] if not last else float("inf")
                within = times.filter((times >= start) & (times < following))
                end = float(within.max()) if within.len() else start  # type: ignore[arg-type]
        wall += max(0.0, end - start)
    return RunFigures(len(spans), round(wall, 3), requests, retries, rate_limited)
