"""An endpoint per stage: the predict stage and each judge of a panel on the endpoint it names,
each endpoint with its own limiter, batches per endpoint, and metrics per endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from adapters.server.backends import SimSettings
from adapters.server.embedded import EmbeddedServer
from engine import Evaluation
from engine.config import TaskConfig, load_config, parse_config
from engine.errors import ConfigError
from engine.journal import EventLog
from engine.run.lanes import lanes_of
from engine.rundir import RunDir
from engine.shipped import example_config
from tests.conftest import TEST_KEY, TEST_KEY_ENV
from tests.support.counting import CountingBackend

ROWS = 24


def two_endpoint_config(main_url: str, other_url: str, tmp_path: Path, *, mode: str = "realtime",
                        other: dict[str, Any] | None = None) -> TaskConfig:
    """The IMDB task: predict and judge ``near`` on ``main_url``, judge ``far`` on ``other_url``."""
    data = load_config(example_config("imdb")).model_dump(mode="json")
    judge = data.pop("judge")
    far_endpoint = {"base_url": other_url, "api_key_env": TEST_KEY_ENV, **(other or {})}
    data["judge"] = [{**judge, "name": "near", "mode": mode},
                     {**judge, "name": "far", "mode": mode, "model": "far-model", "endpoint": far_endpoint}]
    data["predict"]["mode"] = mode
    data["dataset"]["limit"] = ROWS
    data["endpoint"].update(base_url=main_url, api_key_env=TEST_KEY_ENV)
    data["batch"].update(poll_initial_s=0.02, poll_factor=1.0)
    return parse_config(data, source="two.toml", base_dir=tmp_path)


@pytest.fixture
def servers() -> Iterator[tuple[CountingBackend, str, CountingBackend, str]]:
    main, other = CountingBackend(SimSettings(seed=1)), CountingBackend(SimSettings(seed=2))
    with EmbeddedServer(main, api_key=TEST_KEY) as main_url, EmbeddedServer(other, api_key=TEST_KEY) as other_url:
        yield main, main_url, other, other_url


def models_seen(backend: CountingBackend) -> list[str]:
    return sorted({json.loads(key)[0] for key in backend.requests})


@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_each_judge_calls_its_own_endpoint(
    tmp_path: Path, api_key: str, servers: tuple[CountingBackend, str, CountingBackend, str], mode: str
) -> None:
    main, main_url, other, other_url = servers
    config = two_endpoint_config(main_url, other_url, tmp_path, mode=mode)
    async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
        pass
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert results["status"].to_list() == ["judged"] * ROWS
    predict_model, near_model = config.predict.model, config.judges[0].model
    assert models_seen(other) == ["far-model"] and "far-model" not in models_seen(main)
    assert set(models_seen(main)) == {predict_model, near_model}
    far_calls = sum(count for key, count in other.requests.items() if json.loads(key)[0] == "far-model")
    assert far_calls == ROWS + (mode == "batch")  # a batch judge's preflight: one tiny call before its batches
    metrics = evaluation.metrics
    assert metrics is not None
    by_endpoint = {tuple(entry["callers"]): entry for entry in metrics["endpoints"]}
    assert set(by_endpoint) == {("predict", "judge.near"), ("judge.far",)}
    assert by_endpoint[("judge.far",)]["endpoint"] == f"{other_url} (openai chat)"
    assert by_endpoint[("judge.far",)]["requests"] == ROWS
    assert by_endpoint[("predict", "judge.near")]["requests"] == 2 * ROWS
    assert sum(entry["requests"] for entry in metrics["endpoints"]) == metrics["requests"]
    if mode == "batch":
        events = EventLog(RunDir(tmp_path / "run").batch_events).events()
        lanes = {event["stage"] for event in events if event["event"] == "batch"}
        assert lanes == {"predict", "judge", "judge.far"}  # the far judge's batches are its endpoint's own
        assert metrics["batches_created"] == 3


async def test_a_rate_limited_endpoint_does_not_slow_the_other(
    tmp_path: Path, api_key: str
) -> None:
    """The far endpoint answers 429s (a low RPM budget); the main one never does: its own limiter
    is not paused by the other's, and the metrics tell the endpoints apart."""
    main, other = CountingBackend(SimSettings(seed=1)), CountingBackend(SimSettings(seed=2, rpm=600, burst_seconds=0.1))
    with EmbeddedServer(main, api_key=TEST_KEY) as main_url, EmbeddedServer(other, api_key=TEST_KEY) as other_url:
        config = two_endpoint_config(main_url, other_url, tmp_path, other={"concurrency": 16})
        async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
            pass
    metrics = evaluation.metrics
    assert metrics is not None and metrics["n_judged"] == ROWS
    by_endpoint = {tuple(entry["callers"]): entry for entry in metrics["endpoints"]}
    assert other.rate_limited > 0 and main.rate_limited == 0
    assert by_endpoint[("judge.far",)]["rate_limited"] == other.rate_limited
    assert by_endpoint[("predict", "judge.near")]["rate_limited"] == 0
    main_limiter, far_limiter = (endpoint.limiter for endpoint in evaluation.endpoints)
    assert main_limiter is not far_limiter


def test_lanes_group_judges_by_endpoint(tmp_path: Path) -> None:
    config = two_endpoint_config("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1", tmp_path)
    lanes = lanes_of(config)
    assert [(lane.name, lane.stage, lane.callers) for lane in lanes] == [
        ("predict", "predict", ("predict",)), ("judge", "judge", ("judge.near",)), ("judge.far", "judge", ("judge.far",)),
    ]
    plain = load_config(example_config("imdb"))
    assert [lane.name for lane in lanes_of(plain)] == ["predict", "judge"]  # as before lanes: old runs resume


def test_a_stage_endpoint_names_its_provider_key_and_limits(tmp_path: Path) -> None:
    data = load_config(example_config("imdb")).model_dump(mode="json")
    data["judge"]["endpoint"] = {"provider": "anthropic", "base_url": "https://api.anthropic.com", "rpm": 50}
    config = parse_config(data, source="t.toml", base_dir=tmp_path)
    judge_endpoint = config.endpoint_of("judge")
    assert judge_endpoint.api_key_env == "ANTHROPIC_API_KEY" and judge_endpoint.rpm == 50
    assert judge_endpoint.concurrency == 64  # what the stage's endpoint leaves out is its default
    assert config.endpoint_of("predict") == config.endpoint
    assert list(config.endpoints.values()) == [("predict",), ("judge",)]
    data["judge"]["logprobs"] = True
    with pytest.raises(ConfigError, match=r"judge\.logprobs: token log-probabilities come only from chat completions"):
        parse_config(data, source="t.toml", base_dir=tmp_path)
    data["judge"]["logprobs"] = False
    data["judge"]["mode"] = "batch"
    data["batch"]["max_requests_per_file"] = 200_000
    with pytest.raises(ConfigError, match="Message Batches, which take at most 100,000 requests"):
        parse_config(data, source="t.toml", base_dir=tmp_path)
    data["batch"]["max_requests_per_file"] = 50_000
    data["judge"]["endpoint"] = {"provider": "anthropic", "api": "responses"}
    with pytest.raises(ConfigError, match="is OpenAI's"):
        parse_config(data, source="t.toml", base_dir=tmp_path)
