"""One run across three APIs, as the issue's closing check asks: the predict stage on OpenAI's
chat completions, a panel of two judges on Anthropic's Messages API and on OpenAI's Responses
API, all in batch mode against the embedded server through the official SDKs, killed with
SIGKILL mid-way and resumed: no request paid twice, the batches each provider created equal
those the run needed, and the cost counts the prompt tokens the providers' caches served."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import openai
import polars as pl
import pytest

from adapters.server.backends.sim import SimSettings
from adapters.server.embedded import EmbeddedServer
from engine import load_config
from engine.shipped import example_config
from tests.support import CountingBackend

REPO = Path(__file__).resolve().parent.parent
ROWS = 60
RUBRIC = "A genre is right when the film's plot, tone and setting fit it, whatever else it might also be. " * 60


CONCURRENCY = 4


def task(url: str, mode: str = "batch") -> dict[str, Any]:
    """The IMDB task with its judge as a panel: ``claude`` on Anthropic, ``gpt`` on Responses,
    both with a long shared system prompt marked for the providers' caches; every stage in
    ``mode``, each endpoint with ``CONCURRENCY`` calls in flight at most."""
    data = load_config(example_config("imdb")).model_dump(mode="json")
    judge = data.pop("judge")
    system = f"You grade genre answers. {RUBRIC}"
    data["judge"] = [
        {**judge, "name": "claude", "model": "claude-sim", "mode": mode, "cache": True, "system_prompt": system,
         "endpoint": {"provider": "anthropic", "base_url": url, "concurrency": CONCURRENCY}},
        {**judge, "name": "gpt", "model": "gpt-sim", "mode": mode, "cache": True, "system_prompt": system,
         "endpoint": {"base_url": url, "api": "responses", "concurrency": CONCURRENCY}},
    ]
    data["predict"]["mode"] = mode
    data["endpoint"]["concurrency"] = CONCURRENCY
    data["dataset"] = {**data["dataset"], "limit": ROWS, "path": str(data["dataset"]["path"])}
    data["endpoint"]["base_url"] = url
    data["batch"].update(max_requests_per_file=25, poll_initial_s=0.05, poll_factor=1.0)
    data["prices"] = {
        data["predict"]["model"]: {"input": 0.2, "output": 0.2},
        "claude-sim": {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write_input": 3.75},
        "gpt-sim": {"input": 1.25, "output": 10.0, "cached_input": 0.125},
    }
    data["local"]["backend"] = "sim"
    return data


SCRIPT = """
import sys, anyio
from pathlib import Path
from engine import Evaluation
from engine.config import parse_config
import json
config = parse_config(json.loads(Path(sys.argv[1]).read_text()), source="three.toml", base_dir=Path(sys.argv[1]).parent)
async def main():
    async with Evaluation(config, run_dir=sys.argv[2]):
        pass
anyio.run(main)
"""


def run(config_file: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(config_file), str(run_dir)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def batches_by_provider(url: str, run_id: str) -> dict[str, int]:
    root = url.removesuffix("/v1")
    with openai.OpenAI(base_url=url, api_key="x", max_retries=0) as client:
        openai_batches = [batch for batch in client.batches.list(limit=100) if (batch.metadata or {}).get("engine_run") == run_id]
    with anthropic.Anthropic(base_url=root, api_key="x", max_retries=0) as client:
        message_batches = list(client.messages.batches.list(limit=100))
    return {
        "chat": sum(1 for batch in openai_batches if batch.endpoint == "/v1/chat/completions"),
        "responses": sum(1 for batch in openai_batches if batch.endpoint == "/v1/responses"),
        "messages": len(message_batches),
    }


REQUEST_FILE = re.compile(r"^(predict|judge(?:\.[A-Za-z0-9_-]+)?)-\d{5}\.jsonl$")


def needed_by_lane(run_dir: Path) -> dict[str, int]:
    """The request files the run wrote per lane: one batch each."""
    lanes = [match.group(1) for path in (run_dir / "batches").iterdir() if (match := REQUEST_FILE.match(path.name))]
    return {lane: lanes.count(lane) for lane in sorted(set(lanes))}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_three_providers_killed_and_resumed(tmp_path: Path, mode: str) -> None:
    backend = CountingBackend(SimSettings(seed=9, latency_ms=2, batch_min_seconds=0.2))
    with EmbeddedServer(backend) as url:
        config_file = tmp_path / "three.json"
        config_file.write_text(json.dumps(task(url, mode)))
        backend.arm(ROWS + 40)  # every prediction and some judge lines
        with run(config_file, tmp_path / "run") as process:
            assert backend.reached.wait(timeout=300), "the run never got going"
            os.kill(process.pid, signal.SIGKILL)
        assert not (tmp_path / "run" / "metrics.json").exists()
        resumed = subprocess.run([sys.executable, "-m", "engine", "run", "--resume", str(tmp_path / "run"), "--quiet"],
                                 capture_output=True, text=True, timeout=300, cwd=REPO)
        assert resumed.returncode == 0, resumed.stderr
        created = batches_by_provider(url, "run")
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert results.height == ROWS and results["status"].to_list() == ["judged"] * ROWS
    assert (results["verdicts"].list.len() == 2).all()
    preflights = sum(count for key, count in backend.requests.items() if '"ping"' in key)
    if mode == "batch":
        # Every request reached the server once, but the one-word preflight each batch caller
        # sends per session (3 callers, 2 sessions): the killed session's batches were re-attached.
        assert 3 <= preflights <= 6
        assert all(count == 1 for key, count in backend.requests.items() if '"ping"' not in key)
        assert sum(backend.requests.values()) - preflights == 3 * ROWS
        needed = needed_by_lane(tmp_path / "run")
        assert created == {"chat": needed["predict"], "messages": needed["judge"], "responses": needed["judge.gpt"]}
    else:
        # A kill costs at most the calls in flight: the concurrency of each of the 3 endpoints.
        assert preflights == 0 and created == {"chat": 0, "messages": 0, "responses": 0}
        assert 0 <= sum(backend.requests.values()) - 3 * ROWS <= 3 * CONCURRENCY
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    by_caller = {tuple(entry["callers"]): entry for entry in metrics["endpoints"]}
    claude, gpt = by_caller[("judge.claude",)], by_caller[("judge.gpt",)]
    assert claude["endpoint"].endswith("(anthropic messages)") and gpt["endpoint"].endswith("(openai responses)")
    assert claude["tokens"]["cached"] > 0 and claude["tokens"]["cache_write"] > 0  # the marked system prompt
    assert gpt["tokens"]["cached"] > 0  # OpenAI's automatic cache
    assert metrics["cost_usd"]["total"] == pytest.approx(sum(entry["cost_usd"] for entry in metrics["endpoints"]), abs=1e-6)
