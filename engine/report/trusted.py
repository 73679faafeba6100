"""Accuracy corrected with trusted labels: prediction-powered inference and the judge's error rates.

The judge gives a verdict on every row; a trusted label (the ground-truth column, filled for some
rows) says on a few of them whether the prediction really is correct. Two estimates of the true
accuracy combine them:

- **PPI++** (Angelopoulos, Duchi and Zrnic 2023): the judge's rate on the unlabelled rows, scaled
  by the power-tuning parameter ``lam``, corrected by the judge's error measured on the labelled
  rows. Unbiased, with a valid interval, narrower than the labels' alone when the judge is any
  good. ``lam`` is chosen as the paper (and ``ppi-python``'s ``ppi_mean_ci``) chooses it, clipped
  to [0, 1]: 0 is the labels alone, 1 plain PPI.
- **Rogan-Gladen**: the judge's rate over every row, corrected by its sensitivity and specificity
  measured on the labelled rows: ``(rate + specificity - 1) / (sensitivity + specificity - 1)``,
  with a delta-method interval that carries the uncertainty of all three. Undefined for a judge no
  better than chance (``sensitivity + specificity <= 1``), which it warns about.

Everything is computed from a few sums (``LabelCounts``), so a million rows cost one polars pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ..config import CalibrationConfig
from ..errors import ConfigError
from .metrics import Z_95, wilson_interval

#: Below this, sensitivity + specificity - 1 leaves the judge's verdicts barely related to the
#: truth: the Rogan-Gladen correction divides by it and explodes.
CHANCE_MARGIN = 0.05


@dataclass(frozen=True, slots=True)
class LabelCounts:
    """The sums both estimates need. Labelled rows: ``n`` of them, ``truth`` correct by their
    trusted label, ``judged`` called correct by the judge, ``both`` both. Unlabelled rows:
    ``unlabelled`` of them, ``unlabelled_judged`` called correct by the judge."""

    n: int
    truth: int
    judged: int
    both: int
    unlabelled: int
    unlabelled_judged: int


def label_counts(results: pl.DataFrame | pl.LazyFrame) -> LabelCounts:
    """The sums over the rows with a verdict (a row the judge gave none is in neither set)."""
    verdict, truth = pl.col("verdict").cast(pl.Boolean), pl.col("ground_truth_correct").cast(pl.Boolean)
    labelled = truth.is_not_null()
    row = results.lazy().filter(verdict.is_not_null()).select(
        labelled.sum().alias("n"),
        truth.fill_null(False).sum().alias("truth"),
        (verdict & labelled).sum().alias("judged"),
        (verdict & truth.fill_null(False)).sum().alias("both"),
        (~labelled).sum().alias("unlabelled"),
        (verdict & ~labelled).sum().alias("unlabelled_judged"),
    ).collect().row(0, named=True)
    return LabelCounts(**{name: int(value or 0) for name, value in row.items()})


@dataclass(frozen=True, slots=True)
class PPIEstimate:
    """A prediction-powered mean: ``estimate`` with its ``ci95``, standard error ``se``, the
    power-tuning ``lam``, and the two parts of its variance (``se**2 = imputed / N + rectifier / n``)."""

    estimate: float
    ci95: tuple[float, float]
    se: float
    lam: float
    imputed: float
    rectifier: float


def ppi_accuracy(counts: LabelCounts, *, lam: float | None = None, z: float = Z_95) -> PPIEstimate | None:
    """PPI++ for the share of correct predictions; None without two labelled rows and one unlabelled.

    With binary truth ``Y`` and verdicts ``H`` (labelled) and ``U`` (unlabelled):
    ``theta = lam * mean(U) + mean(Y - lam * H)``; ``lam`` (unless given) is
    ``cov(Y, H) / ((1 + n/N) * var(H and U together))``, from the PPI (lam = 1) estimate's
    gradients as in the paper; a judge that always says the same has no variance and gets 0.
    """
    n, N = counts.n, counts.unlabelled
    if n < 2 or N < 1:
        return None
    mean_y, mean_h, mean_u = counts.truth / n, counts.judged / n, counts.unlabelled_judged / N
    if lam is None:
        covariance = 2 * (counts.both / n - mean_y * mean_h)  # (1/n) * (g'h + h'g) of the centred gradients
        everyone = n + N
        share = (counts.judged + counts.unlabelled_judged) / everyone
        variance = (counts.judged + counts.unlabelled_judged) * (1 - share) / (everyone - 1)  # np.cov: ddof 1
        lam = 0.0 if variance == 0 else min(1.0, max(0.0, covariance / (2 * (1 + n / N) * variance)))
    estimate = lam * mean_u + mean_y - lam * mean_h
    imputed = lam * lam * mean_u * (1 - mean_u)  # the variance of lam * U (ddof 0, as ppi-python)
    square = (counts.truth - 2 * lam * counts.both + lam * lam * counts.judged) / n
    rectifier = max(0.0, square - (mean_y - lam * mean_h) ** 2)  # the variance of Y - lam * H
    se = math.sqrt(imputed / N + rectifier / n)
    return PPIEstimate(estimate, (estimate - z * se, estimate + z * se), se, lam, imputed, rectifier)


def labels_to_halve(counts: LabelCounts, ppi: PPIEstimate) -> int | None:
    """How many more rows to label (taken from the unlabelled ones) to halve the PPI interval,
    ``lam`` and the two variances as now; None when labelling every remaining row would not (too
    few are left, or the judge's part of the variance is already more than a quarter of it)."""
    target = ppi.se**2 / 4
    n, N = counts.n, counts.unlabelled
    for more in range(N):
        judge_part = ppi.imputed / (N - more)
        if judge_part >= target:
            return None
        if judge_part + ppi.rectifier / (n + more) <= target:
            return more
    return None


def rogan_gladen(counts: LabelCounts, *, z: float = Z_95) -> dict[str, Any]:
    """The judge's sensitivity and specificity on the labelled rows (Wilson intervals), and its
    rate over every row corrected by them, with a delta-method interval (clipped to [0, 1]);
    ``warning`` says when the judge is no better than chance (the correction is then None)."""
    positives, negatives = counts.truth, counts.n - counts.truth
    true_negatives = counts.n - counts.truth - counts.judged + counts.both
    everyone = counts.n + counts.unlabelled
    rate = (counts.judged + counts.unlabelled_judged) / everyone if everyone else None
    sensitivity = counts.both / positives if positives else None
    specificity = true_negatives / negatives if negatives else None
    result: dict[str, Any] = {
        "sensitivity": sensitivity,
        "sensitivity_ci95": _interval(counts.both, positives),
        "sensitivity_n": positives,
        "specificity": specificity,
        "specificity_ci95": _interval(true_negatives, negatives),
        "specificity_n": negatives,
        "judge_rate": rate,
        "judge_rate_n": everyone,
        "corrected_accuracy": None,
        "corrected_accuracy_ci95": None,
        "warning": None,
    }
    if rate is None or sensitivity is None or specificity is None:
        result["warning"] = "the labelled rows need both a correct and an incorrect prediction to measure the judge"
        return result
    youden = sensitivity + specificity - 1
    if youden <= CHANCE_MARGIN:
        result["warning"] = (
            f"the judge is no better than chance on the labelled rows (sensitivity {sensitivity:.2f} + specificity "
            f"{specificity:.2f} - 1 = {youden:.2f}): its verdicts say next to nothing about the truth, and correcting "
            "them is meaningless; trust the labels alone"
        )
        return result
    corrected = (rate + specificity - 1) / youden
    variance = (
        rate * (1 - rate) / everyone
        + corrected**2 * sensitivity * (1 - sensitivity) / positives
        + (1 - corrected) ** 2 * specificity * (1 - specificity) / negatives
    ) / youden**2
    half = z * math.sqrt(variance)
    result["corrected_accuracy"] = min(1.0, max(0.0, corrected))
    result["corrected_accuracy_ci95"] = [max(0.0, corrected - half), min(1.0, corrected + half)]
    return result


def trusted_metrics(results: pl.DataFrame | pl.LazyFrame) -> dict[str, Any] | None:
    """The ``trusted_labels`` section of ``metrics.json``; None without a labelled row with a verdict.

    ``labels_only``: the share correct by the trusted labels, over the ``n`` labelled rows with a
    verdict (Wilson); ``judge_only``: the judge's rate over every row with a verdict; ``ppi``:
    PPI++ over both (None with every row labelled: the labels alone are then the answer), with
    ``width`` and ``labels_to_halve``; ``judge_calibration``: sensitivity, specificity and the
    Rogan-Gladen corrected accuracy.
    """
    counts = label_counts(results)
    if counts.n == 0:
        return None
    everyone = counts.n + counts.unlabelled
    ppi = ppi_accuracy(counts)
    return {
        "labelled_n": counts.n,
        "unlabelled_n": counts.unlabelled,
        "labels_only": {"accuracy": counts.truth / counts.n, "ci95": _interval(counts.truth, counts.n), "n": counts.n},
        "judge_only": {
            "accuracy": (counts.judged + counts.unlabelled_judged) / everyone,
            "ci95": _interval(counts.judged + counts.unlabelled_judged, everyone),
            "n": everyone,
        },
        "ppi": None if ppi is None else {
            "accuracy": ppi.estimate,
            "ci95": list(ppi.ci95),
            "se": ppi.se,
            "lam": ppi.lam,
            "width": ppi.ci95[1] - ppi.ci95[0],
            "labels_to_halve": labels_to_halve(counts, ppi),
            "n": counts.n,
            "unlabelled_n": counts.unlabelled,
        },
        "judge_calibration": rogan_gladen(counts),
    }


_VERDICT_WORDS = {"correct": True, "true": True, "yes": True, "1": True,
                  "incorrect": False, "false": False, "no": False, "0": False}


def with_trusted_labels(results: pl.LazyFrame, calibration: CalibrationConfig) -> pl.LazyFrame:
    """``results`` with ``ground_truth_correct`` from the calibration file where it has the row
    (by id): whether the prediction is one of the row's trusted labels, or the person's verdict
    on it; elsewhere as it was. A cell that is empty or not a verdict word labels nothing."""
    path = calibration.path
    label = calibration.label_column or calibration.verdict_column
    assert label is not None
    try:
        trusted = _scan(path).select(
            pl.col(calibration.id_column).cast(pl.String).alias("row_id"),
            pl.col(label).cast(pl.String).str.strip_chars().alias("trusted"),
        ).collect()
    except (pl.exceptions.ColumnNotFoundError, pl.exceptions.SchemaError) as exc:
        raise ConfigError(
            f"{path}: needs the columns {calibration.id_column!r} and {label!r} (calibration.id_column and "
            f"calibration.{'label' if calibration.label_column else 'verdict'}_column): {_first_line(exc)}"
        ) from None
    except (OSError, pl.exceptions.ComputeError) as exc:
        raise ConfigError(f"{path}: cannot read the calibration file: {_first_line(exc)}") from None
    duplicated = trusted.filter(pl.col("row_id").is_duplicated())
    if duplicated.height:
        raise ConfigError(f"{path}: id {duplicated['row_id'][0]!r} in {calibration.id_column!r} is not unique")
    if calibration.verdict_column:
        truth = pl.col("trusted").str.to_lowercase().replace_strict(_VERDICT_WORDS, default=None, return_dtype=pl.Boolean)
    else:
        accepted = pl.col("trusted").str.split(calibration.label_separator).list.eval(pl.element().str.strip_chars())
        truth = pl.when(pl.col("trusted").fill_null("") == "").then(None).otherwise(
            accepted.list.contains(pl.col("prediction").str.strip_chars())
        )
    return (
        results.join(trusted.lazy(), on="row_id", how="left", maintain_order="left")
        .with_columns(pl.coalesce(truth, pl.col("ground_truth_correct")).alias("ground_truth_correct"))
        .drop("trusted")
    )


def _scan(path: Path) -> pl.LazyFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pl.scan_parquet(path)
    if suffix in (".ndjson", ".jsonl"):
        return pl.scan_ndjson(path)
    return pl.scan_csv(path, infer_schema=False, encoding="utf8")


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _interval(successes: int, n: int) -> list[float] | None:
    interval = wilson_interval(successes, n)
    return None if interval is None else list(interval)
