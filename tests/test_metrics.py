"""Quality metrics against values worked out by hand (the arithmetic is in the comments) and
against plain-Python recounts over generated rows."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from engine import Evaluation, load_config
from engine.config import parse_config
from engine.report.metrics import (
    cohen_kappa,
    failure_reasons,
    fleiss_kappa,
    panel_metrics,
    quality_metrics,
    wilson_interval,
)
from engine.shipped import example_config

SCHEMA: dict[str, pl.DataType] = {
    "row_id": pl.String(),
    "status": pl.String(),
    "labels": pl.List(pl.String()),
    "prediction": pl.String(),
    "prediction_valid": pl.Boolean(),
    "verdict": pl.Boolean(),
    "verdict_text": pl.String(),
    "verdicts": pl.List(pl.Boolean()),
    "verdict_texts": pl.List(pl.String()),
    "ground_truth_correct": pl.Boolean(),
    "error": pl.String(),
}
KEYS = {
    "n_rows", "n_predicted", "n_judged", "n_failed", "n_skipped",
    "judge_accuracy", "judge_accuracy_n", "judge_accuracy_ci95",
    "judge_accuracy_conservative", "judge_accuracy_conservative_n", "judge_accuracy_conservative_ci95",
    "ground_truth_accuracy", "ground_truth_accuracy_n", "ground_truth_accuracy_ci95",
    "judge_vs_truth_agreement", "judge_vs_truth_kappa", "judge_precision", "judge_recall",
    "judge_vs_truth_n", "confusion",
    "majority_baseline_label", "majority_baseline_accuracy",
    "invalid_prediction_rate", "invalid_verdicts", "invalid_verdict_rate",
}  # fmt: skip
TRUTH_KEYS = {
    "ground_truth_accuracy", "ground_truth_accuracy_n", "ground_truth_accuracy_ci95",
    "judge_vs_truth_agreement", "judge_vs_truth_kappa", "judge_precision", "judge_recall",
    "judge_vs_truth_n", "confusion",
    "majority_baseline_label", "majority_baseline_accuracy",
}  # fmt: skip
VERDICT_TEXT = {True: "CORRECT", False: "INCORRECT", None: "maybe?"}


def results(
    rows: list[tuple[str, list[str] | None, str | None, bool | None, bool | None, bool | None]],
) -> pl.DataFrame:
    """A single judge's results frame from (status, labels, prediction, prediction_valid, verdict,
    truth) rows: a judged row's verdict None is an unrecognised reply, a judge_failed row's a failed call."""
    return pl.DataFrame(
        [
            {
                "row_id": str(i),
                "status": status,
                "labels": labels,
                "prediction": prediction,
                "prediction_valid": valid,
                "verdict": verdict,
                "verdict_text": VERDICT_TEXT[verdict] if status == "judged" else None,
                "verdicts": [verdict] if status in ("judged", "judge_failed") else [],
                "verdict_texts": [VERDICT_TEXT[verdict] if status == "judged" else None]
                if status in ("judged", "judge_failed") else [],
                "ground_truth_correct": truth,
                "error": {"predict_failed": "http_500: boom", "judge_failed": "timeout: slow"}.get(status),
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
    assert (m["judge_accuracy"], m["judge_accuracy_n"]) == (pytest.approx(3 / 6), 6)
    assert m["judge_accuracy_ci95"] == pytest.approx([0.1876163, 0.8123837])  # wilson(3, 6)
    # conservative, as the seed counts: the unrecognised verdict (row 6) is not correct: 3 of 7 judged
    assert (m["judge_accuracy_conservative"], m["judge_accuracy_conservative_n"]) == (pytest.approx(3 / 7), 7)
    assert m["judge_accuracy_conservative_ci95"] == pytest.approx(list(wilson_interval(3, 7) or ()))

    # ground truth on rows 1-8 (the judge_failed row has a prediction): 1, 2, 5, 6, 8 right -> 5/8
    assert (m["ground_truth_accuracy"], m["ground_truth_accuracy_n"]) == (pytest.approx(5 / 8), 8)
    assert m["ground_truth_accuracy_ci95"] == pytest.approx([0.3057424, 0.8631557])

    # both known on rows 1-5 and 7: TP 2, FP 1, FN 1, TN 2
    assert m["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    assert m["judge_vs_truth_n"] == 6
    assert m["judge_vs_truth_agreement"] == pytest.approx(4 / 6)
    assert m["judge_precision"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert m["judge_recall"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    # p_o = 4/6; judge yes 3/6, truth yes 3/6: p_e = 0.25 + 0.25 = 0.5; (2/3 - 1/2) / (1/2) = 1/3
    assert m["judge_vs_truth_kappa"] == pytest.approx(1 / 3)

    # the baseline on the rows of ground-truth accuracy (1-8, not the failed 9 or the skipped 10):
    # Drama is in rows 1, 2, 4, 6, 8 (Comedy 3, 6; Crime 2, 5; Action 7) -> 5/8
    assert m["majority_baseline_label"] == "Drama"
    assert m["majority_baseline_accuracy"] == pytest.approx(5 / 8)

    # predictions checked against the label set: rows 1-8; invalid: row 7
    assert m["invalid_prediction_rate"] == pytest.approx(1 / 8)
    # judged rows 1-7; no recognised verdict: row 6
    assert (m["invalid_verdicts"], m["invalid_verdict_rate"]) == (1, pytest.approx(1 / 7))


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
            "verdicts": [None, None],
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
    counts = {key for key in m if key.startswith("n_") or key.endswith("_n") or key == "invalid_verdicts"}
    assert all(m[key] == 0 for key in counts - {"ground_truth_accuracy_n", "judge_vs_truth_n"})
    assert all(m[key] is None for key in set(m) - counts)  # ground-truth counts too: no ground truth


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
    # the baseline counts the rows of ground-truth accuracy (1 and 4), never the failed ones: A, 2/2
    assert (m["majority_baseline_label"], m["majority_baseline_accuracy"]) == ("A", 1.0)


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
        # judged rows; the pipeline gives a row ground truth exactly when it has labels
        frame = results([("judged", labels, "A", True, True, None if labels is None else "A" in labels)
                         for labels in label_lists])
        m = quality_metrics(frame)
        return m["majority_baseline_label"], m["majority_baseline_accuracy"]

    # A, B, C each in 2 of 4 rows: the alphabetically first wins, 2/4
    assert baseline([["B", "A"], ["C", "B"], ["A", "C"], ["D"]]) == ("A", 0.5)
    # a label repeated within one row counts once: B in 2 rows of 3, not 3 times
    assert baseline([["B", "B"], ["A"], ["B"]]) == ("B", pytest.approx(2 / 3))
    # rows with no labels are not labelled rows: Z in 1 of 1
    assert baseline([None, None, ["Z"]]) == ("Z", 1.0)


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


# --- against plain-Python recounts ------------------------------------------------------------

STATUSES = ("judged",) * 6 + ("judge_failed", "predict_failed", "skipped")
LABEL_SETS = (None, ["A"], ["B"], ["A", "B"], ["C"], ["B", "C"])


def generated(seed: int, rows: int, judges: int) -> list[dict[str, Any]]:
    """Rows as the pipeline writes them: a judge's call fails (text None), answers unreadably
    (text, verdict None) or gives a verdict; the row's verdict is the strict majority."""
    draw = random.Random(seed)
    out = []
    for i in range(rows):
        status = draw.choice(STATUSES)
        labels = draw.choice(LABEL_SETS)
        prediction = draw.choice("ABC") if status in ("judged", "judge_failed") else None
        texts: list[str | None] = []
        votes: list[bool | None] = []
        if status in ("judged", "judge_failed"):
            for _ in range(judges):
                kind = "failed" if status == "judge_failed" else draw.choice(("failed", "unreadable", "yes", "no", "yes"))
                texts.append(None if kind == "failed" else {"unreadable": "hmm", "yes": "correct", "no": "incorrect"}[kind])
                votes.append({"yes": True, "no": False}.get(kind))
            if status == "judged" and all(text is None for text in texts):
                texts[0], votes[0] = "correct", True  # a judged row has at least one answer
        yes, no = votes.count(True), votes.count(False)
        out.append({
            "row_id": str(i),
            "status": status,
            "labels": labels,
            "prediction": prediction,
            "prediction_valid": None if prediction is None else prediction != "C",
            "verdict": None if yes == no else yes > no,
            "verdict_text": None,
            "verdicts": votes,
            "verdict_texts": texts,
            "ground_truth_correct": None if labels is None or prediction is None else prediction in labels,
            "error": {"predict_failed": draw.choice(["http_500: x", "timeout: y"]),
                      "judge_failed": "; ".join(["connection: z"] * judges)}.get(status),
        })
    return out


def share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@pytest.mark.parametrize(("seed", "judges"), [(1, 1), (2, 1), (3, 3), (4, 2), (5, 4)])
def test_quality_metrics_match_a_recount(seed: int, judges: int) -> None:
    rows = generated(seed, 400, judges)
    m = quality_metrics(pl.DataFrame(rows, schema=SCHEMA))
    judged = [row for row in rows if row["status"] == "judged"]
    with_verdict = [row for row in rows if row["verdict"] is not None]
    correct = sum(row["verdict"] is True for row in rows)
    assert (m["judge_accuracy"], m["judge_accuracy_n"]) == (share(correct, len(with_verdict)), len(with_verdict))
    assert m["judge_accuracy_conservative"] == share(correct, len(judged))
    assert m["judge_accuracy_conservative_n"] == len(judged)
    # a row is invalid when no judge's reply was readable; a tie of readable votes is not
    invalid = [row for row in judged if all(vote is None for vote in row["verdicts"])]
    assert m["invalid_verdicts"] == len(invalid) and m["invalid_verdict_rate"] == share(len(invalid), len(judged))
    assert judges == 1 or any(row["verdict"] is None and row not in invalid for row in judged)  # ties exist
    # ground truth and the baseline on the same rows: those with a ground-truth value
    truth = [row for row in rows if row["ground_truth_correct"] is not None]
    assert m["ground_truth_accuracy_n"] == len(truth)
    assert m["ground_truth_accuracy"] == share(sum(row["ground_truth_correct"] for row in truth), len(truth))
    counts = {label: sum(label in row["labels"] for row in truth) for label in "ABC"}
    best = max(sorted(counts), key=lambda label: counts[label])
    assert m["majority_baseline_label"] == best
    assert m["majority_baseline_accuracy"] == pytest.approx(counts[best] / len(truth))


def test_unlabelled_rows_change_neither_denominator() -> None:
    # the case: labelled rows with rows of no ground truth among them
    labelled = generated(7, 300, 1)
    unlabelled = [{**row, "labels": None, "ground_truth_correct": None, "row_id": f"u{i}"}
                  for i, row in enumerate(generated(8, 100, 1))]
    alone = quality_metrics(pl.DataFrame(labelled, schema=SCHEMA))
    mixed = quality_metrics(pl.DataFrame(labelled + unlabelled, schema=SCHEMA))
    for key in ("ground_truth_accuracy", "ground_truth_accuracy_n", "majority_baseline_label",
                "majority_baseline_accuracy", "judge_vs_truth_n"):
        assert mixed[key] == alone[key], key


@pytest.mark.parametrize(("seed", "judges"), [(11, 3), (12, 2), (13, 4), (14, 5)])
def test_panel_metrics_match_a_recount(seed: int, judges: int) -> None:
    rows = generated(seed, 500, judges)
    names = [f"j{k}" for k in range(judges)]
    panel = panel_metrics(pl.DataFrame(rows, schema=SCHEMA), names)
    reached = [row for row in rows if row["status"] in ("judged", "judge_failed")]
    judged = [row for row in rows if row["status"] == "judged"]
    for k, name in enumerate(names):
        texts = [row["verdict_texts"][k] for row in reached]
        votes = [row["verdicts"][k] for row in reached]
        answered = sum(text is not None for text in texts)
        recognised = [vote for vote in votes if vote is not None]
        unreadable = sum(text is not None and vote is None for text, vote in zip(texts, votes, strict=True))
        assert panel["judges"][name] == {
            "judge_accuracy": share(sum(recognised), len(recognised)),
            "judge_accuracy_n": len(recognised),
            "answered_calls": answered,
            "unrecognised_verdicts": unreadable,
            "unrecognised_verdict_rate": share(unreadable, answered),
            "failed_calls": sum(text is None for text in texts),
        }
    majority = judges // 2 + 1
    tallies = [(row["verdicts"].count(True), row["verdicts"].count(False)) for row in judged]
    assert panel["rows"] == len(judged)
    assert panel["ties"] == sum(yes == no and yes > 0 for yes, no in tallies)
    assert panel["no_recognised_verdict"] == sum(yes == no == 0 for yes, no in tallies)
    assert panel["decided_by_fewer_than_majority"] == sum(yes != no and max(yes, no) < majority for yes, no in tallies)
    complete = [row["verdicts"] for row in judged if None not in row["verdicts"]]
    assert panel["fleiss_kappa_n"] == len(complete)
    assert panel["fleiss_kappa"] == pytest.approx(fleiss_kappa(complete))
    assert panel["unanimous_rate"] == pytest.approx(sum(len(set(votes)) == 1 for votes in complete) / len(complete))
    assert panel["ties"] and panel["decided_by_fewer_than_majority"] and panel["no_recognised_verdict"] is not None


def test_panel_by_hand() -> None:
    # three judges; j2 never gives a readable verdict, j1's call fails once
    frame = pl.DataFrame([
        {"status": "judged", "verdicts": [True, True, None], "verdict_texts": ["correct", "correct", "eh"]},
        {"status": "judged", "verdicts": [True, False, None], "verdict_texts": ["correct", "incorrect", "eh"]},  # tie
        {"status": "judged", "verdicts": [False, None, None], "verdict_texts": ["incorrect", None, "eh"]},  # 1 of 3
        {"status": "judged", "verdicts": [None, None, None], "verdict_texts": ["eh", "eh", "eh"]},  # none readable
        {"status": "judge_failed", "verdicts": [None, None, None], "verdict_texts": [None, None, None]},
        {"status": "predict_failed", "verdicts": [], "verdict_texts": []},
    ], schema={"status": pl.String, "verdicts": pl.List(pl.Boolean), "verdict_texts": pl.List(pl.String)})
    panel = panel_metrics(frame, ["j0", "j1", "j2"])
    assert panel["judges"]["j0"] == {"judge_accuracy": 2 / 3, "judge_accuracy_n": 3, "answered_calls": 4,
                                     "unrecognised_verdicts": 1, "unrecognised_verdict_rate": 1 / 4, "failed_calls": 1}
    assert panel["judges"]["j1"] == {"judge_accuracy": 1 / 2, "judge_accuracy_n": 2, "answered_calls": 3,
                                     "unrecognised_verdicts": 1, "unrecognised_verdict_rate": 1 / 3, "failed_calls": 2}
    assert panel["judges"]["j2"] == {"judge_accuracy": None, "judge_accuracy_n": 0, "answered_calls": 4,
                                     "unrecognised_verdicts": 4, "unrecognised_verdict_rate": 1.0, "failed_calls": 1}
    assert (panel["rows"], panel["ties"], panel["no_recognised_verdict"], panel["decided_by_fewer_than_majority"]) == (4, 1, 1, 1)
    assert panel["fleiss_kappa"] is None and panel["fleiss_kappa_n"] == 0 and panel["unanimous_rate"] is None


def test_failure_reasons_count_the_codes_of_failed_rows() -> None:
    frame = pl.DataFrame({
        "status": ["predict_failed", "predict_failed", "judge_failed", "judged", "skipped", "predict_failed", "judge_failed"],
        "error": ["http_500: boom", "timeout: 60 s", "http_500: x; timeout: y", "timeout: one judge", "empty_input: ...",
                  None, "connection: refused"],
    })
    # most frequent first, then by name; a failed row without an error is 'unknown'
    assert list(failure_reasons(frame).items()) == [("http_500", 2), ("connection", 1), ("timeout", 1), ("unknown", 1)]
    assert failure_reasons(frame.filter(pl.col("status") == "judged")) == {}


async def test_a_run_with_empty_label_cells_counts_only_labelled_rows(tmp_path: Path) -> None:
    """Item 16 end to end: rows whose label cell holds no label are no ground truth in the run."""
    source = pl.read_csv(example_config("imdb").parent / "imdb_top_1000.csv", infer_schema=False).head(40)
    empty = ["", "  ", ",,", " , "]
    genres = [empty[i // 5 % 4] if i % 5 == 0 else genre for i, genre in enumerate(source["Genre"].to_list())]
    source.with_columns(pl.Series("Genre", genres)).select("Overview", "Genre").write_csv(tmp_path / "data.csv")
    data = load_config(example_config("imdb")).model_dump(mode="json")
    data["dataset"] = {"path": "data.csv", "label_column": "Genre"}
    data["local"]["backend"] = "sim"
    async with Evaluation(parse_config(data, source="t.toml", base_dir=tmp_path), run_dir=tmp_path / "run") as run:
        pass
    rows = pl.read_parquet(tmp_path / "run" / "results.parquet").to_dicts()
    assert [row["labels"] is None for row in rows] == [i % 5 == 0 for i in range(40)]
    truth = [row for row in rows if row["labels"] is not None and row["prediction"] is not None]
    assert all(row["ground_truth_correct"] is None for row in rows if row["labels"] is None)
    assert all(row["ground_truth_correct"] == (row["prediction"].strip() in row["labels"]) for row in truth)
    m = run.metrics
    assert m is not None and m["ground_truth_accuracy_n"] == len(truth) == 32
    assert m["ground_truth_accuracy"] == sum(row["ground_truth_correct"] for row in truth) / 32
    counts = Counter(label for row in truth for label in set(row["labels"]))
    assert m["majority_baseline_accuracy"] == max(counts.values()) / 32
