"""The same task run realtime and through the Batch API: throughput, wall time and cost by row count.

The server is the sim in another process, with a per-call latency (``--latency-ms``) and a batch
turnaround (``--batch-min-seconds``: a batch completes no sooner than that). Cost is at
``--price`` USD per million tokens, input and output, for both models; batch is half price
(``engine.config.Price``). For batch runs, ``finish s`` is the time from the engine seeing the
last batch complete (its ``ended`` event) to ``metrics.json`` written: downloading the output,
journaling and joining its rows, merging ``results.parquet`` and computing the metrics. Writes a
CSV and an SVG of throughput against rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import anyio

from engine import Evaluation
from engine.journal import EventLog
from engine.report.svg import LABEL_SIZE, Axes, LegendEntry, Picture, legend_size
from engine.rundir import RunDir

from .memory import synthetic_csv, synthetic_task
from .server import sim_server_process

RESULTS = Path(__file__).parent / "results"
MODES = ("realtime", "batch")
COLOURS = {"realtime": "#1f77b4", "batch": "#ff7f0e"}


async def _evaluate(task: Any, run_dir: Path) -> dict[str, Any]:
    async with Evaluation(task, run_dir=run_dir) as evaluation:
        pass
    assert evaluation.metrics is not None
    return evaluation.metrics


def run_one(data: Path, url: str, mode: str, price: float, workdir: Path) -> dict[str, Any]:
    """One evaluation of ``data`` with both stages in ``mode``; its throughput and cost."""
    prices = {model: {"input": price, "output": price} for model in ("small", "large")}
    task = synthetic_task(
        data,
        url,
        predict={"mode": mode},
        judge={"mode": mode},
        batch={"poll_initial_s": 0.2, "poll_max_s": 1.0, "poll_factor": 1.5},
        prices=prices,
    )
    run_dir = workdir / f"{data.stem}-{mode}"
    metrics = anyio.run(_evaluate, task, run_dir)
    wall = metrics["wall_seconds"]
    tokens = sum(stage["prompt"] + stage["completion"] for stage in metrics["tokens"].values())
    return {
        "rows": metrics["n_rows"],
        "mode": mode,
        "judged": metrics["n_judged"],
        "wall_seconds": wall,
        "rows_per_second": metrics["n_rows"] / wall,
        "tokens_per_second": tokens / wall,
        "cost_usd": metrics["cost_usd"]["total"],
        "finish_seconds": finish_seconds(run_dir) if mode == "batch" else None,
    }


def finish_seconds(run_dir: Path) -> float:
    """From the last batch seen complete to ``metrics.json`` written."""
    run = RunDir(run_dir)
    ended = [float(event["at"]) for event in EventLog(run.batch_events).events() if event["event"] == "ended"]
    return run.metrics_file.stat().st_mtime - max(ended)


def _decades(values: list[float]) -> tuple[float, float]:
    """The powers of ten around ``values``: a log axis with a tick at each end."""
    return 10.0 ** math.floor(math.log10(min(values))), 10.0 ** math.ceil(math.log10(max(values)))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Rows per second against rows, a line per mode, on log axes."""
    picture = Picture(600, 400)
    lines = {mode: [(row["rows"], row["rows_per_second"]) for row in rows if row["mode"] == mode] for mode in MODES}
    entries = [LegendEntry(mode, COLOURS[mode], "line") for mode, points in lines.items() if points]
    box = (80.0, 30.0, legend_size(entries)[0] + 24, 50.0)
    x, y = _decades([row["rows"] for row in rows]), _decades([row["rows_per_second"] for row in rows])
    axes = Axes.inside(picture, box, x, y, x_log=True, y_log=True)
    for mode, points in lines.items():
        placed = [(axes.x(count), axes.y(rate)) for count, rate in points]
        if placed:
            picture.line(placed, COLOURS[mode], width=1.5)
            for point in placed:
                picture.circle(*point, 3.5, COLOURS[mode])
    axes.x_ticks(axes.x.ticks())
    axes.y_ticks(axes.y.ticks())
    axes.x_label("rows")
    axes.y_label("rows/s (both stages)", 66)
    picture.text((axes.x.start + axes.x.end) / 2, 15, "realtime vs batch (sim)", size=LABEL_SIZE, anchor="middle")
    picture.legend(axes.x.end + 10, axes.y.end, entries)
    axes.frame()
    picture.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks realtime-vs-batch", description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--batch-min-seconds", type=float, default=5.0)
    parser.add_argument("--price", type=float, default=0.18, help="USD per million tokens, realtime")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args(argv)
    server = ("--latency-ms", str(args.latency_ms), "--batch-min-seconds", str(args.batch_min_seconds))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, sim_server_process(*server) as server_process:
        url = server_process.url
        for n in args.rows:
            data = synthetic_csv(Path(tmp) / f"rows-{n}.csv", n)
            rows.extend(run_one(data, url, mode, args.price, Path(tmp)) for mode in args.modes)
    print(f"{'rows':>7} {'mode':>8} {'wall s':>7} {'rows/s':>8} {'tokens/s':>9} {'cost $':>9} {'finish s':>8}")
    for row in rows:
        finish = f"{row['finish_seconds']:8.2f}" if row["finish_seconds"] is not None else f"{'-':>8}"
        print(f"{row['rows']:7d} {row['mode']:>8} {row['wall_seconds']:7.1f} {row['rows_per_second']:8.1f} "
              f"{row['tokens_per_second']:9.0f} {row['cost_usd']:9.5f} {finish}")
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "realtime_vs_batch.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, RESULTS / "realtime_vs_batch.svg")
    (RESULTS / "realtime_vs_batch.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"written {RESULTS / 'realtime_vs_batch.csv'} and .svg")
