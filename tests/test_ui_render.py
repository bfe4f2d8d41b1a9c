"""The dashboard's pure renderers: what is drawn, on which scale, escaped; the token rule.

Round records are built here in the run record's shape (``history`` items), so
every count is known by construction. The last tests mount the real service
in-process (a file store under tmp_path) to check the token rule end to end.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller_service.api.app import create_app
from controller_service.api.settings import Settings
from controller_service.search.ensemble import transfer_weights
from controller_service.search.policy import Policy, PolicyConfig
from controller_service.ui import charts, pages, svg
from controller_service.ui.auth import COOKIE_NAME, UiAuth, safe_next
from controller_service.ui.plan import loss_history, transfer_plan

NAMES = ["semantic", "center", "offset"]
SVG = "{http://www.w3.org/2000/svg}"
EVIL_NAME = '<script>alert("run")</script>'
EVIL_LOSS = '"><img src=x onerror=alert(1)>'


def uri(t: int, j: int) -> str:
    return f"file:///store/runs/r/checkpoints/r{t:03d}-m{j:02d}.pt"


def make_rounds(
    m: int,
    rounds: int,
    names: list[str] = NAMES,
    diverged: frozenset[tuple[int, int]] = frozenset(),
    invalid: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Rounds 0..rounds in the run record's shape: member j of round t has weight
    10^(j - t/2) on every loss (so weights span decades), PQ 10 + t + j; the best
    non-diverged member is broadcast and the next round starts from its checkpoint
    (rounds 0 and 1 from init.pt, as in a run)."""
    invalid = invalid or {}
    records: list[dict[str, Any]] = []
    start = "file:///store/runs/r/checkpoints/init.pt"
    for t in range(rounds + 1):
        members = 1 if t == 0 else m
        candidates = []
        for j in range(members):
            weights = {n: 1.0 if t == 0 else 10.0 ** (j - t / 2) for n in names}
            failed = (t, j) in diverged
            candidates.append(
                {
                    "member": j,
                    "weights": weights,
                    "valid": True,
                    "pq": None if failed else 10.0 + t + j,
                    "losses": None if failed else {n: 1.0 / (1 + t + j) for n in names},
                    "reward": -1.0 if failed else 0.0,
                    "diverged": failed,
                    "reason": "loss is nan" if failed else None,
                    "worker": f"pod-{j}",
                    "attempts": 1,
                    "checkpoint_uri": None if failed else uri(t, j),
                }
            )
        for k in range(invalid.get(t, 0)):
            bad = {n: -0.5 for n in names}
            candidates.append({"member": k, "weights": bad, "valid": False, "reward": -1.0})
        alive = [c for c in candidates if c["valid"] and not c["diverged"]]
        best = max(alive, key=lambda c: (c["pq"], -c["member"]))["member"] if alive else None
        records.append(
            {
                "round": t,
                "mean_weights": {n: 1.0 if t == 0 else 10.0 ** (1 - t / 2) for n in names},
                "candidates": candidates,
                "invalid_draws": invalid.get(t, 0),
                "best_member": best,
                "init_checkpoint_uri": start,
                "input_losses": None,
            }
        )
        if best is not None and t >= 1:  # round 1 starts from init.pt, as round 0 did
            start = uri(t, best)
    return records


def info(rounds: int = 3, m: int = 4, status: str = "running", **extra: Any) -> dict[str, Any]:
    record = {
        "id": "abc123",
        "name": "nightly",
        "status": status,
        "failure": None,
        "strategy": "ada-segment",
        "round": rounds,
        "rounds": rounds,
        "population": m,
        "loss_names": NAMES,
        "config": {"sigma": 0.5, "seed": 1},
        "created_at": 1_700_000_000.0,
        "updated_at": 1_700_000_600.0,
        "initial_losses": {n: 1.0 for n in NAMES},
        "best": {"round": 1, "member": 3, "pq": 14.0, "weights": {}, "losses": {}},
    }
    record.update(extra)
    return record


def parse_svg(markup: str) -> ET.Element:
    return ET.fromstring(markup)


def marks(root: ET.Element, css_class: str) -> list[ET.Element]:
    return [e for e in root.iter() if css_class in (e.get("class") or "").split()]


# -- charts -------------------------------------------------------------------------------------


def test_weights_chart_draws_every_candidate_of_every_round_on_a_log_scale():
    rounds = make_rounds(m=4, rounds=3, invalid={2: 2})
    root = parse_svg(charts.weights_chart("w0", "semantic", rounds, last_round=5))
    assert root.get("data-scale") == "log" and root.get("role") == "img"
    assert root.find(f"{SVG}title").text == "weight of semantic per round"
    cands = marks(root, "cand")
    assert len(cands) == 1 + 4 * 3  # round 0 has one member; invalid draws are not drawn
    assert {c.get("data-round") for c in cands} == {"0", "1", "2", "3"}
    assert {c.get("data-member") for c in cands} == {"0", "1", "2", "3"}
    best = marks(root, "best")
    assert [(b.get("data-round"), b.get("data-member")) for b in best] == [
        ("0", "0"),
        ("1", "3"),
        ("2", "3"),
        ("3", "3"),
    ]
    assert marks(root, "mean")[0].get("data-points") == "4"
    # log scale: weights 10^(j - 1/2) of round 1 are equally spaced in pixels
    ys = [float(c.get("cy")) for c in cands if c.get("data-round") == "1"]
    gaps = [b - a for a, b in zip(ys, ys[1:], strict=False)]
    assert max(gaps) - min(gaps) < 0.25 and gaps[0] < 0  # higher weight, higher on the page
    # the ticks are decades across the whole span 10^-1.5 .. 10^2.5
    ticks = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "tick"]
    assert {"0.1", "1", "10", "100"} <= set(ticks)


def test_diverged_members_are_marked_in_the_pq_and_lineage_charts():
    rounds = make_rounds(m=3, rounds=2, diverged=frozenset({(2, 0), (2, 2)}))
    pq = parse_svg(charts.pq_chart("pq", rounds, last_round=2))
    assert len(marks(pq, "member")) == 1 + 3 + 1
    assert [(d.get("data-round"), d.get("data-member")) for d in marks(pq, "diverged")] == [
        ("2", "0"),
        ("2", "2"),
    ]
    assert "loss is nan" in ET.tostring(pq, encoding="unicode")
    assert pq.get("data-scale") == "linear"
    lineage = parse_svg(charts.lineage_chart("lineage", rounds, 3, last_round=2))
    assert len(marks(lineage, "node")) == 5 and len(marks(lineage, "diverged")) == 2


def test_lineage_follows_the_checkpoints_across_a_round_in_which_every_member_diverged():
    rounds = make_rounds(m=2, rounds=3, diverged=frozenset({(2, 0), (2, 1)}))
    rounds[3]["init_checkpoint_uri"] = uri(1, 1)  # round 2 had no best: round 3 restarts there
    assert charts.lineage(rounds) == {0: None, 1: None, 2: (1, 1), 3: (1, 1)}
    root = parse_svg(charts.lineage_chart("lineage", rounds, 2, last_round=4, open_round=4,
                                    open_parent=(3, 1)))  # fmt: skip
    edges = {e.get("data-round"): e.get("data-from") for e in marks(root, "edge")}
    assert edges == {"1": "init", "3": "1:1", "4": None}  # no edge into round 2
    assert [b.get("data-round") for b in marks(root, "broadcast")] == ["0", "1", "3"]
    assert len(marks(root, "open-start")) == 1


def test_a_mean_at_or_below_zero_breaks_the_line_and_is_said():
    rounds = make_rounds(m=2, rounds=2)
    rounds[1]["mean_weights"]["center"] = -0.2
    root = parse_svg(charts.weights_chart("w1", "center", rounds, last_round=2))
    assert marks(root, "mean")[0].get("data-points") == "2"
    assert "rounds [1]" in root.find(f"{SVG}desc").text


def test_a_strategy_without_a_policy_draws_no_mean():
    rounds = make_rounds(m=2, rounds=2)
    for record in rounds:
        record["mean_weights"] = None
    root = parse_svg(charts.weights_chart("w0", "semantic", rounds, last_round=2))
    assert not marks(root, "mean") and len(marks(root, "cand")) == 5


def test_axes_scale_as_documented():
    axis = svg.Axis(0.01, 100.0, 0.0, 400.0, log=True)
    assert [axis(v) for v in (0.01, 0.1, 1.0, 10.0, 100.0)] == pytest.approx(
        [0, 100, 200, 300, 400]
    )
    assert axis.ticks() == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert svg.Axis(0.3, 3.0, 0, 1, log=True).ticks() == [0.5, 1.0, 2.0]
    assert svg.Axis(-0.5, 12.5, 0, 1).ticks(most=8, integer=True) == [0, 2, 4, 6, 8, 10, 12]
    assert not svg.Axis(0.1, 1, 0, 1, log=True).contains(0.0)


# -- pages --------------------------------------------------------------------------------------


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [name for name, _ in attrs]


def elements(html: str) -> _Elements:
    parser = _Elements()
    parser.feed(html)
    return parser


def test_user_strings_are_escaped_everywhere():
    names = ["semantic", EVIL_LOSS]
    rounds = make_rounds(m=2, rounds=2, names=names, diverged=frozenset({(1, 0)}))
    rounds[1]["candidates"][0]["reason"] = "<iframe src=//evil>"
    open_round = {
        "round": 3,
        "opened_at": 1_700_000_500.0,
        "init_checkpoint_uri": uri(2, 1),
        "mean_weights": None,
        "members": [
            {
                "member": 0,
                "status": "leased",
                "worker": "<svg onload=alert(2)>",
                "deadline": 1_700_000_900.0,
                "attempts": 1,
            },  # fmt: skip
            {"member": 1, "status": "pending", "worker": None, "deadline": None, "attempts": 0},
        ],
    }
    record = info(rounds=2, m=2, name=EVIL_NAME, loss_names=names, failure="<b>boom</b>")
    html = pages.run_page(record, rounds, open_round, now=1_700_000_700.0)
    summary = {
        "id": "abc123",
        "name": EVIL_NAME,
        "status": "running",
        "strategy": "<i>pbt</i>",
        "round": 1,
        "rounds": 2,
        "best_pq": 3.0,
        "created_at": 1.0,
        "updated_at": 2.0,
    }
    listing = pages.runs_page([summary], now=10.0)
    plan = transfer_plan(policy_document(names, 2), rounds)
    policy = pages.policy_page(record, policy_document(names, 2), rounds, plan)
    login = pages.login_page('/ui/"><script>x</script>', error="<b>no</b>")
    for page in (html, listing, policy, login):
        found = elements(page)
        assert {"script", "img", "iframe", "b", "i"}.isdisjoint(found.tags), found.tags
        assert not [a for a in found.attrs if a.startswith("on")]
    assert "&lt;script&gt;alert(&quot;run&quot;)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;svg onload=alert(2)&gt;" in html and "&lt;iframe src=//evil&gt;" in html
    assert "&lt;i&gt;pbt&lt;/i&gt;" in listing


def test_the_pages_never_carry_a_script_and_the_policy_forbids_one():
    assert "script-src" not in pages.CSP and "default-src 'none'" in pages.CSP
    html = pages.run_page(info(), make_rounds(4, 3), None, now=1_700_000_700.0)
    assert "<script" not in html.lower()


def test_an_open_run_refreshes_itself_and_a_finished_one_does_not():
    rounds = make_rounds(4, 3)
    running = pages.run_page(info(status="running"), rounds, None, now=1_700_000_700.0)
    finished = pages.run_page(info(status="finished"), rounds, None, now=1_700_000_700.0)
    assert 'http-equiv="refresh"' in running and 'http-equiv="refresh"' not in finished


def test_run_page_shows_every_loss_the_leases_and_the_rounds():
    rounds = make_rounds(4, 3, invalid={1: 3}, diverged=frozenset({(3, 2)}))
    open_round = {
        "round": 4,
        "opened_at": 1_700_000_500.0,
        "init_checkpoint_uri": uri(3, 3),
        "mean_weights": None,
        "members": [
            {"member": 0, "status": "done", "worker": "pod-a", "deadline": None, "attempts": 1},
            {
                "member": 1,
                "status": "leased",
                "worker": "pod-b",
                "deadline": 1_700_000_750.0,
                "attempts": 2,
            },
            {
                "member": 2,
                "status": "leased",
                "worker": "pod-c",
                "deadline": 1_700_000_650.0,
                "attempts": 1,
            },
            {"member": 3, "status": "pending", "worker": None, "deadline": None, "attempts": 0},
        ],  # fmt: skip
    }
    html = pages.run_page(info(rounds=5), rounds, open_round, now=1_700_000_700.0)
    assert [f'id="w{k}"' in html for k in range(3)] == [True] * 3
    assert len(re.findall(r'<tr class="member"', html)) == 4
    assert "in 50 s" in html and "expired</strong> 50 s ago" in html
    assert "every member starts from round 3, member 3" in html
    assert len(re.findall(r'<tr class="round"', html)) == 4
    assert "member 2: loss is nan" in html and "invalid draws / diverged</dt><dd>3 / 1" in html


def test_runs_page_lists_every_run_newest_first():
    runs = [
        {"id": f"run{k}", "name": None, "status": "finished", "strategy": "ada-segment",
         "round": 3, "rounds": 3, "best_pq": 10.0 + k, "created_at": 100.0 + k,
         "updated_at": 200.0}
        for k in range(3)
    ]  # fmt: skip
    html = pages.runs_page(runs, now=300.0)
    assert re.findall(r'data-run="(\w+)"', html) == ["run2", "run1", "run0"]
    assert 'http-equiv="refresh"' not in html and "3/3" in html and "12" in html


def test_durations_read_as_people_say_them():
    assert [pages.duration(s) for s in (5, 65, 700, 7300, 90000)] == [
        "5 s",
        "1 min 5 s",
        "11 min",
        "2 h 1 min",
        "1 d 1 h",
    ]


# -- the transfer plan (Eq. 7) ------------------------------------------------------------------


def policy_document(names: list[str], rounds: int) -> dict[str, Any]:
    """Snapshots of a real policy after ``rounds`` REINFORCE updates."""
    config = PolicyConfig(n_losses=len(names), hidden=4, sigma=0.5, sigma_mode="relative",
                          lr=0.05, weight_decay=0.0, steps=1, floor=1e-3)  # fmt: skip
    policy = Policy(config, seed=3)
    snapshots = []
    for t in range(1, rounds + 1):
        losses = [1.0 / t] * len(names)
        draw = policy.sample(policy.mean_weights(losses), 3)
        policy.update(losses, draw.candidates, [1.0, -1.0, 0.5])
        snapshots.append({"round": t, **policy.snapshot()})
    return {"format": "adaseg-policy/v1", "loss_names": names, "snapshots": snapshots}


def test_transfer_plan_is_eq7_over_the_runs_own_losses():
    rounds = make_rounds(3, 4)
    document = policy_document(NAMES, 4)
    plan = transfer_plan(document, rounds, gamma=0.8)
    assert plan is not None and plan.epochs == 4
    snapshots = {s["round"]: s for s in document["snapshots"]}
    assert plan.losses[0] == rounds[0]["candidates"][0]["losses"]
    for e in range(4):
        best = rounds[e]["candidates"][rounds[e]["best_member"]]
        assert plan.losses[e] == best["losses"]
        expected, _ = transfer_weights(snapshots, [best["losses"][n] for n in NAMES], e, 4,
                                       gamma=0.8)  # fmt: skip
        assert [plan.weights[e][n] for n in NAMES] == expected
    assert transfer_plan({"loss_names": NAMES, "snapshots": []}, rounds) is None


def test_loss_history_keeps_the_last_losses_through_a_round_that_all_diverged():
    rounds = make_rounds(2, 3, diverged=frozenset({(2, 0), (2, 1)}))
    history = loss_history(rounds, 4)
    assert history[2] == history[1] == rounds[1]["candidates"][1]["losses"]
    assert history[3] == rounds[3]["candidates"][1]["losses"]


def test_policy_page_draws_one_line_per_loss_and_one_row_per_epoch():
    rounds = make_rounds(3, 3)
    document = policy_document(NAMES, 3)
    html = pages.policy_page(info(), document, rounds, transfer_plan(document, rounds))
    assert len(re.findall(r'<tr class="epoch"', html)) == 3
    chart = parse_svg(re.search(r"<svg.*?</svg>", html, re.S).group(0))
    series = marks(chart, "series")
    assert len(series) == 6 and {s.get("data-points") for s in series} == {"3"}
    assert chart.get("data-scale") == "log"
    assert "no policy" in pages.policy_page(info(), None, rounds, None)
    assert "No policy snapshot yet" in pages.policy_page(info(), document, rounds[:1], None)


# -- the token rule -----------------------------------------------------------------------------


def test_ui_auth_accepts_the_bearer_header_or_a_signed_cookie_only():
    auth = UiAuth("s3cret", session_seconds=100)
    assert auth.bearer_matches("Bearer s3cret") and auth.bearer_matches("bearer s3cret")
    assert not auth.bearer_matches("Bearer s3cre") and not auth.bearer_matches("Basic s3cret")
    assert not auth.bearer_matches(None) and not auth.token_matches("S3CRET")
    cookie = auth.session_cookie(now=1000.0)
    assert "s3cret" not in cookie
    assert auth.cookie_matches(cookie, now=1099.0) and not auth.cookie_matches(cookie, now=1100.0)
    expires, mac = cookie.split(".")
    assert not auth.cookie_matches(f"{int(expires) + 1000}.{mac}", now=1000.0)  # extended
    assert not UiAuth("other").cookie_matches(cookie, now=1000.0)  # the token changed
    assert not auth.cookie_matches("garbage", 0.0) and not auth.cookie_matches(None, 0.0)
    assert UiAuth(None).allowed(None, None, 0.0) and not UiAuth(None).enabled


def test_after_sign_in_only_dashboard_paths_are_followed():
    assert safe_next("/ui/runs/abc") == "/ui/runs/abc"
    for evil in (
        "//evil.example/ui/",
        "https://evil.example",
        "/v1/runs",
        "/ui\\..",
        None,
        "/ui/\n",
    ):
        assert safe_next(evil) == "/ui/"


@pytest.fixture
def service(tmp_path):
    def make(token: str | None) -> TestClient:
        settings = replace(Settings.from_env(), store=tmp_path.as_uri(), token=token)
        return TestClient(create_app(settings))

    return make


def test_with_a_token_every_page_asks_for_it_and_the_cookie_is_strict(service):
    client = service("s3cret")
    run = client.post("/v1/runs", json={"loss_names": NAMES, "name": "x"},
                      headers={"Authorization": "Bearer s3cret"}).json()  # fmt: skip
    for path in ("/ui/", f"/ui/runs/{run['id']}", f"/ui/runs/{run['id']}/policy"):
        refused = client.get(path)
        assert refused.status_code == 401 and 'name="token"' in refused.text
        assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, params={"token": "s3cret"}).status_code == 401  # never in a URL
    wrong = client.post("/ui/login", data={"token": "nope", "next": "/ui/"})
    assert wrong.status_code == 401 and COOKIE_NAME not in wrong.cookies
    signed = client.post("/ui/login", data={"token": "s3cret", "next": f"/ui/runs/{run['id']}"},
                         follow_redirects=False)  # fmt: skip
    assert signed.status_code == 303 and signed.headers["location"] == f"/ui/runs/{run['id']}"
    set_cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie.replace("Strict", "strict")
    assert "Path=/ui" in set_cookie and "s3cret" not in set_cookie
    page = client.get(f"/ui/runs/{run['id']}")  # the client keeps the cookie
    assert page.status_code == 200 and "Sign out" in page.text
    assert page.headers["content-security-policy"] == pages.CSP
    assert client.get("/v1/runs").status_code == 401  # the cookie opens /ui only
    client.post("/ui/logout")
    assert client.get("/ui/").status_code == 401


def test_without_a_token_the_pages_are_open_and_unknown_runs_are_404(service):
    client = service(None)
    assert client.get("/ui/").status_code == 200
    assert "No runs yet" in client.get("/ui/").text
    missing = client.get("/ui/runs/nope")
    assert missing.status_code == 404 and "no run" in missing.text
    assert client.get("/ui/login", follow_redirects=False).status_code == 303


def test_the_run_page_over_the_real_repository_shows_the_open_round(service):
    client = service(None)
    run = client.post("/v1/runs", json={"loss_names": NAMES, "population": 2, "rounds": 2}).json()
    assignment = client.post(f"/v1/runs/{run['id']}/leases", json={"worker": "pod-<x>"}).json()
    assert assignment["state"] == "assigned"
    html = client.get(f"/ui/runs/{run['id']}").text
    assert "Round 0 under way" in html and "pod-&lt;x&gt;" in html
    assert re.search(r'data-status="leased"', html) and "No round has completed yet" in html
    assert math.isfinite(float(re.search(r"expired|in (\d+) min", html).group(1) or 0))
