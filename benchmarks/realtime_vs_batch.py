"""The same task run realtime and through the Batch API: throughput, wall time and cost by row count.

The server is the sim in another process, with a per-call latency (``--latency-ms``) and a batch
turnaround (``--batch-min-seconds``: a batch completes no sooner than that). Cost is at
``--price`` USD per million tokens, input and output, for both models; batch is half price
(``engine.config.Price``). For batch runs, ``finish s`` is the time from the engine seeing the
last batch complete (its ``ended`` event) to ``metrics.json`` written: downloading the output,
journaling and joining its rows, merging ``results.parquet`` and computing the metrics. Writes a
CSV and a PNG of throughput against rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine import Evaluation
from engine.journal import EventLog
from engine.rundir import RunDir

from .memory import synthetic_csv, synthetic_task
from .server import sim_server_process

RESULTS = Path(__file__).parent / "results"
MODES = ("realtime", "batch")


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


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for mode in MODES:
        points = [(row["rows"], row["rows_per_second"]) for row in rows if row["mode"] == mode]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=mode)
    axes.set(xscale="log", yscale="log", xlabel="rows", ylabel="rows/s (both stages)", title="realtime vs batch (sim)")
    axes.legend()
    figure.savefig(path, dpi=100, bbox_inches="tight")


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
    plot(rows, RESULTS / "realtime_vs_batch.png")
    (RESULTS / "realtime_vs_batch.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"written {RESULTS / 'realtime_vs_batch.csv'} and .png")
