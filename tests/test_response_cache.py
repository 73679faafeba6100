"""The response cache: a re-run with a changed judge re-sends only the judge calls, in realtime and
batch mode, over real HTTP; hits are journaled as cached and cost nothing; failures are never
cached; the key is the endpoint and the whole body."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from benchmarks.clocks import InstantClock
from engine import Evaluation
from engine.cli import main
from engine.errors import ProviderError
from engine.mock_provider import MockProvider
from engine.response_cache import CACHE_FILE, ResponseCache
from engine.types import ChatRequest, ChatResult, TokenLogprob, Usage
from tests.support import CountingBackend

from .conftest import TEST_KEY_ENV, imdb_config

ROWS = 20


def metrics(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "metrics.json").read_text()))


@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_a_changed_judge_re_sends_only_the_judge_calls(
    tmp_path: Path, api_key: str, sim_url: str, sim_backend: CountingBackend, mode: str
) -> None:
    cache = {"cache_dir": str(tmp_path / "cache"), "predict.mode": mode, "judge.mode": mode,
             "batch.poll_initial_s": 0.05}
    async with Evaluation(imdb_config(sim_url, limit=ROWS, **cache), run_dir=tmp_path / "first"):
        pass
    first_calls = sim_backend.calls
    changed = imdb_config(sim_url, limit=ROWS, **cache, **{"judge.model": "another-judge"})
    async with Evaluation(changed, run_dir=tmp_path / "second"):
        pass
    second_calls = sim_backend.calls - first_calls
    preflight = 2 if mode == "batch" else 0  # each batch-mode stage's one-word test call before its batches
    assert second_calls == ROWS + preflight  # the judge calls; every prediction came from the cache
    second = metrics(tmp_path / "second")
    assert second["cache_hits"] == {"predict": ROWS, "judge": 0}
    assert second["tokens"]["predict"]["prompt"] == 0 and second["tokens"]["judge"]["prompt"] > 0
    first = metrics(tmp_path / "first")
    assert first["cache_hits"] == {"predict": 0, "judge": 0}
    records = [json.loads(line) for line in (tmp_path / "second" / "journal" / "predict.ndjson").read_text().splitlines()]
    assert all(record["cached"] is True and record["attempts"] == 0 for record in records)
    # The same predictions either way.
    assert pl.read_parquet(tmp_path / "second" / "results.parquet")["prediction"].equals(
        pl.read_parquet(tmp_path / "first" / "results.parquet")["prediction"])


async def test_failures_are_not_cached_and_the_key_is_the_endpoint_and_the_whole_body(tmp_path: Path) -> None:
    flaky = {"fail": True}

    def answer(request: ChatRequest) -> str:
        if request.stage == "judge" and flaky["fail"]:
            raise ProviderError("no", kind="no", reason="http_400", status_code=400)
        return "Drama" if request.stage == "predict" else "correct"

    config = imdb_config(None, limit=5, cache_dir=str(tmp_path / "cache"))
    provider = MockProvider(answer)
    async with Evaluation(config, run_dir=tmp_path / "a", provider=provider, clock=InstantClock()):
        pass
    flaky["fail"] = False
    again = MockProvider(answer)
    async with Evaluation(config, run_dir=tmp_path / "b", provider=again, clock=InstantClock()):
        pass
    assert [request.stage for _, request in again.answered] == ["judge"] * 5  # the failed judge calls, again
    with ResponseCache(tmp_path / "cache") as cache:
        assert len(cache) == 10
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        assert cache.key("https://a/v1", body) != cache.key("https://b/v1", body)
        assert cache.key("e", body) != cache.key("e", {**body, "temperature": 0.5})
        assert cache.key("e", body) == cache.key("e", dict(reversed(body.items())))


def test_the_cache_survives_its_process_and_serves_two_at_once(tmp_path: Path) -> None:
    logprobs = (TokenLogprob(" correct", -0.1, ((" correct", -0.1), (" incorrect", -2.4))),)
    result = ChatResult("judge:1", "VERDICT: correct", "m", Usage(10, 3), 0.2, logprobs=logprobs)
    with ResponseCache(tmp_path) as writer, ResponseCache(tmp_path) as reader:
        writer.put("k", result)
        hit = reader.get("k", "judge@2:1")
    assert hit is not None and hit.cached and hit.custom_id == "judge@2:1" and hit.content == "VERDICT: correct"
    assert hit.usage == Usage() and hit.attempts == 0 and hit.logprobs == logprobs
    with sqlite3.connect(tmp_path / CACHE_FILE) as db:  # on disk, in a file any process can open
        assert db.execute("SELECT count(*) FROM replies").fetchone() == (1,)


def test_the_cli_flag_turns_the_cache_on_and_warns_about_sampling(
    tmp_path: Path, api_key: str, sim_url: str, sim_backend: CountingBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--limit", "10", "--base-url", sim_url, "--api-key-env", TEST_KEY_ENV, "--cache", str(tmp_path / "c"),
            "--set", "judge.temperature=0.7", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    calls = sim_backend.calls
    assert main([*args, "--out", str(tmp_path / "two")]) == 0
    assert sim_backend.calls == calls  # everything came from the cache
    assert metrics(tmp_path / "two")["cache_hits"] == {"predict": 10, "judge": 10}
    assert metrics(tmp_path / "two")["requests"] == 0
    assert "judge: temperature 0.7 with the response cache on" in capsys.readouterr().err


def test_a_cached_answer_read_back_from_the_journal_made_no_attempt() -> None:
    from engine.journal import outcome_to_record, record_to_outcome
    from engine.types import Row

    cached = ChatResult("predict:1", "Drama", "m", Usage(), None, attempts=0, cached=True)
    back = record_to_outcome(outcome_to_record(Row("1", 1, {}), cached))
    assert isinstance(back, ChatResult) and back.attempts == 0 and back.cached
