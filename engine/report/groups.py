"""Headline metrics per group of rows (``report.group_by``): the same numbers, with their
intervals and their n, for each value of a data-set column kept in ``results.parquet``."""

from __future__ import annotations

from typing import Any

import polars as pl

from .judgements import score_metrics
from .metrics import quality_metrics
from .trusted import trusted_metrics

#: A column with more values than this is not broken down (an id, free text): the note says so.
MAX_GROUPS = 50
_HEADLINE = ("n_rows", "n_judged", "n_failed", "judge_accuracy", "judge_accuracy_ci95", "judge_accuracy_n",
             "ground_truth_accuracy", "ground_truth_accuracy_ci95", "ground_truth_accuracy_n")


def group_metrics(results: pl.LazyFrame, columns: tuple[str, ...], *, scale: tuple[int, int] | None,
                  pass_at: int | None) -> dict[str, Any]:
    """For each column: its groups (a missing value is the group ``"(none)"``), largest first,
    each with the headline numbers (judge and ground-truth accuracy with their intervals; the
    prediction-powered accuracy where trusted labels exist; the mean score of a score judge)."""
    grouped: dict[str, Any] = {}
    for column in columns:
        value = pl.col("inputs").struct.field(column).fill_null("(none)")
        sizes = results.group_by(value.alias("group")).agg(pl.len().alias("rows")).sort(
            ["rows", "group"], descending=[True, False]).collect()
        if sizes.height > MAX_GROUPS:
            grouped[column] = {"note": f"{sizes.height} values: more than {MAX_GROUPS}, not broken down"}
            continue
        grouped[column] = {
            group: _headline(results.filter(value == group), scale, pass_at) for group in sizes["group"].to_list()
        }
    return grouped


def _headline(rows: pl.LazyFrame, scale: tuple[int, int] | None, pass_at: int | None) -> dict[str, Any]:
    quality = quality_metrics(rows)
    headline = {key: quality[key] for key in _HEADLINE}
    trusted = trusted_metrics(rows)
    ppi = trusted["ppi"] if trusted else None
    headline.update(ppi_accuracy=ppi["accuracy"] if ppi else None, ppi_accuracy_ci95=ppi["ci95"] if ppi else None,
                    ppi_accuracy_n=ppi["n"] if ppi else 0)
    if scale is not None:
        score = score_metrics(rows, scale, pass_at)
        headline.update(mean_score=score["mean_score"], mean_score_ci95=score["mean_score_ci95"], mean_score_n=score["n"])
    return headline
