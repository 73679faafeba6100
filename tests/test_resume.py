"""Resume is correct or refused, never silently wrong, and one run directory has one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import polars as pl
import pytest

from adapters.server.backends.base import BackendError, BackendReply
from adapters.server.backends.sim import SimSettings
from adapters.server.embedded import EmbeddedServer
from benchmarks.clocks import InstantClock
from engine import ConfigError, Evaluation
from engine.config import TaskConfig
from engine.errors import RunInUseError
from engine.shipped import example_config
from tests.support import CountingBackend

from .conftest import TEST_KEY_ENV, imdb_config

REPO = Path(__file__).resolve().parent.parent


def movies(tmp_path: Path, rows: int = 40) -> Path:
    """The first ``rows`` rows of the shipped IMDB file, as a file the test may edit."""
    path = tmp_path / "movies.csv"
    pl.read_csv(example_config("imdb").parent / "imdb_top_1000.csv", infer_schema=False).head(rows).write_csv(path)
    return path


def task(url: str, data: Path, *, limit: int | None = None, **overrides: Any) -> TaskConfig:
    return imdb_config(url, limit=limit, **{"dataset.path": str(data), **overrides})


def comparable(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "results.parquet").drop("predict_latency_s", "judge_latency_s")


async def interrupted(config: TaskConfig, run_dir: Path, *, after: int) -> None:
    """A run cancelled once ``after`` rows are joined: the rest is owed."""
    with anyio.CancelScope() as scope:
        async with Evaluation(config, run_dir=run_dir) as evaluation:
            seen = 0
            async for _ in evaluation:
                seen += 1
                if seen == after:
                    scope.cancel()
    assert scope.cancelled_caught


def engine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300, cwd=REPO)


# -- item 4: one process per run directory ------------------------------------------------------


async def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(
    tmp_path: Path, api_key: str, sim_url: str, sim_backend: CountingBackend
) -> None:
    run_dir = tmp_path / "run"
    async with Evaluation(imdb_config(sim_url, limit=20), run_dir=run_dir) as holder:
        again = await anyio.to_thread.run_sync(lambda: engine("run", "--resume", str(run_dir), "--quiet"))
        same_out = await anyio.to_thread.run_sync(
            lambda: engine("run", "--base-url", sim_url, "--api-key-env", TEST_KEY_ENV, "--out", str(run_dir))
        )
        with pytest.raises(RunInUseError):
            async with Evaluation(run_dir=run_dir, resume=True):
                pass
        async for _ in holder:
            pass
    expected = (
        f"error: {run_dir} is in use by another engine process (pid {os.getpid()}): let it finish or stop it, then try again"
    )
    for done in (again, same_out):
        assert done.returncode == 2
        assert done.stderr.strip().splitlines()[-1] == expected
    assert sim_backend.calls == 40  # 20 rows, each paid once
    assert comparable(run_dir).height == 20


async def test_the_lock_file_of_a_dead_process_is_no_obstacle(tmp_path: Path, api_key: str, sim_url: str) -> None:
    run_dir = tmp_path / "run"
    await interrupted(imdb_config(sim_url, limit=20), run_dir, after=5)
    (run_dir / ".lock").write_text("999999999\n")  # what a SIGKILLed holder leaves; the kernel dropped its flock
    async with Evaluation(run_dir=run_dir, resume=True) as evaluation:
        pass
    assert evaluation.metrics is not None and evaluation.metrics["n_judged"] == 20


# -- items 5 and 6: what may change on resume, and what may not ------------------------------


async def test_resume_refuses_a_changed_model_or_prompt_naming_it(
    tmp_path: Path, api_key: str, sim_url: str, sim_backend: CountingBackend
) -> None:
    run_dir = tmp_path / "run"
    async with Evaluation(imdb_config(sim_url, limit=10), run_dir=run_dir):
        pass
    calls = sim_backend.calls
    run_file = run_dir / "run.json"
    original = run_file.read_text()
    edited = json.loads(original)
    edited["config"]["predict"]["model"] = "another-model"
    run_file.write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match=r'predict\.model: "klusterai/Meta-Llama-3\.1-8B-Instruct-Turbo" -> "another-model"'):
        async with Evaluation(run_dir=run_dir, resume=True):
            pass
    run_file.write_text(original)
    prompt = await anyio.to_thread.run_sync(
        lambda: engine("run", "--resume", str(run_dir), "--set", "judge.user_template=Is {prediction} right?")
    )
    assert prompt.returncode == 2
    (line,) = prompt.stderr.strip().splitlines()
    assert line.startswith(f"error: {run_dir}: resuming would change what its results depend on (judge.user_template: ")
    assert "start a new run (--out NEW_DIR)" in line
    assert sim_backend.calls == calls  # refused before anything was sent


async def test_resume_takes_a_new_base_url_limits_and_a_larger_limit(tmp_path: Path, api_key: str) -> None:
    """A run whose server moved can be finished: endpoint settings may change, and so may the limit grow."""
    run_dir = tmp_path / "run"
    with EmbeddedServer(CountingBackend(SimSettings(seed=1))) as old_url:
        await interrupted(imdb_config(old_url, limit=20), run_dir, after=8)
    moved = CountingBackend(SimSettings(seed=1))
    with EmbeddedServer(moved) as new_url:
        done = await anyio.to_thread.run_sync(lambda: engine(
            "run", "--resume", str(run_dir), "--base-url", new_url, "--concurrency", "3", "--limit", "30", "--quiet"
        ))
        resumed_calls = moved.calls
        whole = tmp_path / "whole"
        async with Evaluation(imdb_config(new_url, limit=30), run_dir=whole):
            pass
    assert done.returncode == 0, done.stderr
    assert comparable(run_dir).equals(comparable(whole))
    run = json.loads((run_dir / "run.json").read_text())
    assert run["config"]["endpoint"]["base_url"] == new_url and run["config"]["endpoint"]["concurrency"] == 3
    # Only what was owed: the 22 rows not joined before the cut, at most (some were predicted).
    assert resumed_calls <= 2 * (30 - 8)


async def test_resume_redoes_exactly_the_rows_whose_data_changed(tmp_path: Path, api_key: str) -> None:
    """Edit and reorder the data file between kill and resume: the result is the fresh run's on the new file."""
    data = movies(tmp_path)
    backend = CountingBackend(SimSettings(seed=3))
    with EmbeddedServer(backend) as url:
        await interrupted(task(url, data), tmp_path / "cut", after=15)
        async with Evaluation(task(url, data), run_dir=tmp_path / "finished"):
            pass
        frame = pl.read_csv(data, infer_schema=False)
        edited = frame.with_columns(
            pl.when(pl.int_range(pl.len()) % 8 == 0).then(pl.col("Overview") + " Edited.").otherwise(pl.col("Overview"))
            .alias("Overview")
        )
        edited.reverse().write_csv(data)  # reordered: every position-based id now names another movie
        async with Evaluation(task(url, data), run_dir=tmp_path / "fresh"):
            pass
        before = backend.calls
        async with Evaluation(run_dir=tmp_path / "finished", resume=True) as finished:
            pass
        redone = backend.calls - before
        async with Evaluation(run_dir=tmp_path / "cut", resume=True):
            pass
    assert comparable(tmp_path / "cut").equals(comparable(tmp_path / "fresh"))
    assert comparable(tmp_path / "finished").equals(comparable(tmp_path / "fresh"))
    # Reversed, 40 position ids all name other movies: every row changed. The note says so.
    assert redone == 2 * 40
    assert any("40 finished rows are done again" in note for note in finished.notes)


@pytest.mark.parametrize("bucket_rows", [50_000, 3])
async def test_an_edited_row_alone_is_redone(
    tmp_path: Path, api_key: str, monkeypatch: pytest.MonkeyPatch, bucket_rows: int
) -> None:
    """Finished rows are compared with their data rows a bucket at a time (by a hash of the id),
    one bucket or seven."""
    monkeypatch.setattr("engine.resume._BUCKET_ROWS", bucket_rows)
    data = movies(tmp_path, rows=20)
    backend = CountingBackend(SimSettings(seed=3))
    with EmbeddedServer(backend) as url:
        by_title: dict[str, Any] = {"dataset.id_column": "Series_Title"}
        async with Evaluation(task(url, data, **by_title), run_dir=tmp_path / "run"):
            pass
        frame = pl.read_csv(data, infer_schema=False)
        frame.with_columns(
            pl.when(pl.col("Series_Title").is_in(["The Godfather", "Pulp Fiction"]))
            .then(pl.lit("An overview rewritten.")).otherwise(pl.col("Overview")).alias("Overview")
        ).write_csv(data)
        before = backend.calls
        async with Evaluation(run_dir=tmp_path / "run", resume=True):
            pass
        redone = backend.calls - before
    assert redone == 4  # two rows, predict and judge
    rewritten = comparable(tmp_path / "run").filter(pl.col("inputs").struct.field("Overview") == "An overview rewritten.")
    assert rewritten["row_id"].sort().to_list() == ["Pulp Fiction", "The Godfather"]


# -- item 7: the figures of a run cover every session ----------------------------------------


async def test_resuming_a_finished_run_keeps_its_figures(
    tmp_path: Path, api_key: str, sim_url: str, sim_backend: CountingBackend
) -> None:
    run_dir = tmp_path / "run"
    async with Evaluation(imdb_config(sim_url, limit=30), run_dir=run_dir) as first:
        pass
    async with Evaluation(run_dir=run_dir, resume=True) as again:
        pass
    assert first.metrics is not None and again.metrics is not None
    assert first.metrics["requests"] == again.metrics["requests"] == sim_backend.calls == 60
    assert again.metrics["wall_seconds"] >= first.metrics["wall_seconds"] > 0
    assert (first.metrics["sessions"], again.metrics["sessions"]) == (1, 2)


async def test_the_figures_of_an_interrupted_run_add_up(tmp_path: Path, api_key: str) -> None:
    backend = CountingBackend(SimSettings(seed=2, error_rate=0.2))
    with EmbeddedServer(backend) as url:
        config = imdb_config(url, limit=40, **{"endpoint.max_retries": 10})
        await interrupted(config, tmp_path / "run", after=10)
        async with Evaluation(run_dir=tmp_path / "run", resume=True, clock=InstantClock()) as resumed:
            pass
    metrics = resumed.metrics
    assert metrics is not None and metrics["n_judged"] == 40 and metrics["sessions"] == 2
    # Every call the server answered is counted, but those in flight when the first session was
    # cancelled: their outcomes never reached the journal.
    assert 80 + metrics["retries"] == metrics["requests"] <= backend.calls
    assert metrics["retries"] > 0


# -- item 8: transient failures are retried by --resume, the rest by --retry-failed -----------


class RefusingBackend(CountingBackend):
    """Refuses (400) the predict calls of some overviews and fails (503) those of others, while ``faulty``."""

    def __init__(self, refused: set[str], failing: set[str]) -> None:
        super().__init__(SimSettings(seed=4))
        self.refused, self.failing = refused, failing
        self.faulty = True

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        question = body["messages"][-1]["content"]  # the predict prompt is the overview alone
        if self.faulty and question in self.refused | self.failing:
            self.calls += 1
            if question in self.refused:
                raise BackendError(400, "the request is refused", type="invalid_request_error")
            raise BackendError(503, "overloaded", type="server_error")
        return await super().complete(body)


async def test_resume_retries_transient_failures_and_retry_failed_the_others(tmp_path: Path, api_key: str) -> None:
    data = movies(tmp_path, rows=12)
    overviews = pl.read_csv(data, infer_schema=False)["Overview"].to_list()
    backend = RefusingBackend(refused={overviews[1]}, failing={overviews[2], overviews[5]})
    run_dir = tmp_path / "run"
    with EmbeddedServer(backend) as url:
        config = task(url, data, **{"endpoint.max_retries": 0})
        async with Evaluation(config, run_dir=run_dir) as first:
            pass
        assert first.metrics is not None and first.metrics["n_failed"] == 3
        backend.faulty = False
        calls = backend.calls
        async with Evaluation(run_dir=run_dir, resume=True) as resumed:
            pass
        assert backend.calls - calls == 4  # the two 503 rows, predict and judge; the 400 row stays failed
        assert resumed.metrics is not None and resumed.metrics["n_failed"] == 1
        async with Evaluation(run_dir=run_dir, resume=True, retry_failed=True) as retried:
            pass
    assert retried.metrics is not None and retried.metrics["n_failed"] == 0 and retried.metrics["n_judged"] == 12
    results = comparable(run_dir)
    assert results.height == 12 and results["row_id"].n_unique() == 12


