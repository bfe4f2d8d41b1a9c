"""SVG primitives of the dashboard's charts: scales, axes, legends, frames and escaping.

Pure functions; :mod:`controller_service.ui.charts` draws the charts with them. Every
string that reaches a page from a user (loss names, worker names, reasons) goes
through :func:`esc`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 760, 250
SMALL_WIDTH, SMALL_HEIGHT = 520, 230  # the per-loss weight charts, two side by side
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 62, 14, 12, 40
TITLE_MARKS_UP_TO = 3000  # hover titles on every mark only while the page stays small

# colour-blind-safe (Okabe-Ito), without the vermillion kept for diverged members
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#8C6D1F", "#6A3D9A", "#444444")
CANDIDATE, MEAN, BROADCAST, DIVERGED = "#0072B2", "#222222", "#E69F00", "#D55E00"


def esc(value: object) -> str:
    """HTML/SVG-escaped text of any value (quotes too: safe inside attributes)."""
    return escape(str(value), quote=True)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number as people read it: ``digits`` significant digits, '—' for None."""
    if value is None:
        return "—"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.{max(digits - 1, 1)}e}"


# -- scales -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """Data interval [lo, hi] onto pixels [start, end], linear or log10."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def __post_init__(self) -> None:  # pixels = offset + slope * t(value), fixed once
        lo, hi = self._t(self.lo), self._t(self.hi)
        slope = (self.end - self.start) / (hi - lo)
        object.__setattr__(self, "_slope", slope)
        object.__setattr__(self, "_offset", self.start - lo * slope)

    def _t(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def __call__(self, value: float) -> float:
        return self._offset + self._slope * (math.log10(value) if self.log else value)

    def contains(self, value: float | None) -> bool:
        return value is not None and math.isfinite(value) and (value > 0 or not self.log)

    def ticks(self, most: int = 8, integer: bool = False) -> list[float]:
        if self.log:
            return _log_ticks(self.lo, self.hi, most)
        step = _nice_step((self.hi - self.lo) / max(most - 1, 1))
        if integer:
            step = max(1.0, math.ceil(step))
        first = math.ceil(self.lo / step - 1e-9) * step
        count = int(math.floor((self.hi - first) / step + 1e-9)) + 1
        return [round(first + k * step, 10) for k in range(max(count, 0))]


def _nice_step(raw: float) -> float:
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _log_ticks(lo: float, hi: float, most: int) -> list[float]:
    first, last = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    decades = list(range(first, last + 1))
    if len(decades) < 2:  # less than a decade in view: 1-2-5 ticks
        ticks = [m * 10.0**d for d in range(first - 1, last + 1) for m in (1, 2, 5)]
        return [t for t in ticks if lo <= t <= hi]
    stride = math.ceil(len(decades) / most)
    return [10.0**d for d in decades[::stride]]


def log_domain(values: Iterable[float]) -> tuple[float, float]:
    """A log-scale interval around the positive finite ``values`` (a third of a decade of air)."""
    positive = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not positive:
        return 0.1, 10.0
    lo, hi = min(positive), max(positive)
    return lo / 10 ** (1 / 3), hi * 10 ** (1 / 3)


def linear_domain(values: Iterable[float], floor: float | None = None) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 1.0)
    lo, hi = lo - pad, hi + pad
    return (max(lo, floor) if floor is not None else lo), hi


def round_axis(first: int, last: int, width: int = WIDTH) -> Axis:
    """x: rounds (or epochs) ``first``..``last``, with half a round of air each side."""
    return Axis(first - 0.5, max(last, first) + 0.5, MARGIN_LEFT, width - MARGIN_RIGHT)


def value_axis(
    lo: float, hi: float, log: bool = False, flip: bool = False, height: int = HEIGHT
) -> Axis:
    top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM
    return Axis(lo, hi, top if flip else bottom, bottom if flip else top, log)


# -- the frame every chart shares ---------------------------------------------------------------


@dataclass(frozen=True)
class LegendEntry:
    swatch: str  # SVG markup, drawn in a 26 x 12 box
    label: str  # plain text; escaped when drawn


def legend_html(entries: Sequence[LegendEntry]) -> str:
    items = "".join(
        f'<li><svg width="26" height="12" aria-hidden="true">{e.swatch}</svg>{esc(e.label)}</li>'
        for e in entries
    )
    return f'<ul class="legend">{items}</ul>'


def frame(
    chart_id: str,
    title: str,
    desc: str,
    x: Axis,
    y: Axis,
    x_label: str,
    y_label: str,
    body: Sequence[str],
    *,
    x_integer: bool = True,
    y_tick_labels: Mapping[float, str] | None = None,
    css_class: str = "",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """An ``<svg>`` with title, description, grid, ticks, axis labels and the marks ``body``."""
    top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    parts = [
        f'<svg class="chart {css_class}" id="{chart_id}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{chart_id}-t {chart_id}-d" '
        f'data-scale="{"log" if y.log else "linear"}" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-t">{esc(title)}</title><desc id="{chart_id}-d">{esc(desc)}</desc>',
        '<g class="axis">',
    ]
    for value in y.ticks():
        py = y(value)
        label = y_tick_labels.get(value) if y_tick_labels else None
        parts.append(
            f'<line class="grid" x1="{left}" x2="{right}" y1="{py:.1f}" y2="{py:.1f}"/>'
            f'<text class="tick" x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">'
            f"{esc(label if label is not None else _tick_label(value, y.log))}</text>"
        )
    for value in x.ticks(most=12, integer=x_integer):
        px = x(value)
        parts.append(
            f'<line class="tickmark" x1="{px:.1f}" x2="{px:.1f}" y1="{bottom}" y2="{bottom + 4}"/>'
            f'<text class="tick" x="{px:.1f}" y="{bottom + 16}" text-anchor="middle">'
            f"{_tick_label(value, False)}</text>"
        )
    parts += [
        f'<line class="frame" x1="{left}" x2="{left}" y1="{top}" y2="{bottom}"/>',
        f'<line class="frame" x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}"/>',
        f'<text class="label" x="{(left + right) / 2:.1f}" y="{height - 6}" '
        f'text-anchor="middle">{esc(x_label)}</text>',
        f'<text class="label" transform="translate(14 {(top + bottom) / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{esc(y_label)}</text>',
        "</g>",
        *body,
        "</svg>",
    ]
    return "".join(parts)


def _tick_label(value: float, log: bool) -> str:
    if log:
        return f"{value:g}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def line_path(points: Sequence[tuple[float, float] | None]) -> str:
    """An SVG path through ``points``; None breaks the line."""
    out, pen_down = [], False
    for point in points:
        if point is None:
            pen_down = False
            continue
        out.append(f"{'L' if pen_down else 'M'}{point[0]:.1f} {point[1]:.1f}")
        pen_down = True
    return "".join(out)


def cross_path(px: float, py: float, size: float = 3.5) -> str:
    return (
        f"M{px - size:.1f} {py - size:.1f}L{px + size:.1f} {py + size:.1f}"
        f"M{px - size:.1f} {py + size:.1f}L{px + size:.1f} {py - size:.1f}"
    )


def closing(with_title: bool, text: str, tag: str) -> str:
    """The end of a mark: with a hover title, or self-closed (the text is then not built)."""
    return f"><title>{esc(text)}</title></{tag}>" if with_title else "/>"


# -- what the charts read from the round records ------------------------------------------------
