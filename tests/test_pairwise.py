"""Pairwise comparison of two runs, judged in both orders: the outcome of each pair, B's win rate,
position consistency, first-position preference and verbosity bias, checked against a
computation over the rows in plain Python."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from benchmarks.clocks import InstantClock
from engine import Evaluation
from engine.mock_provider import MockProvider
from engine.prior import Sources, judging_config
from engine.types import ChatRequest

from .conftest import imdb_config

ROWS = 40
ANSWERS = re.compile(r"\[The Start of Answer A\]\n(.*)\n\[The End of Answer A\].*\[The Start of Answer B\]\n(.*)\n"
                     r"\[The End of Answer B\]", re.DOTALL)


def verbose(request: ChatRequest) -> str:
    """Run B: a longer answer on every third row."""
    row = int(request.row_id)
    return "Drama, with some Comedy and a hint of Romance" if row % 3 == 0 else "Drama" if row % 2 else "Comedy"


def biased_judge(request: ChatRequest) -> str:
    """Prefers the longer answer; a tie between equal answers; but on every fourth row it
    picks the first position whatever the answers are."""
    if request.stage == "predict" or request.row_id == "preflight":  # a batch stage's one-word test call
        return "WINNER: A"
    match = ANSWERS.search(request.body["messages"][-1]["content"])
    assert match is not None, "the default pairwise template shows both answers between start and end lines"
    first, second = match.groups()
    if int(request.row_id) % 4 == 0:
        return "Both are fine.\nWINNER: A"
    if first == second:
        return "WINNER: tie"
    return "WINNER: " + ("A" if len(first) > len(second) else "B")


async def finished(tmp_path: Path, name: str, answer: Any, **overrides: Any) -> Path:
    config = imdb_config(None, limit=ROWS, **overrides)
    async with Evaluation(config, run_dir=tmp_path / name, provider=MockProvider(answer), clock=InstantClock()):
        pass
    return tmp_path / name


@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_pairwise_figures_equal_a_plain_computation(tmp_path: Path, mode: str) -> None:
    run_a = await finished(tmp_path, "a", lambda request: "Drama" if request.stage == "predict" else "correct")
    run_b = await finished(tmp_path, "b", lambda request: verbose(request) if request.stage == "predict" else "correct")
    sources = Sources((run_a, run_b))
    config = judging_config(sources)
    config = config.model_copy(update={"judge": config.judges[0].model_copy(update={"mode": mode})})
    provider = MockProvider(biased_judge)
    async with Evaluation(config, run_dir=tmp_path / "ab", provider=provider, sources=sources, clock=InstantClock()):
        pass
    assert all(request.stage == "judge" for _, request in provider.answered if request.row_id != "preflight")
    assert len([r for _, r in provider.answered if r.row_id != "preflight"]) == 2 * ROWS  # both orders, no predict call
    results = pl.read_parquet(tmp_path / "ab" / "results.parquet")
    metrics = json.loads((tmp_path / "ab" / "metrics.json").read_text())["pairwise"]

    # The expectation, row by row, from the answers alone.
    a_answers = ["Drama"] * ROWS
    b_answers = [verbose(ChatRequest("", str(i), "predict", {}, 0)) for i in range(ROWS)]
    winners, calls = [], []
    for row, (a, b) in enumerate(zip(a_answers, b_answers, strict=True)):
        def choose(first: str, second: str, row: int = row) -> str:
            if row % 4 == 0:
                return "first"
            return "tie" if first == second else "first" if len(first) > len(second) else "second"
        in_order = {"first": "a", "second": "b", "tie": "tie"}[choose(a, b)]
        swapped = {"first": "b", "second": "a", "tie": "tie"}[choose(b, a)]
        calls += [(0, in_order), (1, swapped)]
        winners.append(in_order if in_order == swapped else "tie")
    assert results["winner"].to_list() == winners
    points = [{"a": 0.0, "tie": 0.5, "b": 1.0}[winner] for winner in winners]
    assert (metrics["a_wins"], metrics["ties"], metrics["b_wins"]) == (winners.count("a"), winners.count("tie"),
                                                                       winners.count("b"))
    assert metrics["b_win_rate"] == pytest.approx(statistics.fmean(points))
    half = 1.959963984540054 * statistics.stdev(points) / math.sqrt(ROWS)
    assert metrics["b_win_rate_ci95"] == pytest.approx([statistics.fmean(points) - half, statistics.fmean(points) + half])
    consistent = [calls[2 * row][1] == calls[2 * row + 1][1] for row in range(ROWS)]
    assert metrics["position_consistency"] == pytest.approx(sum(consistent) / ROWS)
    assert metrics["position_consistency"] < 1.0  # the first-position picks change with the order
    chose = [(order, winner) for order, winner in calls if winner != "tie"]
    first = sum((order == 0) == (winner == "a") for order, winner in chose)
    assert metrics["first_position_rate"] == pytest.approx(first / len(chose))
    assert metrics["first_position_rate"] > 0.5
    assert metrics["first_position_n"] == len(chose)
    longer = [(winner, len(b) - len(a)) for winner, a, b in zip(winners, a_answers, b_answers, strict=True)
              if winner != "tie" and len(a) != len(b)]
    assert metrics["longer_answer_win_rate"] == pytest.approx(
        sum((winner == "b") == (difference > 0) for winner, difference in longer) / len(longer))
    differences = [len(b) - len(a) for a, b in zip(a_answers, b_answers, strict=True)]
    assert metrics["length_correlation"] == pytest.approx(statistics.correlation(points, differences))
    report = (tmp_path / "ab" / "report.md").read_text()
    assert "## Pairwise comparison" in report and "## Accuracy" not in report
    assert (tmp_path / "ab" / "plots" / "pairwise.svg").exists()


async def test_a_pairwise_judge_file_must_be_pairwise(tmp_path: Path) -> None:
    from engine.errors import ConfigError

    run_a = await finished(tmp_path, "a", lambda request: "Drama" if request.stage == "predict" else "correct")
    with pytest.raises(ConfigError, match="comparing 2 run"):
        judge = tmp_path / "judge.toml"
        judge.write_text('[judge]\nmodel = "j"\nuser_template = "{prediction}"\n')
        judging_config(Sources((run_a, run_a)), judge)
