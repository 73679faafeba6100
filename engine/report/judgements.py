"""Metrics of the judge kinds beyond a verdict word: rubric scores and repeated judgements.

Pure functions over the polars frame of ``results.parquet``, like ``engine.report.metrics``;
each number carries its ``_n`` and its denominator is said where it is computed.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from .metrics import Z_95, wilson_interval


def score_metrics(results: pl.DataFrame | pl.LazyFrame, scale: tuple[int, int], pass_at: int | None) -> dict[str, Any]:
    """A score judge's numbers. Denominators:

    - ``mean_score`` (with its normal-approximation 95% interval, mean +- 1.96 sd / sqrt(n)),
      ``sd`` and ``median``: judged rows with a recognised score (``n``; a row's score is the mean
      of its judges' and repeats' recognised scores);
    - ``distribution``: every recognised score of every reply (each judge, each repeat), by value
      over the whole scale, zeros included (``distribution_n`` replies);
    - ``pass_rate`` (Wilson interval): rows with a score, passing when the judges' majority
      scored at least ``pass_at`` (None without ``pass_at``);
    - ``invalid_score_rate``: judged rows without a recognised score (``invalid_scores``).
    """
    frame = results.lazy().select(
        pl.col("status").cast(pl.String),
        pl.col("score").cast(pl.Float64),
        pl.col("verdict").cast(pl.Boolean),
        pl.col("scores").cast(pl.List(pl.Float64)),
        pl.col("repeat_scores").cast(pl.List(pl.Float64)),
    ).filter(pl.col("status") == "judged")
    score = pl.col("score")
    totals, replies = pl.collect_all([
        frame.select(
            pl.len().alias("judged"),
            score.count().alias("n"),
            score.mean().alias("mean"),
            score.std().alias("sd"),
            score.median().alias("median"),
            pl.col("verdict").filter(score.is_not_null()).count().alias("pass_n"),
            pl.col("verdict").filter(score.is_not_null()).sum().alias("passed"),
        ),
        frame.select(
            pl.when(pl.col("repeat_scores").list.len() > 0).then(pl.col("repeat_scores")).otherwise(pl.col("scores"))
            .alias("reply")
        ).explode("reply").drop_nulls().group_by("reply").agg(pl.len().alias("replies")),
    ])
    t = totals.row(0, named=True)
    n, mean, sd = t["n"], t["mean"], t["sd"]
    half = Z_95 * sd / math.sqrt(n) if n > 1 and sd is not None else None
    counts = dict(zip(replies["reply"].to_list(), replies["replies"].to_list(), strict=True))
    low, high = scale
    pass_interval = wilson_interval(t["passed"] or 0, t["pass_n"]) if pass_at is not None else None
    return {
        "scale": [low, high],
        "pass_at": pass_at,
        "mean_score": mean,
        "mean_score_ci95": [mean - half, mean + half] if half is not None else None,
        "sd": sd,
        "median": t["median"],
        "n": n,
        "distribution": {str(value): counts.get(float(value), 0) for value in range(low, high + 1)},
        "distribution_n": sum(counts.values()),
        "pass_rate": (t["passed"] or 0) / t["pass_n"] if pass_at is not None and t["pass_n"] else None,
        "pass_rate_ci95": list(pass_interval) if pass_interval else None,
        "pass_rate_n": t["pass_n"] if pass_at is not None else 0,
        "invalid_scores": t["judged"] - n,
        "invalid_score_rate": (t["judged"] - n) / t["judged"] if t["judged"] else None,
    }


def repeat_metrics(results: pl.DataFrame | pl.LazyFrame, judges: int, repeats: int, *, scored: bool) -> dict[str, Any]:
    """How far repeated judgements of one row agree, and how much the headline moves between
    repeats. ``repeat_verdicts`` holds each judge's ``repeats`` verdicts, judge by judge.

    Over the judged rows, per judge and row (``pairs`` of them with a recognised repeat):
    ``mean_agreement`` is the share of its recognised repeats that agree with their majority (a
    tie counts one half); ``unanimous_rate`` the share of those where every repeat was recognised
    and the same; ``ties`` those whose recognised repeats split evenly.

    ``single_repeat_accuracies``: the judge accuracy (the panel's strict majority, rows with a
    verdict) had only repeat r been asked, for each r, with its ``n``; ``accuracy_spread`` is
    their max - min and ``accuracy_sd`` their standard deviation. For score judges the same for
    the mean score (``single_repeat_mean_scores``, ``mean_score_spread``).
    """
    frame = results.lazy().select(
        pl.col("status").cast(pl.String),
        pl.col("repeat_verdicts").cast(pl.List(pl.Boolean)),
        pl.col("repeat_scores").cast(pl.List(pl.Float64)),
    ).filter(pl.col("status") == "judged")

    def vote(judge: int, repeat: int, column: str = "repeat_verdicts") -> pl.Expr:
        return pl.col(column).list.get(judge * repeats + repeat, null_on_oob=True)

    per_judge = []
    for judge in range(judges):
        yes = pl.sum_horizontal(*((vote(judge, r) == True).cast(pl.UInt32) for r in range(repeats)))  # noqa: E712
        no = pl.sum_horizontal(*((vote(judge, r) == False).cast(pl.UInt32) for r in range(repeats)))  # noqa: E712
        per_judge.append(frame.select(
            yes.alias("yes"), no.alias("no")
        ).filter((pl.col("yes") + pl.col("no")) > 0).select(
            pl.len().alias("pairs"),
            (pl.max_horizontal("yes", "no") / (pl.col("yes") + pl.col("no"))).sum().alias("agreement"),
            ((pl.col("yes") == repeats) | (pl.col("no") == repeats)).sum().alias("unanimous"),
            (pl.col("yes") == pl.col("no")).sum().alias("ties"),
        ))
    single = []
    for repeat in range(repeats):
        yes = pl.sum_horizontal(*((vote(j, repeat) == True).cast(pl.UInt32) for j in range(judges)))  # noqa: E712
        no = pl.sum_horizontal(*((vote(j, repeat) == False).cast(pl.UInt32) for j in range(judges)))  # noqa: E712
        decided = yes != no
        columns = [decided.sum().alias("n"), (yes > no).sum().alias("correct")]
        if scored:
            mean = pl.mean_horizontal(*(vote(j, repeat, "repeat_scores") for j in range(judges)))
            columns.append(mean.mean().alias("mean_score"))
        single.append(frame.select(*columns))
    collected = pl.collect_all([*per_judge, *single])
    agreements = [frame.row(0, named=True) for frame in collected[:judges]]
    pairs = sum(a["pairs"] for a in agreements)
    singles = [frame.row(0, named=True) for frame in collected[judges:]]
    accuracies = [s["correct"] / s["n"] if s["n"] else None for s in singles]
    metrics: dict[str, Any] = {
        "repeats": repeats,
        "pairs": pairs,
        "mean_agreement": sum(a["agreement"] or 0.0 for a in agreements) / pairs if pairs else None,
        "unanimous_rate": sum(a["unanimous"] for a in agreements) / pairs if pairs else None,
        "ties": sum(a["ties"] for a in agreements),
        "single_repeat_accuracies": accuracies,
        "single_repeat_n": [s["n"] for s in singles],
        **_spread("accuracy", accuracies),
    }
    if scored:
        means = [s["mean_score"] for s in singles]
        metrics["single_repeat_mean_scores"] = means
        metrics.update(_spread("mean_score", means))
    return metrics


def _spread(name: str, values: list[float | None]) -> dict[str, float | None]:
    known = [value for value in values if value is not None]
    if len(known) < 2:
        return {f"{name}_spread": None, f"{name}_sd": None}
    mean = sum(known) / len(known)
    sd = math.sqrt(sum((value - mean) ** 2 for value in known) / (len(known) - 1))
    return {f"{name}_spread": max(known) - min(known), f"{name}_sd": sd}


def pairwise_metrics(results: pl.DataFrame | pl.LazyFrame, judges: int, *, swap: bool) -> dict[str, Any]:
    """A pairwise comparison of run B's answers against run A's. Denominators:

    - ``a_wins``, ``b_wins``, ``ties`` and ``b_win_rate`` = (B's wins + ties / 2) / ``n``: judged
      rows with a winner (a judge whose choice changed with the order counts a tie; a panel's
      winner is the one most judges named). Its 95% interval is the normal approximation of the
      mean of the per-row points (1, 1/2, 0);
    - ``position_consistency``: per judge and row, the share of pairs judged in both orders
      (``position_consistency_n``, both calls recognised) whose choice did not change with the
      order (None without ``swap``);
    - ``first_position_rate``: of the calls that chose an answer (not a tie), the share that chose
      the one shown first (``first_position_n``); 0.5 is a judge without position bias;
    - ``longer_answer_win_rate``: of the rows with a winner other than a tie whose answers differ in
      length, the share the longer answer won (``longer_answer_n``); ``length_correlation``: the
      Pearson correlation of B's points with B's length minus A's (characters), over ``n``.
    """
    frame = results.lazy().select(
        pl.col("status").cast(pl.String),
        pl.col("winner").cast(pl.String),
        pl.col("winners").cast(pl.List(pl.String)),
        pl.col("prediction").cast(pl.String),
    ).filter(pl.col("status") == "judged")
    pair = pl.col("prediction").str.json_decode(pl.List(pl.String))
    decided = frame.filter(pl.col("winner").is_not_null()).with_columns(
        points=pl.col("winner").replace_strict({"b": 1.0, "tie": 0.5, "a": 0.0}, return_dtype=pl.Float64),
        longer=(pair.list.get(1).str.len_chars().cast(pl.Int64) - pair.list.get(0).str.len_chars().cast(pl.Int64)),
    )
    calls = 2 if swap else 1
    consistency = []
    for judge in range(judges if swap else 0):
        first = pl.col("winners").list.get(calls * judge, null_on_oob=True)
        second = pl.col("winners").list.get(calls * judge + 1, null_on_oob=True)
        both = first.is_not_null() & second.is_not_null()
        consistency.append(frame.select(both.sum().alias("n"), (both & (first == second)).sum().alias("same")))
    positions = frame.select(
        pl.col("winners").list.eval(
            pl.struct(pl.element().alias("winner"), (pl.int_range(pl.len()) % calls).alias("order"))
        ).alias("call")
    ).explode("call").unnest("call").filter(pl.col("winner").is_in(["a", "b"])).select(
        pl.len().alias("n"),
        ((pl.col("order") == 0) == (pl.col("winner") == "a")).sum().alias("first"),
    )
    totals = decided.select(
        pl.len().alias("n"),
        (pl.col("winner") == "a").sum().alias("a_wins"),
        (pl.col("winner") == "b").sum().alias("b_wins"),
        (pl.col("winner") == "tie").sum().alias("ties"),
        pl.col("points").mean().alias("mean"),
        pl.col("points").std().alias("sd"),
        pl.corr("points", "longer").alias("correlation"),
        ((pl.col("winner") != "tie") & (pl.col("longer") != 0)).sum().alias("longer_n"),
        ((pl.col("winner") != "tie") & ((pl.col("longer") > 0) == (pl.col("winner") == "b")) & (pl.col("longer") != 0))
        .sum().alias("longer_won"),
    )
    collected = pl.collect_all([totals, positions, *consistency])
    t, p = collected[0].row(0, named=True), collected[1].row(0, named=True)
    n, mean, sd = t["n"], t["mean"], t["sd"]
    half = Z_95 * sd / math.sqrt(n) if n > 1 and sd is not None else None
    pairs = [frame.row(0, named=True) for frame in collected[2:]]
    consistent_n = sum(c["n"] for c in pairs)
    correlation = t["correlation"]
    return {
        "n": n,
        "a_wins": t["a_wins"],
        "b_wins": t["b_wins"],
        "ties": t["ties"],
        "b_win_rate": mean,
        "b_win_rate_ci95": [max(0.0, mean - half), min(1.0, mean + half)] if half is not None else None,
        "swap": swap,
        "position_consistency": sum(c["same"] for c in pairs) / consistent_n if consistent_n else None,
        "position_consistency_n": consistent_n,
        "first_position_rate": p["first"] / p["n"] if p["n"] else None,
        "first_position_n": p["n"],
        "longer_answer_win_rate": t["longer_won"] / t["longer_n"] if t["longer_n"] else None,
        "longer_answer_n": t["longer_n"],
        "length_correlation": None if correlation is None or math.isnan(correlation) else correlation,
    }


CALIBRATION_BINS = 10


def probability_metrics(results: pl.DataFrame | pl.LazyFrame, *, scored: bool) -> dict[str, Any]:
    """What the judges' token logprobs say (``judge.logprobs``). Denominators:

    - ``mean_probability``: judged rows with a probability (``n``): how sure the judge was of its answer;
    - ``brier_score`` and ``calibration``: rows with both ``p_correct`` and a ground-truth value
      (``brier_n``): the mean squared gap between the judge's probability of "correct" and the
      truth (0 is perfect; always answering 0.5 scores 0.25); the calibration table bins
      ``p_correct`` into ``CALIBRATION_BINS`` equal bins, each with its rows, mean probability and
      observed share correct; ``expected_calibration_error`` weighs each bin's gap by its rows;
    - ``mean_weighted_score`` (score judges; normal-approximation 95% interval): rows with a
      probability-weighted score (``weighted_score_n``).
    """
    frame = results.lazy().select(
        pl.col("status").cast(pl.String),
        pl.col("probability").cast(pl.Float64),
        pl.col("p_correct").cast(pl.Float64),
        pl.col("weighted_score").cast(pl.Float64),
        pl.col("ground_truth_correct").cast(pl.Boolean),
    ).filter(pl.col("status") == "judged")
    truth = pl.col("ground_truth_correct").cast(pl.Float64)
    known = frame.filter(pl.col("p_correct").is_not_null() & pl.col("ground_truth_correct").is_not_null())
    bin_of = (pl.col("p_correct") * CALIBRATION_BINS).floor().clip(0, CALIBRATION_BINS - 1).cast(pl.Int64)
    totals, bins = pl.collect_all([
        frame.select(
            pl.col("probability").count().alias("n"),
            pl.col("probability").mean().alias("mean_probability"),
            pl.col("weighted_score").count().alias("weighted_n"),
            pl.col("weighted_score").mean().alias("weighted_mean"),
            pl.col("weighted_score").std().alias("weighted_sd"),
            ((pl.col("p_correct") - truth) ** 2).filter(pl.col("ground_truth_correct").is_not_null()).mean().alias("brier"),
            (pl.col("p_correct").is_not_null() & pl.col("ground_truth_correct").is_not_null()).sum().alias("brier_n"),
        ),
        known.group_by(bin_of.alias("bin")).agg(
            pl.len().alias("rows"), pl.col("p_correct").mean().alias("predicted"), truth.mean().alias("observed"),
        ).sort("bin"),
    ])
    t = totals.row(0, named=True)
    calibration = [
        {"bin": [row["bin"] / CALIBRATION_BINS, (row["bin"] + 1) / CALIBRATION_BINS], "rows": row["rows"],
         "predicted": row["predicted"], "observed": row["observed"]}
        for row in bins.iter_rows(named=True)
    ]
    brier_n = t["brier_n"]
    metrics: dict[str, Any] = {
        "n": t["n"],
        "mean_probability": t["mean_probability"],
        "brier_score": t["brier"] if brier_n else None,
        "brier_n": brier_n,
        "calibration": calibration,
        "expected_calibration_error": (
            sum(b["rows"] * abs(b["observed"] - b["predicted"]) for b in calibration) / brier_n if brier_n else None
        ),
    }
    if scored:
        n, mean, sd = t["weighted_n"], t["weighted_mean"], t["weighted_sd"]
        half = Z_95 * sd / math.sqrt(n) if n > 1 and sd is not None else None
        metrics.update(
            mean_weighted_score=mean,
            mean_weighted_score_ci95=[mean - half, mean + half] if half is not None else None,
            weighted_score_n=n,
        )
    return metrics


def krippendorff_alpha(ratings: pl.DataFrame | pl.LazyFrame, column: str, *, ordinal: bool) -> tuple[float | None, int]:
    """Krippendorff's alpha of the judges' values in the list column ``column`` (one list per row,
    a value per judge, null where a judge gave none), nominal or ordinal (over the values that
    occur, in order), and the rows it is over (those with two values or more: missing values are
    tolerated, as alpha allows). None when undefined: no such row, or one value only.

    From the coincidence matrix: each row adds, for every ordered pair of its values from two
    different judges, ``1 / (m - 1)`` to the pair's cell (``m``: the row's values); then
    ``alpha = 1 - (n - 1) * sum(o_ck * d_ck) / sum(n_c * n_k * d_ck)`` with ``d`` the squared
    distance (nominal: 0 or 1; ordinal: the values between, counted as Krippendorff does).
    """
    values = (
        ratings.lazy()
        .select(pl.col(column).cast(pl.List(pl.Float64)))
        .with_row_index("row")
        .explode(column)
        .drop_nulls(column)
        .group_by("row", column)
        .agg(pl.len().alias("count"))
    )
    pairable = values.with_columns(pl.col("count").sum().over("row").alias("m")).filter(pl.col("m") >= 2)
    units = pairable.select(pl.col("row").n_unique()).collect().item()
    pairs = (
        pairable.join(pairable, on="row", suffix="_k")
        .with_columns(
            (pl.col("count") * (pl.col("count_k") - (pl.col(column) == pl.col(f"{column}_k")).cast(pl.Int64))
             / (pl.col("m") - 1)).alias("o")
        )
        .group_by(column, f"{column}_k")
        .agg(pl.col("o").sum())
        .collect()
    )
    coincidences = {(c, k): o for c, k, o in pairs.iter_rows()}
    totals: dict[float, float] = {}
    for (c, _), o in coincidences.items():
        totals[c] = totals.get(c, 0.0) + o
    n = sum(totals.values())
    if len(totals) < 2 or n <= 1:
        return None, units
    ordered = sorted(totals)

    def distance(c: float, k: float) -> float:
        if c == k:
            return 0.0
        if not ordinal:
            return 1.0
        low, high = sorted((ordered.index(c), ordered.index(k)))
        return (sum(totals[ordered[g]] for g in range(low, high + 1)) - (totals[c] + totals[k]) / 2) ** 2

    observed = sum(o * distance(c, k) for (c, k), o in coincidences.items())
    expected = sum(totals[c] * totals[k] * distance(c, k) for c in ordered for k in ordered)
    return (None if expected == 0 else 1 - (n - 1) * observed / expected), units
