"""A panel of judges: [[judge]] tables, each verdict kept, a strict majority, their agreement."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from engine import Evaluation, load_config
from engine.config import TaskConfig, parse_config
from engine.errors import ConfigError
from engine.report.metrics import fleiss_kappa
from engine.shipped import example_config

from .conftest import TEST_KEY_ENV


def panel_config(base_url: str | None, tmp_path: Path, *, judges: int = 3, limit: int = 30) -> TaskConfig:
    data = load_config(example_config("imdb")).model_dump(mode="json")
    judge = data.pop("judge")
    data["judge"] = [{**judge, "name": f"j{k}", "model": f"judge-model-{k}"} for k in range(judges)]
    data["dataset"]["limit"] = limit
    data["endpoint"]["base_url"] = base_url
    data["endpoint"]["api_key_env"] = TEST_KEY_ENV
    return parse_config(data, source="panel", base_dir=tmp_path)


def test_fleiss_kappa_by_hand() -> None:
    # 4 items, 3 raters. yes-counts 3, 0, 2, 1: p_yes = 6/12 = 0.5, expected = 0.5.
    # Per item agreement: (3*2 + 0)/6 = 1, 1, (2*1 + 1*0)/6 = 1/3, 1/3 -> mean 2/3.
    # kappa = (2/3 - 1/2) / (1 - 1/2) = 1/3.
    ratings = [[True] * 3, [False] * 3, [True, True, False], [True, False, False]]
    assert fleiss_kappa(ratings) == pytest.approx(1 / 3)
    assert fleiss_kappa([[True, True], [True, True]]) is None


def test_a_panel_needs_unique_names_and_one_mode(tmp_path: Path) -> None:
    data = panel_config(None, tmp_path).model_dump(mode="json")
    data["judge"][1]["name"] = data["judge"][0]["name"]
    with pytest.raises(ConfigError, match="each judge of a panel needs a unique `name`"):
        parse_config(data, source="panel", base_dir=tmp_path)
    data["judge"][1]["name"] = "other"
    data["judge"][1]["mode"] = "batch"
    with pytest.raises(ConfigError, match="share one mode"):
        parse_config(data, source="panel", base_dir=tmp_path)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_a_panel_run_keeps_every_verdict_and_the_majority(
    tmp_path: Path, api_key: str, sim_url: str, mode: str
) -> None:
    config = panel_config(sim_url, tmp_path)
    from engine import with_overrides

    config = with_overrides(config, {"judge.mode": mode, "batch.poll_initial_s": 0.02, "batch.poll_factor": 1.0})
    async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
        pass
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert results.height == 30 and (results["verdicts"].list.len() == 3).all()
    for verdicts, verdict in zip(results["verdicts"].to_list(), results["verdict"].to_list(), strict=True):
        yes, no = verdicts.count(True), verdicts.count(False)
        assert verdict == (None if yes == no else yes > no)
    metrics = evaluation.metrics
    assert metrics is not None and set(metrics["panel"]["judges"]) == {"j0", "j1", "j2"}
    assert metrics["panel"]["fleiss_kappa"] is not None
    # each judge's numbers, recounted from results.parquet
    for k, name in enumerate(["j0", "j1", "j2"]):
        votes = [row[k] for row in results["verdicts"].to_list()]
        texts = [row[k] for row in results["verdict_texts"].to_list()]
        recognised = [vote for vote in votes if vote is not None]
        numbers = metrics["panel"]["judges"][name]
        assert numbers["judge_accuracy_n"] == len(recognised)
        assert numbers["judge_accuracy"] == (sum(recognised) / len(recognised) if recognised else None)
        assert numbers["failed_calls"] == texts.count(None)
        assert numbers["unrecognised_verdicts"] == sum(t is not None and v is None for t, v in zip(texts, votes, strict=True))
    tallies = [(row.count(True), row.count(False)) for row in results["verdicts"].to_list()]
    assert metrics["panel"]["ties"] == sum(yes == no > 0 for yes, no in tallies)
    assert metrics["invalid_verdicts"] == sum(yes == no == 0 for yes, no in tallies)
    assert set(metrics["models"]) == {"predict", "judge.j0", "judge.j1", "judge.j2"}
    judge_lines = (tmp_path / "run" / "journal" / "judge.ndjson").read_text().splitlines()
    assert len(judge_lines) == 90


async def test_a_panel_run_resumes_to_the_same_results(tmp_path: Path, api_key: str, sim_url: str) -> None:
    import anyio

    from engine import with_overrides

    config = with_overrides(panel_config(sim_url, tmp_path, limit=40), {"endpoint.concurrency": 4})
    async with Evaluation(config, run_dir=tmp_path / "whole"):
        pass
    with anyio.CancelScope() as scope:
        async with Evaluation(config, run_dir=tmp_path / "cut") as evaluation:
            async for _ in evaluation:
                if evaluation.stats.done >= 15:
                    scope.cancel()
    async with Evaluation(run_dir=tmp_path / "cut", resume=True):
        pass

    def results(name: str) -> pl.DataFrame:
        return pl.read_parquet(tmp_path / name / "results.parquet").drop("predict_latency_s", "judge_latency_s")

    assert results("cut").equals(results("whole"))
