"""Limiter accuracy: the rate a run achieves against a server that enforces a limit, and its 429s.

Each scenario runs the engine's realtime runner (limiter, official SDK, real HTTP) for a fixed
time against a sim server in another process, which records when it admitted each call, what it
charged and how many 429s it sent. Achieved rates are the server's own counts over consecutive
10 s windows from its first admission. Scenarios: the client is told the limit the server
enforces (rpm, then tpm); the client is told nothing and learns it from the server's
``x-ratelimit-*`` headers; the server sends no such headers and the client adapts to its 429s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from adapters.openai import OpenAIProvider
from adapters.server.backends.base import BackendError, BackendReply
from adapters.server.backends.sim import SimBackend, SimSettings
from adapters.server.embedded import EmbeddedServer
from engine import load_config
from engine.run.limits import AnyioClock, Limiter
from engine.run.realtime import RealtimeRunner
from engine.run.retry import RetryPolicy
from engine.shipped import example_config
from engine.templates import estimate_tokens
from engine.types import ChatRequest

from .overhead import predict_bodies

RESULTS = Path(__file__).parent / "results"
WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    client_rpm: float | None
    client_tpm: float | None
    server_rpm: float | None
    server_tpm: float | None
    headers: bool = True


class RecordingBackend:
    """The sim backend, recording each admission (time, tokens charged) and each 429.

    With ``headers`` off it strips the ``x-ratelimit-*`` headers, like an endpoint that never
    announces its limits.
    """

    def __init__(self, settings: SimSettings, *, headers: bool) -> None:
        self._inner = SimBackend(settings)
        self._headers = headers
        self.admitted: list[tuple[float, int]] = []
        self.rate_limited: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        try:
            completion = await self._inner.complete(body)
        except BackendError as error:
            if error.status == 429:
                self.rate_limited.append(time.monotonic())
                if not self._headers:
                    error.headers = tuple(h for h in error.headers if not h[0].startswith("x-ratelimit-"))
            raise
        self.admitted.append((time.monotonic(), completion.prompt_tokens + int(body.get("max_tokens") or 0)))
        return completion if self._headers else dataclasses.replace(completion, headers=())


def _serve(settings_json: str) -> None:
    """The server process: serve until stdin closes, then print what was recorded as JSON."""
    options = json.loads(settings_json)
    headers = options.pop("headers")
    backend = RecordingBackend(SimSettings(**options), headers=headers)
    server = EmbeddedServer(backend)
    print(server.start(), flush=True)
    sys.stdin.read()
    server.stop()
    print(json.dumps({"admitted": backend.admitted, "rate_limited": backend.rate_limited}), flush=True)


async def _drive(url: str, scenario: Scenario, seconds: float, concurrency: int) -> dict[str, int]:
    """Calls through one runner from ``concurrency`` workers until ``seconds`` have passed."""
    bodies = predict_bodies(load_config(example_config("imdb")))
    clock = AnyioClock()
    limiter = Limiter(concurrency=concurrency, rpm=scenario.client_rpm, tpm=scenario.client_tpm, clock=clock)
    deadline = clock.now() + seconds
    async with OpenAIProvider(url, "bench") as client:
        runner = RealtimeRunner(client, limiter, RetryPolicy(rng=random.Random(0)), clock)

        async def worker(offset: int) -> None:
            i = offset
            while clock.now() < deadline:
                body = bodies[i % len(bodies)]
                estimate = estimate_tokens(body["messages"], body["max_tokens"])
                await runner.call(ChatRequest(f"predict:{i}", str(i), "predict", body, estimated_tokens=estimate))
                i += concurrency

        async with anyio.create_task_group() as group:
            for offset in range(concurrency):
                group.start_soon(worker, offset)
    return {"client_429s": runner.stats.rate_limited, "client_requests": runner.stats.requests}


def run_scenario(scenario: Scenario, seconds: float, concurrency: int) -> dict[str, Any]:
    options = {"rpm": scenario.server_rpm, "tpm": scenario.server_tpm, "headers": scenario.headers}
    command = [sys.executable, "-m", "benchmarks.limiter", json.dumps(options)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as server:
        assert server.stdin is not None and server.stdout is not None
        url = server.stdout.readline().strip()
        client = anyio.run(_drive, url, scenario, seconds, concurrency)
        server.stdin.close()
        recorded = json.loads(server.stdout.readline())
    return _summarise(scenario, recorded, client)


def _summarise(scenario: Scenario, recorded: dict[str, Any], client: dict[str, int]) -> dict[str, Any]:
    admitted = recorded["admitted"]
    start = admitted[0][0]
    windows = int((admitted[-1][0] - start) // WINDOW_S)
    by_tokens = scenario.server_tpm is not None
    limit = (scenario.server_tpm if by_tokens else scenario.server_rpm) or math.nan
    per_window = [0.0] * windows
    for at, tokens in admitted:
        index = int((at - start) // WINDOW_S)
        if index < windows:
            per_window[index] += tokens if by_tokens else 1
    shares = [value / (limit * WINDOW_S / 60.0) for value in per_window]
    refused = recorded["rate_limited"]
    answered = len(admitted) + len(refused)
    return {
        "scenario": scenario.name,
        "limit": f"{limit:g} {'tpm' if by_tokens else 'rpm'}",
        "windows": windows,
        "share_min": min(shares),
        "share_max": max(shares),
        "max_deviation_pct": 100 * max(abs(share - 1.0) for share in shares),
        "requests": answered,
        "server_429s": len(refused),
        "first_second_429s": sum(1 for at in refused if at - start < 1.0),
        "rate_429_pct": 100 * len(refused) / answered,
        **client,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks limiter", description=__doc__)
    parser.add_argument("--seconds", type=float, default=42.0, help="per scenario (windows of 10 s)")
    parser.add_argument("--rpm", type=float, default=6000.0)
    parser.add_argument("--tpm", type=float, default=600_000.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", nargs="+", choices=["rpm", "tpm", "announced", "silent"], help="run these scenarios")
    args = parser.parse_args(argv)
    scenarios = {
        "rpm": Scenario("rpm told, server enforces it", args.rpm, None, args.rpm, None),
        "tpm": Scenario("tpm told, server enforces it", None, args.tpm, None, args.tpm),
        "announced": Scenario("nothing told, server announces rpm", None, None, args.rpm, None),
        "silent": Scenario("nothing told, server silent (AIMD)", None, None, args.rpm, None, headers=False),
    }
    chosen = [scenarios[name] for name in args.only] if args.only else list(scenarios.values())
    rows = [run_scenario(scenario, args.seconds, args.concurrency) for scenario in chosen]
    print(f"{'scenario':38} {'limit':>12} {'win':>3} {'min':>6} {'max':>6} {'max dev':>7} "
          f"{'requests':>8} {'429s':>5} {'in 1st s':>8} {'429 %':>6}")
    for row in rows:
        print(f"{row['scenario']:38} {row['limit']:>12} {row['windows']:3d} {row['share_min']:6.3f} {row['share_max']:6.3f} "
              f"{row['max_deviation_pct']:6.1f}% {row['requests']:8d} {row['server_429s']:5d} "
              f"{row['first_second_429s']:8d} {row['rate_429_pct']:5.2f}%")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "limiter.json"
    out.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    _serve(sys.argv[1])
