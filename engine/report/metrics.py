"""Quality metrics of a run: pure functions over the polars frame of ``results.parquet``.

Numbers come from polars queries (counts, the most frequent label, the panel's tallies); nothing
loops over rows in Python. Ratios whose denominator is zero are ``None``, never ``NaN``, so the
result is valid JSON. Each ratio's denominator is said where it is computed and in the README.

A judge's reply is a *verdict* when the verdict parser recognises it, else *unrecognised*; a
call that failed has no reply (its ``verdict_texts`` entry is null). A row's ``verdict`` is the
strict majority of its recognised verdicts (the one judge's, without a panel): None when none
was recognised or, in a panel, on a tie.
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
    "verdicts": pl.List(pl.Boolean()),
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

    Denominators:

    - ``judge_accuracy``: rows with a verdict (``judge_accuracy_n``); a row whose replies were
      all unrecognised, or a panel's tie, is left out;
    - ``judge_accuracy_conservative``: judged rows (``judge_accuracy_conservative_n``); a row
      without a verdict counts as not correct, as the seed notebook counts;
    - ``invalid_verdict_rate``: judged rows; ``invalid_verdicts`` are those where no judge gave a
      recognised verdict (a panel's tie has recognised verdicts: it is not invalid);
    - ``ground_truth_accuracy`` and ``majority_baseline_accuracy``: rows with a ground-truth value
      (``ground_truth_accuracy_n``: a prediction and at least one label), never failed, skipped or
      unlabelled rows; the baseline's label is the one most of those rows carry (ties:
      alphabetically first);
    - ``judge_vs_truth_*``: rows with both a verdict and a ground-truth value;
    - ``invalid_prediction_rate``: predictions checked against a label set.

    Without any row with a ground-truth value every ground-truth key is ``None``.
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
        **_rate("judge_accuracy", t["verdict_true"], t["verdict_n"]),
        **_rate("judge_accuracy_conservative", t["verdict_true"], t["n_judged"]),
        **_against_truth(t),
        "majority_baseline_label": top["label"] if top else None,
        "majority_baseline_accuracy": _ratio(top["rows"], t["truth_n"]) if top else None,
        "invalid_prediction_rate": _ratio(t["invalid_predictions"], t["checked_predictions"]),
        "invalid_verdicts": t["unrecognised_verdicts"],
        "invalid_verdict_rate": _ratio(t["unrecognised_verdicts"], t["n_judged"]),
    }


def failure_reasons(results: pl.DataFrame | pl.LazyFrame) -> dict[str, int]:
    """How many failed rows each reason code has (the ``error`` column starts with it, as in
    ``http_500: ...``; a row failed by several judges counts under its first), most first."""
    code = pl.col("error").str.extract(r"^([^:;\s]+):", 1).fill_null("unknown")
    counts = (
        results.lazy()
        .filter(pl.col("status").is_in(_FAILED))
        .group_by(code.alias("reason"))
        .agg(pl.len().alias("rows"))
        .sort(["rows", "reason"], descending=[True, False])
        .collect()
    )
    return dict(zip(counts["reason"].to_list(), counts["rows"].to_list(), strict=True))


def _rate(name: str, successes: int, n: int) -> dict[str, Any]:
    """A proportion with its denominator and Wilson interval: ``name``, ``name_n``, ``name_ci95``."""
    return {name: _ratio(successes, n), f"{name}_n": n, f"{name}_ci95": _interval(successes, n)}


def _against_truth(t: dict[str, Any]) -> dict[str, Any]:
    """Ground-truth accuracy and the judge's agreement with it; all ``None`` without ground truth."""
    confusion = {key: t[key] for key in ("tp", "fp", "fn", "tn")}
    tp, fp, fn, tn = confusion.values()
    metrics = {
        **_rate("ground_truth_accuracy", t["truth_true"], t["truth_n"]),
        "judge_vs_truth_agreement": _ratio(tp + tn, tp + fp + fn + tn),
        "judge_vs_truth_kappa": _kappa(tp, fp, fn, tn),
        "judge_precision": _ratio(tp, tp + fp),
        "judge_recall": _ratio(tp, tp + fn),
        "judge_vs_truth_n": tp + fp + fn + tn,
        "confusion": confusion,
    }
    return metrics if t["truth_n"] else dict.fromkeys(metrics)


def _recognised() -> pl.Expr:
    """Recognised verdicts of a row, over its judges."""
    return pl.col("verdicts").list.eval(pl.element().is_not_null().cast(pl.UInt32)).list.sum().fill_null(0)


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
        *_confusion_exprs(verdict, truth),
        checked.sum().alias("checked_predictions"),
        (checked & ~pl.col("prediction_valid")).sum().alias("invalid_predictions"),
        (judged & (_recognised() == 0)).sum().alias("unrecognised_verdicts"),
    )


def _majority(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Among the rows with a ground-truth value: the label most of them carry (ties:
    alphabetically first) and how many do."""
    return (
        frame.filter(pl.col("ground_truth_correct").is_not_null())
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
    if not ratings:
        return None
    raters = len(ratings[0])
    yes = [sum(item) for item in ratings]
    pairs = sum(y * (y - 1) + (raters - y) * (raters - y - 1) for y in yes)
    return _fleiss(len(ratings), raters, sum(yes), pairs)


def _fleiss(items: int, raters: int, yes: int, agreeing_pairs: int) -> float | None:
    """Fleiss' kappa from its sums: ``yes`` ratings in all, and ordered pairs of raters that
    agree, summed over items."""
    if items < 2 or raters < 2:
        return None
    share_yes = yes / (items * raters)
    expected = share_yes**2 + (1 - share_yes) ** 2
    if expected == 1:
        return None
    observed = agreeing_pairs / (items * raters * (raters - 1))
    return (observed - expected) / (1 - expected)


def panel_metrics(results: pl.DataFrame | pl.LazyFrame, names: Sequence[str]) -> dict[str, Any]:
    """A panel of judges: each judge on its own, and how the panel decided.

    Per judge, over the rows that reached the judges (judged or judge_failed): ``failed_calls``
    (no reply), ``answered_calls``, ``unrecognised_verdicts`` and their rate over its answered
    calls, and its ``judge_accuracy`` over its recognised verdicts (``judge_accuracy_n``).

    Over the judged rows (``rows``): ``ties`` (recognised votes split evenly, at least one each),
    ``no_recognised_verdict``, ``decided_by_fewer_than_majority`` (a verdict carried by fewer
    votes than a majority of the panel, e.g. 1 recognised vote of 3); Fleiss' kappa and the
    unanimous share over the rows where every judge gave a recognised verdict (``fleiss_kappa_n``).
    """
    panel = len(names)
    frame = results.lazy().select(
        pl.col("status").cast(pl.String),
        pl.col("verdicts").cast(pl.List(pl.Boolean)),
        pl.col("verdict_texts").cast(pl.List(pl.String)),
    )
    reached = frame.filter(pl.col("status").is_in(("judged", "judge_failed")))
    per_judge = []
    for index in range(panel):
        vote = pl.col("verdicts").list.get(index, null_on_oob=True)
        answered = pl.col("verdict_texts").list.get(index, null_on_oob=True).is_not_null()
        per_judge.append(reached.select(
            pl.len().alias("calls"),
            answered.sum().alias("answered_calls"),
            (answered & vote.is_null()).sum().alias("unrecognised_verdicts"),
            vote.is_not_null().sum().alias("judge_accuracy_n"),
            vote.sum().alias("correct"),
        ))
    yes = pl.col("verdicts").list.count_matches(True)
    no = pl.col("verdicts").list.count_matches(False)
    complete = (yes + no) == panel
    tallies = frame.filter(pl.col("status") == "judged").select(
        pl.len().alias("rows"),
        ((yes == no) & (yes > 0)).sum().alias("ties"),
        ((yes + no) == 0).sum().alias("no_recognised_verdict"),
        ((yes != no) & (pl.max_horizontal(yes, no) < panel // 2 + 1)).sum().alias("decided_by_fewer_than_majority"),
        complete.sum().alias("complete"),
        (complete & ((yes == 0) | (no == 0))).sum().alias("unanimous"),
        yes.filter(complete).sum().alias("yes"),
        (yes * (yes - 1) + no * (no - 1)).filter(complete).sum().alias("agreeing_pairs"),
    )
    *judges, totals = pl.collect_all([*per_judge, tallies])
    t = totals.row(0, named=True)
    return {
        "judges": {name: _judge_alone(counts.row(0, named=True)) for name, counts in zip(names, judges, strict=True)},
        "rows": t["rows"],
        "ties": t["ties"],
        "no_recognised_verdict": t["no_recognised_verdict"],
        "decided_by_fewer_than_majority": t["decided_by_fewer_than_majority"],
        "fleiss_kappa": _fleiss(t["complete"], panel, t["yes"] or 0, t["agreeing_pairs"] or 0),
        "fleiss_kappa_n": t["complete"],
        "unanimous_rate": _ratio(t["unanimous"], t["complete"]),
    }


def _judge_alone(counts: dict[str, int]) -> dict[str, Any]:
    answered = counts["answered_calls"]
    return {
        "judge_accuracy": _ratio(counts["correct"], counts["judge_accuracy_n"]),
        "judge_accuracy_n": counts["judge_accuracy_n"],
        "answered_calls": answered,
        "unrecognised_verdicts": counts["unrecognised_verdicts"],
        "unrecognised_verdict_rate": _ratio(counts["unrecognised_verdicts"], answered),
        "failed_calls": counts["calls"] - answered,
    }
