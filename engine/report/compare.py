"""Two runs side by side: their metrics, and paired tests on the rows both runs share.

Rows are matched on ``row_id``. On the shared rows, each yes/no outcome (the judge's verdict,
ground-truth correctness) is compared with McNemar's exact test: under "no difference" the
discordant pairs (right in A only, right in B only) split like fair coin flips, so the two-sided
p-value is a binomial tail. The test only makes sense for runs over the same data set; the
comparison says whether the two task names match.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from ..rundir import FinishedRun, RunDir
from .summary import interval_text, kappa_text, percent

ALPHA = 0.05
_PAIRED = {"judge_accuracy": "verdict", "ground_truth_accuracy": "ground_truth_correct"}
#: The paired bootstrap: resamples of the shared rows, and its seed (the same runs, the same interval).
RESAMPLES = 4000
SEED = 0


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED) -> list[float]:
    """The 95% percentile interval of ``mean(b) - mean(a)`` over paired resamples of the rows
    (each resample draws rows with replacement and keeps both runs' values of each row)."""
    rng = np.random.default_rng(seed)
    differences = b.astype(float) - a.astype(float)
    drawn = rng.integers(0, len(differences), size=(resamples, len(differences)))
    means = differences[drawn].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of ``b`` pairs right in A only and ``c`` right in B only.

    Twice the smaller binomial tail of ``b + c`` fair coin flips, capped at 1 (exactly 1 when
    ``b`` and ``c`` differ by at most one, no pairs included). Summed in log space, so it stays
    finite for any number of pairs.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if abs(b - c) <= 1:
        return 1.0
    n = b + c
    log_terms = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in range(min(b, c) + 1)]
    top = max(log_terms)
    log_tail = top + math.log(sum(math.exp(term - top) for term in log_terms)) - n * math.log(2)
    return min(1.0, 2 * math.exp(log_tail))


def _described(run: FinishedRun) -> dict[str, Any]:
    return {"path": str(run.dir), "run_id": run.run_id, "task": run.config.name, "metrics": run.metrics}


def _paired(shared: pl.DataFrame, column: str) -> dict[str, Any] | None:
    """McNemar on the shared rows where both runs have ``column``; ``None`` when there are none."""
    a, b = pl.col(f"{column}_a"), pl.col(f"{column}_b")
    counts = (
        shared.filter(a.is_not_null() & b.is_not_null())
        .select(n=pl.len(), a_right=a.sum(), b_right=b.sum(), a_only=(a & ~b).sum(), b_only=(~a & b).sum())
        .row(0, named=True)
    )
    n = counts["n"]
    if n == 0:
        return None
    p_value = mcnemar_exact(counts["a_only"], counts["b_only"])
    both = shared.filter(a.is_not_null() & b.is_not_null())
    return {
        "n": n,
        "a": counts["a_right"] / n,
        "b": counts["b_right"] / n,
        "difference": (counts["b_right"] - counts["a_right"]) / n,
        "a_only": counts["a_only"],
        "b_only": counts["b_only"],
        "p_value": p_value,
        "significant": p_value < ALPHA,
        "bootstrap_ci95": paired_bootstrap(both[f"{column}_a"].to_numpy(), both[f"{column}_b"].to_numpy()),
    }


def _paired_scores(shared: pl.DataFrame) -> dict[str, Any] | None:
    """The mean score on the shared rows where both runs have one, and the paired bootstrap
    interval of its difference; None when there are none."""
    both = shared.filter(pl.col("score_a").is_not_null() & pl.col("score_b").is_not_null())
    if both.is_empty():
        return None
    a, b = both["score_a"].to_numpy(), both["score_b"].to_numpy()
    return {"n": both.height, "a": float(a.mean()), "b": float(b.mean()), "difference": float(b.mean() - a.mean()),
            "bootstrap_ci95": paired_bootstrap(a, b)}


def _agreement(shared: pl.DataFrame, column: str) -> float | None:
    both = shared.filter(pl.col(f"{column}_a").is_not_null() & pl.col(f"{column}_b").is_not_null())
    return None if both.is_empty() else both.select((pl.col(f"{column}_a") == pl.col(f"{column}_b")).mean()).item()


def compare_runs(run_a: Path, run_b: Path) -> dict[str, Any]:
    """Compare two run directories (B against A): differences are B minus A.

    ``judge_accuracy`` and ``ground_truth_accuracy`` each hold both runs' values, their
    difference and ``paired``: the McNemar test on the shared rows and a paired bootstrap
    interval of the difference (``None`` when no shared row has the value in both runs); with
    score judges in both, ``mean_score`` the same for the mean score (bootstrap only).
    ``prediction_agreement`` and ``verdict_agreement`` are the share of shared rows where both
    runs have the value and it is the same.
    """
    finished_a, finished_b = RunDir(run_a).load(), RunDir(run_b).load()
    a, b = _described(finished_a), _described(finished_b)
    columns = ["row_id", "prediction", *_PAIRED.values(), "score"]
    shared = _columns(finished_a, columns).join(
        _columns(finished_b, columns), on="row_id", how="inner", suffix="_b"
    ).rename({name: f"{name}_a" for name in columns[1:]}).collect()
    comparison: dict[str, Any] = {
        "a": a,
        "b": b,
        "same_task": a["task"] == b["task"],
        "shared_rows": shared.height,
        "prediction_agreement": _agreement(shared, "prediction"),
        "verdict_agreement": _agreement(shared, "verdict"),
    }
    for key, column in _PAIRED.items():
        value_a, value_b = a["metrics"][key], b["metrics"][key]
        comparison[key] = {
            "a": value_a,
            "b": value_b,
            "difference": None if value_a is None or value_b is None else value_b - value_a,
            "paired": _paired(shared, column),
        }
    if "score" in a["metrics"] and "score" in b["metrics"]:
        comparison["mean_score"] = {"a": a["metrics"]["score"]["mean_score"], "b": b["metrics"]["score"]["mean_score"],
                                    "paired": _paired_scores(shared)}
    return comparison


def _columns(run: FinishedRun, columns: list[str]) -> pl.LazyFrame:
    """``columns`` of the run's results; a column an older run lacks (``score``) is null."""
    present = run.results.collect_schema().names()
    return run.results.select(pl.col(name) if name in present else pl.lit(None, dtype=pl.Float64).alias(name)
                              for name in columns)


def _points(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f} pp"


def _points_interval(bounds: list[float]) -> str:
    return f"[{100 * bounds[0]:+.1f}, {100 * bounds[1]:+.1f}] pp"


def _served(metrics: dict[str, Any], stage: str) -> str:
    """The models that answered for ``stage`` (all judges of a panel), else those requested."""
    callers = [info for caller, info in metrics["models"].items() if caller.split(".")[0] == stage]
    return ", ".join(", ".join(info["served"]) or info["requested"] for info in callers)


def _metric_rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    def rate(key: str, name: str, ci: bool = False) -> tuple[str, str, str, str]:
        """The rate, with its interval and its n where it has them."""
        cells = [
            percent(m[key])
            + (f" {interval_text(m[f'{key}_ci95'])}" if ci and m[key] is not None else "")
            + (f" n={m[f'{key}_n']:,}" if ci and m.get(f"{key}_n") is not None else "")
            for m in (a, b)
        ]
        both = a[key] is not None and b[key] is not None
        return name, cells[0], cells[1], _points(b[key] - a[key]) if both else ""

    def plain(name: str, render: Any) -> tuple[str, str, str, str]:
        return name, render(a), render(b), ""

    return [
        plain("predict model", lambda m: _served(m, "predict")),
        plain("judge model", lambda m: _served(m, "judge")),
        plain("mode (predict / judge)", lambda m: f"{m['mode']['predict']} / {m['mode']['judge']}"),
        plain("rows", lambda m: f"{m['n_rows']:,}"),
        plain("judged / failed", lambda m: f"{m['n_judged']:,} / {m['n_failed']:,}"),
        rate("judge_accuracy", "judge accuracy", ci=True),
        rate("judge_accuracy_conservative", "judge acc. (conservative)", ci=True),
        rate("invalid_verdict_rate", "no recognised verdict"),
        rate("ground_truth_accuracy", "ground-truth accuracy", ci=True),
        rate("judge_vs_truth_agreement", "judge agrees with truth"),
        plain("judge vs truth kappa", lambda m: kappa_text(m["judge_vs_truth_kappa"])),
        rate("majority_baseline_accuracy", "majority baseline"),
        rate("invalid_prediction_rate", "invalid predictions"),
        plain("tokens", lambda m: f"{sum(t['prompt'] + t['completion'] for t in m['tokens'].values()):,}"),
        plain("cost", lambda m: "no price table" if m["cost_usd"] is None else f"${m['cost_usd']['total']:.4f}"),
        plain("wall time", lambda m: f"{m['wall_seconds']:.1f} s"),
        plain("requests/s", lambda m: f"{m['requests_per_second'] or 0:.1f}" if m["requests"] else "n/a (batch)"),
    ]


def comparison_tables(comparison: dict[str, Any]) -> tuple[Table, Table]:
    """The metrics side by side, and the paired tests on the shared rows."""
    a, b = comparison["a"], comparison["b"]
    metrics = Table(title="runs side by side", header_style="bold")
    metrics.add_column("metric")
    for name in (f"A: {a['run_id']}", f"B: {b['run_id']}", "B - A"):
        metrics.add_column(name, justify="right", overflow="fold")
    for row in _metric_rows(a["metrics"], b["metrics"]):
        metrics.add_row(*row)
    paired = Table(title=f"paired on {comparison['shared_rows']:,} shared rows", header_style="bold")
    paired.add_column("")
    tests = [comparison[key]["paired"] for key in _PAIRED]
    for name in ("judge says correct", "right by ground truth"):
        paired.add_column(name, justify="right")
    fields: list[tuple[str, Any]] = [
        ("rows with both values", lambda t: f"{t['n']:,}"),
        ("A", lambda t: percent(t["a"])),
        ("B", lambda t: percent(t["b"])),
        ("B - A", lambda t: _points(t["difference"])),
        ("right in A only", lambda t: str(t["a_only"])),
        ("right in B only", lambda t: str(t["b_only"])),
        ("B - A, 95% CI (paired bootstrap)", lambda t: _points_interval(t["bootstrap_ci95"])),
        ("p (McNemar exact)", lambda t: f"{t['p_value']:.3g}"),
        ("verdict", lambda t: "significant at 5%" if t["significant"] else "not significant"),
    ]
    for name, render in fields:
        paired.add_row(name, *("n/a" if test is None else render(test) for test in tests))
    return metrics, paired


def print_comparison(comparison: dict[str, Any], console: Console | None = None) -> None:
    """Print both tables, the agreement between the runs, and a warning if the tasks differ."""
    console = console or Console()
    for table in comparison_tables(comparison):
        console.print(table)
    console.print(
        f"the runs agree on {percent(comparison['prediction_agreement'])} of shared predictions "
        f"and {percent(comparison['verdict_agreement'])} of shared verdicts"
    )
    scores = comparison.get("mean_score", {}).get("paired")
    if scores is not None:
        low, high = scores["bootstrap_ci95"]
        console.print(f"mean score on {scores['n']:,} shared rows: A {scores['a']:.2f}, B {scores['b']:.2f}, "
                      f"B - A {scores['difference']:+.2f} (95% paired bootstrap [{low:+.2f}, {high:+.2f}])")
    if not comparison["same_task"]:
        console.print(f"[yellow]different tasks ({comparison['a']['task']} vs {comparison['b']['task']}): "
                      "rows are matched on row_id only[/]")
