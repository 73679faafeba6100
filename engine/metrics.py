"""Quality metrics of a run: pure functions over the polars frame of ``results.parquet``.

All numbers come from two polars queries collected together (counts, and the most frequent
label); nothing loops over rows in Python. Ratios whose denominator is zero are ``None``, never
``NaN``, so the result is valid JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import polars as pl

Z_95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal

# The columns of results.parquet read here; casting makes frames built from Python (where an
# all-None column has polars' Null type) work too.
_COLUMNS: dict[str, pl.DataType] = {
    "status": pl.String(),
    "labels": pl.List(pl.String()),
    "prediction": pl.String(),
    "prediction_valid": pl.Boolean(),
    "verdict": pl.Boolean(),
    "ground_truth_correct": pl.Boolean(),
}
_FAILED = ("predict_failed", "judge_failed")


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval of the proportion ``successes / n``; ``None`` when ``n`` is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return None
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # At 0 and n successes the bound is exactly 0 or 1; computed, it is off by rounding.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == n else min(1.0, centre + half_width)
    return low, high


def cohen_kappa(
    a: Sequence[bool | None] | pl.Series, b: Sequence[bool | None] | pl.Series
) -> float | None:
    """Cohen's kappa of two raters' yes/no answers on the same items.

    Pairs with a null on either side are left out. ``None`` when no pair is left or when chance
    agreement is already perfect (both raters gave one and the same answer to everything).
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must have the same length, got {len(a)} and {len(b)}")
    pairs = pl.DataFrame(
        {"a": pl.Series(a, dtype=pl.Boolean), "b": pl.Series(b, dtype=pl.Boolean)}
    ).drop_nulls()
    counts = pairs.select(_confusion_exprs(pl.col("a"), pl.col("b"))).row(0, named=True)
    return _kappa(**counts)


def quality_metrics(results: pl.DataFrame | pl.LazyFrame) -> dict[str, Any]:
    """The quality numbers of ``metrics.json`` from a frame with the columns of ``results.parquet``.

    Keys are described in DESIGN.md. A row counts as labelled when its ``labels`` list is not null
    and not empty; without any labelled row every ground-truth key is ``None``.
    """
    frame = results.lazy().select(pl.col(name).cast(dtype) for name, dtype in _COLUMNS.items())
    totals, majority = pl.collect_all([_totals(frame), _majority(frame)])
    t = totals.row(0, named=True)
    top = majority.row(0, named=True) if majority.height else None
    return {
        "n_rows": t["n_rows"],
        "n_predicted": t["n_predicted"],
        "n_judged": t["n_judged"],
        "n_failed": t["n_failed"],
        "n_skipped": t["n_skipped"],
        "judge_accuracy": _ratio(t["verdict_true"], t["verdict_n"]),
        "judge_accuracy_ci95": _interval(t["verdict_true"], t["verdict_n"]),
        **_against_truth(t),
        "majority_baseline_label": top["label"] if top else None,
        "majority_baseline_accuracy": _ratio(top["rows"], t["n_labelled"]) if top else None,
        "invalid_prediction_rate": _ratio(t["invalid_predictions"], t["checked_predictions"]),
        "invalid_verdict_rate": _ratio(t["unrecognised_verdicts"], t["n_judged"]),
    }


def _against_truth(t: dict[str, Any]) -> dict[str, Any]:
    """Ground-truth accuracy and the judge's agreement with it; all ``None`` without labels."""
    confusion = {key: t[key] for key in ("tp", "fp", "fn", "tn")}
    tp, fp, fn, tn = confusion.values()
    metrics = {
        "ground_truth_accuracy": _ratio(t["truth_true"], t["truth_n"]),
        "ground_truth_accuracy_ci95": _interval(t["truth_true"], t["truth_n"]),
        "judge_vs_truth_agreement": _ratio(tp + tn, tp + fp + fn + tn),
        "judge_vs_truth_kappa": _kappa(tp, fp, fn, tn),
        "judge_precision": _ratio(tp, tp + fp),
        "judge_recall": _ratio(tp, tp + fn),
        "judge_vs_truth_n": tp + fp + fn + tn,
        "confusion": confusion,
    }
    return metrics if t["n_labelled"] else dict.fromkeys(metrics)


def _is_labelled() -> pl.Expr:
    return pl.col("labels").list.len().fill_null(0) > 0


def _totals(frame: pl.LazyFrame) -> pl.LazyFrame:
    status = pl.col("status")
    verdict = pl.col("verdict")
    truth = pl.col("ground_truth_correct")
    judged = status == "judged"
    checked = pl.col("prediction").is_not_null() & pl.col("prediction_valid").is_not_null()
    return frame.select(
        pl.len().alias("n_rows"),
        pl.col("prediction").is_not_null().sum().alias("n_predicted"),
        judged.sum().alias("n_judged"),
        status.is_in(_FAILED).sum().alias("n_failed"),
        (status == "skipped").sum().alias("n_skipped"),
        verdict.is_not_null().sum().alias("verdict_n"),
        verdict.sum().alias("verdict_true"),
        truth.is_not_null().sum().alias("truth_n"),
        truth.sum().alias("truth_true"),
        _is_labelled().sum().alias("n_labelled"),
        *_confusion_exprs(verdict, truth),
        checked.sum().alias("checked_predictions"),
        (checked & ~pl.col("prediction_valid")).sum().alias("invalid_predictions"),
        (judged & verdict.is_null()).sum().alias("unrecognised_verdicts"),
    )


def _majority(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The label found in most rows' label lists (ties: alphabetically first) and that count."""
    return (
        frame.filter(_is_labelled())
        .select(pl.col("labels").list.unique().explode().alias("label"))
        .drop_nulls()
        .group_by("label")
        .agg(pl.len().alias("rows"))
        .sort(["rows", "label"], descending=[True, False])
        .head(1)
    )


def _confusion_exprs(predicted: pl.Expr, actual: pl.Expr) -> list[pl.Expr]:
    """Counts of the 2x2 table; a null on either side counts nowhere."""
    cells = {
        "tp": predicted & actual,
        "fp": predicted & ~actual,
        "fn": ~predicted & actual,
        "tn": ~predicted & ~actual,
    }
    return [cell.fill_null(False).sum().alias(name) for name, cell in cells.items()]


def _kappa(tp: int, fp: int, fn: int, tn: int) -> float | None:
    n = tp + fp + fn + tn
    if n == 0:
        return None
    observed = (tp + tn) / n
    expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _interval(successes: int, n: int) -> list[float] | None:
    interval = wilson_interval(successes, n)
    return list(interval) if interval else None


def fleiss_kappa(ratings: Sequence[Sequence[bool]]) -> float | None:
    """Fleiss' kappa of binary ratings: one inner sequence per item, one rating per rater.

    None when undefined: fewer than two items or raters, or every rating in one category.
    """
    if len(ratings) < 2 or len(ratings[0]) < 2:
        return None
    raters = len(ratings[0])
    yes = [sum(item) for item in ratings]
    share_yes = sum(yes) / (len(ratings) * raters)
    expected = share_yes**2 + (1 - share_yes) ** 2
    if expected == 1:
        return None
    observed = sum(y * (y - 1) + (raters - y) * (raters - y - 1) for y in yes) / (len(ratings) * raters * (raters - 1))
    return (observed - expected) / (1 - expected)


def panel_metrics(results: pl.DataFrame | pl.LazyFrame, names: Sequence[str]) -> dict[str, Any]:
    """A panel of judges: each judge's accuracy, their agreement (Fleiss' kappa over rows where
    every judge gave a recognised verdict) and the ties of the strict majority."""
    frame = (results.lazy() if isinstance(results, pl.DataFrame) else results).filter(pl.col("status") == "judged")
    verdicts = frame.select("verdicts", "verdict").collect()
    per_judge: dict[str, Any] = {}
    for index, name in enumerate(names):
        column = verdicts["verdicts"].list.get(index, null_on_oob=True)
        recognised = column.drop_nulls()
        per_judge[name] = {
            "judge_accuracy": _ratio(int(recognised.sum()), recognised.len()),
            "invalid_verdict_rate": _ratio(column.null_count(), column.len()),
        }
    complete = [row for row in verdicts["verdicts"].to_list() if row and None not in row and len(row) == len(names)]
    votes = verdicts["verdicts"].to_list()
    ties = sum(1 for row in votes if row and sum(v is True for v in row) == sum(v is False for v in row))
    return {
        "judges": per_judge,
        "fleiss_kappa": fleiss_kappa(complete),
        "unanimous_rate": _ratio(sum(1 for row in complete if len(set(row)) == 1), len(complete)),
        "ties": ties,
    }
