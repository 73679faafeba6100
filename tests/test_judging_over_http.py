"""Each kind of judge end to end: the official SDK over real HTTP against the embedded server,
whose simulator reasons (with a decoy verdict line before the last one), scores, compares pairs
with a set first-position preference, and gives token logprobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import polars as pl
import pytest

from adapters.server.backends.sim import SimSettings
from engine import Evaluation, load_config, with_overrides
from engine.cli import main
from engine.judges import read_reply
from engine.shipped import example_config
from tests.support import CountingBackend

from .conftest import TEST_KEY, TEST_KEY_ENV, imdb_config, start_server

ROWS = 30
REASONING = {"judge.reasoning": True, "judge.max_tokens": 400}


def open_qa(url: str, **overrides: Any) -> Any:
    """The shipped open-generation example against ``url``."""
    return with_overrides(load_config(example_config("open_qa")), {
        "endpoint.base_url": url, "endpoint.api_key_env": TEST_KEY_ENV, "local.backend": "sim", **overrides,
    })


def results(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "results.parquet")


def metrics(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "metrics.json").read_text()))


@pytest.mark.parametrize("mode", ["realtime", "batch"])
@pytest.mark.parametrize("constrain", [False, True])
async def test_a_reasoning_judge_is_not_fooled_by_the_verdict_its_reasoning_quotes(
    tmp_path: Path, api_key: str, sim_url: str, mode: str, constrain: bool
) -> None:
    config = imdb_config(sim_url, limit=ROWS, **REASONING, **{"judge.constrain": constrain, "judge.mode": mode,
                                                              "batch.poll_initial_s": 0.05})
    async with Evaluation(config, run_dir=tmp_path / "run"):
        pass
    frame = results(tmp_path / "run")
    assert frame["status"].unique().to_list() == ["judged"] and frame["verdict"].null_count() == 0
    assert frame["reasoning"].null_count() == 0
    if not constrain:  # the simulator's reasoning holds a decoy line: the opposite verdict
        decoys = [line for text in frame["reasoning"] for line in text.splitlines() if line.startswith("VERDICT:")]
        assert len(decoys) == ROWS
        assert [d.removeprefix("VERDICT: ") for d in decoys] != frame["verdict_text"].to_list()
    assert metrics(tmp_path / "run")["reasoning"] is True


@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_a_score_judge_grades_the_open_qa_example_against_its_reference(
    tmp_path: Path, api_key: str, sim_url: str, sim_backend: CountingBackend, mode: str
) -> None:
    config = open_qa(sim_url, **{"judge.mode": mode, "predict.mode": mode, "batch.poll_initial_s": 0.05})
    async with Evaluation(config, run_dir=tmp_path / "run"):
        pass
    frame = results(tmp_path / "run")
    score = metrics(tmp_path / "run")["score"]
    assert score["n"] == 40 and score["distribution_n"] == 40 and score["invalid_scores"] == 0
    assert len(set(frame["score"].to_list())) > 1 and score["pass_at"] == 4
    assert frame["reasoning"].null_count() == 0
    # The judge read each row's reference answer, and was asked to reason first (its answer is
    # the constrained {reasoning, score} object the example asks for).
    judged = [json.loads(key)[1][-1][1] for key in sim_backend.requests if "Reference answer:" in key]
    assert len(judged) == 40 and all(text.endswith("First reason step by step.") for text in judged)
    assert all(text.isdigit() for text in frame["verdict_text"])  # the JSON answers read into score and reasoning
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Scores" in report and "## Accuracy" in report


def test_pairwise_on_the_cli_measures_a_set_first_position_preference(tmp_path: Path, api_key: str) -> None:
    """Two predict runs of different models, then ``engine judge --pairwise`` twice: a judge
    without position bias is consistent in both orders; one that picks the first answer 30% of
    the time whatever it says is caught."""
    figures = {}
    for rate in (0.0, 0.3):
        backend = CountingBackend(SimSettings(seed=2, judge_first_position_rate=rate))
        for url in start_server(backend, api_key=TEST_KEY):
            runs = []
            for model in ("small-model", "large-model"):
                run = tmp_path / f"{rate}-{model}"
                config = imdb_config(url, limit=60, **{"predict.model": model, "predict.constrain": False})
                anyio.run(_finish, config, run)
                runs.append(str(run))
            calls = backend.calls
            out = tmp_path / f"pairwise-{rate}"
            status = main(["judge", "--pairwise", *runs, "--out", str(out), "--base-url", url,
                           "--api-key-env", TEST_KEY_ENV, "--quiet"])
            assert status == 0 and backend.calls - calls == 2 * 60  # both orders, no predict call
        figures[rate] = metrics(out)["pairwise"]
    unbiased, biased = figures[0.0], figures[0.3]
    assert unbiased["position_consistency"] == 1.0 and 0.35 < unbiased["first_position_rate"] < 0.65
    assert biased["position_consistency"] < 0.9 and biased["first_position_rate"] > unbiased["first_position_rate"] + 0.1
    assert "## Pairwise comparison" in (tmp_path / "pairwise-0.3" / "report.md").read_text()


async def _finish(config: Any, run_dir: Path) -> None:
    async with Evaluation(config, run_dir=run_dir):
        pass


@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_logprobs_from_the_server_give_each_row_its_verdict_probability(
    tmp_path: Path, api_key: str, sim_url: str, mode: str
) -> None:
    config = imdb_config(sim_url, limit=ROWS, **REASONING, **{
        "judge.logprobs": True, "judge.constrain": False, "judge.mode": mode, "batch.poll_initial_s": 0.05,
    })
    async with Evaluation(config, run_dir=tmp_path / "run"):
        pass
    frame = results(tmp_path / "run")
    assert frame["probability"].null_count() == 0
    assert all(0.0 < p <= 1.0 for p in frame["probability"])
    m = metrics(tmp_path / "run")["probabilities"]
    assert m["n"] == ROWS and m["brier_n"] > 0 and 0.0 <= m["brier_score"] <= 1.0


async def test_repeats_over_http_are_independent_draws_and_resume_without_paying_twice(
    tmp_path: Path, api_key: str, sim_url: str, sim_backend: CountingBackend
) -> None:
    config = imdb_config(sim_url, limit=ROWS, **{"judge.repeats": 3, "judge.temperature": 0.7,
                                                 "endpoint.concurrency": 4})
    with anyio.CancelScope() as scope:
        async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
            async for _ in evaluation:
                if evaluation.stats.done >= 10:
                    scope.cancel()
    async with Evaluation(run_dir=tmp_path / "run", resume=True):
        pass
    frame = results(tmp_path / "run")
    votes = frame["repeat_verdicts"].to_list()
    assert all(len(row) == 3 for row in votes) and any(len(set(row)) > 1 for row in votes)
    # 30 predictions and 90 judge calls, bar those in flight at the cut (at most 4 a stage).
    assert ROWS * 4 <= sim_backend.calls <= ROWS * 4 + 8
    assert metrics(tmp_path / "run")["repeats"]["single_repeat_n"] == [ROWS] * 3


def test_the_reading_of_a_reply_names_where_its_answer_starts() -> None:
    content = "Because.\nVERDICT: incorrect\nNo.\nVERDICT: correct"
    answer, reasoning, offset = read_reply(content, "VERDICT", "verdict")
    assert (answer, content[offset:]) == ("correct", "correct")
    assert reasoning == "Because.\nVERDICT: incorrect\nNo."
