"""``--dry-run`` (engine.estimate): what a run would send, sized by the requests really built."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import load_config, with_overrides
from engine.config import TaskConfig, parse_config
from engine.dataset import Dataset
from engine.errors import ConfigError
from engine.estimate import estimate
from engine.prompts import PromptBuilder
from engine.shipped import example_config

ROWS = 12


def imdb(**overrides: object) -> TaskConfig:
    return with_overrides(load_config(example_config("imdb")), {"dataset.limit": ROWS, **overrides})


def sent(config: TaskConfig) -> dict[str, dict[str, int]]:
    """Prompt and completion bounds of the requests a run would send, built one by one."""
    dataset = Dataset(config.dataset, label_set=config.labels)
    builder = PromptBuilder(config, dataset.columns)
    totals = {"predict": {"prompt": 0, "completion": 0}, "judge": {"prompt": 0, "completion": 0}}
    for row, _ in dataset.rows(tuple(builder.template_fields)):
        predict = builder.predict(row)
        # the judge sees a prediction as long as the predict call may answer: 4 characters a token
        judge = builder.judge(row, "x" * (4 * predict.body["max_tokens"]))
        for stage, request in (("predict", predict), ("judge", judge)):
            totals[stage]["completion"] += request.body["max_tokens"]
            totals[stage]["prompt"] += request.estimated_tokens - request.body["max_tokens"]
    return totals


@pytest.mark.parametrize("constrain", [True, False])
def test_the_bounds_are_those_of_the_requests_sent(constrain: bool) -> None:
    config = imdb(**{"predict.constrain": constrain, "judge.constrain": constrain})
    figures = estimate(config)
    expected = sent(config)
    for stage in ("predict", "judge"):
        assert figures["stages"][stage]["requests"] == ROWS
        assert figures["stages"][stage]["completion_tokens_at_most"] == expected[stage]["completion"]
        assert figures["stages"][stage]["prompt_tokens"] == expected[stage]["prompt"]
    if constrain:  # a constrained reply has room for the whole JSON answer: more than max_tokens (16)
        assert figures["stages"]["predict"]["completion_tokens_at_most"] > ROWS * config.predict.max_tokens
        assert figures["stages"]["judge"]["completion_tokens_at_most"] > ROWS * config.judges[0].max_tokens


def test_the_cost_bound_prices_the_requests_sent() -> None:
    config = load_config(example_config("imdb"))
    prices = {config.predict.model: {"input": 1.0, "output": 3.0}, config.judges[0].model: {"input": 2.0, "output": 8.0}}
    config = imdb(prices=prices, **{"judge.mode": "batch"})
    figures = estimate(config)
    expected = sent(config)
    predict = (expected["predict"]["prompt"] * 1.0 + expected["predict"]["completion"] * 3.0) / 1e6
    judge = (expected["judge"]["prompt"] * 1.0 + expected["judge"]["completion"] * 4.0) / 1e6  # batch: half
    assert figures["stages"]["predict"]["cost_usd_at_most"] == round(predict, 4)
    assert figures["stages"]["judge"]["cost_usd_at_most"] == round(judge, 4)
    assert figures["cost_usd_at_most"] == round(predict + judge, 4)


def test_a_dry_run_error_names_the_config_file(tmp_path: Path) -> None:
    data = load_config(example_config("imdb")).model_dump(mode="json")
    data["dataset"]["label_column"] = "genre"
    config = parse_config(data, source="imdb.toml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^imdb.toml: dataset.label_column = 'genre' is not a column of .*imdb_top_1000.csv"):
        estimate(config)


LONG_SYSTEM = "You classify movies by genre. Think of the plot, the cast and the tone. " * 90  # ~1,600 tokens


def test_a_shared_prefix_past_1024_tokens_is_counted_as_cached_and_priced_so() -> None:
    prices = {load_config(example_config("imdb")).predict.model: {"input": 2.0, "output": 8.0, "cached_input": 0.5}}
    config = imdb(prices=prices, **{"predict.system_prompt": LONG_SYSTEM})
    stage = estimate(config)["stages"]["predict"]
    # Every request starts with the system message; the user message differs from the first
    # character of the row's text, so the shared prefix is the system message and the user
    # message's leading template text. OpenAI caches it in 128-token steps from 1,024.
    dataset = Dataset(config.dataset, label_set=config.labels)
    builder = PromptBuilder(config, dataset.columns)
    requests = [builder.predict(row) for row, _ in dataset.rows(tuple(builder.template_fields))]
    texts = ["".join(f"{m['role']}\n{m['content']}\n" for m in request.body["messages"]) for request in requests]
    shared = min(next(i for i, chars in enumerate(zip(texts[0], text, strict=False)) if len(set(chars)) > 1)
                 for text in texts[1:]) // 4
    per_request = 1024 + (shared - 1024) // 128 * 128
    assert stage["cached_prompt_tokens"] == per_request * (ROWS - 1) and stage["cache_write_tokens"] == 0
    uncached = stage["prompt_tokens"] - stage["cached_prompt_tokens"]
    expected = (uncached * 2.0 + stage["cached_prompt_tokens"] * 0.5 + stage["completion_tokens_at_most"] * 8.0) / 1e6
    assert stage["cost_usd_at_most"] == pytest.approx(expected, abs=1e-4)


def test_anthropic_caches_only_the_marked_system_prompt() -> None:
    endpoint = {"provider": "anthropic", "base_url": "https://api.anthropic.com"}
    unmarked = estimate(imdb(**{"predict.system_prompt": LONG_SYSTEM, "predict.endpoint": endpoint}))["stages"]["predict"]
    assert (unmarked["cached_prompt_tokens"], unmarked["cache_write_tokens"]) == (0, 0)
    marked = estimate(imdb(**{"predict.system_prompt": LONG_SYSTEM, "predict.endpoint": endpoint, "predict.cache": True}))
    system_tokens = len(LONG_SYSTEM) // 4
    stage = marked["stages"]["predict"]
    assert (stage["cached_prompt_tokens"], stage["cache_write_tokens"]) == (system_tokens * (ROWS - 1), system_tokens)
    assert stage["endpoint"] == "https://api.anthropic.com (anthropic messages)"
