"""Batch mode end to end: the engine's orchestrator against the embedded server's Batch API,
through the official SDK over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import openai
import polars as pl
import pytest

from adapters.server.backends.sim import SimSettings
from adapters.server.embedded import EmbeddedServer
from engine import Evaluation
from engine.config import TaskConfig
from tests.support import CountingBackend

from .conftest import imdb_config

REPO = Path(__file__).resolve().parent.parent
FAST_POLLING = {"batch.poll_initial_s": 0.02, "batch.poll_max_s": 0.05, "batch.poll_factor": 1.0}


def batch_config(url: str, *, limit: int = 60, per_file: int = 25, settings: dict[str, Any] | None = None) -> TaskConfig:
    batch = {"predict.mode": "batch", "judge.mode": "batch", "batch.max_requests_per_file": per_file}
    return imdb_config(url, limit=limit, **{**batch, **FAST_POLLING, **(settings or {})})


def batches_journaled(run_dir: Path, stage: str) -> int:
    lines = (run_dir / "journal" / "batches.ndjson").read_text().splitlines()
    return sum(1 for line in lines if (event := json.loads(line))["event"] == "batch" and event["stage"] == stage)


def comparable(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "results.parquet").drop("predict_latency_s", "judge_latency_s")


def submitted_custom_ids(url: str, run_id: str) -> Counter[str]:
    """Every request line of every batch the endpoint holds for this run: what was paid for."""
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    seen: Counter[str] = Counter()
    for batch in client.batches.list(limit=100):
        if (batch.metadata or {}).get("engine_run") != run_id:
            continue
        for line in client.files.content(batch.input_file_id).text.splitlines():
            seen[json.loads(line)["custom_id"]] += 1
    client.close()
    return seen


async def test_batch_mode_gives_the_realtime_results_with_one_batch_per_file(tmp_path: Path) -> None:
    backend = CountingBackend(SimSettings(seed=4))
    with EmbeddedServer(backend, data_dir=tmp_path / "server") as url:
        async with Evaluation(imdb_config(url, limit=60), run_dir=tmp_path / "realtime"):
            pass
        async with Evaluation(batch_config(url), run_dir=tmp_path / "batch") as evaluation:
            pass
        paid = submitted_custom_ids(url, "batch")
    assert comparable(tmp_path / "batch").equals(comparable(tmp_path / "realtime"))
    metrics = evaluation.metrics
    assert metrics is not None and metrics["mode"] == {"predict": "batch", "judge": "batch"}
    # 60 rows in files of 25: 3 predict batches, and the judge stage flushed after each of them.
    assert metrics["batches_created"] == 6
    assert metrics["requests"] == 120 and metrics["requests_per_second"] > 0  # every batch line is a request
    assert len(paid) == 120 and set(paid.values()) == {1}
    events = [json.loads(line) for line in (tmp_path / "batch" / "journal" / "batches.ndjson").read_text().splitlines()]
    assert [event["event"] for event in events].count("batch") == 6


async def test_predict_in_batch_and_judge_in_realtime(tmp_path: Path) -> None:
    with EmbeddedServer(CountingBackend(SimSettings(seed=4)), data_dir=tmp_path / "server") as url:
        config = batch_config(url, limit=30, settings={"judge.mode": "realtime"})
        async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
            pass
    assert evaluation.metrics is not None
    assert evaluation.metrics["n_judged"] == 30 and evaluation.metrics["batches_created"] == 2


async def test_failed_lines_are_retried_in_new_batches_and_in_realtime(tmp_path: Path) -> None:
    settings = SimSettings(seed=6, batch_fail_rate=0.3)
    with EmbeddedServer(CountingBackend(settings), data_dir=tmp_path / "server") as url:
        in_batches = batch_config(url, limit=40, per_file=40, settings={"batch.realtime_retry_below": 0})
        async with Evaluation(in_batches, run_dir=tmp_path / "batches") as evaluation:
            pass
        assert evaluation.metrics is not None and evaluation.metrics["batches_created"] > 2
        in_realtime = batch_config(url, limit=40, per_file=40, settings={"batch.realtime_retry_below": 1000})
        async with Evaluation(in_realtime, run_dir=tmp_path / "realtime") as evaluation:
            pass
        assert evaluation.metrics is not None
        assert batches_journaled(tmp_path / "realtime", "predict") == 1  # no second predict batch:
        assert evaluation.metrics["requests"] > 0  # the retried lines went out as realtime calls
    for run in ("batches", "realtime"):
        results = pl.read_parquet(tmp_path / run / "results.parquet")
        assert results.height == 40 and results["row_id"].n_unique() == 40
        failed = results.filter(pl.col("status") != "judged")
        assert failed["error"].null_count() == 0


async def test_every_line_failing_is_recorded_row_by_row(tmp_path: Path) -> None:
    settings = SimSettings(seed=6, batch_fail_rate=1.0)
    with EmbeddedServer(CountingBackend(settings), data_dir=tmp_path / "server") as url:
        config = batch_config(url, limit=10, settings={"batch.max_line_retries": 1, "batch.realtime_retry_below": 0})
        async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
            pass
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert results["status"].to_list() == ["predict_failed"] * 10
    assert all(error.startswith("http_5") for error in results["error"].to_list())
    assert evaluation.metrics is not None and evaluation.metrics["batches_created"] == 2  # first try + one retry


async def test_an_expired_batch_keeps_its_partial_output_and_resubmits_the_rest(tmp_path: Path) -> None:
    settings = SimSettings(seed=2, latency_ms=20, batch_expire_after_s=0.15)
    with EmbeddedServer(CountingBackend(settings), data_dir=tmp_path / "server") as url:
        config = batch_config(url, limit=20, per_file=20, settings={"batch.realtime_retry_below": 1000})
        async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
            pass
    assert evaluation.metrics is not None and evaluation.metrics["n_judged"] == 20


class CancelOnFirstPoll:
    """A clock that cancels the run the first time the orchestrator waits to poll a batch:
    the batch exists and is journaled, and the process 'dies' while it is in progress."""

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope

    def now(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        self.scope.cancel()
        await anyio.sleep(seconds)


@pytest.mark.parametrize("request_files_deleted", [False, True])
async def test_a_run_stopped_mid_batch_resumes_without_paying_twice(tmp_path: Path, request_files_deleted: bool) -> None:
    """Also when the request files in batches/ are gone: they are restored from the provider's copy."""
    settings = SimSettings(seed=8, batch_min_seconds=0.3)
    with EmbeddedServer(CountingBackend(settings), data_dir=tmp_path / "server") as url:
        async with Evaluation(batch_config(url), run_dir=tmp_path / "whole"):
            pass
        with anyio.CancelScope() as scope:
            async with Evaluation(batch_config(url), run_dir=tmp_path / "cut", clock=CancelOnFirstPoll(scope)):
                pass
        assert scope.cancelled_caught
        if request_files_deleted:
            requests = list((tmp_path / "cut" / "batches").glob("predict-?????.jsonl"))
            assert requests
            for path in requests:
                path.unlink()
        async with Evaluation(run_dir=tmp_path / "cut", resume=True) as resumed:
            pass
        paid = submitted_custom_ids(url, "cut")
    assert resumed.metrics is not None and resumed.metrics["n_judged"] == 60
    assert comparable(tmp_path / "cut").equals(comparable(tmp_path / "whole"))
    assert len(paid) == 120 and set(paid.values()) == {1}, "a request was submitted twice"
    assert (tmp_path / "cut" / "batches" / "predict-00001.jsonl").exists()


def test_sigkill_during_batches_then_resume(tmp_path: Path) -> None:
    settings = SimSettings(seed=9, batch_min_seconds=0.5)
    backend = CountingBackend(settings, signal_after=3)  # after the 2 preflight calls: a batch line
    with EmbeddedServer(backend, data_dir=tmp_path / "server") as url:
        run_dir = tmp_path / "run"
        args = ["--mode", "batch", "--limit", "60", "--base-url", url, "--out", str(run_dir), "--quiet",
                "--set", "batch.poll_initial_s=0.05", "--set", "batch.poll_max_s=0.1", "--set", "batch.max_requests_per_file=25"]
        with subprocess.Popen([sys.executable, "-m", "engine", "run", *args], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
            assert backend.reached.wait(timeout=300), "no batch started"
            os.kill(process.pid, signal.SIGKILL)
        resumed = subprocess.run([sys.executable, "-m", "engine", "run", "--resume", str(run_dir), "--quiet"],
                                 cwd=REPO, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        paid = submitted_custom_ids(url, "run")
    assert len(paid) == 120 and set(paid.values()) == {1}
    assert pl.read_parquet(run_dir / "results.parquet").filter(pl.col("status") == "judged").height == 60
