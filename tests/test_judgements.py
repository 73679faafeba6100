"""Reasoning, score and repeated judges through a whole run (the pipeline, both stage kinds, the
journal, results.parquet, metrics.json and the report), against ``MockProvider``; every number
is checked against an independent computation with the standard library."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from benchmarks.clocks import InstantClock
from engine import Evaluation, TaskConfig
from engine.mock_provider import MockProvider
from engine.provider import ChatReply
from engine.report.metrics import wilson_interval
from engine.types import ChatRequest, TokenLogprob, Usage

from .conftest import imdb_config

ROWS = 40


def overview(request: ChatRequest) -> str:
    return str(request.body["messages"][-1]["content"])


def reasoning_judge(request: ChatRequest) -> str:
    """Predicts Drama; a reasoning reply whose decoy line says the opposite of its last line."""
    if request.stage == "predict":
        return "Drama"
    correct = "life" in overview(request)
    final, decoy = ("correct", "incorrect") if correct else ("incorrect", "correct")
    return f"Thinking about row {len(overview(request))}.\nVERDICT: {decoy}\nOn reflection, no.\nVERDICT: {final}"


def score(request: ChatRequest, repeat: int = 0) -> int:
    return (len(overview(request)) + 2 * repeat) % 5 + 1


def score_judge(request: ChatRequest) -> str:
    if request.stage == "predict":
        return "Drama"
    if "life" in overview(request):
        return "The reply is vague.\nSCORE: none"  # no score: counted as invalid
    return f"Reasons.\nSCORE: {score(request, int(request.body.get('seed', 0)))}"


async def run(
    tmp_path: Path, name: str, answer: Any, mode: str = "realtime", **overrides: Any
) -> tuple[pl.DataFrame, dict[str, Any]]:
    config = imdb_config(None, limit=ROWS, **{"predict.mode": mode, "judge.mode": mode, **overrides})
    provider = MockProvider(answer)
    async with Evaluation(config, run_dir=tmp_path / name, provider=provider, clock=InstantClock()):
        pass
    results = pl.read_parquet(tmp_path / name / "results.parquet")
    return results, json.loads((tmp_path / name / "metrics.json").read_text())


@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_a_reasoning_judge_keeps_its_reasoning_and_is_decided_by_its_last_line(tmp_path: Path, mode: str) -> None:
    results, metrics = await run(
        tmp_path, mode, reasoning_judge, mode, **{"judge.reasoning": True, "judge.constrain": False, "judge.max_tokens": 400}
    )
    assert results["status"].unique().to_list() == ["judged"]
    expected = ["life" in (inputs["Overview"] or "") for inputs in results["inputs"].to_list()]
    assert results["verdict"].to_list() == expected
    assert all(text.startswith("Thinking about row") and "On reflection, no." in text for text in results["reasoning"])
    assert results["verdict_text"].to_list() == ["correct" if value else "incorrect" for value in expected]
    assert metrics["reasoning"] is True and metrics["judge_accuracy"] == sum(expected) / ROWS
    report = (tmp_path / mode / "report.md").read_text()
    assert "judge's reasoning" in report and "On reflection, no." in report


async def test_score_metrics_equal_the_standard_librarys(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"judge.kind": "score", "judge.pass_at": 4, "judge.constrain": False}
    results, metrics = await run(tmp_path, "score", score_judge, **settings)
    scores = [value for value in results["score"].to_list() if value is not None]
    invalid = results["score"].null_count()
    assert invalid == sum("life" in (inputs["Overview"] or "") for inputs in results["inputs"].to_list()) > 0
    s = metrics["score"]
    assert s["n"] == len(scores) == ROWS - invalid
    assert s["mean_score"] == pytest.approx(statistics.fmean(scores))
    assert s["sd"] == pytest.approx(statistics.stdev(scores))
    assert s["median"] == pytest.approx(statistics.median(scores))
    half = 1.959963984540054 * statistics.stdev(scores) / math.sqrt(len(scores))
    assert s["mean_score_ci95"] == pytest.approx([statistics.fmean(scores) - half, statistics.fmean(scores) + half])
    counts = Counter(int(value) for value in scores)
    assert s["distribution"] == {str(value): counts.get(value, 0) for value in range(1, 6)}
    passed = sum(value >= 4 for value in scores)
    assert s["pass_rate"] == pytest.approx(passed / len(scores)) and s["pass_rate_n"] == len(scores)
    assert s["pass_rate_ci95"] == pytest.approx(list(wilson_interval(passed, len(scores)) or ()))
    assert (s["invalid_scores"], s["invalid_score_rate"]) == (invalid, invalid / ROWS)
    assert metrics["judge_kind"] == "score" and metrics["invalid_verdicts"] == invalid
    report = (tmp_path / "score" / "report.md").read_text()
    assert "## Scores" in report and (tmp_path / "score" / "plots" / "scores.svg").exists()


@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_repeats_are_judged_k_times_and_their_spread_is_reported(tmp_path: Path, mode: str) -> None:
    def repeating(request: ChatRequest) -> str:
        if request.stage == "predict":
            return "Drama"
        seed = int(request.body.get("seed", 0))
        return "correct" if (len(overview(request)) + seed) % 3 else "incorrect"

    results, metrics = await run(tmp_path, mode, repeating, mode, **{"judge.repeats": 3, "judge.temperature": 0.8})
    votes = results["repeat_verdicts"].to_list()
    assert all(len(row) == 3 for row in votes)
    assert results["verdict"].to_list() == [sum(row) >= 2 for row in votes]
    r = metrics["repeats"]
    accuracies = [sum(row[k] for row in votes) / ROWS for k in range(3)]
    assert r["single_repeat_accuracies"] == pytest.approx(accuracies) and r["single_repeat_n"] == [ROWS] * 3
    assert r["accuracy_spread"] == pytest.approx(max(accuracies) - min(accuracies))
    assert r["accuracy_sd"] == pytest.approx(statistics.stdev(accuracies))
    agreement = [max(sum(row), 3 - sum(row)) / 3 for row in votes]
    assert r["mean_agreement"] == pytest.approx(statistics.fmean(agreement))
    assert r["unanimous_rate"] == pytest.approx(sum(value == 1 for value in agreement) / ROWS)
    assert metrics["tokens"]["judge"]["prompt"] > 0  # the repeats' calls count under the judge stage
    assert "## Repeated judgements" in (tmp_path / mode / "report.md").read_text()


def sure(request: ChatRequest) -> float:
    """How sure the mock judge is of a row's answer: between 0.55 and 0.95."""
    return 0.55 + (len(overview(request)) % 5) / 10


def logprob_judge(request: ChatRequest) -> str | ChatReply:
    """A reasoning judge whose reply carries token logprobs: the verdict token has ``sure`` and
    its alternative the rest."""
    if request.stage == "predict":
        return "Drama"
    if request.row_id == "preflight":
        return "correct"
    correct = "life" in overview(request)
    final, other = ("correct", "incorrect") if correct else ("incorrect", "correct")
    p = sure(request)
    alternatives = ((" " + final, math.log(p)), (" " + other, math.log(1 - p)))
    tokens = (TokenLogprob("Because", -0.1), TokenLogprob(".\n", -0.01), TokenLogprob("VERDICT", 0.0),
              TokenLogprob(":", 0.0), TokenLogprob(" " + final, math.log(p), alternatives))
    return ChatReply("".join(t.token for t in tokens), "mock", Usage(10, 5), 0.0, logprobs=tokens)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_verdict_probabilities_give_a_brier_score_and_calibration(tmp_path: Path, mode: str) -> None:
    settings: dict[str, Any] = {
        "judge.reasoning": True, "judge.constrain": False, "judge.max_tokens": 300, "judge.logprobs": True,
    }
    results, metrics = await run(tmp_path, mode, logprob_judge, mode, **settings)
    truth = results["ground_truth_correct"].to_list()
    verdicts = results["verdict"].to_list()
    probabilities = results["probability"].to_list()
    assert None not in probabilities and all(0.55 <= p <= 0.95 + 1e-9 for p in probabilities)
    p_correct = [p if verdict else 1 - p for p, verdict in zip(probabilities, verdicts, strict=True)]
    assert results["p_correct"].to_list() == pytest.approx(p_correct)
    known = [(p, t) for p, t in zip(p_correct, truth, strict=True) if t is not None]
    m = metrics["probabilities"]
    assert m["brier_n"] == len(known) > 0
    assert m["brier_score"] == pytest.approx(statistics.fmean((p - t) ** 2 for p, t in known))
    bins: dict[int, list[tuple[float, bool]]] = {}
    for p, t in known:
        bins.setdefault(min(int(p * 10), 9), []).append((p, t))
    assert [b["rows"] for b in m["calibration"]] == [len(bins[key]) for key in sorted(bins)]
    assert [b["observed"] for b in m["calibration"]] == pytest.approx(
        [statistics.fmean(t for _, t in bins[key]) for key in sorted(bins)])
    # The journal keeps only the verdict's token, with its alternatives.
    records = [json.loads(line) for line in (tmp_path / mode / "journal" / "judge.ndjson").read_text().splitlines()]
    kept = [json.loads(record["logprobs"]) for record in records if record["row_id"] != "preflight"]
    assert all(len(tokens) == 1 and tokens[0][0].strip() in ("correct", "incorrect") for tokens in kept)
    report = (tmp_path / mode / "report.md").read_text()
    assert "## Verdict probabilities" in report and "Brier score" in report


async def test_a_score_judge_weights_the_scores_at_its_answer_by_their_probability(tmp_path: Path) -> None:
    def weighted(request: ChatRequest) -> str | ChatReply:
        if request.stage == "predict":
            return "Drama"
        tokens = (TokenLogprob("SCORE", 0.0), TokenLogprob(":", 0.0),
                  TokenLogprob(" 4", math.log(0.6), ((" 4", math.log(0.6)), (" 5", math.log(0.3)), (" x", math.log(0.1)))))
        return ChatReply("".join(t.token for t in tokens), "mock", Usage(10, 5), 0.0, logprobs=tokens)

    settings: dict[str, Any] = {"judge.kind": "score", "judge.constrain": False, "judge.logprobs": True}
    results, metrics = await run(tmp_path, "weighted", weighted, **settings)
    expected = (4 * 0.6 + 5 * 0.3) / 0.9  # " x" is no score: left out
    assert results["weighted_score"].to_list() == pytest.approx([expected] * ROWS)
    assert metrics["probabilities"]["mean_weighted_score"] == pytest.approx(expected)
    assert metrics["score"]["mean_score"] == 4.0


def test_a_dry_run_counts_every_repeat() -> None:
    from engine.estimate import estimate

    once = estimate(imdb_config(None, limit=10))
    thrice = estimate(imdb_config(None, limit=10, **{"judge.repeats": 3, "judge.temperature": 0.5}))
    assert once["stages"]["judge"]["requests"] == 10 and thrice["stages"]["judge"]["requests"] == 30


def test_a_pairwise_judge_outside_a_comparison_is_refused_saying_how_to_compare() -> None:
    from engine.errors import ConfigError

    pairwise: dict[str, Any] = {"judge.kind": "pairwise", "judge.user_template": "{answer_a} {answer_b}"}
    config = imdb_config(None, **pairwise)
    with pytest.raises(ConfigError, match=r"judge\.kind: a pairwise judge compares .* engine judge --pairwise"):
        Evaluation(config)


async def test_the_summary_of_a_score_run_without_a_pass_mark_shows_scores_not_verdicts(tmp_path: Path) -> None:
    from rich.console import Console

    from engine.report.summary import print_summary

    settings: dict[str, Any] = {"judge.kind": "score", "judge.constrain": False}
    _, metrics = await run(tmp_path, "score", score_judge, **settings)
    console = Console(record=True, width=200)
    print_summary(metrics, tmp_path / "score", console)
    text = console.export_text()
    assert "mean score (n=" in text and "no score on the scale" in text
    assert "judge accuracy" not in text and "pass rate" not in text


async def test_a_score_report_without_a_pass_mark_has_no_accuracy_section(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"judge.kind": "score", "judge.constrain": False}
    await run(tmp_path, "score", score_judge, **settings)
    report = (tmp_path / "score" / "report.md").read_text()
    assert "## Scores" in report and "## Accuracy" not in report and "pass rate (" not in report
    assert "## Where the judge and the ground truth disagree" not in report  # no verdicts to disagree


async def test_a_run_started_before_the_judge_kinds_existed_resumes(tmp_path: Path) -> None:
    """Its results parts lack the new columns and its run.json the new judge settings."""
    from engine.judges import JUDGE_COLUMNS
    from engine.rundir import RunDir, write_json

    def plain(request: ChatRequest) -> str:
        return "Drama" if request.stage == "predict" else "correct"

    await run(tmp_path, "old", plain)
    directory = RunDir(tmp_path / "old")
    whole = pl.read_parquet(directory.results_file)
    new = [*list(JUDGE_COLUMNS)[4:], "repeat_verdicts", "repeat_scores"]
    for part in directory.results_parts.glob("part-*.parquet"):
        pl.read_parquet(part).drop(new).write_parquet(part)
    info = directory.info()
    info["results_settings"] = {key: value for key, value in info["results_settings"].items()
                                if key.split(".")[-1] not in ("kind", "reasoning", "scale", "swap", "repeats", "logprobs",
                                                               "pass_at", "rubric")}
    write_json(directory.run_file, info)
    directory.results_file.unlink()
    async with Evaluation(run_dir=tmp_path / "old", resume=True, provider=MockProvider(plain),
                          clock=InstantClock()) as resumed:
        pass
    assert any("earlier version" in note for note in resumed.notes)
    assert pl.read_parquet(directory.results_file).drop("predict_latency_s", "judge_latency_s").equals(
        whole.drop("predict_latency_s", "judge_latency_s"))


async def test_a_panel_of_score_judges_averages_their_scores_and_votes_with_their_passes(tmp_path: Path) -> None:
    def two_graders(request: ChatRequest) -> str:
        if request.stage == "predict":
            return "Drama"
        return "SCORE: 5" if request.custom_id.startswith("judge.kind:") else "SCORE: 2"

    data = imdb_config(None, limit=ROWS, **{"judge.kind": "score", "judge.pass_at": 3,
                                            "judge.constrain": False}).model_dump()
    judge = data.pop("judge")
    data["judge"] = [{**judge, "name": "kind"}, {**judge, "name": "harsh"}]
    config = TaskConfig.model_validate(data)
    async with Evaluation(config, run_dir=tmp_path / "panel", provider=MockProvider(two_graders), clock=InstantClock()):
        pass
    results = pl.read_parquet(tmp_path / "panel" / "results.parquet")
    assert results["scores"].to_list() == [[5.0, 2.0]] * ROWS and results["score"].to_list() == [3.5] * ROWS
    assert results["verdicts"].to_list() == [[True, False]] * ROWS and results["verdict"].null_count() == ROWS  # a tie
    metrics = json.loads((tmp_path / "panel" / "metrics.json").read_text())
    assert metrics["score"]["distribution"] == {"1": 0, "2": ROWS, "3": 0, "4": 0, "5": ROWS}
    assert metrics["panel"]["ties"] == ROWS


async def test_the_summary_of_a_task_without_labels_shows_no_ground_truth_rows(tmp_path: Path, api_key: str) -> None:
    from rich.console import Console

    from engine import example_config, load_config, with_overrides
    from engine.report.summary import print_summary

    def grader(request: ChatRequest) -> str:
        return "An answer." if request.stage == "predict" else '{"reasoning": "fine", "score": 4}'

    config = with_overrides(load_config(example_config("open_qa")), {"dataset.limit": 5})
    async with Evaluation(config, run_dir=tmp_path / "open", provider=MockProvider(grader), clock=InstantClock()) as done:
        pass
    assert done.metrics is not None
    console = Console(record=True, width=200)
    print_summary(done.metrics, tmp_path / "open", console)
    text = console.export_text()
    assert "pass rate, score >= 4 (n=5)" in text and "100.0%" in text
    assert "ground-truth" not in text and "baseline" not in text


async def test_compare_of_two_score_runs_gives_the_paired_difference_of_mean_scores(tmp_path: Path) -> None:
    from engine.report.compare import compare_runs

    def lenient(request: ChatRequest) -> str:
        return "Drama" if request.stage == "predict" else f"SCORE: {score(request) % 4 + 2}"

    settings: dict[str, Any] = {"judge.kind": "score", "judge.constrain": False}
    strict_results, _ = await run(tmp_path, "strict", lambda r: "Drama" if r.stage == "predict" else f"SCORE: {score(r)}",
                                  **settings)
    lenient_results, _ = await run(tmp_path, "lenient", lenient, **settings)
    comparison = compare_runs(tmp_path / "strict", tmp_path / "lenient")
    paired = comparison["mean_score"]["paired"]
    difference = statistics.fmean(lenient_results["score"]) - statistics.fmean(strict_results["score"])
    assert paired["n"] == ROWS and paired["difference"] == pytest.approx(difference)
    assert paired["bootstrap_ci95"][0] < difference < paired["bootstrap_ci95"][1]
