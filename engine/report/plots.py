"""The report's SVG plots: one function per plot, each writes one small file and returns its path.

Drawn as text with :mod:`.svg` (no plotting library: importing and drawing them costs
milliseconds). Functions take data already shaped by polars; they only draw. Sizes are in pixels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import polars as pl

from .svg import LABEL_SIZE, TICK_SIZE, Axes, LegendEntry, Picture, blues, legend_size, nice_ticks, text_width, tick_labels

STAGE_COLOURS = {"predict": "#4c72b0", "judge": "#dd8452"}
_BLUE, _GREEN, _PURPLE, _RED, _GREY = "#4c72b0", "#55a868", "#8172b2", "#c44e52", "#bbbbbb"
_TOP, _RIGHT = 10.0, 14.0
_UNDER_TICKS = 14 + TICK_SIZE  # room under the axes for the x tick labels
_UNDER_LABEL = _UNDER_TICKS + LABEL_SIZE + 8  # and the x label under them
_GAP = 10.0  # between the axes and a legend beside them


def _left(labels: list[str], *, y_label: bool, size: float = TICK_SIZE) -> float:
    """Room left of the axes for the y tick ``labels``, and the y label beyond them."""
    ticks = max(text_width(label, size) for label in labels) + 12
    return ticks + (LABEL_SIZE + 8 if y_label else 0)


def _y_axis(axes: Axes, ticks: list[float], label: str) -> None:
    texts = tick_labels(ticks)
    axes.y_ticks(ticks, texts)
    axes.y_label(label, _left(texts, y_label=False) + LABEL_SIZE / 2)


def _legend_inside(axes: Axes, entries: list[LegendEntry], corner: Literal["upper left", "upper right"] = "upper right") -> None:
    width, _ = legend_size(entries)
    x = axes.x.start + 6 if corner == "upper left" else axes.x.end - width - 6
    axes.picture.legend(x, axes.y.end + 6, entries)


def _legend_beside(axes: Axes, entries: list[LegendEntry]) -> None:
    """The legend to the right of the axes, where it cannot cover what is drawn (the caller leaves
    :func:`_room_beside` for it)."""
    axes.picture.legend(axes.x.end + _GAP, axes.y.end, entries)


def _room_beside(entries: list[LegendEntry]) -> float:
    return legend_size(entries)[0] + _GAP + 4


def _upper(values: list[float]) -> float:
    """The top of a value axis starting at 0: 5% above the largest value (1 when there is none)."""
    return 1.05 * max(values, default=0.0) or 1.0


def accuracy_plot(
    path: Path, bars: list[tuple[str, float, tuple[float, float] | None]], baseline: tuple[str, float] | None
) -> Path:
    """Bars of accuracies ``(name, value, wilson_ci)`` with error bars and the baseline as a line."""
    picture = Picture(520, 300)
    ticks = nice_ticks(0.0, 1.05)
    left = _left(tick_labels(ticks), y_label=True)
    axes = Axes.inside(picture, (left, _TOP, _RIGHT, _UNDER_TICKS), (-0.5, len(bars) - 0.5), (0.0, 1.05))
    for position, (_, value, ci) in enumerate(bars):
        axes.rect((position - 0.25, position + 0.25), (0.0, value), (_BLUE, _GREEN)[position % 2])
        if ci is not None:  # clamped: at 0% or 100% the interval's end equals the value up to rounding
            centre, low, high = axes.x(position), axes.y(min(ci[0], value)), axes.y(max(ci[1], value))
            picture.line([(centre, low), (centre, high)], "black", width=1.2)
            for end in (low, high):
                picture.line([(centre - 6, end), (centre + 6, end)], "black", width=1.2)
        picture.text(axes.x(position) + 12, axes.y(value) - 9, f"{100 * value:.1f}%")
    if baseline is not None:
        label, value = baseline
        axes.horizontal(value, _RED, dashed=True)
        _legend_inside(axes, [LegendEntry(f"always '{label}': {100 * value:.1f}%", _RED, "dashed")])
    axes.x_ticks(list(range(len(bars))), [name for name, _, _ in bars])
    _y_axis(axes, ticks, "accuracy (95% Wilson CI)")
    axes.frame()
    return picture.save(path)


def confusion_plot(path: Path, confusion: dict[str, int]) -> Path:
    """The judge-vs-truth 2x2 table as a heat map with counts (keys tp, fp, fn, tn)."""
    picture = Picture(480, 280)
    rows = ["judge: correct", "judge: incorrect"]
    axes = Axes.inside(picture, (_left(rows, y_label=False), _TOP, _RIGHT, _UNDER_TICKS), (-0.5, 1.5), (1.5, -0.5))
    cells = [[confusion["tp"], confusion["fp"]], [confusion["fn"], confusion["tn"]]]
    top = max(max(row) for row in cells) or 1
    for i, row in enumerate(cells):
        for j, count in enumerate(row):
            axes.rect((j - 0.5, j + 0.5), (i - 0.5, i + 0.5), blues(count / top))
            picture.text(axes.x(j), axes.y(i), str(count), size=LABEL_SIZE, anchor="middle",
                         colour="white" if count > top / 2 else "black")
    axes.x_ticks([0, 1], ["right by truth", "wrong by truth"])
    axes.y_ticks([0, 1], rows)
    axes.frame()
    return picture.save(path)


def label_plot(path: Path, breakdown: pl.DataFrame) -> Path:
    """Per predicted label: share of predictions, right by truth, judged right (columns of
    ``breakdown``: label, share, truth_rate, judge_rate; a null rate draws no bar)."""
    series = [("share", "share of predictions", _PURPLE), ("truth_rate", "right by truth", _GREEN),
              ("judge_rate", "judge says right", _BLUE)]
    shown = [entry for entry in series if breakdown[entry[0]].null_count() < breakdown.height]
    entries = [LegendEntry(label, colour) for _, label, colour in shown]
    labels = breakdown["label"].to_list()
    picture = Picture(640, 120 + 32 * breakdown.height)
    box = (_left(labels, y_label=False), _TOP, _room_beside(entries), _UNDER_TICKS)
    axes = Axes.inside(picture, box, (0.0, 1.0), (breakdown.height - 0.5, -0.5))  # the first label on top
    height = 0.8 / len(shown)
    for k, (column, _, colour) in enumerate(shown):
        for position, value in enumerate(breakdown[column].to_list()):
            if value is not None:
                top = position - 0.4 + k * height
                axes.rect((0.0, value), (top + height, top), colour)
    axes.x_ticks(axes.x.ticks())
    axes.y_ticks([float(position) for position in range(breakdown.height)], labels)
    _legend_beside(axes, entries)
    axes.frame()
    return picture.save(path)


def _steps_plot(path: Path, series: list[tuple[str, str, list[float], list[float]]], x_label: str, y_label: str) -> Path:
    """Histogram outlines ``(legend label, colour, edges, heights)`` on shared axes from 0 up."""
    picture = Picture(640, 320)
    entries = [LegendEntry(label, colour, "line") for label, colour, _, _ in series]
    high = _upper([height for _, _, _, heights in series for height in heights])
    ticks = nice_ticks(0.0, high)
    low_x = min(edges[0] for _, _, edges, _ in series)
    high_x = max(edges[-1] for _, _, edges, _ in series)
    box = (_left(tick_labels(ticks), y_label=True), _TOP, _room_beside(entries), _UNDER_LABEL)
    axes = Axes.inside(picture, box, (low_x, high_x if high_x > low_x else low_x + 1), (0.0, high))
    for _, colour, edges, heights in series:
        axes.steps(edges, heights, colour)
    axes.x_ticks(axes.x.ticks())
    _y_axis(axes, ticks, y_label)
    axes.x_label(x_label)
    _legend_beside(axes, entries)
    axes.frame()
    return picture.save(path)


def latency_plot(path: Path, edges: list[float], counts: dict[str, list[int]]) -> Path:
    """Histogram of per-request latency (seconds) per stage: shared bin ``edges``, and each
    stage's count per bin."""
    series = [(f"{stage} (n={sum(per_bin)})", STAGE_COLOURS.get(stage, "grey"), edges, [float(c) for c in per_bin])
              for stage, per_bin in counts.items()]
    return _steps_plot(path, series, "latency (s)", "requests")


def throughput_plot(path: Path, rates: pl.DataFrame) -> Path:
    """Completions per second over time per stage (columns stage, start, end, per_second; one
    row per time bin, in seconds since the run's first call)."""
    series = [
        (str(stage), STAGE_COLOURS.get(str(stage), "grey"), [*frame["start"].to_list(), frame["end"][-1]],
         frame["per_second"].to_list())
        for (stage,), frame in rates.sort("start").group_by("stage", maintain_order=True)
    ]
    return _steps_plot(path, series, "time since the first call (s)", "completions / s")


def batch_timeline_plot(path: Path, spans: pl.DataFrame) -> Path:
    """One bar per batch from creation to its end, coloured by stage, hatched unless completed
    (columns stage, chunk, status, start, end; seconds since the first batch was created)."""
    size = 9.0
    stages = {stage.split(".")[0] for stage in spans["stage"].to_list()}
    entries = [LegendEntry(stage, colour) for stage, colour in STAGE_COLOURS.items() if stage in stages]
    if (spans["status"] != "completed").any():
        entries.append(LegendEntry("not completed", "white", "hatched"))
    picture = Picture(640, 120 + 25 * spans.height)
    left, right = _left(spans["chunk"].to_list(), y_label=False, size=size), _room_beside(entries)
    span = max([*spans["end"].to_list(), 1.0])
    rows = [(row, max(row["end"] - row["start"], span / 200)) for row in spans.iter_rows(named=True)]
    # Wide enough that the status written after an unfinished bar stays within the axes.
    width = picture.width - left - right
    high = max([1.05 * span, *(
        (row["start"] + bar) * width / max(width - text_width(f" {row['status']}", size) - 4, 1.0)
        for row, bar in rows if row["status"] != "completed"
    )])
    axes = Axes.inside(picture, (left, _TOP, right, _UNDER_LABEL), (0.0, high), (spans.height - 0.5, -0.5))
    for position, (row, bar) in enumerate(rows):
        completed = row["status"] == "completed"
        axes.rect((row["start"], row["start"] + bar), (position + 0.4, position - 0.4),
                  STAGE_COLOURS.get(row["stage"].split(".")[0], "grey"), hatched=not completed, stroke="black",
                  stroke_width=0.4)
        if not completed:
            picture.text(axes.x(row["start"] + bar), axes.y(position), f" {row['status']}", size=size)
    axes.x_ticks(axes.x.ticks())
    axes.y_ticks([float(position) for position in range(spans.height)], spans["chunk"].to_list(), size=size)
    axes.x_label("time since the first batch was created (s)")
    _legend_beside(axes, entries)
    axes.frame()
    return picture.save(path)


def score_plot(path: Path, distribution: dict[str, int], mean: float | None, pass_at: int | None) -> Path:
    """Bars of how many replies gave each score (keys: the scale's values in order), the mean
    as a line and the pass mark as a dashed one."""
    values = [int(value) for value in distribution]
    entries = ([LegendEntry(f"mean {mean:.2f}", _BLUE, "line")] if mean is not None else []) + (
        [LegendEntry(f"passes at {pass_at}", _RED, "dashed")] if pass_at is not None else [])
    picture = Picture(520, 300)
    high = _upper([float(count) for count in distribution.values()])
    ticks = nice_ticks(0.0, high)
    box = (_left(tick_labels(ticks), y_label=True), _TOP, _room_beside(entries) if entries else _RIGHT, _UNDER_LABEL)
    axes = Axes.inside(picture, box, (min(values) - 0.6, max(values) + 0.6), (0.0, high))
    for value, count in zip(values, distribution.values(), strict=True):
        axes.rect((value - 0.35, value + 0.35), (0.0, count), STAGE_COLOURS["judge"])
    if mean is not None:
        axes.vertical(mean, _BLUE, width=1.5)
    if pass_at is not None:
        axes.vertical(pass_at - 0.5, _RED, dashed=True)
    axes.x_ticks([float(value) for value in values], [str(value) for value in values])
    _y_axis(axes, ticks, "replies")
    axes.x_label("score")
    if entries:
        _legend_beside(axes, entries)
    axes.frame()
    return picture.save(path)


def pairwise_plot(path: Path, a_wins: int, ties: int, b_wins: int, first_position_rate: float | None) -> Path:
    """One bar split into A's wins, ties and B's wins; beside it, how often the judge chose the
    answer shown first (0.5: no position bias)."""
    picture = Picture(640, 240)
    parts = [(a_wins, "A wins", _BLUE), (ties, "ties", _GREY), (b_wins, "B wins", "#dd8452")]
    entries = [LegendEntry(f"{label}: {count}", colour) for count, label, colour in parts]
    legend_width, legend_height = legend_size(entries, columns=3)
    total = float(a_wins + ties + b_wins) or 1.0
    outcome = Axes.inside(picture, (_RIGHT, _TOP + legend_height + 6, 200, _UNDER_LABEL), (0.0, total), (-0.5, 0.5))
    left = 0.0
    for count, _, colour in parts:
        outcome.rect((left, left + count), (-0.4, 0.4), colour)
        left += count
    outcome.x_ticks(outcome.x.ticks())
    outcome.x_label("rows")
    picture.legend((outcome.x.start + outcome.x.end - legend_width) / 2, _TOP, entries, columns=3)
    outcome.frame()
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    position = Axes.inside(picture, (picture.width - 150, _TOP + 20, _RIGHT, _UNDER_TICKS), (-0.6, 0.6), (0.0, 1.0))
    if first_position_rate is not None:
        position.rect((-0.4, 0.4), (0.0, first_position_rate), _PURPLE)
        position.horizontal(0.5, _RED, dashed=True)
    picture.text((position.x.start + position.x.end) / 2, _TOP + 8, "chose the first", size=10, anchor="middle")
    position.x_ticks([0.0], ["first"])
    position.y_ticks(ticks)
    position.frame()
    return picture.save(path)


def calibration_plot(path: Path, bins: list[dict[str, float]]) -> Path:
    """The judge's probability of "correct" against the observed share correct, per bin (a
    point per bin, its area growing with its rows), with the diagonal of a perfectly calibrated judge."""
    picture = Picture(400, 360)
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    axes = Axes.inside(picture, (_left(tick_labels(ticks), y_label=True), _TOP, _RIGHT, _UNDER_LABEL), (0.0, 1.0), (0.0, 1.0))
    picture.line([(axes.x(0.0), axes.y(0.0)), (axes.x(1.0), axes.y(1.0))], _GREY, dashed=True)
    most = max((b["rows"] for b in bins), default=0.0) or 1.0
    for b in bins:
        radius = math.sqrt(12 + 109 * b["rows"] / most)  # 3.5 to 11 pixels
        picture.circle(axes.x(b["predicted"]), axes.y(b["observed"]), radius, _BLUE)
    axes.x_ticks(ticks)
    _y_axis(axes, ticks, "share correct by truth")
    axes.x_label("judge's probability of correct")
    _legend_inside(axes, [LegendEntry("calibrated", _GREY, "dashed"), LegendEntry("bins", _BLUE, "dot")], "upper left")
    axes.frame()
    return picture.save(path)
