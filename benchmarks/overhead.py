"""Client CPU per request: the engine's realtime path against plain clients, same server, same run.

Every client sends the same chat completions (IMDB prompts) to one sim server in another process
at the same concurrency; the engine also runs on the server's other API shapes (OpenAI's Responses
API, Anthropic's Messages API), against the same floor. CPU is this process's user+system time (``time.process_time``), so the
server's work is not counted; the server's own CPU is read from ``/proc`` and shown as the rate
it could serve on one core. The engine's figure includes everything a run does: data set scan,
limiter, retry bookkeeping, journal, join, parquet parts, metrics and the report with its plots
(about 0.5 s of CPU per run, whatever its size). ``--profile`` writes a cProfile of the engine's run.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp
import anyio
import openai
import polars as pl

from engine import Evaluation, load_config, with_overrides
from engine.config import TaskConfig
from engine.dataset import Dataset
from engine.prompts import PromptBuilder
from engine.shipped import example_config

from .server import ServerProcess, sim_server_process

RESULTS = Path(__file__).parent / "results"


def imdb_config(rows: int, workdir: Path) -> TaskConfig:
    """The IMDB example over its first ``rows`` rows, the file repeated as often as it takes."""
    config = load_config(example_config("imdb"))
    movies = pl.read_csv(config.dataset.path, infer_schema=False)
    tiled = pl.concat([movies] * -(-rows // movies.height)).head(rows)
    path = workdir / "imdb.csv"
    tiled.write_csv(path)
    return with_overrides(config, {"dataset.path": str(path), "dataset.limit": rows})


def predict_bodies(config: TaskConfig) -> list[dict[str, Any]]:
    dataset = Dataset(config.dataset, label_set=config.labels)
    builder = PromptBuilder(config, dataset.columns)
    return [builder.predict(row).body for row, _ in dataset.rows(("Overview",))]


async def _fan_out(n: int, concurrency: int, call: Callable[[int], Awaitable[None]]) -> None:
    limiter = anyio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            await call(i)

    async with anyio.create_task_group() as group:
        for i in range(n):
            group.start_soon(one, i)


async def bare_aiohttp(url: str, bodies: list[dict[str, Any]], concurrency: int) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call(i: int) -> None:
            async with session.post(f"{url}/chat/completions", json=bodies[i]) as response:
                json.loads(await response.read())["choices"][0]["message"]["content"]

        await _fan_out(len(bodies), concurrency, call)


async def sdk_client(url: str, bodies: list[dict[str, Any]], concurrency: int, *, aiohttp_transport: bool) -> None:
    http_client = openai.DefaultAioHttpClient() if aiohttp_transport else None
    async with openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, http_client=http_client) as client:

        async def call(i: int) -> None:
            completion = await client.chat.completions.create(**bodies[i])
            _ = completion.choices[0].message.content  # read the answer, as a real client does

        await _fan_out(len(bodies), concurrency, call)


async def engine_run(config: TaskConfig, url: str, concurrency: int, **endpoint: str) -> dict[str, Any]:
    """A whole evaluation (two calls a row) with ``endpoint`` settings (its provider or api);
    returns its metrics."""
    settings = {f"endpoint.{name}": value for name, value in endpoint.items()}
    config = with_overrides(config, {"endpoint.base_url": url, "endpoint.concurrency": concurrency, **settings})
    with TemporaryDirectory() as tmp:
        async with Evaluation(config, run_dir=Path(tmp) / "run") as evaluation:
            pass
    assert evaluation.metrics is not None
    return evaluation.metrics


def measure(label: str, requests: int, server: ServerProcess, run: Callable[[], Any]) -> dict[str, Any]:
    cpu, wall, server_cpu = time.process_time(), time.perf_counter(), server.cpu_seconds()
    metrics = run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server_cpu = server.cpu_seconds() - server_cpu
    if metrics is not None:  # an engine run: its own count, and its time from first row to results.parquet
        requests = int(metrics["requests"])
    return {
        "client": label,
        "requests": requests,
        "cpu_ms_per_request": 1000 * cpu / requests,
        "requests_per_second": requests / wall,
        "pipeline_requests_per_second": requests / metrics["wall_seconds"] if metrics else None,
        "server_requests_per_core_second": requests / server_cpu if server_cpu else None,
    }


def profiled(run: Callable[[], dict[str, Any]], path: Path) -> Callable[[], dict[str, Any]]:
    def run_profiled() -> dict[str, Any]:
        with cProfile.Profile() as profile:
            metrics = run()
        profile.dump_stats(path)
        return metrics

    return run_profiled


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks overhead", description=__doc__)
    parser.add_argument("--rows", type=int, default=2000, help="engine rows (two requests each)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=2, help="runs of every client; the best is shown")
    parser.add_argument("--profile", action="store_true", help="cProfile the engine run (slows it)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    requests = 2 * args.rows
    with TemporaryDirectory() as tmp, sim_server_process("--latency-ms", str(args.latency_ms)) as server:
        config = imdb_config(args.rows, Path(tmp))
        bodies = predict_bodies(config) * 2
        url = server.url
        anyio.run(bare_aiohttp, url, bodies[:200], args.concurrency)  # warm up server and client

        def engine() -> dict[str, Any]:
            return anyio.run(engine_run, config, url, args.concurrency)

        def engine_on(**endpoint: str) -> Callable[[], dict[str, Any]]:
            return lambda: anyio.run(partial(engine_run, config, url, args.concurrency, **endpoint))

        clients: list[tuple[str, Callable[[], Any]]] = [
            ("bare aiohttp + json.loads (floor)", lambda: anyio.run(bare_aiohttp, url, bodies, args.concurrency)),
            ("engine realtime path (both stages, journal, join, parquet, report)",
             profiled(engine, RESULTS / "overhead.prof") if args.profile else engine),
            ("engine, OpenAI Responses API path (api = responses)", engine_on(api="responses")),
            ("engine, Anthropic Messages path (provider = anthropic)", engine_on(provider="anthropic")),
            ("openai SDK, aiohttp transport",
             lambda: anyio.run(lambda: sdk_client(url, bodies, args.concurrency, aiohttp_transport=True))),
            ("openai SDK, default client",
             lambda: anyio.run(lambda: sdk_client(url, bodies, args.concurrency, aiohttp_transport=False))),
        ]
        runs = [[measure(label, requests, server, run) for label, run in clients] for _ in range(args.repeat)]
    # Each client's best run: the machine is shared, and noise only ever adds time.
    rows = [min(measured, key=lambda row: row["cpu_ms_per_request"]) for measured in zip(*runs, strict=True)]
    floor = rows[0]["cpu_ms_per_request"]
    ideal = 1000 * args.concurrency / args.latency_ms if args.latency_ms else None
    print(f"{args.rows} rows, {requests} requests a client, concurrency {args.concurrency}, best of {args.repeat}, "
          f"server latency {args.latency_ms:g} ms" + (f" (ideal {ideal:.0f} req/s)" if ideal else ""))
    print(f"{'client':68} {'ms CPU/req':>10} {'x floor':>8} {'req/s':>7} {'of ideal':>8} {'server req/s/core':>17}")
    for row in rows:
        row["ratio_to_floor"] = row["cpu_ms_per_request"] / floor
        row["share_of_ideal"] = row["requests_per_second"] / ideal if ideal else None
        share = f"{100 * row['share_of_ideal']:7.1f}%" if ideal else f"{'-':>8}"
        print(f"{row['client']:68} {row['cpu_ms_per_request']:10.3f} {row['ratio_to_floor']:8.2f} "
              f"{row['requests_per_second']:7.0f} {share} {row['server_requests_per_core_second'] or 0:17.0f}")
    engine_row = rows[1]
    pipeline = engine_row["pipeline_requests_per_second"]
    share = f" = {100 * pipeline / ideal:.1f}% of ideal" if ideal else ""
    print(f"engine from its first row to results.parquet (no start-up, no report): {pipeline:.0f} req/s{share}")
    out = RESULTS / "overhead.json"
    report = {"settings": vars(args), "ideal_requests_per_second": ideal, "rows": rows, "runs": runs}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}" + (f" and {RESULTS / 'overhead.prof'}" if args.profile else ""))
