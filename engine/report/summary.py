"""``metrics.json`` from a run directory, and the summary table printed at the end of a run.

Everything is computed from files (results.parquet, the journal), so a resumed run reports the
same numbers as an uninterrupted one, and a report can be rebuilt from the directory alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import CalibrationConfig, Mode, TaskConfig
from ..formats import DESCRIBED, FORMATS
from ..journal import EventLog
from ..journal_totals import TOKEN_KINDS, JournalTotals, read_totals
from ..judges import judge_prefixes
from ..rundir import RunDir, write_json
from ..sessions import RunFigures, run_figures
from ..types import STAGES
from .groups import group_metrics
from .judgements import krippendorff_alpha, pairwise_metrics, probability_metrics, repeat_metrics, score_metrics
from .metrics import failure_reasons, panel_metrics, quality_metrics
from .trusted import trusted_metrics, with_trusted_labels


def build_metrics(
    run_dir: RunDir,
    config: TaskConfig,
    *,
    figures: RunFigures,
    totals: JournalTotals,
    backend: str | None,
    calibration: CalibrationConfig | None = None,
) -> dict[str, Any]:
    """Every number of ``metrics.json``; ``figures`` cover every session of the run (see
    ``engine.sessions``), ``totals`` every call in its journal (``engine.journal_totals``).
    Trusted labels from ``calibration`` (default: the config's) are the ground truth of the rows
    they label."""
    results = pl.scan_parquet(run_dir.results_file)
    calibration = calibration or config.calibration
    if calibration is not None:
        results = with_trusted_labels(results, calibration)
    prefixes = judge_prefixes(config)
    metrics = quality_metrics(results)
    metrics["failure_reasons"] = failure_reasons(results)
    trusted = trusted_metrics(results)
    ppi = trusted["ppi"] if trusted else None
    metrics["ppi_accuracy"] = ppi["accuracy"] if ppi else None
    metrics["ppi_accuracy_ci95"] = ppi["ci95"] if ppi else None
    metrics["ppi_accuracy_n"] = ppi["n"] if ppi else 0
    metrics["trusted_labels"] = trusted
    if trusted is not None and calibration is not None:
        trusted["source"] = str(calibration.path)
    judge = config.judges[0]
    metrics["judge_kind"] = judge.kind
    metrics["reasoning"] = any(judge.reasoning for judge in config.judges)
    if judge.kind == "score":
        metrics["score"] = score_metrics(results, judge.scale, judge.pass_at)
        # A score judge's reply is recognised when it holds a score on the scale.
        metrics["invalid_verdicts"] = metrics["score"]["invalid_scores"]
        metrics["invalid_verdict_rate"] = metrics["score"]["invalid_score_rate"]
    if judge.kind == "pairwise":
        metrics["pairwise"] = pairwise_metrics(results, len(prefixes), swap=judge.swap)
        # A pairwise judge's reply is recognised when it names a winner.
        unrecognised = metrics["n_judged"] - metrics["pairwise"]["n"]
        metrics["invalid_verdicts"] = unrecognised
        metrics["invalid_verdict_rate"] = unrecognised / metrics["n_judged"] if metrics["n_judged"] else None
    if config.report.group_by:
        metrics["groups"] = group_metrics(results, config.report.group_by,
                                          scale=judge.scale if judge.kind == "score" else None, pass_at=judge.pass_at)
    if judge.logprobs:
        metrics["probabilities"] = probability_metrics(results, scored=judge.kind == "score")
    if judge.repeats > 1:
        metrics["repeats"] = repeat_metrics(results, len(prefixes), judge.repeats, scored=judge.kind == "score")
    if len(prefixes) > 1:
        metrics["panel"] = panel_metrics(results, [judge.name or "" for judge in config.judges])
        # Krippendorff's alpha beside Fleiss' kappa: over every row with two recognised votes or
        # more (missing votes tolerated); ordinal over a score panel's scores.
        alpha, units = krippendorff_alpha(results, "verdicts", ordinal=False)
        metrics["panel"].update(krippendorff_alpha=alpha, krippendorff_alpha_n=units)
        if config.judge_kind == "score":
            alpha, units = krippendorff_alpha(results, "scores", ordinal=True)
            metrics["panel"].update(krippendorff_alpha_scores=alpha, krippendorff_alpha_scores_n=units)
    by_caller = totals.tokens_by_caller()
    metrics["tokens"] = {
        stage: {
            kind: sum(used[kind] for caller, used in by_caller.items() if caller.split(".")[0] == stage)
            for kind in TOKEN_KINDS
        }
        for stage in STAGES
    }
    metrics["cost_usd"] = cost_usd(config, by_caller)
    metrics["endpoints"] = endpoint_metrics(config, totals, metrics["cost_usd"])
    metrics["mode"] = {"predict": config.predict.mode, "judge": config.judge_mode}
    metrics["wall_seconds"] = figures.wall_seconds
    metrics["sessions"] = figures.sessions
    metrics["requests"] = figures.requests
    metrics["requests_per_second"] = figures.requests_per_second
    metrics["retries"] = figures.retries
    metrics["rate_limited"] = figures.rate_limited
    metrics["batches_created"] = batches_created(run_dir)
    metrics["cache_hits"] = totals.cache_hits  # answered from engine.response_cache: no tokens, no attempt
    metrics["stage_overlap"] = totals.stage_overlap()
    metrics["models"] = {
        caller: {"requested": stage_config.model, "served": by_caller.get(caller, {}).get("served", []), "backend": backend}
        for caller, stage_config in (("predict", config.predict), *zip(prefixes, config.judges, strict=True))
    }
    return metrics


def refresh_metrics(run_dir: RunDir, calibration: CalibrationConfig) -> dict[str, Any]:
    """``metrics.json`` of a finished run computed again with trusted labels added (no call is
    made: everything comes from the run directory); returns the new metrics."""
    run = run_dir.load()
    totals = read_totals(run_dir)
    metrics = build_metrics(
        run_dir, run.config, figures=run_figures(run_dir, totals), totals=totals,
        backend=run.metrics["models"]["predict"]["backend"], calibration=calibration,
    )
    metrics["structured_output"] = run.metrics.get("structured_output", {})
    write_json(run_dir.metrics_file, metrics)
    return metrics


def endpoint_metrics(config: TaskConfig, totals: JournalTotals, costs: dict[str, float | None] | None) -> list[dict[str, Any]]:
    """Each endpoint the run called (``TaskConfig.endpoints``): its callers, the requests they
    made (every attempt, as ``requests``), the answers that were 429s, their tokens (prompt,
    completion, cached) and cost (None without a price for one of its callers)."""
    tokens = totals.tokens_by_caller()
    described = []
    for endpoint, callers in config.endpoints.items():
        caller_costs = [None if costs is None else costs.get(caller) for caller in callers]
        called = [totals.callers[caller] for caller in callers if caller in totals.callers]
        described.append({
            "endpoint": endpoint.described,
            "provider": endpoint.provider,
            "api": endpoint.api,
            "callers": list(callers),
            "requests": sum(caller.requests for caller in called),
            "rate_limited": sum(caller.rate_limited for caller in called),
            "tokens": {kind: sum(int(tokens.get(caller, {}).get(kind, 0)) for caller in callers)
                       for kind in ("prompt", "completion", "cached", "cache_write")},
            "cost_usd": None if None in caller_costs else round(sum(c for c in caller_costs if c is not None), 6),
        })
    return described


def batches_created(run_dir: RunDir) -> int:
    """Batches the run created, all sessions together (the ``batch`` events of its journal)."""
    return sum(1 for event in EventLog(run_dir.batch_events).events() if event["event"] == "batch")


def cost_usd(config: TaskConfig, tokens: dict[str, dict[str, Any]]) -> dict[str, float | None] | None:
    """Cost per caller (``predict``, each judge) at the price table's rates for its model: each
    call at the rate of the way it was made (tokens answered in provider batches at the batch
    rate, the rest, a batch stage's realtime retries among them, at the realtime rate), and its
    prompt tokens read from or written to the provider's prompt cache at the cache rates
    (``Price.per_cache_token``). A caller without a price is None and left out of ``total``; None
    when no model has a price."""
    costs: dict[str, float | None] = {}
    for caller, stage_config in (("predict", config.predict), *zip(judge_prefixes(config), config.judges, strict=True)):
        price = config.prices.get(stage_config.model)
        if price is None:
            costs[caller] = None
            continue
        used = {**dict.fromkeys(TOKEN_KINDS, 0), **tokens.get(caller, {})}
        in_batch = {kind: int(used[f"batch_{kind}"]) for kind in ("prompt", "completion", "cached", "cache_write")}
        in_realtime = {kind: int(used[kind]) - spent for kind, spent in in_batch.items()}
        cost = 0.0
        mode: Mode
        for mode, spent in (("batch", in_batch), ("realtime", in_realtime)):
            per_input, per_output = price.per_token(mode)
            per_read, per_write = price.per_cache_token(mode)
            uncached = spent["prompt"] - spent["cached"] - spent["cache_write"]
            cost += (uncached * per_input + spent["cached"] * per_read + spent["cache_write"] * per_write
                     + spent["completion"] * per_output)
        costs[caller] = round(cost, 6)
    known = [cost for cost in costs.values() if cost is not None]
    if not known:
        return None
    return {**costs, "total": round(sum(known), 6)}


def kappa_text(kappa: float | None) -> str:
    return "n/a" if kappa is None else f"{kappa:.3f}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def interval_text(bounds: list[float] | tuple[float, float] | None) -> str:
    return "" if not bounds else f"[{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


def summary_table(metrics: dict[str, Any], run_dir: Path) -> Table:
    table = Table(title=f"run {run_dir.name}", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    rows: list[tuple[str, str, str]] = [
        ("rows", str(metrics["n_rows"]), ""),
        ("judged / failed / skipped", f"{metrics['n_judged']} / {metrics['n_failed']} / {metrics['n_skipped']}", ""),
        *_kind_rows(metrics),
        *(_verdict_rows(metrics) if has_verdicts(metrics) else []),
        ("cost", "n/a (no price for the models)" if metrics["cost_usd"] is None else f"${metrics['cost_usd']['total']:.4f}", ""),
        ("mode (predict / judge)", f"{metrics['mode']['predict']} / {metrics['mode']['judge']}", ""),
        ("batches created", str(metrics["batches_created"]), ""),
        ("wall time", f"{metrics['wall_seconds']:.1f} s", ""),
        ("requests/s", f"{metrics['requests_per_second'] or 0:.1f}", ""),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def has_verdicts(metrics: dict[str, Any]) -> bool:
    """Whether the judges gave verdicts: not a pairwise comparison, nor a score judge without
    ``pass_at`` (its verdict rows would all read n/a, or 0% counted conservatively)."""
    score = metrics.get("score")
    return "pairwise" not in metrics and (score is None or score["pass_at"] is not None)


def _verdict_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The summary rows of the judges' verdicts: their accuracy, and against the ground truth
    where a row has one (a task without labels shows none of those rows)."""
    truth: list[tuple[str, str, str]] = [] if metrics["ground_truth_accuracy"] is None else [
        (
            f"ground-truth accuracy (n={metrics['ground_truth_accuracy_n'] or 0})",
            percent(metrics["ground_truth_accuracy"]),
            interval_text(metrics["ground_truth_accuracy_ci95"]),
        ),
        ("judge agrees with truth", percent(metrics["judge_vs_truth_agreement"]), ""),
        ("judge vs truth kappa", kappa_text(metrics["judge_vs_truth_kappa"]), ""),
        (
            f"baseline: always '{metrics['majority_baseline_label']}'",
            percent(metrics["majority_baseline_accuracy"]),
            "",
        ),
    ]
    ppi = (metrics.get("trusted_labels") or {}).get("ppi")
    corrected = [] if ppi is None else [(
        f"accuracy, prediction-powered (n={ppi['n']} labelled + {ppi['unlabelled_n']})", percent(ppi["accuracy"]),
        interval_text(ppi["ci95"]),
    )]
    return [
        *corrected,
        (
            f"judge accuracy (n={metrics['judge_accuracy_n']}: rows with a verdict)",
            percent(metrics["judge_accuracy"]),
            interval_text(metrics["judge_accuracy_ci95"]),
        ),
        (
            f"judge accuracy, no verdict = not correct (n={metrics['judge_accuracy_conservative_n']})",
            percent(metrics["judge_accuracy_conservative"]),
            interval_text(metrics["judge_accuracy_conservative_ci95"]),
        ),
        *truth,
        ("invalid predictions", percent(metrics["invalid_prediction_rate"]), ""),
        (f"no recognised verdict ({metrics['invalid_verdicts']} rows)", percent(metrics["invalid_verdict_rate"]), ""),
    ]


def _kind_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The summary rows of a score or pairwise judge (see ``engine.report.judgements``)."""
    rows: list[tuple[str, str, str]] = []
    score = metrics.get("score")
    if score is not None:
        interval = score["mean_score_ci95"]
        rows.append((f"mean score (n={score['n']}, scale {score['scale'][0]}-{score['scale'][1]})",
                     "n/a" if score["mean_score"] is None else f"{score['mean_score']:.2f}",
                     "" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]"))
        if score["pass_at"] is not None:
            rows.append((f"pass rate, score >= {score['pass_at']} (n={score['pass_rate_n']})", percent(score["pass_rate"]),
                         interval_text(score["pass_rate_ci95"])))
        rows.append((f"no score on the scale ({score['invalid_scores']} rows)", percent(score["invalid_score_rate"]), ""))
    pairwise = metrics.get("pairwise")
    if pairwise is not None:
        rows += [
            (f"B's win rate over A (n={pairwise['n']}; A/tie/B {pairwise['a_wins']}/{pairwise['ties']}/{pairwise['b_wins']})",
             percent(pairwise["b_win_rate"]), interval_text(pairwise["b_win_rate_ci95"])),
            (f"position consistency (n={pairwise['position_consistency_n']})", percent(pairwise["position_consistency"]), ""),
            (f"chose the first position (n={pairwise['first_position_n']})", percent(pairwise["first_position_rate"]), ""),
            (f"no winner named ({metrics['invalid_verdicts']} rows)", percent(metrics["invalid_verdict_rate"]), ""),
        ]
    return rows


TOP_REASONS = 5


def print_summary(metrics: dict[str, Any], run_dir: Path, console: Console | None = None) -> None:
    """The summary table, then what a reader must know to trust it: why rows failed, which
    callers the cost leaves out, and where the answers came from."""
    console = console or Console()
    console.print(summary_table(metrics, run_dir))
    reasons = metrics["failure_reasons"]
    if reasons:
        top = ", ".join(f"{reason} {rows}" for reason, rows in list(reasons.items())[:TOP_REASONS])
        more = f" and {len(reasons) - TOP_REASONS} more reasons" if len(reasons) > TOP_REASONS else ""
        console.print(f"[red]failed rows by reason: {top}{more}[/] (the error column of results.parquet)")
    models = metrics["models"]
    cost = metrics["cost_usd"]
    if cost is not None:
        unpriced = [caller for caller, value in cost.items() if value is None]
        if unpriced:
            named = ", ".join(f"{caller} ({models[caller]['requested']})" for caller in unpriced)
            advice = escape('add [prices."<model>"] to the task')
            console.print(f"[yellow]no price for {escape(named)}: the cost total leaves it out; {advice}[/]")
    served = ", ".join(f"{stage}: {', '.join(info['served']) or info['requested']}" for stage, info in models.items())
    console.print(f"models  {served}")
    for caller, fallback in metrics.get("structured_output", {}).items():
        refused = " and ".join(FORMATS[: FORMATS.index(fallback["format"])])
        console.print(
            f"[yellow]{caller}: the endpoint refused {refused} response formats; its answers were constrained by "
            f"{escape(DESCRIBED[fallback['format']])}[/]"
        )
    backends = {info["backend"] for info in models.values()}
    simulated = any(name.startswith("sim:") for info in models.values() for name in info["served"])
    if "sim" in backends or simulated:
        console.print("[yellow]answers came from the simulator (sim backend): a check of the pipeline, not of a model[/]")
    if "local" in backends:
        console.print(
            "[yellow]answers came from a 135M-parameter model running on this CPU: a check that the whole "
            "pipeline works, not a judge to trust. Point --base-url at a hosted model for real numbers.[/]"
        )
    console.print(f"results {RunDir(run_dir).results_file}")
