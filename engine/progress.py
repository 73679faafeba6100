"""Live progress: a rich panel on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import anyio
from rich.console import Console
from rich.live import Live
from rich.text import Text

from .batch import TERMINAL, BatchProgress
from .evaluation import Evaluation


def progress_line(evaluation: Evaluation) -> str:
    stats = evaluation.stats
    elapsed = max(time.perf_counter() - stats.started, 1e-9)
    requests = sum(runner.stats.requests for runner in (evaluation.predict_runner, evaluation.judge_runner) if runner)
    retries = sum(runner.stats.retries for runner in (evaluation.predict_runner, evaluation.judge_runner) if runner)
    accuracy = stats.judge_accuracy
    parts = [
        f"predicted {stats.predicted}/{stats.total}",
        f"judged {stats.judged}",
        f"failed {stats.failed}",
        f"skipped {stats.skipped}",
        f"{requests / elapsed:.1f} req/s",
        f"retries {retries}",
        f"judge accuracy {'n/a' if accuracy is None else f'{100 * accuracy:.1f}%'}",
    ]
    if stats.batches:
        parts.append(_batches(stats.batches))
    return " | ".join(parts)


def _batches(batches: dict[str, BatchProgress]) -> str:
    """``batches 1 completed, 2 in_progress (1200/5000)``."""
    by_status: dict[str, list[BatchProgress]] = {}
    for batch in batches.values():
        by_status.setdefault(batch.status, []).append(batch)
    described = []
    for status, members in sorted(by_status.items()):
        text = f"{len(members)} {status}"
        if status not in TERMINAL:
            done = sum(member.completed + member.failed for member in members)
            text += f" ({done}/{sum(member.total for member in members)})"
        described.append(text)
    return "batches " + ", ".join(described)


async def show_progress(evaluation: Evaluation, *, stream: TextIO | None = None, interval: float = 0.5) -> None:
    """Render until cancelled: a live line on a terminal, a line every 5 s otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        console = Console(file=stream)
        with Live(Text(progress_line(evaluation)), console=console, auto_refresh=False, transient=False) as live:
            try:
                while True:
                    live.update(Text(progress_line(evaluation)), refresh=True)
                    await anyio.sleep(interval)
            finally:
                live.update(Text(progress_line(evaluation)), refresh=True)
    else:
        try:
            while True:
                await anyio.sleep(5.0)
                print(progress_line(evaluation), file=stream, flush=True)
        finally:
            print(progress_line(evaluation), file=stream, flush=True)
