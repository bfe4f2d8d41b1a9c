"""Server-drawn SVG charts of a run: pure functions from round records to SVG text.

No I/O and no JavaScript: the browser only displays what is drawn here, so the
pages work offline in a cluster and need nothing from a CDN. Each chart is an
``<svg role="img">`` with a ``<title>`` and ``<desc>`` (its accessible name and
summary), axes with ticks and labels, and marks that carry ``data-round`` and
``data-member`` attributes, so a test (or a curious user's devtools) can count
what was drawn. Every string that comes from a user (loss names, worker names,
reasons) is escaped here.

Loss weights span several orders of magnitude (a centre-heatmap loss wants
weights near 100, an offset loss near 0.01), so weights are drawn on a log
scale; values that cannot be drawn there (a policy mean <= 0) break the line
and are said in the chart's description.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

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


def _path(points: Sequence[tuple[float, float] | None]) -> str:
    """An SVG path through ``points``; None breaks the line."""
    out, pen_down = [], False
    for point in points:
        if point is None:
            pen_down = False
            continue
        out.append(f"{'L' if pen_down else 'M'}{point[0]:.1f} {point[1]:.1f}")
        pen_down = True
    return "".join(out)


def _cross(px: float, py: float, size: float = 3.5) -> str:
    return (
        f"M{px - size:.1f} {py - size:.1f}L{px + size:.1f} {py + size:.1f}"
        f"M{px - size:.1f} {py + size:.1f}L{px + size:.1f} {py - size:.1f}"
    )


def _close(with_title: bool, text: str, tag: str) -> str:
    """The end of a mark: with a hover title, or self-closed (the text is then not built)."""
    return f"><title>{esc(text)}</title></{tag}>" if with_title else "/>"


# -- what the charts read from the round records ------------------------------------------------


def trained(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The members of a round that were trained (not the rejected draws)."""
    return [c for c in record["candidates"] if c.get("valid", True)]


def broadcast_member(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    best = record.get("best_member")
    if best is None:
        return None
    return next((c for c in trained(record) if c["member"] == best), None)


def lineage(rounds: Sequence[Mapping[str, Any]]) -> dict[int, tuple[int, int] | None]:
    """For each round, the (round, member) whose checkpoint its members started from.

    Read from the checkpoint URIs, so it holds whatever the strategy broadcast
    (and across rounds in which every member diverged). None: the run's initial
    checkpoint (round 0 and round 1 start from it), or a checkpoint of no member.
    """
    made_by: dict[str, tuple[int, int]] = {}
    parents: dict[int, tuple[int, int] | None] = {}
    for record in rounds:
        parents[record["round"]] = made_by.get(record.get("init_checkpoint_uri") or "")
        for c in trained(record):
            if c.get("checkpoint_uri"):
                made_by[c["checkpoint_uri"]] = (record["round"], c["member"])
    return parents


def parent_of(rounds: Sequence[Mapping[str, Any]], uri: str | None) -> tuple[int, int] | None:
    """The (round, member) that made checkpoint ``uri``."""
    for record in reversed(rounds):
        for c in trained(record):
            if uri and c.get("checkpoint_uri") == uri:
                return record["round"], c["member"]
    return None


# -- the charts of a run ------------------------------------------------------------------------


def weights_legend(has_mean: bool) -> str:
    entries = [
        LegendEntry(
            f'<circle cx="13" cy="6" r="3" fill="{CANDIDATE}" fill-opacity=".5"/>', "candidate"
        ),
        LegendEntry(
            f'<path d="M2 6H24" stroke="{BROADCAST}" stroke-width="2"/>'
            f'<circle cx="13" cy="6" r="4" fill="{BROADCAST}" stroke="#000"/>',
            "broadcast member (best of the round)",
        ),
        LegendEntry(
            f'<path d="{_cross(13, 6)}" stroke="{DIVERGED}" stroke-width="2"/>', "diverged"
        ),
    ]
    if has_mean:
        entries.insert(
            1,
            LegendEntry(
                f'<path d="M2 6H24" stroke="{MEAN}" stroke-width="2" stroke-dasharray="5 3"/>',
                "policy mean (Eq. 1)",
            ),
        )
    return legend_html(entries)


def weights_chart(
    chart_id: str, loss: str, rounds: Sequence[Mapping[str, Any]], last_round: int
) -> str:
    """One loss's weight per round: every candidate, the policy mean, the broadcast member."""
    candidates = [(r["round"], c) for r in rounds for c in trained(r)]
    means = [(r["round"], (r.get("mean_weights") or {}).get(loss)) for r in rounds]
    values = [c["weights"][loss] for _, c in candidates] + [m for _, m in means if m is not None]
    x = round_axis(0, last_round, SMALL_WIDTH)
    y = value_axis(*log_domain(values), log=True, height=SMALL_HEIGHT)
    titles = len(candidates) <= TITLE_MARKS_UP_TO
    marks = [f'<g class="cands" fill="{CANDIDATE}" fill-opacity=".45">']
    crosses = []
    for t, c in candidates:
        w = c["weights"][loss]
        if not y.contains(w):
            continue
        px, py = x(t), y(w)
        diverged = bool(c.get("diverged"))
        tip = f"round {t}, member {c['member']}: {loss} weight {fmt(w, 4)}" if titles else ""
        marks.append(
            f'<circle class="cand{" diverged" if diverged else ""}" cx="{px:.1f}" cy="{py:.1f}" '
            f'r="2.6" data-round="{t}" data-member="{c["member"]}"{_close(titles, tip, "circle")}'
        )
        if diverged:
            crosses.append(_cross(px, py))
    marks.append("</g>")
    if crosses:
        marks.append(
            f'<path class="diverged-marks" d="{"".join(crosses)}" stroke="{DIVERGED}" '
            'stroke-width="1.5" fill="none"/>'
        )
    unplottable = [t for t, m in means if m is not None and not y.contains(m)]
    drawn_means = [(t, m) for t, m in means if m is not None]
    if drawn_means:
        points = [(x(t), y(m)) if y.contains(m) else None for t, m in drawn_means]
        marks.append(
            f'<path class="mean" data-points="{len(drawn_means) - len(unplottable)}" '
            f'd="{_path(points)}" stroke="{MEAN}" stroke-width="1.6" stroke-dasharray="5 3" '
            'fill="none"/>'
        )
    best = [(r["round"], broadcast_member(r)) for r in rounds]
    best = [(t, c) for t, c in best if c is not None]
    marks.append(
        f'<path class="best-line" d="{_path([(x(t), y(c["weights"][loss])) for t, c in best])}" '
        f'stroke="{BROADCAST}" stroke-width="2" fill="none"/>'
    )
    for t, c in best:
        w = c["weights"][loss]
        tip = f"round {t}: broadcast member {c['member']}, {loss} weight {fmt(w, 4)}"
        marks.append(
            f'<circle class="best" cx="{x(t):.1f}" cy="{y(w):.1f}" r="4" fill="{BROADCAST}" '
            f'stroke="#000" data-round="{t}" data-member="{c["member"]}"><title>{esc(tip)}</title>'
            "</circle>"
        )
    desc = f"{len(candidates)} candidates in {len(rounds)} rounds on a log scale" + (
        f"; the policy mean was <= 0 in rounds {unplottable}" if unplottable else ""
    )
    return frame(
        chart_id,
        f"weight of {loss} per round",
        desc,
        x,
        y,
        "round",
        f"{loss} weight (log)",
        marks,
        css_class="weights",
        width=SMALL_WIDTH,
        height=SMALL_HEIGHT,
    )


def pq_legend() -> str:
    return legend_html(
        [
            LegendEntry('<circle cx="13" cy="6" r="3" fill="#555" fill-opacity=".5"/>', "member"),
            LegendEntry(
                f'<path d="M2 6H24" stroke="{BROADCAST}" stroke-width="2"/>'
                f'<circle cx="13" cy="6" r="4" fill="{BROADCAST}" stroke="#000"/>',
                "broadcast member (best of the round)",
            ),
            LegendEntry(
                f'<path d="{_cross(13, 6)}" stroke="{DIVERGED}" stroke-width="2"/>',
                "diverged (no PQ; drawn at the bottom)",
            ),
        ]
    )


def pq_chart(chart_id: str, rounds: Sequence[Mapping[str, Any]], last_round: int) -> str:
    """PQ of every trained member per round; the broadcast member highlighted."""
    members = [(r["round"], c) for r in rounds for c in trained(r)]
    pqs = [c.get("pq") for _, c in members if not c.get("diverged")]
    x = round_axis(0, last_round)
    y = value_axis(*linear_domain(pqs, floor=0.0))
    titles = len(members) <= TITLE_MARKS_UP_TO
    marks = ['<g class="members" fill="#555" fill-opacity=".45">']
    diverged = []
    for t, c in members:
        pq = c.get("pq")
        if c.get("diverged") or not y.contains(pq):
            diverged.append((t, c))
            continue
        tip = f"round {t}, member {c['member']}: PQ {fmt(pq, 4)}" if titles else ""
        marks.append(
            f'<circle class="member" cx="{x(t):.1f}" cy="{y(pq):.1f}" r="2.6" data-round="{t}" '
            f'data-member="{c["member"]}"{_close(titles, tip, "circle")}'
        )
    marks.append("</g>")
    bottom = HEIGHT - MARGIN_BOTTOM - 5
    for t, c in diverged:
        reason = c.get("reason") or "no PQ"
        marks.append(
            f'<path class="diverged" d="{_cross(x(t), bottom)}" stroke="{DIVERGED}" '
            f'stroke-width="1.6" data-round="{t}" data-member="{c["member"]}">'
            f"<title>round {t}, member {c['member']} diverged: {esc(reason)}</title></path>"
        )
    best = [(r["round"], broadcast_member(r)) for r in rounds]
    best = [(t, c) for t, c in best if c is not None and y.contains(c.get("pq"))]
    marks.append(
        f'<path class="best-line" d="{_path([(x(t), y(c["pq"])) for t, c in best])}" '
        f'stroke="{BROADCAST}" stroke-width="2" fill="none"/>'
    )
    for t, c in best:
        marks.append(
            f'<circle class="best" cx="{x(t):.1f}" cy="{y(c["pq"]):.1f}" r="4" '
            f'fill="{BROADCAST}" stroke="#000" data-round="{t}" data-member="{c["member"]}">'
            f"<title>round {t}: broadcast member {c['member']}, PQ {fmt(c['pq'], 4)}</title>"
            "</circle>"
        )
    desc = f"PQ of {len(members)} members in {len(rounds)} rounds, {len(diverged)} diverged"
    return frame(chart_id, "PQ per member and round", desc, x, y, "round", "PQ (%)", marks)


def lineage_legend() -> str:
    return legend_html(
        [
            LegendEntry('<circle cx="13" cy="6" r="2.5" fill="#999"/>', "member trained"),
            LegendEntry(
                f'<path d="M2 6H24" stroke="{BROADCAST}" stroke-width="2"/>'
                f'<circle cx="13" cy="6" r="4" fill="{BROADCAST}" stroke="#000"/>',
                "broadcast: the next round starts from it",
            ),
            LegendEntry(
                f'<path d="{_cross(13, 6)}" stroke="{DIVERGED}" stroke-width="2"/>', "diverged"
            ),
        ]
    )


def lineage_chart(
    chart_id: str,
    rounds: Sequence[Mapping[str, Any]],
    population: int,
    last_round: int,
    open_round: int | None = None,
    open_parent: tuple[int, int] | None = None,
) -> str:
    """Members (y) by round (x); an edge from the member each round started from to that
    round's broadcast member: the ancestry of the model the run ends with."""
    x = round_axis(0, last_round)
    rows = max(population, 1)
    height = min(max(HEIGHT, MARGIN_TOP + MARGIN_BOTTOM + 8 * rows), 640)  # 8 px a member
    y = value_axis(-0.5, rows - 0.5, flip=True, height=height)
    labels = {float(j): f"{j}" for j in range(rows)}
    titles = sum(len(r["candidates"]) for r in rounds) <= TITLE_MARKS_UP_TO
    marks = ['<g class="nodes" fill="#999">']
    crosses = []
    for r in rounds:
        t = r["round"]
        for c in trained(r):
            px, py = x(t), y(c["member"])
            if c.get("diverged"):
                crosses.append(
                    f'<path class="diverged" d="{_cross(px, py, 3)}" data-round="{t}" '
                    f'data-member="{c["member"]}"/>'
                )
                continue
            tip = f"round {t}, member {c['member']}: PQ {fmt(c.get('pq'), 4)}" if titles else ""
            marks.append(
                f'<circle class="node" cx="{px:.1f}" cy="{py:.1f}" r="2.2" data-round="{t}" '
                f'data-member="{c["member"]}"{_close(titles, tip, "circle")}'
            )
    marks.append("</g>")
    if crosses:
        marks.append(f'<g stroke="{DIVERGED}" stroke-width="1.5">{"".join(crosses)}</g>')
    parents = lineage(rounds)
    edges, nodes = [], []
    for r in rounds:
        t, best = r["round"], r.get("best_member")
        parent = parents.get(t)
        if t >= 1 and best is not None:
            start = (x(parent[0]), y(parent[1])) if parent else (x(0), y(0))
            edges.append(
                f'<path class="edge" d="M{start[0]:.1f} {start[1]:.1f}L{x(t):.1f} {y(best):.1f}" '
                f'data-round="{t}" data-from="{f"{parent[0]}:{parent[1]}" if parent else "init"}"/>'
            )
        if best is not None:
            nodes.append(
                f'<circle class="broadcast" cx="{x(t):.1f}" cy="{y(best):.1f}" r="4.2" '
                f'data-round="{t}" data-member="{best}"><title>round {t}: member {best} '
                "broadcast</title></circle>"
            )
    if open_round is not None:  # its members all start from open_parent: a dashed edge
        start = (x(open_parent[0]), y(open_parent[1])) if open_parent else (x(0), y(0))
        edges.append(
            f'<path class="edge open" d="M{start[0]:.1f} {start[1]:.1f}L{x(open_round):.1f} '
            f'{start[1]:.1f}" stroke-dasharray="4 3" data-round="{open_round}"/>'
        )
        nodes.append(
            f'<circle class="open-start" cx="{x(open_round):.1f}" cy="{start[1]:.1f}" r="4.2" '
            f'fill="#fff" data-round="{open_round}"><title>round {open_round} under way: every '
            "member starts from here</title></circle>"
        )
    marks.append(f'<g stroke="{BROADCAST}" stroke-width="2" fill="none">{"".join(edges)}</g>')
    marks.append(f'<g fill="{BROADCAST}" stroke="#000">{"".join(nodes)}</g>')
    desc = (
        f"{population} members by round; the edges join each round's broadcast member to the "
        "member its round started from"
    )
    return frame(
        chart_id,
        "lineage of the broadcast",
        desc,
        x,
        y,
        "round",
        "member",
        marks,
        y_tick_labels=labels,
        css_class="lineage",
        height=height,
    )


def series_chart(
    chart_id: str,
    title: str,
    desc: str,
    series: Sequence[tuple[str, str, Sequence[tuple[int, float]], bool]],
    first: int,
    last: int,
    x_label: str,
    y_label: str,
) -> str:
    """Lines on a log scale: ``series`` is (name, colour, [(x, value)], dashed)."""
    values = [v for _, _, points, _ in series for _, v in points]
    x = round_axis(first, last)
    y = value_axis(*log_domain(values), log=True)
    marks = []
    for k, (name, colour, points, dashed) in enumerate(series):
        drawn = [(x(t), y(v)) if y.contains(v) else None for t, v in points]
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        count = sum(p is not None for p in drawn)
        marks.append(
            f'<path class="series" data-series="{k}" data-points="{count}" '
            f'd="{_path(drawn)}" stroke="{colour}" stroke-width="2" fill="none"{dash}>'
            f"<title>{esc(name)}</title></path>"
        )
        if not dashed:
            for t, v in points:
                if y.contains(v):
                    marks.append(
                        f'<circle class="point" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.4" '
                        f'fill="{colour}" data-series="{k}" data-epoch="{t}">'
                        f"<title>{esc(name)} at {t}: {fmt(v, 4)}</title></circle>"
                    )
    return frame(chart_id, title, desc, x, y, x_label, y_label, marks)
