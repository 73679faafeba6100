"""compare_runs: McNemar's exact test against hand-computed values, and real runs side by side."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from engine import load_config, with_overrides
from engine.report.compare import compare_runs, mcnemar_exact, print_comparison
from engine.report.summary import interval_text, percent
from engine.shipped import example_config
from tests.test_report import run_evaluation

ROWS = 60


def exact_two_sided(b: int, c: int) -> float:
    """The definition, in exact rational arithmetic."""
    n = b + c
    tail = Fraction(sum(math.comb(n, k) for k in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def test_mcnemar_hand_computed() -> None:
    # 12 discordant pairs split 10/2: 2 * (C(12,0) + C(12,1) + C(12,2)) / 2**12 = 2 * 79 / 4096
    assert math.isclose(mcnemar_exact(10, 2), 158 / 4096, rel_tol=1e-12)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert math.isclose(mcnemar_exact(5, 0), 2 / 32, rel_tol=1e-12)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(7, 7) == 1.0
    assert mcnemar_exact(6, 5) == 1.0  # 2 * P(X <= 5) > 1 is capped


@pytest.mark.parametrize(("b", "c"), [(1, 9), (30, 12), (1000, 900), (3000, 2)])
def test_mcnemar_matches_the_exact_sum(b: int, c: int) -> None:
    expected = exact_two_sided(b, c)
    assert math.isclose(mcnemar_exact(b, c), expected, rel_tol=1e-9, abs_tol=1e-300)


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        mcnemar_exact(-1, 3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    imdb = with_overrides(load_config(example_config("imdb")), {"dataset.limit": ROWS, "local.backend": "sim"})
    batch = with_overrides(imdb, {"predict.mode": "batch", "judge.mode": "batch", "batch.poll_initial_s": 0.05})
    return {
        "seed0": run_evaluation(imdb, root / "seed0"),
        "seed2": run_evaluation(with_overrides(imdb, {"local.seed": 2}), root / "seed2"),
        "batch": run_evaluation(batch, root / "batch"),
    }


def test_two_sim_seeds(runs: dict[str, Path]) -> None:
    comparison = compare_runs(runs["seed0"], runs["seed2"])
    assert comparison["same_task"] and comparison["shared_rows"] == ROWS
    assert comparison["prediction_agreement"] < 1
    for key in ("judge_accuracy", "ground_truth_accuracy"):
        entry: dict[str, Any] = comparison[key]
        test = entry["paired"]
        assert test["n"] == ROWS  # every row judged and labelled in both runs
        assert entry["a"] == comparison["a"]["metrics"][key] and entry["b"] == comparison["b"]["metrics"][key]
        assert math.isclose(entry["difference"], test["difference"], abs_tol=1e-12)
        assert math.isclose(test["b"] - test["a"], (test["b_only"] - test["a_only"]) / ROWS, abs_tol=1e-12)
        assert test["p_value"] == mcnemar_exact(test["a_only"], test["b_only"])
        assert test["significant"] == (test["p_value"] < 0.05)
    assert comparison["judge_accuracy"]["paired"]["a_only"] + comparison["judge_accuracy"]["paired"]["b_only"] > 0


def test_batch_against_realtime_is_no_difference(runs: dict[str, Path]) -> None:
    comparison = compare_runs(runs["seed0"], runs["batch"])
    assert comparison["shared_rows"] == ROWS
    assert comparison["prediction_agreement"] == 1.0 and comparison["verdict_agreement"] == 1.0
    for key in ("judge_accuracy", "ground_truth_accuracy"):
        assert comparison[key]["difference"] == 0
        test = comparison[key]["paired"]
        assert (test["a_only"], test["b_only"], test["p_value"], test["significant"]) == (0, 0, 1.0, False)
    assert comparison["a"]["metrics"]["mode"]["predict"] == "realtime"
    assert comparison["b"]["metrics"]["mode"]["predict"] == "batch"


def test_comparison_prints_both_runs(runs: dict[str, Path]) -> None:
    console = Console(record=True, width=100)
    print_comparison(compare_runs(runs["seed0"], runs["batch"]), console)
    text = console.export_text()
    for expected in ("A: seed0", "B: batch", "realtime / realtime", "batch / batch", "not significant",
                     "paired on 60 shared rows", "agree on 100.0% of shared predictions"):
        assert expected in text
    metrics = compare_runs(runs["seed0"], runs["batch"])["a"]["metrics"]
    for key in ("judge_accuracy", "judge_accuracy_conservative"):  # both rates, each with its n
        assert f"{percent(metrics[key])} {interval_text(metrics[key + '_ci95'])} n={metrics[key + '_n']}" in text
    assert "judge acc. (conservative)" in text and "no recognised verdict" in text
    assert "different tasks" not in text


def test_the_paired_bootstrap_interval_matches_a_plain_resampling() -> None:
    """The engine's interval against resampling written out with the standard library."""
    import random

    import numpy as np

    from engine.report.compare import paired_bootstrap

    a = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1] * 10, dtype=float)
    b = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1] * 10, dtype=float)
    low, high = paired_bootstrap(a, b, resamples=4000, seed=0)
    assert low < float(b.mean() - a.mean()) < high
    # The same law computed independently: its interval agrees within the bootstrap's own noise.
    rng = random.Random(1)
    differences = list(b - a)
    means = sorted(sum(rng.choice(differences) for _ in differences) / len(differences) for _ in range(4000))
    assert low == pytest.approx(means[100], abs=0.02) and high == pytest.approx(means[3899], abs=0.02)
    assert paired_bootstrap(a, b, resamples=4000, seed=0) == [low, high]  # seeded: the same runs, the same interval
