"""Accuracy corrected with trusted labels, checked against independent implementations:
``ppi-python`` (the PPI++ authors' package) for the prediction-powered estimate and interval,
the Rogan-Gladen formula written out, and the coverage of the interval by simulation."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from ppi_py import ppi_mean_ci, ppi_mean_pointestimate

from engine.report.trusted import LabelCounts, label_counts, labels_to_halve, ppi_accuracy, rogan_gladen, trusted_metrics


def draw(rng: np.random.Generator, rows: int, labelled: int, accuracy: float, sensitivity: float,
         specificity: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth for every row, the judge's verdicts, and which rows carry a trusted label."""
    truth = rng.random(rows) < accuracy
    says_correct = np.where(truth, rng.random(rows) < sensitivity, rng.random(rows) >= specificity)
    chosen = np.zeros(rows, dtype=bool)
    chosen[rng.choice(rows, size=labelled, replace=False)] = True
    return truth, says_correct, chosen


def counts_of(truth: np.ndarray, judged: np.ndarray, labelled: np.ndarray) -> LabelCounts:
    y, h = truth[labelled], judged[labelled]
    return LabelCounts(int(labelled.sum()), int(y.sum()), int(h.sum()), int((y & h).sum()),
                       int((~labelled).sum()), int(judged[~labelled].sum()))


@pytest.mark.parametrize(("labelled", "sensitivity", "specificity", "seed"),
                         [(50, 0.9, 0.8, 1), (100, 0.7, 0.6, 2), (300, 0.95, 0.9, 3), (30, 0.5, 0.5, 4)])
def test_the_ppi_estimate_and_interval_equal_ppi_pythons(labelled: int, sensitivity: float, specificity: float,
                                                         seed: int) -> None:
    truth, judged, chosen = draw(np.random.default_rng(seed), 1000, labelled, 0.7, sensitivity, specificity)
    y, h, u = (values.astype(float) for values in (truth[chosen], judged[chosen], judged[~chosen]))
    ours = ppi_accuracy(counts_of(truth, judged, chosen))
    assert ours is not None
    assert ours.estimate == pytest.approx(float(np.ravel(ppi_mean_pointestimate(y, h, u))[0]), abs=1e-12)
    low, high = ppi_mean_ci(y, h, u, alpha=0.05)
    assert list(ours.ci95) == pytest.approx([float(np.ravel(low)[0]), float(np.ravel(high)[0])], abs=1e-12)
    for lam in (0.0, 0.5, 1.0):  # a given lam, as ppi-python takes it
        fixed = ppi_accuracy(counts_of(truth, judged, chosen), lam=lam)
        assert fixed is not None
        low, high = ppi_mean_ci(y, h, u, alpha=0.05, lam=lam)
        assert list(fixed.ci95) == pytest.approx([float(np.ravel(low)[0]), float(np.ravel(high)[0])], abs=1e-12)


def test_the_interval_covers_the_true_accuracy_about_95_percent_of_the_time() -> None:
    """2,000 draws of 1,000 rows (true accuracy 0.7; a judge with sensitivity 0.85 and
    specificity 0.75; 100 labelled rows): the share of intervals that cover 0.7."""
    rng = np.random.default_rng(13)
    draws, covered, rg_covered = 2000, 0, 0
    for _ in range(draws):
        counts = counts_of(*draw(rng, 1000, 100, 0.7, 0.85, 0.75))
        ppi = ppi_accuracy(counts)
        assert ppi is not None
        covered += ppi.ci95[0] <= 0.7 <= ppi.ci95[1]
        low, high = rogan_gladen(counts)["corrected_accuracy_ci95"]
        rg_covered += low <= 0.7 <= high
    assert 0.93 <= covered / draws <= 0.96  # measured: 0.9435
    assert 0.93 <= rg_covered / draws <= 0.99  # measured: 0.986 (the delta method is conservative here)


def test_rogan_gladen_equals_its_formula_and_warns_about_a_judge_no_better_than_chance() -> None:
    counts = LabelCounts(n=200, truth=140, judged=130, both=120, unlabelled=800, unlabelled_judged=560)
    r = rogan_gladen(counts)
    sensitivity, specificity, rate = 120 / 140, (200 - 140 - 130 + 120) / 60, (130 + 560) / 1000
    corrected = (rate + specificity - 1) / (sensitivity + specificity - 1)
    assert (r["sensitivity"], r["specificity"], r["judge_rate"]) == pytest.approx((sensitivity, specificity, rate))
    assert r["corrected_accuracy"] == pytest.approx(corrected) and r["warning"] is None
    youden = sensitivity + specificity - 1
    se = math.sqrt((rate * (1 - rate) / 1000 + corrected**2 * sensitivity * (1 - sensitivity) / 140
                    + (1 - corrected) ** 2 * specificity * (1 - specificity) / 60) / youden**2)
    assert r["corrected_accuracy_ci95"] == pytest.approx([corrected - 1.959963984540054 * se,
                                                          corrected + 1.959963984540054 * se])
    chance = rogan_gladen(LabelCounts(n=100, truth=50, judged=50, both=25, unlabelled=100, unlabelled_judged=50))
    assert chance["corrected_accuracy"] is None and "no better than chance" in chance["warning"]


def test_labelling_the_rows_it_names_halves_the_interval() -> None:
    rng = np.random.default_rng(5)
    truth, judged, chosen = draw(rng, 20000, 100, 0.7, 0.9, 0.85)
    counts = counts_of(truth, judged, chosen)
    ppi = ppi_accuracy(counts)
    assert ppi is not None
    more = labels_to_halve(counts, ppi)
    assert more is not None and more > 100
    ppi_then = ppi_accuracy(LabelCounts(counts.n + more, counts.truth, counts.judged, counts.both,
                                        counts.unlabelled - more, counts.unlabelled_judged), lam=ppi.lam)
    # Only the sizes matter for the width (the variances held as they are): recompute it by hand.
    se_then = math.sqrt(ppi.imputed / (counts.unlabelled - more) + ppi.rectifier / (counts.n + more))
    assert se_then <= ppi.se / 2 and ppi_then is not None
    assert math.sqrt(ppi.imputed / (counts.unlabelled - more + 1) + ppi.rectifier / (counts.n + more - 1)) > ppi.se / 2


def test_the_metrics_of_a_frame_with_some_labels() -> None:
    frame = pl.DataFrame({
        "verdict": [True, True, False, True, False, True, None, True],
        "ground_truth_correct": [True, False, False, True, None, None, True, None],
    })
    counts = label_counts(frame)
    assert counts == LabelCounts(n=4, truth=2, judged=3, both=2, unlabelled=3, unlabelled_judged=2)
    m = trusted_metrics(frame)
    assert m is not None and m["labels_only"]["accuracy"] == 0.5 and m["judge_only"]["accuracy"] == 5 / 7
    assert m["ppi"] is not None and m["ppi"]["n"] == 4 and m["ppi"]["unlabelled_n"] == 3
    assert trusted_metrics(frame.with_columns(pl.lit(None, dtype=pl.Boolean).alias("ground_truth_correct"))) is None
