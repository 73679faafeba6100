"""Plots drawn as SVG text: a picture, axes with scales and "nice" ticks, marks, text and legends.

No dependency: a picture is a list of SVG elements, written as one ``<svg>`` element that a
browser or a Markdown viewer shows as it is and an HTML page can inline. Coordinates are pixels
from the top left. No font is measured: the width of a text is estimated from its characters,
generously for common sans-serif fonts, so that margins and legends leave it room. Every text
drawn is escaped (labels come from users' data).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FONT = "DejaVu Sans, Verdana, Arial, sans-serif"
TICK_SIZE = 11.0
LABEL_SIZE = 12.0
LEGEND_SIZE = 10.0
#: Widths of characters in a common sans-serif font, as fractions of the font size, rounded up.
_NARROW, _THIN, _WIDE, _CHAR = "ijl.,:;'|!", " ftrI()[]", "mw%&@<>=+~#", 0.62
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
#: matplotlib's "Blues" colour map, at nine evenly spaced points from 0 to 1.
_BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")
#: Black diagonal lines drawn over a hatched mark's fill (the id is the same, with the same
#: definition, in every picture that hatches, so pictures inlined in one page agree).
_HATCH = ('<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse">'
          '<path d="M-1,1 l2,-2 M0,6 l6,-6 M5,7 l2,-2" stroke="black" stroke-width="0.6"/></pattern></defs>')
_LEGEND_ROW = 1.6 * LEGEND_SIZE

Mark = Literal["patch", "hatched", "line", "dashed", "dot"]


def escape(text: str) -> str:
    """``text`` as XML character data or an attribute value; characters XML cannot hold are dropped."""
    return "".join(_ESCAPES.get(char, char) for char in _NOT_XML.sub("", text))


def text_width(text: str, size: float) -> float:
    """An estimate of the width of ``text`` in pixels, on the generous side."""
    def width(char: str) -> float:
        if char in _NARROW:
            return 0.3
        if char in _THIN:
            return 0.4
        return 0.8 if char.isupper() or char in _WIDE else _CHAR

    return size * sum(map(width, text))


def _number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def blues(fraction: float) -> str:
    """The colour of ``fraction`` (0 to 1, clamped) on matplotlib's "Blues" colour map."""
    position = min(max(fraction, 0.0), 1.0) * (len(_BLUES) - 1)
    index = min(int(position), len(_BLUES) - 2)
    low, high = _BLUES[index], _BLUES[index + 1]
    weight = position - index
    channels = (round(int(low[i:i + 2], 16) * (1 - weight) + int(high[i:i + 2], 16) * weight) for i in (1, 3, 5))
    return "#" + "".join(f"{channel:02x}" for channel in channels)


def nice_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """The multiples from ``low`` to ``high`` of the smallest step (1, 2, 2.5 or 5 times a power of
    ten) that makes at most ``most`` steps of the span."""
    rough = (high - low) / most if high > low else 1.0
    power = 10.0 ** math.floor(math.log10(rough))
    step = next(power * factor for factor in (1.0, 2.0, 2.5, 5.0, 10.0) if power * factor >= rough * (1 - 1e-9))
    return [k * step for k in range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)]


def tick_labels(values: list[float]) -> list[str]:
    """``values`` written with as many decimals as the finest of them needs (at most 6)."""
    decimals = next((places for places in range(7) if all(abs(v - round(v, places)) < 1e-9 for v in values)), 6)
    return [f"{value:,.{decimals}f}" for value in values]


@dataclass(frozen=True, slots=True)
class Scale:
    """Data values from ``low`` to ``high`` onto pixels from ``start`` to ``end`` (a y axis runs
    upward: its ``start`` is the bottom pixel); a log scale maps their logarithms."""

    low: float
    high: float
    start: float
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        def place(v: float) -> float:
            return math.log10(v) if self.log else v

        low, high = place(self.low), place(self.high)
        fraction = (place(value) - low) / (high - low) if high != low else 0.5
        return self.start + fraction * (self.end - self.start)

    def ticks(self) -> list[float]:
        """Round values within the scale: :func:`nice_ticks`, or the powers of ten on a log scale."""
        low, high = sorted((self.low, self.high))
        if self.log:
            return [10.0 ** k for k in range(math.ceil(math.log10(low) - 1e-9), math.floor(math.log10(high) + 1e-9) + 1)]
        return nice_ticks(low, high)


@dataclass(frozen=True, slots=True)
class LegendEntry:
    label: str
    colour: str
    mark: Mark = "patch"


class Picture:
    """An SVG picture being drawn: its elements in drawing order, later ones on top."""

    def __init__(self, width: float, height: float) -> None:
        self.width = width
        self.height = height
        self._elements: list[str] = []
        self._hatched = False

    def rect(self, x: float, y: float, width: float, height: float, fill: str, *, hatched: bool = False,
             stroke: str | None = None, stroke_width: float = 0.5) -> None:
        """A rectangle (negative sizes are turned around); ``hatched``: diagonal lines over ``fill``."""
        x, width = (x + width, -width) if width < 0 else (x, width)
        y, height = (y + height, -height) if height < 0 else (y, height)
        place = f'x="{_number(x)}" y="{_number(y)}" width="{width:.1f}" height="{height:.1f}"'
        outline = f' stroke="{stroke}" stroke-width="{_number(stroke_width)}"' if stroke else ""
        self._elements.append(f'<rect {place} fill="{fill}"{outline} shape-rendering="crispEdges"/>')
        if hatched:
            if not self._hatched:
                self._elements.insert(0, _HATCH)
                self._hatched = True
            self._elements.append(f'<rect {place} fill="url(#hatch)"/>')

    def line(self, points: list[tuple[float, float]], colour: str, *, width: float = 1.0, dashed: bool = False) -> None:
        """A line through ``points`` (two for a straight one)."""
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        coordinates = " ".join(f"{_number(x)},{_number(y)}" for x, y in points)
        self._elements.append(f'<polyline points="{coordinates}" fill="none" stroke="{colour}" '
                              f'stroke-width="{_number(width)}"{dash}/>')

    def circle(self, x: float, y: float, radius: float, colour: str) -> None:
        self._elements.append(f'<circle cx="{_number(x)}" cy="{_number(y)}" r="{radius:.1f}" fill="{colour}"/>')

    def text(self, x: float, y: float, content: str, *, size: float = TICK_SIZE,
             anchor: Literal["start", "middle", "end"] = "start", colour: str = "black", vertical: bool = False) -> None:
        """``content`` centred vertically on ``y``, its ``anchor`` at ``x``; ``vertical`` reads upward."""
        turn = f' transform="rotate(-90 {_number(x)} {_number(y)})"' if vertical else ""
        fill = "" if colour == "black" else f' fill="{colour}"'
        self._elements.append(f'<text x="{_number(x)}" y="{_number(y + 0.35 * size)}" font-size="{_number(size)}" '
                              f'text-anchor="{anchor}"{fill}{turn}>{escape(content)}</text>')

    def legend(self, x: float, y: float, entries: list[LegendEntry], *, columns: int = 1) -> None:
        """A framed legend (a group of class ``legend``) with its top left corner at ``x, y``, in ``columns`` columns."""
        width, height = legend_size(entries, columns)
        self._elements.append('<g class="legend">')
        self.rect(x, y, width, height, "white", stroke="#cccccc", stroke_width=1.0)
        column_width = (width - 4) / columns
        for index, entry in enumerate(entries):
            left = x + 6 + column_width * (index % columns)
            middle = y + 6 + _LEGEND_ROW * (index // columns) + _LEGEND_ROW / 2
            if entry.mark in ("patch", "hatched"):
                self.rect(left, middle - 4, 16, 8, entry.colour, hatched=entry.mark == "hatched", stroke="black",
                          stroke_width=0.4)
            elif entry.mark == "dot":
                self.circle(left + 8, middle, 4, entry.colour)
            else:
                self.line([(left, middle), (left + 16, middle)], entry.colour, width=1.5, dashed=entry.mark == "dashed")
            self.text(left + 22, middle, entry.label, size=LEGEND_SIZE)
        self._elements.append("</g>")

    def markup(self) -> str:
        """The picture as one ``<svg>`` element (no XML declaration, so it can be inlined in HTML)."""
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_number(self.width)}" height="{_number(self.height)}" '
                f'viewBox="0 0 {_number(self.width)} {_number(self.height)}" font-family="{FONT}">\n'
                f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(self._elements) + "\n</svg>\n")

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markup(), encoding="utf-8")
        return path



def legend_size(entries: list[LegendEntry], columns: int = 1) -> tuple[float, float]:
    """The width and height :meth:`Picture.legend` takes for ``entries``."""
    widest = max(text_width(entry.label, LEGEND_SIZE) for entry in entries)
    rows = math.ceil(len(entries) / columns)
    return columns * (widest + 30) + 4, rows * _LEGEND_ROW + 12


@dataclass(frozen=True, slots=True)
class Axes:
    """A plot area of a picture, ``x`` and ``y`` its scales (pixels within the area)."""

    picture: Picture
    x: Scale
    y: Scale

    @classmethod
    def inside(cls, picture: Picture, box: tuple[float, float, float, float], x: tuple[float, float],
               y: tuple[float, float], *, x_log: bool = False, y_log: bool = False) -> Axes:
        """Axes in ``box`` (left, top, right, bottom margins in pixels) showing ``x`` and ``y`` (low, high)."""
        left, top, right, bottom = box
        return cls(picture, Scale(*x, left, picture.width - right, x_log), Scale(*y, picture.height - bottom, top, y_log))

    def frame(self) -> None:
        """The four edges of the area, drawn last so marks do not cover them."""
        corners = [(self.x.start, self.y.start), (self.x.end, self.y.start), (self.x.end, self.y.end),
                   (self.x.start, self.y.end), (self.x.start, self.y.start)]
        self.picture.line(corners, "black", width=0.8)

    def x_ticks(self, values: list[float], labels: list[str] | None = None, *, size: float = TICK_SIZE) -> None:
        for value, label in zip(values, labels or tick_labels(values), strict=True):
            at = self.x(value)
            self.picture.line([(at, self.y.start), (at, self.y.start + 4)], "black", width=0.8)
            self.picture.text(at, self.y.start + 6 + size / 2, label, size=size, anchor="middle")

    def y_ticks(self, values: list[float], labels: list[str] | None = None, *, size: float = TICK_SIZE) -> None:
        for value, label in zip(values, labels or tick_labels(values), strict=True):
            at = self.y(value)
            self.picture.line([(self.x.start - 4, at), (self.x.start, at)], "black", width=0.8)
            self.picture.text(self.x.start - 6, at, label, size=size, anchor="end")

    def x_label(self, text: str) -> None:
        """``text`` under the x tick labels."""
        self.picture.text((self.x.start + self.x.end) / 2, self.y.start + 10 + TICK_SIZE + LABEL_SIZE, text,
                          size=LABEL_SIZE, anchor="middle")

    def y_label(self, text: str, offset: float) -> None:
        """``text`` upright, ``offset`` pixels left of the area (beyond its tick labels)."""
        self.picture.text(self.x.start - offset, (self.y.start + self.y.end) / 2, text, size=LABEL_SIZE,
                          anchor="middle", vertical=True)

    def rect(self, x: tuple[float, float], y: tuple[float, float], fill: str, *, hatched: bool = False,
             stroke: str | None = None, stroke_width: float = 0.5) -> None:
        """A rectangle between the data values ``x`` (from, to) and ``y`` (from, to)."""
        left, top = self.x(x[0]), self.y(y[0])
        self.picture.rect(left, top, self.x(x[1]) - left, self.y(y[1]) - top, fill, hatched=hatched, stroke=stroke,
                          stroke_width=stroke_width)

    def horizontal(self, value: float, colour: str, *, dashed: bool = False, width: float = 1.2) -> None:
        self.picture.line([(self.x.start, self.y(value)), (self.x.end, self.y(value))], colour, width=width, dashed=dashed)

    def vertical(self, value: float, colour: str, *, dashed: bool = False, width: float = 1.2) -> None:
        self.picture.line([(self.x(value), self.y.start), (self.x(value), self.y.end)], colour, width=width, dashed=dashed)

    def steps(self, edges: list[float], heights: list[float], colour: str) -> None:
        """A histogram's outline: ``heights[i]`` from ``edges[i]`` to ``edges[i + 1]``, closed down to 0."""
        points = [(self.x(edges[0]), self.y(0.0))]
        for left, right, height in zip(edges, edges[1:], heights, strict=False):
            points += [(self.x(left), self.y(height)), (self.x(right), self.y(height))]
        points.append((self.x(edges[-1]), self.y(0.0)))
        self.picture.line(points, colour, width=1.5)
