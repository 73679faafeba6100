"""Three providers in one run, killed and resumed: what it created, paid and cost.

The IMDB task with its predict stage on OpenAI's chat completions and a panel of two judges, one
on Anthropic's Messages API (``claude``) and one on OpenAI's Responses API (``gpt``), both with a
long system prompt shared by every row and marked for the providers' prompt caches. The engine
runs in a process of its own against the embedded server (sim backend, in this process, counting
what reaches the model), is killed with SIGKILL once ``--kill-after`` calls have reached the
server, and is resumed with ``python -m engine run --resume``. It prints the batches each
provider created against the request files the run wrote, the requests the server saw against
those the rows needed, and per endpoint the tokens (cached ones apart) and the cost at the
prices below. ``tests/test_three_providers.py`` asserts the same on a smaller run. The answers
are a simulator's: this measures the engine's accounting, not any model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anthropic
import openai

from adapters.server.backends.sim import SimSettings
from adapters.server.embedded import EmbeddedServer
from engine import load_config
from engine.journal import EventLog
from engine.rundir import RunDir
from engine.shipped import example_config
from tests.support import CountingBackend

REPO = Path(__file__).resolve().parent.parent
RUBRIC = "A genre is right when the film's plot, tone and setting fit it, whatever else it might also be. " * 60
PRICES = {
    "claude-sim": {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write_input": 3.75},
    "gpt-sim": {"input": 1.25, "output": 10.0, "cached_input": 0.125},
}
_RUN = """
import json, sys, anyio
from pathlib import Path
from engine import Evaluation
from engine.config import parse_config
config = parse_config(json.loads(Path(sys.argv[1]).read_text()), source="three.json", base_dir=Path(sys.argv[1]).parent)
async def main():
    async with Evaluation(config, run_dir=sys.argv[2]):
        pass
anyio.run(main)
"""


def three_provider_task(url: str, *, rows: int, mode: str = "batch", per_file: int = 25, concurrency: int = 4) -> dict[str, Any]:
    """The task as config data: every stage in ``mode`` against the server at ``url``, each
    endpoint with ``concurrency`` calls in flight at most, ``per_file`` lines a batch file."""
    data = load_config(example_config("imdb")).model_dump(mode="json")
    judge = data.pop("judge")
    system = f"You grade genre answers. {RUBRIC}"
    data["judge"] = [
        {**judge, "name": "claude", "model": "claude-sim", "mode": mode, "cache": True, "system_prompt": system,
         "endpoint": {"provider": "anthropic", "base_url": url, "concurrency": concurrency}},
        {**judge, "name": "gpt", "model": "gpt-sim", "mode": mode, "cache": True, "system_prompt": system,
         "endpoint": {"base_url": url, "api": "responses", "concurrency": concurrency}},
    ]
    data["predict"]["mode"] = mode
    data["endpoint"].update(base_url=url, concurrency=concurrency)
    data["dataset"] = {**data["dataset"], "limit": rows, "path": str(data["dataset"]["path"])}
    data["batch"].update(max_requests_per_file=per_file, poll_initial_s=0.05, poll_factor=1.0)
    data["prices"] = {data["predict"]["model"]: {"input": 0.2, "output": 0.2}, **PRICES}
    data["local"]["backend"] = "sim"
    return data


def start_run(config_file: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    """The engine on ``config_file``'s task in a process of its own, to be killed."""
    return subprocess.Popen([sys.executable, "-c", _RUN, str(config_file), str(run_dir)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def resume(run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "run", "--resume", str(run_dir), "--quiet"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)


def batches_by_provider(url: str, run_id: str) -> dict[str, int]:
    """The batches the server holds for the run, per API (Message Batches carry no metadata: the
    server's are all this run's)."""
    with openai.OpenAI(base_url=url, api_key="x", max_retries=0) as client:
        ours = [batch for batch in client.batches.list(limit=100) if (batch.metadata or {}).get("engine_run") == run_id]
    with anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key="x", max_retries=0) as claude:
        message_batches = sum(1 for _ in claude.messages.batches.list(limit=100))
    return {
        "chat": sum(1 for batch in ours if batch.endpoint == "/v1/chat/completions"),
        "responses": sum(1 for batch in ours if batch.endpoint == "/v1/responses"),
        "messages": message_batches,
    }


def needed_by_lane(run_dir: Path) -> dict[str, int]:
    """The request files the run sealed and uploaded, per lane: one batch each. (A file still
    open when the run was killed was never sent: its lines went into a new file on resume.)"""
    uploaded = {(event["stage"], event["chunk"]) for event in EventLog(RunDir(run_dir).batch_events).events()
                if event["event"] == "file"}
    lanes = [lane for lane, _ in uploaded]
    return {lane: lanes.count(lane) for lane in sorted(set(lanes))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks providers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--per-file", type=int, default=100, help="lines a batch file")
    parser.add_argument("--kill-after", type=int, default=None, help="server calls before the kill (default: 1.5 x rows)")
    args = parser.parse_args(argv)
    backend = CountingBackend(SimSettings(seed=9, latency_ms=2, batch_min_seconds=0.5))
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(backend) as url:
        config_file, run_dir = Path(tmp) / "three.json", Path(tmp) / "run"
        config_file.write_text(json.dumps(three_provider_task(url, rows=args.rows, per_file=args.per_file, concurrency=64)))
        backend.arm(args.kill_after or args.rows * 3 // 2)
        started = time.perf_counter()
        with start_run(config_file, run_dir) as process:
            if not backend.reached.wait(timeout=900):
                raise SystemExit("the run never got going")
            os.kill(process.pid, signal.SIGKILL)
        killed_at = backend.calls
        resumed = resume(run_dir)
        if resumed.returncode != 0:
            raise SystemExit(resumed.stderr)
        wall = time.perf_counter() - started
        created, needed = batches_by_provider(url, run_dir.name), needed_by_lane(run_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text())
    preflights = sum(count for key, count in backend.requests.items() if '"ping"' in key)
    twice = sum(count - 1 for key, count in backend.requests.items() if '"ping"' not in key)
    print(f"{args.rows} rows, killed after {killed_at} calls, resumed: {metrics['n_judged']} judged, {wall:.1f} s wall")
    print(f"requests at the server {sum(backend.requests.values())} = {3 * args.rows} lines + {preflights} preflights; "
          f"paid twice {twice}")
    print(f"batches created {created} / request files uploaded {needed}")
    print(f"{'endpoint':58} {'requests':>8} {'prompt':>9} {'cached':>9} {'written':>8} {'cost USD':>9}")
    for endpoint in metrics["endpoints"]:
        tokens = endpoint["tokens"]
        print(f"{endpoint['endpoint']:58} {endpoint['requests']:8} {tokens['prompt']:9} {tokens['cached']:9} "
              f"{tokens['cache_write']:8} {endpoint['cost_usd']:9.4f}")
    print(f"total cost ${metrics['cost_usd']['total']:.4f}")
