"""report.md / report.html from real run directories: realtime, batch, and a task without labels."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

import anyio
import polars as pl
import pytest

from engine import Evaluation, TaskConfig, load_config, with_overrides
from engine.config import parse_config
from engine.report import percent
from engine.report_doc import INVALID_LABEL, label_breakdown, write_report
from engine.shipped import example_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_FILES = ("run.json", "metrics.json", "results.parquet", "journal")


def run_evaluation(config: TaskConfig, run_dir: Path) -> Path:
    """Run ``config`` to the end on the embedded sim server."""

    async def main() -> None:
        async with Evaluation(config, run_dir=run_dir):
            pass

    anyio.run(main)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    imdb = with_overrides(load_config(example_config("imdb")), {"dataset.limit": 40, "local.backend": "sim"})
    batch = with_overrides(imdb, {
        "predict.mode": "batch", "judge.mode": "batch", "batch.max_requests_per_file": 15, "batch.poll_initial_s": 0.05,
    })
    ag_news = with_overrides(load_config(example_config("ag_news")), {"dataset.limit": 30, "local.backend": "sim"})
    panel = imdb.model_dump(mode="json")
    panel["judge"] = [{**panel["judge"], "name": f"j{k}", "model": f"judge-{k}"} for k in range(3)]
    panel["prices"] = {"judge-1": {"input": 0.5, "output": 1.0}}
    return {
        "panel": run_evaluation(parse_config(panel, source="panel", base_dir=root), root / "panel"),
        "realtime": run_evaluation(imdb, root / "realtime"),
        "failed": run_evaluation(
            with_overrides(imdb, {"dataset.limit": 10, "local.error_rate": 1.0, "endpoint.max_retries": 0}), root / "failed"
        ),
        "batch": run_evaluation(batch, root / "batch"),
        "ag_news": run_evaluation(ag_news, root / "ag_news"),
    }


def copy_run(source: Path, target: Path) -> Path:
    """Only the files a report may read, with the data set's path pointing nowhere."""
    target.mkdir()
    for name in RUN_FILES:
        (shutil.copytree if (source / name).is_dir() else shutil.copy)(source / name, target / name)
    info = json.loads((target / "run.json").read_text())
    info["config"]["dataset"]["path"] = str(target / "no-such-data.csv")
    (target / "run.json").write_text(json.dumps(info))
    return target


def report(runs: dict[str, Path], kind: str, tmp_path: Path) -> tuple[Path, dict[str, Any], str, str]:
    run_dir = copy_run(runs[kind], tmp_path / "copied")
    markdown = write_report(run_dir)
    assert markdown == run_dir / "report.md"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return run_dir, metrics, markdown.read_text(), (run_dir / "report.html").read_text()


def check_plots(run_dir: Path, markdown: str, page: str, expected: set[str]) -> None:
    plots = {path.name for path in (run_dir / "plots").glob("*.png")}
    assert plots == expected
    linked = re.findall(r"!\[[^]]*\]\((plots/[^)]+\.png)\)", markdown)
    assert {Path(link).name for link in linked} == expected
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(expected)
    embedded = {base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in sources}
    for name in expected:
        data = (run_dir / "plots" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and 5_000 < len(data) < 200_000, name
        assert data in embedded, f"{name} is not embedded in report.html"
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    for external in ("<script", "<link", "href=", "url(", "@import"):
        assert external not in page


def check_numbers(metrics: dict[str, Any], markdown: str, page: str) -> None:
    tokens = metrics["tokens"]
    for document in (markdown, html.unescape(page)):
        assert percent(metrics["judge_accuracy"]) in document
        assert f"| {metrics['n_rows']} |" in document or f"<td>{metrics['n_rows']}</td>" in document
        for stage in ("predict", "judge"):
            assert f"{tokens[stage]['prompt']:,}" in document
        assert "no price table" in document
        assert "Simulated" in document and "sim:" in document


def test_realtime_report(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir, metrics, markdown, page = report(runs, "realtime", tmp_path)
    check_plots(run_dir, markdown, page, {"accuracy.png", "confusion.png", "labels.png", "latency.png", "throughput.png"})
    check_numbers(metrics, markdown, page)
    confusion = metrics["confusion"]
    for document in (markdown, html.unescape(page)):
        assert percent(metrics["ground_truth_accuracy"]) in document
        assert percent(metrics["judge_vs_truth_agreement"]) in document
        assert f"always '{metrics['majority_baseline_label']}'" in document
        assert f"{metrics['judge_vs_truth_kappa']:.3f}" in document
    assert f"| judge: correct | {confusion['tp']} | {confusion['fp']} |" in markdown
    assert "Where the judge and the ground truth disagree" in markdown
    assert "| predict | 40 |" in markdown  # latency table: 40 realtime calls per stage


def test_batch_report(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir, metrics, markdown, page = report(runs, "batch", tmp_path)
    check_plots(run_dir, markdown, page, {"accuracy.png", "confusion.png", "labels.png", "batches.png"})
    check_numbers(metrics, markdown, page)
    assert "No successful realtime calls" in markdown
    events = [json.loads(line) for line in (run_dir / "journal" / "batches.ndjson").read_text().splitlines()]
    ended = [event for event in events if event["event"] == "ended"]
    assert len(ended) == metrics["batches_created"] == 6  # 40 rows in files of 15, per stage
    for event in ended:
        assert event["batch_id"] in markdown and event["batch_id"] in page


def test_report_without_labels(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir, metrics, markdown, page = report(runs, "ag_news", tmp_path)
    assert metrics["ground_truth_accuracy"] is None
    check_plots(run_dir, markdown, page, {"accuracy.png", "labels.png", "latency.png", "throughput.png"})
    check_numbers(metrics, markdown, page)
    assert "This task has no ground truth" in markdown and "This task has no ground truth" in page
    assert "Answers the judge rejected" in markdown
    assert "right by truth" not in markdown  # no ground-truth columns


def test_report_rebuilds_identically(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir, _, markdown, page = report(runs, "realtime", tmp_path)
    write_report(run_dir)
    assert (run_dir / "report.md").read_text() == markdown
    assert (run_dir / "report.html").read_text() == page


def test_label_breakdown_pools_invalid_answers() -> None:
    frame = pl.DataFrame({
        "labels": [["A"], ["A", "B"], ["B"], ["A"], None],
        "prediction": ["A", "A", "b!", "B", None],
        "prediction_valid": [True, True, False, True, None],
        "verdict": [True, False, True, None, None],
        "ground_truth_correct": [True, True, False, False, None],
    })
    rows = {row["label"]: row for row in label_breakdown(frame.lazy()).iter_rows(named=True)}
    assert set(rows) == {"A", INVALID_LABEL, "B"}
    assert rows["A"]["predicted"] == 2 and rows["A"]["share"] == 0.5
    assert rows["A"]["truth_rate"] == 1.0 and rows["A"]["judge_rate"] == 0.5
    assert rows["A"]["in_truth"] == 0.75 and rows["B"]["in_truth"] == 0.5
    assert rows["B"]["judge_rate"] is None  # its one row has no verdict


def test_panel_report_has_each_judge_and_the_cost(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir, metrics, markdown, page = report(runs, "panel", tmp_path)
    check_plots(run_dir, markdown, page, {"accuracy.png", "confusion.png", "labels.png", "latency.png", "throughput.png"})
    panel, cost = metrics["panel"], metrics["cost_usd"]
    assert "| predict | judge.j0 | judge.j1 | judge.j2 |" in markdown
    for name, numbers in panel["judges"].items():
        assert f"| {name} | judge-{name[1]} | {percent(numbers['judge_accuracy'])} |" in markdown
    assert f"{panel['fleiss_kappa']:.3f}" in markdown
    assert f"| judge.j1 | judge-1 | ${cost['judge.j1']:.4f} |" in markdown
    assert f"| total |  | ${cost['total']:.4f} |" in markdown


def test_report_of_a_run_where_every_call_failed(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir, metrics, markdown, page = report(runs, "failed", tmp_path)
    assert metrics["n_failed"] == 10 and metrics["judge_accuracy"] is None
    assert not (run_dir / "plots").exists() and "<img" not in page
    assert "No predictions." in markdown and "No successful realtime calls" in markdown
    assert "## Failed rows" in markdown and "simulated 50" in markdown
