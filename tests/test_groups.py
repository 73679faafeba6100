"""``report.group_by``: every headline number per group of rows, checked against the metrics of
each group's rows computed on their own."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from benchmarks.clocks import InstantClock
from engine import ConfigError, Evaluation
from engine.mock_provider import MockProvider
from engine.report.metrics import quality_metrics
from engine.types import ChatRequest

from .conftest import imdb_config

IMDB = Path(__file__).resolve().parent.parent / "examples" / "imdb" / "imdb_top_1000.csv"
ROWS = 90


def data_file(tmp_path: Path) -> Path:
    with IMDB.open(encoding="utf-8") as source:
        rows = list(csv.DictReader(source))[:ROWS]
    path = tmp_path / "movies.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "Overview", "Genre", "tier"])
        for number, row in enumerate(rows):
            writer.writerow([f"m{number}", row["Overview"], row["Genre"], ("gold", "silver", "")[number % 3]])
    return path


def answer(request: ChatRequest) -> str:
    if request.stage == "predict":
        return "Drama"
    return "correct" if " man" in request.body["messages"][-1]["content"] else "incorrect"


async def test_every_headline_number_per_group(tmp_path: Path) -> None:
    config = imdb_config(None, limit=ROWS, **{"dataset.path": str(data_file(tmp_path)), "dataset.id_column": "id",
                                               "report.group_by": ["tier"]})
    async with Evaluation(config, run_dir=tmp_path / "run", provider=MockProvider(answer), clock=InstantClock()):
        pass
    groups = json.loads((tmp_path / "run" / "metrics.json").read_text())["groups"]["tier"]
    assert list(groups) == ["(none)", "gold", "silver"]  # 30 rows each: ties by name
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    for name, value in (("gold", "gold"), ("silver", "silver"), ("(none)", None)):
        tier = pl.col("inputs").struct.field("tier")
        alone = quality_metrics(results.filter(tier.is_null() if value is None else tier == value))
        for key in ("n_rows", "judge_accuracy", "judge_accuracy_ci95", "judge_accuracy_n", "ground_truth_accuracy",
                    "ground_truth_accuracy_n"):
            assert groups[name][key] == pytest.approx(alone[key]), (name, key)
    assert "## By group" in (tmp_path / "run" / "report.md").read_text()


def test_a_group_by_column_not_in_the_data_is_refused_naming_it(tmp_path: Path) -> None:
    import anyio

    config = imdb_config(None, limit=5, **{"report.group_by": ["customer_tier"]})

    async def start() -> None:
        async with Evaluation(config, run_dir=tmp_path / "run", provider=MockProvider(answer)):
            pass

    with pytest.raises(ConfigError, match=r"report\.group_by: 'customer_tier' is not a column of the data set"):
        anyio.run(start)
