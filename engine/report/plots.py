"""The report's PNG plots: one function per plot, each writes one small file and returns its path.

Figures are drawn with matplotlib's object API on an Agg canvas (``Figure`` plus
``FigureCanvasAgg``, never pyplot), so no display is needed, no global backend is switched in
the caller's process, and drawing is safe off the main thread. Functions take data already
shaped by polars; they only draw.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

STAGE_COLOURS = {"predict": "#4c72b0", "judge": "#dd8452"}
_DPI = 100


def _figure(width: float = 6.4, height: float = 3.2) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _legend_beside(axes: Axes, handles: list[Patch] | None = None) -> None:
    """The legend to the right of the axes, where it cannot cover what is drawn (the constrained
    layout makes room for it)."""
    axes.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=_DPI)
    return path


def accuracy_figure(
    bars: list[tuple[str, float, tuple[float, float] | None]], baseline: tuple[str, float] | None
) -> Figure:
    """Bars of accuracies ``(name, value, wilson_ci)`` with error bars and the baseline as a line."""
    figure, axes = _figure(5.2, 3.0)
    names = [name for name, _, _ in bars]
    values = [value for _, value, _ in bars]
    # Clamped: at 0% or 100% the interval's end equals the value up to rounding.
    low = [max(0.0, value - ci[0]) if ci else 0.0 for _, value, ci in bars]
    high = [max(0.0, ci[1] - value) if ci else 0.0 for _, value, ci in bars]
    axes.bar(names, values, yerr=[low, high], capsize=6, color=["#4c72b0", "#55a868"][: len(bars)], width=0.5)
    for position, value in enumerate(values):
        axes.annotate(f"{100 * value:.1f}%", (position, value), xytext=(12, 3), textcoords="offset points")
    if baseline is not None:
        label, value = baseline
        axes.axhline(value, color="#c44e52", linestyle="--", linewidth=1.2, label=f"always '{label}': {100 * value:.1f}%")
        axes.legend(loc="upper right", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("accuracy (95% Wilson CI)")
    return figure


def accuracy_plot(
    path: Path, bars: list[tuple[str, float, tuple[float, float] | None]], baseline: tuple[str, float] | None
) -> Path:
    return _save(accuracy_figure(bars, baseline), path)


def confusion_figure(confusion: dict[str, int]) -> Figure:
    """The judge-vs-truth 2x2 table as a heat map with counts (keys tp, fp, fn, tn)."""
    figure, axes = _figure(4.8, 2.8)
    cells = [[confusion["tp"], confusion["fp"]], [confusion["fn"], confusion["tn"]]]
    axes.imshow(cells, cmap="Blues", vmin=0, aspect="auto")
    top = max(max(row) for row in cells) or 1
    for i, row in enumerate(cells):
        for j, count in enumerate(row):
            axes.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
    axes.set_xticks([0, 1], ["right by truth", "wrong by truth"])
    axes.set_yticks([0, 1], ["judge: correct", "judge: incorrect"])
    return figure


def confusion_plot(path: Path, confusion: dict[str, int]) -> Path:
    return _save(confusion_figure(confusion), path)


def label_figure(breakdown: pl.DataFrame) -> Figure:
    """Per predicted label: share of predictions, right by truth, judged right (columns of
    ``breakdown``: label, share, truth_rate, judge_rate; a null rate draws no bar)."""
    figure, axes = _figure(6.4, 1.2 + 0.32 * breakdown.height)
    series = [("share", "share of predictions", "#8172b2"), ("truth_rate", "right by truth", "#55a868"),
              ("judge_rate", "judge says right", "#4c72b0")]
    shown = [entry for entry in series if breakdown[entry[0]].null_count() < breakdown.height]
    height = 0.8 / len(shown)
    positions = list(range(breakdown.height))
    for k, (column, label, colour) in enumerate(shown):
        values = breakdown[column].fill_null(0.0).to_list()
        axes.barh([p + k * height for p in positions], values, height=height, label=label, color=colour)
    axes.set_yticks([p + height * (len(shown) - 1) / 2 for p in positions], breakdown["label"].to_list())
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    _legend_beside(axes)
    return figure


def label_plot(path: Path, breakdown: pl.DataFrame) -> Path:
    return _save(label_figure(breakdown), path)


def latency_figure(edges: list[float], counts: dict[str, list[int]]) -> Figure:
    """Histogram of per-request latency (seconds) per stage: shared bin ``edges``, and each
    stage's count per bin."""
    figure, axes = _figure()
    for stage, per_bin in counts.items():
        axes.stairs(per_bin, edges, linewidth=1.5, label=f"{stage} (n={sum(per_bin)})", color=STAGE_COLOURS.get(stage))
    axes.set_xlabel("latency (s)")
    axes.set_ylabel("requests")
    axes.legend(fontsize=8)
    return figure


def latency_plot(path: Path, edges: list[float], counts: dict[str, list[int]]) -> Path:
    return _save(latency_figure(edges, counts), path)


def throughput_figure(rates: pl.DataFrame) -> Figure:
    """Completions per second over time per stage (columns stage, start, end, per_second; one
    row per time bin, in seconds since the run's first call)."""
    figure, axes = _figure()
    for (stage,), frame in rates.sort("start").group_by("stage", maintain_order=True):
        edges = [*frame["start"].to_list(), frame["end"][-1]]
        axes.stairs(frame["per_second"].to_list(), edges, label=str(stage), color=STAGE_COLOURS.get(str(stage)), linewidth=1.5)
    axes.set_xlabel("time since the first call (s)")
    axes.set_ylabel("completions / s")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8)
    return figure


def throughput_plot(path: Path, rates: pl.DataFrame) -> Path:
    return _save(throughput_figure(rates), path)


def batch_timeline_figure(spans: pl.DataFrame) -> Figure:
    """One bar per batch from creation to its end, coloured by stage, hatched unless completed
    (columns stage, chunk, status, start, end; seconds since the first batch was created)."""
    figure, axes = _figure(6.4, 1.2 + 0.25 * spans.height)
    span = max([*spans["end"].to_list(), 1.0])
    for position, row in enumerate(spans.iter_rows(named=True)):
        width = max(row["end"] - row["start"], span / 200)
        axes.barh(position, width, left=row["start"], color=STAGE_COLOURS.get(row["stage"].split(".")[0], "grey"),
                  hatch=None if row["status"] == "completed" else "//", edgecolor="black", linewidth=0.4)
        if row["status"] != "completed":
            axes.text(row["start"] + width, position, f" {row['status']}", va="center", fontsize=7)
    axes.set_yticks(range(spans.height), spans["chunk"].to_list(), fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("time since the first batch was created (s)")
    # Swatches drawn as patches: an empty bar container has no patch to take a colour from.
    stages = [stage for stage in STAGE_COLOURS if stage in spans["stage"]]
    handles = [Patch(facecolor=STAGE_COLOURS[stage], edgecolor="black", linewidth=0.4, label=stage) for stage in stages]
    if (spans["status"] != "completed").any():
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=0.4, hatch="//", label="not completed"))
    _legend_beside(axes, handles)
    return figure


def batch_timeline_plot(path: Path, spans: pl.DataFrame) -> Path:
    return _save(batch_timeline_figure(spans), path)


def score_figure(distribution: dict[str, int], mean: float | None, pass_at: int | None) -> Figure:
    """Bars of how many replies gave each score (keys: the scale's values in order), the mean
    as a line and the pass mark as a dashed one."""
    figure, axes = _figure(5.2, 3.0)
    values = [int(value) for value in distribution]
    axes.bar(values, list(distribution.values()), color=STAGE_COLOURS["judge"], width=0.7)
    if mean is not None:
        axes.axvline(mean, color="#4c72b0", linewidth=1.5, label=f"mean {mean:.2f}")
    if pass_at is not None:
        axes.axvline(pass_at - 0.5, color="#c44e52", linestyle="--", linewidth=1.2, label=f"passes at {pass_at}")
    axes.set_xticks(values)
    axes.set_xlabel("score")
    axes.set_ylabel("replies")
    if mean is not None or pass_at is not None:
        _legend_beside(axes)
    return figure


def score_plot(path: Path, distribution: dict[str, int], mean: float | None, pass_at: int | None) -> Path:
    return _save(score_figure(distribution, mean, pass_at), path)


def pairwise_figure(a_wins: int, ties: int, b_wins: int, first_position_rate: float | None) -> Figure:
    """One bar split into A's wins, ties and B's wins; beside it, how often the judge chose the
    answer shown first (0.5: no position bias)."""
    figure = Figure(figsize=(6.4, 2.4), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    outcome, position = figure.subplots(1, 2, width_ratios=(3, 1))
    left = 0
    for count, label, colour in ((a_wins, "A wins", "#4c72b0"), (ties, "ties", "#bbbbbb"), (b_wins, "B wins", "#dd8452")):
        outcome.barh(0, count, left=left, color=colour, label=f"{label}: {count}")
        left += count
    outcome.set_yticks([])
    outcome.set_xlabel("rows")
    outcome.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.02), ncol=3)
    if first_position_rate is not None:
        position.bar(["first"], [first_position_rate], color="#8172b2")
        position.axhline(0.5, color="#c44e52", linestyle="--", linewidth=1.2)
    position.set_ylim(0, 1)
    position.set_title("chose the first", fontsize=8)
    return figure


def pairwise_plot(path: Path, a_wins: int, ties: int, b_wins: int, first_position_rate: float | None) -> Path:
    return _save(pairwise_figure(a_wins, ties, b_wins, first_position_rate), path)


def calibration_figure(bins: list[dict[str, float]]) -> Figure:
    """The judge's probability of "correct" against the observed share correct, per bin (a
    point per bin, sized by its rows), with the diagonal of a perfectly calibrated judge."""
    figure, axes = _figure(4.0, 3.6)
    axes.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", linewidth=1.0, label="calibrated")
    axes.scatter([b["predicted"] for b in bins], [b["observed"] for b in bins],
                 s=[20 + 180 * b["rows"] / max(bin_["rows"] for bin_ in bins) for b in bins], color="#4c72b0", label="bins")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("judge's probability of correct")
    axes.set_ylabel("share correct by truth")
    axes.legend(fontsize=8, loc="upper left")
    return figure


def calibration_plot(path: Path, bins: list[dict[str, float]]) -> Path:
    return _save(calibration_figure(bins), path)
