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

from collections.abc import Mapping, Sequence
from typing import Any

from controller_service.ui.svg import (
    BROADCAST,
    CANDIDATE,
    DIVERGED,
    HEIGHT,
    MARGIN_BOTTOM,
    MARGIN_TOP,
    MEAN,
    SMALL_HEIGHT,
    SMALL_WIDTH,
    TITLE_MARKS_UP_TO,
    LegendEntry,
    closing,
    cross_path,
    esc,
    fmt,
    frame,
    legend_html,
    line_path,
    linear_domain,
    log_domain,
    round_axis,
    value_axis,
)


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
            f'<path d="{cross_path(13, 6)}" stroke="{DIVERGED}" stroke-width="2"/>', "diverged"
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
            f'r="2.6" data-round="{t}" data-member="{c["member"]}"{closing(titles, tip, "circle")}'
        )
        if diverged:
            crosses.append(cross_path(px, py))
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
            f'd="{line_path(points)}" stroke="{MEAN}" stroke-width="1.6" stroke-dasharray="5 3" '
            'fill="none"/>'
        )
    best = [(r["round"], broadcast_member(r)) for r in rounds]
    best = [(t, c) for t, c in best if c is not None]
    best_line = line_path([(x(t), y(c["weights"][loss])) for t, c in best])
    marks.append(
        f'<path class="best-line" d="{best_line}" '
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
                f'<path d="{cross_path(13, 6)}" stroke="{DIVERGED}" stroke-width="2"/>',
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
            f'data-member="{c["member"]}"{closing(titles, tip, "circle")}'
        )
    marks.append("</g>")
    bottom = HEIGHT - MARGIN_BOTTOM - 5
    for t, c in diverged:
        reason = c.get("reason") or "no PQ"
        marks.append(
            f'<path class="diverged" d="{cross_path(x(t), bottom)}" stroke="{DIVERGED}" '
            f'stroke-width="1.6" data-round="{t}" data-member="{c["member"]}">'
            f"<title>round {t}, member {c['member']} diverged: {esc(reason)}</title></path>"
        )
    best = [(r["round"], broadcast_member(r)) for r in rounds]
    best = [(t, c) for t, c in best if c is not None and y.contains(c.get("pq"))]
    marks.append(
        f'<path class="best-line" d="{line_path([(x(t), y(c["pq"])) for t, c in best])}" '
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
                f'<path d="{cross_path(13, 6)}" stroke="{DIVERGED}" stroke-width="2"/>', "diverged"
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
                    f'<path class="diverged" d="{cross_path(px, py, 3)}" data-round="{t}" '
                    f'data-member="{c["member"]}"/>'
                )
                continue
            tip = f"round {t}, member {c['member']}: PQ {fmt(c.get('pq'), 4)}" if titles else ""
            marks.append(
                f'<circle class="node" cx="{px:.1f}" cy="{py:.1f}" r="2.2" data-round="{t}" '
                f'data-member="{c["member"]}"{closing(titles, tip, "circle")}'
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
            f'd="{line_path(drawn)}" stroke="{colour}" stroke-width="2" fill="none"{dash}>'
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
