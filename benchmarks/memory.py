"""Peak memory of a run against its row count: it must stay flat, whatever the size.

Each size is a whole evaluation (both stages, journal, join, parquet parts, metrics) of a
synthetic csv (short texts, three labels) against a sim server in another process, run in a
fresh child process that reports its own peak RSS (``ru_maxrss``) when it is done.

``--mode batch`` runs both stages as provider batches (files of ``--lines-per-file`` lines, a
server turnaround of ``--batch-min-seconds``) and also reports the time from the last batch
ending to ``metrics.json`` written.

``--resume`` measures a resumed run instead: the run is started in a child process and killed
(SIGKILL) once its judge journal holds about half the rows, then resumed in a fresh child
process, whose peak is the figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from engine import Evaluation
from engine.config import TaskConfig, parse_config
from engine.journal import EventLog
from engine.rundir import RunDir

from .server import sim_server_process

RESULTS = Path(__file__).parent / "results"
LABELS = ("alpha", "beta", "gamma")
_WORDS = ("river", "stone", "light", "quiet", "market", "winter", "signal", "garden", "paper", "orbit")


def synthetic_csv(path: Path, rows: int) -> Path:
    """Write ``rows`` rows of ``id,text,label``: a few words of text, one of ``LABELS``."""
    with path.open("w") as out:
        out.write("id,text,label\n")
        for i in range(rows):
            words = " ".join(_WORDS[(i * k + k) % len(_WORDS)] for k in range(1, 8))
            out.write(f"{i},{words} {i},{LABELS[i % len(LABELS)]}\n")
    return path


def synthetic_task(data: Path, base_url: str, **settings: Any) -> TaskConfig:
    """A classify-then-judge task over :func:`synthetic_csv`'s file; ``settings`` are top-level tables."""
    labels = ", ".join(LABELS)
    task: dict[str, Any] = {
        "name": "synthetic",
        "labels": list(LABELS),
        "dataset": {"path": str(data), "id_column": "id", "label_column": "label"},
        "predict": {
            "model": "small",
            "system_prompt": f"Answer with one of: {labels}.",
            "user_template": "{text}",
            "max_tokens": 8,
        },
        "judge": {
            "model": "large",
            "system_prompt": "Say correct or incorrect.",
            "user_template": 'Text: {text}\nOptions: {labels}\nAnswer: "{prediction}"',
            "max_tokens": 4,
        },
        "endpoint": {"base_url": base_url, "concurrency": 64},
    }
    for table, values in settings.items():
        task.setdefault(table, {}).update(values)
    return parse_config(task, source="synthetic", base_dir=data.parent)


def _settings(mode: str, lines_per_file: int) -> dict[str, Any]:
    """The task's tables for ``mode``: batch mode polls often, the server's turnaround being short."""
    if mode == "realtime":
        return {}
    return {
        "predict": {"mode": "batch"},
        "judge": {"mode": "batch"},
        "batch": {"max_requests_per_file": lines_per_file, "poll_initial_s": 0.5, "poll_max_s": 1.0},
    }


async def _evaluate(data: Path, base_url: str, run_dir: Path, resume: bool, settings: dict[str, Any]) -> dict[str, Any]:
    config = None if resume else synthetic_task(data, base_url, **settings)
    async with Evaluation(config, run_dir=run_dir, resume=resume) as evaluation:
        pass
    assert evaluation.metrics is not None
    return evaluation.metrics


def _child(data: str, base_url: str, run_dir: str, settings: str, how: str = "run") -> None:
    """The measured process: one run (``how``: ``run`` or ``resume``; ``settings``: the task's
    tables as JSON), then its metrics, peak RSS and finish time as one JSON line."""
    metrics = anyio.run(_evaluate, Path(data), base_url, Path(run_dir), how == "resume", json.loads(settings))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_rss_mb": peak_kib / 1024, "n_judged": metrics["n_judged"],
                      "wall_seconds": metrics["wall_seconds"], "finish_seconds": finish_seconds(RunDir(Path(run_dir)))}))


def finish_seconds(run: RunDir) -> float | None:
    """From the last batch seen ending (its ``ended`` event) to ``metrics.json`` written; None
    for a run without batches."""
    ended = [float(event["at"]) for event in EventLog(run.batch_events).events() if event["event"] == "ended"]
    return run.metrics_file.stat().st_mtime - max(ended) if ended else None


def measure(rows: int, base_url: str, workdir: Path, *, settings: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    data = synthetic_csv(workdir / f"rows-{rows}.csv", rows)
    run_dir = workdir / f"run-{rows}"
    command = [sys.executable, "-m", "benchmarks.memory", str(data), base_url, str(run_dir), json.dumps(settings)]
    if resume:
        _killed_half_way(command, run_dir / "journal" / "judge.ndjson", rows)
        command.append("resume")
    child = subprocess.run(command, capture_output=True, text=True, check=True)
    return {"rows": rows, **json.loads(child.stdout.strip().splitlines()[-1])}


def _killed_half_way(command: list[str], journal: Path, rows: int) -> None:
    """Run ``command`` and SIGKILL it once ``journal`` holds about ``rows / 2`` lines (told by
    its size: the first lines' mean length), polling the file twice a second."""
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        while process.poll() is None:
            time.sleep(0.5)
            if journal.exists() and journal.stat().st_size > 0:
                with journal.open("rb") as lines:
                    head = lines.readlines(64 * 1024)
                if len(head) > 1 and journal.stat().st_size >= rows / 2 * (sum(map(len, head)) / len(head)):
                    process.kill()
        if process.returncode == 0:
            raise SystemExit(f"the run of {rows} rows finished before it could be killed half-way")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks memory", description=__doc__)
    parser.add_argument("--rows-small", type=int, default=10_000)
    parser.add_argument("--rows-large", type=int, default=100_000, help="e.g. 1000000 (about an hour on 2 cores)")
    parser.add_argument("--resume", action="store_true", help="measure resuming a run killed half-way")
    parser.add_argument("--mode", choices=("realtime", "batch"), default="realtime", help="both stages in this mode")
    parser.add_argument("--lines-per-file", type=int, default=50_000, help="batch mode: lines per request file")
    parser.add_argument("--batch-min-seconds", type=float, default=2.0, help="batch mode: the server's turnaround")
    args = parser.parse_args(argv)
    settings = _settings(args.mode, args.lines_per_file)
    server_args = ("--batch-min-seconds", str(args.batch_min_seconds)) if args.mode == "batch" else ()
    with tempfile.TemporaryDirectory() as tmp, sim_server_process(*server_args) as server:
        url = server.url
        rows = [measure(n, url, Path(tmp), settings=settings, resume=args.resume) for n in (args.rows_small, args.rows_large)]
    growth = rows[1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    print(f"{'rows':>9} {'peak RSS MB':>12} {'judged':>9} {'wall s':>8} {'finish s':>9}")
    for row in rows:
        finish = f"{row['finish_seconds']:9.1f}" if row["finish_seconds"] is not None else f"{'-':>9}"
        print(f"{row['rows']:9d} {row['peak_rss_mb']:12.1f} {row['n_judged']:9d} {row['wall_seconds']:8.1f} {finish}")
    what = ("resuming a run killed half-way" if args.resume else "a run") + f", {args.mode}"
    print(f"growth {growth:.1f} MB for {rows[1]['rows'] - rows[0]['rows']} more rows, {what} (target < 150 MB)")
    if args.mode == "batch":
        print("finish s: from the last batch ending to metrics.json written (target < 10 s)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"memory{'-batch' if args.mode == 'batch' else ''}{'-resume' if args.resume else ''}.json"
    out.write_text(json.dumps({"settings": vars(args), "rows": rows, "growth_mb": growth}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    _child(*sys.argv[1:6])
