"""Quality metrics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import json
import math
from typing import Any

import polars as pl
import pytest

from engine.metrics import cohen_kappa, quality_metrics, wilson_interval

SCHEMA: dict[str, pl.DataType] = {
    "row_id": pl.String(),
    "status": pl.String(),
    "labels": pl.List(pl.String()),
    "prediction": pl.String(),
    "prediction_valid": pl.Boolean(),
    "verdict": pl.Boolean(),
    "verdict_text": pl.String(),
    "ground_truth_correct": pl.Boolean(),
}
KEYS = {
    "n_rows", "n_predicted", "n_judged", "n_failed", "n_skipped",
    "judge_accuracy", "judge_accuracy_ci95",
    "ground_truth_accuracy", "ground_truth_accuracy_ci95",
    "judge_vs_truth_agreement", "judge_vs_truth_kappa", "judge_precision", "judge_recall",
    "judge_vs_truth_n", "confusion",
    "majority_baseline_label", "majority_baseline_accuracy",
    "invalid_prediction_rate", "invalid_verdict_rate",
}  # fmt: skip
TRUTH_KEYS = {
    "ground_truth_accuracy", "ground_truth_accuracy_ci95",
    "judge_vs_truth_agreement", "judge_vs_truth_kappa", "judge_precision", "judge_recall",
    "judge_vs_truth_n", "confusion",
    "majority_baseline_label", "majority_baseline_accuracy",
}  # fmt: skip


def results(
    rows: list[tuple[str, list[str] | None, str | None, bool | None, bool | None, bool | None]],
) -> pl.DataFrame:
    """A results frame from (status, labels, prediction, prediction_valid, verdict, truth) rows."""
    return pl.DataFrame(
        [
            {
                "row_id": str(i),
                "status": status,
                "labels": labels,
                "prediction": prediction,
                "prediction_valid": valid,
                "verdict": verdict,
                "verdict_text": {True: "CORRECT", False: "INCORRECT", None: None}[verdict],
                "ground_truth_correct": truth,
            }
            for i, (status, labels, prediction, valid, verdict, truth) in enumerate(rows)
        ],
        schema=SCHEMA,
    )


# --- wilson_interval --------------------------------------------------------------------------


def test_wilson_86_of_100() -> None:
    # The closed form written differently:
    # (2np + z^2 -/+ z * sqrt(z^2 + 4np(1-p))) / (2(n + z^2)), with n = 100, np = 86, p = 0.86.
    z = 1.959963984540054
    root = z * math.sqrt(z * z + 4 * 86 * 0.14)
    expected = tuple((172 + z * z + sign * root) / (2 * (100 + z * z)) for sign in (-1, 1))
    interval = wilson_interval(86, 100)
    assert interval == pytest.approx(expected, abs=1e-12)
    assert interval == pytest.approx((0.7786, 0.9147), abs=5e-5)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) is None
    # 0/10: lower bound 0; upper z^2 / (n + z^2) = 3.8415 / 13.8415 = 0.2775
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775328))
    assert wilson_interval(10, 10) == pytest.approx((1 - 0.2775328, 1.0))
    # z = 3 on 5/10: denominator 1 + 9/10 = 1.9; centre (0.5 + 0.45) / 1.9 = 0.5;
    # half width 3 * sqrt(0.025 + 0.0225) / 1.9 = 0.344124
    assert wilson_interval(5, 10, z=3) == pytest.approx((0.155876, 0.844124), abs=1e-6)


@pytest.mark.parametrize(("successes", "n"), [(-1, 5), (6, 5), (0, -1)])
def test_wilson_rejects_impossible_counts(successes: int, n: int) -> None:
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(successes, n)


# --- cohen_kappa ------------------------------------------------------------------------------


def test_kappa_textbook_example() -> None:
    # Two readers, 50 grant proposals (the Wikipedia example): yes/yes 20, yes/no 5, no/yes 10,
    # no/no 15. p_o = 35/50 = 0.7; A says yes 25/50, B 30/50:
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a = [True] * 25 + [False] * 25
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_kappa_takes_series_and_drops_nulls() -> None:
    a = pl.Series("judge", [True, True, False, False, None, True])
    b = pl.Series("truth", [True, False, False, False, True, None])
    # pairs left: (T,T) (T,F) (F,F) (F,F): p_o = 3/4; A yes 2/4, B yes 1/4:
    # p_e = 0.5 * 0.25 + 0.5 * 0.75 = 0.5; kappa = (0.75 - 0.5) / 0.5 = 0.5
    assert cohen_kappa(a, b) == pytest.approx(0.5)
    # perfect disagreement: p_o = 0, p_e = 0.5 -> -1
    assert cohen_kappa([True, False], [False, True]) == pytest.approx(-1.0)


def test_kappa_undefined() -> None:
    assert cohen_kappa([], []) is None
    assert cohen_kappa([None, True], [False, None]) is None  # no pair left
    assert cohen_kappa([True, True], [True, True]) is None  # p_e = 1
    with pytest.raises(ValueError, match="same length"):
        cohen_kappa([True], [True, False])


# --- quality_metrics --------------------------------------------------------------------------

# status, labels, prediction, prediction_valid, verdict, ground_truth_correct
MOVIES = results(
    [
        ("judged", ["Drama"], "Drama", True, True, True),  # TP
        ("judged", ["Drama", "Crime"], "Crime", True, True, True),  # TP: any label counts
        ("judged", ["Comedy"], "Drama", True, True, False),  # FP
        ("judged", ["Drama"], "Comedy", True, False, False),  # TN
        ("judged", ["Crime"], "Crime", True, False, True),  # FN
        ("judged", ["Drama", "Comedy"], "Drama", True, None, True),  # verdict not recognised
        ("judged", ["Action"], "Sci-Fi?", False, False, False),  # TN, invalid prediction
        ("judge_failed", ["Drama"], "Drama", True, None, True),
        ("predict_failed", ["Comedy"], None, None, None, None),
        ("skipped", ["Drama"], None, None, None, None),
    ]
)


def test_quality_metrics_by_hand() -> None:
    m = quality_metrics(MOVIES)
    assert set(m) == KEYS
    assert m["n_rows"] == 10
    assert m["n_predicted"] == 8  # rows 1-8
    assert m["n_judged"] == 7  # rows 1-7
    assert m["n_failed"] == 2  # judge_failed + predict_failed
    assert m["n_skipped"] == 1

    # verdicts on rows 1-5 and 7: 3 correct of 6 (the failed judge call has none)
    assert m["judge_accuracy"] == pytest.approx(3 / 6)
    assert m["judge_accuracy_ci95"] == pytest.approx([0.1876163, 0.8123837])  # wilson(3, 6)

    # ground truth on rows 1-8 (the judge_failed row has a prediction): 1, 2, 5, 6, 8 right -> 5/8
    assert m["ground_truth_accuracy"] == pytest.approx(5 / 8)
    assert m["ground_truth_accuracy_ci95"] == pytest.approx([0.3057424, 0.8631557])

    # both known on rows 1-5 and 7: TP 2, FP 1, FN 1, TN 2
    assert m["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    assert m["judge_vs_truth_n"] == 6
    assert m["judge_vs_truth_agreement"] == pytest.approx(4 / 6)
    assert m["judge_precision"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert m["judge_recall"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    # p_o = 4/6; judge yes 3/6, truth yes 3/6: p_e = 0.25 + 0.25 = 0.5; (2/3 - 1/2) / (1/2) = 1/3
    assert m["judge_vs_truth_kappa"] == pytest.approx(1 / 3)

    # Drama is in rows 1, 2, 4, 6, 8, 10 (Comedy 3, Crime 2, Action 1) of 10 labelled rows
    assert m["majority_baseline_label"] == "Drama"
    assert m["majority_baseline_accuracy"] == pytest.approx(0.6)

    # predictions checked against the label set: rows 1-8; invalid: row 7
    assert m["invalid_prediction_rate"] == pytest.approx(1 / 8)
    # judged rows 1-7; no recognised verdict: row 6
    assert m["invalid_verdict_rate"] == pytest.approx(1 / 7)


def test_lazy_frame_gives_the_same_and_json_serialises() -> None:
    m = quality_metrics(MOVIES.lazy())
    assert m == quality_metrics(MOVIES)
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_without_labels_every_ground_truth_key_is_none() -> None:
    # like ag_news: no labels, no label set, so no validity either
    frame = results(
        [
            ("judged", None, "World", None, True, None),
            ("judged", None, "Sports", None, False, None),
            ("judged", None, "Business", None, True, None),
            ("judge_failed", None, "World", None, None, None),
        ]
    )
    m = quality_metrics(frame)
    assert {key: m[key] for key in TRUTH_KEYS} == dict.fromkeys(TRUTH_KEYS)
    assert m["judge_accuracy"] == pytest.approx(2 / 3)
    assert m["invalid_prediction_rate"] is None
    assert m["invalid_verdict_rate"] == 0.0  # 0 of 3 judged


def test_all_null_columns_without_a_schema() -> None:
    # built from Python with no dtypes: the all-None columns come out as polars' Null type
    frame = pl.DataFrame(
        {
            "row_id": ["a", "b"],
            "status": ["predict_failed", "skipped"],
            "labels": [None, None],
            "prediction": [None, None],
            "prediction_valid": [None, None],
            "verdict": [None, None],
            "verdict_text": [None, None],
            "ground_truth_correct": [None, None],
        }
    )
    m = quality_metrics(frame)
    counts = [m[key] for key in ("n_rows", "n_predicted", "n_judged", "n_failed", "n_skipped")]
    assert counts == [2, 0, 0, 1, 1]
    assert m["judge_accuracy"] is None
    assert m["judge_accuracy_ci95"] is None
    assert m["invalid_verdict_rate"] is None
    assert {key: m[key] for key in TRUTH_KEYS} == dict.fromkeys(TRUTH_KEYS)


def test_empty_frame() -> None:
    m = quality_metrics(pl.DataFrame(schema=SCHEMA))
    assert m["n_rows"] == 0
    assert all(value is None for key, value in m.items() if not key.startswith("n_"))


def test_failed_rows_count_only_where_they_have_data() -> None:
    frame = results(
        [
            ("judged", ["A"], "A", True, True, True),
            ("predict_failed", ["B"], None, None, None, None),
            ("predict_failed", ["B"], None, None, None, None),
            ("judge_failed", ["A"], "B", True, None, False),
        ]
    )
    m = quality_metrics(frame)
    assert m["n_failed"] == 3
    assert m["judge_accuracy"] == 1.0  # only the judged row has a verdict
    assert m["ground_truth_accuracy"] == pytest.approx(1 / 2)  # rows 1 and 4 have a prediction
    assert m["judge_vs_truth_n"] == 1
    assert m["invalid_verdict_rate"] == 0.0  # failed judge calls are not unrecognised verdicts
    # the baseline needs no prediction: B is in 2 of the 4 labelled rows, A too; tie -> A
    assert (m["majority_baseline_label"], m["majority_baseline_accuracy"]) == ("A", 0.5)


def test_multi_label_ground_truth_and_baseline() -> None:
    # the pipeline sets ground_truth_correct when the prediction is any of the row's labels
    frame = results(
        [
            ("judged", ["Drama", "Crime"], "Crime", True, True, True),
            ("judged", ["Crime", "Thriller"], "Drama", True, True, False),
            ("judged", ["Thriller", "Crime", "Drama"], "Thriller", True, True, True),
        ]
    )
    m = quality_metrics(frame)
    assert m["ground_truth_accuracy"] == pytest.approx(2 / 3)
    assert m["confusion"] == {"tp": 2, "fp": 1, "fn": 0, "tn": 0}
    assert m["judge_precision"] == pytest.approx(2 / 3)
    assert m["judge_recall"] == 1.0
    # judge always says yes: p_e = 1 * 2/3 + 0 * 1/3 = 2/3, p_o = 2/3 -> kappa 0
    assert m["judge_vs_truth_kappa"] == pytest.approx(0.0)
    # Crime is in all 3 rows' lists: "always answer Crime" is right every time
    assert (m["majority_baseline_label"], m["majority_baseline_accuracy"]) == ("Crime", 1.0)


def test_majority_baseline_ties_and_duplicates() -> None:
    def baseline(label_lists: list[list[str] | None]) -> tuple[Any, Any]:
        frame = results([("skipped", labels, None, None, None, None) for labels in label_lists])
        m = quality_metrics(frame)
        return m["majority_baseline_label"], m["majority_baseline_accuracy"]

    # A, B, C each in 2 of 4 rows: the alphabetically first wins, 2/4
    assert baseline([["B", "A"], ["C", "B"], ["A", "C"], ["D"]]) == ("A", 0.5)
    # a label repeated within one row counts once: B in 2 rows of 3, not 3 times
    assert baseline([["B", "B"], ["A"], ["B"]]) == ("B", pytest.approx(2 / 3))
    # rows with no labels or an empty list are not labelled rows: Z in 1 of 1
    assert baseline([None, [], ["Z"]]) == ("Z", 1.0)


def test_invalid_rates() -> None:
    frame = results(
        [
            ("judged", ["A"], "A", True, True, True),
            ("judged", ["A"], "maybe A", False, None, False),  # invalid prediction, bad verdict
            ("judged", ["B"], "C", False, None, False),  # invalid prediction, bad verdict
            ("judged", ["B"], "B", None, False, True),  # validity unknown: not counted
            ("judge_failed", ["A"], "A", True, None, True),  # not judged: not a bad verdict
        ]
    )
    m = quality_metrics(frame)
    assert m["invalid_prediction_rate"] == pytest.approx(2 / 4)  # rows 1, 2, 3, 5 checked
    assert m["invalid_verdict_rate"] == pytest.approx(2 / 4)  # rows 1-4 judged, 2 and 3 null
