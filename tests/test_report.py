"""report.md / report.html from real run directories: realtime, batch, and a task without labels."""

from __future__ import annotations

import html
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import anyio
import polars as pl
import pytest
from rich.console import Console

from engine import Evaluation, TaskConfig, load_config, with_overrides
from engine.config import parse_config
from engine.journal_totals import read_totals
from engine.report.document import INVALID_LABEL, label_breakdown, write_report
from engine.report.summary import cost_usd, percent, print_summary
from engine.rundir import RunDir
from engine.shipped import example_config

from .conftest import imdb_config

RUN_FILES = ("run.json", "metrics.json", "results.parquet", "journal")
SVG = "{http://www.w3.org/2000/svg}"


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
    """The ``expected`` plots, and no other, are well-formed SVG files in plots/, linked from
    report.md and inlined as they are in report.html, which loads nothing from elsewhere."""
    plots = {path.name for path in (run_dir / "plots").iterdir()}
    assert plots == expected
    linked = re.findall(r"!\[[^]]*\]\((plots/[^)]+\.svg)\)", markdown)
    assert {Path(link).name for link in linked} == expected
    assert page.count("<svg ") == len(expected) and "<img" not in page
    for name in expected:
        markup = (run_dir / "plots" / name).read_text(encoding="utf-8")
        assert ElementTree.fromstring(markup).tag == f"{SVG}svg", name
        assert markup in page, f"{name} is not inlined in report.html"
    for external in ("<script", "<link", "href=", "@import"):
        assert external not in page
    assert not re.search(r"url\((?!#)", page)  # only references within the page (a hatch pattern)


def svg_texts(path: Path) -> list[str]:
    return [text.text or "" for text in ElementTree.parse(path).iter(f"{SVG}text")]


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
    check_plots(run_dir, markdown, page, {"accuracy.svg", "confusion.svg", "labels.svg", "latency.svg", "throughput.svg"})
    check_numbers(metrics, markdown, page)
    confusion = metrics["confusion"]
    for document in (markdown, html.unescape(page)):
        assert percent(metrics["ground_truth_accuracy"]) in document
        assert percent(metrics["judge_vs_truth_agreement"]) in document
        assert f"always '{metrics['majority_baseline_label']}'" in document
        assert f"{metrics['judge_vs_truth_kappa']:.3f}" in document
    assert f"| judge: correct | {confusion['tp']} | {confusion['fp']} |" in markdown
    assert {str(confusion[cell]) for cell in ("tp", "fp", "fn", "tn")} <= set(svg_texts(run_dir / "plots" / "confusion.svg"))
    assert "Where the judge and the ground truth disagree" in markdown
    assert "| predict | 40 |" in markdown  # latency table: 40 realtime calls per stage


def test_batch_report(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir, metrics, markdown, page = report(runs, "batch", tmp_path)
    check_plots(run_dir, markdown, page, {"accuracy.svg", "confusion.svg", "labels.svg", "batches.svg"})
    check_numbers(metrics, markdown, page)
    assert "No successful realtime calls" in markdown
    events = [json.loads(line) for line in (run_dir / "journal" / "batches.ndjson").read_text().splitlines()]
    ended = [event for event in events if event["event"] == "ended"]
    assert len(ended) == metrics["batches_created"] == 6  # 40 rows in files of 15, per stage
    chunks = svg_texts(run_dir / "plots" / "batches.svg")
    for event in ended:
        assert event["batch_id"] in markdown and event["batch_id"] in page
        assert chunks.count(event["chunk"]) == 1  # a bar per batch


def test_report_without_labels(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir, metrics, markdown, page = report(runs, "ag_news", tmp_path)
    assert metrics["ground_truth_accuracy"] is None
    check_plots(run_dir, markdown, page, {"accuracy.svg", "labels.svg", "latency.svg", "throughput.svg"})
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
    check_plots(run_dir, markdown, page, {"accuracy.svg", "confusion.svg", "labels.svg", "latency.svg", "throughput.svg"})
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
    assert not (run_dir / "plots").exists() and "<svg" not in page
    assert "No predictions." in markdown and "No successful realtime calls" in markdown
    assert "## Failed rows" in markdown and "simulated 50" in markdown


# --- the summary and the cost (issue 11 items 11, 17, 18, 19, 26) -----------------------------


def summary_text(metrics: dict[str, Any], run_dir: Path) -> str:
    console = Console(record=True, width=250)
    print_summary(metrics, run_dir, console)
    return console.export_text()


def test_summary_shows_n_both_rates_and_the_callers_without_a_price(runs: dict[str, Path]) -> None:
    metrics = json.loads((runs["panel"] / "metrics.json").read_text())
    text = summary_text(metrics, runs["panel"])
    assert f"judge accuracy (n={metrics['judge_accuracy_n']}: rows with a verdict)" in text
    assert f"no verdict = not correct (n={metrics['judge_accuracy_conservative_n']})" in text
    assert percent(metrics["judge_accuracy_conservative"]) in text
    assert f"no recognised verdict ({metrics['invalid_verdicts']} rows)" in text
    predict_model = metrics["models"]["predict"]["requested"]
    assert (f"no price for predict ({predict_model}), judge.j0 (judge-0), judge.j2 (judge-2): the cost total leaves it out; "
            'add [prices."<model>"] to the task') in text
    assert f"${metrics['cost_usd']['total']:.4f}" in text


def test_failure_reasons_are_counted_and_summarised(runs: dict[str, Path], tmp_path: Path) -> None:
    metrics = json.loads((runs["failed"] / "metrics.json").read_text())
    errors = pl.read_parquet(runs["failed"] / "results.parquet")["error"].to_list()
    assert metrics["failure_reasons"] == dict(Counter(error.split(":")[0] for error in errors))
    assert sum(metrics["failure_reasons"].values()) == metrics["n_failed"] == 10
    text = summary_text(metrics, runs["failed"])
    top = ", ".join(f"{reason} {rows}" for reason, rows in metrics["failure_reasons"].items())
    assert f"failed rows by reason: {top}" in text
    _, _, markdown, _ = report(runs, "failed", tmp_path)
    assert f"by reason: {top}" in markdown
    assert "failed rows by reason" not in summary_text(json.loads((runs["realtime"] / "metrics.json").read_text()),
                                                       runs["realtime"])


def test_the_simulator_note_when_the_sim_is_reached_through_base_url(
    tmp_path: Path, api_key: str, sim_url: str
) -> None:
    run_dir = run_evaluation(imdb_config(sim_url, limit=5), tmp_path / "through-url")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {info["backend"] for info in metrics["models"].values()} == {None}
    assert "answers came from the simulator" in summary_text(metrics, run_dir)
    for info in metrics["models"].values():  # a real model's names: no note
        info["served"] = ["gpt-4o-mini"]
    assert "answers came from the simulator" not in summary_text(metrics, run_dir)


def journal_line(custom_id: str, prompt: int, completion: int, latency: float | None, ok: bool = True) -> str:
    return json.dumps({"custom_id": custom_id, "row_id": custom_id.split(":")[1], "ok": ok, "model": "m",
                       "prompt_tokens": prompt if ok else None, "completion_tokens": completion if ok else None,
                       "latency_s": latency})


def test_cost_prices_prompt_tokens_from_the_providers_cache_at_their_own_rates(tmp_path: Path) -> None:
    config = load_config(example_config("imdb"))
    model = config.predict.model
    config = with_overrides(config, {"prices": {model: {"input": 3.0, "output": 15.0, "cached_input": 0.3,
                                                        "cache_write_input": 3.75}}})
    journal = tmp_path / "journal"
    journal.mkdir()
    lines = [  # a realtime call that wrote the shared prefix, one that read it, one in a batch that read it
        {"custom_id": "predict:0", "row_id": "0", "ok": True, "model": "m", "prompt_tokens": 1500, "completion_tokens": 10,
         "latency_s": 0.1, "cache_write_tokens": 1200},
        {"custom_id": "predict:1", "row_id": "1", "ok": True, "model": "m", "prompt_tokens": 1500, "completion_tokens": 10,
         "latency_s": 0.1, "cached_tokens": 1200},
        {"custom_id": "predict:2", "row_id": "2", "ok": True, "model": "m", "prompt_tokens": 1500, "completion_tokens": 10,
         "latency_s": None, "cached_tokens": 1200},
    ]
    (journal / "predict.ndjson").write_text("".join(json.dumps(line) + "\n" for line in lines))
    tokens = read_totals(RunDir(tmp_path)).tokens_by_caller()
    used = tokens["predict"]
    assert (used["cached"], used["cache_write"], used["batch_cached"]) == (2400, 1200, 1200)
    cost = cost_usd(config, tokens)
    assert cost is not None
    realtime = (300 * 3.0 + 1200 * 3.75 + 10 * 15.0) + (300 * 3.0 + 1200 * 0.3 + 10 * 15.0)
    batch = (300 * 1.5 + 1200 * 0.15 + 10 * 7.5)  # the batch discount halves the cache rates too
    assert cost["predict"] == pytest.approx((realtime + batch) / 1e6)


def test_cost_prices_each_call_at_the_rate_of_the_way_it_was_made(tmp_path: Path) -> None:
    config = load_config(example_config("imdb"))
    predict_model, judge_model = config.predict.model, config.judges[0].model
    config = with_overrides(config, {
        "predict.mode": "batch", "judge.mode": "batch",
        "prices": {predict_model: {"input": 1.0, "output": 2.0},  # batch: half
                   judge_model: {"input": 3.0, "output": 5.0, "batch_input": 1.0, "batch_output": 2.0}},
    })
    journal = tmp_path / "journal"
    journal.mkdir()
    # answers from a provider batch have no latency; realtime calls (here: retries of failed lines) have one
    (journal / "predict.ndjson").write_text("\n".join([
        journal_line("predict:0", 100, 10, None), journal_line("predict:1", 200, 20, 0.4),
        journal_line("predict:2", 400, 40, None), journal_line("predict:3", 0, 0, None, ok=False),
    ]) + "\n")
    (journal / "judge.ndjson").write_text("\n".join([
        journal_line("judge:0", 1000, 5, None), journal_line("judge:1", 50, 1, 0.2), journal_line("judge:2", 70, 3, 1.5),
    ]) + "\n")
    tokens = read_totals(RunDir(tmp_path)).tokens_by_caller()
    uncached = {"cached": 0, "cache_write": 0, "batch_cached": 0, "batch_cache_write": 0}
    assert tokens["predict"] == {"prompt": 700, "completion": 70, "batch_prompt": 500, "batch_completion": 50, "served": ["m"],
                                 **uncached}
    assert tokens["judge"] == {"prompt": 1120, "completion": 9, "batch_prompt": 1000, "batch_completion": 5, "served": ["m"],
                               **uncached}
    cost = cost_usd(config, tokens)
    assert cost is not None
    predict = (500 * 0.5 + 50 * 1.0 + 200 * 1.0 + 20 * 2.0) / 1e6
    judge = (1000 * 1.0 + 5 * 2.0 + 120 * 3.0 + 4 * 5.0) / 1e6
    assert cost == {"predict": pytest.approx(predict), "judge": pytest.approx(judge), "total": pytest.approx(predict + judge)}
