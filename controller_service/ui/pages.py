"""The dashboard's HTML pages: pure functions of what a RunSource returned and the time.

Plain HTML with one constant inline stylesheet (allowed by its hash in the
Content-Security-Policy, :data:`CSP`) and no script at all: an open run's page
reloads itself with ``<meta http-equiv="refresh">``. Every user-controlled
string (run names, loss names, worker names, failure reasons) goes through
:func:`~controller_service.ui.svg.esc`.
"""

from __future__ import annotations

import base64
import hashlib
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from controller_service.ui import charts, svg
from controller_service.ui.model import OPEN_STATUS, OpenRound, RoundRecord, RunInfo, RunSummary
from controller_service.ui.plan import TransferPlan
from controller_service.ui.svg import esc, fmt

REFRESH_SECONDS = 10
PREFIX = "/ui"

STYLE = """
:root{color-scheme:light;--fg:#1d2330;--muted:#5b6475;--line:#d9dde5;--bg:#f6f7f9;--accent:#0b5cad}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
header{display:flex;gap:16px;align-items:center;padding:10px 24px;background:#1d2330;color:#fff}
header a{color:#fff;text-decoration:none;font-weight:600}
header nav{flex:1;display:flex;gap:8px;align-items:center}
header nav span{color:#aab3c5}
header form{margin:0}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px;overflow-wrap:anywhere}
h2{font-size:17px;margin:28px 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}
a{color:var(--accent)}
p.note{color:var(--muted);margin:4px 0 10px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line)}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.name{overflow-wrap:anywhere}
td.nowrap{white-space:nowrap}
tr.best td{background:#fff4dc}
small,.id{color:var(--muted);font-family:ui-monospace,Menlo,monospace;font-size:12px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
background:#e4e7ee}
.badge.running,.badge.leased{background:#dbeafe;color:#1e4f91}
.badge.finished,.badge.done{background:#dcf3e3;color:#17693a}
.badge.failed,.badge.diverged{background:#fde2dc;color:#9c2b12}
.badge.pending{background:#eceff3;color:#4b5363}
dl.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:6px 18px;
margin:10px 0;padding:12px 14px;background:#fff;border:1px solid var(--line)}
dl.facts div{min-width:0}
dl.facts dt{color:var(--muted);font-size:12px}
dl.facts dd{margin:0;overflow-wrap:anywhere}
figure{margin:10px 0 18px;padding:8px 10px;background:#fff;border:1px solid var(--line)}
figcaption{font-weight:600;margin-bottom:2px;overflow-wrap:anywhere}
svg.chart{width:100%;height:auto;display:block}
svg.chart .grid{stroke:#e7e9ee}
svg.chart .frame,svg.chart .tickmark{stroke:#8a93a5}
svg.chart text{font:11px system-ui,sans-serif;fill:#4b5363}
svg.chart text.label{font-size:12px;fill:#1d2330}
ul.legend{list-style:none;display:flex;flex-wrap:wrap;gap:4px 18px;margin:4px 0 0;padding:0;
font-size:12px;color:var(--muted)}
ul.legend li{display:flex;align-items:center;gap:4px;overflow-wrap:anywhere}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:0 16px}
.warn{padding:8px 12px;background:#fde2dc;border:1px solid #f2b8aa;color:#7d230f;
overflow-wrap:anywhere}
.login{max-width:380px;margin:64px auto;padding:24px;background:#fff;border:1px solid var(--line)}
.login label{display:block;margin:10px 0 4px;font-weight:600}
.login input{width:100%;padding:7px;font:inherit;border:1px solid #aab3c5;border-radius:4px}
button{padding:6px 14px;font:inherit;border:0;border-radius:4px;background:var(--accent);
color:#fff;cursor:pointer;margin-top:12px}
header button{margin:0;background:#39445a}
progress{width:90px;vertical-align:middle}
details summary{cursor:pointer;color:var(--accent);margin:6px 0}
"""

# the page's one stylesheet is allowed by its hash; no script may run at all
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


# -- small pieces -------------------------------------------------------------------------------


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    s = int(round(abs(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s < 600 else f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def when(ts: float | None, now: float) -> str:
    """A timestamp and how long ago it was."""
    if ts is None:
        return "—"
    iso = datetime.fromtimestamp(ts, timezone.utc).isoformat()
    ago = f"{duration(now - ts)} ago" if now >= ts else f"in {duration(ts - now)}"
    return f'<time datetime="{iso}" title="{_utc(ts)}">{_utc(ts)}</time> <small>({ago})</small>'


def badge(status: str) -> str:
    return f'<span class="badge {esc(status)}">{esc(status)}</span>'


def run_title(name: str | None, run_id: str) -> str:
    return name if name else f"run {run_id}"


def run_url(run_id: str) -> str:
    return f"{PREFIX}/runs/{esc(run_id)}"


def _page(
    title: str,
    body: str,
    *,
    crumbs: Sequence[str] = (),
    refresh: bool = False,
    signed_in: bool = False,
) -> str:
    nav = "".join(f"<span>/</span>{c}" for c in crumbs)
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    logout = (
        f'<form method="post" action="{PREFIX}/logout"><button type="submit">Sign out</button>'
        "</form>"
        if signed_in
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)} · Ada-Segment</title>{meta}<style>{STYLE}</style></head><body>"
        f'<header><nav><a href="{PREFIX}/">Ada-Segment runs</a>{nav}</nav>{logout}</header>'
        f"<main>{body}</main></body></html>"
    )


def _facts(items: Sequence[tuple[str, str]]) -> str:
    cells = "".join(f"<div><dt>{esc(k)}</dt><dd>{v}</dd></div>" for k, v in items)
    return f'<dl class="facts">{cells}</dl>'


def _round_of(summary: Mapping[str, Any]) -> str:
    t, total = summary["round"], summary["rounds"]
    return (
        f'{t}/{total} <progress max="{total}" value="{min(t, total)}" '
        f'aria-label="round {t} of {total}"></progress>'
    )


# -- pages --------------------------------------------------------------------------------------


def runs_page(runs: Sequence[RunSummary], now: float, *, signed_in: bool = False) -> str:
    """Every run: status, strategy, round t/T, best PQ, created and updated."""
    if not runs:
        body = (
            "<h1>Runs</h1><p class='note'>No runs yet. Create one with <code>POST /v1/runs</code> "
            "(see the README) and it appears here.</p>"
        )
        return _page("Runs", body, refresh=True, signed_in=signed_in)
    rows = []
    for r in sorted(runs, key=lambda r: (-r["created_at"], r["id"])):
        rows.append(
            f'<tr data-run="{esc(r["id"])}"><td class="name"><a href="{run_url(r["id"])}">'
            f"{esc(run_title(r['name'], r['id']))}</a><br>"
            f"<span class='id'>{esc(r['id'])}</span></td>"
            f"<td>{badge(r['status'])}</td><td class='nowrap'>{esc(r['strategy'])}</td>"
            f"<td>{_round_of(r)}</td><td class='num'>{fmt(r['best_pq'], 4)}</td>"
            f"<td>{when(r['created_at'], now)}</td><td>{when(r['updated_at'], now)}</td></tr>"
        )
    running = sum(r["status"] == OPEN_STATUS for r in runs)
    note = f"{len(runs)} runs, {running} running"
    if running:
        note += f"; this page refreshes every {REFRESH_SECONDS} s"
    body = (
        f"<h1>Runs</h1><p class='note'>{note}.</p>"
        '<table class="runs"><thead><tr><th>run</th><th>status</th><th>strategy</th>'
        "<th>round</th><th class='num'>best PQ</th><th>created</th><th>updated</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return _page("Runs", body, refresh=running > 0, signed_in=signed_in)


def _open_round_section(open_round: OpenRound, rounds: Sequence[RoundRecord], now: float) -> str:
    members = open_round["members"]
    counts: dict[str, int] = {}
    for m in members:
        counts[m["status"]] = counts.get(m["status"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    parent = charts.parent_of(rounds, open_round.get("init_checkpoint_uri"))
    start = f"round {parent[0]}, member {parent[1]}" if parent else "the initial checkpoint"
    rows = []
    for m in members:
        deadline = m.get("deadline")
        if m["status"] == "leased" and deadline is not None:
            left = deadline - now
            lease = (
                f"{when(deadline, now)}"
                if left > 0
                else f"<strong>expired</strong> {duration(-left)} ago: re-issued on the next lease"
            )
        else:
            lease = "—"
        rows.append(
            f'<tr class="member" data-member="{m["member"]}" data-status="{esc(m["status"])}">'
            f"<td class='num'>{m['member']}</td><td>{badge(m['status'])}</td>"
            f"<td class='name'>{esc(m.get('worker') or '—')}</td><td>{lease}</td>"
            f"<td class='num'>{m.get('attempts', 0)}</td></tr>"
        )
    opened = open_round.get("opened_at")
    opened_text = f"opened {duration(now - opened)} ago; " if opened else ""
    table = (
        '<table class="leases"><thead><tr><th class="num">member</th><th>status</th>'
        "<th>worker</th><th>lease deadline</th><th class='num'>leases issued</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    if len(members) > 16:
        table = f"<details open><summary>{len(members)} members</summary>{table}</details>"
    return (
        f'<section id="open-round"><h2>Round {open_round["round"]} under way</h2>'
        f"<p class='note'>{opened_text}{esc(summary)}; every member starts from {start}.</p>"
        f"{table}</section>"
    )


def _rounds_table(rounds: Sequence[RoundRecord]) -> str:
    parents = charts.lineage(rounds)
    rows = []
    for r in reversed(rounds):
        t = r["round"]
        members = charts.trained(r)
        pqs = [c["pq"] for c in members if not c.get("diverged") and c.get("pq") is not None]
        best = charts.broadcast_member(r)
        parent = parents.get(t)
        diverged = [c for c in members if c.get("diverged")]
        diverged_text = "; ".join(
            f"member {c['member']}: {esc(c.get('reason') or 'diverged')}" for c in diverged
        )
        started = f"round {parent[0]} · member {parent[1]}" if parent else "initial checkpoint"
        rows.append(
            f'<tr class="round" data-round="{t}"><td class="num">{t}</td><td>{started}</td>'
            f"<td class='num'>{len(members)}</td>"
            f"<td class='num'>{best['member'] if best else '—'}</td>"
            f"<td class='num'>{fmt(best.get('pq') if best else None, 4)}</td>"
            f"<td class='num'>{fmt(statistics.median(pqs), 4) if pqs else '—'}</td>"
            f"<td class='num'>{r.get('invalid_draws', 0)}</td>"
            f"<td class='name'>{len(diverged) or ''} {diverged_text}</td></tr>"
        )
    return (
        '<table class="rounds"><thead><tr><th class="num">round</th><th>started from</th>'
        "<th class='num'>members</th><th class='num'>broadcast</th><th class='num'>its PQ</th>"
        "<th class='num'>median PQ</th><th class='num'>invalid draws</th>"
        f"<th>diverged / failed</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def run_page(
    info: RunInfo,
    rounds: Sequence[RoundRecord],
    open_round: OpenRound | None,
    now: float,
    *,
    signed_in: bool = False,
) -> str:
    """One run: facts, the open round's leases, weights, PQ and lineage per round, the rounds."""
    run_id = info["id"]
    title = run_title(info.get("name"), run_id)
    best = info.get("best")
    config = info.get("config") or {}
    open_ = info["status"] == OPEN_STATUS
    invalid = sum(r.get("invalid_draws", 0) for r in rounds)
    diverged = sum(1 for r in rounds for c in charts.trained(r) if c.get("diverged"))
    facts = [
        ("status", badge(info["status"])),
        ("strategy", esc(info["strategy"])),
        ("round", _round_of(info)),
        ("population", str(info["population"])),
        (
            "best PQ",
            f"{fmt(best['pq'], 4)} <small>(round {best['round']}, member {best['member']})</small>"
            if best
            else "—",
        ),
        ("losses", ", ".join(esc(n) for n in info["loss_names"])),
        ("created", when(info["created_at"], now)),
        ("updated", when(info["updated_at"], now)),
        ("invalid draws / diverged", f"{invalid} / {diverged}"),
    ]
    for key in ("sigma", "sigma_mode", "policy_lr", "reward_terms", "seed"):
        if key in config:
            facts.append((key, esc(config[key])))
    parts = [
        f'<h1>{esc(title)}</h1><p class="note"><span class="id">{esc(run_id)}</span> · '
        f'<a href="{run_url(run_id)}/policy">policy and transfer weights (Eq. 7)</a>'
        + (f" · refreshes every {REFRESH_SECONDS} s while running" if open_ else "")
        + "</p>",
        _facts(facts),
    ]
    if info.get("failure"):
        parts.append(f'<p class="warn">failed: {esc(info["failure"])}</p>')
    if open_round is not None:
        parts.append(_open_round_section(open_round, rounds, now))
    if not rounds:
        parts.append("<h2>Rounds</h2><p class='note'>No round has completed yet.</p>")
        return _page(title, "".join(parts), crumbs=[esc(title)], refresh=open_, signed_in=signed_in)
    last = max(info["rounds"], rounds[-1]["round"])
    has_mean = any(r.get("mean_weights") for r in rounds)
    weight_charts = "".join(
        f"<figure><figcaption>{esc(name)}</figcaption>"
        f"{charts.weights_chart(f'w{k}', name, rounds, last)}</figure>"
        for k, name in enumerate(info["loss_names"])
    )
    parts += [
        '<section id="weights"><h2>Loss weights per round</h2>'
        "<p class='note'>Each candidate's weights (log scale), the policy mean they were drawn "
        "around and the broadcast member, whose checkpoint every member of the next round starts "
        f"from. Invalid draws (a weight &le; 0) are never trained and not drawn.</p>"
        f"{charts.weights_legend(has_mean)}<div class='grid2'>{weight_charts}</div></section>",
        '<section id="pq"><h2>PQ per member and round</h2><figure>'
        f"{charts.pq_chart('pq-chart', rounds, last)}{charts.pq_legend()}</figure></section>",
        '<section id="lineage"><h2>Lineage of the broadcast</h2><figure>'
        + charts.lineage_chart(
            "lineage-chart",
            rounds,
            info["population"],
            last,
            open_round["round"] if open_round else None,
            charts.parent_of(rounds, open_round.get("init_checkpoint_uri")) if open_round else None,
        )
        + f"{charts.lineage_legend()}</figure></section>",
        f'<section id="rounds"><h2>Rounds</h2>{_rounds_table(rounds)}</section>',
    ]
    return _page(title, "".join(parts), crumbs=[esc(title)], refresh=open_, signed_in=signed_in)


def policy_page(
    info: RunInfo,
    policy: Mapping[str, Any] | None,
    rounds: Sequence[RoundRecord],
    plan: TransferPlan | None,
    *,
    signed_in: bool = False,
) -> str:
    """What a transfer run would get (Eq. 7) for the run's own loss history."""
    run_id = info["id"]
    title = run_title(info.get("name"), run_id)
    crumbs = [f'<a href="{run_url(run_id)}">{esc(title)}</a>', "policy"]
    head = f"<h1>Policy of {esc(title)}</h1>"
    if policy is None:
        body = head + f"<p class='note'>The {esc(info['strategy'])} strategy has no policy.</p>"
        return _page(f"{title}: policy", body, crumbs=crumbs, signed_in=signed_in)
    snapshots = policy.get("snapshots") or []
    if plan is None:
        body = head + (
            "<p class='note'>No policy snapshot yet: the first one is stored when round 1 "
            "completes.</p>"
        )
        return _page(
            f"{title}: policy",
            body,
            crumbs=crumbs,
            signed_in=signed_in,
            refresh=info["status"] == OPEN_STATUS,
        )
    names = plan.loss_names
    series = []
    for k, name in enumerate(names):
        colour = svg.PALETTE[k % len(svg.PALETTE)]
        points = [(e + 1, w[name]) for e, w in enumerate(plan.weights)]
        series.append((f"{name}: Eq. 7 weight", colour, points, False))
        means = [
            (r["round"], r["mean_weights"][name])
            for r in rounds
            if r.get("mean_weights") and 1 <= r["round"] <= plan.epochs
        ]
        if means:
            series.append((f"{name}: the search's policy mean", colour, means, True))
    chart = charts.series_chart(
        "transfer",
        "transfer weights per epoch (Eq. 7)",
        f"Eq. 7 weights of {len(names)} losses over {plan.epochs} epochs, log scale; dashed: "
        "the policy mean of the search's round of the same number",
        series,
        1,
        plan.epochs,
        "epoch of the transfer run (search: round)",
        "weight (log)",
    )
    legend = svg.legend_html(
        [
            svg.LegendEntry(
                f'<path d="M2 6H24" stroke="{svg.PALETTE[k % len(svg.PALETTE)]}" '
                'stroke-width="2"/>',
                name,
            )
            for k, name in enumerate(names)
        ]
        + [
            svg.LegendEntry(
                '<path d="M2 6H24" stroke="#666" stroke-width="2" stroke-dasharray="5 3"/>',
                "dashed: the search's policy mean in the round of that number",
            )
        ]
    )
    header = "".join(f"<th class='num'>l<sup>e</sup> {esc(n)}</th>" for n in names) + "".join(
        f"<th class='num'>&lambda;<sup>e+1</sup> {esc(n)}</th>" for n in names
    )
    rows = []
    for e, (losses, weights, clipped) in enumerate(
        zip(plan.losses, plan.weights, plan.clipped, strict=True)
    ):
        cells = "".join(f"<td class='num'>{fmt(losses[n], 4)}</td>" for n in names) + "".join(
            f"<td class='num'>{fmt(weights[n], 4)}{'*' if n in clipped else ''}</td>" for n in names
        )
        rows.append(f'<tr class="epoch" data-epoch="{e + 1}"><td class="num">{e}</td>{cells}</tr>')
    body = (
        head
        + _facts(
            [
                ("snapshots", f"{len(snapshots)} (rounds 1..{plan.epochs})"),
                ("transfer epochs E", str(plan.epochs)),
                ("γ (Eq. 7 decay)", fmt(plan.gamma)),
                ("status", badge(info["status"])),
            ]
        )
        + "<p class='note'>A transfer run asks, after epoch e with losses l<sup>e</sup>, for "
        "&lambda;<sup>e+1</sup> = (1/Z) &Sigma;<sub>t</sub> &gamma;<sup>|eT/E &minus; t|</sup> "
        "&pi;<sup>t</sup>(l<sup>e</sup>) / l<sup>e</sup> (Eq. 7, <code>POST /v1/runs/{run}/weights"
        "</code>). Here the search's own losses stand in for the transfer run's: l<sup>0</sup> "
        "from the pseudo epoch, l<sup>e</sup> the broadcast member's of round e, and E = T = "
        "the snapshots so far. * : clipped to the floor.</p>"
        + f"<figure>{chart}{legend}</figure>"
        + '<h2>Weights per epoch</h2><table class="plan"><thead><tr><th class="num">e</th>'
        + f"{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return _page(f"{title}: policy", body, crumbs=crumbs, signed_in=signed_in)


def login_page(next_path: str, error: str | None = None) -> str:
    """The token form: the token is POSTed once and kept in an HttpOnly cookie."""
    message = f'<p class="warn">{esc(error)}</p>' if error else ""
    body = (
        '<div class="login"><h1>Sign in</h1>'
        "<p class='note'>This controller requires its token (<code>ADASEG_TOKEN</code>). It is "
        "sent once; this browser then keeps a session cookie for the dashboard only.</p>"
        f'{message}<form method="post" action="{PREFIX}/login">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<label for="token">Token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        'required autofocus><button type="submit">Sign in</button></form></div>'
    )
    return _page("Sign in", body)


def error_page(message: str, *, signed_in: bool = False) -> str:
    return _page(
        "Not found", f'<h1>Not found</h1><p class="warn">{esc(message)}</p>', signed_in=signed_in
    )
