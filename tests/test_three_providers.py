"""One run across three APIs, as the issue's closing check asks: the predict stage on OpenAI's
chat completions, a panel of two judges on Anthropic's Messages API and on OpenAI's Responses
API, against the embedded server through the official SDKs, killed with SIGKILL mid-way and
resumed (``benchmarks/providers.py`` sets it up; ``python -m benchmarks providers`` runs it
larger): no request paid twice, the batches each provider created equal those the run needed,
and the cost counts the prompt tokens the providers' caches served."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import polars as pl
import pytest

from adapters.server.backends.sim import SimSettings
from adapters.server.embedded import EmbeddedServer
from benchmarks.providers import batches_by_provider, needed_by_lane, resume, start_run, three_provider_task
from tests.support import CountingBackend

ROWS = 60
CONCURRENCY = 4


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_three_providers_killed_and_resumed(tmp_path: Path, mode: str) -> None:
    backend = CountingBackend(SimSettings(seed=9, latency_ms=2, batch_min_seconds=0.2))
    with EmbeddedServer(backend) as url:
        config_file = tmp_path / "three.json"
        config_file.write_text(json.dumps(three_provider_task(url, rows=ROWS, mode=mode, concurrency=CONCURRENCY)))
        backend.arm(ROWS + 40)  # every prediction and some judge lines
        with start_run(config_file, tmp_path / "run") as process:
            assert backend.reached.wait(timeout=300), "the run never got going"
            os.kill(process.pid, signal.SIGKILL)
        assert not (tmp_path / "run" / "metrics.json").exists()
        resumed = resume(tmp_path / "run")
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
