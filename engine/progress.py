"""Live progress: a rich table on a terminal, plain lines or JSON lines elsewhere.

Everything shown comes from one ``snapshot`` of the evaluation's counters: rows done of the total,
per stage the requests, their rate, retries, 429s and calls in flight, per endpoint (a run may
call several: ``engine.run.lanes``) its requests, 429s, its concurrency window (when latency has
narrowed it) and how long it has been down (during an outage), tokens per second, the running
judge accuracy with its Wilson interval, an ETA from this session's pace, and batches by status
(batch mode).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Literal, TextIO

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .evaluation import Evaluation
from .provider import TERMINAL_BATCH_STATUSES
from .report.metrics import wilson_interval

Style = Literal["live", "plain", "json"]


def snapshot(evaluation: Evaluation) -> dict[str, Any]:
    stats = evaluation.stats
    elapsed = max(time.perf_counter() - stats.started, 1e-9)
    stages: dict[str, dict[str, Any]] = {}
    for lane in evaluation.lanes:
        runner = evaluation.runners.get(lane.name)
        if runner is None:
            continue
        calls = runner.stats
        stage = stages.setdefault(lane.stage, dict.fromkeys(("requests", "retries", "rate_limited", "in_flight"), 0))
        stage["requests"] += calls.requests
        stage["retries"] += calls.retries
        stage["rate_limited"] += calls.rate_limited
        stage["in_flight"] += calls.in_flight
    for stage in stages.values():
        stage["requests_per_second"] = round(stage["requests"] / elapsed, 1)
    endpoints = []
    for endpoint in evaluation.endpoints:
        runners = [evaluation.runners[lane.name] for lane in evaluation.lanes
                   if lane.endpoint == endpoint.config and lane.name in evaluation.runners]
        down_for = endpoint.outage.down_for
        endpoints.append({
            "endpoint": endpoint.config.described,
            "callers": list(endpoint.callers),
            "requests": sum(runner.stats.requests for runner in runners),
            "rate_limited": sum(runner.stats.rate_limited for runner in runners),
            "window": {"now": endpoint.limiter.window, "most": endpoint.limiter.concurrency,
                       "narrowed_by_latency": endpoint.limiter.narrowed},
            "down_s": None if down_for is None else round(down_for, 1),
        })
    pace = (stats.done - stats.done_at_start) / elapsed
    remaining = stats.total - stats.done
    batches: dict[str, dict[str, int]] = {}
    for batch in stats.batches.values():
        entry = batches.setdefault(batch.status, {"batches": 0, "lines_done": 0, "lines": 0})
        entry["batches"] += 1
        entry["lines_done"] += batch.completed + batch.failed
        entry["lines"] += batch.total
    interval = wilson_interval(stats.correct, stats.verdicts) if stats.verdicts else None
    return {
        "elapsed_s": round(elapsed, 1),
        "rows": {"total": stats.total, "done": stats.done, "predicted": stats.predicted, "judged": stats.judged,
                 "failed": stats.failed, "skipped": stats.skipped},
        "stages": stages,
        "tokens_per_second": round(stats.tokens / elapsed, 1),
        "judge_accuracy": stats.judge_accuracy,
        "judge_accuracy_ci95": list(interval) if interval else None,
        "eta_s": round(remaining / pace, 1) if pace > 0 and remaining else None,
        "batches": batches,
        "endpoints": endpoints,
    }


def _accuracy(data: dict[str, Any]) -> str:
    if data["judge_accuracy"] is None:
        return "judge accuracy n/a"
    low, high = data["judge_accuracy_ci95"]
    return f"judge accuracy {100 * data['judge_accuracy']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def _batches(data: dict[str, Any]) -> str:
    parts = []
    for status, entry in sorted(data["batches"].items()):
        text = f"{entry['batches']} {status}"
        if status not in TERMINAL_BATCH_STATUSES:
            text += f" ({entry['lines_done']}/{entry['lines']})"
        parts.append(text)
    return "batches " + ", ".join(parts) if parts else ""


def _endpoint(data: dict[str, Any]) -> str:
    """Each endpoint's state when it is not plain: down, or answering slowly enough to narrow its
    window; with several endpoints, each named."""
    several = len(data["endpoints"]) > 1
    states = []
    for endpoint in data["endpoints"]:
        name = f"{endpoint['endpoint']} " if several else ""
        window = endpoint["window"]
        if endpoint["down_s"] is not None:
            states.append(f"endpoint {name}down for {endpoint['down_s']:.0f} s: calls wait for it")
        elif window["narrowed_by_latency"]:
            states.append(f"{name}window {window['now']}/{window['most']} (slow answers)")
    return " | ".join(states)


def _endpoints(data: dict[str, Any]) -> str:
    """With several endpoints, each one's requests and 429s."""
    if len(data["endpoints"]) < 2:
        return ""
    return " | ".join(f"{endpoint['endpoint']}: {endpoint['requests']} req, 429s {endpoint['rate_limited']}"
                      for endpoint in data["endpoints"])


def _eta(data: dict[str, Any]) -> str:
    return "ETA n/a" if data["eta_s"] is None else f"ETA {data['eta_s']:.0f} s"


def plain_line(data: dict[str, Any]) -> str:
    rows = data["rows"]
    stages = " | ".join(
        f"{name} {stage['requests_per_second']:.1f} req/s, retries {stage['retries']}, 429s {stage['rate_limited']}"
        for name, stage in data["stages"].items()
    )
    parts = [
        f"rows {rows['done']}/{rows['total']} (predicted {rows['predicted']}, judged {rows['judged']}, "
        f"failed {rows['failed']}, skipped {rows['skipped']})",
        stages,
        f"{data['tokens_per_second']:.0f} tok/s",
        _accuracy(data),
        _eta(data),
        _endpoint(data),
        _endpoints(data),
        _batches(data),
    ]
    return " | ".join(part for part in parts if part)


def live_view(data: dict[str, Any]) -> Group:
    rows = data["rows"]
    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("stage", "done", "req/s", "retries", "429s", "in flight"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    done = {"predict": rows["predicted"] + rows["failed"], "judge": rows["judged"]}
    for name, stage in data["stages"].items():
        table.add_row(name, f"{done.get(name, 0)}/{rows['total']}", f"{stage['requests_per_second']:.1f}",
                      str(stage["retries"]), str(stage["rate_limited"]), str(stage["in_flight"]))
    summary = (f"rows {rows['done']}/{rows['total']} · failed {rows['failed']} · skipped {rows['skipped']} · "
               f"{data['tokens_per_second']:.0f} tok/s · {_accuracy(data)} · {_eta(data)}")
    lines: list[Any] = [table, Text(summary)]
    for line in (_endpoint(data), _endpoints(data)):
        if line:
            lines.append(Text(line))
    if data["batches"]:
        lines.append(Text(_batches(data)))
    return Group(*lines)


async def show_progress(evaluation: Evaluation, *, style: Style, stream: TextIO | None = None) -> None:
    """Render until cancelled: ``live`` redraws twice a second; ``plain`` and ``json`` write a line
    every 5 s and a last one when cancelled."""
    stream = stream or sys.stderr
    if style == "live":
        with Live(live_view(snapshot(evaluation)), console=Console(file=stream), auto_refresh=False) as live:
            try:
                while True:
                    live.update(live_view(snapshot(evaluation)), refresh=True)
                    await anyio.sleep(0.5)
            finally:
                live.update(live_view(snapshot(evaluation)), refresh=True)
        return
    render = plain_line if style == "plain" else json.dumps
    try:
        while True:
            await anyio.sleep(5.0)
            print(render(snapshot(evaluation)), file=stream, flush=True)
    finally:
        print(render(snapshot(evaluation)), file=stream, flush=True)
