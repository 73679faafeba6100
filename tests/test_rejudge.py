"""Re-judging a finished run: only the judge stage runs, on the source's predictions, over real
HTTP against the embedded server (the server counts every call it sees)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import polars as pl
import pytest

from engine import Evaluation
from engine.cli import main
from engine.errors import ConfigError
from engine.prior import Sources, judging_config
from engine.report.compare import compare_runs
from engine.rundir import RunDir
from tests.support import CountingBackend

from .conftest import TEST_KEY_ENV, imdb_config

ROWS = 30

JUDGE_FILE = """
name = "imdb-second-opinion"

[judge]
model = "another-judge"
system_prompt = "You check genre answers."
user_template = "Overview: {Overview}\\nGenres: {labels}\\nAnswer: {prediction}\\nIs the answer correct or incorrect?"
max_tokens = 8
"""


async def predicted(tmp_path: Path, url: str, **overrides: object) -> Path:
    """A finished run of the IMDB task (the source to judge again)."""
    source = tmp_path / "source"
    async with Evaluation(imdb_config(url, limit=ROWS, **overrides), run_dir=source):
        pass
    return source


async def test_a_judge_file_judges_the_sources_predictions_without_a_predict_call(
    tmp_path: Path, api_key: str, sim_url: str, sim_backend: CountingBackend
) -> None:
    source = await predicted(tmp_path, sim_url)
    calls = sim_backend.calls
    judge_file = tmp_path / "judge.toml"
    judge_file.write_text(JUDGE_FILE)
    sources = Sources((source,))
    config = judging_config(sources, judge_file)
    assert config.name == "imdb-second-opinion" and config.judges[0].model == "another-judge"
    async with Evaluation(config, run_dir=tmp_path / "again", sources=sources) as again:
        pass
    assert sim_backend.calls - calls == ROWS  # one judge call per row, no predict call
    models = [json.loads(key)[0] for key in sim_backend.requests]
    assert models.count("another-judge") == ROWS
    before, after = (pl.read_parquet(path / "results.parquet") for path in (source, tmp_path / "again"))
    assert after["prediction"].to_list() == before["prediction"].to_list()
    assert again.metrics is not None and again.metrics["tokens"]["predict"]["prompt"] == 0
    assert RunDir(tmp_path / "again").info()["sources"] == [str(source.resolve())]
    served = json.loads((source / "metrics.json").read_text())["models"]["predict"]["served"]
    assert again.metrics["models"]["predict"]["served"] == served  # who made the predictions
    comparison = compare_runs(source, tmp_path / "again")
    assert comparison["prediction_agreement"] == 1.0  # the same predictions, two judges


async def test_a_judging_run_cut_short_resumes_from_its_run_json_without_paying_twice(
    tmp_path: Path, api_key: str, sim_url: str, sim_backend: CountingBackend
) -> None:
    source = await predicted(tmp_path, sim_url)
    sources = Sources((source,))
    config = judging_config(sources)
    calls = sim_backend.calls
    with anyio.CancelScope() as scope:
        async with Evaluation(config, run_dir=tmp_path / "cut", sources=sources) as evaluation:
            async for _ in evaluation:
                if evaluation.stats.done >= 10:
                    scope.cancel()
    async with Evaluation(run_dir=tmp_path / "cut", resume=True) as resumed:
        pass
    assert resumed.sources == sources
    assert resumed.metrics is not None and resumed.metrics["n_judged"] == ROWS
    # Each row judged once, bar the calls in flight at the cut (at most the concurrency).
    assert ROWS <= sim_backend.calls - calls <= ROWS + config.endpoint.concurrency
    assert pl.read_parquet(tmp_path / "cut" / "results.parquet")["prediction"].equals(
        pl.read_parquet(source / "results.parquet")["prediction"]
    )


async def test_rows_the_source_did_not_predict_are_skipped_naming_the_source(
    tmp_path: Path, api_key: str, sim_url: str
) -> None:
    source = await predicted(tmp_path, sim_url)
    results = pl.read_parquet(source / "results.parquet")
    # Take the predictions of rows 0-4 away, as if the source had failed them.
    results.with_columns(
        pl.when(pl.col("index") < 5).then(None).otherwise(pl.col("prediction")).alias("prediction")
    ).write_parquet(source / "results.parquet")
    sources = Sources((source,))
    async with Evaluation(judging_config(sources), run_dir=tmp_path / "again", sources=sources) as again:
        pass
    after = pl.read_parquet(tmp_path / "again" / "results.parquet")
    assert after.filter(pl.col("index") < 5)["status"].to_list() == ["skipped"] * 5
    assert after["error"][0].startswith("no_prediction: ") and str(source) in after["error"][0]
    assert again.metrics is not None and again.metrics["n_judged"] == ROWS - 5


def test_the_cli_judges_a_run_again_and_refuses_what_it_cannot(tmp_path: Path, api_key: str, sim_url: str) -> None:
    source = anyio.run(lambda: predicted(tmp_path, sim_url))
    assert main(["judge", str(source), "--out", str(tmp_path / "again"), "--judge-model", "j2",
                 "--api-key-env", TEST_KEY_ENV, "--quiet"]) == 0
    assert RunDir(tmp_path / "again").config().judges[0].model == "j2"
    assert main(["judge", str(source), str(source)]) == 2  # two runs without --pairwise
    with pytest.raises(ConfigError, match=r"no results\.parquet: judge a finished run"):
        Sources((tmp_path / "nothing",)).predictions()
