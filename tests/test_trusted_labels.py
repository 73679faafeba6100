"""Trusted labels on some rows, through a whole run and through ``engine report --labels`` on a
finished run (no call is made): the corrected estimates reach metrics.json, the summary and the
report, first."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import anyio
import polars as pl
import pytest

from adapters.server.backends.sim import SimSettings
from benchmarks.clocks import InstantClock
from engine import ConfigError, Evaluation
from engine.cli import main
from engine.config import CalibrationConfig
from engine.mock_provider import MockProvider
from engine.report.summary import refresh_metrics
from engine.report.trusted import label_counts, ppi_accuracy
from engine.rundir import RunDir
from engine.types import ChatRequest
from tests.support import CountingBackend

from .conftest import TEST_KEY, imdb_config, start_server

ROWS = 120
IMDB = Path(__file__).resolve().parent.parent / "examples" / "imdb" / "imdb_top_1000.csv"


def data_file(tmp_path: Path, labelled: int) -> Path:
    """The first ROWS IMDB rows with an id column; only the first ``labelled`` keep their genre."""
    with IMDB.open(encoding="utf-8") as source:
        rows = list(csv.DictReader(source))[:ROWS]
    path = tmp_path / "movies.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "Overview", "Genre"])
        for number, row in enumerate(rows):
            writer.writerow([f"m{number}", row["Overview"], row["Genre"] if number < labelled else ""])
    return path


def answer(request: ChatRequest) -> str:
    """Predicts Drama; the judge calls it correct when the overview mentions a life or a man."""
    if request.stage == "predict":
        return "Drama"
    text = request.body["messages"][-1]["content"]
    return "correct" if " life" in text or " man" in text else "incorrect"


async def finished(tmp_path: Path, path: Path, **overrides: Any) -> Path:
    config = imdb_config(None, limit=ROWS, **{"dataset.path": str(path), "dataset.id_column": "id", **overrides})
    async with Evaluation(config, run_dir=tmp_path / "run", provider=MockProvider(answer), clock=InstantClock()):
        pass
    return tmp_path / "run"


def metrics(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "metrics.json").read_text()))


async def test_a_partly_labelled_data_set_gives_the_prediction_powered_accuracy(tmp_path: Path) -> None:
    run = await finished(tmp_path, data_file(tmp_path, labelled=40))
    m = metrics(run)
    results = pl.read_parquet(run / "results.parquet")
    counts = label_counts(results)
    assert (counts.n, counts.unlabelled) == (40, ROWS - 40)
    expected = ppi_accuracy(counts)
    assert expected is not None
    assert m["ppi_accuracy"] == pytest.approx(expected.estimate) and m["ppi_accuracy_n"] == 40
    assert m["ppi_accuracy_ci95"] == pytest.approx(list(expected.ci95))
    assert m["trusted_labels"]["labels_only"]["n"] == 40 and m["trusted_labels"]["judge_only"]["n"] == ROWS
    report = (run / "report.md").read_text()
    assert report.index("## Accuracy with trusted labels") < report.index("## Accuracy\n")
    assert "prediction-powered (PPI++)" in report and "The PPI interval is" in report


def test_labels_added_to_a_finished_run_are_used_by_report_without_a_call(tmp_path: Path) -> None:
    run = anyio.run(lambda: finished(tmp_path, data_file(tmp_path, labelled=0), **{"dataset.label_column": None}))
    assert metrics(run)["trusted_labels"] is None and metrics(run)["ppi_accuracy"] is None
    results = pl.read_parquet(run / "results.parquet")
    judge_said = dict(zip(results["row_id"], results["verdict"], strict=True))
    labels = tmp_path / "labels.csv"
    # A person checked 50 predictions; they agree with the judge on 40 of them.
    with labels.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["movie", "human"])
        for number in range(50):
            said = judge_said[f"m{number}"]
            writer.writerow([f"m{number}", ("correct" if said else "incorrect") if number < 40 else
                             ("incorrect" if said else "correct")])
    status = main(["report", str(run), "--labels", str(labels), "--id-column", "movie", "--verdict-column", "human"])
    assert status == 0
    m = metrics(run)
    trusted = m["trusted_labels"]
    assert trusted["labelled_n"] == 50 and trusted["unlabelled_n"] == ROWS - 50 and trusted["source"] == str(labels)
    assert m["ppi_accuracy"] is not None and m["ground_truth_accuracy_n"] == 50
    calibration = trusted["judge_calibration"]
    agree = calibration["sensitivity"] * calibration["sensitivity_n"] + calibration["specificity"] * calibration["specificity_n"]
    assert round(agree) == 40
    assert "## Accuracy with trusted labels" in (run / "report.md").read_text()


def test_a_labels_file_of_true_labels_and_its_mistakes(tmp_path: Path) -> None:
    run = anyio.run(lambda: finished(tmp_path, data_file(tmp_path, labelled=0), **{"dataset.label_column": None}))
    labels = tmp_path / "genres.csv"
    labels.write_text("movie,genres\nm0,\"Drama, Crime\"\nm1,Comedy\nm2,\n", encoding="utf-8")
    assert main(["report", str(run), "--labels", str(labels), "--id-column", "movie", "--label-column", "genres"]) == 0
    assert metrics(run)["trusted_labels"]["labelled_n"] == 2  # m2's empty cell labels nothing
    assert metrics(run)["trusted_labels"]["labels_only"]["accuracy"] == 0.5  # Drama is right for m0 only
    assert main(["report", str(run), "--labels", str(labels), "--id-column", "id", "--label-column", "genres"]) == 2
    with pytest.raises(ConfigError, match=r"genres\.csv: needs the columns 'id' and 'genres'"):

        refresh_metrics(RunDir(run), CalibrationConfig(path=labels, id_column="id", label_column="genres"))


def test_a_sample_to_label_is_reproducible_stratified_and_feeds_report(tmp_path: Path) -> None:
    run = anyio.run(lambda: finished(tmp_path, data_file(tmp_path, labelled=0), **{"dataset.label_column": None}))
    out = tmp_path / "to-label.csv"
    args = ["sample-for-labels", str(run), "--n", "30", "--stratify", "verdict", "--out", str(out)]
    assert main(args) == 0
    first = pl.read_csv(out, infer_schema=False)
    assert main(args) == 0
    assert pl.read_csv(out, infer_schema=False).equals(first)  # the same seed, the same rows
    assert first.columns == ["id", "Overview", "prediction", "verdict"]  # the judge's verdict hidden
    results = pl.read_parquet(run / "results.parquet")
    share = results["verdict"].to_list().count(True) / results.height
    sampled = results.filter(pl.col("row_id").is_in(first["id"].to_list()))["verdict"].to_list()
    assert first.height == 30 and abs(sampled.count(True) / 30 - share) <= 1 / 30 + 1e-9  # each verdict keeps its share
    assert main([*args, "--show-verdict"]) == 0
    assert "judge_verdict" in pl.read_csv(out, infer_schema=False).columns
    filled = first.with_columns(pl.lit("correct").alias("verdict"))  # a person says every one is right
    filled.write_csv(out)
    assert main(["report", str(run), "--labels", str(out), "--id-column", "id", "--verdict-column", "verdict"]) == 0
    assert metrics(run)["trusted_labels"]["labels_only"] == {"accuracy": 1.0, "ci95": pytest.approx([0.8865, 1.0], abs=1e-3),
                                                             "n": 30}


def test_over_http_a_sim_judge_of_known_error_rates_is_measured_and_corrected(
    tmp_path: Path, api_key: str
) -> None:
    """The embedded sim's judge calls a right prediction correct 85% of the time and a wrong one
    incorrect 75%; with 150 of 600 rows labelled, the measured rates and the corrected estimates
    land near the truth that every label gives."""

    backend = CountingBackend(SimSettings(seed=7, judge_sensitivity=0.85, judge_specificity=0.75))
    template = "Overview: {Overview}\nReference: {Genre}\nPrediction: {prediction}\nIs it correct or incorrect?"
    for url in start_server(backend, api_key=TEST_KEY):
        config = imdb_config(url, limit=600, **{"judge.user_template": template, "judge.constrain": False,
                                                "predict.constrain": False})
        anyio.run(_finish, config, tmp_path / "run")
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    truth = results["ground_truth_correct"].to_list().count(True) / results.height
    labels = tmp_path / "labels.csv"
    pl.DataFrame({"row": results["row_id"], "genres": results["labels"].list.join(",")}).sample(
        n=150, seed=3).write_csv(labels)
    data = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert data["dataset"]["label_column"] == "Genre"  # every row labelled in the run: drop them for the test

    unlabelled = results.with_columns(pl.lit(None, dtype=pl.Boolean).alias("ground_truth_correct"))
    unlabelled.write_parquet(tmp_path / "run" / "results.parquet")
    m = refresh_metrics(RunDir(tmp_path / "run"), CalibrationConfig(path=labels, id_column="row", label_column="genres"))
    trusted = m["trusted_labels"]
    judge = trusted["judge_calibration"]
    assert trusted["labelled_n"] == 150 and trusted["unlabelled_n"] == 450
    assert judge["sensitivity_ci95"][0] <= 0.85 <= judge["sensitivity_ci95"][1]
    assert judge["specificity_ci95"][0] <= 0.75 <= judge["specificity_ci95"][1]
    low, high = trusted["ppi"]["ci95"]
    assert low <= truth <= high
    assert abs(trusted["judge_only"]["accuracy"] - truth) > abs(trusted["ppi"]["accuracy"] - truth)  # the raw rate is biased


async def _finish(config: Any, run_dir: Path) -> None:
    async with Evaluation(config, run_dir=run_dir):
        pass


def test_a_stratified_sample_has_exactly_the_rows_asked_for() -> None:
    from engine.labelling import _proportional

    assert _proportional([70, 20, 10], 7) == [5, 1, 1]
    assert _proportional([1, 1, 1], 2) == [1, 1, 0]
    assert all(sum(_proportional([a, b], n)) == n for a in (1, 7, 40) for b in (3, 9) for n in range(1, a + b + 1))
