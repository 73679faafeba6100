"""The whole engine over real HTTP: the official SDK against the embedded server."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import polars as pl
import pytest

from adapters.server.backends.sim import SimSettings
from benchmarks.clocks import InstantClock
from engine import Evaluation
from engine.errors import AuthError
from engine.journal import scan_journal
from engine.rundir import RunDir
from tests.support import CountingBackend

from .conftest import TEST_KEY, TEST_KEY_ENV, imdb_config, run_files, start_server

METRIC_KEYS = {
    "n_rows", "n_predicted", "n_judged", "n_failed", "judge_accuracy", "judge_accuracy_ci95",
    "ground_truth_accuracy", "ground_truth_accuracy_ci95", "judge_vs_truth_agreement",
    "judge_vs_truth_kappa", "majority_baseline_accuracy", "invalid_prediction_rate",
    "invalid_verdict_rate", "tokens", "cost_usd", "mode", "wall_seconds", "requests_per_second", "models",
}


def comparable(run_dir: Path) -> pl.DataFrame:
    """results.parquet without the timing columns, which differ between runs."""
    return pl.read_parquet(run_dir / "results.parquet").drop("predict_latency_s", "judge_latency_s")


async def test_a_run_judges_every_row_and_writes_the_run_directory(
    tmp_path: Path, api_key: str, sim_url: str, sim_backend: CountingBackend
) -> None:
    rows = []
    async with Evaluation(imdb_config(sim_url, limit=40), run_dir=tmp_path / "run") as evaluation:
        async for row in evaluation:
            rows.append(row)
    assert len(rows) == 40 and {row.status for row in rows} == {"judged"}
    assert sim_backend.calls == 80
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert results["row_id"].to_list() == [str(i) for i in range(40)]
    assert results["prediction"].null_count() == 0 and results["verdict"].null_count() == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert METRIC_KEYS <= metrics.keys()
    assert metrics["n_judged"] == 40 and metrics["models"]["predict"]["served"][0].startswith("sim:")
    assert metrics["majority_baseline_label"] == "Drama"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["endpoint"]["api_key_env"] == TEST_KEY_ENV
    for path in run_files(tmp_path / "run"):
        assert TEST_KEY.encode() not in path.read_bytes(), path


async def test_faults_never_lose_or_duplicate_a_row(tmp_path: Path, api_key: str) -> None:
    settings = SimSettings(error_rate=0.15, reset_rate=0.05, malformed_rate=0.05, seed=3)
    backend = CountingBackend(settings)
    for url in start_server(backend, api_key=TEST_KEY):
        config = imdb_config(url, limit=120, **{"endpoint.max_retries": 1, "endpoint.concurrency": 16})
        async with Evaluation(config, run_dir=tmp_path / "run", clock=InstantClock()) as evaluation:
            pass
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert results.height == 120 and results["row_id"].n_unique() == 120
    failed = results.filter(pl.col("status") != "judged")
    assert failed.height > 0, "with max_retries=1 and 25% faults some rows must fail"
    assert failed["error"].null_count() == 0
    reasons = set(failed["error"].str.extract(r"^(\w+):").to_list())
    assert reasons <= {"http_500", "http_502", "http_503", "connection", "malformed_body"}
    judge = scan_journal(RunDir(tmp_path / "run").journal("judge")).collect()
    predict = scan_journal(RunDir(tmp_path / "run").journal("predict")).collect()
    assert predict.height == 120
    assert judge.height == results.filter(pl.col("status") != "predict_failed").height
    metrics = evaluation.metrics
    assert metrics is not None and metrics["n_judged"] + metrics["n_failed"] == 120
    assert metrics["retries"] > 0


async def test_an_unannounced_rate_limit_is_backed_off_and_finished(tmp_path: Path, api_key: str) -> None:
    # The server allows 50 requests/s (burst 50); the client was told nothing and sends 120. It
    # learns the limit from the server's x-ratelimit-* headers, so 429s are rare, maybe none.
    backend = CountingBackend(SimSettings(rpm=3000, seed=2))
    for url in start_server(backend, api_key=TEST_KEY):
        async with Evaluation(imdb_config(url, limit=60), run_dir=tmp_path / "run") as evaluation:
            pass
    assert evaluation.metrics is not None
    assert evaluation.metrics["n_judged"] == 60 and evaluation.metrics["n_failed"] == 0
    # Every call the backend saw was either answered once per request or refused with a 429.
    assert backend.calls == 120 + evaluation.metrics["rate_limited"]


async def test_a_bad_key_stops_the_run_at_once_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_url: str, sim_backend: CountingBackend
) -> None:
    monkeypatch.setenv(TEST_KEY_ENV, "sk-wrong-key-1234")
    with pytest.raises(AuthError, match=f"\\${TEST_KEY_ENV}") as caught:
        async with Evaluation(imdb_config(sim_url, limit=200), run_dir=tmp_path / "run"):
            pass
    assert "sk-wrong-key-1234" not in str(caught.value)
    assert sim_backend.calls == 0  # the server refused before the backend saw anything


async def test_resume_after_an_interruption_equals_an_uninterrupted_run(
    tmp_path: Path, api_key: str, sim_url: str, sim_backend: CountingBackend
) -> None:
    config = imdb_config(sim_url, limit=60, **{"endpoint.concurrency": 4})
    async with Evaluation(config, run_dir=tmp_path / "whole"):
        pass
    calls_for_whole = sim_backend.calls
    with anyio.CancelScope() as scope:
        async with Evaluation(config, run_dir=tmp_path / "cut") as evaluation:
            async for _ in evaluation:
                if evaluation.stats.done >= 20:
                    scope.cancel()
    assert not (tmp_path / "cut" / "results.parquet").exists()
    calls_before = sim_backend.calls - calls_for_whole
    async with Evaluation(run_dir=tmp_path / "cut", resume=True) as resumed:
        pass
    assert resumed.metrics is not None and resumed.metrics["n_judged"] == 60
    assert comparable(tmp_path / "cut").equals(comparable(tmp_path / "whole"))
    # Nothing done before the cut is asked again: the total exceeds one run by at most the calls
    # that were in flight when it was cut (bounded by the concurrency of each stage).
    extra = sim_backend.calls - calls_for_whole - calls_for_whole
    assert calls_before > 0 and extra <= 2 * 4


async def test_empty_input_rows_are_skipped_with_a_reason(tmp_path: Path, api_key: str, sim_url: str) -> None:
    data = tmp_path / "data.csv"
    data.write_text('Overview,Genre\n"A heist goes wrong.",Crime\n"",Drama\n"  ",Drama\n"Two friends.",Comedy\n')
    config = imdb_config(sim_url, limit=None, **{"dataset.path": str(data)})
    async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
        pass
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert results["status"].to_list() == ["judged", "skipped", "skipped", "judged"]
    assert results["error"][1].startswith("empty_input")
    assert evaluation.metrics is not None and evaluation.metrics["n_skipped"] == 2


def test_the_library_runs_under_trio(tmp_path: Path, api_key: str, sim_url: str) -> None:
    async def main() -> int:
        count = 0
        async with Evaluation(imdb_config(sim_url, limit=10), run_dir=tmp_path / "run") as evaluation:
            async for _ in evaluation:
                count += 1
        return count

    assert anyio.run(main, backend="trio") == 10
    assert pl.read_parquet(tmp_path / "run" / "results.parquet").height == 10


async def test_constrained_answers_use_a_json_schema_enum_and_are_unwrapped(
    tmp_path: Path, api_key: str, sim_url: str
) -> None:
    config = imdb_config(sim_url, limit=20, **{"predict.constrain": True, "judge.constrain": True})
    async with Evaluation(config, run_dir=tmp_path / "run"):
        pass
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert results["prediction_valid"].to_list() == [True] * 20  # every answer is one of the labels
    assert set(results["verdict_text"].to_list()) <= {"correct", "incorrect"}
    assert results["verdict"].null_count() == 0
    journal = [json.loads(line) for line in (tmp_path / "run" / "journal" / "predict.ndjson").read_text().splitlines()]
    replies = {record["row_id"]: json.loads(record["content"])["answer"] for record in journal}  # raw replies kept
    assert replies == dict(zip(results["row_id"].to_list(), results["prediction"].to_list(), strict=True))


async def test_an_error_raised_in_the_callers_block_comes_out_as_itself(tmp_path: Path, api_key: str, sim_url: str) -> None:
    with pytest.raises(ValueError, match="the caller's own"):
        async with Evaluation(imdb_config(sim_url, limit=40), run_dir=tmp_path / "run") as evaluation:
            async for _ in evaluation:
                raise ValueError("the caller's own")
    async with Evaluation(run_dir=tmp_path / "run", resume=True) as resumed:  # and the run is resumable
        pass
    assert resumed.metrics is not None and resumed.metrics["n_judged"] == 40
