"""``RunDir``: the one owner of a run directory's paths, and the run read out of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import Evaluation
from engine.errors import ConfigError, RunInUseError
from engine.mock_provider import MockProvider
from engine.rundir import RunDir

from .conftest import imdb_config

PATHS = {
    "run_file": "run.json", "lock_file": ".lock", "metrics_file": "metrics.json",
    "results_file": "results.parquet", "results_parts": "results.parts", "journal_dir": "journal",
    "batch_events": "journal/batches.ndjson", "session_events": "journal/sessions.ndjson",
    "batches_dir": "batches", "server_dir": "server", "plots_dir": "plots",
    "report_md": "report.md", "report_html": "report.html",
}


def test_every_path_of_a_run_directory_is_named_once(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert {name: getattr(run, name).relative_to(run.path).as_posix() for name in PATHS} == PATHS
    assert run.journal("judge") == tmp_path / "run" / "journal" / "judge.ndjson"


async def test_a_finished_run_is_read_whole_and_names_the_files_a_run_writes(tmp_path: Path) -> None:
    config = imdb_config(None, limit=6)
    async with Evaluation(config, run_dir=tmp_path / "run", provider=MockProvider(lambda request: "Drama")):
        pass
    run_dir = RunDir(tmp_path / "run")
    run = run_dir.load()
    written = {path.relative_to(run_dir.path).as_posix() for path in run_dir.path.rglob("*")}
    assert {"run.json", "metrics.json", "results.parquet", "journal/predict.ndjson", "journal/judge.ndjson",
            "journal/sessions.ndjson", "report.md", "report.html"} <= written
    assert run.run_id == "run" and run.config.model_dump() == config.model_dump()
    assert run.metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert run.results.collect().height == 6


def test_what_is_not_a_finished_run_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a run directory \(no run.json\)"):
        RunDir(tmp_path).load()
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "x", "config": imdb_config(None).model_dump(mode="json")}))
    with pytest.raises(ConfigError, match=r"has not finished \(no metrics.json\).*--resume"):
        RunDir(tmp_path).load()
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"run.json: unreadable"):
        RunDir(tmp_path).config()


def test_a_claimed_directory_cannot_be_claimed_again(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    lock = run.claim(resume=False)
    try:
        with pytest.raises(RunInUseError, match="in use by another engine process"):
            RunDir(tmp_path / "run").claim(resume=False)
    finally:
        lock.release()
