"""The report's SVG plots, parsed as XML: each is well formed and has the marks its data implies."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import polars as pl
import pytest

from engine.report import plots
from engine.report.plots import STAGE_COLOURS
from engine.report.svg import Scale, blues, escape, nice_ticks, tick_labels

NS = "{http://www.w3.org/2000/svg}"
SPANS = pl.DataFrame({
    "stage": ["predict", "predict", "judge", "judge"],
    "chunk": ["p-0", "p-1", "j-0", "j-1"],
    "status": ["completed", "expired", "completed", "completed"],
    "start": [0.0, 1.0, 5.0, 6.0],
    "end": [10.0, 30.0, 20.0, 40.0],
})
BREAKDOWN = pl.DataFrame({
    "label": ["Drama", "Crime", "Comedy", "Action"],
    "share": [0.7, 0.15, 0.1, 0.05],
    "truth_rate": [0.98, 1.0, 0.95, 0.9],  # bars that reach across the whole axes
    "judge_rate": [0.99, 0.97, 1.0, 1.0],
})
AWKWARD = "<b>Sci-Fi & \"Fantasy\"</b> 'x'"  # a label from a user's data: markup characters and quotes


def parse(path: Path) -> ElementTree.Element:
    root = ElementTree.parse(path).getroot()
    assert root.tag == f"{NS}svg" and float(root.attrib["width"]) > 0 and float(root.attrib["height"]) > 0
    return root


def legend(root: ElementTree.Element) -> ElementTree.Element:
    (group,) = [element for element in root.iter(f"{NS}g") if element.get("class") == "legend"]
    return group


def texts(element: ElementTree.Element) -> list[str]:
    return [text.text or "" for text in element.iter(f"{NS}text")]


def marks(root: ElementTree.Element, tag: str = "rect") -> list[ElementTree.Element]:
    """The ``tag`` elements drawn outside the legend."""
    inside = {id(element) for group in root.iter(f"{NS}g") if group.get("class") == "legend" for element in group.iter()}
    return [element for element in root.iter(f"{NS}{tag}") if id(element) not in inside]


def filled(elements: list[ElementTree.Element], colour: str) -> list[ElementTree.Element]:
    return [element for element in elements if element.get("fill") == colour]


def right_edge(rect: ElementTree.Element) -> float:
    return float(rect.attrib["x"]) + float(rect.attrib["width"])


def test_the_batch_timeline_has_a_bar_per_batch_and_a_legend_colour_per_stage(tmp_path: Path) -> None:
    root = parse(plots.batch_timeline_plot(tmp_path / "batches.svg", SPANS))
    bars = marks(root)
    assert len(filled(bars, STAGE_COLOURS["predict"])) == 2 and len(filled(bars, STAGE_COLOURS["judge"])) == 2
    assert len(filled(bars, "url(#hatch)")) == 1  # the expired batch is hatched
    assert "p-1" in texts(root) and " expired" in texts(root)
    swatches = {text: rect.get("fill") for text, rect in zip(texts(legend(root)), legend(root).findall(f"{NS}rect")[1:],
                                                                strict=False)}
    assert swatches["predict"] == STAGE_COLOURS["predict"] and swatches["judge"] == STAGE_COLOURS["judge"]
    assert "not completed" in swatches
    frame = float(legend(root).findall(f"{NS}rect")[0].attrib["x"])
    assert all(right_edge(bar) < frame for bar in bars if bar.get("fill") != "white")  # the legend covers no bar


def test_the_label_plot_has_a_bar_per_label_and_series_and_its_legend_covers_none(tmp_path: Path) -> None:
    root = parse(plots.label_plot(tmp_path / "labels.svg", BREAKDOWN))
    bars = marks(root)
    for colour in ("#8172b2", "#55a868", "#4c72b0"):
        assert len(filled(bars, colour)) == BREAKDOWN.height
    assert texts(legend(root)) == ["share of predictions", "right by truth", "judge says right"]
    assert [label for label in texts(root) if label in BREAKDOWN["label"]] == BREAKDOWN["label"].to_list()  # in order
    frame = float(legend(root).findall(f"{NS}rect")[0].attrib["x"])
    assert all(right_edge(bar) < frame for bar in bars if bar.get("fill") != "white")


def test_a_series_without_values_is_left_out_and_a_null_rate_draws_no_bar(tmp_path: Path) -> None:
    breakdown = BREAKDOWN.with_columns(truth_rate=pl.lit(None, pl.Float64), judge_rate=pl.Series([0.5, None, 1.0, 0.2]))
    root = parse(plots.label_plot(tmp_path / "labels.svg", breakdown))
    assert texts(legend(root)) == ["share of predictions", "judge says right"]
    assert not filled(marks(root), "#55a868") and len(filled(marks(root), "#4c72b0")) == 3


def test_labels_from_the_data_are_escaped_and_read_back_unchanged(tmp_path: Path) -> None:
    breakdown = BREAKDOWN.with_columns(label=pl.Series(["Drama", AWKWARD, "bell\x07", "Action"]))
    path = plots.label_plot(tmp_path / "labels.svg", breakdown)
    assert AWKWARD not in path.read_text()
    assert {AWKWARD, "bell"} <= set(texts(parse(path)))  # a character XML cannot hold is dropped
    root = parse(plots.accuracy_plot(tmp_path / "accuracy.svg", [("judge", 0.5, (0.4, 0.6))], (AWKWARD, 0.3)))
    assert texts(legend(root)) == [f"always '{AWKWARD}': 30.0%"]
    root = parse(plots.batch_timeline_plot(tmp_path / "batches.svg", SPANS.with_columns(chunk=pl.lit(AWKWARD))))
    assert texts(root).count(AWKWARD) == SPANS.height


def test_the_confusion_plot_shows_each_count_in_its_cell(tmp_path: Path) -> None:
    root = parse(plots.confusion_plot(tmp_path / "confusion.svg", {"tp": 50, "fp": 7, "fn": 3, "tn": 40}))
    assert {"50", "7", "3", "40", "right by truth", "wrong by truth", "judge: correct", "judge: incorrect"} <= set(texts(root))
    cells = [rect for rect in marks(root) if rect.get("fill", "").startswith("#")]
    assert len(cells) == 4 and len({cell.get("fill") for cell in cells}) == 4
    count_colours = {text.text: text.get("fill", "black") for text in root.iter(f"{NS}text")}
    assert count_colours["50"] == "white" and count_colours["3"] == "black"  # the darkest cells carry white counts


def test_the_accuracy_plot_has_a_bar_a_percentage_and_error_bars_per_measure(tmp_path: Path) -> None:
    bars: list[tuple[str, float, tuple[float, float] | None]] = [("judge", 0.8, (0.7, 0.87)), ("ground truth", 1.0, (0.95, 1.0))]
    root = parse(plots.accuracy_plot(tmp_path / "accuracy.svg", bars, ("Drama", 0.72)))
    assert len(filled(marks(root), "#4c72b0")) == 1 and len(filled(marks(root), "#55a868")) == 1
    assert {"judge", "ground truth", "80.0%", "100.0%", "accuracy (95% Wilson CI)"} <= set(texts(root))
    assert texts(legend(root)) == ["always 'Drama': 72.0%"]
    dashed = [line for line in marks(root, "polyline") if line.get("stroke-dasharray")]
    assert len(dashed) == 1 and dashed[0].get("stroke") == "#c44e52"  # the baseline


def test_the_histograms_draw_one_outline_per_stage(tmp_path: Path) -> None:
    edges = [0.0, 0.1, 0.2, 0.3]
    root = parse(plots.latency_plot(tmp_path / "latency.svg", edges, {"predict": [1, 5, 2], "judge": [0, 3, 3]}))
    outlines = [line for line in marks(root, "polyline") if line.get("stroke") in STAGE_COLOURS.values()]
    assert [len(line.attrib["points"].split()) for line in outlines] == [2 * 3 + 2] * 2
    assert texts(legend(root)) == ["predict (n=8)", "judge (n=6)"]
    rates = pl.DataFrame({"stage": ["predict", "predict", "judge"], "start": [0.0, 1.0, 0.5], "end": [1.0, 2.0, 1.5],
                          "per_second": [3.0, 4.0, 2.0]})
    root = parse(plots.throughput_plot(tmp_path / "throughput.svg", rates))
    assert texts(legend(root)) == ["predict", "judge"]
    assert "completions / s" in texts(root)


def test_the_score_plot_has_a_bar_per_score_and_marks_the_mean_and_the_pass_mark(tmp_path: Path) -> None:
    root = parse(plots.score_plot(tmp_path / "scores.svg", {"1": 2, "2": 0, "3": 9, "4": 4}, 2.87, 3))
    assert len(filled(marks(root), STAGE_COLOURS["judge"])) == 4
    assert {"1", "2", "3", "4"} <= set(texts(root))
    assert texts(legend(root)) == ["mean 2.87", "passes at 3"]
    root = parse(plots.score_plot(tmp_path / "bare.svg", {"1": 2, "2": 1}, None, None))
    assert not any(element.get("class") == "legend" for element in root.iter(f"{NS}g"))


def test_the_pairwise_plot_splits_one_bar_by_outcome(tmp_path: Path) -> None:
    root = parse(plots.pairwise_plot(tmp_path / "pairwise.svg", 30, 10, 60, 0.55))
    widths = [float(filled(marks(root), colour)[0].attrib["width"]) for colour in ("#4c72b0", "#bbbbbb", "#dd8452")]
    assert widths[2] == pytest.approx(2 * widths[0], abs=0.2) and widths[0] == pytest.approx(3 * widths[1], abs=0.2)
    assert texts(legend(root)) == ["A wins: 30", "ties: 10", "B wins: 60"]
    assert len(filled(marks(root), "#8172b2")) == 1 and "chose the first" in texts(root)


def test_the_calibration_plot_has_a_point_per_bin_growing_with_its_rows(tmp_path: Path) -> None:
    bins = [{"predicted": 0.2, "observed": 0.3, "rows": 5.0}, {"predicted": 0.8, "observed": 0.7, "rows": 50.0}]
    root = parse(plots.calibration_plot(tmp_path / "calibration.svg", bins))
    small, large = (float(circle.attrib["r"]) for circle in marks(root, "circle"))
    assert small < large
    assert texts(legend(root)) == ["calibrated", "bins"]


def test_ticks_are_round_numbers_within_the_range() -> None:
    assert nice_ticks(0.0, 1.05) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0.0, 315.0) == [0.0, 100.0, 200.0, 300.0]
    assert tick_labels(nice_ticks(0.003, 0.057)) == ["0.01", "0.02", "0.03", "0.04", "0.05"]
    assert tick_labels([0.0, 2500.0, 5000.0]) == ["0", "2,500", "5,000"]
    assert Scale(50.0, 20_000.0, 0.0, 300.0, log=True).ticks() == [100.0, 1000.0, 10_000.0]
    assert Scale(10.0, 1000.0, 0.0, 300.0, log=True)(100.0) == pytest.approx(150.0)


def test_escape_and_the_colour_map() -> None:
    assert escape("a<b & \"c\" 'd'\x00") == "a&lt;b &amp; &quot;c&quot; &#39;d&#39;"
    assert (blues(0.0), blues(1.0), blues(2.0)) == ("#f7fbff", "#08306b", "#08306b")
