"""The report's plots, checked on matplotlib's objects: legend colours and where legends sit."""

from __future__ import annotations

import polars as pl
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from engine.report.plots import STAGE_COLOURS, batch_timeline_figure, label_figure

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


def legend_outside_the_axes(figure: Figure) -> None:
    """The legend cannot cover a bar: it does not overlap the axes the bars are drawn in."""
    figure.canvas.draw()
    (axes,) = figure.axes
    legend = axes.get_legend()
    assert legend is not None
    box, plot = legend.get_window_extent(), axes.get_window_extent()
    assert not box.overlaps(plot), (box, plot)
    assert figure.bbox.contains(box.x0, box.y0) and figure.bbox.contains(box.x1 - 1, box.y1 - 1)  # not cut off


def test_the_batch_legend_has_a_colour_per_stage() -> None:
    figure = batch_timeline_figure(SPANS)
    legend = figure.axes[0].get_legend()
    assert legend is not None
    swatches = {text.get_text(): handle.get_facecolor()  # type: ignore[union-attr]
                for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)}
    assert swatches["predict"] == to_rgba(STAGE_COLOURS["predict"])
    assert swatches["judge"] == to_rgba(STAGE_COLOURS["judge"])
    assert swatches["predict"] != swatches["judge"]
    bars = {patch.get_facecolor() for patch in figure.axes[0].patches}
    assert {swatches["predict"], swatches["judge"]} <= bars  # the swatches are the bars' colours
    legend_outside_the_axes(figure)


def test_the_label_legend_covers_no_bar() -> None:
    figure = label_figure(BREAKDOWN)
    legend_outside_the_axes(figure)
    legend = figure.axes[0].get_legend()
    assert legend is not None
    assert [text.get_text() for text in legend.get_texts()] == ["share of predictions", "right by truth", "judge says right"]
