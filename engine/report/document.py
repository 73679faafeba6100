"""``report.md`` and a self-contained ``report.html`` for people, with SVG plots in ``plots/``.

Everything is read from the run directory alone (``run.json``, ``metrics.json``,
``results.parquet``, ``journal/``), so a copied or archived run can be reported again. The
document is built once as sections of blocks (paragraphs, notes, tables, images) and rendered
twice: Markdown that links the SVG files beside it, and HTML that holds their markup inline,
with its CSS inline and no script, so the one file can be mailed or attached as it is.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..journal import EventLog, journal_frames
from ..rundir import FinishedRun, RunDir
from ..types import STAGES, StageName
from . import plots
from .summary import has_verdicts, interval_text, percent

INVALID_LABEL = "(not a label)"
EXAMPLES = 8
_TEXT_CHARS = 200
_BIN_STEPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.2rem .5rem;"
    "text-align:left;vertical-align:top}th{background:#f3f3f3}svg{max-width:100%;height:auto}"
    ".note{background:#fff6d5;border-left:4px solid #e0b000;padding:.5rem 1rem}"
)


@dataclass(frozen=True, slots=True)
class _Note:
    text: str


@dataclass(frozen=True, slots=True)
class _Table:
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class _Image:
    path: Path
    alt: str


_Block = str | _Note | _Table | _Image


@dataclass(slots=True)
class _Section:
    heading: str
    blocks: list[_Block] = field(default_factory=list)


def _has_truth(run: FinishedRun) -> bool:
    return run.metrics["ground_truth_accuracy"] is not None


def write_report(run_dir: RunDir | Path) -> Path:
    """Write ``report.md``, ``report.html`` and ``plots/*.svg`` into ``run_dir``; returns report.md."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run = run_dir.load()
    plots_dir = run_dir.plots_dir
    title = f"Evaluation report: {run.info['config']['name']}"
    if "pairwise" in run.metrics:  # its predictions are pairs: no accuracy, labels or disagreements
        judged = [_pairwise(run, plots_dir), _panel(run)]
    else:
        open_answers = not run.info["config"].get("labels")  # free text: no label to break the answers down by
        accuracy = _accuracy(run, plots_dir) if has_verdicts(run.metrics) else None  # a score judge without pass_at
        judged = [_trusted(run), accuracy, _scores(run, plots_dir), _judge_vs_truth(run, plots_dir), _panel(run),
                  _repeats(run), _probabilities(run, plots_dir), _groups(run),
                  None if open_answers else _labels(run, plots_dir)]
    drafted = [
        _overview(run),
        *judged,
        _latency(run, plots_dir),
        _timing(run, plots_dir),
        _tokens(run),
        _examples(run) if has_verdicts(run.metrics) else None,
        _failures(run),
    ]
    sections = [section for section in drafted if section is not None]
    markdown = run_dir.report_md
    markdown.write_text(_markdown(title, sections, run_dir.path), encoding="utf-8")
    run_dir.report_html.write_text(_html(title, sections), encoding="utf-8")
    return markdown


def _stage_of(caller: str) -> str:
    """``predict``, ``judge`` or ``judge.<name>`` (a judge of a panel) -> its stage."""
    return caller.split(".")[0]


def _overview(run: FinishedRun) -> _Section:
    m = run.metrics
    section = _Section("Run", [f"run {run.info['run_id']}, created {run.info['created_at']}, endpoint {run.info['endpoint']}"])
    sources = run.info.get("sources")
    if sources:
        what = "which of two runs answered each row better" if len(sources) == 2 else "the predictions of an earlier run"
        section.blocks.append(f"This run judged {what}, sending no predict request: {' and '.join(sources)}.")
    models: dict[str, Any] = m["models"]
    if any(name.startswith("sim:") for info in models.values() for name in info["served"]):
        section.blocks.append(_Note(
            "Simulated: the embedded server's simulator answered (served model names start with 'sim:'). "
            "Its answers are drawn at random from the options in the prompt: this checks the pipeline, not a model."
        ))
    if any(info["backend"] == "local" for info in models.values()):
        section.blocks.append(_Note(
            "A small model running on this machine's CPU answered (the embedded server's local backend): "
            "a check that the whole pipeline works, not a model or a judge to trust."
        ))
    section.blocks.append(_Table(("", *models), [
        ("model requested", *(info["requested"] for info in models.values())),
        ("model served", *(", ".join(info["served"]) or "none" for info in models.values())),
        ("mode", *(m["mode"][_stage_of(caller)] for caller in models)),
    ]))
    wall = m["wall_seconds"]
    section.blocks.append(_Table(("rows", "judged", "failed", "skipped", "wall time", "requests/s", "rows/s"), [(
        f"{m['n_rows']:,}", f"{m['n_judged']:,}", f"{m['n_failed']:,}", f"{m['n_skipped']:,}", f"{wall:.1f} s",
        f"{m['requests_per_second'] or 0:.1f}" if m["requests"] else "n/a (batch only)",
        f"{m['n_rows'] / wall:.1f}" if wall else "n/a",
    )]))
    return section


def _accuracy(run: FinishedRun, plots_dir: Path) -> _Section:
    m = run.metrics
    section = _Section("Accuracy")
    baseline = f"baseline: always '{m['majority_baseline_label']}'"
    truth_n = m["ground_truth_accuracy_n"] or 0
    score = m.get("score")
    verdict = (f"pass rate (a score of at least {score['pass_at']}, of the rows with a score)" if score
               else "judge accuracy (judge says correct, of the rows with a verdict)")
    section.blocks.append(_Table(("metric", "value", "95% CI", "rows"), [
        (verdict, percent(m["judge_accuracy"]),
         interval_text(m["judge_accuracy_ci95"]), f"{m['judge_accuracy_n']:,}"),
        ("judge accuracy, a row without a verdict counted as not correct", percent(m["judge_accuracy_conservative"]),
         interval_text(m["judge_accuracy_conservative_ci95"]), f"{m['judge_accuracy_conservative_n']:,}"),
        ("ground-truth accuracy", percent(m["ground_truth_accuracy"]), interval_text(m["ground_truth_accuracy_ci95"]),
         f"{truth_n:,}"),
        (baseline if m["majority_baseline_label"] else "majority baseline", percent(m["majority_baseline_accuracy"]), "",
         f"{truth_n:,}"),
        ("invalid predictions (not one of the labels)", percent(m["invalid_prediction_rate"]), "", ""),
        ("judged rows without a recognised verdict", percent(m["invalid_verdict_rate"]), "", f"{m['invalid_verdicts']:,}"),
    ]))
    bars = [(name, m[key], tuple(m[f"{key}_ci95"]) if m[f"{key}_ci95"] else None)
            for name, key in (("judge", "judge_accuracy"), ("ground truth", "ground_truth_accuracy")) if m[key] is not None]
    if bars:
        top = (m["majority_baseline_label"], m["majority_baseline_accuracy"]) if m["majority_baseline_label"] else None
        section.blocks.append(_Image(plots.accuracy_plot(plots_dir / "accuracy.svg", bars, top), "accuracy with 95% CIs"))
    if not _has_truth(run):
        section.blocks.append(_no_truth(run))
    return section


def _no_truth(run: FinishedRun) -> str:
    if run.info["config"]["dataset"]["label_column"] is None:
        return "This task has no ground truth (no dataset.label_column): only the judge's verdicts measure the answers."
    return "No row has both a prediction and ground-truth labels, so there is no ground-truth accuracy."


def _judge_vs_truth(run: FinishedRun, plots_dir: Path) -> _Section:
    m = run.metrics
    section = _Section("Judge vs ground truth")
    if not _has_truth(run):
        section.blocks.append("Nothing to compare the judge with (see above).")
        return section
    c = m["confusion"]
    section.blocks.append(_Table(("", "right by truth", "wrong by truth"), [
        ("judge: correct", str(c["tp"]), str(c["fp"])),
        ("judge: incorrect", str(c["fn"]), str(c["tn"])),
    ]))
    kappa = "n/a" if m["judge_vs_truth_kappa"] is None else f"{m['judge_vs_truth_kappa']:.3f}"
    section.blocks.append(_Table(("agreement", "Cohen's kappa", "precision of 'correct'", "recall of 'correct'", "rows"), [(
        percent(m["judge_vs_truth_agreement"]), kappa, percent(m["judge_precision"]), percent(m["judge_recall"]),
        f"{m['judge_vs_truth_n']:,}",
    )]))
    section.blocks.append(_Image(plots.confusion_plot(plots_dir / "confusion.svg", c), "judge vs truth confusion matrix"))
    return section


def label_breakdown(results: pl.LazyFrame) -> pl.DataFrame:
    """Per predicted label: count, share of predictions, right by truth, judged right, share of
    labelled rows that carry it. Predictions that are not a label are pooled as ``(not a label)``."""
    label = pl.when(pl.col("prediction_valid").fill_null(True)).then(pl.col("prediction")).otherwise(pl.lit(INVALID_LABEL))
    predicted = (
        results.filter(pl.col("prediction").is_not_null())
        .group_by(label.alias("label"))
        .agg(
            predicted=pl.len(),
            truth_rate=pl.col("ground_truth_correct").cast(pl.Float64).mean(),
            judge_rate=pl.col("verdict").cast(pl.Float64).mean(),
        )
        .with_columns(share=pl.col("predicted") / pl.col("predicted").sum())
    )
    labelled = results.filter(pl.col("labels").list.len().fill_null(0) > 0)
    in_truth = (
        labelled.select(pl.col("labels").list.unique().explode().alias("label"))
        .group_by("label")
        .agg(in_truth=pl.len().cast(pl.Float64))
        .with_columns(pl.col("in_truth") / labelled.select(pl.len()).collect().item())
    )
    return predicted.join(in_truth, on="label", how="left").sort(["predicted", "label"], descending=[True, False]).collect()


def _labels(run: FinishedRun, plots_dir: Path) -> _Section:
    section = _Section("Per-label breakdown")
    breakdown = label_breakdown(run.results)
    if breakdown.is_empty():
        section.blocks.append("No predictions.")
        return section
    section.blocks.append("For each answer the base model gave: how often it gave it, how often the judge calls it "
                          "right and, with ground truth, how often it is right and how many rows carry it as a label.")
    header = ("label", "predicted", "share", "judge says right", "right by truth", "rows with this label")
    rows = [(row["label"], f"{row['predicted']:,}", percent(row["share"]), percent(row["judge_rate"]),
             percent(row["truth_rate"]), percent(row["in_truth"])) for row in breakdown.iter_rows(named=True)]
    width = len(header) if _has_truth(run) else 4
    section.blocks.append(_Table(header[:width], [row[:width] for row in rows]))
    section.blocks.append(_Image(plots.label_plot(plots_dir / "labels.svg", breakdown), "per-label breakdown"))
    return section


def _duration(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _latency(run: FinishedRun, plots_dir: Path) -> _Section:
    section = _Section("Latency (realtime calls)")
    quantiles = (0.5, 0.9, 0.99, 1.0)
    summaries = {
        stage: run.results.select(
            pl.col(f"{stage}_latency_s").count().alias("calls"),
            pl.col(f"{stage}_latency_s").min().alias("min"),
            *(pl.col(f"{stage}_latency_s").quantile(q, "linear").alias(str(q)) for q in quantiles),
        ).collect().row(0, named=True)
        for stage in STAGES
    }
    summaries = {stage: summary for stage, summary in summaries.items() if summary["calls"]}
    if not summaries:
        section.blocks.append("No successful realtime calls (rows answered in batches have no per-request latency).")
        return section
    rows = [
        (stage, f"{summary['calls']:,}", *(_duration(summary[str(q)]) for q in quantiles))
        for stage, summary in summaries.items()
    ]
    section.blocks.append(_Table(("stage", "calls", "p50", "p90", "p99", "max"), rows))
    low = min(summary["min"] for summary in summaries.values())
    high = max(summary["1.0"] for summary in summaries.values())
    edges, counts = _histogram(run.results, {stage: f"{stage}_latency_s" for stage in summaries}, low, high, bins=40)
    path = plots.latency_plot(plots_dir / "latency.svg", edges, counts)
    section.blocks.append(_Image(path, "latency histogram per stage"))
    return section


def _histogram(
    frame: pl.LazyFrame, columns: dict[str, str], low: float, high: float, bins: int
) -> tuple[list[float], dict[str, list[int]]]:
    """Shared bin edges from ``low`` to ``high``, and the counts per bin of each named column
    (counted by polars: a million latencies never become Python floats)."""
    width = (high - low) / bins or 1.0
    counts = {}
    for name, column in columns.items():
        index = ((pl.col(column) - low) / width).floor().cast(pl.Int64).clip(0, bins - 1).alias("bin")
        tally = frame.select(index).drop_nulls().group_by("bin").len().collect()
        found = dict(zip(tally["bin"].to_list(), tally["len"].to_list(), strict=True))
        counts[name] = [int(found.get(i, 0)) for i in range(bins)]
    return [low + width * i for i in range(bins + 1)], counts


def throughput(run_dir: RunDir) -> pl.DataFrame | None:
    """Realtime completions per second per stage in time bins (columns stage, start, end,
    per_second; seconds since the first call); ``None`` without realtime calls. Empty bins are
    zeros; the bin width is a round number that keeps to 30 bins or fewer."""
    def realtime_calls(stage: StageName) -> Iterator[pl.DataFrame]:
        columns = ("ok", "latency_s", "started_at", "finished_at")
        for frame in journal_frames(run_dir.journal(stage), columns):
            yield frame.filter(pl.col("ok") & pl.col("latency_s").is_not_null())

    # Two passes over the journal, a block at a time: the time span, then the counts per bin.
    spans = [
        frame.select(pl.col("started_at").min(), pl.col("finished_at").max())
        for stage in STAGES for frame in realtime_calls(stage) if frame.height
    ]
    if not spans:
        return None
    start, end = pl.concat(spans).select(pl.col("started_at").min(), pl.col("finished_at").max()).row(0)
    span = end - start
    width = next((step for step in _BIN_STEPS if span / step <= 30), span / 30)
    counts = pl.concat([
        frame.group_by(((pl.col("finished_at") - start) // width).cast(pl.Int64).alias("bin")).len()
        .select(pl.lit(stage).alias("stage"), "bin", "len")
        for stage in STAGES for frame in realtime_calls(stage)
    ]).group_by("stage", "bin").agg(pl.col("len").sum())
    grid = pl.DataFrame({"stage": [stage for stage in STAGES if stage in counts["stage"]]}).join(
        pl.DataFrame({"bin": range(counts.select(pl.col("bin").max()).item() + 1)}), how="cross"
    )
    return grid.join(counts, on=["stage", "bin"], how="left").select(
        "stage",
        (pl.col("bin") * width).alias("start"),
        ((pl.col("bin") + 1) * width).alias("end"),
        (pl.col("len").fill_null(0) / width).alias("per_second"),
    )


def batch_spans(run_dir: RunDir) -> pl.DataFrame | None:
    """Every batch that ended (journal ``ended`` events, the last per batch id) with start and end
    in seconds since the first batch was created; ``None`` when the run made no batch."""
    ended = [event for event in EventLog(run_dir.batch_events).events() if event["event"] == "ended"]
    if not ended:
        return None
    frame = pl.DataFrame(
        [{key: event.get(key) for key in ("stage", "chunk", "batch_id", "status", "lines")}
         | {"created": float(event["created_at"]), "finished": float(event["finished_at"] or event["at"])} for event in ended]
    ).unique("batch_id", keep="last", maintain_order=True)
    origin = frame["created"].min()
    return frame.sort("created", "chunk").select(
        "stage", "chunk", "batch_id", "status", "lines",
        (pl.col("created") - origin).alias("start"), (pl.col("finished") - origin).alias("end"),
    )


def _timing(run: FinishedRun, plots_dir: Path) -> _Section:
    section = _Section("Throughput and batches")
    rates = throughput(run.dir)
    if rates is not None:
        section.blocks.append("Realtime completions per second, from the journal's finish times.")
        section.blocks.append(_Image(plots.throughput_plot(plots_dir / "throughput.svg", rates), "throughput over time"))
    spans = batch_spans(run.dir)
    if spans is not None:
        section.blocks.append(f"{spans.height} batches, from creation to their end (hatched: not completed).")
        section.blocks.append(_Table(("stage", "file", "batch", "status", "lines", "start", "duration"), [
            (row["stage"], row["chunk"], row["batch_id"], row["status"], str(row["lines"]), f"{row['start']:.0f} s",
             f"{row['end'] - row['start']:.0f} s") for row in spans.iter_rows(named=True)
        ]))
        section.blocks.append(_Image(plots.batch_timeline_plot(plots_dir / "batches.svg", spans), "batch timeline"))
    if rates is None and spans is None:
        section.blocks.append("No completed calls to time.")
    return section


def _tokens(run: FinishedRun) -> _Section:
    tokens, cost = run.metrics["tokens"], run.metrics["cost_usd"]
    kinds = ("prompt", "completion", "batch_prompt", "batch_completion", "cached", "cache_write")
    rows: list[tuple[str, ...]] = [
        (stage, *(f"{used.get(kind, 0):,}" for kind in kinds)) for stage, used in tokens.items()
    ]
    rows.append(("total", *(f"{sum(used.get(kind, 0) for used in tokens.values()):,}" for kind in kinds)))
    header = ("stage", "prompt tokens", "completion tokens", "of which in batches: prompt", "completion",
              "prompt tokens read from the provider's cache", "written to it")
    section = _Section("Tokens and cost", [
        _Table(header, rows),
        "Calls answered in provider batches are priced at the batch rate, every other call (a batch's lines "
        "retried as realtime calls among them) at the realtime rate; prompt tokens the provider read from "
        "or wrote to its prompt cache at the price table's cached_input and cache_write_input rates.",
    ])
    if cost is None:
        section.blocks.append("Cost: no price table for these models (add [prices.\"<model>\"] to the task).")
        return section
    models = run.metrics["models"]
    section.blocks.append(_Table(("caller", "model", "cost (USD)"), [
        *((caller, models[caller]["requested"], "no price" if cost.get(caller) is None else f"${cost[caller]:.4f}")
          for caller in models),
        ("total", "", f"${cost['total']:.4f}"),
    ]))
    return section


def _panel(run: FinishedRun) -> _Section | None:
    panel = run.metrics.get("panel")
    if panel is None:
        return None
    models = run.metrics["models"]
    kappa = "n/a" if panel["fleiss_kappa"] is None else f"{panel['fleiss_kappa']:.3f}"
    return _Section("Panel of judges", [
        "The verdict above is the panel's strict majority of the recognised verdicts; here is each judge on its own "
        "(accuracy over its recognised verdicts; unrecognised over its answered calls; failed calls have no reply).",
        _Table(("judge", "model", "judge accuracy", "verdicts", "unrecognised", "failed calls"), [
            (name, models.get(f"judge.{name}", {}).get("requested", ""), percent(numbers["judge_accuracy"]),
             f"{numbers['judge_accuracy_n']:,}",
             f"{numbers['unrecognised_verdicts']:,} ({percent(numbers['unrecognised_verdict_rate'])})",
             f"{numbers['failed_calls']:,}") for name, numbers in panel["judges"].items()
        ]),
        f"Of {panel['rows']:,} judged rows: {panel['ties']:,} ties (as many recognised votes each way), "
        f"{panel['no_recognised_verdict']:,} without a recognised verdict, {panel['decided_by_fewer_than_majority']:,} "
        "decided by fewer votes than a majority of the panel. Fleiss' kappa and the unanimous share are over the rows "
        "where every judge gave a recognised verdict; Krippendorff's alpha over every row with two recognised votes "
        "or more (1 is perfect agreement, 0 what chance gives)"
        + (f": {_alpha(panel, 'krippendorff_alpha')}" if "krippendorff_alpha" in panel else "")
        + (f"; on the scores (ordinal): {_alpha(panel, 'krippendorff_alpha_scores')}"
           if "krippendorff_alpha_scores" in panel else "") + ".",
        _Table((
            "Fleiss' kappa", "rows", "unanimous rows", "ties", "no recognised verdict", "decided by fewer than a majority",
        ), [(
            kappa, f"{panel['fleiss_kappa_n']:,}", percent(panel["unanimous_rate"]), f"{panel['ties']:,}",
            f"{panel['no_recognised_verdict']:,}", f"{panel['decided_by_fewer_than_majority']:,}",
        )]),
    ])


def _trusted(run: FinishedRun) -> _Section | None:
    t = run.metrics.get("trusted_labels")
    if not t or not has_verdicts(run.metrics):
        return None
    ppi, judge = t["ppi"], t["judge_calibration"]
    section = _Section("Accuracy with trusted labels", [
        f"{t['labelled_n']:,} rows with a verdict carry a trusted label"
        + (f" (from {t['source']})" if t.get("source") else "") + f", {t['unlabelled_n']:,} do not.",
    ])
    rows: list[tuple[str, ...]] = []
    if ppi is not None:
        rows.append(("prediction-powered (PPI++)", percent(ppi["accuracy"]), interval_text(ppi["ci95"]),
                     f"{ppi['n']:,} + {ppi['unlabelled_n']:,}",
                     "the judge's verdicts on every row, corrected by its errors on the labelled rows: unbiased"))
    if judge["corrected_accuracy"] is not None:
        rows.append(("judge corrected for its error rates (Rogan-Gladen)", percent(judge["corrected_accuracy"]),
                     interval_text(judge["corrected_accuracy_ci95"]), f"{judge['judge_rate_n']:,}",
                     "the judge's rate, corrected by its sensitivity and specificity on the labelled rows"))
    rows.append(("the labels alone", percent(t["labels_only"]["accuracy"]), interval_text(t["labels_only"]["ci95"]),
                 f"{t['labels_only']['n']:,}", "the share correct among the labelled rows"))
    rows.append(("the judge alone (raw)", percent(t["judge_only"]["accuracy"]), interval_text(t["judge_only"]["ci95"]),
                 f"{t['judge_only']['n']:,}", "the share the judge calls correct: biased by its errors"))
    section.blocks.append(_Table(("estimate of the true accuracy", "value", "95% CI", "rows", "what it is"), rows))
    section.blocks.append(_Table(("judge's sensitivity", "95% CI", "rows", "judge's specificity", "95% CI", "rows"), [(
        percent(judge["sensitivity"]), interval_text(judge["sensitivity_ci95"]), f"{judge['sensitivity_n']:,}",
        percent(judge["specificity"]), interval_text(judge["specificity_ci95"]), f"{judge['specificity_n']:,}",
    )]))
    section.blocks.append("Sensitivity: of the labelled rows that are correct, the share the judge calls correct; "
                          "specificity: of those that are not, the share it calls incorrect.")
    if judge["warning"]:
        section.blocks.append(_Note(judge["warning"]))
    if ppi is not None:
        more = ppi["labels_to_halve"]
        section.blocks.append(
            f"The PPI interval is {100 * ppi['width']:.1f} points wide. "
            + (f"Labelling about {more:,} more rows would halve it." if more is not None else
               "Labelling every remaining row would not halve it (too few rows are left, or the judge's own "
               "variance already takes more than a quarter of it).")
        )
    return section


def _scores(run: FinishedRun, plots_dir: Path) -> _Section | None:
    score = run.metrics.get("score")
    if score is None:
        return None
    low, high = score["scale"]
    mean = "n/a" if score["mean_score"] is None else f"{score['mean_score']:.2f}"
    interval = score["mean_score_ci95"]
    section = _Section("Scores", [
        f"The judge scored each answer from {low} to {high} against its rubric. The mean is over the rows with a "
        "recognised score (its 95% interval a normal approximation); the distribution counts every reply's score; "
        + ("an answer passes with a score of at least "
           f"{score['pass_at']} (the pass rate is over the rows with a score, with its Wilson interval)."
           if score["pass_at"] is not None else "without pass_at there is no pass rate."),
        _Table(("mean score", "95% CI", "sd", "median", "rows", "pass rate", "95% CI", "invalid scores"), [(
            mean, "" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]",
            "n/a" if score["sd"] is None else f"{score['sd']:.2f}",
            "n/a" if score["median"] is None else f"{score['median']:g}", f"{score['n']:,}",
            percent(score["pass_rate"]), interval_text(score["pass_rate_ci95"]),
            f"{score['invalid_scores']:,} ({percent(score['invalid_score_rate'])})",
        )]),
        _Table(("score", *score["distribution"]), [("replies", *(f"{count:,}" for count in score["distribution"].values()))]),
    ])
    if score["distribution_n"]:
        section.blocks.append(_Image(
            plots.score_plot(plots_dir / "scores.svg", score["distribution"], score["mean_score"], score["pass_at"]),
            "score histogram",
        ))
    return section


def _pairwise(run: FinishedRun, plots_dir: Path) -> _Section:
    p = run.metrics["pairwise"]
    sources = run.info.get("sources") or ["A", "B"]
    correlation = "n/a" if p["length_correlation"] is None else f"{p['length_correlation']:+.3f}"
    section = _Section("Pairwise comparison", [
        f"A is {sources[0]}, B is {sources[-1]}. For every row both runs answered, the judge said which answer is "
        "better" + (", once in each order; a choice that changed with the order counts as a tie (MT-Bench's rule)."
                    if p["swap"] else " (in one order only: position bias is not corrected)."),
        _Table(("rows", "A wins", "ties", "B wins", "B's win rate", "95% CI"), [(
            f"{p['n']:,}", f"{p['a_wins']:,}", f"{p['ties']:,}", f"{p['b_wins']:,}", percent(p["b_win_rate"]),
            interval_text(p["b_win_rate_ci95"]),
        )]),
        "B's win rate is (B's wins + ties / 2) / rows. Position consistency: the share of pairs whose choice did "
        "not change with the order; first-position preference: of the calls that chose an answer, the share that "
        "chose the one shown first (50% is no position bias); verbosity: how often the longer answer won, and the "
        "correlation of B's result with how much longer B's answer was.",
        _Table(("position consistency", "pairs", "first-position preference", "calls", "longer answer won", "rows",
                "length correlation"), [(
            percent(p["position_consistency"]), f"{p['position_consistency_n']:,}", percent(p["first_position_rate"]),
            f"{p['first_position_n']:,}", percent(p["longer_answer_win_rate"]), f"{p['longer_answer_n']:,}", correlation,
        )]),
    ])
    if p["n"]:
        section.blocks.append(_Image(
            plots.pairwise_plot(plots_dir / "pairwise.svg", p["a_wins"], p["ties"], p["b_wins"], p["first_position_rate"]),
            "pairwise outcomes and position preference",
        ))
    return section


def _probabilities(run: FinishedRun, plots_dir: Path) -> _Section | None:
    p = run.metrics.get("probabilities")
    if p is None:
        return None
    section = _Section("Verdict probabilities", [
        f"From the judge's token logprobs: its mean probability of the answer it gave was {percent(p['mean_probability'])} "
        f"over {p['n']:,} rows (rows without one: the endpoint gave no logprobs, or they did not spell the answer)."
    ])
    if p.get("mean_weighted_score") is not None:
        interval = p["mean_weighted_score_ci95"]
        section.blocks.append(
            f"Probability-weighted mean score (G-Eval: each score weighted by its probability at the answer's "
            f"position): {p['mean_weighted_score']:.2f}"
            + ("" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]") + f" over {p['weighted_score_n']:,} rows."
        )
    if p["brier_n"]:
        section.blocks.append(
            f"Against the ground truth ({p['brier_n']:,} rows): Brier score {p['brier_score']:.3f} (0 is perfect, always "
            f"saying 50% scores 0.250), expected calibration error {p['expected_calibration_error']:.3f}."
        )
        section.blocks.append(_Table(("probability of correct", "rows", "mean probability", "share correct by truth"), [
            (f"{b['bin'][0]:.1f}-{b['bin'][1]:.1f}", f"{b['rows']:,}", percent(b["predicted"]), percent(b["observed"]))
            for b in p["calibration"]
        ]))
        section.blocks.append(_Image(plots.calibration_plot(plots_dir / "calibration.svg", p["calibration"]), "calibration"))
    return section


def _repeats(run: FinishedRun) -> _Section | None:
    repeats = run.metrics.get("repeats")
    if repeats is None:
        return None
    section = _Section("Repeated judgements", [
        f"Each row was judged {repeats['repeats']} times; a judge's verdict is the strict majority of its repeats "
        f"(a tie gives none: {repeats['ties']:,} rows). Agreement: the share of a row's recognised repeats that agree "
        "with their majority, averaged over rows; unanimous: every repeat recognised and the same.",
        _Table(("mean agreement", "unanimous rows", "ties", "rows"), [(
            percent(repeats["mean_agreement"]), percent(repeats["unanimous_rate"]), f"{repeats['ties']:,}",
            f"{repeats['pairs']:,}",
        )]),
        "How much the headline moves between repeats: the judge accuracy had only one repeat been asked.",
        _Table(("repeat", "judge accuracy", "rows", *(("mean score",) if "single_repeat_mean_scores" in repeats else ())), [
            (str(index + 1), percent(accuracy), f"{n:,}",
             *((f"{repeats['single_repeat_mean_scores'][index]:.2f}",)
               if repeats.get("single_repeat_mean_scores") and repeats["single_repeat_mean_scores"][index] is not None
               else (("n/a",) if "single_repeat_mean_scores" in repeats else ())))
            for index, (accuracy, n) in enumerate(zip(repeats["single_repeat_accuracies"], repeats["single_repeat_n"],
                                                      strict=True))
        ]),
    ])
    spread = repeats["accuracy_spread"]
    if spread is not None:
        section.blocks.append(f"Spread (max - min) of the single-repeat accuracies: {100 * spread:.1f} points "
                              f"(sd {100 * repeats['accuracy_sd']:.1f}).")
    return section


def _groups(run: FinishedRun) -> _Section | None:
    groups = run.metrics.get("groups")
    if not groups:
        return None
    section = _Section("By group", ["Every headline number for each group of rows (report.group_by), with its "
                                    "interval and the rows it is over."])
    for column, values in groups.items():
        if "note" in values:
            section.blocks.append(f"{column}: {values['note']}.")
            continue
        score = any("mean_score" in numbers for numbers in values.values())
        ppi = any(numbers["ppi_accuracy"] is not None for numbers in values.values())
        header = (column, "rows", "judge accuracy", "n", "ground-truth accuracy", "n",
                  *(("prediction-powered", "labelled") if ppi else ()), *(("mean score", "n") if score else ()))
        rows = []
        for group, m in values.items():
            row = [str(group), f"{m['n_rows']:,}", f"{percent(m['judge_accuracy'])} {interval_text(m['judge_accuracy_ci95'])}",
                   f"{m['judge_accuracy_n']:,}",
                   f"{percent(m['ground_truth_accuracy'])} {interval_text(m['ground_truth_accuracy_ci95'])}",
                   f"{m['ground_truth_accuracy_n'] or 0:,}"]
            if ppi:
                row += [f"{percent(m['ppi_accuracy'])} {interval_text(m['ppi_accuracy_ci95'])}", f"{m['ppi_accuracy_n']:,}"]
            if score:
                interval = m["mean_score_ci95"]
                row += ["n/a" if m["mean_score"] is None else f"{m['mean_score']:.2f}"
                        + ("" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]"), f"{m['mean_score_n']:,}"]
            rows.append(tuple(row))
        section.blocks.append(_Table(header, rows))
    return section


def _alpha(panel: dict[str, Any], key: str) -> str:
    value = panel[key]
    return f"{'n/a' if value is None else f'{value:.3f}'} over {panel[key + '_n']:,} rows"


def _examples(run: FinishedRun) -> _Section:
    verdict, truth = pl.col("verdict"), pl.col("ground_truth_correct")
    if _has_truth(run):
        section = _Section("Where the judge and the ground truth disagree")
        said_right = run.results.filter(verdict & ~truth).head(EXAMPLES).collect()
        said_wrong = run.results.filter(~verdict & truth).head(EXAMPLES).collect()
        take_wrong = min(said_wrong.height, max(EXAMPLES // 2, EXAMPLES - said_right.height))
        examples = pl.concat([said_right.head(EXAMPLES - take_wrong), said_wrong.head(take_wrong)])
    else:
        section = _Section("Answers the judge rejected")
        examples = run.results.filter(~verdict).head(EXAMPLES).collect()
    if examples.is_empty():
        section.blocks.append("None.")
        return section
    reasoning = bool(run.metrics.get("reasoning"))
    header = ("row", "input", "prediction", "judge said", *(("judge's reasoning",) if reasoning else ()))
    rows = [(row["row_id"], _inputs(row["inputs"]), row["prediction"] or "-", _clip(row["verdict_text"] or "-"),
             *((_clip(row.get("reasoning") or "-"),) if reasoning else ()),
             ", ".join(row["labels"] or []) or "-", {True: "yes", False: "no", None: "-"}[row["ground_truth_correct"]])
            for row in examples.iter_rows(named=True)]
    if _has_truth(run):
        header = (*header, "labels", "right by truth")
    section.blocks.append(_Table(header, [row[: len(header)] for row in rows]))
    return section


def _failures(run: FinishedRun) -> _Section | None:
    if not run.metrics["n_failed"]:
        return None
    errors = (
        run.results.filter(pl.col("status").is_in(["predict_failed", "judge_failed"]))
        .group_by("status", "error").len().sort(["len", "status"], descending=[True, False]).head(EXAMPLES).collect()
    )
    reasons = ", ".join(f"{reason} {rows:,}" for reason, rows in run.metrics["failure_reasons"].items())
    return _Section("Failed rows", [
        f"{run.metrics['n_failed']:,} rows failed; by reason: {reasons}. "
        "The most frequent errors (every failed row is in results.parquet):",
        _Table(("status", "error", "rows"), [(row["status"], _clip(row["error"] or "-"), f"{row['len']:,}")
                                             for row in errors.iter_rows(named=True)]),
    ])


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _TEXT_CHARS else text[: _TEXT_CHARS - 1] + "…"


def _inputs(inputs: dict[str, str | None] | None) -> str:
    if not inputs:
        return "-"
    if len(inputs) == 1:
        return _clip(next(iter(inputs.values())) or "")
    return _clip(" · ".join(f"{name}: {value}" for name, value in inputs.items()))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def _markdown(title: str, sections: list[_Section], run_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.heading}", ""]
        for block in section.blocks:
            if isinstance(block, _Table):
                lines.append("| " + " | ".join(map(_md_cell, block.header)) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            elif isinstance(block, _Image):
                lines.append(f"![{block.alt}]({block.path.relative_to(run_dir).as_posix()})")
            elif isinstance(block, _Note):
                lines.append(f"> **{block.text}**")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


def _html(title: str, sections: list[_Section]) -> str:
    e = html.escape
    parts = [f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>',
             f"<style>{_STYLE}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{e(section.heading)}</h2>")
        for block in section.blocks:
            if isinstance(block, _Table):
                parts.append("<table><tr>" + "".join(f"<th>{e(cell)}</th>" for cell in block.header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in block.rows]
                parts.append("</table>")
            elif isinstance(block, _Image):
                parts.append(f'<p role="img" aria-label="{e(block.alt)}">{block.path.read_text(encoding="utf-8")}</p>')
            elif isinstance(block, _Note):
                parts.append(f'<p class="note">{e(block.text)}</p>')
            else:
                parts.append(f"<p>{e(block)}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
