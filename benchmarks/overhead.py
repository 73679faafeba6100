"""Client CPU per request: the engine's realtime path against plain clients, same server, same run.

Every client sends the same chat completions (IMDB prompts) to one sim server in another process
at the same concurrency. CPU is this process's user+system time (``time.process_time``), so the
server's work is not counted. The engine's figure includes everything a run does: data set scan,
limiter, retries bookkeeping, journal, join, parquet parts and metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp
import anyio
import openai

from engine import Evaluation, load_config, with_overrides
from engine.dataset import Dataset
from engine.prompts import PromptBuilder
from engine.shipped import example_config

from .server import sim_server_process

RESULTS = Path(__file__).parent / "results"


def _bodies(n: int) -> list[dict[str, Any]]:
    """The first n predict bodies of the IMDB example (repeated past 1000 rows)."""
    config = load_config(example_config("imdb"))
    dataset = Dataset(config.dataset, label_set=config.labels)
    builder = PromptBuilder(config, dataset.columns)
    bodies = [builder.predict(row).body for row, _ in dataset.rows(("Overview",))]
    return [bodies[i % len(bodies)] for i in range(n)]


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
            completion.choices[0].message.content

        await _fan_out(len(bodies), concurrency, call)


async def engine_run(url: str, rows: int, concurrency: int) -> int:
    """A whole evaluation of ``rows`` rows (two calls each); returns the requests sent."""
    config = with_overrides(
        load_config(example_config("imdb")),
        {"endpoint.base_url": url, "endpoint.concurrency": concurrency, "dataset.limit": rows},
    )
    with TemporaryDirectory() as tmp:
        async with Evaluation(config, run_dir=Path(tmp) / "run") as evaluation:
            pass
    assert evaluation.metrics is not None
    return int(evaluation.metrics["requests"])


def measure(label: str, requests: int, run: Callable[[], Any]) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    sent = run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    requests = sent if isinstance(sent, int) else requests
    return {
        "client": label,
        "requests": requests,
        "cpu_ms_per_request": 1000 * cpu / requests,
        "requests_per_second": requests / wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks overhead", description=__doc__)
    parser.add_argument("--rows", type=int, default=1000, help="engine rows (two requests each)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    requests = 2 * args.rows
    bodies = _bodies(requests)
    with sim_server_process("--latency-ms", str(args.latency_ms)) as url:
        anyio.run(bare_aiohttp, url, bodies[:200], args.concurrency)  # warm up server and client
        rows = [
            measure("bare aiohttp + json.loads (floor)", requests,
                    lambda: anyio.run(bare_aiohttp, url, bodies, args.concurrency)),
            measure("engine realtime path (both stages, journal, join, parquet)", requests,
                    lambda: anyio.run(engine_run, url, args.rows, args.concurrency)),
            measure("openai SDK, aiohttp transport", requests,
                    lambda: anyio.run(lambda: sdk_client(url, bodies, args.concurrency, aiohttp_transport=True))),
            measure("openai SDK, default client", requests,
                    lambda: anyio.run(lambda: sdk_client(url, bodies, args.concurrency, aiohttp_transport=False))),
        ]
    floor = rows[0]["cpu_ms_per_request"]
    print(f"{'client':60} {'ms CPU/req':>10} {'x floor':>8} {'req/s':>8}")
    for row in rows:
        row["ratio_to_floor"] = row["cpu_ms_per_request"] / floor
        print(f"{row['client']:60} {row['cpu_ms_per_request']:10.3f} {row['ratio_to_floor']:8.2f} "
              f"{row['requests_per_second']:8.0f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "overhead.json"
    out.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"written {out}")
