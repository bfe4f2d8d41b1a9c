"""The dashboard as a person uses it: the real controller, a run over HTTP, headless Chromium.

The controller runs as a process with a token; a scripted trainer leases and
reports made-up but valid losses and PQ (one member diverges) for four rounds
and leaves the fifth open with two leases out. Debian's ``chromium`` with its
``chromedriver`` (``make chromium`` installs both) then signs in through the
login form and reads what the pages show. Screenshots go to the test's tmp
dir; with ``ADASEG_UPDATE_SCREENSHOTS=1`` the run page's also replaces
docs/images/ui-run.png, the README's.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver  # the 'test' extra installs it: a missing one is a failure
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from controller_service.contract.client import ControllerClient
from controller_service.contract.store import open_store

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TOKEN = "ui-browser-test-token"
NAMES = ["semantic", "center", "offset"]
RUN_NAME = "<b>nightly</b> search"
POPULATION, ROUNDS, COMPLETED = 4, 6, 4  # rounds 0..3 complete, round 4 open
README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "ui-run.png"


RUN_PAGE_SNAPSHOT = """
const q = (root, sel) => Array.from(root.querySelectorAll(sel));
const marks = (root, sel) => q(root, sel).map(e => [e.dataset.round, e.dataset.member]);
const h1 = document.querySelector('h1');
return {
  heading: h1.textContent,
  headingTags: q(h1, '*').length,
  refresh: q(document, 'meta[http-equiv="refresh"]').length,
  weights: q(document, 'svg.chart.weights').map(svg => ({
    scale: svg.dataset.scale,
    cands: marks(svg, 'circle.cand'),
    best: q(svg, 'circle.best').length,
    diverged: q(svg, 'circle.cand.diverged').length,
    mean: svg.querySelector('path.mean').dataset.points,
  })),
  pqMembers: q(document, '#pq-chart circle.member').length,
  pqDiverged: marks(document, '#pq-chart path.diverged'),
  broadcast: q(document, '#lineage-chart circle.broadcast').length,
  edges: q(document, '#lineage-chart path.edge').map(e => e.dataset.round),
  leases: q(document, '#open-round tr.member').map(r => [r.dataset.status, r.innerText]),
  rounds: q(document, '#rounds tr.round').length,
  roundsText: document.querySelector('#rounds').innerText,
};
"""


def fake_result(weights: dict[str, float], member: int) -> tuple[dict[str, float], float]:
    """Losses fall with their weight; PQ peaks where semantic ~ 2 * offset."""
    losses = {name: 2.0 / (1.0 + w) * (1.0 + 0.1 * member) for name, w in weights.items()}
    pq = 40.0 + 15.0 * math.tanh(0.5 * (weights["semantic"] - 2.0 * weights["offset"]))
    return losses, pq


def drive_run(url: str, store_uri: str) -> tuple[str, str]:
    """A run with COMPLETED rounds (member 2 of round 2 diverges) and two leases of the next
    out; and a second run, just created. Returns both ids."""
    client, store = ControllerClient(url, token=TOKEN), open_store(store_uri)
    run = client.create_run(
        NAMES, population=POPULATION, rounds=ROUNDS, seed=11, lease_seconds=900, name=RUN_NAME
    )
    run_id = run.id
    while client.get_run(run_id).round < COMPLETED:
        answer = client.lease(run_id, "trainer-0")
        assert answer.state == "assigned", answer
        a = answer.assignment.model_dump()
        if a["round"] == 0:
            store.put(store.key_of(a["init_checkpoint_uri"]), b"init")
        if (a["round"], a["member"]) == (2, 2):
            client.report_diverged(run_id, a["id"], "loss is nan at iteration 17")
            continue
        losses, pq = fake_result(a["weights"], a["member"])
        store.put(store.key_of(a["checkpoint_uri"]), a["id"].encode())
        client.report(run_id, a["id"], losses, pq, a["checkpoint_uri"])
    for worker in ("pod-a", "pod-b"):
        assert client.lease(run_id, worker).state == "assigned"
    other = client.create_run(NAMES, population=2, rounds=2, seed=1, name="second")
    return run_id, other.id


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(f"{missing} missing: `make chromium` installs Debian's chromium and driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: webdriver.Chrome, path: Path) -> Path:
    """The whole page: the window is made as tall as the document first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 40, 6000))
    assert driver.save_screenshot(str(path)), path
    driver.set_window_size(1280, 900)
    return path


def marks(driver: webdriver.Chrome, selector: str) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, selector)


def attributes(elements: list[Any], name: str) -> set[str]:
    return {e.get_attribute(name) for e in elements}


def sign_in(driver: webdriver.Chrome, token: str) -> None:
    """Type the token and submit; return once the answer to the POST has replaced the form."""
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, ".login button[type=submit]").click()
    WebDriverWait(driver, 15).until(expected_conditions.staleness_of(field))
    WebDriverWait(driver, 15).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


@pytest.mark.timeout(300)
def test_dashboard_in_chromium_requires_the_token_and_shows_the_run(
    controller_factory, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    controller = controller_factory(token=TOKEN)
    run_id, other_id = drive_run(controller.url, controller.store_uri)
    driver = browser

    # without the token: the login page, wherever one starts
    driver.get(f"{controller.url}/ui/runs/{run_id}")
    assert driver.title.startswith("Sign in")
    assert not marks(driver, "svg.chart") and RUN_NAME not in driver.page_source
    screenshot(driver, tmp_path / "login.png")
    sign_in(driver, "not-the-token")
    assert (
        driver.title.startswith("Sign in") and "not this controller's token" in driver.page_source
    )

    # typed once: the cookie holds no token, is HttpOnly and SameSite=Strict; the URL has none
    sign_in(driver, TOKEN)
    assert driver.current_url == f"{controller.url}/ui/runs/{run_id}"
    assert TOKEN not in driver.current_url
    cookie = driver.get_cookie("adaseg_ui")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]
    assert driver.execute_script("return document.cookie") == ""

    # the run, read in one script: the page reloads itself while the run is open, and a
    # reload between two element look-ups would leave the second one stale
    page = driver.execute_script(RUN_PAGE_SNAPSHOT)
    assert page["heading"] == RUN_NAME and page["headingTags"] == 0  # text, not markup
    assert page["refresh"] == 1
    # the weights: one log-scale chart per loss, every candidate of every completed round
    assert len(page["weights"]) == len(NAMES)
    trained = 1 + POPULATION * (COMPLETED - 1)
    for chart in page["weights"]:
        assert chart["scale"] == "log" and len(chart["cands"]) == trained
        assert {r for r, _ in chart["cands"]} == {str(t) for t in range(COMPLETED)}
        assert {m for _, m in chart["cands"]} == {str(j) for j in range(POPULATION)}
        # the policy's mean exists from round 1 on (round 0 trains every weight at 1)
        assert chart["best"] == COMPLETED and chart["diverged"] == 1
        assert chart["mean"] == str(COMPLETED - 1)
    # PQ: every trained member, the diverged one as a cross
    assert page["pqMembers"] == trained - 1 and page["pqDiverged"] == [["2", "2"]]
    # lineage: a broadcast node per completed round, an edge into rounds 1..3 and the open one
    assert page["broadcast"] == COMPLETED and sorted(page["edges"]) == ["1", "2", "3", "4"]
    # the open round's leases, with workers and deadlines
    leases = page["leases"]
    assert [status for status, _ in leases] == ["leased", "leased", "pending", "pending"]
    assert "pod-a" in leases[0][1] and "pod-b" in leases[1][1]
    assert re.search(r"\(in 1[45] min\)", leases[0][1])  # lease_seconds=900
    assert page["rounds"] == COMPLETED and "loss is nan at iteration 17" in page["roundsText"]
    run_png = screenshot(driver, tmp_path / "run.png")
    if os.environ.get("ADASEG_UPDATE_SCREENSHOTS"):
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_png, README_SCREENSHOT)

    # the policy page: Eq. 7 over the run's own losses, one epoch per snapshot (rounds 1..3)
    driver.find_element(By.PARTIAL_LINK_TEXT, "policy and transfer weights").click()
    WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.ID, "transfer"))
    assert driver.current_url.endswith(f"/ui/runs/{run_id}/policy")
    series = marks(driver, "#transfer path.series")
    assert len(series) == 2 * len(NAMES) and attributes(series, "data-points") == {"3"}
    assert len(marks(driver, "table.plan tr.epoch")) == COMPLETED - 1
    screenshot(driver, tmp_path / "policy.png")

    # the runs list: both runs, with status, strategy and round t/T
    driver.find_element(By.LINK_TEXT, "Ada-Segment runs").click()
    WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.runs"))
    rows = dict(
        driver.execute_script(
            "return Array.from(document.querySelectorAll('table.runs tbody tr'))"
            ".map(r => [r.dataset.run, r.innerText]);"
        )
    )
    assert set(rows) == {run_id, other_id}
    assert RUN_NAME in rows[run_id] and "ada-segment" in rows[run_id]
    assert f"{COMPLETED}/{ROUNDS}" in rows[run_id] and "0/2" in rows[other_id]
    screenshot(driver, tmp_path / "runs.png")

    # signing out asks for the token again
    driver.find_element(By.CSS_SELECTOR, "header form button").click()
    WebDriverWait(driver, 15).until(lambda d: d.title.startswith("Sign in"))
    driver.get(f"{controller.url}/ui/")
    assert driver.title.startswith("Sign in") and not marks(driver, "table.runs")
    for name in ("login.png", "run.png", "policy.png", "runs.png"):
        assert (tmp_path / name).stat().st_size > 10_000
